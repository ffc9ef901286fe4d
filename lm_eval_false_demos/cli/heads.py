"""``falsedemo heads``: find false induction heads, score their label promotion, ablate them vs random heads.

Flags, checks before anything loads, and printing only: the run is integrations.head_runs (prompts from the
lm-eval task, as the sweep's; the work split across processes), in a run context
(integrations.run_context: the model through lm-eval's registry, as ``lm_eval --model hf``; the run folder,
checkpoints and the one writer), written by results.heads_files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lm_eval_false_demos.analysis.head_evaluation import DEFAULT_RANDOM_DRAWS
from lm_eval_false_demos.analysis.head_prompts import DEFAULT_NUM_PROMPTS, DEFAULT_SEED, DEFAULT_TASK, parse_task
from lm_eval_false_demos.analysis.head_scores import DEFAULT_TOP_K
from lm_eval_false_demos.cli import args as cli_args
from lm_eval_false_demos.core.ablation_specs import parse_heads
from lm_eval_false_demos.core.chat import ChatOptions
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations import head_runs
from lm_eval_false_demos.integrations.run_context import RunOutput, open_model
from lm_eval_false_demos.results import checkpoints
from lm_eval_false_demos.results.heads_files import critical_layer_from_sweep

DEFAULT_DTYPE = head_runs.LOAD_DEFAULTS["dtype"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lm_eval._cli.utils import MergeDictAction

    parser.add_argument("--model_args", "-a", required=True, nargs="+", action=MergeDictAction, metavar="<arg>",
                        help="model arguments exactly as lm_eval --model hf takes them (key=val,key2=val2 or a JSON "
                             "object): pretrained=<hub id | folder | gemma-3-270m | smollm2-135m> is required; "
                             f"dtype defaults to {DEFAULT_DTYPE} here (lm_eval's default is auto)")
    parser.add_argument("--task", default=DEFAULT_TASK,
                        help=f"scoring task, any falsedemo task lm-eval finds (our tasks, or a user's through "
                             f"--include_path; a bare dataset key means its permuted task; default {DEFAULT_TASK})")
    parser.add_argument("--include_path", default=None, metavar="<dir>", help="extra task folder, as in lm_eval")
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
    if not model_args.get("pretrained"):
        raise FalseDemoError("--model_args needs pretrained=<hub id, folder or gemma-3-270m / smollm2-135m>")
    if args.device and model_args.get("device") not in (None, args.device):
        raise FalseDemoError(f"--device {args.device} and model arg device={model_args['device']} disagree; give one")
    if args.sweep and not Path(args.sweep).is_file():
        raise FalseDemoError(f"--sweep {args.sweep!r} is not a file; give a sweep.json")
    if args.resume:
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


def run(args: argparse.Namespace) -> int:
    given = None
    if args.heads:
        given = parse_heads(args.heads)
        if given == "auto" or not given:
            raise FalseDemoError("--heads needs explicit heads (14:6;16:7 or @heads.json); omit it to discover them")
        if not args.evaluate:
            raise FalseDemoError("--heads only makes sense with --evaluate (scoring would replace them)")
    datasets = [key.strip() for key in (args.evaluate or "").split(",") if key.strip()]
    if not args.include_path:  # a user's task folder may hold other datasets' tasks: lm-eval resolves them
        for key in datasets:
            parse_task(f"falsedemo_{key}_{args.corrupted_setting}")  # fail before loading the model
    chat_options = _chat_options(args)
    check_arguments(args)
    request = head_runs.HeadsRequest(
        task=args.task, num_prompts=args.num_prompts, seed=args.seed, num_fewshot=args.num_fewshot,
        top_k=args.top_k, given_heads=tuple(given) if given else None, heads_text=args.heads,
        datasets=tuple(datasets), limit=args.limit, corrupted_setting=args.corrupted_setting,
        random_draws=args.random_draws, random_seed=args.random_seed,
        apply_chat_template=chat_options is not None,
        fewshot_as_multiturn=bool(chat_options and chat_options.multiturn),
        system_instruction=chat_options.system_instruction if chat_options else None,
        include_path=args.include_path,
    )
    name = Path(str(args.model_args["pretrained"])).name or "model"
    output = RunOutput("heads", args.output_path, f"heads_{name}", resume=args.resume,
                       arguments=cli_args.run_arguments(args), writer=cli_args.launched_rank() == 0)
    with output.guard():
        return _run(args, request, output)


def _run(args, request: head_runs.HeadsRequest, output: RunOutput) -> int:
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    context = open_model("hf", args.model_args, device=args.device, defaults=head_runs.LOAD_DEFAULTS)
    log_here = log if context.is_writer else (lambda message: None)
    modules = context.modules
    log_here(f"[heads] loaded {args.model_args['pretrained']} ({modules.num_layers} layers x {modules.num_heads} "
             f"heads){'' if context.world_size == 1 else f' on {context.world_size} processes'}")
    cli_args.check_top_k(len(request.given_heads) if request.given_heads else request.top_k, modules.num_layers,
                         modules.num_heads, bool(request.datasets))
    try:
        record = head_runs.run_heads(context, output, request, log=log_here,
                                     show_progress=not args.no_progress and context.is_writer)
    finally:
        context.close()
    if record is None:  # not the writer: it writes
        return 0
    critical = critical_layer_from_sweep(args.sweep, _dataset_of(args.task)) if args.sweep else None
    written = output.store(record, plots=not args.no_plots, critical_layer=critical)
    print(format_summary(record.payload))
    print(f"wrote {', '.join(str(path) for path in written)}")
    print(f"ablate them with: lm_eval --model hf-ablate --model_args pretrained={args.model_args['pretrained']},"
          f"heads=@{output.directory / 'heads.json'} ...")
    return 0


def _dataset_of(task: str) -> str | None:
    try:
        return parse_task(task)[0]
    except FalseDemoError:  # a user's task: its dataset is not one of ours
        return None


def _chat_options(args):
    """lm_eval's chat flags (``--apply_chat_template`` alone is multi-turn), checked before the model loads."""
    multiturn = getattr(args, "fewshot_as_multiturn", None)
    system_instruction = getattr(args, "system_instruction", None)
    if not getattr(args, "apply_chat_template", False):
        if multiturn or system_instruction:
            raise FalseDemoError("--fewshot_as_multiturn and --system_instruction need --apply_chat_template")
        return None
    return ChatOptions(multiturn=True if multiturn is None else multiturn, system_instruction=system_instruction)


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
