"""``falsedemo heads``: find false induction heads, score their label promotion, ablate them vs random heads.

Argument parsing, checks, orchestration and printing only. The model loads through lm-eval's registry
(integrations.loading, as ``lm_eval --model hf``); the scores are analysis.head_scores, the ablation
experiment analysis.head_evaluation, the prompts analysis.head_prompts and the files results.heads_files.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lm_eval_false_demos.analysis.head_evaluation import DEFAULT_RANDOM_DRAWS, evaluate_heads
from lm_eval_false_demos.analysis.head_prompts import (
    DEFAULT_NUM_PROMPTS,
    DEFAULT_SEED,
    DEFAULT_TASK,
    default_num_fewshot,
    parse_task,
)
from lm_eval_false_demos.analysis.head_scores import (
    DEFAULT_TOP_K,
    HeadScores,
    draw_random_heads,
    format_heads,
    score_task,
)
from lm_eval_false_demos.cli import args as cli_args
from lm_eval_false_demos.core import files as results_io
from lm_eval_false_demos.core.ablation_specs import parse_heads
from lm_eval_false_demos.core.architectures import resolve_modules
from lm_eval_false_demos.core.chat import ChatOptions, check_has_template, template_sha256
from lm_eval_false_demos.core.data_loading import data_provenance_for, data_source_summary
from lm_eval_false_demos.core.files import canonical_model_args
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations import loading
from lm_eval_false_demos.results import checkpoints
from lm_eval_false_demos.results.heads_files import critical_layer_from_sweep, heads_payload, write_outputs

# Scores are sums over attention rows and a frozen-norm logit attribution: float32 unless dtype= says otherwise
# (lm_eval's own default, auto, would take a bf16 checkpoint's bf16 on CPU).
DEFAULT_DTYPE = "float32"
# Scoring swaps in a weights-returning variant of sdpa for its pass (core/readout_attention.py).
DEFAULT_ATTN_IMPLEMENTATION = "sdpa"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lm_eval._cli.utils import MergeDictAction

    parser.add_argument("--model_args", "-a", required=True, nargs="+", action=MergeDictAction, metavar="<arg>",
                        help="model arguments exactly as lm_eval --model hf takes them (key=val,key2=val2 or a JSON "
                             "object): pretrained=<hub id | folder | gemma-3-270m | smollm2-135m> is required; "
                             f"dtype defaults to {DEFAULT_DTYPE} here (lm_eval's default is auto)")
    parser.add_argument("--task", default=DEFAULT_TASK, help=f"scoring task (default {DEFAULT_TASK})")
    parser.add_argument("--num_prompts", "-n", type=int, default=DEFAULT_NUM_PROMPTS,
                        help="prompts scored: the task's first N queries, as lm_eval --limit N")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="few-shot seed of the prompts (lm-eval's 4th --seed value; default 1234)")
    parser.add_argument("--num_fewshot", "-f", type=int, default=None, help="demonstrations k (default: the task's)")
    parser.add_argument("--top_k", "-k", type=int, default=DEFAULT_TOP_K, help="heads exported and ablated")
    parser.add_argument("--heads", default=None,
                        help="skip scoring and use these heads (14:6;16:7 or @heads.json); needs --evaluate")
    parser.add_argument("--sweep", default=None, help="sweep.json whose critical layer is marked in the plot")
    parser.add_argument("--evaluate", default=None,
                        help="comma-separated dataset keys (e.g. unnatural,sst2,ag_news,trec): gap recovered "
                             "by zeroing the top-k heads vs random heads")
    parser.add_argument("--limit", type=int, default=100, help="queries per dataset in --evaluate")
    parser.add_argument("--corrupted_setting", default="permuted", help="corrupted setting in --evaluate")
    parser.add_argument("--random_draws", "-R", type=int, default=DEFAULT_RANDOM_DRAWS,
                        help="random-head draws (k distinct heads each) in --evaluate")
    parser.add_argument("--random_seed", type=int, default=0, help="seed of the random-head draws")
    parser.add_argument("--output_path", "-o", default="results",
                        help="folder; each run gets a new heads_* folder (with --resume: the resumed folder)")
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda:0 (default: cuda:0 if there is one)")
    parser.add_argument("--no_plots", action="store_true", help="skip the figures")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--apply_chat_template", action="store_true",
                        help="render prompts with the model's chat template, as lm_eval --apply_chat_template")
    parser.add_argument("--fewshot_as_multiturn", type=lambda x: x.lower() in ("true", "1", "yes"), nargs="?",
                        const=True, default=None, metavar="<bool>",
                        help="demos as user/assistant turns (default with --apply_chat_template); 'false': one user message")
    parser.add_argument("--system_instruction", default=None, help="system message text (with --apply_chat_template)")
    parser.add_argument("--resume", default=None, metavar="<run folder>",
                        help="continue an interrupted run in its run folder (same arguments; refuses others)")


def check_arguments(args: argparse.Namespace) -> None:
    """Every argument, before any model or data loads."""
    model_args = args.model_args or {}
    cli_args.check_at_least(args.top_k, 1, "--top_k", "heads exported and ablated")
    cli_args.check_at_least(args.num_prompts, 1, "--num_prompts")
    cli_args.check_at_least(args.limit, 1, "--limit", "queries per dataset")
    cli_args.check_at_least(args.random_draws, 1, "--random_draws")
    if args.num_fewshot is not None:
        cli_args.check_at_least(args.num_fewshot, 0, "--num_fewshot")
    parse_task(args.task)
    if not model_args.get("pretrained"):
        raise FalseDemoError("--model_args needs pretrained=<hub id, folder or gemma-3-270m / smollm2-135m>")
    if args.device and model_args.get("device") not in (None, args.device):
        raise FalseDemoError(f"--device {args.device} and model arg device={model_args['device']} disagree; give one")
    if args.sweep and not Path(args.sweep).is_file():
        raise FalseDemoError(f"--sweep {args.sweep!r} is not a file; give a sweep.json")
    if args.resume:
        if cli_args.launched_world_size() > 1:
            raise FalseDemoError("--resume runs on one process; resume without accelerate launch")
        checkpoints.check_resumable(args.resume, "heads", cli_args.run_arguments(args))
    else:
        cli_args.check_output_folder(args.output_path)
    # last: it imports lm-eval's HF model
    cli_args.check_model_args("hf", model_args, plain_hf_hint=(
        "is not read by falsedemo heads (it loads the plain hf model and ablates with --heads / --evaluate); "
        "use lm_eval --model hf-ablate for ablations"))
    if getattr(args, "apply_chat_template", False):
        cli_args.check_chat_template(model_args)
    shape = cli_args.model_shape_from_config(model_args)
    if shape is not None:
        given = len(parse_heads(args.heads)) if args.heads and not args.heads.strip() == "auto" else args.top_k
        cli_args.check_top_k(given, *shape, evaluate=bool(args.evaluate))


def load_lm(model_args: Mapping[str, Any], device: str | None):
    """lm-eval's ``hf`` model (HFLM) from its registry, as ``lm_eval --model hf --model_args ...`` loads it
    (packaged short names resolved), with heads' defaults for ``dtype`` and ``attn_implementation``."""
    load_args = loading.resolve_embedded(model_args)
    load_args.setdefault("dtype", DEFAULT_DTYPE)
    load_args.setdefault("attn_implementation", DEFAULT_ATTN_IMPLEMENTATION)
    device = device or load_args.pop("device", None)
    load_args.pop("device", None)
    batch_size = load_args.pop("batch_size", 1)  # lm-eval passes it beside the model args; heads runs one prompt
    return loading.create_model("hf", load_args, batch_size, device)


def run(args: argparse.Namespace) -> int:
    given = None
    if args.heads:
        given = parse_heads(args.heads)
        if given == "auto" or not given:
            raise FalseDemoError("--heads needs explicit heads (14:6;16:7 or @heads.json); omit it to discover them")
        if not args.evaluate:
            raise FalseDemoError("--heads only makes sense with --evaluate (scoring would replace them)")
    datasets = [key.strip() for key in (args.evaluate or "").split(",") if key.strip()]
    for key in datasets:
        parse_task(f"falsedemo_{key}_{args.corrupted_setting}")  # fail before loading the model
    chat_options = _chat_options(args)
    check_arguments(args)
    model_args = dict(args.model_args)
    if args.resume:
        checkpoint = checkpoints.RunCheckpoint(args.resume)
    else:
        name = Path(str(model_args["pretrained"])).name or "model"
        checkpoint = checkpoints.RunCheckpoint(root=args.output_path, name=f"heads_{name}")
    with checkpoints.kept_or_discarded(checkpoint, "heads", args.output_path, bool(args.resume)):
        return _run(args, model_args, given, datasets, checkpoint, chat_options)


def _run(args, model_args, given, datasets, checkpoint, chat_options) -> int:

    started = run_started = time.time()
    timing = {}
    lm = load_lm(model_args, args.device)
    model, tokenizer = lm.model, lm.tokenizer
    # lm-eval's encoding of a context (HFLM.tok_encode: its BOS rule) and its prompt budget.
    encoding = {"encode": lm.tok_encode, "max_length": int(lm.max_length)}
    prompt_format = _prompt_format(tokenizer, chat_options, str(model_args["pretrained"]))
    modules = resolve_modules(model)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    log(f"[heads] loaded {model_args['pretrained']} ({modules.num_layers} layers x {modules.num_heads} heads) "
        f"in {time.time() - started:.0f}s")
    cli_args.check_top_k(len(given) if given else args.top_k, modules.num_layers, modules.num_heads, bool(datasets))

    config = {
        "model": "hf",
        "model_args": canonical_model_args(model_args),
        "model_identity": loading.model_identity(loading.resolve_embedded(model_args), lm),
        "num_layers": modules.num_layers,
        "num_heads": modules.num_heads,
        "task": args.task,
        "num_prompts": None,
        "seed": args.seed,
        "k": args.num_fewshot if args.num_fewshot is not None else default_num_fewshot(parse_task(args.task)[0]),
        "top_k": len(given) if given else args.top_k,
        "heads_given": args.heads,
        "readout": "last query token",
        "label_promoting_norm": "final norm (and Gemma's post-attention norm) with scale frozen at the actual "
                                "residual; output-head bias cancels; pre soft-cap",
        "data_source": data_source_summary(),
        "versions": results_io.versions(),
        **prompt_format,
        "command": "falsedemo heads " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["heads"] else sys.argv[1:]),
    }
    if datasets:
        config.update(evaluate=datasets, limit=args.limit, random_draws=args.random_draws,
                      random_seed=args.random_seed, corrupted_setting=args.corrupted_setting)
    # What is read for the datasets used (scored task, evaluated datasets): source, sizes, fingerprint. Known
    # before any work, so a resumed run refuses changed data.
    config["data_provenance"] = data_provenance_for(([] if given else [parse_task(args.task)[0]]) + datasets)
    if args.resume:
        checkpoint.resume("heads", config)
    else:
        checkpoint.start("heads", config, cli_args.run_arguments(args), config["command"])

    scores = None
    if given is None:
        started = time.time()
        stored = checkpoint.load("scores")
        if stored is not None:
            scores = HeadScores(stored["prefix_matching"], stored["label_promoting"])
        else:
            scores = score_task(model, tokenizer, args.task, args.num_prompts, args.seed, args.num_fewshot,
                                show_progress=not args.no_progress, chat_options=chat_options, **encoding)
            checkpoint.save("scores", {"prefix_matching": scores.prefix_matching,
                                       "label_promoting": scores.label_promoting})
        top = scores.top_k(args.top_k)
        timing["scoring_seconds"] = round(time.time() - started, 3)
        log(f"[heads] scored {scores.num_prompts} prompts in {time.time() - started:.0f}s; top-{args.top_k}: "
            f"{format_heads(top)}")
        config["num_prompts"] = scores.num_prompts
    else:
        top = list(given)
    evaluation = None
    if datasets:
        draws = draw_random_heads(modules.num_layers, modules.num_heads, len(top), args.random_draws, args.random_seed)
        started = time.time()
        evaluation = evaluate_heads(model, tokenizer, datasets, top, draws, args.limit, args.seed,
                                    args.num_fewshot, args.corrupted_setting, log=log,
                                    show_progress=not args.no_progress, chat_options=chat_options,
                                    checkpoint=checkpoint, **encoding)
        timing["evaluation_seconds"] = round(time.time() - started, 3)
    critical = critical_layer_from_sweep(args.sweep, parse_task(args.task)[0]) if args.sweep else None
    directory = checkpoint.run_directory
    timing["total_seconds"] = round(time.time() - run_started, 3)
    payload = heads_payload(config, scores, top, evaluation, timing)
    written = write_outputs(payload, scores, directory, plots=not args.no_plots, critical_layer=critical)
    checkpoint.finish()
    print(format_summary(payload))
    print(f"wrote {', '.join(str(path) for path in written)}")
    print(f"ablate them with: lm_eval --model hf-ablate --model_args pretrained={model_args['pretrained']},"
          f"heads=@{directory / 'heads.json'} ...")
    return 0


def _chat_options(args):
    """lm_eval's chat flags (``--apply_chat_template`` alone is multi-turn), checked before the model loads."""
    multiturn = getattr(args, "fewshot_as_multiturn", None)
    system_instruction = getattr(args, "system_instruction", None)
    if not getattr(args, "apply_chat_template", False):
        if multiturn or system_instruction:
            raise FalseDemoError("--fewshot_as_multiturn and --system_instruction need --apply_chat_template")
        return None
    return ChatOptions(multiturn=True if multiturn is None else multiturn, system_instruction=system_instruction)


def _prompt_format(tokenizer, chat_options, model_name: str) -> dict:
    if chat_options is None:
        return {"prompt_mode": "raw", "chat_template_sha256": None}
    template = check_has_template(tokenizer, model_name)
    return {"prompt_mode": chat_options.mode, "chat_template_sha256": template_sha256(template),
            "system_instruction": chat_options.system_instruction}


def format_summary(payload: dict) -> str:
    lines = [f"top-k heads: {payload['top_k']}"]
    if payload["heads"]:
        lines.append("rank layer:head  prefix_matching  label_promoting")
        for row in payload["heads"][: max(payload["config"].get("top_k") or 5, 5)]:
            lines.append(f"{row['rank']:>4} {row['layer']:>5}:{row['head']:<4} {row['prefix_matching']:>15.4f}"
                         f" {row['label_promoting']:>16.4f}")
    evaluation = payload.get("evaluation")
    if evaluation:
        lines.append("dataset  acc_correct  acc_corrupted  ablated  gap_recovered  random_gap_recovered (sd)")
        for key, entry in evaluation["datasets"].items():
            random = entry["random"]["gap_recovered"]
            lines.append(f"{key:<12} {entry['acc_correct']:.3f} {entry['acc_corrupted']:.3f} "
                         f"{entry['top_k']['acc_corrupted_ablated']:.3f} {entry['top_k']['gap_recovered']:+.3f} "
                         f"{random['mean']:+.3f} ({random['sd']:.3f})")
        control = evaluation["random_control"]
        pooled = evaluation["pooled_gap_recovered"]
        lines.append(f"pooled gap recovered: top-k {pooled['top_k']:+.3f}; random {pooled['random']['mean']:+.3f} "
                     f"(sd {pooled['random']['sd']:.3f}, max {pooled['random']['max']:+.3f})")
        lines.append(f"mean of per-dataset gap recovered: top-k {evaluation['gap_recovered']['mean']:+.3f}; random "
                     f"{control['mean']:+.3f} (sd {control['sd']:.3f}, {control['n']} draws)")
        lp = evaluation["label_promoting"]
        lines.append(f"label-promoting: top-k {lp['top_k']:+.3f}; random {lp['random']['mean']:+.3f} "
                     f"(sd {lp['random']['sd']:.3f})")
    return "\n".join(lines)
