#!/usr/bin/env bash
# Regenerates our published rows, the page and the hub exports.
#
# Published protocol (CPU-sized; see README "Leaderboard" and leaderboard/README.md for the cost): for each embedded
# model, `falsedemo sweep` over the 14 main datasets, settings correct, permuted and zeroshot (the zero-shot answers
# are the prior of the prior-alignment metrics), k = 12 demonstrations, lm-eval's default seeds (few-shot seed 1234),
# the first N = 50 queries of each dataset's fixed seeded order, and SST-2 in its 13 first-token-scorable prompt
# formats (0-10, 12, 13) at SST2_N = 8 queries each (the leaderboard's protocol names both limits); local dataset
# copies, one sweep per chunk of datasets (a chunk that fails leaves the others). Rerunning this script resumes:
# finished chunks are skipped, an interrupted one continues.
# Then the leaderboard from those sweeps plus the false-induction-head evaluations of reports/heads.
#
# The full paper protocol (k = 40, every query; for a GPU), one command per model:
#   falsedemo sweep --model_args pretrained=<model>,dtype=float32 --tasks falsedemo_main_correct,falsedemo_main_permuted \
#     --num_fewshot 40 --device cuda:0 --batch_size 8 --output_path results
#
# Usage: leaderboard/build.sh        (SWEEPS=0 rebuilds the tables, page and exports from leaderboard/runs only;
#                                     MODELS="gemma-3-270m" runs one model; RUNS=<folder> sweeps elsewhere;
#                                     TABLES=0 runs the sweeps only)
set -euo pipefail
cd "$(dirname "$0")/.."
K=${K:-12}
export FALSEDEMO_DATA_DIR="${FALSEDEMO_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
N=${N:-50}
SST2_N=${SST2_N:-8}  # SST-2 runs each of its 13 formats: 8 queries a format cost about two datasets at N = 50
RUNS=${RUNS:-leaderboard/runs}
SETTINGS=${SETTINGS:-"correct permuted zeroshot"}
CHUNKS=(
  "rte trec"
  "dbpedia_14 poem_sentiment sick"
  "mrpc ethos financial_phrasebank"
  "ag_news medical_questions_pairs"
  "tweet_eval_hate tweet_eval_stance_atheism tweet_eval_stance_feminist"
  "sst2_formats"
)
# Resumable: a chunk whose finished sweep is already under $RUNS/<model> (same tasks, N, k, model args) is skipped,
# an interrupted one (a checkpoint/ manifest with those arguments) continues with --resume; the rest run anew.
chunk_state() {  # model tasks limit -> "done <folder>", "resume <folder>" or "new"
  python - "$RUNS/$1" "$2" "$3" "$K" "$1" <<'PY'
import sys
from lm_eval_false_demos.results.checkpoints import find_run

root, tasks, limit, k, model = sys.argv[1:]
state, folder = find_run(root, "sweep", {"tasks": tasks.split(","), "limit": float(limit), "num_fewshot": int(k),
                                         "model_args": {"pretrained": model, "dtype": "float32"}})
print(state, folder or "")
PY
}
for model in ${MODELS:-gemma-3-270m smollm2-135m}; do
  [ "${SWEEPS:-1}" = 0 ] && break
  for chunk in "${CHUNKS[@]}"; do
    datasets=$chunk
    tasks=""
    for dataset in $datasets; do
      for setting in $SETTINGS; do tasks="$tasks,falsedemo_${dataset}_${setting}"; done
    done
    tasks=${tasks#,}
    limit=$N
    [ "$datasets" = sst2_formats ] && limit=$SST2_N
    read -r state folder < <(chunk_state "$model" "$tasks" "$limit")
    if [ "$state" = done ]; then echo "chunk '$datasets' of $model: done in $folder, skipped" >&2; continue; fi
    resume=()
    if [ "$state" = resume ]; then echo "chunk '$datasets' of $model: continuing $folder" >&2; resume=(--resume "$folder"); fi
    # the all-formats SST-2 tasks expand to one task per format; formats 11 and 14 cannot be first-token scored here
    falsedemo sweep --model hf --model_args "pretrained=$model,dtype=float32" --tasks "$tasks" \
      --sst2_format 0-10,12-13 --num_fewshot "$K" --limit "$limit" --batch_size 2 --device cpu --no_plots \
      --output_path "$RUNS/$model" "${resume[@]}" || echo "chunk '$datasets' of $model failed; the others are kept" >&2
  done
done
[ "${TABLES:-1}" = 0 ] && exit 0
rm -rf leaderboard/eval_results  # every export is rewritten: a row that no longer exists leaves no stale folder
falsedemo leaderboard --results "$RUNS" reports/heads/runs/*/evaluate --output leaderboard --force \
  --note "Protocol: k = 12, settings correct, permuted and zeroshot (for prior alignment), the first 50 queries of each dataset (SST-2: 13 formats x 8), few-shot seed 1234, local data, first label token; one leaderboard/build.sh."
# The README shows the same table, between its leaderboard markers.
python - <<'PY'
from pathlib import Path

readme, table = Path("README.md"), Path("leaderboard/leaderboard.md").read_text().strip()
table = "\n".join(line for line in table.splitlines() if not line.startswith("# "))  # the README has its own heading
start, end = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"
text = readme.read_text()
head, rest = text.split(start, 1)
readme.write_text(f"{head}{start}\n{table}\n{end}{rest.split(end, 1)[1]}")
PY
