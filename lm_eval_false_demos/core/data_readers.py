"""Reading one dataset's rows: a local ``<key>/<split>.jsonl`` copy, or the HuggingFace hub (or a mirror of it).

Both readers return the raw rows (hub column names, hub label ids) and the hub's label names; mapping
labels to our classes is :mod:`lm_eval_false_demos.core.datasets`' business. Every problem in the data is one
:class:`FalseDemoError` line naming the file (or repo, revision and split), the row and what is allowed.

The hub is read with ``datasets.load_dataset_builder(location, name=config, data_dir=..., revision=...)``,
``location`` being the repo id or, when ``FALSEDEMO_HUB_MIRROR`` is set, ``<mirror>/<namespace>/<name>``: a
folder holding the repo's files at the pinned revision (as ``hf download <repo> --repo-type dataset
--revision <revision> --local-dir <mirror>/<repo>`` writes them). ``datasets`` ignores ``revision`` for a
folder but applies the same config / ``data_dir`` / split selection and reads the same README and parquet
metadata, so a mirror is read exactly as the hub is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lm_eval_false_demos.errors import FalseDemoError

DATA_DIR_ENV = "FALSEDEMO_DATA_DIR"
HUB_MIRROR_ENV = "FALSEDEMO_HUB_MIRROR"


def ways_out(key: str) -> str:
    return (f"use a local copy instead: set {DATA_DIR_ENV} to a folder holding {key}/<split>.jsonl, or write one "
            f"on a machine that reaches the hub with `falsedemo data pull --to DIR --datasets {key}`")


def _needed_columns(spec) -> tuple[str, ...]:
    return (*spec.text_columns, spec.label_column)


def read_local_split(spec, folder: Path, split: str, from_env: bool = True) -> tuple[list[dict], str]:
    """Rows of ``folder/<split>.jsonl`` (one JSON object a line, no blank lines) and the file's path."""
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        present = sorted(p.stem for p in folder.glob("*.jsonl")) if folder.is_dir() else []
        origin = f"; folder from {DATA_DIR_ENV}={os.environ.get(DATA_DIR_ENV)!r}" if from_env else ""
        raise FalseDemoError(
            f"dataset {spec.key!r}: split {split!r} not found in local folder {folder} "
            f"(expected {path.name}; present: {', '.join(present) or 'none'}{origin})"
        )
    needed = _needed_columns(spec)
    rows = []
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise FalseDemoError(
                    f"dataset {spec.key!r}: {path}:{line_number} is not UTF-8 text (byte {raw[error.start]:#04x} "
                    f"at column {error.start + 1}); allowed: one JSON object per line, UTF-8"
                ) from None
            if not line.strip():
                raise FalseDemoError(
                    f"dataset {spec.key!r}: {path}:{line_number} is a blank line; allowed: one JSON object per "
                    f"line with {', '.join(needed)}, no blank lines"
                )
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise FalseDemoError(
                    f"dataset {spec.key!r}: {path}:{line_number} is not JSON ({error}); allowed: one JSON object "
                    f"per line"
                ) from None
            if not isinstance(row, dict):
                raise FalseDemoError(
                    f"dataset {spec.key!r}: {path}:{line_number} is {type(row).__name__}, not a JSON object"
                )
            missing = [column for column in needed if column not in row]
            if missing:
                raise FalseDemoError(
                    f"dataset {spec.key!r}: {path}:{line_number} lacks column(s) {', '.join(missing)}; "
                    f"needed: {', '.join(needed)}"
                )
            rows.append(row)
    if not rows:
        raise FalseDemoError(
            f"dataset {spec.key!r}: {path} is empty; allowed: one JSON object per line with {', '.join(needed)}"
        )
    return rows, str(path)


def hub_location(hub) -> str:
    """The repo id, or its folder under ``FALSEDEMO_HUB_MIRROR`` when that is set."""
    mirror = os.environ.get(HUB_MIRROR_ENV)
    return str(Path(mirror) / hub.repo) if mirror else hub.repo


def describe_hub(hub) -> str:
    """``repo@revision`` plus the config or data_dir, as the table names them."""
    selection = f" config {hub.config}" if hub.config else f" data_dir {hub.data_dir}" if hub.data_dir else ""
    return f"{hub.repo}@{hub.revision}{selection}"


def describe_read(hub, location: str) -> str:
    return describe_hub(hub) + (f" (mirror folder {location})" if location != hub.repo else "")


@dataclass
class HubRead:
    splits: dict  # split -> list of row dicts (all hub columns, hub label ids)
    label_names: tuple[str, ...] | None  # the hub's ClassLabel names of the label column, None for plain ints
    location: str  # repo id or mirror folder actually read
    resolved_commit: str | None  # the commit the hub resolved ``revision`` to (None for a mirror)


def read_hub(spec, splits, all_columns: bool = False) -> HubRead:
    """The given splits of ``spec.hub`` (only the columns we use, unless ``all_columns``); any failure is one
    line with both ways out."""
    import datasets as hf_datasets

    hub = spec.hub
    location = hub_location(hub)
    described = describe_read(hub, location)
    try:
        builder = hf_datasets.load_dataset_builder(location, hub.config, data_dir=hub.data_dir,
                                                   revision=hub.revision)
        builder.download_and_prepare()
        tables = {split: builder.as_dataset(split=split) for split in splits}
    except Exception as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        if "scripts are no longer supported" in reason:
            reason += (" (this revision holds only a loading script, which datasets >= 4 refuses; its parquet "
                       "export is on the branch refs/convert/parquet)")
        raise FalseDemoError(
            f"could not load dataset {spec.key!r} from the hub, {described}: {reason}; {ways_out(spec.key)}"
        ) from error
    needed = _needed_columns(spec)
    names = None
    for split, table in tables.items():
        missing = [column for column in needed if column not in table.column_names]
        if missing:
            raise FalseDemoError(
                f"dataset {spec.key!r} from {described} split {split!r} lacks column(s) {', '.join(missing)}; "
                f"needed: {', '.join(needed)}; present: {', '.join(table.column_names)}"
            )
        if len(table) == 0:
            raise FalseDemoError(f"dataset {spec.key!r} from {described}: split {split!r} is empty")
        feature_names = getattr(table.features[spec.label_column], "names", None)
        names = tuple(feature_names) if feature_names else names
    # The hub resolves a branch to a commit; for a hub id the builder's hash is that commit.
    resolved = getattr(builder, "hash", None) if location == hub.repo else None
    if not all_columns:
        tables = {split: table.select_columns(list(needed)) for split, table in tables.items()}
    return HubRead(splits={split: table.to_list() for split, table in tables.items()}, label_names=names,
                   location=location, resolved_commit=resolved)
