#!/usr/bin/env bash
# Regenerates every number and figure of this report: one `falsedemo sweep` per dataset, each over all
# settings of the dataset's tag (correct, permuted, half, random and zero-shot), k = 24 demonstrations,
# up to $LIMIT (default 200) queries (unnatural has 90), local dataset copies, lm-eval's default seeds.
# A fixed thread count (default 2) keeps float reductions identical run to run.
set -euo pipefail
cd "$(dirname "$0")"
export FALSEDEMO_DATA_DIR="${FALSEDEMO_DATA_DIR:-$(cd ../../.. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
for dataset in ${DATASETS:-unnatural trec sst2 ag_news}; do
  falsedemo sweep --model hf --model_args pretrained=gemma-3-270m,dtype=float32 \
    --tasks "falsedemo_${dataset}" --num_fewshot 24 --limit "${LIMIT:-200}" --seed 0,1234,1234,1234 \
    --batch_size 4 --device cpu --bootstrap_iters 1000 --analysis_seed 0 --output_path "runs/${dataset}"
done
python make_readme.py
