"""Benchmark: one ``falsedemo sweep`` against one plain ``lm_eval --model hf`` run, side by side.

Each measurement runs in its own fresh Python process (one after the other, never concurrently), so peak
memory (the process's maximum resident set) is not inherited from an earlier measurement. In every child
the model object and lm-eval's TaskManager are built *before* the clock starts, identically for all
modes; the timed region is what differs: building the prompts, the forward passes and the metrics.

Modes:
  hf         lm_eval.simple_evaluate with the plain HFLM (full-vocabulary logits at the last layer)
  sweep      run_sweep: all L+1 readouts at the query and every demo's label position, one forward each
  earlyexit  lm_eval.simple_evaluate with hf-earlyexit at exit_layer = L // 2. A cost of one lm-eval run
             per layer is extrapolated as this x (L+1): the forward up to layer l costs about l blocks,
             so the middle layer is the average layer's cost (the head cost is the same at every layer).

Usage (the numbers in the report come from this exact command):
  python benchmarks/bench_sweep.py --pretrained gemma-3-270m \\
      --tasks falsedemo_sst2_correct,falsedemo_sst2_permuted --limit 20 --num_fewshot 24
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def child(mode: str, args: argparse.Namespace) -> dict:
    import lm_eval
    import lm_eval.api.registry
    import lm_eval.models  # noqa: F401  (registers hf and, through the plugin hook, hf-earlyexit)
    from lm_eval.tasks import TaskManager

    from lm_eval_false_demos.core.architectures import resolve_modules
    from lm_eval_false_demos.integrations.sweep import run_sweep

    tasks = args.tasks.split(",")
    model_args = {"pretrained": args.pretrained, "dtype": "float32"}
    model_type = {"hf": "hf", "sweep": "hf", "earlyexit": "hf-earlyexit"}[mode]
    if mode == "earlyexit":
        import transformers

        config = transformers.AutoConfig.from_pretrained(args.pretrained)
        config = getattr(config, "text_config", config)
        model_args["exit_layer"] = config.num_hidden_layers // 2
    lm = lm_eval.api.registry.get_model(model_type).create_from_arg_obj(
        model_args, {"batch_size": args.batch_size, "device": "cpu"}
    )
    task_manager = TaskManager(metadata=dict(model_args))
    num_layers = resolve_modules(lm.model).num_layers
    loaded_rss = _peak_rss_mib()

    started = time.perf_counter()
    if mode == "sweep":
        result = run_sweep(
            model="hf", model_args=model_args, tasks=tasks, limit=args.limit, num_fewshot=args.num_fewshot,
            batch_size=args.batch_size, task_manager=task_manager, lm=lm, bootstrap_iters=0, show_progress=False,
        )
        headline = {name: task["per_layer"]["calibrated_acc"][-1] for name, task in result["tasks"].items()}
    else:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, limit=args.limit, num_fewshot=args.num_fewshot, task_manager=task_manager,
            bootstrap_iters=0, fewshot_random_seed=1234,
        )
        headline = {name: values.get("calibrated_acc,none") for name, values in results["results"].items()}
    seconds = time.perf_counter() - started
    return {
        "mode": mode,
        "seconds": seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "rss_after_model_load_mib": loaded_rss,
        "num_layers": num_layers,
        "exit_layer": model_args.get("exit_layer"),
        "calibrated_acc": headline,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", default="gemma-3-270m",
                        help="HF folder, hub id or packaged short name (gemma-3-270m)")
    parser.add_argument("--tasks", default="falsedemo_sst2_correct,falsedemo_sst2_permuted")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--num_fewshot", type=int, default=24)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--modes", default="hf,sweep,earlyexit")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:
        print("BENCH_RESULT " + json.dumps(child(args._child, args)), flush=True)
        return 0

    from lm_eval_false_demos.core.embedded_models import resolve_pretrained

    # Convert a packaged GGUF once, up front, so no child pays for it.
    args.pretrained = resolve_pretrained(args.pretrained)
    measurements = {}
    for mode in args.modes.split(","):
        command = [sys.executable, __file__, "--_child", mode, "--pretrained", args.pretrained, "--tasks", args.tasks,
                   "--limit", str(args.limit), "--num_fewshot", str(args.num_fewshot),
                   "--batch_size", str(args.batch_size)]
        completed = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in completed.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
        if completed.returncode != 0 or not lines:
            sys.stderr.write(completed.stderr[-4000:])
            raise SystemExit(f"benchmark mode {mode} failed (exit {completed.returncode})")
        measurements[mode] = json.loads(lines[-1][len("BENCH_RESULT "):])
        print(f"{mode:10s} {measurements[mode]['seconds']:8.1f} s  peak RSS {measurements[mode]['peak_rss_mib']:8.0f} MiB",
              flush=True)

    print()
    print(f"tasks={args.tasks} limit={args.limit} num_fewshot={args.num_fewshot} batch_size={args.batch_size}")
    plain = measurements.get("hf")
    if plain:
        if "sweep" in measurements:
            sweep = measurements["sweep"]
            print(f"sweep / plain hf wall time:   {sweep['seconds'] / plain['seconds']:.2f}  (target <= 1.2) "
                  f"[{sweep['num_layers'] + 1} layers x all demo positions, one forward per prompt]")
            print(f"sweep / plain hf peak memory: {sweep['peak_rss_mib'] / plain['peak_rss_mib']:.2f}  (target <= 1.10)")
            print(f"last-layer calibrated_acc  sweep {sweep['calibrated_acc']}")
            print(f"                           hf    {plain['calibrated_acc']}")
        if "earlyexit" in measurements:
            early = measurements["earlyexit"]
            layers = early["num_layers"] + 1
            print(f"loop of lm-eval runs, one per layer / plain hf: {layers * early['seconds'] / plain['seconds']:.2f} "
                  f"(EXTRAPOLATED: one measured hf-earlyexit run at exit_layer={early['exit_layer']}, "
                  f"{early['seconds']:.1f} s, x {layers} layers)")
    print("raw: " + json.dumps(measurements))
    return 0


if __name__ == "__main__":
    sys.exit(main())
