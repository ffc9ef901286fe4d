"""Tensor parallelism (transformers' ``tp_plan=auto``, lm-eval's ``--model_args tp_plan=auto`` under torchrun):
which part of a sharded weight this process holds, and the few collectives the readouts need.

Under a tensor-parallel plan every process runs the same forward on the same inputs; weights are
``DTensor``s split over a one-dimensional device mesh, and transformers replaces each sharded module's
``forward`` (not PyTorch hooks) so that what a module *returns* is replicated again, except where the plan
keeps it split. What this project touches is therefore:

* the residual stream, block outputs and the model's logits: replicated, identical on every process;
* the attention output projection's *input* (``o_proj``, "rowwise"): each process holds only its own heads'
  features, the slice of the weight's input dimension it owns (:func:`shard_window`); a forward pre-hook
  sees that local slice, so a global head ``h`` is zeroed on the process whose window holds its features,
  at local columns ``h * head_dim - offset`` (:func:`input_columns`);
* the output head's weight (``lm_head``, sharded over the vocabulary): its rows for K label tokens are read
  with :func:`gather_rows`.

Nothing is assumed about the split: every window is read off the weight's ``DTensor`` placement on its mesh
(``Shard(dim)``, chunked as ``torch.chunk`` does, so uneven splits are handled), and a module whose input
does not match its window is one clear error, never a silently wrong zeroing.
"""

from __future__ import annotations

import sys
import weakref

import torch

from lm_eval_false_demos.errors import FalseDemoError


def _is_dtensor(tensor) -> bool:
    # No DTensor exists before torch.distributed.tensor is imported (transformers imports it to load any
    # model), so code that never meets one does not pay its import (seconds).
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def is_tensor_parallel(model: torch.nn.Module) -> bool:
    """Whether ``model`` was loaded with a tensor-parallel plan (some parameter is a ``DTensor``)."""
    return any(_is_dtensor(parameter) for parameter in model.parameters())


def _shard_dim(tensor, dim: int) -> int | None:
    """The mesh placement splitting ``dim`` of ``tensor`` (None: ``dim`` is whole on this process)."""
    if not _is_dtensor(tensor):
        return None
    from torch.distributed.tensor import Replicate, Shard

    mesh = tensor.device_mesh
    if mesh.ndim != 1:
        raise FalseDemoError(
            f"a weight is split over a {mesh.ndim}-dimensional device mesh; only one-dimensional tensor-parallel "
            "meshes (tp_plan=auto under torchrun) are supported")
    placement = tensor.placements[0]
    if isinstance(placement, Replicate):
        return None
    if not isinstance(placement, Shard):
        raise FalseDemoError(f"a weight has placement {placement}; only Shard and Replicate are supported")
    if placement.dim % tensor.dim() != dim % tensor.dim():
        return None
    return dim % tensor.dim()


def shard_windows(size: int, count: int) -> list[tuple[int, int]]:
    """(offset, length) of each of ``count`` processes' parts of a dimension of ``size`` split by ``Shard``
    (``torch.chunk``'s rule: parts of ceil(size / count), the last ones shorter or empty), in mesh order."""
    from torch.distributed.tensor import Shard

    windows = []
    for rank in range(count):
        length, offset = Shard.local_shard_size_and_offset(size, count, rank)
        windows.append((int(offset), int(length)))
    return windows


def shard_window(tensor, dim: int) -> tuple[int, int]:
    """(offset, length) of the part of ``tensor``'s dimension ``dim`` that this process holds, in global
    coordinates: ``(0, size)`` for an ordinary tensor or a DTensor not split along ``dim``."""
    size = tensor.shape[dim]
    if _shard_dim(tensor, dim) is None:
        return 0, size
    mesh = tensor.device_mesh
    return shard_windows(size, mesh.size(0))[mesh.get_local_rank(0)]


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of ``tensor`` as an ordinary tensor (the tensor itself if it is one)."""
    return tensor.to_local() if _is_dtensor(tensor) else tensor


def input_window(module: torch.nn.Module) -> tuple[int, int] | None:
    """(offset, length) of the input features a rowwise-sharded linear module's forward receives on this
    process (``nn.Linear`` weight [out, in], GPT-2's ``Conv1D`` weight [in, out], split on ``in``); None when
    its forward receives all of them."""
    weight = getattr(module, "weight", None)
    if weight is None:
        return None
    in_dim = 0 if type(module).__name__ == "Conv1D" else weight.dim() - 1
    if _shard_dim(weight, in_dim) is None:
        return None
    return shard_window(weight, in_dim)


def input_columns(module: torch.nn.Module, features: torch.Tensor, width: int) -> torch.Tensor:
    """``features`` [..., F] indexed by ``module``'s global input features -> the columns of the ``width``
    features its forward receives on this process (all of them unless its weight is sharded over its inputs).
    """
    window = input_window(module)
    if window is None:
        return features
    offset, length = window
    if width != length:
        raise FalseDemoError(
            f"{type(module).__name__} received {width} input features but holds features "
            f"{offset}..{offset + length - 1} of its tensor-parallel weight; cannot map heads to them")
    return features[..., offset:offset + length]


def _group(tensor):
    return tensor.device_mesh.get_group(0)


# Gathered label rows per sharded weight and label-id set. A readout asks for the same K rows on every batch;
# they are gathered once (K x d values). The alternative, each process's partial logits over its vocabulary
# slice summed by an all-reduce, would send layers x B x P x K values on EVERY batch: for a sweep
# (L + 1 = 81 layers, B = 4, P = 41 positions) that is 13,284 values per label against d = 8,192 once.
# Keyed by id(weight) with a weak reference to tell a new tensor at a reused address (tensors are not usable
# as WeakKeyDictionary keys: their == is elementwise).
# Bounded: lens training asks for a new random vocabulary sample every step, which is gathered, not kept.
_GATHERED_ROWS: dict[int, tuple[weakref.ref, dict]] = {}
_MAX_CACHED_IDS = 1024  # label sets larger than this (vocabulary samples) are gathered each time
_MAX_CACHED_VALUES = 1 << 24  # per weight (64 MiB of float32); the cache starts over beyond it


def gather_rows(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``weight[ids]`` on every process, for a weight (or bias) that may be sharded over its first dimension
    (the output head, split over the vocabulary under tensor parallelism).

    Each process takes the requested rows it holds (zeros for the others) and one all-reduce sums them (every
    row is held by exactly one process); the result is kept per label-id set, so a readout that asks for the
    same labels on every batch communicates once. Weights are frozen while they are read."""
    if _shard_dim(weight, 0) is None:
        return local(weight)[ids]
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.numel() > _MAX_CACHED_IDS:
        return _all_reduced_rows(weight, ids)
    key = (tuple(ids.shape), tuple(ids.flatten().tolist()))
    owner, cached = _GATHERED_ROWS.get(id(weight), (None, None))
    if owner is None or owner() is not weight:
        cached = {}
        _GATHERED_ROWS[id(weight)] = (weakref.ref(weight), cached)
    if key not in cached:
        rows = _all_reduced_rows(weight, ids)
        if sum(value.numel() for value in cached.values()) + rows.numel() > _MAX_CACHED_VALUES:
            cached.clear()
        cached[key] = rows
    return cached[key]


def rows_held(shard: torch.Tensor, offset: int, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` of a weight of which ``shard`` holds rows ``offset .. offset + len(shard) - 1``: those rows,
    zeros for the others, so the sum over the processes' parts is ``weight[ids]``."""
    length = shard.shape[0]
    ids = ids.to(shard.device)
    if not length:  # an uneven split can leave a process without rows
        return shard.new_zeros(*ids.shape, *shard.shape[1:])
    inside = (ids >= offset) & (ids < offset + length)
    rows = shard[(ids - offset).clamp(0, length - 1)]
    mask = inside.view(*inside.shape, *([1] * (rows.dim() - inside.dim())))
    return torch.where(mask, rows, torch.zeros((), dtype=rows.dtype, device=rows.device)).contiguous()


def _all_reduced_rows(weight, ids: torch.Tensor) -> torch.Tensor:
    rows = rows_held(weight.to_local(), shard_window(weight, 0)[0], ids)
    torch.distributed.all_reduce(rows, group=_group(weight))
    return rows


def gather_shards(piece: torch.Tensor, like: torch.Tensor, like_dim: int, dim: int, unit: int = 1) -> torch.Tensor:
    """The whole of a tensor split as ``like`` is split along ``like_dim``: every process's ``piece`` (its part
    along ``dim``, one entry per ``unit`` of ``like``'s dimension, e.g. one attention head per ``head_dim``
    input features of ``o_proj``) concatenated in mesh order, on every process. ``piece`` when ``like`` is
    whole."""
    if _shard_dim(like, like_dim) is None:
        return piece
    count = like.device_mesh.size(0)
    lengths = [length for _, length in shard_windows(like.shape[like_dim], count)]
    if any(length % unit for length in lengths) or piece.shape[dim] * unit != shard_window(like, like_dim)[1]:
        raise FalseDemoError(
            f"a tensor-parallel shard of {lengths} features does not hold whole units of {unit} (attention heads "
            "split across processes); launch with a number of processes that divides the number of heads")
    lengths = [length // unit for length in lengths]
    widest = max(lengths)
    padded = torch.nn.functional.pad(piece.movedim(dim, -1), (0, widest - piece.shape[dim])).contiguous()
    parts = [torch.empty_like(padded) for _ in range(count)]
    torch.distributed.all_gather(parts, padded, group=_group(like))
    return torch.cat([part[..., :length] for part, length in zip(parts, lengths)], dim=-1).movedim(-1, dim)
