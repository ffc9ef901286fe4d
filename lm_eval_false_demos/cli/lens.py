"""``falsedemo lens train``: fit a tuned lens (tuned-lens layout) on demonstration text.

Argument parsing, checks and printing only. The model opens in a run context (integrations.run_context, through
lm-eval's registry as ``lm_eval --model hf``) and the training runs in it (integrations.lens_runs); the text and
settings are analysis.lens_text, the objective and training loop analysis.lens_training, the checkpoint and
summary files results.lens_files.

Checkpoints (``checkpoint.pt``: translators, optimiser, step; tensors only) are written atomically every
``--checkpoint_every`` steps; rerunning the same command resumes from the last one (with another
``--tokens`` it trains to that budget instead, or stops at once if the checkpoint already reached it).
Torch, transformers and lm-eval's model load in :func:`run`, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lm_eval_false_demos.analysis.lens_text import DEFAULT_DATASETS, TrainingSettings
from lm_eval_false_demos.cli import args as cli_args
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations import compat

# The lens is fitted in float32 unless dtype= says otherwise (lm_eval's own default, auto, would take a bf16
# checkpoint's bf16 on CPU).
DEFAULT_DTYPE = "float32"
PARAMS = "params.pt"  # core.tuned_lens writes it last: a finished lens (that module imports torch)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    MergeDictAction, _ = compat.model_args_actions()

    actions = parser.add_subparsers(dest="lens_action", metavar="ACTION")
    actions.required = True
    train = actions.add_parser("train", help="fit a tuned lens (tuned-lens layout) on demonstration text")
    train.add_argument("--model_args", "-a", required=True, nargs="+", action=MergeDictAction, metavar="<arg>",
                       help="model arguments exactly as lm_eval --model hf takes them (key=val,key2=val2 or a JSON "
                            "object): pretrained=<hub id | folder | gemma-3-270m | smollm2-135m> is required; "
                            f"dtype defaults to {DEFAULT_DTYPE} here (lm_eval's default is auto); module path "
                            "overrides (layers_path=, norm_path=, ...) are read here, not passed to the model")
    train.add_argument("--output", "-o", required=True, help="lens folder: config.json + params.pt (tuned-lens layout)")
    train.add_argument("--tokens", type=int, default=200_000, help="token budget: tokens run through the model")
    train.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                       help="comma-separated dataset keys whose demonstration pools give the text")
    train.add_argument("--seq_len", type=int, default=128, help="tokens per training sequence")
    train.add_argument("--batch_size", type=int, default=8, help="sequences per step")
    train.add_argument("--positions", type=int, default=32,
                       help="positions per sequence in the loss (random each step; 0 = all)")
    train.add_argument("--vocab", default="all",
                       help="vocabulary tokens in the KL: all, or a subset size (top tokens + uniform sample)")
    train.add_argument("--lr", type=float, default=1.0, help="learning-rate scale (tuned-lens: lr = scale x (1 - momentum))")
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--weight_decay", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0, help="seeds the data order, positions and vocabulary samples")
    train.add_argument("--held_out_sequences", type=int, default=16,
                       help="sequences kept out of training to measure the per-layer KL")
    train.add_argument("--checkpoint_every", type=int, default=25, help="steps between checkpoints")
    train.add_argument("--device", default=None, help="cpu or cuda:0 (default: cuda:0 if there is one)")
    train.add_argument("--estimate_only", action="store_true",
                       help="print the cost estimate (one timed probe step) and stop without training")


def settings_from(args: argparse.Namespace) -> TrainingSettings:
    """The training settings the flags give, checked (FalseDemoError names the flag)."""
    vocab = None
    if args.vocab != "all":
        try:
            vocab = int(args.vocab)
        except ValueError:
            raise FalseDemoError(f"--vocab={args.vocab!r} is not allowed; allowed: all or a positive integer") from None
    settings = TrainingSettings(
        datasets=tuple(key.strip() for key in args.datasets.split(",") if key.strip()), tokens=args.tokens,
        seq_len=args.seq_len, batch_size=args.batch_size, positions=args.positions, vocab=vocab, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed,
        held_out_sequences=args.held_out_sequences, checkpoint_every=args.checkpoint_every,
    )
    settings.check(prefix="--")
    return settings


def check_arguments(args: argparse.Namespace) -> TrainingSettings:
    """Every argument, before any model or data loads; returns the settings."""
    settings = settings_from(args)
    model_args = args.model_args or {}
    if not model_args.get("pretrained"):
        raise FalseDemoError("--model_args needs pretrained=<hub id, folder or gemma-3-270m / smollm2-135m>")
    if args.device and model_args.get("device") not in (None, args.device):
        raise FalseDemoError(f"--device {args.device} and model arg device={model_args['device']} disagree; give one")
    max_length = cli_args.integer_model_arg(model_args, "max_length")
    if max_length is not None and max_length < settings.seq_len:
        raise FalseDemoError(f"--seq_len={settings.seq_len} is longer than the model arg max_length={max_length}; "
                             "give a shorter --seq_len")
    output = Path(args.output)
    if (output / PARAMS).exists():
        raise FalseDemoError(f"{output} already holds a trained lens ({PARAMS}); choose another --output")
    cli_args.check_output_folder(output, "--output")
    from lm_eval_false_demos.results import lens_files

    if (output / lens_files.CHECKPOINT).exists():  # a damaged or foreign checkpoint fails before the model loads
        lens_files.load_checkpoint(output / lens_files.CHECKPOINT, lens_files.training_fingerprint(model_args, settings))
    from lm_eval_false_demos.core.architectures import PATH_OVERRIDES

    # last: it imports lm-eval's HF model
    cli_args.check_model_args("hf", model_args, read_by_caller=PATH_OVERRIDES)
    return settings


def run(args: argparse.Namespace) -> int:
    settings = check_arguments(args)
    try:
        summary = train(args, settings)
    except (KeyboardInterrupt, SystemExit):
        checkpoint = Path(args.output) / "checkpoint.pt"  # results.lens_files.CHECKPOINT (that module imports torch)
        if checkpoint.is_file():
            print(f"training progress is saved in {checkpoint}; rerun the same command to continue", file=sys.stderr)
        raise
    if summary is None or summary.get("estimate_only"):  # None: not the process that writes
        return 0
    before, after = summary["held_out"]["kl_logit_lens"], summary["held_out"]["kl_tuned_lens"]
    print(f"trained on {summary['tokens']:,} tokens in {summary['training_seconds'] / 60:.1f} minutes; "
          f"held-out KL (nats) logit lens -> tuned lens, per layer:")
    print("  " + "  ".join(f"{layer}:{b:.2f}->{a:.2f}" for layer, (b, a) in enumerate(zip(before, after))))
    print(f"mean {sum(before) / len(before):.3f} -> {sum(after) / len(after):.3f}; lens written to {args.output}")
    worse = [layer for layer, (b, a) in enumerate(zip(before, after)) if a > b]
    if 2 * len(worse) > len(before):
        print(f"warning: the tuned lens reads worse than the logit lens (held-out KL up) at {len(worse)} of "
              f"{len(before)} layers; train again with a lower --lr or more --tokens", file=sys.stderr)
    return 0


def train(args: argparse.Namespace, settings: TrainingSettings) -> dict | None:
    """Open the model (float32 unless ``dtype=`` says otherwise) and train in it (integrations.lens_runs); the
    summary (``{"estimate_only": True, ...}`` with ``--estimate_only``; None on a process that does not train)."""
    from lm_eval_false_demos.integrations.lens_runs import train_lens
    from lm_eval_false_demos.integrations.run_context import open_model

    context = open_model("hf", args.model_args, batch_size=settings.batch_size, device=args.device,
                         defaults={"dtype": DEFAULT_DTYPE})
    return train_lens(context, settings, Path(args.output), estimate_only=args.estimate_only)
