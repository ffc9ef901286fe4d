"""``falsedemo sweep``: the command line over :func:`lm_eval_false_demos.integrations.sweep.run_sweep`.

lm-eval's own flags (parsed with lm-eval's argument actions), every check before any model or data loads,
the run folder and its checkpoint, then the files (:mod:`results.sweep_files`) and a summary table."""

from __future__ import annotations

import argparse

from lm_eval_false_demos.cli import args as cli_args
from lm_eval_false_demos.core.architectures import PATH_OVERRIDES
from lm_eval_false_demos.core.sst2_formats import parse_formats
from lm_eval_false_demos.core.tuned_lens import lens_depth, parse_lens
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations import compat
from lm_eval_false_demos.integrations.run_context import RunOutput
from lm_eval_false_demos.integrations.sweep import check_no_exit_layer, run_sweep
from lm_eval_false_demos.results import checkpoints
from lm_eval_false_demos.results.sweep_files import format_summary, model_label

DEFAULT_SEED_STRING = cli_args.DEFAULT_SEED_STRING




def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The lm-eval flags a sweep needs, parsed with lm-eval's own argument actions and types."""
    MergeDictAction, SplitArgs = compat.model_args_actions()

    parser.add_argument("--model", "-M", default="hf",
                        help="lm-eval model type: hf, hf-earlyexit or hf-ablate (ablations apply during the sweep)")
    parser.add_argument("--model_args", "-a", default=None, nargs="+", action=MergeDictAction, metavar="<arg>",
                        help="model arguments exactly as lm_eval takes them: key=val,key2=val2 or a JSON object")
    parser.add_argument("--tasks", "-t", required=True, nargs="+", action=SplitArgs, metavar="<task>",
                        help="task names, tags (e.g. falsedemo_unnatural) or globs, resolved by lm-eval's TaskManager")
    parser.add_argument("--include_path", default=None, metavar="<dir>", help="extra task folder, as in lm_eval")
    parser.add_argument("--limit", "-L", type=float, default=None,
                        help="queries per task (integer count, or a fraction < 1 of the split), as in lm_eval")
    parser.add_argument("--num_fewshot", "-f", type=int, default=None, help="number of demonstrations k")
    parser.add_argument("--seed", type=cli_args.seed_list, default=cli_args.seed_list(DEFAULT_SEED_STRING),
                        metavar="<python,numpy,torch,fewshot>",
                        help=f"seeds with lm_eval's meaning (default {DEFAULT_SEED_STRING}); the fewshot slot "
                             "chooses the demonstrations, so prompts equal lm_eval's for the same value")
    parser.add_argument("--output_path", "-o", default="results",
                        help="folder; each run gets a new sweep_* folder (with --resume: the resumed folder)")
    parser.add_argument("--batch_size", "-b", default="1", help="prompts per forward pass (an integer)")
    parser.add_argument("--device", default=None, help="device, e.g. cpu or cuda:0 (default: as lm_eval's HFLM)")
    parser.add_argument("--bootstrap_iters", type=int, default=1000,
                        help="paired bootstrap resamples of the queries for the intervals (0 disables)")
    parser.add_argument("--analysis_seed", type=int, default=0,
                        help="seed of the held-out split of queries and of the bootstrap resampling")
    parser.add_argument("--confidence", type=float, default=0.95, help="level of the bootstrap intervals")
    parser.add_argument("--no_plots", action="store_true", help="skip the PNG/SVG figures")
    # lm_eval's chat flags, with its meaning: --apply_chat_template alone is multi-turn.
    parser.add_argument("--apply_chat_template", type=str, nargs="?", const=True, default=False, metavar="<template>",
                        help="render prompts with the model's chat template (as lm_eval; optional template name)")
    parser.add_argument("--fewshot_as_multiturn", type=lambda x: x.lower() in ("true", "1", "yes"), nargs="?",
                        const=True, default=None, metavar="<bool>",
                        help="demonstrations as user/assistant turns (default with --apply_chat_template); "
                             "'false': one user message")
    parser.add_argument("--system_instruction", type=str, default=None, metavar="<text>",
                        help="system message text (with --apply_chat_template), before the dataset's instruction")
    parser.add_argument("--sst2_format", default=None, metavar="<formats>",
                        help="SST-2 prompt formats (paper: 15, 0-14) for the SST-2 tasks requested: all, 3, 0,5 or "
                             "0-14; each format is scored as its own task (falsedemo_sst2_f<i>_<setting>)")
    parser.add_argument("--wrong_share", default=None, type=cli_args.wrong_share_grid, metavar="<percents>",
                        help="also run every permuted task at these shares of wrong demonstration labels, e.g. "
                             "0,25,50,75,100 (paired: the same demonstrations; label-correctness sensitivity)")
    parser.add_argument("--resume", default=None, metavar="<run folder>",
                        help="continue an interrupted sweep in its run folder (same arguments; refuses others)")
    parser.add_argument("--checkpoint_seconds", type=float, default=60.0,
                        help="save finished prompts into the run folder at most this often (0: after every batch)")


def check_arguments(args: argparse.Namespace) -> int:
    """Every argument, before any model or data loads; returns the batch size."""
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise FalseDemoError(f"--num_fewshot={args.num_fewshot} is negative; give k >= 0")
    batch_size = _parse_batch_size(args.batch_size)
    apply_chat_template = getattr(args, "apply_chat_template", False)
    multiturn = getattr(args, "fewshot_as_multiturn", None)
    if multiturn and not apply_chat_template:
        raise FalseDemoError("--fewshot_as_multiturn needs --apply_chat_template (as in lm_eval)")
    if getattr(args, "system_instruction", None) and not apply_chat_template:
        raise FalseDemoError("--system_instruction needs --apply_chat_template (it becomes the system message)")
    if args.sst2_format is not None:
        parse_formats(args.sst2_format)
    cli_args.check_limit(args.limit)
    cli_args.check_confidence(args.confidence)
    cli_args.check_at_least(args.bootstrap_iters, 0, "--bootstrap_iters", "0 disables the intervals")
    if not args.checkpoint_seconds >= 0:
        raise FalseDemoError(f"--checkpoint_seconds={args.checkpoint_seconds} is not allowed; give seconds >= 0")
    check_no_exit_layer(args.model_args or {})
    check_lens(args.model_args or {})
    if args.resume:
        checkpoints.check_resumable(args.resume, "sweep", cli_args.run_arguments(args))
    else:
        cli_args.check_output_folder(args.output_path)
    # last: it imports lm-eval's HF model
    cli_args.check_model_args(args.model, args.model_args or {}, read_by_caller=("lens", *PATH_OVERRIDES))
    if apply_chat_template:
        cli_args.check_chat_template(args.model_args or {})
    return batch_size


def check_lens(model_args) -> None:
    """``lens=``: a local tuned lens is read and checked whole (config, every translator), and its depth is
    compared with the model's config file when that is on disk: all before the model loads."""
    spec = parse_lens(model_args.get("lens"))
    depth = lens_depth(spec)
    shape = cli_args.model_shape_from_config(model_args) if depth is not None and model_args.get("pretrained") \
        else None
    if shape is not None and shape[0] != depth:
        raise FalseDemoError(f"lens {spec.source} has {depth} translators but the model has {shape[0]} blocks; "
                             "it was trained for another model")


def run(args: argparse.Namespace) -> int:
    batch_size = check_arguments(args)
    # The run folder is made before the forward passes (by the writer alone), so finished prompts can be saved.
    output = RunOutput("sweep", args.output_path,
                       f"sweep_{model_label({'model': args.model, 'model_args': args.model_args or {}})}",
                       resume=args.resume, arguments=cli_args.run_arguments(args), writer=cli_args.launched_rank() == 0)
    with output.guard():
        result = _run_from_arguments(args, batch_size, output)
    if result is None:  # not the writer: it writes
        return 0
    run_directory = output.store(result, plots=not args.no_plots)
    print(format_summary(result))
    print(f"sweep written to {run_directory}")
    return 0


def _run_from_arguments(args, batch_size, output):
    apply_chat_template = getattr(args, "apply_chat_template", False)
    multiturn = getattr(args, "fewshot_as_multiturn", None)
    sst2_formats = None if args.sst2_format is None else parse_formats(args.sst2_format)
    return run_sweep(
        model=args.model,
        model_args=args.model_args or {},
        tasks=args.tasks,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        seed=args.seed,
        batch_size=batch_size,
        device=args.device,
        include_path=args.include_path,
        bootstrap_iters=args.bootstrap_iters,
        analysis_seed=args.analysis_seed,
        confidence=args.confidence,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=bool(apply_chat_template) if multiturn is None else multiturn,
        system_instruction=getattr(args, "system_instruction", None),
        sst2_formats=sst2_formats,
        output=output,
        checkpoint_seconds=args.checkpoint_seconds,
        wrong_shares=args.wrong_share,
    )


def _parse_batch_size(value) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise FalseDemoError(
            f"--batch_size={value!r} is not an integer; the sweep batches prompts itself (auto is not supported)"
        ) from None
    if size < 1:
        raise FalseDemoError(f"--batch_size={size} must be >= 1")
    return size
