"""``falsedemo lens train`` as a run: fit a tuned lens in an opened run context and write it.

Several processes (accelerate launch, torchrun): one (rank 0) trains and writes, and says so in one line; the
others leave with nothing written. A tuned lens's steps are sequential and each step samples its vocabulary from
the whole batch, so a batch split across processes would not give the one-process lens.

The lens's folder is fixed (``--output``): ``checkpoint.pt`` in it while training (rerunning resumes), then
``config.json`` + ``params.pt`` (tuned-lens's layout) and ``training.json`` (results.lens_files).
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from lm_eval_false_demos.analysis import lens_training
from lm_eval_false_demos.analysis.lens_text import TrainingSettings, planned_steps, training_text
from lm_eval_false_demos.core.files import canonical_model_args
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations.run_context import RunContext
from lm_eval_false_demos.results import lens_files


def train_lens(context: RunContext, settings: TrainingSettings, output: Path, *, estimate_only: bool = False
               ) -> dict | None:
    """Train, write the lens and training.json; the summary (``{"estimate_only": True, ...}`` with
    ``estimate_only``; None on a process that does not write).

    Several data-parallel processes: rank 0 trains alone (the others leave the process group with it and
    return). Under tensor parallelism the processes hold one model together: all train the same (replicated)
    translators on the same batches, and the writer alone prints, checkpoints and saves."""
    if context.data_parallel:
        context.close()  # every process leaves the process group now; the writer trains alone
        if context.world_size > 1:
            if not context.is_writer:
                return None
            print(f"lens train: {context.world_size} processes started, one (rank 0) trains and writes the lens; "
                  "launch it as one process")
    try:
        return _train(context, settings, output, estimate_only)
    finally:
        if not context.data_parallel:
            context.close()


def _train(context: RunContext, settings: TrainingSettings, output: Path, estimate_only: bool) -> dict | None:
    model_args = dict(context.options.given)
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
    fingerprint = lens_files.training_fingerprint(model_args, settings)
    checkpoint_path = output / lens_files.CHECKPOINT
    resumed = None
    if checkpoint_path.exists():
        resumed = lens_files.load_checkpoint(checkpoint_path, fingerprint)
        steps = max(steps, int(resumed["step"]))  # a budget below the checkpoint's keeps what was trained
        if context.is_writer:
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
    if estimate_only:
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
