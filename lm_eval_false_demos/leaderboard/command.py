"""``falsedemo leaderboard``: check the inputs and the output folder, read the results, write every output.

Nothing is written unless the inputs exist and yield at least one row, and an existing leaderboard is
replaced only with ``--force`` (or written into a new folder): a typo in ``--results`` can never turn a
published leaderboard into an empty one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Iterable

from ..errors import FalseDemoError
from ..results_io import write_csv_atomic, write_text_atomic
from .collect import Leaderboard
from .columns import summarise
from .export import DEFAULT_HUB_DATASET_ID, export_files
from .render import csv_rows, render_html, render_markdown

OUTPUT_NAMES = {"markdown": "leaderboard.md", "csv": "leaderboard.csv", "html": "index.html", "json": "leaderboard.json"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results", nargs="+", required=True, metavar="PATH",
        help="folders (searched recursively for *.json) or files: lm-eval results_*.json (tasks or the "
        "falsedemo_main_<setting> groups), sweep.json (+ query_scores.npz beside it), heads.json",
    )
    parser.add_argument(
        "--output", default="leaderboard", metavar="DIR",
        help=f"folder for {', '.join(OUTPUT_NAMES.values())} and eval_results/ (default: leaderboard)",
    )
    parser.add_argument("--force", action="store_true", help="replace the leaderboard files already in --output")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 if any input file was skipped or duplicated")
    parser.add_argument("--bootstrap_iters", type=int, default=1000,
                        help="paired bootstrap resamples for the intervals (0: no intervals)")
    parser.add_argument("--hub_dataset_id", default=DEFAULT_HUB_DATASET_ID,
                        help="dataset.id of the exported .eval_results entries: the benchmark's dataset repo on the hub")
    parser.add_argument("--note", default="", help="a line about the protocol, shown under the title")


def check_inputs(results: Iterable[str | Path]) -> list[Path]:
    paths = [Path(path) for path in results]
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise FalseDemoError(f"--results: no such file or folder: {', '.join(missing)}")
    return paths


def check_output(output: Path, force: bool) -> None:
    """Before reading anything: the output is a writable folder (or can be made) without a leaderboard in it,
    unless --force."""
    if output.exists() and not output.is_dir():
        raise FalseDemoError(f"--output {output} is a file; give a folder")
    if output.is_dir():
        present = sorted(name for name in OUTPUT_NAMES.values() if (output / name).exists())
        if present and not force:
            raise FalseDemoError(
                f"--output {output} already holds a leaderboard ({', '.join(present)}); pass --force to replace it "
                "or choose a new folder")
        if not os.access(output, os.W_OK | os.X_OK):
            raise FalseDemoError(f"--output {output} is not writable")
        return
    parent = next((p for p in output.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise FalseDemoError(f"--output {output} cannot be created: {parent} is not a writable folder")


def build(results: Iterable[str | Path], output: str | Path, *, force: bool = True, bootstrap_iters: int = 1000,
          hub_dataset_id: str = DEFAULT_HUB_DATASET_ID, note: str = "") -> tuple[Leaderboard, dict[str, Path]]:
    """Read ``results`` and write every output into ``output``; raises FalseDemoError before writing anything
    if an input is missing, nothing usable was found, or the output is taken (without ``force``)."""
    output = Path(output)
    paths = check_inputs(results)
    check_output(output, force)
    if bootstrap_iters < 0:
        raise FalseDemoError(f"--bootstrap_iters={bootstrap_iters} must be >= 0")
    board = Leaderboard()
    board.add_paths(paths)
    rows = board.ordered_rows()
    if not rows:
        raise FalseDemoError(
            f"--results {' '.join(map(str, paths))}: no usable results file ({len(board.warnings)} skipped); "
            "nothing written")
    summaries = [summarise(row, iterations=bootstrap_iters) for row in rows]
    return board, write_outputs(board, summaries, output, hub_dataset_id, note)


def write_outputs(board: Leaderboard, summaries: list[dict], output: Path, hub_dataset_id: str, note: str
                  ) -> dict[str, Path]:
    try:
        output.mkdir(parents=True, exist_ok=True)
        header, rows = csv_rows(summaries)
        paths = {
            "markdown": write_text_atomic(output / OUTPUT_NAMES["markdown"], render_markdown(summaries, note),
                                          overwrite=True),
            "csv": write_csv_atomic(output / OUTPUT_NAMES["csv"], header, rows, overwrite=True),
            "html": write_text_atomic(output / OUTPUT_NAMES["html"], render_html(summaries, board.warnings, note),
                                      overwrite=True),
            "json": write_text_atomic(output / OUTPUT_NAMES["json"], json.dumps(
                [{k: v for k, v in s.items()} for s in summaries], indent=1, allow_nan=False, default=str),
                overwrite=True),
        }
        for row, summary in zip(board.ordered_rows(), summaries):
            for relative, text in export_files(summary, row, hub_dataset_id).items():
                write_text_atomic(output / relative, text, overwrite=True)
        paths["eval_results"] = output / "eval_results"
    except PermissionError as error:
        raise FalseDemoError(f"--output {output}: cannot write ({error.strerror}: {error.filename})") from None
    return paths


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    board, paths = build(args.results, args.output, force=args.force, bootstrap_iters=args.bootstrap_iters,
                         hub_dataset_id=args.hub_dataset_id, note=args.note)
    print(
        f"{len(board.ordered_rows())} rows from {len(set(board.files_read))} files, {len(board.warnings)} warnings; "
        "wrote " + ", ".join(os.fspath(path) for path in paths.values())
    )
    return 1 if args.strict and board.warnings else 0
