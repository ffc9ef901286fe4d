#!/usr/bin/env bash
# The paper's three levers on gemma-3-270m, unnatural, k = 24, all 90 queries, through plain lm_eval:
# the last layer, early exit at layer $EXIT (the sweep's paper-style early-exit layer: maximal permuted accuracy),
# and zeroing attention or MLP blocks from block $EXIT on at the query position.
# Usage: reports/levers/run.sh [EXIT]   (results under reports/levers/runs/)
set -euo pipefail
cd "$(dirname "$0")"
EXIT=${1:-9}
export FALSEDEMO_DATA_DIR="${FALSEDEMO_DATA_DIR:-$(cd ../../.. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
TASKS=falsedemo_unnatural_correct,falsedemo_unnatural_permuted
run() {  # run <name> <model> <model_args>
  lm_eval --model "$2" --model_args "pretrained=gemma-3-270m,dtype=float32,$3" --tasks "$TASKS" \
    --num_fewshot 24 --device cpu --batch_size 8 --output_path "runs/$1" > "runs/$1.log" 2>&1
}
mkdir -p runs
run last_layer hf-earlyexit exit_layer=-1
run exit_$EXIT hf-earlyexit exit_layer=$EXIT
run attn_from_$EXIT hf-ablate attn_layers=$EXIT-
run mlp_from_$EXIT hf-ablate mlp_layers=$EXIT-
python summarize.py runs > README.md
