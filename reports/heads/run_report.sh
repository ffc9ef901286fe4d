#!/bin/bash
# Reproduces reports/heads: score heads on the unnatural task, then ablate the top-5 vs 5 random draws.
# Usage: reports/heads/run_report.sh <model short name> <output folder>
set -euo pipefail
MODEL=$1
OUT=$2
export FALSEDEMO_DATA_DIR=${FALSEDEMO_DATA_DIR:-/work/shared/data} HF_HUB_OFFLINE=1
falsedemo heads --model_args pretrained=$MODEL -n 40 -f 16 -k 5 -o "$OUT/score"
HEADS=$(ls -d "$OUT"/score/heads_*/ | tail -1)heads.json
falsedemo heads --model_args pretrained=$MODEL --heads @"$HEADS" -f 8 \
    --evaluate unnatural,sst2,ag_news,trec --limit 12 -R 5 --random_seed 0 -o "$OUT/evaluate"
