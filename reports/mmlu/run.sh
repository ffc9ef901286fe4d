#!/usr/bin/env bash
# Regenerates this report: MMLU (local copy of the test set) wrapped by `falsedemo wrap`, on both embedded models.
#   stage 0: local task YAMLs (make_tasks.py) and their wrapped versions (falsedemo wrap);
#   stage 1: zero-shot sweep on the *select* half, SELECT_LIMIT (2) questions per subject, all 57 subjects;
#            choose_subjects.py picks where each model beats chance clearly;
#   stage 2: correct vs permuted sweep on the *report* half of the chosen subjects, k = K (3; MMLU usually takes 5, but
#            prompts must stay short on this machine), REPORT_LIMIT (16) questions per subject; make_readme.py writes README.md.
# One thread per process (the machine is shared); the two models run side by side.
set -euo pipefail
cd "$(dirname "$0")"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
MODELS=${MODELS:-"gemma-3-270m smollm2-135m"}
K=${K:-3}
if [ "${STAGE:-all}" = all ] || [ "${STAGE}" = 0 ]; then
  python make_tasks.py
  falsedemo wrap 'mmlu_select_*' --include_path tasks --output_dir wrapped --group mmlu_select
  falsedemo wrap 'mmlu_report_*' --include_path tasks --output_dir wrapped --group mmlu_report
fi
if [ "${STAGE:-all}" = all ] || [ "${STAGE}" = 1 ]; then
  for model in $MODELS; do
    falsedemo sweep --model_args "pretrained=${model},dtype=float32" --include_path wrapped \
      --tasks 'falsedemo_mmlu_select_*_zeroshot' --limit "${SELECT_LIMIT:-2}" --batch_size 1 \
      --bootstrap_iters 0 --no_plots --output_path "runs/select/${model}" &
  done
  wait
  python choose_subjects.py $MODELS
fi
if [ "${STAGE:-all}" = all ] || [ "${STAGE}" = 2 ]; then
  for model in $MODELS; do
    tasks=$(python -c "import json,sys; c=json.load(open('runs/select/${model}/chosen.json')); print(','.join(f'falsedemo_mmlu_report_{s}_{x}' for s in c['chosen']+c['filled'] for x in ('correct','permuted')))")
    falsedemo sweep --model_args "pretrained=${model},dtype=float32" --include_path wrapped --tasks "$tasks" \
      --num_fewshot "$K" --limit "${REPORT_LIMIT:-16}" --batch_size 1 --output_path "runs/report/${model}" &
  done
  wait
fi
python make_readme.py
