"""The files of a ``falsedemo heads`` run: heads.json (strict JSON), heads.csv and the figures; and the
critical layer read from a sweep.json to mark in them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from lm_eval_false_demos.analysis.head_scores import HeadScores, format_heads
from lm_eval_false_demos.core import files as results_io
from lm_eval_false_demos.results import figures
from lm_eval_false_demos.results.sweep_schema import SweepFile

FORMAT_VERSION = 1

# Why a value in heads.json can be undefined (written as null, listed under "undefined").
UNDEFINED_REASONS = {
    "gap_recovered": "no gap: accuracy with correct demonstrations does not exceed the corrupted one, so the "
                     "share of the gap recovered is undefined",
    "mean": "no defined values to average (every gap recovered was undefined)",
    "sd": "no defined values to average (every gap recovered was undefined)",
    "max": "no defined values (every gap recovered was undefined)",
    "top_k": "no gap in the pooled accuracies: the share of the gap recovered is undefined",
}


def critical_layer_from_sweep(path: str | Path, dataset: str) -> int | None:
    """The critical layer (lens numbering 0..L) a ``sweep.json`` found for ``dataset`` (None when it has none);
    FalseDemoError (results.schema.SchemaError) when the file is not a sweep.json this version reads."""
    derived = SweepFile.load(path).datasets.get(dataset)
    return derived.critical_layer if derived is not None else None


def write_figures(scores: HeadScores, top: Sequence[tuple[int, int]], directory: Path, title: str,
                  critical_layer: int | None = None) -> list[Path]:
    """``prefix_matching_by_layer.png`` and ``heads_heatmap.png`` (drawn by :mod:`results.figures`)."""
    drawn = {
        "prefix_matching_by_layer.png": figures.prefix_matching_figure(scores.pm_mean, title, critical_layer),
        "heads_heatmap.png": figures.heads_heatmap_figure(scores.pm_mean, scores.lp_mean, top, title),
    }
    return [figures.save_png(figure, directory / name) for name, figure in drawn.items()]


def heads_payload(
    config: dict, scores: HeadScores | None, top: Sequence[tuple[int, int]], evaluation=None, timing=None
) -> dict:
    payload = {
        "kind": "falsedemo.heads",
        "format_version": FORMAT_VERSION,
        "config": config,
        "timing": timing or {},
        "heads": scores.ranked() if scores is not None else [],
        "top_k": format_heads(top),
    }
    if evaluation is not None:
        payload["evaluation"] = evaluation
    return payload


def write_outputs(payload: dict, scores: HeadScores | None, directory: Path, plots: bool,
                  critical_layer: int | None) -> list[Path]:
    written = [results_io.write_json_atomic(directory / "heads.json", payload, reasons=UNDEFINED_REASONS)]
    if scores is not None:
        header = ["rank", "layer", "head", "prefix_matching", "prefix_matching_sd", "label_promoting",
                  "label_promoting_sd"]
        written.append(results_io.write_csv_atomic(
            directory / "heads.csv", header, ([row[name] for name in header] for row in payload["heads"])
        ))
        if plots:
            config = payload["config"]
            title = f"{model_args_text(config.get('model_args'))} · {config.get('task')} · N={scores.num_prompts}"
            top = [(row["layer"], row["head"]) for row in payload["heads"][: config.get("top_k")]]
            written += write_figures(scores, top, directory, title, critical_layer)
    return written


def model_args_text(model_args) -> str:
    """Recorded model args as lm-eval's ``key=value,...`` text (older files recorded that text itself)."""
    if isinstance(model_args, Mapping):
        return ",".join(f"{key}={value}" for key, value in model_args.items())
    return str(model_args)
