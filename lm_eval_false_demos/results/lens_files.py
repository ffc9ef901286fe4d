"""The files of ``falsedemo lens train`` besides the lens itself (``config.json`` + ``params.pt``, written by
``core.tuned_lens.TunedLens.save``): the resumable ``checkpoint.pt`` and the ``training.json`` summary."""

from __future__ import annotations

import io
import json
import pickle
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lm_eval_false_demos.analysis.lens_training import CostEstimate, TrainingSettings
from lm_eval_false_demos.core import files as results_io
from lm_eval_false_demos.core.digests import sha256_file
from lm_eval_false_demos.errors import FalseDemoError, error_summary

CHECKPOINT = "checkpoint.pt"
SUMMARY = "training.json"
FORMAT_VERSION = 1


def training_fingerprint(model_args: Mapping[str, Any], settings: TrainingSettings) -> dict:
    """What a resumed training must repeat; --tokens may change on resume (extend or cut the budget; the
    learning-rate decay follows the new total)."""
    return {"model_args": results_io.canonical_model_args(model_args), "datasets": list(settings.datasets),
            **settings.recorded()}


def save_checkpoint(path: str | Path, state: Mapping[str, Any], fingerprint: Mapping[str, Any]) -> None:
    """``state`` (translators, optimiser, step, seconds: tensors and numbers only) and the setup's
    fingerprint, written atomically."""
    buffer = io.BytesIO()
    torch.save({**state, "fingerprint": json.dumps(fingerprint, sort_keys=True)}, buffer)
    results_io.write_bytes_atomic(path, buffer.getvalue(), overwrite=True)


def load_checkpoint(path: str | Path, fingerprint: Mapping[str, Any]) -> dict:
    """The state saved at ``path``; FalseDemoError if another setup (other than the token budget) wrote it."""
    path = Path(path)
    damaged = f"{path} is damaged or not a falsedemo lens checkpoint"
    remedy = "delete it to train from the start (it only holds progress)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError,
            TypeError) as error:
        reason = "empty" if path.stat().st_size == 0 else error_summary(error)
        raise FalseDemoError(f"{damaged} ({reason}); {remedy}") from None
    if not (isinstance(state, dict) and isinstance(state.get("translators"), dict)
            and isinstance(state.get("optimizer"), dict) and isinstance(state.get("step"), int)
            and isinstance(state.get("seconds"), (int, float)) and isinstance(state.get("fingerprint"), str)):
        raise FalseDemoError(f"{damaged} (it holds no translators, optimizer, step and fingerprint); {remedy}")
    try:
        stored = json.loads(state["fingerprint"])
    except json.JSONDecodeError:
        raise FalseDemoError(f"{damaged} (its fingerprint is not JSON); {remedy}") from None
    if not isinstance(stored, dict):
        raise FalseDemoError(f"{damaged} (its fingerprint is not a JSON object); {remedy}")
    stored.pop("tokens", None)  # the budget may change on resume
    if stored != json.loads(json.dumps(fingerprint)):
        raise FalseDemoError(
            f"{path} was written by a different training setup; resume with the same arguments or remove it"
        )
    return state


def training_summary(
    *, model_args: Mapping[str, Any], resolved_pretrained: str, modules, vocab_size: int | None,
    settings: TrainingSettings, cost: CostEstimate, training_seconds: float, held_out_sequences: int,
    kl_logit_lens: Sequence[float], kl_tuned_lens: Sequence[float], params: str | Path,
) -> dict:
    """The ``training.json`` payload (``"kind": "falsedemo.lens_training"``)."""
    return {
        "kind": "falsedemo.lens_training",
        "format_version": FORMAT_VERSION,
        "model_args": dict(model_args),
        "resolved_pretrained": str(resolved_pretrained),
        "architecture": modules.model_type,
        "num_layers": modules.num_layers,
        "vocab_size": vocab_size,
        "datasets": list(settings.datasets),
        "text": "demonstration pools only (correct labels, the prompts' format); evaluated queries never used",
        "tokens": cost.tokens,
        "steps": cost.steps,
        "passes_over_text": cost.passes_over_text,
        "scored_positions": cost.scored_positions,
        "settings": settings.recorded(),
        "objective": "sum over layers l < L of KL(final || lens_l), final = the model's own distribution",
        "training_seconds": training_seconds,
        "estimated_tflop": cost.tflop,
        "held_out": {"sequences": held_out_sequences, "positions_per_sequence": settings.positions,
                     "kl_logit_lens": list(kl_logit_lens), "kl_tuned_lens": list(kl_tuned_lens)},
        "params_sha256": sha256_file(params),
        "date": time.time(),
    }


def write_summary(output: str | Path, summary: Mapping[str, Any]) -> Path:
    return results_io.write_json_atomic(Path(output) / SUMMARY, summary, overwrite=True)
