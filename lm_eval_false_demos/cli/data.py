"""``falsedemo data pull|check``: a local copy of the benchmark's datasets, written from the hub and validated.

``pull --to DIR`` (on a machine that reaches the hub) writes ``DIR/<key>/<split>.jsonl`` (the hub's columns
and label ids, the splits the benchmark uses) and ``DIR/<key>/hub_source.json`` (repo, revision, resolved
commit), for offline clusters: ``FALSEDEMO_DATA_DIR=DIR`` then reads it. ``check DIR`` validates a folder
(splits, columns, label ids, classes, row counts against the hub's documented sizes) and prints one table;
exit status 1 when a split has a problem. A local copy may hold fewer rows than the hub (a sample): that is
shown, not refused.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from lm_eval_false_demos.core.data_loading import (
    PULLED_FROM_FILE,
    normalise_name,
    read_hub_checked,
    read_local_examples,
    to_examples,
)
from lm_eval_false_demos.core.datasets import MAIN_DATASETS, get_spec
from lm_eval_false_demos.core.files import write_json_atomic, write_text_atomic
from lm_eval_false_demos.errors import FalseDemoError


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION")
    actions.required = True
    pull = actions.add_parser("pull", help="write a local copy from the hub (DIR/<key>/<split>.jsonl)")
    pull.add_argument("--to", required=True, type=Path, help="folder to write (created if missing)")
    pull.add_argument("--datasets", help="comma-separated dataset keys (default: the 14 main datasets)")
    pull.add_argument("--overwrite", action="store_true", help="replace split files that already exist")
    check = actions.add_parser("check", help="validate a local copy and print one table; exit 1 on a problem")
    check.add_argument("folder", type=Path, help="folder holding <key>/<split>.jsonl")
    check.add_argument("--datasets", help="comma-separated dataset keys (default: the 14 main datasets)")


def folder_keys(datasets: str | None) -> list[str]:
    """Dataset keys -> the distinct keys whose data they read (``sst2_ab`` reads ``sst2``; ``unnatural``: none)."""
    keys = [key.strip() for key in datasets.split(",") if key.strip()] if datasets else list(MAIN_DATASETS)
    if not keys:
        raise FalseDemoError(f"--datasets is empty; allowed: comma-separated keys of {', '.join(MAIN_DATASETS)}")
    specs = [get_spec(key) for key in keys]  # unknown keys fail here, before anything is read
    builtin = [spec.key for spec in specs if spec.hub is None]
    if builtin:
        raise FalseDemoError(f"dataset(s) {', '.join(builtin)} are built in and have no data files; "
                             f"allowed: {', '.join(MAIN_DATASETS)}")
    return list(dict.fromkeys(spec.local_folder_name for spec in specs))


def pull(target: Path, keys: list[str], overwrite: bool = False, progress: bool = True) -> list[Path]:
    """Write every split of ``keys`` from the hub into ``target``; returns the files written."""
    from tqdm.auto import tqdm

    if not overwrite:
        existing = [target / key / f"{split}.jsonl" for key in keys for split in get_spec(key).splits
                    if (target / key / f"{split}.jsonl").exists()]
        if existing:
            raise FalseDemoError(f"refusing to overwrite {', '.join(map(str, existing))}; "
                                 f"pass --overwrite or choose another --to")
    written = []
    for key in tqdm(keys, desc="falsedemo data pull", unit="dataset", disable=not progress):
        spec = get_spec(key)
        read, names, source = read_hub_checked(spec, all_columns=True)
        # Local copies are read with the documented names of the ids: the hub's order must be that order.
        if [normalise_name(name) for name in names] != [normalise_name(n) for n in spec.hub_label_names]:
            raise FalseDemoError(
                f"dataset {key!r}: the hub's label ids mean {list(names)}, not the documented order "
                f"{list(spec.hub_label_names)}; a local copy of these ids would be read wrongly"
            )
        for split, rows in read.splits.items():
            to_examples(spec, split, rows, names, lambda i, split=split: f"{spec.hub.repo} split {split!r} row {i}")
            text = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
            written.append(write_text_atomic(target / key / f"{split}.jsonl", text, overwrite=True))
        source["split_rows"] = {split: len(rows) for split, rows in read.splits.items()}
        write_json_atomic(target / key / PULLED_FROM_FILE, source, overwrite=True)
    return written


def check(folder: Path, keys: list[str]) -> tuple[list[list], list[str]]:
    """(table rows: dataset, split, rows, hub rows, classes, status; one problem line per failing split)."""
    table, problems = [], []
    for key in keys:
        spec = get_spec(key)
        for split in spec.splits:
            hub_rows = spec.hub.rows.get(split)
            try:
                rows, examples = read_local_examples(spec, folder / key, split, from_env=False)
            except FalseDemoError as error:
                table.append([key, split, "", hub_rows, "", "ERROR"])
                problems.append(str(error))
                continue
            counts = Counter(spec.class_names[example.label] for example in examples)
            classes = ", ".join(f"{name} {counts[name]}" for name in spec.class_names)
            if rows - len(examples):
                classes += f" (+{rows - len(examples)} of unused classes)"
            missing = [name for name in spec.class_names if not counts[name]]
            if missing:
                table.append([key, split, rows, hub_rows, classes, "ERROR"])
                problems.append(f"dataset {key!r}: {folder / key / f'{split}.jsonl'} has no row of class(es) "
                                f"{', '.join(missing)}; every class of {', '.join(spec.class_names)} is needed")
                continue
            status = "ok" if rows == hub_rows else "ok, fewer rows than the hub" if rows < hub_rows else \
                "ok, more rows than the hub"
            table.append([key, split, rows, hub_rows, classes, status])
    return table, problems


def render_table(rows: list[list]) -> str:
    from pytablewriter import MarkdownTableWriter

    writer = MarkdownTableWriter(headers=["dataset", "split", "rows", "hub rows", "classes", "status"],
                                 value_matrix=rows, margin=1)
    return writer.dumps()


def run(args) -> int:
    keys = folder_keys(args.datasets)
    if args.data_action == "pull":
        written = pull(args.to, keys, overwrite=args.overwrite)
        print(f"wrote {len(written)} files for {len(keys)} dataset(s) into {args.to}; "
              f"use them with FALSEDEMO_DATA_DIR={args.to.resolve()}")
        table, problems = check(args.to, keys)
    else:
        if not args.folder.is_dir():
            raise FalseDemoError(f"data folder {args.folder} does not exist; expected a folder of <key>/<split>.jsonl")
        table, problems = check(args.folder, keys)
    print(render_table(table))
    for problem in problems:
        print(f"error: {problem}")
    if problems:
        print(f"{len(problems)} problem(s) in {sum(row[-1] == 'ERROR' for row in table)} of {len(table)} splits")
    return 1 if problems else 0
