#!/usr/bin/env bash
# Regenerates every number and figure of this report: one `falsedemo sweep` per dataset, each over all
# settings of the dataset's tag (correct, permuted, half, random and zero-shot), k = 24 demonstrations,
# up to $LIMIT (default 200) queries (unnatural has 90), local dataset copies, lm-eval's default seeds.
# A fixed thread count (default 2) keeps float reductions identical run to run.
set -euo pipefail
cd "$(dirname "$0")"
source ./common.sh
for dataset in ${DATASETS:-unnatural trec sst2 ag_news}; do
  gemma_sweep --tasks "falsedemo_${dataset}" --limit "${LIMIT:-200}" --seed 0,1234,1234,1234 \
    --output_path "runs/${dataset}"
done
python make_readme.py
