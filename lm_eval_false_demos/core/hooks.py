"""Forward hooks in one place: capture what a module takes or gives, replace it, stop the forward early.

Every analysis reads the model through PyTorch forward hooks on its own modules (the lens's residuals, the
interventions' zeroing, head scoring's readout rows). They register through :class:`Hooks`, a context
manager that removes everything it registered on exit, so no hook outlives its forward. accelerate's
``AlignDevicesHook`` wraps a module's ``forward`` itself, inside PyTorch's hook calls: a pre-hook here sees
the input before accelerate moves it to the module's execution device, a forward hook the output after the
module ran there; tensors are never assumed to be on any particular device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class StopForward(Exception):
    """Raised from a hook once everything wanted is captured: the modules after it never run."""


def first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """A module's main input: its first positional argument, else ``hidden_states``, else its first keyword."""
    if args:
        return args[0]
    return kwargs["hidden_states"] if "hidden_states" in kwargs else next(iter(kwargs.values()))


def first_output(output: Any) -> torch.Tensor:
    """A module's main output (blocks and attention modules return tuples whose first item is it)."""
    return output[0] if isinstance(output, tuple) else output


def _with_first_input(args: tuple, kwargs: dict, tensor: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (tensor,) + tuple(args[1:]), kwargs
    key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
    return args, {**kwargs, key: tensor}


def _with_first_output(output: Any, tensor: torch.Tensor) -> Any:
    return (tensor,) + tuple(output[1:]) if isinstance(output, tuple) else tensor


class Hooks:
    """Hooks registered on modules for the duration of a ``with`` block.

    ``capture_*`` callbacks take the tensor and return nothing; ``replace_*`` callbacks return the tensor the
    module gets (input) or gives (output) instead. ``stop=True`` ends the forward right after the capture.
    """

    def __init__(self):
        self._handles: list = []

    def __enter__(self) -> "Hooks":
        return self

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def capture_input(self, module: torch.nn.Module, store: Callable[[torch.Tensor], None], stop: bool = False):
        def hook(module, args, kwargs):
            store(first_input(args, kwargs))
            if stop:
                raise StopForward

        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def capture_output(self, module: torch.nn.Module, store: Callable[[Any], None], stop: bool = False,
                       whole: bool = False):
        """``store`` gets the main output (or, with ``whole``, the module's whole output, e.g. a tuple)."""
        def hook(module, args, output):
            store(output if whole else first_output(output))
            if stop:
                raise StopForward

        self._handles.append(module.register_forward_hook(hook))

    def replace_input(self, module: torch.nn.Module, replace: Callable[[torch.Tensor], torch.Tensor]):
        def hook(module, args, kwargs):
            return _with_first_input(args, kwargs, replace(first_input(args, kwargs)))

        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def replace_output(self, module: torch.nn.Module, replace: Callable[[torch.Tensor], torch.Tensor]):
        def hook(module, args, output):
            return _with_first_output(output, replace(first_output(output)))

        self._handles.append(module.register_forward_hook(hook))


def run(model: torch.nn.Module, **inputs) -> Any | None:
    """``model(**inputs)`` without gradients; None when a hook stopped the forward (:class:`StopForward`)."""
    try:
        with torch.no_grad():
            return model(**inputs)
    except StopForward:
        return None
