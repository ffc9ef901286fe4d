#!/usr/bin/env bash
# Regenerates every number and figure of this report: the README's main job (unnatural correct + permuted,
# k = 24, all 90 queries, `falsedemo sweep`) per model and dtype, and one gemma-3-270m float32 run with half of
# its blocks on disk (accelerate's offload through lm-eval's parallelize=True / max_cpu_memory / offload_folder).
# Each run's wall time and peak RSS come from /usr/bin/time (resources.json beside the run folder); a run that
# fails keeps its one-line error in error.txt. One thread (OMP_NUM_THREADS=1) so float reductions are identical
# run to run; the runs go one at a time, and the machine may be shared, so wall times are indicative.
#
# Usage: ./reports/precision-and-offload/run.sh   (RUNS="gemma-3-270m:bfloat16 offload" runs a subset)
set -uo pipefail
cd "$(dirname "$0")"
export FALSEDEMO_DATA_DIR="${FALSEDEMO_DATA_DIR:-$(cd ../../.. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# max_cpu_memory that keeps 9 of gemma-3-270m's 18 blocks in memory and puts 9 on disk (device_map.json)
OFFLOAD_CPU_MEMORY=${OFFLOAD_CPU_MEMORY:-900MB}
OFFLOAD_FOLDER=${OFFLOAD_FOLDER:-$(mktemp -d)}
MAIN_JOB=(--tasks falsedemo_unnatural_correct,falsedemo_unnatural_permuted --num_fewshot 24 --batch_size 4
          --device cpu --bootstrap_iters 1000 --analysis_seed 0)

sweep() {  # sweep <output folder> <model args>
  local out=$1 args=$2
  mkdir -p "$out"
  rm -f "$out/error.txt"
  if ! /usr/bin/time -f '{"wall_seconds": %e, "max_rss_kb": %M, "exit_status": %x}' -o "$out/resources.json" \
      falsedemo sweep --model hf --model_args "$args" "${MAIN_JOB[@]}" --output_path "$out" 2> "$out/stderr.log"; then
    grep -v '^ *$' "$out/stderr.log" | grep -v 'Command exited with non-zero status' | tail -1 > "$out/error.txt"
    echo "$out: failed: $(cat "$out/error.txt")" >&2
  fi
  rm -f "$out/stderr.log" "$out"/sweep_*/*.svg  # the PNGs stay; the SVG copies would double the report's size
}

for run in ${RUNS:-gemma-3-270m:float32 offload gemma-3-270m:bfloat16 smollm2-135m:float32 smollm2-135m:bfloat16 gemma-3-270m:float16 smollm2-135m:float16}; do
  if [ "$run" = offload ]; then
    args="pretrained=gemma-3-270m,dtype=float32,parallelize=True,max_cpu_memory=$OFFLOAD_CPU_MEMORY,offload_folder=$OFFLOAD_FOLDER"
    python device_map.py --model_args "$args" --output runs/offload/device_map.json 2> /dev/null
    sweep runs/offload "$args"
  else
    model=${run%%:*} dtype=${run##*:}
    sweep "runs/$model/$dtype" "pretrained=$model,dtype=$dtype"
  fi
done
python make_readme.py
