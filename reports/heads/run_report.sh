#!/usr/bin/env bash
# Reproduces reports/heads for one model: score every head on unnatural/permuted, then ablate the top 5 against
# R seeded draws of 5 random heads on four datasets. Results: reports/heads/runs/<model>/{score,evaluate}/.
# Usage: reports/heads/run_report.sh <model short name or path>   (sizes: see the variables below)
set -euo pipefail
cd "$(dirname "$0")"
MODEL=$1
OUT=runs/$(basename "$MODEL")
NUM_PROMPTS=${NUM_PROMPTS:-100} SCORE_K=${SCORE_K:-24} LIMIT=${LIMIT:-80} EVAL_K=${EVAL_K:-16} DRAWS=${DRAWS:-10}
export FALSEDEMO_DATA_DIR="${FALSEDEMO_DATA_DIR:-$(cd ../../.. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
falsedemo heads --model_args "pretrained=$MODEL,dtype=float32" -n "$NUM_PROMPTS" -f "$SCORE_K" -k 5 -o "$OUT/score"
HEADS=$(ls -d "$OUT"/score/heads_*/ | tail -1)heads.json
falsedemo heads --model_args "pretrained=$MODEL,dtype=float32" --heads @"$HEADS" -f "$EVAL_K" \
    --evaluate unnatural,sst2,ag_news,trec --limit "$LIMIT" -R "$DRAWS" --random_seed 0 -o "$OUT/evaluate"
python make_readme.py
