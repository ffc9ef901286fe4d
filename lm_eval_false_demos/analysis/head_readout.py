"""What head scoring and evaluation read at the readout token (the last context token).

* :class:`ReadoutCapture`: hooks keeping, per layer, only the readout row of each head's post-softmax
  attention, of the attention output projection's input (the heads' ``z`` vectors) and of the attention
  output, plus the last block's output (the final residual); the forward stops there, before the final norm
  and the output head (:func:`run_to_last_block`).
* :func:`label_promotion`: each head's write ``z_h @ W_O[h-slice]`` (:func:`head_writes`) pushed through the
  final norm and the output head's label rows. The final norm is not linear, so the write passes through it
  with the scale *frozen* at the value the real final residual has (:func:`frozen_norm`: ``(c - mean c) * g /
  sigma(x)`` for LayerNorm, ``c * g / rms(x)`` for RMSNorm): then the heads' terms, plus the other
  components', add up exactly to the normed residual, which is what direct logit attribution must satisfy.
  Gemma-2/3 also norm the attention output before it joins the residual; that norm is frozen the same way
  with the layer's whole attention output. The output head's bias cancels in the logit difference;
  soft-capping (Gemma-2) is applied to the sum of all components and has no per-head share, so
  contributions are pre-cap logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lm_eval_false_demos.core.architectures import ModelModules
from lm_eval_false_demos.errors import FalseDemoError


class _StopForward(Exception):
    """Raised once the last block has run: the readout needs neither the final norm nor the logits."""


def _conv1d_like(module) -> bool:
    return type(module).__name__ == "Conv1D"


def head_writes(out_proj: torch.nn.Module, z: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Each head's write to the residual, [H, d], from one row ``z`` [H * head_dim] of the o_proj input."""
    weight = out_proj.weight
    z = z.to(weight.dtype).view(num_heads, head_dim)
    if _conv1d_like(out_proj):  # GPT-2 Conv1D: weight is (in, out)
        return torch.einsum("hk,hkd->hd", z, weight.view(num_heads, head_dim, -1))
    if isinstance(out_proj, torch.nn.Linear) or weight.dim() == 2:
        return torch.einsum("hk,dhk->hd", z, weight.view(weight.shape[0], num_heads, head_dim))
    raise FalseDemoError(f"cannot split the attention output projection {type(out_proj).__name__} by head")


def _rms_gain(norm: torch.nn.Module, width: int, dtype, device) -> torch.Tensor:
    """The per-feature gain an RMS norm applies, read off the module itself (Gemma's (1 + w) included)."""
    # A constant vector has rms = its value; at 1000 >> sqrt(eps) the norm returns the gain itself.
    probe = torch.full((1, width), 1000.0, dtype=dtype, device=device)
    with torch.no_grad():
        return norm(probe)[0].to(torch.float32)


def frozen_norm(norm: torch.nn.Module | None, x: torch.Tensor):
    """The norm's linear map at the input ``x`` [d] with its scale frozen: c [..., d] -> normed share of c."""
    if norm is None:
        return lambda c: c
    name = type(norm).__name__
    x = x.to(torch.float32)
    if "RMS" in name:
        eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None) or 1e-6
        gain = _rms_gain(norm, x.shape[-1], next(norm.parameters(), x).dtype, x.device)
        rms = torch.sqrt(x.pow(2).mean() + eps)
        return lambda c: c.to(torch.float32) * gain / rms
    if isinstance(norm, torch.nn.LayerNorm) or "LayerNorm" in name:
        eps = getattr(norm, "eps", 1e-5)
        weight = getattr(norm, "weight", None)
        gain = torch.ones_like(x) if weight is None else weight.to(torch.float32)
        sigma = torch.sqrt(x.var(unbiased=False) + eps)
        return lambda c: (c.to(torch.float32) - c.to(torch.float32).mean(-1, keepdim=True)) * gain / sigma
    raise FalseDemoError(f"cannot linearise the norm {name}; supported: LayerNorm and RMSNorm variants")


def _label_rows(modules: ModelModules, label_ids: torch.Tensor) -> torch.Tensor:
    head = modules.output_head
    weight = getattr(head, "weight", None)
    if weight is None:
        raise FalseDemoError(f"output head {type(head).__name__} has no weight to read label rows from")
    return weight[label_ids].to(torch.float32)


def _pre_head_linear(modules: ModelModules):
    if modules.pre_head is None:
        return lambda c: c
    weight = modules.pre_head.weight.to(torch.float32)  # OPT's project_out: linear, no bias
    return lambda c: c @ weight.T


def label_promotion(
    modules: ModelModules,
    z_rows: Sequence[torch.Tensor],
    attn_outputs: Sequence[torch.Tensor],
    final_residual: torch.Tensor,
    promoted_id: int,
    true_id: int,
) -> torch.Tensor:
    """[L, H] label-promoting scores of one readout: logit(promoted) - logit(true) of each head's write."""
    to_final = frozen_norm(modules.final_norm, final_residual)
    pre_head = _pre_head_linear(modules)
    rows = _label_rows(modules, torch.tensor([promoted_id, true_id], device=final_residual.device))
    direction = rows[0] - rows[1]
    scores = []
    for layer, z in enumerate(z_rows):
        writes = head_writes(modules.attn_out_proj[layer], z, modules.num_heads, modules.head_dim)
        post_norm = modules.attn_post_norm[layer]
        if post_norm is not None:
            writes = frozen_norm(post_norm, attn_outputs[layer])(writes)
        scores.append(pre_head(to_final(writes)) @ direction)
    return torch.stack(scores)


class ReadoutCapture:
    """Hooks keeping only the last position of every sequence in the batch: attention rows [B, H, S], o_proj
    inputs [B, H * head_dim], attention outputs and the last block's output [B, d]; the forward stops there."""

    def __init__(self, modules: ModelModules, want_attention: bool):
        self.modules = modules
        self.want_attention = want_attention
        self.handles = []
        self.clear()

    def clear(self):
        num_layers = self.modules.num_layers
        self.attention: list[torch.Tensor | None] = [None] * num_layers
        self.z: list[torch.Tensor | None] = [None] * num_layers
        self.attn_out: list[torch.Tensor | None] = [None] * num_layers
        self.final: torch.Tensor | None = None

    def __enter__(self):
        modules = self.modules
        for layer in range(modules.num_layers):
            if self.want_attention:
                self.handles.append(modules.attention[layer].register_forward_hook(self._attention_hook(layer)))
            out_proj = modules.attn_out_proj[layer]
            self.handles.append(out_proj.register_forward_pre_hook(self._z_hook(layer), with_kwargs=True))
            self.handles.append(out_proj.register_forward_hook(self._out_hook(layer)))
        self.handles.append(modules.blocks[-1].register_forward_hook(self._final_hook))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []
        return False

    def _attention_hook(self, layer):
        def hook(module, args, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise FalseDemoError(
                    f"the attention module of layer {layer} ({type(module).__name__}) returned no weights: it does "
                    "not dispatch through transformers' AttentionInterface, so head scoring cannot read its rows"
                )
            self.attention[layer] = weights[:, :, -1, :].detach().to(torch.float32)  # [B, H, S]

        return hook

    def _z_hook(self, layer):
        def hook(module, args, kwargs):
            tensor = args[0] if args else next(iter(kwargs.values()))
            self.z[layer] = tensor[:, -1].detach().to(torch.float32)

        return hook

    def _out_hook(self, layer):
        def hook(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            self.attn_out[layer] = tensor[:, -1].detach().to(torch.float32)

        return hook

    def _final_hook(self, module, args, output):
        tensor = output[0] if isinstance(output, tuple) else output
        self.final = tensor[:, -1].detach()
        raise _StopForward  # the scores need nothing after the last block: skip the norm and the output head


def run_to_last_block(model, **inputs) -> None:
    """Forward under a :class:`ReadoutCapture`, which stops the model once its last block has run."""
    try:
        model(**inputs)
    except _StopForward:
        return
    raise RuntimeError("the forward passed the last block without reaching the readout capture's hook")
