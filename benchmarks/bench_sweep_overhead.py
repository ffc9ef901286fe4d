"""Benchmark: what a ``falsedemo sweep`` costs outside its forward passes, by phase.

On a GPU the forwards of a small sweep take seconds, so everything else (imports, model and task loading,
prompt building, analysis, writing) would be most of the run. This runs the README's main job as a user runs
it (``falsedemo sweep`` in a fresh process, ``--no_plots --bootstrap_iters 0``) and splits its wall time:

  start-up      interpreter start, imports, argument checks, writing the files (wall - sweep total)
  task_index    lm-eval's TaskManager over our task folder and the task names resolved
  model_load    lm-eval's HFLM: tokenizer and weights (a plain ``lm_eval --model hf`` run pays the same)
  task_prompts  tasks built and their requests turned into prompt records
  configuration the run's record (model identity: remembered weight digests, data provenance, versions)
  tokenisation  every prompt encoded as HFLM encodes it, readout positions found
  forward       the forward passes (this is the work; excluded from the overhead); the first batch's also
                checks lens parity, running on to the model's head at the scored positions
  analysis      curves, critical layer, early exit, summaries

Next to it, in fresh processes: a bare ``import lm_eval.models.huggingface`` and a bare model load (that import
plus lm-eval's ``hf`` model created for the same checkpoint): the floor any ``lm_eval --model hf`` run pays
before its first forward. "ours" is what the sweep adds to that floor outside its forwards (outside forward -
bare load). Each measurement runs ``--repeats`` times one after the other; the table shows every run.

Usage (the figures in benchmarks/README.md come from this exact command):
  python benchmarks/bench_sweep_overhead.py --repeats 2
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

PHASES = ("task_index", "model_load", "task_prompts", "configuration", "tokenisation", "forward", "analysis")


BARE_LOAD = """
import lm_eval.api.registry, lm_eval.models
from lm_eval_false_demos.core.embedded_models import resolve_pretrained
lm_eval.api.registry.get_model("hf").create_from_arg_obj(
    {{"pretrained": resolve_pretrained("{pretrained}"), "dtype": "float32"}}, {{"batch_size": 4, "device": "cpu"}})
"""


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", default="gemma-3-270m")
    parser.add_argument("--tasks", default="falsedemo_unnatural_correct,falsedemo_unnatural_permuted")
    parser.add_argument("--num_fewshot", type=int, default=24)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for repeat in range(args.repeats):
        imports = timed([sys.executable, "-c", "import lm_eval.models.huggingface"], env)
        bare_load = timed([sys.executable, "-c", BARE_LOAD.format(pretrained=args.pretrained)], env)
        with tempfile.TemporaryDirectory() as output:
            wall = timed([sys.executable, "-m", "lm_eval_false_demos.cli", "sweep",
                          "--model_args", f"pretrained={args.pretrained},dtype=float32", "--tasks", args.tasks,
                          "--num_fewshot", str(args.num_fewshot), "--batch_size", str(args.batch_size),
                          "--output_path", output, "--no_plots", "--bootstrap_iters", "0"], env)
            timing = json.loads(open(glob.glob(f"{output}/*/sweep.json")[0]).read())["timing"]
        phases = timing["phases"]
        rows.append({"repeat": repeat + 1, "wall": wall, "imports": imports, "bare_load": bare_load, "start-up": wall - timing["total_seconds"],
                     **phases, "prompts": timing["prompts"]})
    header = ["repeat", "wall", "forward", "outside forward", "ratio", "start-up", *[p for p in PHASES if p != "forward"],
              "bare import", "bare load", "ours"]
    print(" | ".join(header))
    for row in rows:
        outside = row["wall"] - row["forward"]
        print(" | ".join([str(row["repeat"]), f"{row['wall']:.1f}", f"{row['forward']:.1f}", f"{outside:.1f}",
                          f"{outside / row['forward']:.3f}", f"{row['start-up']:.1f}",
                          *[f"{row.get(p, 0.0):.2f}" for p in PHASES if p != "forward"], f"{row['imports']:.1f}", f"{row['bare_load']:.1f}",
                          f"{outside - row['bare_load']:.1f}"]))
    print(f"({rows[0]['prompts']} prompts; ratio = outside forward / forward, measured in the same run)")


if __name__ == "__main__":
    main()
