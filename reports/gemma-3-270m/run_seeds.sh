#!/usr/bin/env bash
# Few-shot seed robustness of the unnatural headline: the same sweep as run.sh (correct and permuted only, no
# plots) with other few-shot seeds, i.e. other demonstrations and shifts for the same 90 queries. The default
# seed 1234 is run.sh's unnatural run. Usage: reports/gemma-3-270m/run_seeds.sh  (SEEDS="1 2 3 4" by default)
set -euo pipefail
cd "$(dirname "$0")"
source ./common.sh
for seed in ${SEEDS:-1 2 3 4}; do
  gemma_sweep --tasks falsedemo_unnatural_correct,falsedemo_unnatural_permuted --seed "0,1234,1234,$seed" \
    --no_plots --output_path "runs/unnatural_fewshot_seed/$seed"
done
python make_readme.py
