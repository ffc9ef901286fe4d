"""Half precision that is right or refused: a score that is not a finite number never becomes one.

A float16 model on a CPU overflows readily (a float16 log-softmax over a 262k vocabulary gives ``-inf``;
activations past 65504 become ``inf`` and then NaN), and a NaN or ``-inf`` score turned into a number
(an argmax, a quantile) reports an accuracy that looks plausible. Every readout checks its scores here and
stops with one line naming the dtype and what to do instead.
"""

from __future__ import annotations

import torch

from lm_eval_false_demos.errors import FalseDemoError


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "") if dtype not in (None, "", "auto") else "unknown"


def advice(dtype) -> str:
    """What to run instead when scores in ``dtype`` are not finite."""
    name = dtype_name(dtype)
    if name == "unknown":
        return ("a float16 model overflows readily (on CPU a float16 log-softmax over a large vocabulary is -inf); "
                "run with dtype=bfloat16 or dtype=float32")
    if name == "float16":
        return "float16 overflows here; run with dtype=bfloat16 (same memory, float32's range) or dtype=float32"
    if name == "bfloat16":
        return "run with dtype=float32"
    return "the model gives non-finite values even in this dtype; check its weights and inputs"


def non_finite_message(what: str, dtype, count: int | None = None, total: int | None = None) -> str:
    share = f" ({count} of {total} values)" if count is not None and total is not None else ""
    name = dtype_name(dtype)
    where = f"with the model in {name}" if name != "unknown" else "(model dtype not given in model_args)"
    return f"{what} are not finite (NaN or inf){share} {where}: {advice(dtype)}"


def require_finite(values: torch.Tensor, what: str, dtype) -> torch.Tensor:
    """``values`` unchanged if every entry is finite; otherwise FalseDemoError naming ``dtype``."""
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        raise FalseDemoError(non_finite_message(what, dtype, int((~finite).sum()), finite.numel()))
    return values
