#!/usr/bin/env bash
# Regenerates this report: trains the tuned lens for SmolLM2-135M-Instruct (unless lens/params.pt exists),
# then one `falsedemo sweep` per lens (logit, tuned) on unnatural and trec, correct and permuted
# demonstrations, k = 24, all 90 unnatural queries and the first $LIMIT (default 80) of trec, local dataset copies,
# lm-eval's default seeds, 1000 seeded paired-bootstrap resamples; then README.md from the results files.
# One thread per process keeps float reductions identical run to run (and lets the runs share the cores).
set -euo pipefail
cd "$(dirname "$0")"
export FALSEDEMO_DATA_DIR="${FALSEDEMO_DATA_DIR:-$(cd ../../.. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
MODEL_ARGS=pretrained=smollm2-135m,dtype=float32

if [ ! -f lens/params.pt ]; then
  # 24 steps x 8 sequences x 128 tokens of demonstration text; the KL at 32 random positions per sequence
  # over an 8,192-token subset of the 49,152-token vocabulary (see lens_training.py for what that costs).
  falsedemo lens train --model_args "$MODEL_ARGS" --output lens --tokens 24576 --batch_size 8 --seq_len 128 \
    --positions 32 --vocab 8192 --seed 0
fi
for lens in logit tuned:lens; do
  for dataset in unnatural trec; do
    limit=$([ "$dataset" = unnatural ] && echo 90 || echo "${LIMIT:-80}")  # unnatural: all 90 queries
    falsedemo sweep --model hf --model_args "$MODEL_ARGS,lens=$lens" \
      --tasks "falsedemo_${dataset}_correct,falsedemo_${dataset}_permuted" --num_fewshot 24 \
      --limit "$limit" --batch_size 4 --device cpu --seed 0,1234,1234,1234 --bootstrap_iters 1000 \
      --analysis_seed 0 --output_path "runs/${lens%%:*}/${dataset}"
  done
done
# What the same budget would cost on Gemma 3 270M (262,144-token vocabulary), full vocabulary vs an 8,192-token
# subset: one timed probe step each (batch 1 x 128 tokens, 32 loss positions), no training.
for vocab in all 8192; do
  echo "vocab=$vocab: $(falsedemo lens train --model_args pretrained=gemma-3-270m,dtype=float32 --output /tmp/gemma_lens_estimate \
    --tokens 65536 --batch_size 1 --seq_len 128 --positions 32 --vocab "$vocab" --estimate_only 2>/dev/null | grep 'cost estimate')"
done > gemma_cost.txt
python make_readme.py
