"""Benchmark (not a test): the head-scoring pass against a plain sdpa forward over the same prompts.

    python benchmarks/bench_heads.py --pretrained gemma-3-270m --num-prompts 20 --repeats 2

The scoring pass (``analysis.head_scores.score_heads``) runs sdpa attention that also returns each layer's readout row
(``readout_attention``), hooks keeping the heads' o_proj inputs and the final residual at the readout, and
stops after the last block. It is compared, over the same token ids, with two plain forwards under sdpa:
the full one lm-eval's ``hf`` model runs (logits at every position) and one with ``logits_to_keep=1`` (the
strict comparison). A fourth pass scores through eager attention, the implementation that returns weights
out of the box, to show what the readout variant saves. Passes are interleaved and the fastest repeat of
each is kept, since the machine is shared. Target: scoring / plain <= 2.

It also times ``falsedemo heads --evaluate``'s readout over the same prompts: the unablated condition, the
top-k heads and ``--draws`` random draws (12 conditions by default) read with one query-token forward each
against the same conditions batched ``head_evaluation.CONDITION_BATCH_SIZE`` at a time.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from lm_eval_false_demos.analysis import head_evaluation, head_prompts, head_scores  # noqa: E402
from lm_eval_false_demos.core.ablation_specs import make_ablation  # noqa: E402
from lm_eval_false_demos.integrations import head_runs  # noqa: E402
from lm_eval_false_demos.integrations.run_context import open_model  # noqa: E402


def plain_forward(model, items, logits_to_keep: int) -> None:
    with torch.no_grad():
        for item in items:
            model(input_ids=torch.tensor([item.input_ids]), use_cache=False, logits_to_keep=logits_to_keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", default="gemma-3-270m")
    parser.add_argument("--task", default=head_prompts.DEFAULT_TASK)
    parser.add_argument("--num-prompts", type=int, default=20)
    parser.add_argument("--num-fewshot", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--draws", type=int, default=head_evaluation.DEFAULT_RANDOM_DRAWS, help="random draws in --evaluate")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # As `falsedemo heads` opens the model (lm-eval's hf) and reads the task's prompts (lm-eval's requests).
    context = open_model("hf", {"pretrained": args.pretrained}, defaults=head_runs.LOAD_DEFAULTS)
    model = context.model
    request = head_runs.HeadsRequest(task=args.task, num_prompts=args.num_prompts, seed=head_prompts.DEFAULT_SEED,
                                     num_fewshot=args.num_fewshot, top_k=head_scores.DEFAULT_TOP_K)
    prompts = head_runs.HeadPrompts(context, request)
    task = prompts.resolve(args.task)
    items = prompts.scoring_items(task, args.num_prompts)
    _, records, encoded = prompts.encoded(task, args.num_prompts)
    tokens = sum(len(item.input_ids) for item in items)

    modules = context.modules
    top = head_scores.score_heads(model, items[:2], modules).top_k(head_scores.DEFAULT_TOP_K)
    draws = head_scores.draw_random_heads(modules.num_layers, modules.num_heads, head_scores.DEFAULT_TOP_K, args.draws, seed=0)
    conditions = [None] + [make_ablation(model, heads=list(h), modules=modules) for h in [top, *draws]]
    queries = [head_evaluation.encode_query(record, prompt) for record, prompt in zip(records, encoded)]

    def evaluation_readouts(batch_size: int) -> None:
        for query in queries:
            head_evaluation.query_readouts(model, query, conditions, modules, True, condition_batch_size=batch_size)

    one_by_one = f"--evaluate readouts, {len(conditions)} conditions one by one"
    batched = f"--evaluate readouts, batched {head_evaluation.CONDITION_BATCH_SIZE} at a time"
    passes = {
        "plain sdpa forward, all logits (lm-eval hf)": lambda: plain_forward(model, items, 0),
        "plain sdpa forward, last logits": lambda: plain_forward(model, items, 1),
        "scoring pass (sdpa + readout row)": lambda: head_scores.score_heads(model, items),
        "scoring pass through eager attention": lambda: head_scores.score_heads(model, items, eager=True),
        one_by_one: lambda: evaluation_readouts(1),
        batched: lambda: evaluation_readouts(head_evaluation.CONDITION_BATCH_SIZE),
    }
    plain_forward(model, items[:2], 1)  # warm-up (allocator, lazy inits)
    best = {name: float("inf") for name in passes}
    for _ in range(args.repeats):
        for name, run in passes.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)

    print(f"model {args.pretrained} ({model.config.model_type}), task {args.task}, {len(items)} prompts, "
          f"{tokens / len(items):.0f} tokens/prompt, torch threads {torch.get_num_threads()}, "
          f"fastest of {args.repeats}")
    strict = best["plain sdpa forward, last logits"]
    for name, seconds in best.items():
        print(f"  {name:<46} {seconds:8.2f} s   {seconds / strict:5.2f} x (vs plain, last logits)")
    scoring = best["scoring pass (sdpa + readout row)"]
    full = best["plain sdpa forward, all logits (lm-eval hf)"]
    print(f"scoring / plain forward: {scoring / strict:.2f} (last logits), {scoring / full:.2f} (all logits); "
          f"target <= 2")
    print(f"--evaluate readouts batched / one by one: {best[batched] / best[one_by_one]:.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
