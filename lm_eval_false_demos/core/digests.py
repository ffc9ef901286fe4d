"""sha256 of files (model weights, GGUF files, lens parameters), remembered by path, size and mtime.

A run records what pins its weights; hashing a gigabyte of weights on every run would cost seconds (minutes
for a large local model), so a digest is kept in memory and in ``digests.json`` under the package cache
folder (``$FALSEDEMO_CACHE_DIR``) and recomputed whenever the file's size or modification time changes, the
rule git's index and make use.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

CACHE_NAME = "digests.json"
_remembered: dict[str, tuple[int, int, str]] = {}


def cache_dir() -> Path:
    """The package's cache folder: converted embedded models, remembered digests."""
    return Path(os.environ.get("FALSEDEMO_CACHE_DIR") or Path.home() / ".cache" / "lm_eval_false_demos")


def _cache_file() -> Path:
    return cache_dir() / CACHE_NAME


def _read_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(entries: dict) -> None:
    target = _cache_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".digests-", dir=target.parent)
        with os.fdopen(handle, "w") as stream:
            json.dump(entries, stream)
        os.replace(temporary, target)
    except OSError:
        pass  # a read-only cache only costs the next run a re-hash


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file's bytes."""
    path = Path(path).resolve()
    status = path.stat()
    key, stamp = str(path), (status.st_size, status.st_mtime_ns)
    known = _remembered.get(key)
    if known is None:
        stored = _read_cache().get(key)
        known = tuple(stored) if stored else None
    if known is not None and tuple(known[:2]) == stamp:
        _remembered[key] = known
        return known[2]
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    entry = (*stamp, digest.hexdigest())
    _remembered[key] = entry
    entries = _read_cache()
    entries[key] = list(entry)
    _write_cache(entries)
    return entry[2]
