"""Logit lens: the residual stream after block l read through the model's own final norm and output head.

A tuned lens (tuned_lens.py) plugs in as ``translator``: its ``translate(hidden, layer)`` runs before the
norm and head, and is the identity at layer L, so the last layer stays exactly the model's logits.
lens_parity.py proves that last identity on every run's own first batch.

Layer l runs over 0..L: l = 0 is the input to block 0 (embeddings, incl. position embeddings or Gemma's
scaling), l = L the last block's output, where the lens equals the model's logits. Residuals are captured
with hooks on the blocks themselves, never from ``output_hidden_states``: transformers 5 replaces
``hidden_states[-1]`` by the already-normed last hidden state, and a second norm would corrupt layer L.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lm_eval_false_demos.core.architectures import ModelModules, resolve_modules
from lm_eval_false_demos.errors import FalseDemoError


class _StopForward(Exception):
    """Raised from a hook once every requested residual is captured: later blocks are never run."""


def _block_output(output):
    return output[0] if isinstance(output, tuple) else output


def _block_input(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def check_layer(layer, num_layers: int, name: str = "layer") -> int:
    """An integer layer in 0..L (negative counts from the end: -1 is L); integral floats are accepted."""
    if isinstance(layer, bool) or not isinstance(layer, (int, float)) or (
        isinstance(layer, float) and not layer.is_integer()
    ):
        raise FalseDemoError(f"{name}={layer!r} is not an integer; allowed: 0..{num_layers} or -{num_layers + 1}..-1")
    value = int(layer)
    if not -(num_layers + 1) <= value <= num_layers:
        raise FalseDemoError(
            f"{name}={layer!r} is out of range for a model with {num_layers} layers; "
            f"allowed: 0..{num_layers} (or -{num_layers + 1}..-1 counting from the end)"
        )
    return value % (num_layers + 1)


def _normalise_layers(layers, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers + 1))
    if isinstance(layers, (int, float)):
        layers = [layers]
    resolved = [check_layer(layer, num_layers) for layer in layers]
    if not resolved:
        raise FalseDemoError("layers is empty; give at least one layer in 0..%d" % num_layers)
    return resolved


def _final_transform(modules: ModelModules, hidden: torch.Tensor) -> torch.Tensor:
    if modules.final_norm is not None:
        hidden = modules.final_norm(hidden)
    if modules.pre_head is not None:
        hidden = modules.pre_head(hidden)
    return hidden


def _softcap(modules: ModelModules, logits: torch.Tensor) -> torch.Tensor:
    if modules.softcap:
        logits = torch.tanh(logits / modules.softcap) * modules.softcap
    return logits


def lens_logits(
    model, hidden: torch.Tensor, layer: int, modules: ModelModules | None = None, translator=None
) -> torch.Tensor:
    """Full-vocabulary lens logits of the raw residual ``hidden`` [..., d] taken after block ``layer``.

    ``hidden`` must be un-normed: a hook-captured residual (see :func:`residuals`) or
    ``output_hidden_states`` entries ``hidden_states[l]`` for l < L only (transformers 5 returns
    ``hidden_states[L]`` already normed; use the model's logits there).
    """
    modules = modules or resolve_modules(model)
    check_layer(layer, modules.num_layers)
    head = modules.output_head
    hidden = hidden.to(_head_weight(head).device)
    if translator is not None:
        hidden = translator.translate(hidden, layer % (modules.num_layers + 1))
    return _softcap(modules, head(_final_transform(modules, hidden)))


def _head_weight(head: torch.nn.Module) -> torch.Tensor:
    weight = getattr(head, "weight", None)
    if weight is None:
        weight = next(head.parameters())
    return weight


def lens_label_logits(
    model, hidden: torch.Tensor, label_token_ids, modules: ModelModules | None = None
) -> torch.Tensor:
    """Lens logits of only the K label tokens: [..., K], computing just K rows of the output head.

    ``hidden`` is [n, B, P, d] (or [B, P, d]); ``label_token_ids`` is [K] (shared) or [B, K] (per sequence).
    The final norm is per vector, so applying it to gathered rows equals applying it to the whole sequence.
    """
    modules = modules or resolve_modules(model)
    head = modules.output_head
    weight = _head_weight(head)
    label_ids = torch.as_tensor(label_token_ids, dtype=torch.long, device=weight.device)
    normed = _final_transform(modules, hidden.to(weight.device))
    if isinstance(head, torch.nn.Linear):
        rows = weight[label_ids].to(normed.dtype)  # [K, d] or [B, K, d]
        if label_ids.dim() == 1:
            logits = normed @ rows.T
        else:
            logits = torch.einsum("...bpd,bkd->...bpk", normed, rows)
        if head.bias is not None:
            bias = head.bias[label_ids].to(logits.dtype)
            logits = logits + (bias if label_ids.dim() == 1 else bias[:, None, :])
    else:  # an unusual head: pay for the full vocabulary rather than guess its maths
        full = head(normed)
        if label_ids.dim() == 1:
            logits = full[..., label_ids]
        else:
            index = label_ids[:, None, :].expand(*full.shape[:-1], label_ids.shape[-1])
            logits = torch.gather(full, -1, index)
    return _softcap(modules, logits)


def _normalise_positions(positions, batch: int, length: int, device) -> torch.Tensor:
    positions = torch.as_tensor(positions, dtype=torch.long, device=device)
    if positions.dim() == 0:
        positions = positions.view(1)
    if positions.dim() == 1:
        positions = positions.unsqueeze(0).expand(batch, -1)
    if positions.dim() != 2 or positions.shape[0] != batch:
        raise FalseDemoError(f"positions must be [P] or [batch={batch}, P]; got shape {tuple(positions.shape)}")
    if ((positions < -length) | (positions >= length)).any():
        raise FalseDemoError(f"positions {positions.tolist()} out of range for sequences of length {length}")
    return positions % length


def residuals(
    model,
    input_ids: torch.Tensor,
    layers: Sequence[int] | int | None = None,
    positions=None,
    attention_mask: torch.Tensor | None = None,
    modules: ModelModules | None = None,
    **forward_kwargs,
) -> torch.Tensor:
    """Raw residual rows after the requested layers from ONE forward that stops after the deepest one.

    Returns [len(layers), B, P, d] for ``positions`` ([P] or [B, P], negative counts from the end) or
    [len(layers), B, T, d] for ``positions=None``. Only the requested rows are kept.
    """
    return residuals_and_output(model, input_ids, layers, positions, attention_mask, modules, run_to_end=False,
                                **forward_kwargs)[0]


def residuals_and_output(model, input_ids: torch.Tensor, layers, positions, attention_mask, modules, *,
                         run_to_end: bool, **forward_kwargs) -> tuple[torch.Tensor, Any]:
    """:func:`residuals` and, with ``run_to_end``, the model's own output of the same forward (the forward is
    not stopped after the deepest layer); None otherwise."""
    modules = modules or resolve_modules(model)
    num_layers = modules.num_layers
    layer_list = _normalise_layers(layers, num_layers)
    batch, length = input_ids.shape[:2]
    index = None if positions is None else _normalise_positions(positions, batch, length, input_ids.device)
    deepest = max(layer_list)
    captured: dict[int, torch.Tensor] = {}

    def take(hidden: torch.Tensor) -> torch.Tensor:
        if index is None:
            return hidden
        gather = index.to(hidden.device)[:, :, None].expand(-1, -1, hidden.shape[-1])
        return torch.gather(hidden, 1, gather)

    def make_post_hook(layer: int):
        def hook(module, args, output):
            captured[layer] = take(_block_output(output))
            if layer == deepest and not run_to_end:
                raise _StopForward

        return hook

    def pre_hook(module, args, kwargs):
        captured[0] = take(_block_input(args, kwargs))
        if deepest == 0 and not run_to_end:
            raise _StopForward

    handles = []
    try:
        if 0 in layer_list:
            handles.append(modules.blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        for layer in sorted(set(layer_list) - {0}):
            handles.append(modules.blocks[layer - 1].register_forward_hook(make_post_hook(layer)))
        output = None
        try:
            with torch.no_grad():
                output = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **forward_kwargs)
        except _StopForward:
            pass
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(set(layer_list) - set(captured))
    if missing:
        raise FalseDemoError(
            f"the forward pass never reached layers {missing} through {modules.paths.get('layers')!r} of "
            f"{modules.model_type!r}; are the block paths right (layers_path=)?")
    device = _head_weight(modules.output_head).device
    return torch.stack([captured[layer].to(device) for layer in layer_list]), output


def read_label_logits(
    model,
    input_ids: torch.Tensor,
    positions,
    label_token_ids,
    layers: Sequence[int] | None = None,
    attention_mask: torch.Tensor | None = None,
    modules: ModelModules | None = None,
    translator=None,
    **forward_kwargs,
) -> torch.Tensor:
    """Lens logits of the K label tokens at the given positions and layers from one forward pass.

    Returns [len(layers) (L+1 when ``layers`` is None), B, P, K]. Cost: one forward up to the deepest
    requested layer plus norm and K head rows on (layers x B x P) vectors.
    """
    modules = modules or resolve_modules(model)
    rows = residuals(model, input_ids, layers, positions, attention_mask, modules, **forward_kwargs)
    return label_logits_of_rows(model, rows, label_token_ids, layers, modules, translator)


def label_logits_of_rows(model, rows: torch.Tensor, label_token_ids, layers: Sequence[int] | None,
                         modules: ModelModules, translator=None) -> torch.Tensor:
    """[len(layers), B, P, K] label logits of residual rows [len(layers), B, P, d] read at ``layers``."""
    with torch.no_grad():
        if translator is not None:
            layer_list = _normalise_layers(layers, modules.num_layers)
            rows = torch.stack([translator.translate(row, layer) for row, layer in zip(rows, layer_list)])
        return lens_label_logits(model, rows, label_token_ids, modules)


def early_exit_logits(
    model,
    input_ids: torch.Tensor,
    layer: int,
    attention_mask: torch.Tensor | None = None,
    modules: ModelModules | None = None,
    translator=None,
    **forward_kwargs,
) -> torch.Tensor:
    """Full [B, T, V] lens logits at ``layer``; blocks after it are never run."""
    modules = modules or resolve_modules(model)
    layer = check_layer(layer, modules.num_layers)
    hidden = residuals(model, input_ids, [layer], None, attention_mask, modules, **forward_kwargs)[0]
    with torch.no_grad():
        return lens_logits(model, hidden, layer, modules, translator)
