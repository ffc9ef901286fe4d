"""What head scoring and evaluation read at the readout token (the last context token).

* :class:`ReadoutCapture`: hooks keeping, per layer, only the readout row of each head's post-softmax
  attention, of the attention output projection's input (the heads' ``z`` vectors) and of the attention
  output, plus the last block's output (the final residual); the forward stops there, before the final norm
  and the output head (:func:`run_to_last_block`).
* :func:`label_promotion`: each head's write ``z_h @ W_O[h-slice]`` (:func:`head_writes`) pushed through the
  final norm and the output head's label rows. The final norm is not linear, so the write passes through it
  with the scale *frozen* at the value the real final residual has (``unembed.frozen_norm``: ``(c - mean c) * g /
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

from lm_eval_false_demos.core import tensor_parallel
from lm_eval_false_demos.core.architectures import ModelModules
from lm_eval_false_demos.core.devices import weights_of
from lm_eval_false_demos.core.hooks import Hooks, run
from lm_eval_false_demos.core.unembed import Unembed, frozen_norm
from lm_eval_false_demos.errors import FalseDemoError


def _conv1d_like(module) -> bool:
    return type(module).__name__ == "Conv1D"


def _in_dim(out_proj: torch.nn.Module) -> int:
    """The input-feature dimension of the attention output projection's weight."""
    return 0 if _conv1d_like(out_proj) else 1


def head_writes(out_proj: torch.nn.Module, z: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Each head's write to the residual, [H, d], from one row ``z`` [H * head_dim] of the o_proj input
    (the projection's weight read inside accelerate's hook, wherever it is offloaded).

    Under tensor parallelism each process holds only its heads' columns of the projection: it writes those
    heads and the writes are gathered (H x d values, not the d x d weight)."""
    conv1d = _conv1d_like(out_proj)  # GPT-2 Conv1D: weight is (in, out)
    in_dim = _in_dim(out_proj)
    with torch.no_grad(), weights_of(out_proj):
        weight = out_proj.weight
        if not conv1d and not (isinstance(out_proj, torch.nn.Linear) or weight.dim() == 2):
            raise FalseDemoError(f"cannot split the attention output projection {type(out_proj).__name__} by head")
        offset, length = tensor_parallel.shard_window(weight, in_dim)
        shard = tensor_parallel.local(weight).to(z.device)
    mine = z[offset:offset + length].to(shard.dtype).view(-1, head_dim)
    if conv1d:
        writes = torch.einsum("hk,hkd->hd", mine, shard.view(-1, head_dim, shard.shape[-1]))
    else:
        writes = torch.einsum("hk,dhk->hd", mine, shard.view(shard.shape[0], -1, head_dim))
    writes = tensor_parallel.gather_shards(writes, weight, in_dim, dim=0, unit=head_dim)
    if writes.shape[0] != num_heads:
        raise FalseDemoError(f"the attention output projection holds {writes.shape[0]} heads of width {head_dim}, "
                             f"not {num_heads}")
    return writes


def label_promotion(
    modules: ModelModules,
    z_rows: Sequence[torch.Tensor],
    attn_outputs: Sequence[torch.Tensor],
    final_residual: torch.Tensor,
    promoted_id: int,
    true_id: int,
) -> torch.Tensor:
    """[L, H] label-promoting scores of one readout: logit(promoted) - logit(true) of each head's write."""
    unembed = Unembed(modules)
    to_logits = unembed.linearised(final_residual)
    read = unembed.label_rows(torch.tensor([promoted_id, true_id]))
    if read is None:
        raise FalseDemoError(f"output head {type(unembed.head).__name__} is not linear: no label rows to score heads")
    rows, _ = read
    direction = (rows[0] - rows[1]).to(final_residual.device)
    scores = []
    for layer, z in enumerate(z_rows):
        writes = head_writes(modules.attn_out_proj[layer], z, modules.num_heads, modules.head_dim)
        post_norm = modules.attn_post_norm[layer]
        if post_norm is not None:
            writes = frozen_norm(post_norm, attn_outputs[layer])(writes)
        scores.append(to_logits(writes.to(final_residual.device)) @ direction)
    return torch.stack(scores)


class ReadoutCapture:
    """Hooks keeping only the last position of every sequence in the batch: attention rows [B, H, S], o_proj
    inputs [B, H * head_dim], attention outputs and the last block's output [B, d]; the forward stops there."""

    def __init__(self, modules: ModelModules, want_attention: bool):
        self.modules = modules
        self.want_attention = want_attention
        self.hooks = Hooks()
        self.clear()

    def clear(self):
        num_layers = self.modules.num_layers
        self.attention: list[torch.Tensor | None] = [None] * num_layers
        self.z: list[torch.Tensor | None] = [None] * num_layers
        self.attn_out: list[torch.Tensor | None] = [None] * num_layers
        self.final: torch.Tensor | None = None

    def __enter__(self):
        modules = self.modules
        hooks = self.hooks
        for layer in range(modules.num_layers):
            if self.want_attention:
                hooks.capture_output(modules.attention[layer], self._attention_store(layer), whole=True)
            out_proj = modules.attn_out_proj[layer]
            hooks.capture_input(out_proj, self._z_store(layer))
            hooks.capture_output(out_proj, self._last_row_store("attn_out", layer))
        # the scores need nothing after the last block: skip the norm and the output head
        hooks.capture_output(modules.blocks[-1], self._final_store, stop=True)
        return self

    def __exit__(self, *exc):
        self.hooks.remove()
        return False

    def _attention_store(self, layer):
        def store(output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise FalseDemoError(
                    f"the attention module of layer {layer} ({type(self.modules.attention[layer]).__name__}) "
                    "returned no weights: it does not dispatch through transformers' AttentionInterface, so head "
                    "scoring cannot read its rows"
                )
            # [B, H, S]; under tensor parallelism the module attends with this process's heads only: every
            # head's row is gathered, in the order of the output projection's input (which the plan shards alike)
            rows = weights[:, :, -1, :].detach().to(torch.float32)
            out_proj = self.modules.attn_out_proj[layer]
            self.attention[layer] = tensor_parallel.gather_shards(
                rows, out_proj.weight, _in_dim(out_proj), dim=1, unit=self.modules.head_dim)

        return store

    def _z_store(self, layer: int):
        out_proj = self.modules.attn_out_proj[layer]

        def store(tensor):
            z = tensor[:, -1].detach().to(torch.float32)  # [B, H * head_dim]; this process's heads under TP
            self.z[layer] = tensor_parallel.gather_shards(z, out_proj.weight, _in_dim(out_proj), dim=1)

        return store

    def _last_row_store(self, name: str, layer: int):
        def store(tensor):
            getattr(self, name)[layer] = tensor[:, -1].detach().to(torch.float32)

        return store

    def _final_store(self, tensor):
        self.final = tensor[:, -1].detach()


def run_to_last_block(model, **inputs) -> None:
    """Forward under a :class:`ReadoutCapture`, which stops the model once its last block has run."""
    if run(model, **inputs) is not None:
        raise RuntimeError("the forward passed the last block without reaching the readout capture's hook")
