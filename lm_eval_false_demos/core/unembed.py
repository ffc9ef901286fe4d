"""The model's own way from a residual to logits, in one object (tuned-lens's ``Unembed``): the final norm,
the steps before the head (OPT's ``project_out``), the output head, the logit soft-cap, and the K label rows.

It runs the modules themselves, so wherever accelerate put them (several devices, CPU or disk offload) their
hooks bring the weights and move the inputs; the only weights it reads directly are the K label rows
(:meth:`Unembed.label_rows`, the one place a vocabulary-sharded head would gather them) and, for head
scoring, the norm gains and the pre-head map (:func:`frozen_norm`, :meth:`Unembed.linearised`), each inside
:func:`devices.weights_of`. Scores come out in float32: the K label rows are upcast before their product
(K x d, cheap), full-vocabulary logits after the head, and the soft-cap is applied in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lm_eval_false_demos.core import tensor_parallel
from lm_eval_false_demos.core.architectures import ModelModules
from lm_eval_false_demos.core.devices import execution_device, weights_of
from lm_eval_false_demos.errors import FalseDemoError


class Unembed:
    """final norm -> pre-head -> output head -> soft-cap of one model (``architectures.ModelModules``)."""

    def __init__(self, modules: ModelModules):
        self.modules = modules
        self.final_norm = modules.final_norm
        self.pre_head = modules.pre_head
        self.head = modules.output_head
        self.softcap = modules.softcap

    @property
    def device(self) -> torch.device:
        """Where the head computes: logits, label logits and a tuned lens's translators live here."""
        return execution_device(self.head)

    @property
    def dtype(self) -> torch.dtype:
        weight = getattr(self.head, "weight", None)
        return weight.dtype if weight is not None else next(self.head.parameters()).dtype

    @property
    def width(self) -> int:
        """d_model as the head's input (a parameter's shape is known even while it is offloaded)."""
        weight = getattr(self.head, "weight", None)
        if weight is not None and weight.dim() == 2:
            return int(weight.shape[1]) if type(self.head).__name__ != "Conv1D" else int(weight.shape[0])
        return int(self.head.in_features)

    @property
    def vocab_size(self) -> int | None:
        weight = getattr(self.head, "weight", None)
        return int(weight.shape[0]) if isinstance(self.head, torch.nn.Linear) and weight is not None else None

    def normed(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final norm and the pre-head steps of raw residuals [..., d] (per vector, in the model's dtype)."""
        for module in (self.final_norm, self.pre_head):
            if module is not None:
                device = execution_device(module, default=None)
                hidden = module(hidden if device is None else hidden.to(device))
        return hidden.to(self.device)

    def cap(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.tanh(logits / self.softcap) * self.softcap if self.softcap else logits

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits [..., V] (float32) of raw residuals [..., d], through the head module itself."""
        return self.cap(self.head(self.normed(hidden)))

    def label_rows(self, label_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(the head's rows of ``label_ids`` [..., K, d], their bias [..., K] or None), float32 on
        :attr:`device`; None for a head that is not a linear map (its logits are then read in full)."""
        if not isinstance(self.head, torch.nn.Linear):
            return None
        with torch.no_grad(), weights_of(self.head):
            weight = self.head.weight
            ids = torch.as_tensor(label_ids, dtype=torch.long).to(weight.device)
            # Under tensor parallelism the head is split over the vocabulary: the K rows are gathered once per
            # label set (tensor_parallel.gather_rows says why rows, not partial logits)
            rows = tensor_parallel.gather_rows(weight, ids).to(self.device, torch.float32)
            bias = None if self.head.bias is None else \
                tensor_parallel.gather_rows(self.head.bias, ids).to(self.device, torch.float32)
        return rows, bias

    def label_logits(self, hidden: torch.Tensor, label_ids) -> torch.Tensor:
        """Logits of only the K label tokens, [..., K] float32, computing K rows of the head.

        ``hidden`` is [n, B, P, d] (or [B, P, d]); ``label_ids`` [K] (shared) or [B, K] (per sequence). The
        final norm is per vector, so applying it to gathered rows equals applying it to the whole sequence.
        """
        label_ids = torch.as_tensor(label_ids, dtype=torch.long)
        normed = self.normed(hidden)
        read = self.label_rows(label_ids)
        label_ids = label_ids.to(self.device)
        if read is None:  # an unusual head: pay for the full vocabulary rather than guess its maths
            full = self.head(normed).float()
            if label_ids.dim() == 1:
                return self.cap(full[..., label_ids])
            index = label_ids[:, None, :].expand(*full.shape[:-1], label_ids.shape[-1])
            return self.cap(torch.gather(full, -1, index))
        rows, bias = read
        normed = normed.float()
        if label_ids.dim() == 1:
            logits = normed @ rows.T
        else:
            logits = torch.einsum("...bpd,bkd->...bpk", normed, rows)
        if bias is not None:
            logits = logits + (bias if label_ids.dim() == 1 else bias[:, None, :])
        return self.cap(logits)

    def linearised(self, final_residual: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The final norm (scale frozen at ``final_residual`` [d]) and the pre-head map as one linear map of a
        component c [..., d] of that residual, float32: what direct logit attribution pushes each head's write
        through (pre-cap; the soft-cap has no per-component share)."""
        to_final = frozen_norm(self.final_norm, final_residual)
        if self.pre_head is None:
            return to_final
        with torch.no_grad(), weights_of(self.pre_head):  # OPT's project_out: linear, no bias
            weight = self.pre_head.weight.to(final_residual.device, torch.float32)
        return lambda c: to_final(c) @ weight.T


def _rms_gain(norm: torch.nn.Module, width: int, dtype, device) -> torch.Tensor:
    """The per-feature gain an RMS norm applies, read off the module itself (Gemma's (1 + w) included)."""
    # A constant vector has rms = its value; at 1000 >> sqrt(eps) the norm returns the gain itself.
    probe = torch.full((1, width), 1000.0, dtype=dtype, device=execution_device(norm))
    with torch.no_grad():
        return norm(probe)[0].to(device, torch.float32)


def frozen_norm(norm: torch.nn.Module | None, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The norm's linear map at the input ``x`` [d] with its scale frozen: c [..., d] -> normed share of c
    (float32): ``(c - mean c) * g / sigma(x)`` for LayerNorm, ``c * g / rms(x)`` for RMSNorm."""
    if norm is None:
        return lambda c: c
    name = type(norm).__name__
    x = x.to(torch.float32)
    if "RMS" in name:
        eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None) or 1e-6
        parameter = next(norm.parameters(), None)
        gain = _rms_gain(norm, x.shape[-1], parameter.dtype if parameter is not None else x.dtype, x.device)
        rms = torch.sqrt(x.pow(2).mean() + eps)
        return lambda c: c.to(torch.float32) * gain / rms
    if isinstance(norm, torch.nn.LayerNorm) or "LayerNorm" in name:
        eps = getattr(norm, "eps", 1e-5)
        with torch.no_grad(), weights_of(norm):
            weight = getattr(norm, "weight", None)
            gain = torch.ones_like(x) if weight is None else weight.to(x.device, torch.float32)
        sigma = torch.sqrt(x.var(unbiased=False) + eps)
        return lambda c: (c.to(torch.float32) - c.to(torch.float32).mean(-1, keepdim=True)) * gain / sigma
    raise FalseDemoError(f"cannot linearise the norm {name}; supported: LayerNorm and RMSNorm variants")
