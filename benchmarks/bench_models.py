"""Benchmark (not a test): cost of hf-earlyexit / hf-ablate against plain hf on gemma-3-270m.

    python benchmarks/bench_models.py --limit 40 --repeats 2

(The levers' accuracies are a report, not a benchmark: ``reports/levers/run.sh``.)

Each configuration runs in its own subprocess (so peak RSS is per configuration, via getrusage) through
lm-eval's ``simple_evaluate`` on the same task, limit and batch size. ``model_s`` is the time spent inside
``loglikelihood`` (the model's share); ``eval_s`` the whole evaluation incl. prompt building. With
``--repeats`` the configurations are interleaved and the fastest run of each is kept, since the machine is
shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TASK = "falsedemo_unnatural_permuted"
FIVE_HEADS = "8:0;9:1;10:2;11:3;12:0"


def worker(config: dict) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lm_eval
    import lm_eval.models  # noqa: F401  (registers hf-earlyexit / hf-ablate through the plugin hook)
    from lm_eval.api.registry import get_model

    started = time.perf_counter()
    lm = get_model(config["model"]).create_from_arg_obj(
        config["model_args"], {"batch_size": config["batch_size"], "device": "cpu"}
    )
    load_s = time.perf_counter() - started
    spent = [0.0]
    original = lm.loglikelihood

    def timed(requests, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(requests, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    lm.loglikelihood = timed
    started = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=lm, tasks=[config["task"]], limit=config["limit"], num_fewshot=config.get("num_fewshot"),
        log_samples=False, bootstrap_iters=0,
    )
    eval_s = time.perf_counter() - started
    metrics = {
        key.split(",")[0]: value
        for key, value in results["results"][config["task"]].items()
        if isinstance(value, float) and "stderr" not in key
    }
    return {
        "load_s": load_s,
        "eval_s": eval_s,
        "model_s": spent[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "metrics": metrics,
        "falsedemo": lm.get_model_info().get("falsedemo"),
    }


def run(config: dict) -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(config)], capture_output=True, text=True
    )
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-4000:])
        raise SystemExit(f"configuration {config['name']} failed")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def base_config(args, name, model, **model_args) -> dict:
    return {
        "name": name,
        "model": model,
        "model_args": {"pretrained": args.pretrained, "dtype": "float32", **model_args},
        "task": args.task,
        "limit": args.limit,
        "num_fewshot": args.num_fewshot,
        "batch_size": args.batch_size,
    }


def overhead(args) -> None:
    configs = [
        base_config(args, "hf", "hf"),
        base_config(args, "hf-earlyexit exit_layer=-1", "hf-earlyexit", exit_layer=-1),
        base_config(args, f"hf-ablate heads={args.heads}", "hf-ablate", heads=args.heads),
    ]
    best: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for config in configs:
            result = run(config)
            print(f"  run {repeat + 1} {config['name']}: model {result['model_s']:.2f}s eval {result['eval_s']:.2f}s "
                  f"rss {result['peak_rss_mb']:.0f} MB", flush=True)
            previous = best.get(config["name"])
            if previous is None or result["model_s"] < previous["model_s"]:
                best[config["name"]] = {**result, "peak_rss_mb": max(result["peak_rss_mb"], previous["peak_rss_mb"])
                                        if previous else result["peak_rss_mb"]}
    plain = best["hf"]
    print(f"\n{args.task} limit={args.limit} num_fewshot={args.num_fewshot} batch_size={args.batch_size} "
          f"pretrained={args.pretrained} (best of {args.repeats})")
    print(f"{'model':40s} {'model_s':>8s} {'ratio':>6s} {'eval_s':>8s} {'ratio':>6s} {'peak MB':>8s} {'ratio':>6s}  calibrated_acc")
    for name, result in best.items():
        print(f"{name:40s} {result['model_s']:8.2f} {result['model_s'] / plain['model_s']:6.3f} "
              f"{result['eval_s']:8.2f} {result['eval_s'] / plain['eval_s']:6.3f} "
              f"{result['peak_rss_mb']:8.0f} {result['peak_rss_mb'] / plain['peak_rss_mb']:6.3f}  "
              f"{result['metrics'].get('calibrated_acc')}")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2])), default=str))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", default="gemma-3-270m")
    parser.add_argument("--task", default=TASK)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--num-fewshot", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--heads", default=FIVE_HEADS)
    args = parser.parse_args()
    from lm_eval_false_demos.core.embedded_models import resolve_pretrained

    # resolved once here so every configuration loads the very same folder (and no worker converts)
    args.pretrained = resolve_pretrained(args.pretrained)
    overhead(args)


if __name__ == "__main__":
    main()
