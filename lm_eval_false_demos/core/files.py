"""The one writer of result files: atomic, and never silently overwriting an earlier run.

Every JSON, CSV or image the project writes goes through here, so a crash or
Ctrl-C never leaves a half-written file behind (write to a temporary file in the
same folder, then ``os.replace``), and a second run picks a new name instead of
replacing the first run's file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lm_eval_false_demos.errors import FalseDemoError


def versions() -> dict[str, str]:
    """The package versions every results file records (one list for the sweep, heads and lens files)."""
    import importlib.metadata

    found = {"python": platform.python_version()}
    for package in ("lm_eval_false_demos", "lm_eval", "transformers", "torch", "numpy", "accelerate", "datasets", "tokenizers"):
        try:
            found[package] = importlib.metadata.version(package.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def canonical_model_args(given: Mapping[str, Any], exit_layer: int | None = None) -> dict:
    """The model args as results should record them: integral numbers as ints and ``exit_layer`` as the
    resolved lens layer 0..L, so the same readout is always the same leaderboard row."""
    canonical = {}
    for key, value in given.items():
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        canonical[key] = value
    if exit_layer is not None:
        canonical["exit_layer"] = exit_layer
    return canonical


def timestamp() -> str:
    """A filesystem-safe UTC timestamp, in the style lm-eval uses for its results files."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%S.%f")


def unique_path(path: str | Path) -> Path:
    """``path`` if it does not exist yet, else ``stem-2.suffix``, ``stem-3.suffix``, ..."""
    path = Path(path)
    if not path.exists():
        return path
    counter = 2
    while True:
        candidate = path.with_name(f"{path.stem}-{counter}{path.suffix}")
        if not candidate.exists():
            return candidate
        counter += 1


def write_bytes_atomic(path: str | Path, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; without ``overwrite`` an existing file raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"refusing to overwrite {path}: choose another output path or remove it")
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def write_text_atomic(path: str | Path, text: str, overwrite: bool = False) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite=overwrite)


def _json_default(value: Any):
    # numpy scalars and arrays, paths and sets reach results dictionaries often enough.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a results file: {value!r}")


def strict_json_payload(payload: Mapping[str, Any], reasons: Mapping[str, str] | None = None) -> dict:
    """``payload`` with every NaN or infinity replaced by ``null`` and listed, with why, under ``undefined``.

    Strict JSON has no NaN (Python's ``json`` writes a bare ``NaN`` that other readers reject). ``reasons``
    maps a field name to why values in it can be undefined (the innermost named field on the path wins);
    other non-finite values are listed as "not a finite number".
    """
    undefined: dict[str, str] = {}

    def clean(value, path):
        if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
            value = value.tolist()
        if isinstance(value, float) and not math.isfinite(value):
            # the innermost enclosing field with a known reason ("per_dataset.sst2" inside "gap_recovered")
            undefined[".".join(str(part) for part in path)] = next(
                (reasons[part] for part in reversed(path) if isinstance(part, str) and part in (reasons or {})),
                f"not a finite number ({value})",
            )
            return None
        if isinstance(value, Mapping):
            return {key: clean(item, path + [key]) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item, path + [index]) for index, item in enumerate(value)]
        return value

    cleaned = clean(dict(payload), [])
    if undefined:
        cleaned["undefined"] = {**(cleaned.get("undefined") or {}), **undefined}
    return cleaned


def write_json_atomic(path: str | Path, payload: Mapping[str, Any], overwrite: bool = False,
                      reasons: Mapping[str, str] | None = None) -> Path:
    """Strict JSON (no NaN/Infinity: see :func:`strict_json_payload`), written atomically."""
    text = json.dumps(strict_json_payload(payload, reasons), indent=2, sort_keys=False, default=_json_default,
                      allow_nan=False)
    return write_text_atomic(path, text + "\n", overwrite=overwrite)


def write_csv_atomic(
    path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]], overwrite: bool = False
) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue(), overwrite=overwrite)


def save_figure_atomic(figure, path: str | Path, overwrite: bool = False, **savefig_kwargs) -> Path:
    """Save a matplotlib figure atomically; the format follows the suffix (png, svg, ...)."""
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip("."), **savefig_kwargs)
    return write_bytes_atomic(path, buffer.getvalue(), overwrite=overwrite)


def new_run_directory(root: str | Path, name: str) -> Path:
    """Create and return a fresh folder ``root/name_<timestamp>`` (never reusing one)."""
    path = unique_path(Path(root) / f"{name}_{timestamp()}")
    path.mkdir(parents=True, exist_ok=False)
    return path


# Free space a run folder needs before anything is computed: every atomic write stages a full copy.
MIN_FREE_BYTES = 16 * 1024 * 1024


def check_output_folder(path: str | os.PathLike, flag: str = "--output_path") -> Path:
    """``path`` is (or can become) a folder this process can write into, with room for atomic writes.

    Probes by creating and removing a temporary entry, which is the only test that also holds for root on a
    read-only mount; nothing stays behind.
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise FalseDemoError(f"{flag} {str(path)!r} is a file; give a folder (each run writes a new subfolder)")
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise FalseDemoError(f"{flag} {str(path)!r}: {str(existing)!r} is a file, so the folder cannot be created")
    try:
        if existing == folder:
            handle, probe = tempfile.mkstemp(dir=folder, prefix=".falsedemo-probe-")
            os.close(handle)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".falsedemo-probe-"))
    except OSError as error:
        where = "write into" if existing == folder else f"create folders in {str(existing)!r} for"
        raise FalseDemoError(
            f"{flag} {str(path)!r} is not writable (cannot {where} it: {error.strerror or error}); "
            "give a folder you can write to"
        ) from None
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise FalseDemoError(
            f"{flag} {str(path)!r}: only {free // 1024} KiB free; results need at least "
            f"{MIN_FREE_BYTES // (1024 * 1024)} MiB for atomic writes"
        )
    return folder
