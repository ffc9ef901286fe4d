"""Finished work of a long run, kept in its run folder so ``--resume <run folder>`` continues where it stopped.

A run folder being written holds ``checkpoint/MANIFEST`` (the run's configuration and its fingerprint; JSON,
but not named ``*.json`` so results readers never mistake it for a result) and ``checkpoint/part-*.npz``,
each a chunk of finished readouts written atomically through :mod:`results_io`. The results file
(``sweep.json`` / ``heads.json``) is written last; then the checkpoint folder is removed.

Resuming recomputes nothing that is stored and computes the rest exactly as an uninterrupted run would
(same batches, same order), so the final numbers are identical. It refuses, in one line, a folder that is
finished, not a run of this kind, or whose configuration differs from the current one: the fingerprint
covers the whole configuration the analysis records, minus the fields that only say when or how it was
started (:data:`VOLATILE_KEYS`), so fields other analyses add to their configuration are covered too.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shlex
import shutil
import sys
import zipfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from lm_eval_false_demos.core import files as results_io
from lm_eval_false_demos.core.files import check_output_folder
from lm_eval_false_demos.errors import FalseDemoError, error_summary

FOLDER = "checkpoint"
MANIFEST = "MANIFEST"
# Fields of a configuration that record when or how a run started, not what it computes.
# The number of processes is one of them: a data-parallel run computes what one process does, so a run may be
# resumed with another number of processes.
VOLATILE_KEYS = frozenset({"date", "command", "timing", "world_size"})
RESULT_FILES = {"sweep": "sweep.json", "heads": "heads.json"}


def _stable(config: Mapping[str, Any]) -> dict:
    stable = json.loads(json.dumps(
        {key: value for key, value in config.items() if key not in VOLATILE_KEYS}, sort_keys=True, default=str
    ))
    if isinstance(stable.get("device"), str):  # the kind of device computes; its index is the launch's (rank)
        stable["device"] = stable["device"].split(":")[0]
    return stable


def fingerprint(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(_stable(config), sort_keys=True).encode()).hexdigest()


def _differences(before: Mapping[str, Any], now: Mapping[str, Any], limit: int = 3) -> str:
    keys = sorted(key for key in set(before) | set(now) if before.get(key) != now.get(key))
    shown = [f"{key} ({_short(before.get(key))} in the checkpoint, {_short(now.get(key))} now)" for key in keys[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def check_resumable(run_directory: str | Path, kind: str, arguments: Mapping[str, Any]) -> Path:
    """Before any model loads: ``run_directory`` is an unfinished ``kind`` run started with these arguments."""
    folder = Path(run_directory)
    manifest_path = folder / FOLDER / MANIFEST
    if not folder.is_dir():
        raise FalseDemoError(f"--resume {str(run_directory)!r} is not a folder; give the run folder an interrupted "
                             f"`falsedemo {kind}` printed")
    if (folder / RESULT_FILES[kind]).exists():
        raise FalseDemoError(f"--resume {str(run_directory)!r} is finished (it has {RESULT_FILES[kind]}); "
                             "nothing to resume")
    if not manifest_path.exists():
        raise FalseDemoError(f"--resume {str(run_directory)!r} holds no checkpoint ({FOLDER}/{MANIFEST}); "
                             f"give a folder an interrupted `falsedemo {kind}` left")
    manifest = read_manifest(folder)
    if manifest.get("kind") != kind:
        raise FalseDemoError(f"--resume {str(run_directory)!r} is a `falsedemo {manifest.get('kind')}` run, "
                             f"not `falsedemo {kind}`")
    stored = manifest.get("arguments") or {}
    now = json.loads(json.dumps(dict(arguments), default=str))
    if stored != now:
        raise FalseDemoError(f"--resume {str(run_directory)!r}: arguments differ from the interrupted run: "
                             f"{_differences(stored, now)}; resume with its arguments: "
                             f"{resume_command(manifest.get('command'), kind, folder)}")
    for path in sorted((folder / FOLDER).glob("part-*.npz")):
        arrays = read_part(path)  # a damaged part fails here, before any model loads
        if kind == "sweep":
            check_prompt_part(path, arrays)
    probe_writable(folder)
    return folder


def resume_command(command: str | None, kind: str, run_directory: str | Path) -> str:
    """The command that continues ``run_directory``: the interrupted run's own command (as its manifest
    recorded it) with ``--resume <run folder>``, or ``falsedemo <kind> ... --resume <run folder>``."""
    try:
        words = shlex.split(command or "")
    except ValueError:
        words = []
    # The recorded command starts with however the program was started (falsedemo, main.py, pytest ...).
    words = ["falsedemo", kind, *words[words.index(kind) + 1:]] if kind in words else ["falsedemo", kind, "..."]
    return shlex.join([*_without_resume(words), "--resume", str(run_directory)]).replace("'...'", "...")


def fresh_command(command: str) -> str:
    """A recorded command without its ``--resume <run folder>``: the command that computes the same results
    from the start (a reproduction must not depend on a checkpoint folder of the machine that ran it)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    return shlex.join(_without_resume(words)) if "--resume" in command else command


def _without_resume(words: list[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "--resume":
            skip = True
        elif not word.startswith("--resume="):
            kept.append(word)
    return kept


def read_manifest(run_directory: str | Path) -> dict:
    """``checkpoint/MANIFEST`` of a run folder, checked: a JSON object with the run's kind and arguments."""
    path = Path(run_directory) / FOLDER / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FalseDemoError(f"--resume {str(run_directory)!r}: the checkpoint manifest {path} is unreadable "
                             f"({error_summary(error)}); rerun without --resume to start again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("kind"), str) \
            or not isinstance(manifest.get("arguments", {}), dict):
        raise FalseDemoError(f"--resume {str(run_directory)!r}: {path} is not a falsedemo checkpoint manifest "
                             "(a JSON object with kind and arguments); rerun without --resume to start again")
    return manifest


def read_part(path: Path) -> dict[str, np.ndarray]:
    """One ``part-*.npz``, every array read (a truncated or foreign file fails here, naming it)."""
    try:
        if not zipfile.is_zipfile(path):
            raise ValueError("not a complete .npz archive: truncated, or not written by falsedemo")
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise FalseDemoError(f"checkpoint part {path} is damaged ({error_summary(error)}); rerun without --resume to "
                             "start again, or delete that file to recompute only its prompts") from None



def probe_writable(folder: Path) -> None:
    check_output_folder(folder, "--resume")


class RunCheckpoint:
    """The checkpoint folder of one run: a manifest and named parts of arrays."""

    def __init__(self, run_directory: str | Path | None = None, *, root: str | Path | None = None,
                 name: str | None = None):
        """An existing run folder (to resume), or ``root`` and ``name`` of a new one, created by :meth:`start`
        (after the model loads), so a run killed while loading leaves no empty folder."""
        self.run_directory = Path(run_directory) if run_directory is not None else None
        self.root, self.name = root, name

    @property
    def folder(self) -> Path:
        return self.run_directory / FOLDER

    # -- lifecycle

    def start(self, kind: str, config: Mapping[str, Any], arguments: Mapping[str, Any], command: str) -> None:
        """A new run: create its folder and record what it computes."""
        if self.run_directory is None:
            self.run_directory = results_io.new_run_directory(self.root, self.name)
        manifest = {
            "kind": kind,
            "fingerprint": fingerprint(config),
            "config": _stable(config),
            "arguments": json.loads(json.dumps(dict(arguments), default=str)),
            "command": command,
            "started": time.time(),
        }
        results_io.write_text_atomic(self.folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")

    def resume(self, kind: str, config: Mapping[str, Any]) -> None:
        """After the model loads: the full configuration must be the interrupted run's."""
        manifest = read_manifest(self.run_directory)
        if manifest.get("kind") != kind:
            raise FalseDemoError(f"--resume {str(self.run_directory)!r} is not a `falsedemo {kind}` run")
        # The stored configuration is compared under today's VOLATILE_KEYS, not its stored fingerprint: a
        # checkpoint written before a field became volatile (world_size did) still resumes.
        stored = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
        if _stable(stored) != _stable(config):
            raise FalseDemoError(
                f"--resume {str(self.run_directory)!r}: the configuration differs from the interrupted run: "
                f"{_differences(_stable(stored), _stable(config))}; results would not be one run's"
            )

    def resume_command(self, kind: str) -> str:
        try:
            command = json.loads((self.folder / MANIFEST).read_text()).get("command")
        except (OSError, ValueError, AttributeError):
            command = None
        return resume_command(command, kind, self.run_directory)

    def has_parts(self) -> bool:
        return self.run_directory is not None and any(self.folder.glob("part-*.npz"))

    def finish(self) -> None:
        """The results file is written: the checkpoint is no longer needed."""
        if self.run_directory is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def discard_if_empty(self, created_root: Path | None = None) -> bool:
        """A run that stopped before finishing anything leaves no folder behind; True if removed.

        ``created_root``: the outermost folder this run created for its run folder (removed too, if empty)."""
        if self.has_parts():
            return False
        if self.run_directory is None:
            return True
        shutil.rmtree(self.run_directory, ignore_errors=True)
        folder = self.run_directory.parent
        while created_root is not None and folder.is_relative_to(created_root):
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
        return True

    # -- parts

    def save(self, name: str, arrays: Mapping[str, np.ndarray]) -> Path:
        buffer = io.BytesIO()
        np.savez(buffer, **{key: np.asarray(value) for key, value in arrays.items()})
        return results_io.write_bytes_atomic(self.folder / f"part-{name}.npz", buffer.getvalue(), overwrite=True)

    def load(self, name: str) -> dict[str, np.ndarray] | None:
        path = self.folder / f"part-{name}.npz"
        if not path.exists():
            return None
        return read_part(path)

    def part_names(self) -> list[str]:
        return sorted(path.name[len("part-"):-len(".npz")] for path in self.folder.glob("part-*.npz"))


class ReadOnlyCheckpoint:
    """A process that is not the writer sees a resumed run's stored parts, and writes nothing."""

    def __init__(self, checkpoint: RunCheckpoint):
        self._checkpoint = checkpoint
        self.root, self.name = checkpoint.root, checkpoint.name

    @property
    def run_directory(self) -> Path | None:
        return self._checkpoint.run_directory

    @run_directory.setter
    def run_directory(self, value) -> None:  # only the writer makes the folder
        pass

    @property
    def folder(self) -> Path:
        return self._checkpoint.folder

    def start(self, kind, config, arguments, command) -> None:
        pass

    def resume(self, kind: str, config: Mapping[str, Any]) -> None:
        self._checkpoint.resume(kind, config)

    def has_parts(self) -> bool:
        return self._checkpoint.has_parts()

    def finish(self) -> None:
        pass

    def discard_if_empty(self, created_root=None) -> bool:
        return False

    def resume_command(self, kind: str) -> str:
        return self._checkpoint.resume_command(kind)

    def save(self, name: str, arrays) -> None:
        pass

    def load(self, name: str) -> dict[str, np.ndarray] | None:
        return self._checkpoint.load(name) if self._checkpoint.run_directory is not None else None

    def part_names(self) -> list[str]:
        return self._checkpoint.part_names() if self._checkpoint.run_directory is not None else []


def new_run_directory(root: str | Path, name: str) -> Path:
    return results_io.new_run_directory(root, name)


def first_missing_folder(path: str | Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what creating ``path`` would add)."""
    path = Path(path).expanduser().absolute()
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def prompt_digest(*parts: Iterable[int]) -> str:
    """What a stored readout was computed from (token ids, readout positions, label ids)."""
    digest = hashlib.sha1()
    for part in parts:
        digest.update(np.asarray(list(part), dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()


def check_prompt_part(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """A sweep's part: ``indices`` (integers), ``digests`` (one per index) and an array ``p<index>`` each."""
    indices, digests = arrays.get("indices"), arrays.get("digests")
    if indices is None or digests is None or indices.ndim != 1 or indices.dtype.kind not in "iu" \
            or digests.shape != indices.shape or sorted(arrays) != sorted(["indices", "digests",
                                                                          *(f"p{int(i)}" for i in indices)]):
        raise FalseDemoError(
            f"checkpoint part {path} is not a sweep's part (indices, digests and one array per prompt); rerun "
            "without --resume to start again, or delete that file to recompute only its prompts"
        )


class PromptChunks:
    """The sweep's per-prompt readouts, saved in chunks at most every ``seconds`` (0: after every batch).

    ``done`` holds what earlier attempts finished, each prompt checked against its digest."""

    def __init__(self, checkpoint: RunCheckpoint, digests: Mapping[int, str], seconds: float):
        self.checkpoint = checkpoint
        self.digests = dict(digests)
        self.seconds = seconds
        self.pending: dict[int, np.ndarray] = {}
        self.last_flush = time.monotonic()
        self.done: dict[int, np.ndarray] = {}
        names = checkpoint.part_names()
        self.next_part = 1 + max((int(name) for name in names if name.isdigit()), default=0)
        for name in names:
            stored = checkpoint.load(name) or {}
            check_prompt_part(checkpoint.folder / f"part-{name}.npz", stored)
            for index, digest in zip(stored["indices"], stored["digests"]):
                index = int(index)
                if self.digests.get(index) != str(digest):
                    raise FalseDemoError(
                        f"--resume {str(checkpoint.run_directory)!r}: prompt {index} differs from the one the "
                        "checkpoint scored (data, tokenizer or task changed); start a new run"
                    )
                self.done[index] = stored[f"p{index}"]

    def record(self, outputs: Mapping[int, np.ndarray]) -> None:
        self.pending.update(outputs)
        if time.monotonic() - self.last_flush >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        indices = sorted(self.pending)
        arrays = {f"p{index}": self.pending[index] for index in indices}
        arrays["indices"] = np.asarray(indices, dtype=np.int64)
        arrays["digests"] = np.asarray([self.digests[index] for index in indices])
        self.checkpoint.save(f"{self.next_part:05d}", arrays)
        self.next_part += 1
        self.pending = {}
        self.last_flush = time.monotonic()


class StoredReadouts:
    """The finished readouts alone, for a process that reads its share of a data-parallel run: what is stored
    is skipped, and new readouts are saved by the writer once gathered (``record`` keeps nothing here)."""

    def __init__(self, done: Mapping[int, np.ndarray]):
        self.done = done

    def record(self, outputs) -> None:
        pass

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def kept_or_discarded(checkpoint: RunCheckpoint | None, kind: str, output_path: str | Path, resume: bool):
    """Around a run: if it fails or is interrupted, a new run's folder goes away when nothing in it finished
    (with the output folders the run created), else it stays and the way to resume is printed."""
    created_root = first_missing_folder(output_path)
    try:
        yield checkpoint
    except BaseException:
        if checkpoint is not None and not resume and not checkpoint.discard_if_empty(created_root):
            print(f"finished work is saved; continue with: {checkpoint.resume_command(kind)}", file=sys.stderr)
        raise


def find_run(root: str | Path, kind: str, wanted: Mapping[str, Any]) -> tuple[str, Path | None]:
    """Where a run with these arguments stands under ``root`` (the folders ``kind`` runs write there):
    ("done", folder) when a finished run's config has them, ("resume", folder) when an interrupted run's
    checkpoint manifest has them (the newest such folder), ("new", None) otherwise. ``wanted`` holds argument
    names and values as the manifest stores them (tasks, limit, num_fewshot, model_args); a finished run is
    matched on its config's requested_tasks, limit, num_fewshot and model_args."""
    wanted = json.loads(json.dumps(dict(wanted), default=str))
    as_config = {("requested_tasks" if name == "tasks" else name): value for name, value in wanted.items()}
    interrupted = None
    for folder in sorted(Path(root).glob(f"{kind}_*")):
        try:
            if (folder / RESULT_FILES[kind]).is_file():
                config = json.loads((folder / RESULT_FILES[kind]).read_text()).get("config") or {}
                if all(config.get(name) == value for name, value in as_config.items()):
                    return "done", folder
            elif (folder / FOLDER / MANIFEST).is_file():
                stored = json.loads((folder / FOLDER / MANIFEST).read_text()).get("arguments") or {}
                if all(stored.get(name) == value for name, value in wanted.items()):
                    interrupted = folder
        except (OSError, ValueError):
            continue  # an unreadable folder is neither done nor resumable: the chunk runs anew
    return ("resume", interrupted) if interrupted is not None else ("new", None)
