"""Loading a dataset's examples (the table is :mod:`.datasets`): from the built-in list, a local copy
(``FALSEDEMO_DATA_DIR``) or the hub; the demonstration pool and the queries, in a fixed seeded order; what was
read, for results files (``data_provenance``: source, sizes, fingerprint).

Single-split partitions shuffle row indices with ``PARTITION_SEED`` and give the first half to the demo pool.
Queries are put in a fixed seeded order too, so ``--limit N`` takes a random subset with all classes rather than
the file's first rows (some files are sorted by class). Labels are mapped to our class order by class *name*.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from lm_eval_false_demos.core.data_readers import (
    DATA_DIR_ENV,
    HUB_MIRROR_ENV,
    describe_hub,
    describe_read,
    hub_location,
    read_hub,
    read_local_split,
)
from lm_eval_false_demos.core.datasets import UNNATURAL_OBJECTS, DatasetSpec, Example, get_spec
from lm_eval_false_demos.errors import FalseDemoError

PULLED_FROM_FILE = "hub_source.json"  # in a pulled folder: the hub source it was written from
PARTITION_SEED = 20240507
QUERY_SHARE_SINGLE_SPLIT = 0.5


def normalise_name(name: str) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def data_source(key: str) -> str:
    """Where ``load_examples(key)`` reads from: 'builtin', the local folder path, or 'hub:<repo>@<revision>...'."""
    spec = get_spec(key)
    if spec.hub is None:
        return "builtin"
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        return str(Path(data_dir) / spec.local_folder_name)
    location = hub_location(spec.hub)
    return f"hub:{describe_hub(spec.hub)}" + (f" mirror:{location}" if location != spec.hub.repo else "")


def data_source_summary() -> dict:
    """Where non-built-in datasets are read from, for results files: the local folder or the hub."""
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        return {"kind": "local", "path": str(Path(data_dir).resolve())}
    mirror = os.environ.get(HUB_MIRROR_ENV)
    return {"kind": "hub", **({"mirror": str(Path(mirror).resolve())} if mirror else {})}


def _unnatural_rows() -> list[dict]:
    return [{"object": obj, "category": index}
            for index, objects in enumerate(UNNATURAL_OBJECTS.values()) for obj in objects]


def check_hub_label_names(spec: DatasetSpec, names, where: str) -> tuple[str, ...]:
    """The hub's ClassLabel names as documented names (explicit ``label_names`` table), or a clear refusal."""
    if not names:  # a plain integer column: its ids are the documented ones, as in a local copy
        return spec.hub_label_names
    renamed = tuple(spec.hub.label_names.get(str(name), str(name)) for name in names)
    if sorted(map(normalise_name, renamed)) != sorted(map(normalise_name, spec.hub_label_names)):
        raise FalseDemoError(
            f"dataset {spec.key!r} from {where}: label names {list(names)} differ from the documented "
            f"{list(spec.hub_label_names)}; refusing to match label words by position"
        )
    return renamed


def to_examples(spec: DatasetSpec, split: str, rows: list[dict], names: tuple[str, ...], where) -> list[Example]:
    """``where(row_index)`` names a row in errors (file:line, or repo@revision split row)."""
    our_index = {normalise_name(name): i for i, name in enumerate(spec.class_names)}
    id_to_ours = {hub_id: our_index.get(normalise_name(name)) for hub_id, name in enumerate(names)}
    examples = []
    for row_index, row in enumerate(rows):
        hub_label = row[spec.label_column]
        if isinstance(hub_label, bool) or hub_label not in id_to_ours:
            unlabelled = " (-1 marks an unlabelled row: is this split unlabelled?)" if hub_label == -1 else ""
            raise FalseDemoError(
                f"dataset {spec.key!r}: {where(row_index)}: {spec.label_column} {hub_label!r} is not one of the "
                f"ids 0..{len(names) - 1} ({', '.join(f'{i} {name}' for i, name in enumerate(names))}){unlabelled}"
            )
        label = id_to_ours[hub_label]
        if label is None:  # a class the benchmark does not use
            continue
        for column in spec.text_columns:
            if not isinstance(row[column], str):
                raise FalseDemoError(
                    f"dataset {spec.key!r}: {where(row_index)}: {column} is {row[column]!r}; allowed: text"
                )
        fields = tuple(row[column].strip() for column in spec.text_columns)
        examples.append(Example(uid=f"{split}:{row_index}", fields=fields, label=label))
    return examples


def read_local_examples(spec: DatasetSpec, folder: Path, split: str,
                        from_env: bool = True) -> tuple[int, list[Example]]:
    """(rows in ``folder/<split>.jsonl``, its examples): every problem is one line naming file:line."""
    rows, path = read_local_split(spec, folder, split, from_env=from_env)
    return len(rows), to_examples(spec, split, rows, spec.hub_label_names, lambda i: f"{path}:{i + 1}")


def _read_splits(spec: DatasetSpec) -> tuple[dict[str, list[Example]], dict, dict[str, int]]:
    """({split: examples}, source record, {split: rows read}) from the built-in list, a local copy or the hub."""
    if spec.hub is None:
        rows = _unnatural_rows()
        examples = to_examples(spec, "all", rows, spec.hub_label_names, lambda i: f"built-in row {i}")
        return {"all": examples}, {"kind": "builtin"}, {"all": len(rows)}
    data_dir = os.environ.get(DATA_DIR_ENV)
    by_split, sizes = {}, {}
    if data_dir:
        folder = Path(data_dir) / spec.local_folder_name
        for split in spec.splits:
            sizes[split], by_split[split] = read_local_examples(spec, folder, split)
        source = {"kind": "local", "path": str(folder.resolve())}
        if (folder / PULLED_FROM_FILE).is_file():  # written by `falsedemo data pull`
            source["pulled_from"] = json.loads((folder / PULLED_FROM_FILE).read_text(encoding="utf-8"))
        return by_split, source, sizes
    read, names, source = read_hub_checked(spec)
    where = describe_read(spec.hub, read.location)
    for split, rows in read.splits.items():
        by_split[split] = to_examples(spec, split, rows, names,
                                       lambda i, split=split: f"{where} split {split!r} row {i}")
        sizes[split] = len(rows)
    return by_split, source, sizes


def read_hub_checked(spec: DatasetSpec, all_columns: bool = False):
    """(the hub read, its label names as documented names, the source record for provenance)."""
    hub = spec.hub
    read = read_hub(spec, spec.splits, all_columns=all_columns)
    names = check_hub_label_names(spec, read.label_names, describe_read(hub, read.location))
    source = {"kind": "hub", "repo": hub.repo, "revision": hub.revision, "config": hub.config,
              "data_dir": hub.data_dir, "resolved_commit": read.resolved_commit}
    if read.location != hub.repo:
        source["mirror"] = str(Path(read.location).resolve())
    return read, names, source


def fingerprint(pool: list[Example], queries: list[Example]) -> str:
    """sha256 of the canonical JSON of the examples: equal whenever the same rows were read, wherever from."""
    canonical = {name: [[e.uid, list(e.fields), e.label] for e in examples]
                 for name, examples in (("pool", pool), ("queries", queries))}
    text = json.dumps(canonical, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class _Loaded:
    pool: list[Example]
    queries: list[Example]
    provenance: dict


_CACHE: dict[tuple[str, str], _Loaded] = {}


def _load(key: str) -> _Loaded:
    spec = get_spec(key)
    cache_key = (key, data_source(key))
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    by_split, source, sizes = _read_splits(spec)
    if spec.single_split:
        rows = by_split[spec.demo_split]
        if spec.hub is None:
            pool, queries = rows, list(rows)
        else:
            order = list(range(len(rows)))
            random.Random(PARTITION_SEED).shuffle(order)
            cut = int(round(len(rows) * (1 - QUERY_SHARE_SINGLE_SPLIT)))
            pool = [rows[i] for i in sorted(order[:cut])]
            queries = [rows[i] for i in order[cut:]]
    else:
        pool, queries = by_split[spec.demo_split], by_split[spec.query_split]
    queries = list(queries)
    random.Random(PARTITION_SEED).shuffle(queries)
    if not pool or not queries:
        raise FalseDemoError(
            f"dataset {key!r} from {data_source(key)}: {len(pool)} demonstration and {len(queries)} query rows of "
            f"the classes {', '.join(spec.class_names)}; both must be non-empty"
        )
    provenance = {"source": source, "split_rows": sizes, "pool": len(pool), "queries": len(queries),
                  "fingerprint": fingerprint(pool, queries)}
    _CACHE[cache_key] = _Loaded(pool, queries, provenance)
    return _CACHE[cache_key]


def load_examples(key: str) -> tuple[list[Example], list[Example]]:
    """(demo pool, queries) for dataset ``key``; deterministic, cached per process and data source."""
    loaded = _load(key)
    return loaded.pool, loaded.queries


def data_provenance(key: str) -> dict:
    """What ``load_examples(key)`` read, for results files: ``source`` ({kind: builtin|local|hub, path, or repo,
    revision, config, data_dir, resolved_commit, mirror}), ``split_rows`` (rows per split read), ``pool`` and
    ``queries`` (examples after dropping unused classes) and ``fingerprint`` (:func:`fingerprint`)."""
    return json.loads(json.dumps(_load(key).provenance))  # a copy callers may change


def data_provenance_for(keys) -> dict[str, dict]:
    return {key: data_provenance(key) for key in dict.fromkeys(keys)}
