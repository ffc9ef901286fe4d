"""What every results file we write shares, read back typed: the header (``kind``, ``format_version``), the run
configuration both ``sweep.json`` and ``heads.json`` record, and the value readers the schemas are built from.

The schemas (:mod:`results.sweep_schema`, :mod:`results.heads_schema`) read each field from the one place its
writer puts it. A file of an unknown ``format_version`` is refused in one line (:class:`SchemaError`); fields
that older files lack are None or empty. Single values are read without raising: a value of the wrong type or
a non-finite number reads as None, so one odd value never loses a whole file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lm_eval_false_demos.errors import FalseDemoError


class SchemaError(FalseDemoError):
    """A results file that cannot be read as its kind: ``path`` and ``reason`` (the message is both)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


# ------------------------------------------------------------------------------------------ headers


def check_header(payload: Mapping[str, Any], kind: str, supported: tuple[int, ...], path: str | Path) -> int:
    """The file's ``format_version``, once ``kind`` matches and the version is one this reader knows."""
    if payload.get("kind") != kind:
        raise SchemaError(path, f"not a {kind} file (kind {payload.get('kind')!r})")
    version = payload.get("format_version")
    known = ", ".join(map(str, supported))
    if isinstance(version, bool) or not isinstance(version, int):
        raise SchemaError(path, f"{kind} without an integer format_version ({version!r}); this reader reads "
                                f"format_version {known}")
    if version not in supported:
        newer = "; a newer lm_eval_false_demos wrote it" if version > max(supported) else ""
        raise SchemaError(path, f"{kind} format_version {version} is not supported (this reader reads format_version "
                                f"{known}){newer}")
    return version


def read_json(path: str | Path) -> Any:
    """A results file's JSON (NaN allowed, as older writers wrote it); SchemaError when unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise SchemaError(path, f"cannot read ({error.__class__.__name__}: {error})") from None


def read_object(path: str | Path, kind: str) -> dict:
    """The file's top-level JSON object, or SchemaError (a list or a number is no results file)."""
    payload = read_json(path)
    if not isinstance(payload, dict):
        raise SchemaError(path, f"not a {kind} file (top level is {type(payload).__name__})")
    return payload


def section(payload: Mapping[str, Any], name: str, path: str | Path, required: bool = False) -> dict:
    """An object-valued field: {} when absent (older files) unless ``required``; SchemaError when not an object."""
    value = payload.get(name)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise SchemaError(path, f"missing or malformed {name!r} (partial file?)")
    return value


# ------------------------------------------------------------------------------------ single values


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def accuracy(value: Any) -> float | None:
    found = number(value)
    return found if found is not None and 0.0 <= found <= 1.0 else None


def integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            parsed = float(value.strip())  # lm-eval's CLI writes exit_layer=-1 as "-1.0"
        except ValueError:
            return None
        return int(parsed) if parsed.is_integer() else None
    return None


def text(value: Any) -> str | None:
    """Text with its whitespace runs made single spaces (numbers as their text); None when empty."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return " ".join(value.split())
    return None


def string(value: Any) -> str | None:
    """A string as written (None for anything else)."""
    return value if isinstance(value, str) else None


def curve(value: Any) -> tuple[float, ...] | None:
    """A per-layer accuracy curve: at least two accuracies in [0, 1], else None."""
    if not isinstance(value, list) or len(value) < 2:
        return None
    values = [accuracy(item) for item in value]
    return None if any(item is None for item in values) else tuple(values)


def numbers(value: Any) -> tuple[float | None, ...]:
    """A list of numbers (an undefined one, written null, reads None); () when not a list."""
    return tuple(number(item) for item in value) if isinstance(value, list) else ()


def interval(value: Any) -> tuple[float, float] | None:
    """``[low, high]``, else None."""
    found = numbers(value)
    return (found[0], found[1]) if len(found) == 2 and None not in found else None


def at_path(node: Any, path: str) -> Any:
    """The value at a dotted path (``last_layer.gap``); None where a step is missing or not an object."""
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def read_fields(node: Mapping[str, Any], fields: Mapping[str, tuple[str, Any]]) -> dict[str, Any]:
    """{field: reader(value at its one path)} for a table of ``field: (dotted path, reader)``."""
    return {name: reader(at_path(node, path)) for name, (path, reader) in fields.items()}


def arg_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # lm-eval's CLI turns exit_layer=-1 into -1.0
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def parse_model_args(model_args: Any) -> dict[str, str] | None:
    """lm-eval model args (``"a=1,b=2"`` or a dict) as ``{name: text}``; None if neither."""
    if model_args is None:
        return {}
    if isinstance(model_args, dict):
        return {str(name).strip(): arg_text(value) for name, value in model_args.items() if str(name).strip()}
    if isinstance(model_args, str):
        parsed = {}
        for part in model_args.split(","):
            name, sep, value = part.partition("=")
            if name.strip():
                parsed[name.strip()] = value.strip() if sep else ""
        return parsed
    return None


# ------------------------------------------------------------------------------- run configuration


_IDENTITY_FIELDS = {
    "kind": ("kind", text), "path": ("path", text), "sha256": ("sha256", text), "revision": ("revision", text),
    "model_sha": ("lm_eval_model_info.model_sha", text),
    "model_revision": ("lm_eval_model_info.model_revision", text),
    "model_num_parameters": ("lm_eval_model_info.model_num_parameters", integer),
}


@dataclass(frozen=True)
class ModelIdentity:
    """``config.model_identity`` (integrations.loading.model_identity): what pins the weights."""

    kind: str | None  # "gguf", "local_folder" or "hub"; None in older heads files
    path: str | None  # the GGUF file or the local folder
    sha256: str | None  # kind gguf: the file's; kind local_folder: the digest of its weight files
    revision: str | None  # kind hub: the requested revision
    gguf_file: str | None  # a packaged model converted from GGUF: its file (``embedded``; older heads: top level)
    gguf_sha256: str | None
    model_sha: str | None  # lm-eval's own record, ``lm_eval_model_info``
    model_revision: str | None
    model_num_parameters: int | None

    @classmethod
    def from_json(cls, node: Mapping[str, Any]) -> "ModelIdentity":
        # older heads files recorded the packaged model's identity itself, not nested under "embedded"
        embedded = node.get("embedded") if isinstance(node.get("embedded"), dict) else node
        return cls(**read_fields(node, _IDENTITY_FIELDS),
                   gguf_file=text(embedded.get("gguf_file")), gguf_sha256=text(embedded.get("gguf_sha256")))


@dataclass(frozen=True)
class Readout:
    """How prompts were rendered and layers read, recorded outside the model args (None: not recorded)."""

    prompt_mode: str | None  # config.prompt_mode: "raw", "chat_single", "chat_multiturn"
    chat_template_sha256: str | None  # config.chat_template_sha256
    system_instruction: str | None  # config.system_instruction
    lens_sha256: str | None  # config.lens.sha256: a tuned lens's parameters (sweeps; the logit lens has none)

    @classmethod
    def from_json(cls, config: Mapping[str, Any]) -> "Readout":
        lens = config.get("lens") if isinstance(config.get("lens"), dict) else {}
        return cls(string(config.get("prompt_mode")), string(config.get("chat_template_sha256")),
                   string(config.get("system_instruction")), string(lens.get("sha256")))


@dataclass(frozen=True)
class Versions:
    """``config.versions`` (core.files.versions) for the packages a reader shows."""

    plugin: str | None  # lm_eval_false_demos
    lm_eval: str | None
    transformers: str | None

    @classmethod
    def from_json(cls, versions: Mapping[str, Any]) -> "Versions":
        return cls(text(versions.get("lm_eval_false_demos")), text(versions.get("lm_eval")),
                   text(versions.get("transformers")))


@dataclass(frozen=True)
class RunConfig:
    """The ``config`` fields both a sweep and a heads run record."""

    model: str | None  # lm-eval model type ("hf", "hf-earlyexit")
    model_args: tuple[tuple[str, str], ...]  # as recorded (an object; older heads files: lm-eval's "a=1,b=2" text)
    num_layers: int | None
    readout: Readout
    identity: ModelIdentity | None
    data_source: str | None  # "local" or "hub" (config.data_source.kind); older heads files: the data folder
    versions: Versions
    command: str | None

    @staticmethod
    def fields_from_json(config: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
        model_args = parse_model_args(config.get("model_args"))
        if model_args is None:
            raise SchemaError(path, f"model_args is neither a string nor an object: {config.get('model_args')!r:.80}")
        source = config.get("data_source")
        identity = config.get("model_identity")
        return {
            "model": text(config.get("model")),
            "model_args": tuple(model_args.items()),
            "num_layers": integer(config.get("num_layers")),
            "readout": Readout.from_json(config),
            "identity": ModelIdentity.from_json(identity) if isinstance(identity, dict) else None,
            "data_source": text(source.get("kind")) if isinstance(source, dict) else text(source),
            "versions": Versions.from_json(config.get("versions") if isinstance(config.get("versions"), dict) else {}),
            "command": text(config.get("command")),
        }
