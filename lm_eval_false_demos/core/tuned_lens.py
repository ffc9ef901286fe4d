"""Tuned lens (Belrose et al. 2023): a learned affine translator per layer in front of the model's final norm + head.

Layer l (0..L-1) is read as ``head(norm(h + A_l h + b_l))``; the translators start at zero, so an untrained
tuned lens is the logit lens, and layer L has no translator: there the readout stays the model's own logits.

On disk we use the layout the ``tuned-lens`` package publishes, so its lenses load here and ours load there:
a folder with ``config.json`` (``base_model_name_or_path``, ``d_model``, ``num_hidden_layers``, ``bias``,
``base_model_revision``, ``unembed_hash``, ``lens_type``) and ``params.pt``, the translators' ``ModuleList``
state dict (keys ``0.weight``, ``0.bias``, ... ``{L-1}.bias``). ``params.safetensors`` with the same keys is
read as well. ``params.pt`` is loaded with ``torch.load(weights_only=True)``: tensors only, a pickle that
would run code is refused. A hub id resolves like tuned-lens does (``lens/<id>/`` in the
``AlignmentResearch/tuned-lens`` space, or ``TUNED_LENS_REPO_ID`` / ``TUNED_LENS_REPO_TYPE``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
from pathlib import Path

import torch

from lm_eval_false_demos.core import files as results_io
from lm_eval_false_demos.core.devices import execution_device
from lm_eval_false_demos.core.digests import sha256_file
from lm_eval_false_demos.core.lens import LogitLens
from lm_eval_false_demos.errors import FalseDemoError, error_summary

CONFIG_FILE = "config.json"
PARAMS_FILES = ("params.safetensors", "params.pt")
LENS_KINDS = ("logit", "tuned")
LENS_TYPE = "linear_tuned_lens"


@dataclasses.dataclass(frozen=True)
class LensSpec:
    """What ``lens=`` asked for: ``logit`` or ``tuned:<folder or hub id>``."""

    kind: str
    source: str | None = None

    @property
    def text(self) -> str:
        return self.kind if self.source is None else f"{self.kind}:{self.source}"


def parse_lens(value) -> LensSpec:
    """``None``/``logit`` -> the logit lens; ``tuned:<path or hub id>`` -> a tuned lens (checked before loading)."""
    if value in (None, "", "logit"):
        return LensSpec("logit")
    text = str(value)
    kind, _, source = text.partition(":")
    if kind != "tuned" or not source.strip():
        raise FalseDemoError(
            f"lens={value!r} is not allowed; allowed: logit, tuned:<lens folder or tuned-lens hub id> "
            "(a folder with config.json and params.pt or params.safetensors)"
        )
    source = source.strip()
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")):
        if path.exists() and not path.is_dir():
            raise FalseDemoError(f"lens=tuned:{source} is a file; give the lens folder that holds config.json and "
                                 "params.pt (or params.safetensors)")
        if not path.is_dir():
            raise FalseDemoError(f"lens=tuned:{source}: no such folder (expected config.json and params.pt inside)")
        read_lens_folder(path)  # a half-written, damaged or foreign folder fails before the model loads
    return LensSpec("tuned", source)


def lens_depth(spec: LensSpec) -> int | None:
    """The layer count a local tuned lens was trained for (its config), or None (logit lens, hub id)."""
    if spec.kind != "tuned" or not Path(spec.source).expanduser().is_dir():
        return None
    config_path, _ = _lens_files(Path(spec.source).expanduser())
    return int(read_config(config_path)["num_hidden_layers"])


def read_config(path: Path) -> dict:
    """A tuned-lens ``config.json``, checked: a JSON object with positive integer ``d_model`` and
    ``num_hidden_layers``, a boolean ``bias`` and our ``lens_type``."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FalseDemoError(f"{path}: not a readable JSON lens config ({error_summary(error)}); "
                             "train or download the lens again") from None
    if not isinstance(config, dict):
        raise FalseDemoError(f"{path} holds a JSON {type(config).__name__}, not a tuned-lens config.json object")
    missing = [key for key in ("d_model", "num_hidden_layers") if key not in config]
    if missing:
        raise FalseDemoError(f"{path} lacks {', '.join(missing)}; is it a tuned-lens config.json?")
    for key in ("d_model", "num_hidden_layers"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FalseDemoError(f"{path}: {key}={value!r} is not allowed; a tuned-lens config gives an integer >= 1")
    if not isinstance(config.get("bias", True), bool):
        raise FalseDemoError(f"{path}: bias={config['bias']!r} is not allowed; give true or false")
    if config.get("lens_type", LENS_TYPE) != LENS_TYPE:
        raise FalseDemoError(f"{path}: lens_type {config['lens_type']!r}; only {LENS_TYPE!r} is supported")
    return config


def check_translators(state: dict, config: dict, params_path: Path) -> None:
    """The state dict holds exactly the translators the config describes: ``{i}.weight`` (d x d) and, with a
    bias, ``{i}.bias`` (d) for i in 0..L-1, finite floating-point numbers."""
    d_model, layers, bias = int(config["d_model"]), int(config["num_hidden_layers"]), bool(config.get("bias", True))
    expected = {f"{i}.weight": (d_model, d_model) for i in range(layers)}
    if bias:
        expected.update({f"{i}.bias": (d_model,) for i in range(layers)})
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        found = ", ".join((missing and [f"missing {', '.join(missing[:3])}"] or [])
                          + (unexpected and [f"unexpected {', '.join(unexpected[:3])}"] or []))
        raise FalseDemoError(f"{params_path}: translator tensors do not match the config ({layers} layers, "
                             f"bias={bias}): {found}; is it this lens's params file?")
    for key, shape in expected.items():
        tensor = state[key]
        if tuple(tensor.shape) != shape or not tensor.is_floating_point():
            raise FalseDemoError(f"{params_path}: {key} is {tensor.dtype} {tuple(tensor.shape)}, expected a float "
                                 f"{shape} for d_model={d_model}; is it this lens's params file?")
        if not bool(torch.isfinite(tensor).all()):
            raise FalseDemoError(f"{params_path}: {key} holds NaN or infinite values; train the lens again")


def read_lens_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """(config, translator state dict, params path) of a local lens folder, every file checked."""
    config_path, params_path = _lens_files(folder)
    config = read_config(config_path)
    state = read_tensors(params_path)
    check_translators(state, config, params_path)
    return config, state, params_path



def _lens_files(folder: Path) -> tuple[Path, Path]:
    config = folder / CONFIG_FILE
    params = next((folder / name for name in PARAMS_FILES if (folder / name).is_file()), None)
    if not config.is_file() or params is None:
        raise FalseDemoError(
            f"lens folder {folder} needs {CONFIG_FILE} and one of {', '.join(PARAMS_FILES)}; found "
            f"{sorted(p.name for p in folder.iterdir()) if folder.is_dir() else 'no folder'}"
        )
    return config, params


def _hub_files(resource_id: str) -> tuple[Path, Path]:
    from huggingface_hub import hf_hub_download

    repo_id = os.environ.get("TUNED_LENS_REPO_ID") or "AlignmentResearch/tuned-lens"
    repo_type = os.environ.get("TUNED_LENS_REPO_TYPE") or "space"
    folder = f"lens/{resource_id}"
    try:
        config = hf_hub_download(repo_id, CONFIG_FILE, subfolder=folder, repo_type=repo_type)
        params = hf_hub_download(repo_id, "params.pt", subfolder=folder, repo_type=repo_type)
    except Exception as error:  # offline, missing entry, no such repo: all one answer to the user
        raise FalseDemoError(
            f"lens=tuned:{resource_id}: not a local folder and not found as {repo_type} {repo_id}/{folder} "
            f"({type(error).__name__})"
        ) from None
    return Path(config), Path(params)


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A tensor file's state dict; ``.pt`` files are unpickled with tensors and plain containers only.

    An empty, truncated or foreign file is one FalseDemoError naming it (whatever torch or safetensors
    raised while parsing it)."""
    path = Path(path)
    damaged = (f"{path} is damaged or not a tensor file", "train or download the lens again")
    if path.stat().st_size == 0:
        raise FalseDemoError(f"{damaged[0]} (empty); {damaged[1]}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise FalseDemoError(f"{damaged[0]} ({error_summary(error)}); {damaged[1]}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # torch's message advises weights_only=False, the unsafe load we never do: say what it means here.
            raise FalseDemoError(
                f"refusing to load {path}: it is not a tensors-only checkpoint (damaged, or a pickle holding more "
                f"than tensors, which is never unpickled here); {damaged[1]}"
            ) from None
        except (EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError, TypeError) as error:
            # the zip container torch writes, truncated or overwritten: torch names no file
            raise FalseDemoError(f"{damaged[0]} ({error_summary(error)}); {damaged[1]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FalseDemoError(f"{path} holds {type(state).__name__}, not a dict of tensors (a translator state dict)")
    return state


class TunedLens(torch.nn.Module):
    """One ``Linear(d, d)`` translator per layer 0..L-1, applied residually: ``h + translator(h)``."""

    def __init__(self, d_model: int, num_layers: int, bias: bool = True, config: dict | None = None):
        super().__init__()
        translators = []
        for _ in range(num_layers):
            translator = torch.nn.Linear(d_model, d_model, bias=bias)
            torch.nn.init.zeros_(translator.weight)
            if bias:
                torch.nn.init.zeros_(translator.bias)
            translators.append(translator)
        # The same attribute name as tuned-lens, so ``layer_translators.state_dict()`` is its params.pt.
        self.layer_translators = torch.nn.ModuleList(translators)
        self.config = dict(config or {})
        self.config.update(d_model=d_model, num_hidden_layers=num_layers, bias=bias, lens_type=LENS_TYPE)
        self.source: dict = {"kind": "tuned", "source": None, "file": None, "sha256": None}

    @property
    def num_layers(self) -> int:
        return len(self.layer_translators)

    def translate(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """The residual after block ``layer`` mapped towards the last layer's; layer L passes through."""
        if layer >= self.num_layers:
            return hidden
        translator = self.layer_translators[layer]
        return hidden + translator(hidden.to(translator.weight.device, translator.weight.dtype)).to(hidden.dtype)

    def describe(self) -> dict:
        """The lens record every result carries (``lens.Lens``): kind, source, file, sha256, key."""
        record = dict(self.source)
        record["key"] = f"tuned:{record['sha256'][:12]}" if record.get("sha256") else "tuned"
        return record

    @classmethod
    def for_model(cls, model, num_layers: int, bias: bool = True) -> "TunedLens":
        """Zero translators sized for ``model`` (the identity: equal to the logit lens), on its head's device."""
        head = model.get_output_embeddings()
        d_model = head.in_features if isinstance(head, torch.nn.Linear) else int(model.config.hidden_size)
        config = {
            "base_model_name_or_path": str(getattr(model.config, "name_or_path", "") or ""),
            "base_model_revision": None,
            "unembed_hash": None,
        }
        return _placed(cls(d_model, num_layers, bias=bias, config=config), model)

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """``config.json`` + ``params.pt`` as tuned-lens writes them (``params.pt`` last: it marks completion)."""
        folder = Path(folder)
        buffer = io.BytesIO()
        state = {key: value.detach().cpu().contiguous() for key, value in self.layer_translators.state_dict().items()}
        torch.save(state, buffer)
        results_io.write_text_atomic(folder / CONFIG_FILE, json.dumps(self.config, indent=2), overwrite=overwrite)
        return results_io.write_bytes_atomic(folder / "params.pt", buffer.getvalue(), overwrite=overwrite)


def load_tuned_lens(source: str | Path, model=None, num_layers: int | None = None) -> TunedLens:
    """A tuned lens from a folder (or tuned-lens hub id), checked against the model's width and depth."""
    folder = Path(str(source)).expanduser()
    config_path, params_path = _lens_files(folder) if folder.is_dir() else _hub_files(str(source))
    config = read_config(config_path)
    d_model, layers = int(config["d_model"]), int(config["num_hidden_layers"])
    if num_layers is not None and layers != num_layers:
        raise FalseDemoError(
            f"lens {source} has {layers} translators but the model has {num_layers} blocks; "
            "it was trained for another model"
        )
    if model is not None:
        head = model.get_output_embeddings()
        width = head.in_features if isinstance(head, torch.nn.Linear) else getattr(model.config, "hidden_size", None)
        if width is not None and int(width) != d_model:
            raise FalseDemoError(f"lens {source} has d_model={d_model} but the model's width is {width}")
    state = read_tensors(params_path)
    check_translators(state, config, params_path)
    lens = TunedLens(d_model, layers, bias=bool(config.get("bias", True)), config=config)
    lens.layer_translators.load_state_dict(state)
    lens.source = {"kind": "tuned", "source": str(source), "file": params_path.name, "sha256": sha256_file(params_path)}
    if model is not None:
        lens = _placed(lens, model)
    return lens.eval().requires_grad_(False)


def _placed(lens: TunedLens, model) -> TunedLens:
    """The translators on the execution device of the model's head (where the readout computes, also when
    accelerate offloads the model) and in the head's dtype (known even while its weight is offloaded)."""
    head = model.get_output_embeddings()
    parameter = next(head.parameters(), None) if head is not None else None
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else None
    return lens.to(device=execution_device(head if head is not None else model), dtype=dtype)


def build_lens(spec: LensSpec, model, num_layers: int):
    """The ``lens.Lens`` that ``spec`` names: the logit lens, or the tuned lens loaded and checked."""
    if spec.kind == "logit":
        return LogitLens()
    return load_tuned_lens(spec.source, model, num_layers)
