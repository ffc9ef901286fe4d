#!/usr/bin/env bash
# Label-correctness sensitivity on real models: `falsedemo sweep --wrong_share 0,25,50,75,100` (the same
# demonstrations with 0, 25, 50, 75 and 100% of their labels wrong, nested wrong sets) on both embedded models:
#   main   unnatural, k = 24, all 90 queries (the README's main job);
#   real   sst2 (prompt format 0), trec and ag_news, k = 12, the first 50 queries (the leaderboard's protocol).
# One thread per sweep, the two models side by side; make_readme.py writes README.md and the figure.
# Usage: reports/label-sensitivity/run.sh     (MODELS="gemma-3-270m" runs one model; JOBS="main" one job)
set -euo pipefail
cd "$(dirname "$0")"
export FALSEDEMO_DATA_DIR="${FALSEDEMO_DATA_DIR:-$(cd ../../.. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
GRID=0,25,50,75,100
sweep() {  # sweep <model> <job> <tasks> <k> <limit or "">
  local limit=()
  [ -n "$5" ] && limit=(--limit "$5")
  falsedemo sweep --model hf --model_args "pretrained=$1,dtype=float32" --tasks "$3" --wrong_share "$GRID" \
    --num_fewshot "$4" "${limit[@]}" --batch_size 2 --device cpu --no_plots --output_path "runs/$2/$1"
}
for model in ${MODELS:-gemma-3-270m smollm2-135m}; do
  (
    for job in ${JOBS:-main real}; do
      [ -n "$(ls runs/$job/$model/sweep_*/sweep.json 2>/dev/null)" ] && { echo "$job $model: done, skipped" >&2; continue; }
      case $job in
        main) sweep "$model" main falsedemo_unnatural_permuted 24 "" ;;
        real) sweep "$model" real falsedemo_sst2_permuted,falsedemo_trec_permuted,falsedemo_ag_news_permuted 12 50 ;;
      esac
    done
  ) > "runs/$model.log" 2>&1 &
done
wait
python make_readme.py
