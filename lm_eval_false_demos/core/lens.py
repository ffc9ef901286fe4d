"""Reading a layer: a lens (logit or tuned) in front of the model's own unembedding, from one forward pass.

:class:`Readout` is what every caller uses (the sweep, hf-earlyexit / hf-ablate, head evaluation, lens
training, the parity check): it owns the lens, the :class:`~unembed.Unembed` (final norm, pre-head, head,
soft-cap, label rows) and the devices, so callers never branch on the lens kind or ask a parameter where it
is. A lens implements :class:`Lens`: ``translate(hidden, layer)`` (identity for the logit lens; a tuned
lens's translator, identity at layer L, so the last layer stays exactly the model's logits) and
``describe()`` (the record results carry). lens_parity.py proves the last-layer identity on every run.

Layer l runs over 0..L: l = 0 is the input to block 0 (embeddings, incl. position embeddings or Gemma's
scaling), l = L the last block's output, where the lens equals the model's logits. Residuals are captured
with hooks on the blocks themselves (core/hooks.py), never from ``output_hidden_states``: transformers 5
replaces ``hidden_states[-1]`` by the already-normed last hidden state, and a second norm would corrupt
layer L. The forward stops after the deepest block asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from lm_eval_false_demos.core import precision
from lm_eval_false_demos.core.architectures import ModelModules, resolve_modules
from lm_eval_false_demos.core.devices import input_device
from lm_eval_false_demos.core.hooks import Hooks, run
from lm_eval_false_demos.core.unembed import Unembed
from lm_eval_false_demos.errors import FalseDemoError


@runtime_checkable
class Lens(Protocol):
    """What reads a layer's residual before the unembedding."""

    def translate(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """The residual after block ``layer`` mapped towards the last layer's (identity at L)."""

    def describe(self) -> dict:
        """The lens record every result carries: kind, source, file, sha256, key."""


class LogitLens:
    """The logit lens: every layer read through the model's own norm and head, untranslated."""

    kind = "logit"

    def translate(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        return hidden

    def describe(self) -> dict:
        return {"kind": "logit", "source": None, "file": None, "sha256": None, "key": "logit"}


def check_layer(layer, num_layers: int, name: str = "layer") -> int:
    """An integer layer in 0..L (negative counts from the end: -1 is L); integral floats are accepted."""
    if isinstance(layer, bool) or not isinstance(layer, (int, float)) or (
        isinstance(layer, float) and not layer.is_integer()
    ):
        raise FalseDemoError(f"{name}={layer!r} is not an integer; allowed: 0..{num_layers} or -{num_layers + 1}..-1")
    value = int(layer)
    if not -(num_layers + 1) <= value <= num_layers:
        raise FalseDemoError(
            f"{name}={layer!r} is out of range for a model with {num_layers} blocks ({num_layers + 1} layers: the "
            f"embeddings and each block's output); "
            f"allowed: 0..{num_layers} (or -{num_layers + 1}..-1 counting from the end)"
        )
    return value % (num_layers + 1)


def normalise_layers(layers, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers + 1))
    if isinstance(layers, (int, float)):
        layers = [layers]
    resolved = [check_layer(layer, num_layers) for layer in layers]
    if not resolved:
        raise FalseDemoError("layers is empty; give at least one layer in 0..%d" % num_layers)
    return resolved


def normalise_positions(positions, batch: int, length: int, device=None) -> torch.Tensor:
    """[B, P] positions in 0..T-1 from [P] (every row) or [B, P]; negative counts from the end."""
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


def gather_rows(hidden: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """hidden [B, T, ...] at per-row positions ``index`` [B, P] -> [B, P, ...] (all of it for None)."""
    if index is None:
        return hidden
    index = index.to(hidden.device)
    return torch.gather(hidden, 1, index.view(*index.shape, *([1] * (hidden.dim() - 2))).expand(
        -1, -1, *hidden.shape[2:]))


class Readout:
    """A lens and the unembedding of one model: residual capture, layer logits and label logits.

    ``lens`` is a :class:`Lens` (None: the logit lens); a tuned lens (an ``nn.Module``) is moved to the
    head's execution device. Label and full logits come out in float32 on that device.
    """

    def __init__(self, model, modules: ModelModules | None = None, lens: Lens | None = None):
        self.model = model
        self.modules = modules or resolve_modules(model)
        self.unembed = Unembed(self.modules)
        if isinstance(lens, torch.nn.Module):
            lens = lens.to(self.unembed.device)
        self.lens = lens if lens is not None else LogitLens()

    @property
    def num_layers(self) -> int:
        return self.modules.num_layers

    @property
    def input_device(self) -> torch.device:
        """Where input ids go (accelerate's first device for a dispatched model)."""
        return input_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return self.unembed.dtype

    def describe(self) -> dict:
        return self.lens.describe()

    # ---- residuals -------------------------------------------------------------------------------------
    def residuals(self, input_ids: torch.Tensor, layers=None, positions=None, attention_mask=None, *,
                  run_to_end: bool = False, model_logits_at=None, **forward_kwargs) -> tuple[torch.Tensor, Any]:
        """(raw residual rows [len(layers), B, P, d] after the requested layers, the model's output or None).

        One forward that stops after the deepest layer, unless ``run_to_end``: then it runs on and the
        model's own output is returned too; with ``model_logits_at`` ([B, P'] per-row positions) the model's
        head sees only those rows, so ``output.logits`` is [B, P', V] (never B x T x V, nor the union of
        every row's positions for every row). ``positions`` is [P] or [B, P] (negative counts from the
        end), None for every position. Rows are on the head's execution device.
        """
        modules = self.modules
        layer_list = normalise_layers(layers, modules.num_layers)
        batch, length = input_ids.shape[:2]
        index = None if positions is None else normalise_positions(positions, batch, length)
        deepest = max(layer_list)
        captured: dict[int, torch.Tensor] = {}
        device = self.unembed.device

        def keeper(layer: int):
            return lambda hidden: captured.__setitem__(layer, gather_rows(hidden, index).to(device))

        with Hooks() as hooks:
            if 0 in layer_list:
                hooks.capture_input(modules.blocks[0], keeper(0), stop=deepest == 0 and not run_to_end)
            for layer in sorted(set(layer_list) - {0}):
                hooks.capture_output(modules.blocks[layer - 1], keeper(layer),
                                     stop=layer == deepest and not run_to_end)
            if model_logits_at is not None:
                head_index = normalise_positions(model_logits_at, batch, length)
                hooks.replace_input(modules.output_head, lambda hidden: gather_rows(hidden, head_index))
            output = run(self.model, input_ids=input_ids.to(self.input_device),
                         attention_mask=None if attention_mask is None else attention_mask.to(self.input_device),
                         use_cache=False, **forward_kwargs)
        missing = sorted(set(layer_list) - set(captured))
        if missing:
            raise FalseDemoError(
                f"the forward pass never reached layers {missing} through {modules.paths.get('layers')!r} of "
                f"{modules.model_type!r}; are the block paths right (layers_path=)?")
        return torch.stack([captured[layer] for layer in layer_list]), output

    # ---- readouts of captured rows ---------------------------------------------------------------------
    def logits(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Full-vocabulary lens logits [..., V] (float32) of raw residuals ``hidden`` taken at ``layer``."""
        layer = check_layer(layer, self.num_layers)
        return self.unembed.logits(self.lens.translate(hidden.to(self.unembed.device), layer))

    def label_logits(self, rows: torch.Tensor, layers, label_ids) -> torch.Tensor:
        """[len(layers), B, P, K] float32 label logits of residual rows [len(layers), B, P, d] read at
        ``layers`` (None: 0..L); ``label_ids`` [K] or [B, K]."""
        layer_list = normalise_layers(layers, self.num_layers)
        rows = rows.to(self.unembed.device)
        translated = torch.stack([self.lens.translate(row, layer) for row, layer in zip(rows, layer_list)])
        return self.unembed.label_logits(translated, label_ids)

    def require_finite(self, values: torch.Tensor, what: str) -> torch.Tensor:
        return precision.require_finite(values, what, self.dtype)

    # ---- one forward, read --------------------------------------------------------------------------------
    def read_label_logits(self, input_ids, positions, label_ids, layers=None, attention_mask=None,
                          **forward_kwargs) -> torch.Tensor:
        """Label logits [len(layers) (L+1 for None), B, P, K] at the given positions and layers from one
        forward up to the deepest layer, plus norm and K head rows on (layers x B x P) vectors."""
        rows, _ = self.residuals(input_ids, layers, positions, attention_mask, **forward_kwargs)
        with torch.no_grad():
            return self.label_logits(rows, layers, label_ids)

    def layer_logits(self, input_ids, layer: int, positions=None, attention_mask=None,
                     **forward_kwargs) -> torch.Tensor:
        """Full [B, P, V] (every position for ``positions=None``: [B, T, V]) float32 lens logits at ``layer``;
        blocks after it never run."""
        layer = check_layer(layer, self.num_layers)
        rows, _ = self.residuals(input_ids, [layer], positions, attention_mask, **forward_kwargs)
        with torch.no_grad():
            return self.logits(rows[0], layer)


# ---- conveniences over a Readout (tests and one-off calls) ------------------------------------------------

def residuals(model, input_ids, layers: Sequence[int] | int | None = None, positions=None, attention_mask=None,
              modules: ModelModules | None = None, **forward_kwargs) -> torch.Tensor:
    """Raw residual rows [len(layers), B, P or T, d] from one forward that stops after the deepest layer."""
    return Readout(model, modules).residuals(input_ids, layers, positions, attention_mask, **forward_kwargs)[0]


def lens_logits(model, hidden, layer: int, modules: ModelModules | None = None, translator: Lens | None = None):
    """Full-vocabulary lens logits (float32) of the raw residual ``hidden`` [..., d] taken after ``layer``.

    ``hidden`` must be un-normed: a hook-captured residual (:func:`residuals`) or ``output_hidden_states``
    entries ``hidden_states[l]`` for l < L only (transformers 5 returns ``hidden_states[L]`` already normed).
    """
    with torch.no_grad():
        return Readout(model, modules, translator).logits(hidden, layer)


def read_label_logits(model, input_ids, positions, label_token_ids, layers=None, attention_mask=None,
                      modules: ModelModules | None = None, translator: Lens | None = None, **forward_kwargs):
    """:meth:`Readout.read_label_logits` of the model with ``translator`` (None: the logit lens)."""
    return Readout(model, modules, translator).read_label_logits(input_ids, positions, label_token_ids, layers,
                                                                  attention_mask, **forward_kwargs)


def early_exit_logits(model, input_ids, layer: int, attention_mask=None, modules: ModelModules | None = None,
                      translator: Lens | None = None, **forward_kwargs) -> torch.Tensor:
    """Full [B, T, V] lens logits at ``layer``; blocks after it are never run."""
    return Readout(model, modules, translator).layer_logits(input_ids, layer, None, attention_mask,
                                                            **forward_kwargs)
