"""A fixed tiny-model run of `falsedemo sweep`, `falsedemo heads --evaluate` and `falsedemo leaderboard`.

Shared by the golden test and tests/golden/make_golden.py, so the goldens and the check run the same commands.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tiny_models import save_tiny_model

# Sections compared number for number; everything else (timing, dates, paths, versions) may change.
GOLDEN_SECTIONS = {
    "sweep": ("tasks", "datasets", "summary"),
    "heads": ("heads", "top_k", "evaluation"),
    "leaderboard": ("rows",),
}
# Leaderboard columns that name the run rather than measure it (paths, dates, versions).
VOLATILE_COLUMNS = frozenset({"model", "identity", "date", "lm_eval_version", "plugin_version",
                              "transformers_version", "files", "model_type"})
SWEEP_TASKS = "falsedemo_unnatural_correct,falsedemo_unnatural_permuted,falsedemo_sst2_correct,falsedemo_sst2_permuted"


def run_all(scratch: Path) -> dict[str, dict]:
    from lm_eval_false_demos.cli import main as cli

    model_dir = save_tiny_model("llama", scratch / "model")
    model_args = f"pretrained={model_dir},dtype=float32"
    quiet = ["--no_plots"]
    assert cli.main(["sweep", "--model_args", model_args, "--tasks", SWEEP_TASKS, "--limit", "10",
                     "--num_fewshot", "4", "--batch_size", "3", "--bootstrap_iters", "40",
                     "--output_path", str(scratch / "runs"), *quiet]) == 0
    assert cli.main(["heads", "--model_args", model_args, "-n", "5", "-f", "4", "-k", "2",
                     "--evaluate", "unnatural,sst2", "--limit", "6", "-R", "3", "--random_seed", "4",
                     "-o", str(scratch / "runs"), "--no_progress", *quiet]) == 0
    (sweep_file,) = (scratch / "runs").glob("sweep_*/sweep.json")
    (heads_file,) = (scratch / "runs").glob("heads_*/heads.json")
    board = scratch / "board"
    assert cli.main(["leaderboard", "--results", str(scratch / "runs"), "--output", str(board)]) == 0
    with open(board / "leaderboard.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rows = [{key: value for key, value in row.items() if key not in VOLATILE_COLUMNS} for row in rows]
    return {
        "sweep": json.loads(sweep_file.read_text()),
        "heads": json.loads(heads_file.read_text()),
        "leaderboard": {"rows": rows},
    }
