# Sourced by run.sh and run_seeds.sh: the environment and the sweep settings every run of this report shares.
export FALSEDEMO_DATA_DIR="${FALSEDEMO_DATA_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

# k = 24 demonstrations, float32, 1000 seeded bootstrap resamples; callers add tasks, seed, limit, output.
gemma_sweep() {
  falsedemo sweep --model hf --model_args pretrained=gemma-3-270m,dtype=float32 --num_fewshot 24 \
    --batch_size 4 --device cpu --bootstrap_iters 1000 --analysis_seed 0 "$@"
}
