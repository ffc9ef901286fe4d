"""The leaderboard's columns: one summary dict per row, and how each column is named, described and shown.

``DEFAULT_COLUMNS`` is the small view (the page's table and the markdown); every other column is in the
CSV, the page's per-model detail and its embedded data. Intervals are 95 % paired-bootstrap intervals
(``headline``) and appear as ``[low, high]`` in cells and as ``_low`` / ``_high`` columns in the CSV.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from lm_eval_false_demos.core.datasets import MAIN_DATASETS
from lm_eval_false_demos.leaderboard.headline import (
    PREDICTION_METRICS,
    dataset_value,
    main_values,
    prediction_headline,
    setting_headline,
)
from lm_eval_false_demos.leaderboard.rows import GROUP_DATASET, Row, identity_text
from lm_eval_false_demos.leaderboard.values import joined, mean

CORRUPTED_COLUMNS_ORDER = ("permuted", "random", "half")  # the corrupted settings with columns, in column order
SETTINGS_SHOWN = ("correct",) + CORRUPTED_COLUMNS_ORDER
# Per-layer prediction metrics drawn on the page (the second view of the critical layer: where the model
# stops agreeing with its own zero-shot answer and starts following the shown labels).
PAGE_PREDICTION_CURVES = ("prior_alignment", "follow_rate")


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    kind: str  # "text", "int", "acc" (3 decimals), "signed" (3 decimals with sign)
    description: str
    interval: bool = False  # has <key>_low / <key>_high


COLUMNS = (
    Column("model", "model", "text", "checkpoint: model_args pretrained= (hub id, local path or packaged short name)"),
    Column("parameters", "params", "int", "number of parameters"),
    Column("layers", "layers", "int", "number of transformer blocks L (lens layers 0..L)"),
    Column("correct_acc", "correct", "acc", "calibrated accuracy with correct demonstrations, final layer, mean over "
           f"the {len(MAIN_DATASETS)} main datasets (SST-2: mean over its prompt formats, as in the paper)", True),
    Column("permuted_acc", "permuted", "acc", "same, with permuted labels", True),
    Column("gap_permuted", "gap", "signed", "correct minus permuted, paired over the datasets run in both "
           "settings, with its 95% paired-bootstrap interval over queries", True),
    Column("critical_layer", "critical layer", "int", "first layer where the mean correct-permuted gap reaches "
           "half its final value (paper), and as a fraction of depth L"),
    Column("early_exit_gain", "early-exit gain", "signed", "permuted accuracy at the layer maximising it minus at the "
           "final layer (mean curves), with its interval (the layer held fixed)", True),
    Column("prior_alignment", "prior alignment", "acc", "with permuted labels, the share of queries answered (argmax, "
           "final layer) as the model's own zero-shot answer; mean over the main datasets run with the zeroshot "
           "setting, with its interval", True),
    Column("flip_rate", "flip rate", "acc", "of the queries answered right with correct demonstrations, the share "
           "answered wrong with permuted ones (argmax, final layer, paired); mean over the main datasets", True),
    Column("heads_vs_random", "heads vs random", "text", "share of the permuted gap recovered by zeroing the 5 false "
           "induction heads, against 5 random heads (pooled over the evaluated datasets; mean of random draws)"),
    Column("data_source", "data", "text", "datasets from the hub or a local copy"),
    # detail
    Column("config", "config", "text", "the other readout-defining settings (model args such as exit_layer, heads; "
           "chat template or lens hashes); rows are keyed by model + config"),
    Column("protocol", "protocol", "text", "what was measured: k, N (the query limit asked for; all: every query), "
           "data source and label scoring; runs that differ in any of them are separate rows, ranked only within "
           "their protocol"),
    Column("model_type", "lm-eval model", "text", "lm-eval model class(es) the row's files were run with"),
    Column("identity", "identity", "text", "exact checkpoint: hub revision / commit sha, or GGUF file hash"),
    Column("k", "k", "text", "demonstrations per prompt"),
    Column("n_per_dataset", "N", "text", "queries per dataset (range if they differ)"),
    Column("sst2_formats", "SST-2 formats", "text", "SST-2 prompt formats averaged (paper: 15)"),
    Column("seed", "few-shot seed", "text", "lm-eval's few-shot seed: which demonstrations each query gets"),
    Column("label_scoring", "label scoring", "text", "which part of each label is scored"),
    Column("correct_datasets", "correct #", "int", f"main datasets in the correct mean (of {len(MAIN_DATASETS)})"),
    Column("permuted_datasets", "permuted #", "int", "main datasets in the permuted mean"),
    Column("interval_datasets", "interval #", "int", "datasets with per-query scores behind the intervals (0: none)"),
    Column("random_acc", "random", "acc", "same as correct, with random labels"),
    Column("half_acc", "half", "acc", "same, with half-correct labels"),
    Column("random_datasets", "random #", "int", "main datasets in the random mean"),
    Column("half_datasets", "half #", "int", "main datasets in the half mean"),
    Column("gap_random", "gap random", "signed", "correct minus random (paired datasets)"),
    Column("gap_half", "gap half", "signed", "correct minus half (paired datasets)"),
    Column("critical_layer_fraction", "critical layer / L", "acc", "the critical layer as a fraction of depth"),
    Column("early_exit_layer", "early-exit layer", "int", "layer maximising mean permuted accuracy"),
    Column("false_heads", "false induction heads", "text", "top heads found by falsedemo heads (layer:head)"),
    Column("heads_pooled_gap_recovered", "heads gap recovered", "signed", "pooled share of the gap recovered by "
           "zeroing the false induction heads: 1 - (mean correct - mean ablated) / (mean correct - mean permuted)"),
    Column("random_heads_pooled_gap_recovered", "random heads", "signed", "same for random heads (mean of draws)"),
    Column("random_heads_pooled_gap_recovered_sd", "random sd", "acc", "sd over the random draws"),
    Column("heads_gap_recovered", "heads (paper's ratio)", "signed", "mean over datasets of per-dataset shares "
           "(the paper's figure; a dataset with a tiny gap inflates it)"),
    Column("random_heads_gap_recovered", "random (paper's ratio)", "signed", "same for random heads"),
    Column("prior_alignment_correct", "prior alignment correct", "acc", "prior alignment with correct "
           "demonstrations", True),
    Column("semantic_override", "semantic override", "acc", "of the queries whose zero-shot answer differs from the "
           "label the permuted mapping gives them, the share answered with that label (argmax, final layer)", True),
    Column("follow_rate", "follow rate", "acc", "with permuted labels, the share answered with the label the shown "
           "mapping gives the query (argmax, final layer)", True),
    Column("true_label_prob_correct", "p(true) correct", "acc", "mean probability of the true label (softmax over "
           "the K labels, final layer), correct demonstrations", True),
    Column("true_label_prob_permuted", "p(true) permuted", "acc", "same with permuted labels", True),
    Column("lowest_class_recall", "lowest class recall", "acc", "per dataset the lowest per-class recall (argmax, "
           "final layer, correct demonstrations), mean over the main datasets"),
    Column("label_sensitivity", "label sensitivity", "signed", "slope of final-layer calibrated accuracy against the "
           "share of wrong labels (0..1) over a wrong-share grid, mean over datasets (StaICC's GLER as a slope)"),
    Column("prediction_datasets", "prediction #", "text", "main datasets behind each prediction metric"),
    Column("prediction_notes", "absent", "text", "why a prediction metric is absent (a setting that was not run)"),
    Column("ran", "ran", "text", "what the row's files hold when no main dataset was run"),
    Column("plugin_version", "plugin", "text", "lm_eval_false_demos version"),
    Column("lm_eval_version", "lm-eval", "text", "lm-eval version"),
    Column("transformers_version", "transformers", "text", "transformers version"),
    Column("date", "date", "text", "newest run date among the row's files (UTC)"),
    Column("files", "files", "int", "results files merged into the row"),
    Column("reproduce", "reproduce", "text", "the commands that wrote the row's files"),
)
DEFAULT_KEYS = ("model", "parameters", "layers", "correct_acc", "permuted_acc", "gap_permuted", "critical_layer",
                "early_exit_gain", "prior_alignment", "flip_rate", "heads_vs_random", "data_source")
DEFAULT_COLUMNS = tuple(column for column in COLUMNS if column.key in DEFAULT_KEYS)
MARKDOWN_COLUMNS = DEFAULT_COLUMNS[:3] + tuple(c for c in COLUMNS if c.key in ("k", "n_per_dataset")) + DEFAULT_COLUMNS[3:]
CSV_KEYS = tuple(key for column in COLUMNS for key in (
    (column.key, f"{column.key}_low", f"{column.key}_high") if column.interval else (column.key,)))


def summarise(row: Row, iterations: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every column's value for one row (numbers unrounded; None when unknown)."""
    layers = max(row.layers) if row.layers else None
    summary: dict[str, Any] = {
        "model": row.checkpoint,
        "config": row.config_text,
        "protocol": row.protocol.text if row.protocol is not None else None,
        "model_type": joined(row.model_types),
        "identity": identity_text(row.identities),
        "parameters": max(row.parameters) if row.parameters else None,
        "layers": layers,
        "k": joined(row.k),
        "data_source": joined(row.data_sources),
        "seed": joined(row.seeds),
        "label_scoring": joined(row.label_scoring),
    }
    sizes: set[int] = set()
    formats: set[int] = set()
    for setting in SETTINGS_SHOWN:
        values = main_values(row, setting)
        summary[f"{setting}_acc"] = mean(values.values())
        summary[f"{setting}_datasets"] = len(values)
        for dataset in values:
            value, n, format_count = dataset_value(row, dataset, setting)
            sizes.update([n] if n else [])
            if dataset == "sst2" and format_count:
                formats.add(format_count)
    summary["n_per_dataset"] = None if not sizes else (
        str(min(sizes)) if len(sizes) == 1 else f"{min(sizes)}-{max(sizes)}")
    summary["sst2_formats"] = joined(formats)
    summary["curves"], summary["bands"] = {}, {}
    for setting in CORRUPTED_COLUMNS_ORDER:
        headline = setting_headline(row, setting, iterations=iterations if setting == "permuted" else 0, seed=seed)
        summary[f"gap_{setting}"] = headline.get("gap")
        if setting != "permuted":
            continue
        summary["interval_datasets"] = headline["interval_datasets"]
        for key, found in (("correct_acc", "correct_ci"), ("permuted_acc", "corrupted_ci"), ("gap_permuted", "gap_ci"),
                           ("early_exit_gain", "early_exit_gain_ci")):
            low, high = headline.get(found) or (None, None)
            summary[f"{key}_low"], summary[f"{key}_high"] = low, high
        critical = headline.get("critical_layer")
        summary["critical_layer"] = critical
        summary["critical_layer_fraction"] = critical / layers if critical is not None and layers else None
        summary["early_exit_layer"] = headline.get("early_exit_layer")
        summary["early_exit_gain"] = headline.get("early_exit_gain")
        summary["curves"] = headline.get("curves", {})
        summary["bands"] = headline.get("bands", {})
        summary["bootstrap"] = headline.get("bootstrap")
    predictions = prediction_headline(row, iterations=iterations, seed=seed)
    summary["prediction_curves"] = {name: predictions["curves"][name] for name in PAGE_PREDICTION_CURVES
                                    if name in predictions["curves"]}
    summary["prediction_bands"] = {name: predictions["bands"][name] for name in PAGE_PREDICTION_CURVES
                                   if name in predictions["bands"]}
    for name in (*PREDICTION_METRICS, "lowest_class_recall", "label_sensitivity"):
        summary[name] = predictions[name]
        low, high = predictions.get(f"{name}_ci") or (None, None)
        summary[f"{name}_low"], summary[f"{name}_high"] = low, high
    summary["prediction_datasets"] = ", ".join(
        f"{name} {predictions[f'{name}_datasets']}" for name in (*PREDICTION_METRICS, "lowest_class_recall",
                                                                 "label_sensitivity")
        if predictions[f"{name}_datasets"]) or None
    summary["prediction_notes"] = "; ".join(f"{name}: {why}" for name, why in predictions["notes"].items()) or None
    heads = row.heads or {}
    summary["false_heads"] = heads.get("top_k")
    for key in ("pooled_gap_recovered", "gap_recovered"):
        summary[f"heads_{key}"] = heads.get(key)
        summary[f"random_heads_{key}"] = heads.get(f"random_{key}")
    summary["random_heads_pooled_gap_recovered_sd"] = heads.get("random_pooled_gap_recovered_sd")
    top, random = summary["heads_pooled_gap_recovered"], summary["random_heads_pooled_gap_recovered"]
    summary["heads_vs_random"] = None if top is None else (
        f"{top:+.2f} vs {random:+.2f}" if random is not None else f"{top:+.2f}")
    summary["ran"] = _what_ran(row) if not summary["correct_datasets"] and not summary["permuted_datasets"] else None
    for which in ("plugin", "lm_eval", "transformers"):
        summary[f"{which}_version"] = joined(row.versions[which])
    summary["date"] = datetime.fromtimestamp(max(row.dates), tz=timezone.utc).strftime("%Y-%m-%d") if row.dates else None
    summary["files"] = len(row.files)
    summary["reproduce"] = " ; ".join(dict.fromkeys(row.commands[path] for path in sorted(row.commands))) or None
    summary["per_dataset"] = {
        dataset: {setting: (dataset_value(row, dataset, setting) or (None,))[0] for setting in SETTINGS_SHOWN}
        for dataset in MAIN_DATASETS
    }
    return summary


def _what_ran(row: Row) -> str:
    """'unnatural: correct 0.978, permuted 0.400' for each dataset run, when no main dataset was."""
    parts = []
    for dataset in row.datasets_run():
        settings = [f"{s} {row.accuracy(dataset, s).value:.3f}" for s in SETTINGS_SHOWN + ("zeroshot",)
                    if row.accuracy(dataset, s) is not None]
        parts.append(f"{dataset}: {', '.join(settings)}" if settings else dataset)
    group = [f"{s} {m.value:.3f}" for (d, s), m in sorted(row.lm_eval.items()) if d == GROUP_DATASET]
    return "; ".join(parts + ([f"lm-eval groups: {', '.join(group)}"] if group else [])) or "nothing usable"


def format_cell(column: Column, value: Any) -> str:
    if value is None or value == "":
        return ""
    if column.kind == "acc":
        return f"{value:.3f}"
    if column.kind == "signed":
        return f"{value:+.3f}"
    if column.kind == "int" and isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def cell_text(column: Column, summary: Mapping[str, Any]) -> str:
    """A cell as shown: the value, its interval, and for accuracy means how many datasets they cover."""
    shown = format_cell(column, summary.get(column.key))
    if not shown:
        return ""
    if column.interval and summary.get(f"{column.key}_low") is not None:
        low, high = summary[f"{column.key}_low"], summary[f"{column.key}_high"]
        spec = "+.3f" if column.kind == "signed" else ".3f"
        shown += f" [{low:{spec}}, {high:{spec}}]"
    if column.key == "critical_layer" and summary.get("critical_layer_fraction") is not None:
        shown += f" ({summary['critical_layer_fraction']:.2f})"
    setting = column.key[: -len("_acc")] if column.key.endswith("_acc") else None
    if setting in SETTINGS_SHOWN and summary.get(f"{setting}_datasets") not in (None, len(MAIN_DATASETS)):
        shown += f" ({summary[f'{setting}_datasets']}/{len(MAIN_DATASETS)})"
    return shown
