"""Benchmark: peak memory of the sweep, hf-earlyexit and plain hf on the same job, by batch size and k.

Each configuration runs in its own fresh process, one after the other. In each child the model and lm-eval's
TaskManager are built first; then the kernel's peak-RSS counter is reset (``/proc/self/clear_refs`` = 5) and
the job runs, so "growth" is what the job itself allocates above the loaded model, and "peak" the process's
high-water mark during the job. All three modes score the same prompts:

  sweep      run_sweep: the K label logits at every layer 0..L and every readout position, one forward each
  earlyexit  lm_eval.simple_evaluate with hf-earlyexit, exit_layer = L // 2
  hf         lm_eval.simple_evaluate with the plain HFLM (full-vocabulary logits at every position)

Usage (the figures in benchmarks/README.md come from this exact command; a few minutes on 2 cores):
  python benchmarks/bench_memory.py --pretrained gemma-3-270m --limit 8 --batch_sizes 1,4,8 --num_fewshot 8,24
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TASK = "falsedemo_unnatural_permuted"
MODES = ("sweep", "earlyexit", "hf")


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def child(mode: str, batch_size: int, num_fewshot: int, args: argparse.Namespace) -> dict:
    import lm_eval
    import lm_eval.api.registry
    import lm_eval.models  # noqa: F401  (registers hf and, through the plugin hook, hf-earlyexit)
    import torch
    import transformers

    from lm_eval_false_demos.core import embedded_models
    from lm_eval_false_demos.integrations import loading
    from lm_eval_false_demos.integrations.sweep import run_sweep
    from lm_eval_false_demos.integrations.sweep_prompts import falsedemo_task_manager

    model_args = {"pretrained": args.pretrained, "dtype": "float32"}
    if mode == "earlyexit":
        config = transformers.AutoConfig.from_pretrained(embedded_models.resolve_pretrained(args.pretrained))
        config = getattr(config, "text_config", config)
        model_args["exit_layer"] = config.num_hidden_layers // 2
    lm = lm_eval.api.registry.get_model("hf-earlyexit" if mode == "earlyexit" else "hf").create_from_arg_obj(
        loading.resolve_embedded(model_args), {"batch_size": batch_size, "device": "cpu"})
    task_manager = falsedemo_task_manager(None, {"pretrained": args.pretrained})
    with torch.no_grad():  # page in memory-mapped weights now, so "growth" is the job's own allocations
        sum(float(parameter.reshape(-1)[::1024].sum()) for parameter in lm.model.parameters())
    loaded = _status_mib("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    if mode == "sweep":
        result = run_sweep(model="hf", model_args=model_args, tasks=[TASK], limit=args.limit, num_fewshot=num_fewshot,
                           seed=[0, 1234, 1234, 1234], batch_size=batch_size, bootstrap_iters=0,
                           task_manager=task_manager, lm=lm, show_progress=False)
        accuracy = result["tasks"][TASK]["per_layer"]["calibrated_acc"][-1]
    else:
        out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], limit=args.limit, num_fewshot=num_fewshot,
                                      fewshot_random_seed=1234, task_manager=task_manager, bootstrap_iters=0)
        accuracy = out["results"][TASK]["calibrated_acc,none"]
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    return {"mode": mode, "batch_size": batch_size, "k": num_fewshot, "loaded_mib": loaded, "peak_mib": peak,
            "growth_mib": peak - loaded, "seconds": seconds, "calibrated_acc": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", default="gemma-3-270m")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--batch_sizes", default="1,4,8")
    parser.add_argument("--num_fewshot", default="8,24", help="k values: the first at every batch size, the "
                        "others at the largest batch size")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--child", nargs=3, metavar=("MODE", "BATCH", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, batch, k = args.child
        print(json.dumps(child(mode, int(batch), int(k), args)))
        return
    batches = [int(value) for value in args.batch_sizes.split(",")]
    ks = [int(value) for value in args.num_fewshot.split(",")]
    plan = [(b, ks[0]) for b in batches] + [(batches[-1], k) for k in ks[1:]]
    rows = []
    for batch, k in plan:
        for mode in args.modes.split(","):
            command = [sys.executable, __file__, "--pretrained", args.pretrained, "--limit", str(args.limit),
                       "--child", mode, str(batch), str(k)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{mode} batch={batch} k={k} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"{row['mode']:<10} batch {batch:>2} k {k:>2}: loaded {row['loaded_mib']:7.0f} MiB, peak "
                  f"{row['peak_mib']:7.0f} MiB, growth {row['growth_mib']:7.0f} MiB, {row['seconds']:6.1f} s, "
                  f"calibrated_acc {row['calibrated_acc']:.3f}", flush=True)
    print("\n| mode | batch | k | growth over the loaded model (MiB) | peak RSS (MiB) | seconds | calibrated_acc |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['mode']} | {row['batch_size']} | {row['k']} | {row['growth_mib']:.0f} | {row['peak_mib']:.0f} "
              f"| {row['seconds']:.1f} | {row['calibrated_acc']:.3f} |")


if __name__ == "__main__":
    main()
