"""Where modules compute and where their weights can be read, wherever accelerate placed them.

A model loaded with ``device_map`` (lm-eval's ``parallelize=True``, ``max_memory``, ``offload_folder``) may sit
on several devices, in CPU memory or on disk: an offloaded module's parameters are ``meta`` tensors until its
``AlignDevicesHook`` loads them for a forward, on the hook's execution device. So nothing here asks a
parameter where it is: the device a module computes on is its hook's execution device (else the device of
its own tensors), and a weight is read only inside :func:`weights_of` (accelerate's ``align_module_device``),
which loads an offloaded module's parameters for the duration of the block.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import torch


def _hook_device(module: torch.nn.Module) -> torch.device | None:
    hook = getattr(module, "_hf_hook", None)
    for candidate in [hook, *getattr(hook, "hooks", ())]:  # a SequentialHook holds several
        device = getattr(candidate, "execution_device", None)
        if device is not None:
            return torch.device(device)
    return None


def execution_device(module: torch.nn.Module, default: torch.device | None = torch.device("cpu")) -> torch.device | None:
    """The device ``module``'s forward computes on (its outputs are there); ``default`` for a module with no
    tensors and no hook (a weightless norm computes wherever its input is)."""
    for sub in module.modules():  # the module itself first, then its children in order
        device = _hook_device(sub)
        if device is not None:
            return device
        for tensor in itertools.chain(sub.parameters(recurse=False), sub.buffers(recurse=False)):
            if tensor.device.type != "meta":
                return tensor.device
    return default


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's input ids go: the execution device of its input embeddings (accelerate's first device)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return execution_device(embeddings if embeddings is not None else model)


@contextlib.contextmanager
def weights_of(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` with its own parameters readable for the block (loaded from CPU or disk offload onto its
    execution device by accelerate's own hook, then released); a no-op for a module in memory."""
    from accelerate.utils import align_module_device

    with align_module_device(module):
        yield module
