"""``falsedemo`` console script: one subcommand per analysis.

Each subcommand lives with its analysis module, which provides
``add_arguments(parser)`` and ``run(args) -> int``; this file only wires them up,
so ``falsedemo --help`` stays fast (modules are imported when chosen).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading

from lm_eval_false_demos.errors import FalseDemoError

SUBCOMMANDS = {
    "sweep": ("lm_eval_false_demos.cli.sweep", "per-layer and per-position curves from one forward pass per prompt"),
    "wrap": ("lm_eval_false_demos.cli.wrap", "false-demonstration tasks for any multiple-choice lm-eval task"),
    "heads": ("lm_eval_false_demos.cli.heads", "find false induction heads, score label promotion, ablate vs random"),
    "leaderboard": ("lm_eval_false_demos.cli.leaderboard", "build leaderboard tables and page from results files"),
    "data": ("lm_eval_false_demos.cli.data", "write a local copy of the datasets from the hub, or check one"),
    "lens": ("lm_eval_false_demos.cli.lens", "train a tuned lens (tuned-lens layout) on demonstration text"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="falsedemo",
        description="Overthinking the Truth analyses on top of lm-eval's falsedemo_* tasks.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module_name, summary) in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=summary, description=summary)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(subparser)
            subparser.set_defaults(_module=module_name)
    return parser


@contextlib.contextmanager
def terminated_like_interrupted():
    """SIGTERM (``kill``, a batch scheduler's stop or time limit) unwinds the run as Ctrl-C does: finished work
    is flushed to the run's checkpoint and the way to resume is printed; the exit status is 128 + 15. Only where
    nobody else handles SIGTERM (the default action would lose the unflushed work)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        with terminated_like_interrupted():
            return int(module.run(args) or 0)
    except FalseDemoError as error:
        # Bad input is reported as one clear line; anything else is a bug and keeps its traceback.
        parser.exit(2, f"falsedemo {args.command}: error: {error}\n")
    except KeyboardInterrupt:
        # Ctrl-C is the user's choice, not a bug: the run has already saved its work and printed how to resume.
        parser.exit(128 + signal.SIGINT, f"falsedemo {args.command}: interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
