"""Loading a model for an analysis: through lm-eval's model registry, as ``lm_eval --model ...`` loads it.

Every analysis (the sweep, head scoring and evaluation) gets its model here, so BOS, dtype, device,
``gguf_file``, ``revision``, ``trust_remote_code`` and accelerate ranks behave exactly as in an lm-eval run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from lm_eval_false_demos.core.digests import sha256_file
from lm_eval_false_demos.core.embedded_models import model_identity as embedded_identity
from lm_eval_false_demos.core.embedded_models import resolve_pretrained
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations import compat


def create_model(model: str, model_args: Mapping[str, Any], batch_size: int, device: str | None):
    """The lm-eval model object (tokenizer, device, accelerate ranks, ablation hooks) from the registry."""
    import lm_eval.api.registry
    import lm_eval.models  # noqa: F401  (imports the built-ins and, through our hook, hf-earlyexit/hf-ablate)

    compat.check_internals()  # a renamed lm-eval internal fails here, naming it, not deep in a run
    model_args = dict(model_args)
    if device is None:
        import torch

        # lm_eval's CLI default is cuda:0, which fails on a CPU-only torch; pick what exists.
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if model == "hf-earlyexit":
        # hf-earlyexit insists on an exit layer; -1 is the model's own output, and the sweep reads all layers.
        model_args["exit_layer"] = -1
    model_class = lm_eval.api.registry.get_model(model)
    try:
        return model_class.create_from_arg_obj(model_args, {"batch_size": batch_size, "device": device})
    except TypeError:
        refuse_args_nothing_takes(model, model_args)
        raise


def refuse_args_nothing_takes(model: str, model_args: Mapping[str, Any]) -> None:
    """After a TypeError while creating the model: HFLM hands model args it does not know to from_pretrained,
    which hands what the config does not take to the model class, so a typo'd or foreign key ends as
    transformers' TypeError there. One line naming the key instead (nothing named: the TypeError stands)."""
    refused = args_nothing_takes(model_args)
    if refused:
        shown = ", ".join(f"{key}={model_args[key]!r}" for key in refused)
        raise FalseDemoError(
            f"unknown model arg {shown}: neither lm-eval's {model} model, transformers' from_pretrained, the "
            "model's config nor its class takes it; remove it or check its spelling"
        ) from None


def args_nothing_takes(model_args: Mapping[str, Any]) -> list[str]:
    """The model args that lm-eval's HFLM, ``from_pretrained``'s own parameters, the model's config (as
    transformers splits them: ``return_unused_kwargs``) and the model class's constructor all leave over."""
    import inspect

    import transformers

    from lm_eval_false_demos.core.architectures import PATH_OVERRIDES
    from lm_eval_false_demos.integrations.models import OWN_ARGS, hflm_arg_names

    taken = hflm_arg_names() | set(OWN_ARGS) | set(PATH_OVERRIDES) | {"lens", "batch_size", "max_batch_size",
                                                                        "device"}
    taken |= set(inspect.signature(transformers.PreTrainedModel.from_pretrained).parameters)
    candidates = {key: value for key, value in model_args.items() if key not in taken}
    if not candidates or not isinstance(model_args.get("pretrained"), str):
        return []
    try:
        config, unused = transformers.AutoConfig.from_pretrained(
            model_args["pretrained"], revision=model_args.get("revision"), local_files_only=True,
            trust_remote_code=str(model_args.get("trust_remote_code", "")).lower() in ("1", "true", "yes"),
            return_unused_kwargs=True, **candidates,
        )
        model_class = transformers.MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except Exception:  # noqa: BLE001 - no config to compare with: the original error stands
        return []
    constructor = inspect.signature(model_class.__init__).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in constructor.values()):
        return []
    return sorted(key for key in unused if key in candidates and key not in constructor)


def resolve_embedded(model_args: Mapping[str, Any]) -> dict:
    """``pretrained=gemma-3-270m`` (a packaged GGUF's short name) -> its converted HF folder, for every model type."""
    resolved = dict(model_args)
    if "pretrained" in resolved:
        resolved["pretrained"] = resolve_pretrained(resolved["pretrained"])  # other names pass through
    return resolved


def process_rank_and_count(lm) -> tuple[int, int]:
    """(rank, processes) of this run's launch (accelerate launch, torchrun).

    HFLM reports rank 0 of 1 on every process when there is no GPU (its data parallelism counts GPUs). Under
    ``accelerate launch`` it keeps the Accelerator, whose process group spans all processes: ask it. Under
    torchrun on CPU there is no Accelerator process group: the processes join one of their own (gloo, from
    torchrun's environment), so they can split the work and one writes.
    """
    accelerator = getattr(lm, "accelerator", None)
    if accelerator is not None and accelerator.num_processes > 1:
        return int(accelerator.process_index), int(accelerator.num_processes)
    rank, count = int(getattr(lm, "rank", 0)), int(getattr(lm, "world_size", 1))
    if count > 1:
        return rank, count
    launched = _launched_world_size()
    if launched > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
        return int(dist.get_rank()), int(dist.get_world_size())
    return rank, count


def _launched_world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def leave_process_group(world_size: int) -> None:
    """Every rank of a data-parallel run leaves the process group together once the last collective is done.

    A rank that simply exits while another still holds the gloo group dies in its teardown ("terminate called
    without an active exception", SIGABRT), and the launcher then kills the rank writing the results."""
    if world_size <= 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def model_identity(model_args: Mapping[str, Any], lm) -> dict[str, Any]:
    """What pins the weights: the GGUF file's sha256, a local folder's weight-file digest, or the hub revision."""
    identity: dict[str, Any] = {}
    pretrained = model_args.get("pretrained")
    gguf_file = model_args.get("gguf_file")
    if isinstance(pretrained, str):
        folder = Path(pretrained)
        if gguf_file:
            gguf_path = Path(gguf_file) if Path(gguf_file).is_absolute() else folder / gguf_file
            if gguf_path.is_file():
                identity.update(kind="gguf", path=str(gguf_path), sha256=sha256_file(gguf_path))
        elif folder.is_dir():
            # A converted packaged GGUF records the file's sha256: that, not the conversion, is the identity.
            embedded = embedded_identity(str(folder))
            if embedded:
                identity["embedded"] = embedded
            digest = hashlib.sha256()
            files = sorted(
                path for path in folder.iterdir()
                if path.suffix in (".safetensors", ".bin", ".gguf", ".json", ".model") and path.is_file()
            )
            for path in files:
                digest.update(path.name.encode() + b"\0" + sha256_file(path).encode())
            identity.update(kind="local_folder", path=str(folder.resolve()), files=[path.name for path in files],
                            sha256=digest.hexdigest())
        else:
            identity.update(kind="hub", repo=pretrained, revision=model_args.get("revision", "main"))
    try:
        # lm-eval's own record (model_sha, num parameters, dtype); it never fails the sweep.
        info = lm.get_model_info() if hasattr(lm, "get_model_info") else {}
        identity["lm_eval_model_info"] = json.loads(json.dumps(info, default=str))
    except Exception as error:  # noqa: BLE001 - the identity is informative, a lookup failure is not fatal
        identity["lm_eval_model_info_error"] = repr(error)
    return identity


