"""``falsedemo lens train``: fit a tuned lens (tuned-lens layout) on demonstration text.

Argument parsing, checks, orchestration and printing only. The model loads through lm-eval's registry
(integrations.loading, as ``lm_eval --model hf``); the text and settings are analysis.lens_text, the objective
and training loop analysis.lens_training, the checkpoint and summary files results.lens_files.

Checkpoints (``checkpoint.pt``: translators, optimiser, step; tensors only) are written atomically every
``--checkpoint_every`` steps; rerunning the same command resumes from the last one (with another
``--tokens`` it trains to that budget instead, or stops at once if the checkpoint already reached it).
Torch, transformers and lm-eval's model load in :func:`run`, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lm_eval_false_demos.analysis.lens_text import DEFAULT_DATASETS, TrainingSettings, planned_steps, training_text
from lm_eval_false_demos.cli import args as cli_args
from lm_eval_false_demos.core.files import canonical_model_args
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
        lens_files.load_checkpoint(output / lens_files.CHECKPOINT, training_fingerprint(model_args, settings))
    from lm_eval_false_demos.core.architectures import PATH_OVERRIDES

    # last: it imports lm-eval's HF model
    cli_args.check_model_args("hf", model_args, read_by_caller=PATH_OVERRIDES)
    return settings


def training_fingerprint(model_args: Mapping[str, Any], settings: TrainingSettings) -> dict:
    """What a resumed training must repeat; --tokens may change on resume (extend or cut the budget; the
    learning-rate decay follows the new total)."""
    return {"model_args": canonical_model_args(model_args), "datasets": list(settings.datasets),
            **settings.recorded()}


def run(args: argparse.Namespace) -> int:
    settings = check_arguments(args)
    summary = train(args, settings)
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
    """Load, train, write the lens and training.json; the summary (``{"estimate_only": True, ...}`` with
    ``--estimate_only``; None on a process that does not write)."""
    from lm_eval_false_demos.integrations.run_context import open_model

    context = open_model("hf", dict(args.model_args), batch_size=settings.batch_size, device=args.device,
                         defaults={"dtype": DEFAULT_DTYPE})
    # Several data-parallel processes (accelerate launch, torchrun): one trains. The lens's steps are sequential
    # and each samples its vocabulary from the whole batch, so a split batch would not give the one-process lens.
    # Under tensor parallelism the processes hold one model together: all train the same (replicated)
    # translators on the same batches, and the writer alone saves them.
    if context.data_parallel:
        context.close()  # every process leaves the process group now; the writer trains alone
        if context.world_size > 1:
            if not context.is_writer:
                return None
            print(f"lens train: {context.world_size} processes started, one (rank 0) trains and writes the lens; "
                  "launch it as one process")
    try:
        return _train(args, settings, context)
    finally:
        if not context.data_parallel:
            context.close()


def _train(args: argparse.Namespace, settings: TrainingSettings, context) -> dict | None:
    from tqdm.auto import tqdm

    from lm_eval_false_demos.analysis import lens_training
    from lm_eval_false_demos.results import lens_files

    model_args = dict(args.model_args)
    output = Path(args.output)
    model, tokenizer, modules = context.model, context.tokenizer, context.modules
    model.requires_grad_(False)
    if settings.seq_len > context.max_length:
        raise FalseDemoError(f"--seq_len={settings.seq_len} is longer than the model's max_length="
                             f"{context.max_length}; give a shorter --seq_len")
    text = training_text(tokenizer, settings)
    steps = planned_steps(settings, text)

    trainer = lens_training.LensTrainer(model, modules, settings)
    trainer.lens.config["base_model_name_or_path"] = model_args["pretrained"]
    trainer.lens.config["base_model_revision"] = model_args.get("revision")

    recorded_args = canonical_model_args(model_args)
    fingerprint = training_fingerprint(model_args, settings)
    checkpoint_path = output / lens_files.CHECKPOINT
    resumed = None
    if checkpoint_path.exists():
        resumed = lens_files.load_checkpoint(checkpoint_path, fingerprint)
        steps = max(steps, int(resumed["step"]))  # a budget below the checkpoint's keeps what was trained
        print(f"resuming from {checkpoint_path} at step {int(resumed['step'])}/{steps}")

    cost = trainer.estimate(text, steps, done=int(resumed["step"]) if resumed else 0)
    if context.is_writer:
        print(
            f"cost estimate: {steps} steps x {settings.batch_size} x {settings.seq_len} = {cost.tokens:,} "
            f"tokens ({cost.passes_over_text:.2f} passes over {len(text.training)} windows of demonstration text from "
            f"{len(settings.datasets)} datasets), KL at {cost.scored_positions:,} positions over "
            f"{'all ' if cost.full_vocab else ''}{cost.vocab:,} vocabulary tokens x {modules.num_layers} layers; "
            f"{cost.tflop:.1f} TFLOP ({cost.lens_share:.0%} in the lens); about {cost.minutes:.1f} minutes at "
            f"{cost.seconds_per_step:.2f} s/step"
        )
    if args.estimate_only:
        return {"estimate_only": True, "seconds_per_step": cost.seconds_per_step, "steps": steps}

    before = trainer.held_out_kl(text.held_out)  # zero translators: the logit lens, on a resumed run too
    if resumed is not None:
        trainer.load_state_dict(resumed)
    progress = tqdm(total=steps, initial=trainer.step, desc="lens train", unit="step", disable=not context.is_writer)

    def on_step(step: int, losses: list[float]) -> None:
        progress.update(1)
        progress.set_postfix(kl=f"{sum(losses) / len(losses):.3f}")

    def on_checkpoint(state: lens_training.LensTrainer) -> None:
        if context.is_writer:
            lens_files.save_checkpoint(checkpoint_path, state.state_dict(), fingerprint)

    trainer.fit(text.training, steps, on_step=on_step, on_checkpoint=on_checkpoint)
    progress.close()
    after = trainer.held_out_kl(text.held_out)
    if not context.is_writer:
        return None
    params = trainer.lens.save(output)
    summary = lens_files.training_summary(
        model_args=recorded_args, resolved_pretrained=context.options.resolved["pretrained"],
        modules=modules, vocab_size=trainer.vocab_size, settings=settings, cost=cost,
        training_seconds=trainer.seconds, held_out_sequences=len(text.held_out), kl_logit_lens=before,
        kl_tuned_lens=after, params=params,
    )
    lens_files.write_summary(output, summary)
    if checkpoint_path.exists():
        checkpoint_path.unlink()
    return summary
