"""Lens parity: on a run's own first batch, the lens at the last layer must reproduce the model's logits.

The lens tests prove the readout on the architectures built in tests; a user's other architecture or module
path override has no such proof, and a wrong final norm, a double norm or a missing soft-cap gives curves
that look plausible. At layer L the lens is ``head(norm(residual after the last block))``, which must equal
the model's own logits; one forward pass compares the two at the scored positions. Beyond a tolerance suited
to the dtype the run stops, naming the architecture and module paths used. The check is independent of any
tuned lens: translators stop before layer L.
"""

from __future__ import annotations

import torch

from lm_eval_false_demos.core.architectures import ModelModules, resolve_modules
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.core.lens import _block_output, _normalise_positions, lens_logits

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
    batch, length = input_ids.shape[:2]
    index = _normalise_positions(positions, batch, length, input_ids.device)
    captured = {}

    def hook(module, args, output):
        hidden = _block_output(output)
        gather = index.to(hidden.device)[:, :, None].expand(-1, -1, hidden.shape[-1])
        captured["rows"] = torch.gather(hidden, 1, gather)

    handle = modules.blocks[-1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            output = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **forward_kwargs)
    finally:
        handle.remove()
    if "rows" not in captured:
        raise FalseDemoError(f"lens parity check: the forward pass never ran the last block of {describe_paths(modules)}")
    logits = output.logits
    gather = index.to(logits.device)[:, :, None].expand(-1, -1, logits.shape[-1])
    expected = torch.gather(logits, 1, gather).float()
    with torch.no_grad():
        lensed = lens_logits(model, captured["rows"], modules.num_layers, modules).float().to(expected.device)
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
    return {
        "max_abs_diff": difference,
        "tolerance": allowed,
        "dtype": str(logits.dtype).replace("torch.", ""),
        "positions": int(index.numel()),
    }
