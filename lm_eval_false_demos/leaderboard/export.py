"""Per row, files for a model repo's ``.eval_results/`` (the hub's evaluation-results format) and a script
that reproduces the row.

The format (huggingface_hub ``EvalResultEntry``; spec ``hub-docs/eval_results.yaml``) is a YAML list of
entries ``{dataset: {id, task_id}, value, date?, notes?, source?: {url, name?, user?}}``. We write one entry
per setting (calibrated accuracy, mean over the main datasets) and one per corrupted setting's gap, each
with the protocol in its notes (k, N, few-shot seed, readout, label scoring, interval, the results files).
``dataset.id`` must name the benchmark's dataset repo on the hub; pass yours with ``--hub_dataset_id``.
The results files are local paths, so they go into the notes, not into ``source`` (which needs a URL).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from lm_eval_false_demos.core.datasets import MAIN_DATASETS
from lm_eval_false_demos.leaderboard.columns import CORRUPTED_COLUMNS_ORDER, SETTINGS_SHOWN
from lm_eval_false_demos.leaderboard.rows import Row

DEFAULT_HUB_DATASET_ID = "lm-eval-false-demos/overthinking-the-truth"
EXPORT_FOLDER = "eval_results"
RESULTS_FILE = "falsedemo.yaml"
READOUT_NOTE = "final layer (the model's own output)"


def row_folder_name(summary: Mapping[str, Any]) -> str:
    """A filesystem-safe, unique folder name for a row: readable model/config slug plus a short hash of the row key
    (model, config and protocol: rows that differ only in k or N get their own folders)."""
    identity = f"{summary['model']}\x1f{summary.get('config') or ''}\x1f{summary.get('protocol') or ''}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{summary['model']}_{summary.get('config') or 'default'}")[:60]
    return f"{slug.strip('._') or 'row'}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def _notes(summary: Mapping[str, Any], row: Row, metric: str, interval: list | None) -> str:
    parts = [
        metric,
        f"mean over {summary.get('correct_datasets') or 0} of the {len(MAIN_DATASETS)} main datasets"
        + (f" (SST-2: mean of {summary['sst2_formats']} prompt formats)" if summary.get("sst2_formats") else ""),
        f"k={summary.get('k') or '?'}",
        f"N={summary.get('n_per_dataset') or '?'} queries per dataset",
        f"few-shot seed {summary.get('seed') or '?'}",
        f"readout: {READOUT_NOTE}",
        f"label scoring: {summary.get('label_scoring') or '?'}",
        f"model args: {summary.get('config')}",
        f"protocol: {summary.get('protocol') or '?'}",
    ]
    if interval:
        parts.append(f"95% paired-bootstrap interval [{interval[0]:.4f}, {interval[1]:.4f}]")
    sources = sorted(str(path) for path in row.files)
    parts.append("source files: " + ", ".join(sources))
    return "; ".join(parts)


def eval_result_entries(summary: Mapping[str, Any], row: Row, dataset_id: str) -> list[dict[str, Any]]:
    """The row's entries in the hub's YAML layout (as ``huggingface_hub.eval_result_entries_to_yaml`` writes)."""
    entries = []
    date = summary.get("date")

    def entry(task_id: str, value: float, metric: str, interval=None) -> dict[str, Any]:
        found: dict[str, Any] = {"dataset": {"id": dataset_id, "task_id": task_id}, "value": round(float(value), 4)}
        if date:
            found["date"] = date
        found["notes"] = _notes(summary, row, metric, interval)
        return found

    for setting in SETTINGS_SHOWN:
        value = summary.get(f"{setting}_acc")
        if value is not None:
            low = summary.get(f"{setting}_acc_low")
            entries.append(entry(f"falsedemo_main_{setting}", value, f"calibrated_acc, {setting} demonstrations",
                                 [low, summary[f"{setting}_acc_high"]] if low is not None else None))
    for setting in CORRUPTED_COLUMNS_ORDER:
        value = summary.get(f"gap_{setting}")
        if value is not None:
            low = summary.get(f"gap_{setting}_low")
            entries.append(entry(f"falsedemo_main_{setting}_gap", value,
                                 f"calibrated_acc gap, correct minus {setting} demonstrations",
                                 [low, summary[f"gap_{setting}_high"]] if low is not None else None))
    return entries


def reproduce_script(summary: Mapping[str, Any]) -> str:
    commands = (summary.get("reproduce") or "").split(" ; ")
    lines = ["#!/usr/bin/env bash",
             f"# Reproduces the leaderboard row {summary['model']} [{summary.get('config')}]: the commands that",
             "# wrote its results files (FALSEDEMO_DATA_DIR for local dataset copies, as the row's data column says).",
             "set -euo pipefail"]
    lines += [command for command in commands if command] or ["# no recorded command (lm-eval results: see their config)"]
    lines.append("falsedemo leaderboard --results <the folders above> --output leaderboard_new")
    return "\n".join(lines) + "\n"


def export_files(summary: Mapping[str, Any], row: Row, dataset_id: str) -> dict[str, str]:
    """{relative path: text} for one row."""
    folder = Path(EXPORT_FOLDER) / row_folder_name(summary)
    entries = eval_result_entries(summary, row, dataset_id)
    return {
        str(folder / ".eval_results" / RESULTS_FILE): yaml.safe_dump(entries, sort_keys=False, allow_unicode=False,
                                                                    width=10_000),
        str(folder / "reproduce.sh"): reproduce_script(summary),
    }
