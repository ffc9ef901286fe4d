"""Cost estimate of the README's main job and of a 14-dataset leaderboard row on 7B, 13B and 70B models.

Counts the tokens of every prompt exactly as the tasks build them (lm-eval's ``TaskManager`` over our task
folder, ``build_all_requests``, the sweep's prompt records; demonstrations drawn within the model's token
budget) with a real tokenizer, then turns tokens into compute, memory and GPU time for published model
shapes. No model is loaded; nothing is timed. The figures in docs/scale.md come from this exact command:

  python benchmarks/scale_cost.py --output benchmarks/scale_cost.json

Jobs:
  main         the README's main job: unnatural correct + permuted, k = 24, all 90 queries
  leaderboard  one leaderboard row as leaderboard/build.sh runs it: the 14 main datasets, settings correct,
               permuted and zeroshot, k = 12, the first 50 queries of each dataset (fewer where a dataset has
               fewer), SST-2 in its 13 first-token-scorable prompt formats (0-10, 12, 13) at 50 queries each

Model (token count per prompt): the tokenizer's default encoding of the prompt (special tokens included, as
HFLM encodes a context; Gemma adds BOS), one forward pass per prompt (the sweep; lm-eval's ``hf`` models also
run one forward per context when the labels are single tokens).

Compute: 2 x (parameters doing matrix products: all but the input embedding) x tokens, plus the attention
scores (2 x layers x heads x head_dim x S^2 per prompt of S tokens, causal). GPU time at a stated fraction of
a stated peak. Memory: weights in bfloat16 (2 bytes a parameter); at the longest prompt and a stated batch
size, one block's activations, the key/value cache that plain ``hf`` / ``hf-earlyexit`` calls build
(``use_cache`` is the model's default there; the sweep passes ``use_cache=False``) and the full-vocabulary
logits plain ``hf`` returns (the sweep reads K label rows instead).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from lm_eval_false_demos.core import files as results_io
from lm_eval_false_demos.core.datasets import MAIN_DATASETS
from lm_eval_false_demos.core.sst2_formats import expand_task_names
from lm_eval_false_demos.integrations.sweep_prompts import build_records, falsedemo_task_manager, load_tasks

SCORABLE_SST2_FORMATS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13)  # leaderboard/build.sh's --sst2_format 0-10,12-13
FEWSHOT_SEED = 1234  # lm-eval's default few-shot seed, as both jobs run


@dataclass(frozen=True)
class Job:
    name: str
    tasks: tuple[str, ...]
    num_fewshot: int
    limit: int | None


def jobs() -> list[Job]:
    leaderboard_tasks = [f"falsedemo_{key if key != 'sst2' else 'sst2_formats'}_{setting}"
                         for key in MAIN_DATASETS for setting in ("correct", "permuted", "zeroshot")]
    return [
        Job("main", ("falsedemo_unnatural_correct", "falsedemo_unnatural_permuted"), 24, None),
        Job("leaderboard", tuple(expand_task_names(leaderboard_tasks, SCORABLE_SST2_FORMATS)), 12, 50),
    ]


@dataclass(frozen=True)
class Shape:
    """A decoder's shape, from its published config.json."""
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    max_position: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def parameters(self) -> int:
        """Llama layout: untied embedding and head, q/k/v/o, gated MLP, two RMSNorms a block, final norm."""
        attention = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        block = attention + 3 * self.hidden * self.intermediate + 2 * self.hidden
        return 2 * self.vocab * self.hidden + self.layers * block + self.hidden

    @property
    def matmul_parameters(self) -> int:
        return self.parameters - self.vocab * self.hidden  # the input embedding is a lookup


SHAPES = (
    # meta-llama/Llama-2-7b-hf, Llama-2-13b-hf (the paper's models) and Llama-3.1-70B (today's 70B), config.json
    Shape("7B (Llama-2-7B)", 4096, 11008, 32, 32, 32, 32000, 4096),
    Shape("13B (Llama-2-13B)", 5120, 13824, 40, 40, 40, 32000, 4096),
    Shape("70B (Llama-3.1-70B)", 8192, 28672, 80, 64, 8, 128256, 131072),
)
GIB = 1024 ** 3


def count_tokens(job: Job, pretrained: str) -> dict:
    """Prompts and tokens of a job, per task and in total, with this model's tokenizer and context budget."""
    task_manager = falsedemo_task_manager(None, {"pretrained": pretrained})
    tasks = load_tasks(list(job.tasks), task_manager, job.num_fewshot, FEWSHOT_SEED)
    lengths: list[int] = []
    per_task = {}
    for name, task in tasks.items():
        _, records = build_records(name, task, job.limit)
        task_lengths = [len(task.tokenizer(record.context)["input_ids"]) for record in records]
        per_task[name] = {"prompts": len(task_lengths), "tokens": sum(task_lengths), "max": max(task_lengths)}
        lengths += task_lengths
    return {
        "job": asdict(job),
        "tokenizer": pretrained,
        "prompts": len(lengths),
        "tokens": sum(lengths),
        "mean_tokens": sum(lengths) / len(lengths),
        "max_tokens": max(lengths),
        "sum_squared_tokens": sum(length * length for length in lengths),
        "per_task": per_task,
    }


def estimate(counts: dict, shape: Shape, batch_size: int, peak_tflops: float, utilisation: float,
             gpu_gib: float, offload_gib_per_second: float) -> dict:
    tokens, longest = counts["tokens"], counts["max_tokens"]
    linear = 2 * shape.matmul_parameters * tokens
    attention = 2 * shape.layers * shape.heads * shape.head_dim * counts["sum_squared_tokens"]
    flops = linear + attention
    weights = 2 * shape.parameters
    rows = batch_size * longest
    activations = rows * (4 * shape.hidden + 3 * shape.intermediate) * 2  # one block's working set, bf16
    kv_cache = 2 * shape.layers * shape.kv_heads * shape.head_dim * rows * 2
    logits = rows * shape.vocab * 2 * 2  # bf16 logits and lm-eval's log-softmax of them
    batches = math.ceil(counts["prompts"] / batch_size)
    # The sweep's working set beside the weights; what does not fit on the GPU crosses to it once per batch.
    offloaded = max(0.0, weights + activations - gpu_gib * GIB)
    return {
        "model": shape.name,
        "parameters": shape.parameters,
        "fits_context": longest <= shape.max_position,
        "flops": flops,
        "attention_share": attention / flops,
        "gpu_minutes": flops / (peak_tflops * 1e12 * utilisation) / 60,
        "weights_gib": weights / GIB,
        "activations_gib": activations / GIB,
        "kv_cache_gib": kv_cache / GIB,
        "hf_logits_gib": logits / GIB,
        "sweep_peak_gib": (weights + activations) / GIB,
        "hf_peak_gib": (weights + activations + kv_cache + logits) / GIB,
        "forward_batches": batches,
        "sweep_offloaded_gib_one_gpu": offloaded / GIB,
        "sweep_offload_minutes_one_gpu": batches * offloaded / (offload_gib_per_second * GIB) / 60,
    }


def markdown(results: dict) -> str:
    settings = results["settings"]
    lines = []
    for job in results["jobs"]:
        counted = job["counts"]
        lines += [
            f"### {job['name']}: {counted[0]['prompts']} prompts",
            "",
            "| tokenizer | prompts | tokens | mean / longest prompt |",
            "|---|---|---|---|",
            *[f"| {c['tokenizer']} | {c['prompts']} | {c['tokens']:,} | {c['mean_tokens']:.0f} / {c['max_tokens']} |"
              for c in counted],
            "",
            f"Estimates from the larger count ({job['basis']}), batch size {settings['batch_size']}, "
            f"{settings['utilisation']:.0%} of {settings['peak_tflops']:.0f} TFLOPS, one "
            f"{settings['gpu_gib']:.0f} GiB GPU, offload at {settings['offload_gib_per_second']:.0f} GiB/s:",
            "",
            "| model | parameters | FLOPs | attention share | GPU-minutes | weights bf16 | + activations | "
            "+ KV cache + full logits (plain hf) | sweep: offloaded on one GPU | offload transfer |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in job["estimates"]:
            lines.append(
                f"| {row['model']} | {row['parameters'] / 1e9:.2f} B | {row['flops']:.2e} | "
                f"{row['attention_share']:.1%} | {row['gpu_minutes']:.2f} | {row['weights_gib']:.1f} GiB | "
                f"{row['activations_gib']:.2f} GiB | {row['kv_cache_gib']:.2f} + {row['hf_logits_gib']:.2f} GiB | "
                f"{row['sweep_offloaded_gib_one_gpu']:.0f} GiB | "
                f"{row['sweep_offload_minutes_one_gpu']:.1f} min ({row['forward_batches']} batches) |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizers", default="gemma-3-270m,smollm2-135m")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--peak_tflops", type=float, default=312.0, help="A100's dense bfloat16 peak")
    parser.add_argument("--utilisation", type=float, default=0.35)
    parser.add_argument("--gpu_gib", type=float, default=80.0)
    parser.add_argument("--offload_gib_per_second", type=float, default=20.0,
                        help="host-to-GPU copy rate of CPU-offloaded weights (PCIe 4.0 x16 in practice)")
    parser.add_argument("--output", help="write every figure here (JSON)")
    parser.add_argument("--counts", help="reuse the token counts of an earlier --output file (other GPUs, batch "
                        "sizes or utilisation without recounting)")
    args = parser.parse_args(argv)
    settings = {key: getattr(args, key) for key in ("batch_size", "peak_tflops", "utilisation", "gpu_gib",
                                                     "offload_gib_per_second")}
    results = {"settings": settings, "jobs": []}
    earlier = {job["name"]: job["counts"] for job in json.loads(Path(args.counts).read_text())["jobs"]} \
        if args.counts else {}
    for job in jobs():
        counted = earlier.get(job.name) or [count_tokens(job, tokenizer) for tokenizer in args.tokenizers.split(",")]
        basis = max(counted, key=lambda c: c["tokens"])
        results["jobs"].append({
            "name": job.name, "counts": counted, "basis": basis["tokenizer"],
            "estimates": [estimate(basis, shape, **settings) for shape in SHAPES],
        })
    if args.output:
        results_io.write_json_atomic(args.output, results, overwrite=True)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
