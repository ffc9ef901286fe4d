#!/usr/bin/env bash
# Few-shot seed robustness of the unnatural headline: the same sweep as run.sh (correct and permuted only, no
# plots) with other few-shot seeds, i.e. other demonstrations and shifts for the same 90 queries. The default
# seed 1234 is run.sh's unnatural run. Usage: reports/gemma-3-270m/run_seeds.sh  (SEEDS="1 2 3 4" by default)
set -euo pipefail
cd "$(dirname "$0")"
export FALSEDEMO_DATA_DIR="${FALSEDEMO_DATA_DIR:-$(cd ../../.. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
for seed in ${SEEDS:-1 2 3 4}; do
  falsedemo sweep --model hf --model_args pretrained=gemma-3-270m,dtype=float32 \
    --tasks falsedemo_unnatural_correct,falsedemo_unnatural_permuted --num_fewshot 24 --seed "0,1234,1234,$seed" \
    --batch_size 4 --device cpu --bootstrap_iters 1000 --analysis_seed 0 --no_plots \
    --output_path "runs/unnatural_fewshot_seed/$seed"
done
python make_readme.py
