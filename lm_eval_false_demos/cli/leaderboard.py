"""``falsedemo leaderboard``: the command line over :func:`lm_eval_false_demos.leaderboard.publish.build`."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys

from lm_eval_false_demos.leaderboard.export import DEFAULT_HUB_DATASET_ID
from lm_eval_false_demos.leaderboard.publish import OUTPUT_NAMES, build


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


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    # The skipped files' warnings are shown once the build succeeds; when nothing usable is left, the one-line
    # error carries the first of them instead.
    held = logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1,
                                          target=logging.getLogger().handlers[0], flushOnClose=False)
    board_logger = logging.getLogger("lm_eval_false_demos.leaderboard")
    board_logger.addHandler(held)
    propagate, board_logger.propagate = board_logger.propagate, False
    try:
        board, paths = build(args.results, args.output, force=args.force, bootstrap_iters=args.bootstrap_iters,
                             hub_dataset_id=args.hub_dataset_id, note=args.note)
        held.flush()
    finally:
        board_logger.removeHandler(held)
        board_logger.propagate = propagate
        held.close()
    print(
        f"{len(board.ordered_rows())} rows from {len(set(board.files_read))} files, {len(board.warnings)} warnings; "
        "wrote " + ", ".join(os.fspath(path) for path in paths.values())
    )
    return 1 if args.strict and board.warnings else 0
