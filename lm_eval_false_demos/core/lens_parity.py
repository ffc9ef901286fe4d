"""Lens parity: on a run's own first batch, the lens at the last layer must reproduce the model's logits.

The lens tests prove the readout on the architectures built in tests; a user's other architecture or module
path override has no such proof, and a wrong final norm, a double norm or a missing soft-cap gives curves
that look plausible. At layer L the lens is ``head(norm(residual after the last block))``, which must equal
the model's own logits; one forward pass compares the two at the scored positions. Beyond a tolerance suited
to the dtype the run stops, naming the architecture and module paths used. The check is independent of any
tuned lens: translators stop before layer L.
"""

from __future__ import annotations

import inspect

import torch

from lm_eval_false_demos.core.architectures import ModelModules, resolve_modules
from lm_eval_false_demos.core.lens import _normalise_positions, label_logits_of_rows, lens_logits, residuals_and_output
from lm_eval_false_demos.errors import FalseDemoError

# Relative to the largest logit magnitude (at least 1): float32 rounding in a differently blocked matmul is
# ~1e-6 of it, a wrong norm or a missing soft-cap several percent.
RELATIVE_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def tolerance(dtype: torch.dtype, scale: float) -> float:
    return RELATIVE_TOLERANCE.get(dtype, 5e-2) * max(1.0, scale)


def describe_paths(modules: ModelModules) -> str:
    paths = {
        "layers": modules.paths.get("layers"),
        "norm": modules.paths.get("norm"),
        "head": modules.paths.get("head_path", "get_output_embeddings()"),
    }
    shown = ", ".join(f"{key}={value!r}" for key, value in paths.items())
    return f"architecture {modules.model_type!r} ({shown}, softcap={modules.softcap})"


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def check_parity(
    model,
    input_ids: torch.Tensor,
    positions,
    attention_mask: torch.Tensor | None = None,
    modules: ModelModules | None = None,
    **forward_kwargs,
) -> dict:
    """{max_abs_diff, tolerance, dtype, positions} from one forward; FalseDemoError beyond the tolerance.

    ``positions`` is [P] or [B, P] (negative counts from the end): the positions the run scores.
    """
    modules = modules or resolve_modules(model)
    return _checked_forward(model, input_ids, positions, attention_mask, modules, [modules.num_layers],
                            **forward_kwargs)[1]


def read_label_logits_checked(
    model,
    input_ids: torch.Tensor,
    positions,
    label_token_ids,
    attention_mask: torch.Tensor | None = None,
    modules: ModelModules | None = None,
    translator=None,
    **forward_kwargs,
) -> tuple[torch.Tensor, dict]:
    """:func:`lens.read_label_logits` at every layer 0..L and :func:`check_parity`, from the same single forward:
    it runs to the model's head (at the scored positions only) instead of stopping after the last block."""
    modules = modules or resolve_modules(model)
    rows, record = _checked_forward(model, input_ids, positions, attention_mask, modules, None, **forward_kwargs)
    return label_logits_of_rows(model, rows, label_token_ids, None, modules, translator), record


def _checked_forward(model, input_ids, positions, attention_mask, modules: ModelModules, layers, **forward_kwargs):
    """(residual rows at ``layers`` and the scored positions, the parity record) from one full forward."""
    batch, length = input_ids.shape[:2]
    index = _normalise_positions(positions, batch, length, input_ids.device)
    # The model's head only at the scored positions (transformers' logits_to_keep), not the full vocabulary at
    # every position, which for a large vocabulary costs more than the forward itself.
    kept = torch.unique(index)
    if _accepts_logits_to_keep(model):
        forward_kwargs = {"logits_to_keep": kept, **forward_kwargs}
    rows, output = residuals_and_output(model, input_ids, layers, index, attention_mask, modules, run_to_end=True,
                                        **forward_kwargs)
    logits = output.logits
    if logits.shape[1] == kept.numel():
        index = torch.searchsorted(kept, index)  # positions -> their rows among the kept ones (identity for all)
    gather = index.to(logits.device)[:, :, None].expand(-1, -1, logits.shape[-1])
    expected = torch.gather(logits, 1, gather).float()
    with torch.no_grad():
        lensed = lens_logits(model, rows[-1], modules.num_layers, modules).float().to(expected.device)
    if lensed.shape != expected.shape:
        raise FalseDemoError(
            f"lens parity check failed: the lens gives {lensed.shape[-1]} logits, the model {expected.shape[-1]}; "
            f"{describe_paths(modules)}; fix head_path="
        )
    difference = (lensed - expected).abs().max().item()
    allowed = tolerance(logits.dtype, expected.abs().max().item())
    if not difference <= allowed:  # also catches NaN
        raise FalseDemoError(
            f"lens parity check failed: at the last layer the lens differs from the model's own logits by "
            f"{difference:.4g} (tolerance {allowed:.3g} for {str(logits.dtype).replace('torch.', '')}); "
            f"{describe_paths(modules)}: check norm_path=, head_path= and layers_path="
        )
    return rows, {
        "max_abs_diff": difference,
        "tolerance": allowed,
        "dtype": str(logits.dtype).replace("torch.", ""),
        "positions": int(index.numel()),
    }
