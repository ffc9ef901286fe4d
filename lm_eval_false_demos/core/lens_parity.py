"""Lens parity: on a run's own first batch, the lens at the last layer must reproduce the model's logits.

The lens tests prove the readout on the architectures built in tests; a user's other architecture or module
path override has no such proof, and a wrong final norm, a double norm or a missing soft-cap gives curves
that look plausible. At layer L the lens is ``head(norm(residual after the last block))``, which must equal
the model's own logits; one forward pass compares the two at the scored positions, in float32 (the readout
is float32; the model's logits are upcast). Beyond a tolerance suited to the model's dtype the run stops,
naming the architecture and module paths used; when the model's own logits are not finite (a float16 model
overflowing) it stops saying so and what to run instead, since no module path is at fault. The check is
independent of any tuned lens: translators stop before layer L.
"""

from __future__ import annotations

import torch

from lm_eval_false_demos.core import precision
from lm_eval_false_demos.core.architectures import ModelModules
from lm_eval_false_demos.core.lens import Readout, normalise_positions
from lm_eval_false_demos.errors import FalseDemoError

# Relative to the largest logit magnitude (at least 1): float32 rounding in a differently blocked matmul is
# ~1e-6 of it, a wrong norm or a missing soft-cap several percent. Half precision: the model rounds its
# logits (and a soft-cap) to 8 (bfloat16) or 11 (float16) bits, the readout does not.
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


def _readout(model_or_readout, modules: ModelModules | None) -> Readout:
    return model_or_readout if isinstance(model_or_readout, Readout) else Readout(model_or_readout, modules)


def check_parity(model_or_readout, input_ids: torch.Tensor, positions, attention_mask: torch.Tensor | None = None,
                 modules: ModelModules | None = None, **forward_kwargs) -> dict:
    """{max_abs_diff, tolerance, dtype, compared_in, positions} from one forward; FalseDemoError beyond the
    tolerance. ``positions`` is [P] or [B, P] (negative counts from the end): the positions the run scores."""
    readout = _readout(model_or_readout, modules)
    return _checked_forward(readout, input_ids, positions, attention_mask, [readout.num_layers],
                            **forward_kwargs)[1]


def read_label_logits_checked(model_or_readout, input_ids: torch.Tensor, positions, label_token_ids,
                              attention_mask: torch.Tensor | None = None, modules: ModelModules | None = None,
                              **forward_kwargs) -> tuple[torch.Tensor, dict]:
    """:meth:`Readout.read_label_logits` at every layer 0..L and :func:`check_parity` from the same single
    forward: it runs on to the model's head (at the scored rows only) instead of stopping after the last block."""
    readout = _readout(model_or_readout, modules)
    rows, record = _checked_forward(readout, input_ids, positions, attention_mask, None, **forward_kwargs)
    with torch.no_grad():
        return readout.label_logits(rows, None, label_token_ids), record


def _checked_forward(readout: Readout, input_ids, positions, attention_mask, layers, **forward_kwargs):
    """(residual rows at ``layers`` and the scored positions, the parity record) from one full forward."""
    modules = readout.modules
    batch, length = input_ids.shape[:2]
    index = normalise_positions(positions, batch, length)
    # The model's head sees only each row's scored positions, so its logits are [B, P, V].
    rows, output = readout.residuals(input_ids, layers, index, attention_mask, run_to_end=True,
                                     model_logits_at=index, **forward_kwargs)
    logits = output.logits
    model_dtype = logits.dtype
    if logits.shape[:2] != index.shape:
        raise FalseDemoError(
            f"lens parity check failed: the model's head returned logits of shape {tuple(logits.shape)} for "
            f"{tuple(index.shape)} scored positions; {describe_paths(modules)}; fix head_path=")
    # One batch row at a time: the float32 copies of the model's and the lens's [P, V] logits exist for one row,
    # not for the whole batch (V is 256k for Gemma).
    differences, largest = [], 0.0
    for row in range(batch):
        expected = logits[row].float()
        precision.require_finite(expected, "lens parity check: the model's own logits at the scored positions",
                                 model_dtype)
        with torch.no_grad():
            lensed = readout.logits(rows[-1][row:row + 1], readout.num_layers)[0].to(expected.device)
        if lensed.shape != expected.shape:
            raise FalseDemoError(
                f"lens parity check failed: the lens gives {lensed.shape[-1]} logits, the model "
                f"{expected.shape[-1]}; {describe_paths(modules)}; fix head_path="
            )
        differences.append((lensed - expected).abs().max())
        largest = max(largest, expected.abs().max().item())
        del expected, lensed
    difference = torch.stack(differences).max().item()  # torch's max keeps a NaN of any row
    allowed = tolerance(model_dtype, largest)
    if not difference <= allowed:  # also catches NaN in the lens's own logits
        raise FalseDemoError(
            f"lens parity check failed: at the last layer the lens differs from the model's own logits by "
            f"{difference:.4g} (tolerance {allowed:.3g} for {precision.dtype_name(model_dtype)}); "
            f"{describe_paths(modules)}: check norm_path=, head_path= and layers_path="
        )
    return rows, {
        "max_abs_diff": difference,
        "tolerance": allowed,
        "dtype": precision.dtype_name(model_dtype),
        "compared_in": "float32",
        "positions": int(index.numel()),
    }
