#!/usr/bin/env bash
# Regenerates every number of this report: SmolLM2-135M-Instruct (embedded GGUF, float32), k = 24, correct vs
# permuted demonstrations, one `falsedemo sweep` per dataset and prompt mode:
#   raw             the paper's few-shot text (no template)
#   chat_single     --apply_chat_template --fewshot_as_multiturn false  (one user message holds the demos)
#   chat_multiturn  --apply_chat_template                               (each demo a user + assistant turn)
# Queries per dataset: $N_unnatural (default 60), $N_sst2 and $N_trec (default 30), the same first N
# queries (lm-eval --limit) in every mode; local dataset copies; lm-eval's default seeds.
# One thread per run (OMP_NUM_THREADS=1) keeps float reductions identical run to run; $JOBS runs at a time.
set -euo pipefail
cd "$(dirname "$0")"
export FALSEDEMO_DATA_DIR="${FALSEDEMO_DATA_DIR:-$(cd ../../.. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1

declare -A LIMIT=([unnatural]="${N_unnatural:-60}" [sst2]="${N_sst2:-30}" [trec]="${N_trec:-30}")
declare -A FLAGS=([raw]="" [chat_single]="--apply_chat_template --fewshot_as_multiturn false"
                  [chat_multiturn]="--apply_chat_template")

one_sweep() {  # dataset mode
  # shellcheck disable=SC2086
  falsedemo sweep --model hf --model_args pretrained=smollm2-135m,dtype=float32 \
    --tasks "falsedemo_$1_correct,falsedemo_$1_permuted" --num_fewshot 24 --limit "${LIMIT[$1]}" \
    --seed 0,1234,1234,1234 --batch_size 4 --device cpu --bootstrap_iters 1000 --analysis_seed 0 \
    ${FLAGS[$2]} --output_path "runs/$1/$2" > "runs/$1-$2.log" 2>&1
}

mkdir -p runs
for dataset in ${DATASETS:-unnatural sst2 trec}; do
  for mode in ${MODES:-raw chat_single chat_multiturn}; do
    while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-2}" ]; do wait -n; done
    one_sweep "$dataset" "$mode" &
  done
done
wait
python make_readme.py
