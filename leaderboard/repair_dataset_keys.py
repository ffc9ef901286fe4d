"""One-off repair of the published sweeps of 2026-11-29 (run once; kept so the repair can be checked).

The code that ran them (commit 203bca50) named every non-SST-2 task's dataset ``sst2`` in ``sweep.json``
(``FalseDemoTask.dataset_key``, fixed in the next commit), so each file's ``tasks.<task>.dataset`` was wrong and
its per-dataset section mixed datasets. Every task's curves and ``query_scores.npz`` are keyed by task name and
were right. This script sets ``dataset`` from the task name and redoes the sweep's own per-dataset analysis with
the sweep's functions on the saved per-query scores (``compare_settings`` with the run's bootstrap settings; the
per-position gap as the difference of the two tasks' per-position curves, which is what ``_position_gap``
computes), then rewrites ``derived.csv`` and ``curves.csv``; ``sweep.json`` records the repair.
Usage: python leaderboard/repair_dataset_keys.py leaderboard/runs/*/sweep_*
"""

import json
import sys
import time
from pathlib import Path

from lm_eval_false_demos import query_scores, results_io, sweep


def dataset_of(task: str, setting: str) -> str:
    return task.removeprefix("falsedemo_").removesuffix(f"_{setting}")


def repair(folder: Path) -> None:
    payload = json.loads((folder / "sweep.json").read_text())
    scores = query_scores.read(folder / query_scores.FILE_NAME)
    tasks = payload["tasks"]
    for name, task in tasks.items():
        task["dataset"] = dataset_of(name, task["setting"])
    analysis = payload["config"]["analysis"]
    by_dataset: dict[str, dict[str, str]] = {}
    for name, task in tasks.items():
        by_dataset.setdefault(task["dataset"], {})[task["setting"]] = name
    datasets = {}
    for dataset, settings in by_dataset.items():
        correct_name = settings["correct"]
        correct, first = scores[correct_name], tasks[correct_name]
        entry = {"tasks": dict(settings), "num_classes": first["num_classes"], "chance": first["chance"], "k": first["k"]}
        by_setting = {}
        for setting in [s for s in sweep.CORRUPTED_SETTINGS if s in settings]:
            other = scores[settings[setting]]
            order = sweep._pair_queries(list(correct["keys"]), list(other["keys"]), correct_name, settings[setting])
            comparison = sweep.compare_settings(
                correct["scores"], other["scores"][order], correct["gold"], bootstrap_iters=analysis["bootstrap_iters"],
                seed=analysis["seed"], confidence=analysis["confidence"])
            correct_positions = first["per_position"]["calibrated_acc"]
            other_positions = tasks[settings[setting]]["per_position"]["calibrated_acc"]
            comparison["gap_per_position"] = [[c - o for c, o in zip(row_c, row_o)]
                                              for row_c, row_o in zip(correct_positions, other_positions)]
            by_setting[setting] = comparison
        primary = next(iter(by_setting))
        entry["corrupted_setting"] = primary
        for key in ("critical_layer", "early_exit_layer", "early_exit_gain", "early_exit_accuracy", "last_layer",
                    "held_out", "intervals", "gap_per_layer", "gap_per_position", "n"):
            entry[key] = by_setting[primary][key]
        entry["by_setting"] = by_setting
        datasets[dataset] = entry
    payload["datasets"] = datasets
    payload["summary"] = sweep.summarise_run(datasets, tasks)
    payload["repaired"] = {
        "date": time.time(), "by": "leaderboard/repair_dataset_keys.py",
        "what": "tasks.<task>.dataset set from the task name; datasets, summary, derived.csv and curves.csv redone "
                "with the sweep's functions from query_scores.npz and the per-position curves",
    }
    results_io.write_csv_atomic(folder / "curves.csv", sweep.CURVE_HEADER, sweep.curve_rows(payload), overwrite=True)
    results_io.write_csv_atomic(folder / "derived.csv", sweep.DERIVED_HEADER, sweep.derived_rows(payload), overwrite=True)
    results_io.write_json_atomic(folder / "sweep.json", payload, overwrite=True)
    print(f"{folder}: {', '.join(sorted(datasets))}")


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        repair(Path(argument))
