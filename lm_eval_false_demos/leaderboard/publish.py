"""Building a leaderboard: results files in, every output (markdown, CSV, page, JSON, .eval_results) out;
refuses before writing anything when an input is missing, nothing is usable or the output is taken."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from lm_eval_false_demos.core.files import write_csv_atomic, write_text_atomic
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.leaderboard.collect import Leaderboard
from lm_eval_false_demos.leaderboard.columns import summarise
from lm_eval_false_demos.leaderboard.export import DEFAULT_HUB_DATASET_ID, export_files
from lm_eval_false_demos.leaderboard.render import csv_rows, render_html, render_markdown

OUTPUT_NAMES = {"markdown": "leaderboard.md", "csv": "leaderboard.csv", "html": "index.html", "json": "leaderboard.json"}


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
        skipped = f": {board.warnings[0]}" + (f" (and {len(board.warnings) - 1} more)" if len(board.warnings) > 1
                                              else "") if board.warnings else ""
        raise FalseDemoError(
            f"--results {' '.join(map(str, paths))}: no usable results file ({len(board.warnings)} skipped"
            f"{skipped}); nothing written")
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
