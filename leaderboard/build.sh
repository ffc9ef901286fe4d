#!/usr/bin/env bash
# Regenerates our published rows and the page: for each embedded model, one `falsedemo sweep` over the 14 main
# datasets in every setting (correct, permuted, half, random, zero-shot) with k = $K demonstrations and
# N = $N queries per task (a fixed seeded subset), local dataset copies; then the tables and page from those sweeps plus the
# false-induction-head evaluations of reports/heads. Usage: leaderboard/build.sh  (K=8 N=12 by default;
# SWEEPS=0 rebuilds the tables and page from the existing runs only, e.g. after a new reports/heads run)
set -euo pipefail
cd "$(dirname "$0")/.."
K=${K:-8}
N=${N:-12}
export FALSEDEMO_DATA_DIR="${FALSEDEMO_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
for model in ${MODELS:-gemma-3-270m smollm2-135m}; do
  [ "${SWEEPS:-1}" = 0 ] && break
  falsedemo sweep --model hf --model_args "pretrained=$model,dtype=float32" --tasks falsedemo_main \
    --num_fewshot "$K" --limit "$N" --batch_size 4 --device cpu --no_plots --output_path "leaderboard/runs/$model"
done
falsedemo leaderboard --results leaderboard/runs reports/heads/runs/*/evaluate --output leaderboard
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
