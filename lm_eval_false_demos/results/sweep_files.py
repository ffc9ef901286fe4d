"""A sweep's files: ``sweep.json`` (written last: its presence means the folder is complete), ``curves.csv``
(long format, one row per task, layer and readout position), ``derived.csv`` (one row per dataset and corrupted
setting), ``query_scores.npz`` and figures; and the terminal summary."""

from __future__ import annotations

import math

from pathlib import Path
from typing import Any, Mapping

from lm_eval_false_demos.analysis.layer_curves import HEADLINE_CORRUPTED_PREFERENCE, LAYER_METRICS
from lm_eval_false_demos.analysis.prediction_curves import UNDEFINED_REASONS
from lm_eval_false_demos.core import files as results_io
from lm_eval_false_demos.results import query_scores


def model_label(config: Mapping) -> str:
    args = config.get("model_args", {})
    name = str(args.get("gguf_file") or args.get("pretrained") or config.get("model", "model"))
    name = Path(name).name if ("/" in name and Path(name).exists()) else name
    return "".join(character if character.isalnum() or character in "-._" else "_" for character in name)[:80]


def curve_rows(result: Mapping) -> list[list[Any]]:
    """Long-format rows: one per task, layer and readout position (the query's rows are the per-layer curve)."""
    rows = []
    for name, task in result["tasks"].items():
        positions = task["per_position"]
        for layer in range(len(task["per_layer"]["calibrated_acc"])):
            for position, readout in zip(positions["num_preceding_demos"], positions["readout"]):
                rows.append([
                    name, task["dataset"], task["setting"], task["n"], task["k"], layer, position, readout,
                    *(positions[metric][layer][position] if metric in positions else "" for metric in LAYER_METRICS),
                ])
    return rows


CURVE_HEADER = ["task", "dataset", "setting", "n", "k", "layer", "num_preceding_demos", "readout", *LAYER_METRICS]


DERIVED_HEADER = [
    "dataset", "corrupted_setting", "n", "k", "num_classes", "correct_last", "correct_low", "correct_high",
    "corrupted_last", "corrupted_low", "corrupted_high", "gap", "gap_low", "gap_high", "critical_layer",
    "early_exit_layer", "early_exit_accuracy", "early_exit_gain", "early_exit_gain_low", "early_exit_gain_high",
    "held_out_early_exit_layer", "held_out_early_exit_gain", "held_out_gain_low", "held_out_gain_high",
]


def derived_rows(result: Mapping) -> list[list[Any]]:
    rows = []
    for dataset, entry in result["datasets"].items():
        for setting, comparison in entry.get("by_setting", {}).items():
            intervals, held_out = comparison["intervals"], comparison["held_out"]

            def bounds(name):
                interval = intervals.get(name) or [None, None]
                return interval[0], interval[1]

            held_interval = held_out.get("interval") or [None, None]
            rows.append([
                dataset, setting, comparison["n"], entry["k"], entry["num_classes"],
                comparison["last_layer"]["correct"], *bounds("correct"),
                comparison["last_layer"]["corrupted"], *bounds("corrupted"),
                comparison["last_layer"]["gap"], *bounds("gap"),
                comparison["critical_layer"], comparison["early_exit_layer"], comparison["early_exit_accuracy"],
                comparison["early_exit_gain"], *bounds("early_exit_gain"),
                held_out.get("early_exit_layer"), held_out.get("early_exit_gain"), *held_interval,
            ])
    return rows


def write_outputs(result: Mapping, output_path: str | Path, plots: bool = True, run_directory: Path | None = None) -> Path:
    """sweep.json, curves.csv, derived.csv and figures in ``run_directory`` (default: a fresh
    ``sweep_<model>_<timestamp>`` folder under ``output_path``)."""
    if run_directory is None:
        run_directory = results_io.new_run_directory(output_path, f"sweep_{model_label(result['config'])}")
    results_io.write_csv_atomic(run_directory / "curves.csv", CURVE_HEADER, curve_rows(result))
    results_io.write_csv_atomic(run_directory / "derived.csv", DERIVED_HEADER, derived_rows(result))
    figures = write_figures(result, run_directory) if plots else []
    payload = dict(result)
    written = ["curves.csv", "derived.csv"] + [path.name for path in figures]
    if payload.get("query_scores"):
        written.append(query_scores.write(run_directory, payload.pop("query_scores")).name)
    payload.pop("query_scores", None)
    payload["files"] = written
    # sweep.json last: its presence means the folder is complete.
    results_io.write_json_atomic(run_directory / "sweep.json", payload, reasons=UNDEFINED_REASONS)
    return run_directory


def layer_panels(result: Mapping) -> list[dict]:
    """One panel per dataset: the last-query-position curve of each setting, with the derived markers."""
    panels = []
    by_dataset: dict[str, dict[str, Mapping]] = {}
    for task in result["tasks"].values():
        by_dataset.setdefault(task["dataset"], {})[task["setting"]] = task
    for dataset, settings in by_dataset.items():
        derived = result["datasets"].get(dataset, {})
        curves = {
            setting: settings[setting]["per_layer"]["calibrated_acc"]
            for setting in ("correct", *HEADLINE_CORRUPTED_PREFERENCE, "zeroshot") if setting in settings
        }
        if "zeroshot" not in curves and "correct" in settings:
            # Without a zero-shot task, demo 0 of the correct prompts is read with no preceding demos.
            curves["zeroshot (demo 0)"] = [row[0] for row in settings["correct"]["per_position"]["calibrated_acc"]]
        any_task = next(iter(settings.values()))
        panels.append({
            "dataset": dataset,
            "curves": curves,
            "chance": any_task["chance"],
            "critical_layer": derived.get("critical_layer"),
            "early_exit_layer": derived.get("early_exit_layer"),
            "title": f"{dataset} (k={any_task['k']}, n={any_task['n']})",
        })
    return panels


def position_panels(result: Mapping) -> list[dict]:
    panels = []
    for dataset, entry in result["datasets"].items():
        if "by_setting" not in entry:
            continue
        gaps = {setting: comparison["gap_per_position"][-1] for setting, comparison in entry["by_setting"].items()}
        panels.append({
            "dataset": dataset,
            "gaps": gaps,
            "query_position": entry["k"],
            "title": f"{dataset}: gap at the last layer",
        })
    return panels


def prior_follow_panels(result: Mapping) -> list[dict]:
    """One panel per dataset with a zero-shot prior or a follow rate: prior alignment of every setting with
    demonstrations, and the follow rate (dashed) of the settings that show a shifted label, with their bands
    (a wrong-share grid's graded settings are left out: their numbers are in sweep.json)."""
    panels = []
    for dataset, entry in result["datasets"].items():
        settings = {label: values for label, values in
                    ((entry.get("prediction_metrics") or {}).get("settings") or {}).items() if "@" not in label}
        lines = {}
        for setting, values in settings.items():
            if "prior_alignment" in values:
                lines[f"{setting}: prior alignment"] = {**values["prior_alignment"], "setting": setting}
        for setting, values in settings.items():
            if "follow_rate" in values:
                lines[f"{setting}: follow rate"] = {**values["follow_rate"], "setting": setting, "dashed": True}
        if not lines:
            continue
        panels.append({"lines": lines, "chance": entry.get("chance"), "critical_layer": entry.get("critical_layer"),
                       "title": dataset})
    return panels


def write_figures(result: Mapping, run_directory: Path) -> list[Path]:
    from lm_eval_false_demos.results import figures as plots

    model = model_label(result["config"])
    written = []
    panels = layer_panels(result)
    if panels:
        written += plots.save_figure(plots.layer_figure(panels, f"{model}: accuracy by layer"), run_directory,
                                     "accuracy_by_layer")
    gap_panels = position_panels(result)
    if gap_panels:
        written += plots.save_figure(plots.position_figure(gap_panels, f"{model}: gap by number of demonstrations"),
                                     run_directory, "gap_by_demos")
    prior_panels = prior_follow_panels(result)
    if prior_panels:
        written += plots.save_figure(plots.prior_follow_figure(prior_panels, f"{model}: prior alignment and follow "
                                                                             "rate by layer"),
                                     run_directory, "prior_and_follow_by_layer")
    return written


def format_summary(result: Mapping) -> str:
    """A short table for the terminal: last-layer accuracies, gap, critical layer and early-exit gains; a value
    the analysis could not define (no critical layer, no held-out half) shows as "-"."""
    lines = ["dataset  setting  correct  corrupted  gap [CI]  critical  exit:gain [CI]  held-out exit:gain [CI]"]

    def interval(values):
        return "[-]" if not values or None in values else f"[{values[0]:+.3f},{values[1]:+.3f}]"

    def cell(value, spec=""):
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "-"
        return format(value, spec)

    for dataset, entry in result["datasets"].items():
        for setting, comparison in entry.get("by_setting", {}).items():
            last, intervals, held_out = comparison["last_layer"], comparison["intervals"], comparison["held_out"]
            lines.append(
                f"{dataset}  {setting}  {cell(last['correct'], '.3f')}  {cell(last['corrupted'], '.3f')}  "
                f"{cell(last['gap'], '+.3f')} {interval(intervals.get('gap'))}  {cell(comparison['critical_layer'])}  "
                f"{cell(comparison['early_exit_layer'])}:{cell(comparison['early_exit_gain'], '+.3f')} "
                f"{interval(intervals.get('early_exit_gain'))}  "
                f"{cell(held_out.get('early_exit_layer'))}:{cell(held_out.get('early_exit_gain'), '+.3f')} "
                f"{interval(held_out.get('interval'))}"
            )
    return "\n".join(lines)
