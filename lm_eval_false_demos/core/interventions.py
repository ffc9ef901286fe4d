"""Zero attention heads, whole attention blocks or MLP blocks, at the query position or everywhere.

A head's write is zeroed at the *input* of the attention output projection (its slice
``[h * head_dim, (h + 1) * head_dim)``), which is a true zero of what the head adds to the residual
stream and works for every attention implementation. ``head_method="qkv"`` is the paper's variant: the
head's query, key and value are zeroed at the position (uniform attention over the other values, not a
zero write). Specs use a syntax lm-eval's model_args parser cannot corrupt: ``heads="14:6;16:7"``,
``attn_layers="16-27"`` or ``"3;5;7-9"`` or ``"12-"`` (12 to the last block): block indices 0..L-1, parsed and
checked into an ``Ablation`` by :mod:`.ablation_specs`.
"""

from __future__ import annotations

import contextlib

import torch

from lm_eval_false_demos.core import tensor_parallel
from lm_eval_false_demos.core.ablation_specs import Ablation
from lm_eval_false_demos.core.architectures import ModelModules, resolve_modules
from lm_eval_false_demos.core.hooks import Hooks
from lm_eval_false_demos.errors import FalseDemoError


class _Rows:
    """Which (sequence, position) rows the current forward pass ablates; updated per batch."""

    def __init__(self, mode: str, positions=None, attention_mask=None):
        self.mode = mode
        self.batch_shape = None  # (B, T) of the running block's input, for modules that flatten rows
        self.update(positions, attention_mask)

    def update(self, positions=None, attention_mask=None):
        self.positions = None if positions is None else torch.as_tensor(positions, dtype=torch.long)
        self.attention_mask = attention_mask

    def mask(self, batch: int, length: int, device) -> torch.Tensor | None:
        """[B, T] bool, or None for every row."""
        if self.mode == "all":
            return None
        if self.positions is not None:
            positions = self.positions.to(device)
            if positions.dim() == 1:
                positions = positions[:, None]
            if positions.dim() != 2 or positions.shape[0] != batch:
                raise FalseDemoError(
                    f"ablation positions must be [batch={batch}] or [batch, P]; got shape {tuple(positions.shape)}"
                )
            positions = positions % length
        elif self.attention_mask is not None:
            # The last attended position, whichever side the padding is on.
            steps = torch.arange(length, device=device)
            positions = (self.attention_mask.to(device).bool() * (steps + 1)).argmax(-1, keepdim=True)
        else:
            positions = torch.full((batch, 1), length - 1, device=device)
        rows = torch.zeros(batch, length, dtype=torch.bool, device=device)
        return rows.scatter_(1, positions, True)


def _zero_features(tensor: torch.Tensor, rows: _Rows, features: torch.Tensor) -> torch.Tensor:
    """``tensor`` [B, T, F] with ``features`` (bool, [F] for every sequence or [B, F] per sequence) zeroed on
    the selected rows (a new tensor)."""
    if tensor.dim() == 2 and rows.batch_shape is not None:  # OPT runs its MLP on [B * T, d]
        return _zero_features(tensor.view(*rows.batch_shape, -1), rows, features).view(tensor.shape)
    batch, length, _ = tensor.shape
    per_sequence = features.to(tensor.device).view(-1 if features.dim() == 2 else 1, 1, features.shape[-1])
    if per_sequence.shape[0] not in (1, batch):
        raise FalseDemoError(f"{per_sequence.shape[0]} per-sequence head sets for a batch of {batch}")
    row_mask = rows.mask(batch, length, tensor.device)
    where = per_sequence if row_mask is None else row_mask[:, :, None] & per_sequence
    return torch.where(where, torch.zeros((), dtype=tensor.dtype, device=tensor.device), tensor)


def _feature_mask(width: int, slices) -> torch.Tensor:
    mask = torch.zeros(width, dtype=torch.bool)
    for lo, hi in slices:
        mask[lo:hi] = True
    return mask


@contextlib.contextmanager
def ablate(model, ablation: Ablation, positions=None, attention_mask=None, modules: ModelModules | None = None):
    """Apply ``ablation`` to every forward pass inside the block; yields a handle with ``update(positions=,
    attention_mask=)`` to change the rows between batches.

    With ``positions="last"`` the rows per sequence are: explicit ``positions`` ([B] or [B, P]) if given,
    else the last attended position of ``attention_mask``, else the last position.
    """
    modules = modules or resolve_modules(model)
    rows = _Rows(ablation.positions, positions, attention_mask)
    heads_by_block: dict[int, list[int]] = {}
    for block, head in ablation.heads:
        heads_by_block.setdefault(block, []).append(head)
    head_dim, num_heads, num_kv = modules.head_dim, modules.num_heads, modules.num_kv_heads

    def zero_slices(slices: list[tuple[int, int]]):
        return lambda tensor: _zero_features(tensor, rows, _feature_mask(tensor.shape[-1], slices))

    def zero_whole(tensor: torch.Tensor) -> torch.Tensor:
        return _zero_features(tensor, rows, _feature_mask(tensor.shape[-1], [(0, tensor.shape[-1])]))

    def zero_heads(module, features: torch.Tensor):
        # Under tensor parallelism the module receives only this process's heads: zero the global heads'
        # columns that fall in its slice (tensor_parallel.input_columns; none on the other processes).
        def zero(tensor: torch.Tensor) -> torch.Tensor:
            local = tensor_parallel.input_columns(module, features, tensor.shape[-1])
            return _zero_features(tensor, rows, local) if local.any() else tensor

        return zero

    def record_batch_shape(hidden: torch.Tensor) -> None:
        rows.batch_shape = tuple(hidden.shape[:2])

    touched = {block for block, _ in ablation.heads} | set(ablation.attn_layers) | set(ablation.mlp_layers)
    with Hooks() as hooks:
        for block in touched:
            hooks.capture_input(modules.blocks[block], record_batch_shape)
        for block, heads in heads_by_block.items():
            if ablation.head_method == "zero":
                slices = [(h * head_dim, (h + 1) * head_dim) for h in heads]
                module = modules.attn_out_proj[block]
                hooks.replace_input(module, zero_heads(module, _feature_mask(num_heads * head_dim, slices)))
                continue
            # q/k/v of the head (kv head == query head: make_ablation rejects grouped-query attention)
            projections = modules.qkv[block]
            if modules.qkv_layout == "separate":
                slices = [(h * head_dim, (h + 1) * head_dim) for h in heads]
                for projection in projections:
                    hooks.replace_output(projection, zero_slices(slices))
            elif modules.qkv_layout == "concat":
                slices = []
                for h in heads:
                    slices.append((h * head_dim, (h + 1) * head_dim))
                    slices.append(((num_heads + h) * head_dim, (num_heads + h + 1) * head_dim))
                    slices.append(((num_heads + num_kv + h) * head_dim, (num_heads + num_kv + h + 1) * head_dim))
                hooks.replace_output(projections[0], zero_slices(slices))
            else:  # per head [q_h | k_h | v_h]
                slices = [(3 * h * head_dim, 3 * (h + 1) * head_dim) for h in heads]
                hooks.replace_output(projections[0], zero_slices(slices))
        for block in ablation.attn_layers:
            hooks.replace_output(modules.attention[block], zero_whole)
        for block in ablation.mlp_layers:
            hooks.replace_output(modules.mlp[block], zero_whole)
        yield rows


@contextlib.contextmanager
def zero_heads_per_row(model, ablations, modules: ModelModules | None = None):
    """Zero a different head set in each sequence of the batch, at its last position: row b of every forward
    inside the block gets ``ablations[b]`` (None = untouched). Lets C head-ablation conditions run as one
    batch of C copies of a sequence instead of C forwards; each row equals ``ablate(model, ablations[b])``.

    Only head zeroing ("zero" method, ``positions="last"``) takes this path: the same mask on the attention
    output projection's input that ``ablate`` applies, with one head set per sequence.
    """
    modules = modules or resolve_modules(model)
    for ablation in ablations:
        if ablation is None:
            continue
        if ablation.attn_layers or ablation.mlp_layers or ablation.head_method != "zero" or ablation.positions != "last":
            raise FalseDemoError(
                f"per-row ablation takes head zeroing at the last position only; got {ablation.describe()}"
            )
    rows = _Rows("last")
    zeroed_by_block: dict[int, torch.Tensor] = {}
    for row, ablation in enumerate(ablations):
        for block, head in ablation.heads if ablation is not None else ():
            zeroed = zeroed_by_block.setdefault(
                block, torch.zeros(len(ablations), modules.num_heads * modules.head_dim, dtype=torch.bool)
            )
            zeroed[row, head * modules.head_dim:(head + 1) * modules.head_dim] = True

    def zero(module, zeroed):  # this process's columns under tensor parallelism (see ablate)
        return lambda tensor: _zero_features(tensor, rows, tensor_parallel.input_columns(module, zeroed,
                                                                                         tensor.shape[-1]))

    with Hooks() as hooks:
        for block, zeroed in zeroed_by_block.items():
            hooks.replace_input(modules.attn_out_proj[block], zero(modules.attn_out_proj[block], zeroed))
        yield
