"""``falsedemo leaderboard``: markdown, CSV and a static HTML page from folders of results files.

Reads, recursively, every ``*.json`` under the given folders:

* lm-eval's ``results_*.json`` (tasks ``falsedemo_<dataset>_<setting>``, metric ``calibrated_acc,none``);
* our ``sweep.json`` (``"kind": "falsedemo.sweep"``): per-layer curves, critical layer, early exit;
* our ``heads.json`` (``"kind": "falsedemo.heads"``): false-induction-head gap recovered vs random heads.

One row per model configuration: lm-eval puts every configuration of a checkpoint (exit layers,
ablations) in one folder, so rows are keyed by the checkpoint plus its model args, not by folder.
Anything unreadable, partial or foreign is skipped with a warning naming the file and why, and a
measurement given twice is reported (the newer file wins), so a messy folder still builds.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from .datasets import MAIN_DATASETS  # the dataset table is the one home of the 14 main keys
from .metrics import pooled_gap_recovered_by_condition
from .results_io import write_csv_atomic, write_text_atomic

logger = logging.getLogger(__name__)

TASK_PREFIX = "falsedemo_"
CORRUPTED_SETTINGS = ("permuted", "random", "half")
SETTINGS_SHOWN = ("correct",) + CORRUPTED_SETTINGS
METRIC = "calibrated_acc"
SWEEP_KIND = "falsedemo.sweep"
HEADS_KIND = "falsedemo.heads"
SUPPORTED_FORMAT_VERSION = 1
OUTPUT_NAMES = {"markdown": "leaderboard.md", "csv": "leaderboard.csv", "html": "index.html"}

# Model args that change where or how fast a model runs, not what it computes: left out of the
# row key so a run on another device or batch size lands in the same row.
RUNTIME_ONLY_ARGS = frozenset(
    {"device", "batch_size", "max_batch_size", "parallelize", "device_map", "max_memory_per_gpu",
     "max_cpu_memory", "offload_folder"}
)
CHECKPOINT_ARGS = ("pretrained", "model", "path", "engine")
_TIMESTAMP_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2})[-:](\d{2})[-:](\d{2})")


# ----------------------------------------------------------------------------------------- reading


@dataclass
class Measurement:
    """One dataset x setting calibrated accuracy, and the file it came from."""

    value: float
    n: int | None
    source: Path
    date: float | None


@dataclass
class Row:
    """Everything known about one model configuration, merged over all its files."""

    checkpoint: str
    args: tuple[tuple[str, str], ...]
    model_types: set[str] = field(default_factory=set)
    identities: set[tuple[str, str]] = field(default_factory=set)  # (kind, text), see _identity_text
    parameters: set[int] = field(default_factory=set)
    layers: set[int] = field(default_factory=set)
    k: set[int] = field(default_factory=set)
    data_sources: set[str] = field(default_factory=set)
    versions: dict[str, set[str]] = field(
        default_factory=lambda: {"plugin": set(), "lm_eval": set(), "transformers": set()}
    )
    dates: list[float] = field(default_factory=list)
    files: set[Path] = field(default_factory=set)
    # lm-eval results take precedence over a sweep's final layer (see Leaderboard.accuracy)
    lm_eval: dict[tuple[str, str], Measurement] = field(default_factory=dict)
    sweep_final: dict[tuple[str, str], Measurement] = field(default_factory=dict)
    sweep: dict[str, Any] | None = None
    sweep_source: Path | None = None
    sweep_date: float | None = None
    heads: dict[str, Any] | None = None
    heads_source: Path | None = None
    heads_date: float | None = None

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.checkpoint, self.args

    @property
    def config_text(self) -> str:
        return ",".join(f"{name}={value}" for name, value in self.args) or "(default)"


class Leaderboard:
    """Collects rows from results files; ``warnings`` lists every skipped file or duplicate."""

    def __init__(self) -> None:
        self.rows: dict[tuple, Row] = {}
        self.warnings: list[str] = []
        self.files_read: list[Path] = []

    # -- diagnostics

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        logger.warning(message)

    # -- entry points

    def add_paths(self, paths: Iterable[str | Path]) -> None:
        for path in paths:
            path = Path(path)
            if path.is_file():
                self.add_file(path)
            elif path.is_dir():
                for file in sorted(path.rglob("*.json")):
                    if file.is_file():
                        self.add_file(file)
            else:
                self.warn(f"{path}: skipped: no such file or folder")

    def add_file(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            self.warn(f"{path}: skipped: unreadable ({error.__class__.__name__}: {error})")
            return
        try:
            payload = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as error:
            reason = "empty file" if not text.strip() else f"not valid JSON, partial or corrupt ({error})"
            self.warn(f"{path}: skipped: {reason}")
            return
        if not isinstance(payload, dict):
            self.warn(f"{path}: skipped: foreign JSON (top level is {type(payload).__name__}, not an object)")
            return
        kind = payload.get("kind")
        try:
            if kind == SWEEP_KIND:
                self._add_sweep(path, payload)
            elif kind == HEADS_KIND:
                self._add_heads(path, payload)
            elif isinstance(payload.get("results"), dict) and isinstance(payload.get("config"), dict):
                self._add_lm_eval(path, payload)
            else:
                self.warn(
                    f"{path}: skipped: foreign JSON (neither lm-eval results nor a {SWEEP_KIND} / "
                    f"{HEADS_KIND} file)"
                )
        except _SkipFile as skip:
            self.warn(f"{path}: skipped: {skip}")

    # -- lm-eval results_*.json

    def _add_lm_eval(self, path: Path, payload: Mapping[str, Any]) -> None:
        config = payload["config"]
        results = payload["results"]
        tasks = {name: value for name, value in results.items() if isinstance(name, str) and name.startswith(TASK_PREFIX)}
        if not tasks:
            raise _SkipFile("lm-eval results without any falsedemo_* task")
        row = self._row(config.get("model"), config.get("model_args"), path)
        date = _number(payload.get("date")) or _date_from_name(path)
        configs = payload.get("configs") if isinstance(payload.get("configs"), dict) else {}
        n_samples = payload.get("n-samples") if isinstance(payload.get("n-samples"), dict) else {}
        n_shot = payload.get("n-shot") if isinstance(payload.get("n-shot"), dict) else {}
        used = 0
        ks: set[int] = set()
        sources: set[str] = set()
        for task, metrics in sorted(tasks.items()):
            parsed = parse_task_name(task)
            if parsed is None or not isinstance(metrics, dict):
                self.warn(f"{path}: ignored task {task!r}: not falsedemo_<dataset>_<setting> with metrics")
                continue
            value = _accuracy(metrics.get(f"{METRIC},none"))
            if value is None:
                self.warn(f"{path}: ignored task {task}: no finite {METRIC},none value in [0, 1]")
                continue
            samples = n_samples.get(task) if isinstance(n_samples.get(task), dict) else {}
            n = _integer(samples.get("effective"))
            task_config = configs.get(task) if isinstance(configs.get(task), dict) else {}
            metadata = task_config.get("metadata") if isinstance(task_config.get("metadata"), dict) else {}
            k = _integer(_first(metadata, ("k", "num_demos", "num_demonstrations", "demonstrations")))
            if k is None and _integer(n_shot.get(task)):
                k = _integer(n_shot.get(task))
            if k is not None:
                ks.add(k)
            source = _data_source_text(_first(metadata, ("data_source",)) or _first(task_config, ("data_source",)))
            if source:
                sources.add(source)
            self._put(row.lm_eval, parsed, Measurement(value, n, path, date), row, "lm-eval results")
            used += 1
        if not used:
            raise _SkipFile("no usable falsedemo_* task results")
        row.k.update(ks)
        row.data_sources.update(sources)
        self._add_identity(row, config)
        source = _data_source_text(config.get("data_source"))
        if source:
            row.data_sources.add(source)
        plugin = _text(_first(config, ("plugin_version", "lm_eval_false_demos_version", "falsedemo_version")))
        if plugin is None:
            for task_config in configs.values():
                metadata = task_config.get("metadata") if isinstance(task_config, dict) else None
                if isinstance(metadata, dict):
                    plugin = _text(_first(metadata, ("plugin_version", "lm_eval_false_demos_version")))
                    if plugin:
                        break
        self._add_version(row, "plugin", plugin)
        self._add_version(row, "lm_eval", payload.get("lm_eval_version"))
        self._add_version(row, "transformers", payload.get("transformers_version"))
        if date:
            row.dates.append(date)
        row.files.add(path)
        self.files_read.append(path)

    # -- falsedemo.sweep

    def _add_sweep(self, path: Path, payload: Mapping[str, Any]) -> None:
        _check_format(payload)
        config = _mapping(payload.get("config"), "config")
        tasks = _mapping(payload.get("tasks"), "tasks")
        row = self._row(config.get("model"), config.get("model_args"), path)
        date = _date_of(config) or _number(payload.get("date")) or _date_from_name(path)
        curves: dict[tuple[str, str], list[float]] = {}
        chance: dict[str, float] = {}  # 1/K per dataset
        for task, entry in sorted(tasks.items()):
            if not isinstance(entry, dict):
                self.warn(f"{path}: ignored task {task!r}: not an object")
                continue
            parsed = parse_task_name(task)
            dataset, setting = entry.get("dataset"), entry.get("setting")
            if isinstance(dataset, str) and isinstance(setting, str):
                parsed = (dataset, setting)
            if parsed is None:
                self.warn(f"{path}: ignored task {task!r}: no dataset and setting")
                continue
            per_layer = entry.get("per_layer") if isinstance(entry.get("per_layer"), dict) else {}
            curve = _curve(per_layer.get(METRIC))
            if curve is None:
                self.warn(f"{path}: ignored task {task}: per_layer.{METRIC} is not a list of accuracies in [0, 1]")
                continue
            curves[parsed] = curve
            if _accuracy(entry.get("chance")) is not None:
                chance[parsed[0]] = entry["chance"]
            self._put(row.sweep_final, parsed, Measurement(curve[-1], _integer(entry.get("n")), path, date), row, "sweep")
        if not curves:
            raise _SkipFile(f"sweep without any usable per_layer.{METRIC} curve")
        lengths = {len(curve) for curve in curves.values()}
        if len(lengths) != 1:
            raise _SkipFile(f"sweep curves have different lengths {sorted(lengths)} (mixed models?)")
        if row.sweep is not None:
            older, newer = sorted([(row.sweep_date or 0, row.sweep_source), (date or 0, path)], key=_date_key)
            self.warn(
                f"duplicate sweep for {row.checkpoint} [{row.config_text}]: {older[1]} and {newer[1]}; "
                f"keeping the newer {newer[1]}"
            )
            if newer[1] != path:
                self._register_file(row, config, payload, path, date)
                return
        row.sweep = {
            "curves": curves,
            "chance": chance,
            "datasets": payload.get("datasets") if isinstance(payload.get("datasets"), dict) else {},
            "summary": payload.get("summary") if isinstance(payload.get("summary"), dict) else {},
        }
        row.sweep_source, row.sweep_date = path, date
        row.layers.add(lengths.pop() - 1)
        self._register_file(row, config, payload, path, date)

    # -- falsedemo.heads

    def _add_heads(self, path: Path, payload: Mapping[str, Any]) -> None:
        _check_format(payload)
        config = _mapping(payload.get("config"), "config")
        evaluation = payload.get("evaluation") if isinstance(payload.get("evaluation"), dict) else None
        top_k = _text(payload.get("top_k"))
        if top_k is None and evaluation is None:
            raise _SkipFile("heads file with neither top_k nor evaluation")
        row = self._row(config.get("model"), config.get("model_args"), path)
        date = _date_of(config) or _number(payload.get("date")) or _date_from_name(path)
        summary = {"top_k": top_k, **_heads_evaluation(evaluation or {})}
        if row.heads is not None:
            older, newer = sorted([(row.heads_date or 0, row.heads_source), (date or 0, path)], key=_date_key)
            self.warn(
                f"duplicate heads result for {row.checkpoint} [{row.config_text}]: {older[1]} and {newer[1]}; "
                f"keeping the newer {newer[1]}"
            )
            if newer[1] != path:
                self._register_file(row, config, payload, path, date)
                return
        row.heads, row.heads_source, row.heads_date = summary, path, date
        self._register_file(row, config, payload, path, date)

    # -- shared helpers

    def _register_file(self, row: Row, config: Mapping, payload: Mapping, path: Path, date: float | None) -> None:
        self._add_identity(row, config)
        # k describes the accuracy columns; a heads file's k is that of its own ablation experiment
        ks = [] if payload.get("kind") == "falsedemo.heads" else config.get("k")
        for k in ks if isinstance(ks, list) else [ks]:
            if _integer(k):
                row.k.add(_integer(k))
        source = _data_source_text(config.get("data_source"))
        if source:
            row.data_sources.add(source)
        versions = config.get("versions") if isinstance(config.get("versions"), dict) else {}
        for name, value in versions.items():
            lowered = str(name).lower().replace("-", "_")
            if "transformers" in lowered:
                self._add_version(row, "transformers", value)
            elif "false_demos" in lowered or "falsedemo" in lowered or "plugin" in lowered:
                self._add_version(row, "plugin", value)
            elif "lm_eval" in lowered:
                self._add_version(row, "lm_eval", value)
        if date:
            row.dates.append(date)
        row.files.add(path)
        self.files_read.append(path)

    def _row(self, model: Any, model_args: Any, path: Path) -> Row:
        args = parse_model_args(model_args)
        if args is None:
            raise _SkipFile(f"model_args is neither a string nor an object: {model_args!r:.80}")
        checkpoint = None
        for name in CHECKPOINT_ARGS:
            if args.get(name):
                checkpoint = args.pop(name)
                break
        model_type = _text(model)
        checkpoint = checkpoint or model_type
        if not checkpoint:
            raise _SkipFile("no model name (config.model and model_args are empty)")
        key_args = tuple(sorted((name, value) for name, value in args.items() if name not in RUNTIME_ONLY_ARGS))
        key = (checkpoint, key_args)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = Row(checkpoint=checkpoint, args=key_args)
        if model_type:
            row.model_types.add(model_type)
        if args.get("revision") and args["revision"] != "main":
            row.identities.add(("revision", f"revision:{args['revision']}"))
        return row

    def _put(self, table: dict, key: tuple[str, str], measurement: Measurement, row: Row, what: str) -> None:
        previous = table.get(key)
        if previous is not None:
            older, newer = sorted([previous, measurement], key=lambda m: (m.date or 0, str(m.source)))
            self.warn(
                f"duplicate {what} for {row.checkpoint} [{row.config_text}] {key[0]}/{key[1]}: "
                f"{older.source} ({older.value:.4f}) and {newer.source} ({newer.value:.4f}); keeping the newer "
                f"{newer.source}"
            )
            measurement = newer
        table[key] = measurement

    @staticmethod
    def _add_identity(row: Row, config: Mapping[str, Any]) -> None:
        """Checkpoint identity, parameters and layers, wherever the writer nested them.

        lm-eval puts ``model_sha`` / ``model_num_parameters`` at the top of ``config`` and our model
        wrappers add ``falsedemo.{num_layers, model_identity.gguf_sha256}``; a sweep keeps
        ``num_layers`` and ``model_identity.{kind, sha256, embedded.gguf_sha256, lm_eval_model_info}``.
        """
        for node in _walk_objects(config):
            gguf = _text(node.get("gguf_sha256")) or (_text(node.get("sha256")) if node.get("kind") == "gguf" else None)
            if gguf:
                file = _text(node.get("gguf_file")) or (Path(node["path"]).name if _text(node.get("path")) else None)
                row.identities.add(("gguf", f"GGUF {file} sha256:{gguf}" if file else f"GGUF sha256:{gguf}"))
            if node.get("kind") == "local_folder" and _text(node.get("sha256")):
                row.identities.add(("folder", f"local folder sha256:{_text(node.get('sha256'))}"))
            if _text(node.get("model_sha")):
                row.identities.add(("sha", f"sha:{_text(node.get('model_sha'))}"))
            revision = _text(node.get("model_revision")) or (_text(node.get("revision")) if node.get("kind") == "hub" else None)
            if revision and revision != "main":
                row.identities.add(("revision", f"revision:{revision}"))
            parameters = _integer(node.get("model_num_parameters"))
            if parameters and parameters > 0:
                row.parameters.add(parameters)
            layers = _integer(node.get("num_layers"))
            if layers and layers > 0:
                row.layers.add(layers)

    @staticmethod
    def _add_version(row: Row, which: str, value: Any) -> None:
        text = _text(value)
        if text:
            row.versions[which].add(text)

    # ----------------------------------------------------------------------------------- summaries

    def accuracy(self, row: Row, dataset: str, setting: str) -> Measurement | None:
        """lm-eval's own result if there is one, else the sweep's final layer (the model's real output)."""
        return row.lm_eval.get((dataset, setting)) or row.sweep_final.get((dataset, setting))

    def summarise(self, row: Row) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "model": row.checkpoint,
            "config": row.config_text,
            "model_type": ", ".join(sorted(row.model_types)),
            "identity": _identity_text(row.identities),
            "parameters": _single(row.parameters),
            "layers": _single(row.layers),
            "k": _joined(row.k),
            "data_source": _joined(row.data_sources),
        }
        per_setting: dict[str, dict[str, float]] = {}
        sizes: set[int] = set()
        for setting in SETTINGS_SHOWN:
            values = {}
            for dataset in MAIN_DATASETS:
                measurement = self.accuracy(row, dataset, setting)
                if measurement is not None:
                    values[dataset] = measurement.value
                    if measurement.n:
                        sizes.add(measurement.n)
            per_setting[setting] = values
            summary[f"{setting}_acc"] = _mean(values.values())
            summary[f"{setting}_datasets"] = len(values)
        summary["n_per_dataset"] = (
            None if not sizes else str(min(sizes)) if len(sizes) == 1 else f"{min(sizes)}-{max(sizes)}"
        )
        for setting in CORRUPTED_SETTINGS:
            # Paired: only datasets run in both settings, so a missing dataset cannot fake a gap.
            paired = [per_setting["correct"][d] - per_setting[setting][d] for d in per_setting[setting] if d in per_setting["correct"]]
            summary[f"gap_{setting}"] = _mean(paired)
            summary[f"gap_{setting}_datasets"] = len(paired)
        summary.update(sweep_summary(row.sweep))
        heads = row.heads or {}
        summary["false_heads"] = heads.get("top_k")
        summary["heads_gap_recovered"] = heads.get("gap_recovered")
        summary["random_heads_gap_recovered"] = heads.get("random_gap_recovered")
        summary["random_heads_gap_recovered_sd"] = heads.get("random_gap_recovered_sd")
        summary["heads_pooled_gap_recovered"] = heads.get("pooled_gap_recovered")
        summary["random_heads_pooled_gap_recovered"] = heads.get("random_pooled_gap_recovered")
        summary["random_heads_pooled_gap_recovered_sd"] = heads.get("random_pooled_gap_recovered_sd")
        for which in ("plugin", "lm_eval", "transformers"):
            summary[f"{which}_version"] = _joined(row.versions[which])
        summary["date"] = (
            datetime.fromtimestamp(max(row.dates), tz=timezone.utc).strftime("%Y-%m-%d") if row.dates else None
        )
        summary["files"] = len(row.files)
        return summary

    def ordered_rows(self) -> list[Row]:
        """Rows that at least one file filled, by model then config (the page sorts on demand)."""
        return [self.rows[key] for key in sorted(self.rows) if self.rows[key].files]

    def table(self) -> list[dict[str, Any]]:
        return [self.summarise(row) for row in self.ordered_rows()]


class _SkipFile(Exception):
    """A results file that cannot be used as a whole; the message says why."""


# ------------------------------------------------------------------------------------- sweep maths


def mean_curves(sweep: Mapping[str, Any] | None) -> dict[str, list[float]]:
    """Per setting, the per-layer calibrated accuracy averaged over the main datasets the sweep ran."""
    if not sweep:
        return {}
    curves = sweep["curves"]
    result = {}
    for setting in SETTINGS_SHOWN:
        chosen = [curves[(dataset, setting)] for dataset in MAIN_DATASETS if (dataset, setting) in curves]
        if chosen:
            result[setting] = [sum(values) / len(chosen) for values in zip(*chosen)]
    return result


def sweep_summary(sweep: Mapping[str, Any] | None) -> dict[str, Any]:
    """Critical layer, early-exit layer and gain on permuted prompts, from the mean curves.

    The sweep's own ``summary`` is used when it states them; otherwise they follow the paper
    (spec section 5) on the mean curves over the main datasets: the critical layer is the first
    layer where the correct-minus-permuted gap reaches half its final-layer value, the early-exit
    layer maximises permuted accuracy, and the gain is its permuted accuracy minus the final layer's.
    """
    empty = {"critical_layer": None, "early_exit_layer": None, "early_exit_gain": None, "sweep_datasets": 0}
    if not sweep:
        return empty
    curves = mean_curves(sweep)
    datasets = sorted({d for d, s in sweep["curves"] if s == "permuted" and (d, "correct") in sweep["curves"] and d in MAIN_DATASETS})
    result = dict(empty, sweep_datasets=len(datasets))
    stated = sweep.get("summary") or {}
    for source in (stated, stated.get("permuted") if isinstance(stated.get("permuted"), dict) else {}):
        for name in ("critical_layer", "early_exit_layer", "early_exit_gain"):
            value = source.get(name)
            if result[name] is None and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                result[name] = value
    if "correct" in curves and "permuted" in curves:
        correct, permuted = _paired_mean_curves(sweep, "correct", "permuted")
        if result["critical_layer"] is None:
            result["critical_layer"] = critical_layer(correct, permuted)
        best = max(range(len(permuted)), key=lambda layer: (permuted[layer], -layer))
        if result["early_exit_layer"] is None:
            result["early_exit_layer"] = best
        if result["early_exit_gain"] is None:
            result["early_exit_gain"] = permuted[best] - permuted[-1]
    return result


def _paired_mean_curves(sweep, first: str, second: str) -> tuple[list[float], list[float]]:
    curves = sweep["curves"]
    datasets = [d for d in MAIN_DATASETS if (d, first) in curves and (d, second) in curves]
    def average(setting):
        return [sum(values) / len(datasets) for values in zip(*(curves[(d, setting)] for d in datasets))]
    return (average(first), average(second)) if datasets else ([], [])


def critical_layer(correct: list[float], corrupted: list[float]) -> int | None:
    """First layer whose gap reaches half of the final-layer gap (None without a positive final gap)."""
    if not correct or not corrupted:
        return None
    gaps = [c - w for c, w in zip(correct, corrupted)]
    if gaps[-1] <= 0:
        return None
    return next(layer for layer, gap in enumerate(gaps) if gap >= gaps[-1] / 2)


def _heads_evaluation(evaluation: Mapping[str, Any]) -> dict[str, float | None]:
    """Mean gap recovered by the top heads and by random heads, in the layouts heads.py may write."""
    def find(*paths):
        for path in paths:
            value: Any = evaluation
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            number = _number(value)
            if number is not None:
                return number
        return None

    pooled, random_pooled, random_pooled_sd = _pooled_heads_evaluation(evaluation.get("datasets"))
    return {
        "pooled_gap_recovered": pooled,
        "random_pooled_gap_recovered": random_pooled,
        "random_pooled_gap_recovered_sd": random_pooled_sd,
        "gap_recovered": find(
            ("mean_gap_recovered",), ("gap_recovered", "mean"), ("gap_recovered_mean",), ("top_k", "mean"),
            ("heads", "mean"), ("gap_recovered",),
        ),
        "random_gap_recovered": find(
            ("random_control", "mean"), ("random", "mean"), ("random_gap_recovered", "mean"),
            ("random_mean",), ("random_gap_recovered",),
        ),
        "random_gap_recovered_sd": find(
            ("random_control", "sd"), ("random", "sd"), ("random_gap_recovered", "sd"), ("random_sd",),
            ("random_control", "std"), ("random", "std"),
        ),
    }


def _pooled_heads_evaluation(per_dataset) -> tuple[float | None, float | None, float | None]:
    """Pooled gap recovered by the top heads, and the random draws' mean and sd, from the per-dataset entries
    (None when the file lacks them, e.g. a heads file without --evaluate)."""
    if not isinstance(per_dataset, dict) or not per_dataset:
        return None, None, None
    try:
        top, draws = pooled_gap_recovered_by_condition(per_dataset)
    except (KeyError, TypeError, IndexError):
        return None, None, None
    draws = [value for value in draws if math.isfinite(value)]
    return (
        _number(top),
        _number(statistics.fmean(draws)) if draws else None,
        _number(statistics.stdev(draws)) if len(draws) > 1 else None,
    )


# ---------------------------------------------------------------------------------- small parsers


def parse_task_name(task: str) -> tuple[str, str] | None:
    """``falsedemo_tweet_eval_hate_permuted`` -> ``("tweet_eval_hate", "permuted")``."""
    if not isinstance(task, str) or not task.startswith(TASK_PREFIX):
        return None
    dataset, _, setting = task[len(TASK_PREFIX):].rpartition("_")
    return (dataset, setting) if dataset and setting else None


def parse_model_args(model_args: Any) -> dict[str, str] | None:
    """lm-eval model args (``"a=1,b=2"`` or a dict) as ``{name: text}``; None if neither."""
    if model_args is None:
        return {}
    if isinstance(model_args, dict):
        return {str(name).strip(): _arg_text(value) for name, value in model_args.items() if str(name).strip()}
    if isinstance(model_args, str):
        parsed = {}
        for part in model_args.split(","):
            name, sep, value = part.partition("=")
            if name.strip():
                parsed[name.strip()] = value.strip() if sep else ""
        return parsed
    return None


def _arg_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or value is None:
        return str(value)
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _check_format(payload: Mapping[str, Any]) -> None:
    version = payload.get("format_version")
    if version != SUPPORTED_FORMAT_VERSION:
        raise _SkipFile(f"{payload.get('kind')} format_version {version!r} (this reader knows {SUPPORTED_FORMAT_VERSION})")


def _mapping(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise _SkipFile(f"missing or malformed {name!r} (partial file?)")
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _accuracy(value: Any) -> float | None:
    number = _number(value)
    return number if number is not None and 0.0 <= number <= 1.0 else None


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _curve(value: Any) -> list[float] | None:
    if not isinstance(value, list) or len(value) < 2:
        return None
    curve = [_accuracy(item) for item in value]
    return None if any(item is None for item in curve) else curve


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return " ".join(value.split())
    return None


def _first(mapping: Mapping[str, Any], names: Iterable[str]) -> Any:
    for name in names:
        if isinstance(mapping, dict) and mapping.get(name) not in (None, ""):
            return mapping[name]
    return None


def _data_source_text(source: Any) -> str | None:
    """``hub``, or ``local`` for a folder: a machine's paths say nothing to a reader.

    Accepts the sweep's ``{"kind": "local", "path": ...}`` as well as plain text.
    """
    if isinstance(source, dict):
        source = source.get("kind")
    source = _text(source)
    if source is None:
        return None
    lowered = source.lower()
    if lowered.startswith("hub") or lowered.startswith("hf"):
        return "hub"
    if lowered.startswith("local") or "/" in source or "\\" in source:
        return "local"
    return source


def _date_of(config: Mapping[str, Any]) -> float | None:
    value = _first(config, ("date", "timestamp", "created"))
    if _number(value) is not None:
        return _number(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return _date_from_name(Path(value))
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    return None


def _date_from_name(path: Path) -> float | None:
    """lm-eval and results_io name files and folders by UTC timestamp: use it when nothing else says."""
    match = _TIMESTAMP_IN_NAME.search(str(path))
    if not match:
        return None
    day, hour, minute, second = match.groups()
    try:
        return datetime.fromisoformat(f"{day}T{hour}:{minute}:{second}+00:00").timestamp()
    except ValueError:
        return None


def _date_key(item: tuple[float, Path | None]) -> tuple[float, str]:
    return item[0], str(item[1])


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


IDENTITY_PRECEDENCE = ("gguf", "sha", "revision", "folder")


def _identity_text(identities: set[tuple[str, str]]) -> str:
    """The most exact identity recorded: a GGUF file hash, else the hub commit sha, else the requested
    revision, else a local folder's digest (a converted GGUF folder's digest says less than its file's)."""
    for kind in IDENTITY_PRECEDENCE:
        texts = sorted(text for found, text in identities if found == kind)
        if texts:
            return "; ".join(texts)
    return ""


def _walk_objects(value: Any) -> Iterable[dict]:
    """Every dict inside ``value`` (iterative: a hostile, deeply nested file cannot overflow the stack)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _single(values: set[int]) -> int | None:
    return max(values) if values else None


def _joined(values: set) -> str | None:
    return ", ".join(str(value) for value in sorted(values, key=str)) if values else None


# ----------------------------------------------------------------------------------------- columns


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    kind: str  # "text", "int", "acc" (3 decimals), "signed" (3 decimals with sign)
    description: str


COLUMNS = (
    Column("model", "model", "text", "checkpoint: model_args pretrained= (hub id, local path or packaged short name)"),
    Column("config", "config", "text", "the other model args that change results (exit_layer, heads, ...); rows are keyed by model + config"),
    Column("model_type", "lm-eval model", "text", "lm-eval model class(es) the row's files were run with"),
    Column("identity", "identity", "text", "exact checkpoint: hub revision / commit sha, or GGUF file hash, when recorded"),
    Column("parameters", "params", "int", "number of parameters"),
    Column("layers", "layers", "int", "number of transformer blocks L (lens layers 0..L)"),
    Column("k", "k", "text", "demonstrations per prompt"),
    Column("n_per_dataset", "N", "text", "queries per dataset (range if they differ)"),
    Column("data_source", "data", "text", "datasets from the hub or a local copy"),
    Column("correct_acc", "correct", "acc", "calibrated accuracy, correct demos, final layer, mean over the main datasets run"),
    Column("correct_datasets", "correct #", "int", "how many of the 14 main datasets the correct mean covers"),
    Column("permuted_acc", "permuted", "acc", "same, permuted labels"),
    Column("permuted_datasets", "permuted #", "int", "datasets in the permuted mean"),
    Column("random_acc", "random", "acc", "same, random labels"),
    Column("random_datasets", "random #", "int", "datasets in the random mean"),
    Column("half_acc", "half", "acc", "same, half-correct labels"),
    Column("half_datasets", "half #", "int", "datasets in the half mean"),
    Column("gap_permuted", "gap permuted", "signed", "mean over datasets run in both settings of correct minus permuted"),
    Column("gap_random", "gap random", "signed", "mean of correct minus random (paired datasets)"),
    Column("gap_half", "gap half", "signed", "mean of correct minus half (paired datasets)"),
    Column("critical_layer", "critical layer", "int", "first layer where the mean correct-permuted gap reaches half its final value (sweep)"),
    Column("early_exit_layer", "early-exit layer", "int", "layer maximising mean permuted accuracy (sweep)"),
    Column("early_exit_gain", "early-exit gain", "signed", "permuted accuracy at the early-exit layer minus at the final layer"),
    Column("false_heads", "false induction heads", "text", "top heads found by falsedemo heads (layer:head)"),
    Column("heads_pooled_gap_recovered", "heads gap recovered (pooled)", "signed", "share of the permuted gap, pooled over the evaluated datasets (1 - (mean correct - mean ablated) / (mean correct - mean permuted)), recovered by zeroing those heads"),
    Column("random_heads_pooled_gap_recovered", "random heads (pooled)", "signed", "same for random heads (mean over the seeded draws)"),
    Column("random_heads_pooled_gap_recovered_sd", "random sd (pooled)", "acc", "sd over the random draws of the pooled figure"),
    Column("heads_gap_recovered", "heads gap recovered (paper)", "signed", "mean over datasets of the per-dataset share of the gap recovered (the paper's ratio; a dataset with a tiny gap inflates it)"),
    Column("random_heads_gap_recovered", "random heads (paper)", "signed", "same for random heads (control mean)"),
    Column("random_heads_gap_recovered_sd", "random sd (paper)", "acc", "sd of the random-head control"),
    Column("plugin_version", "plugin", "text", "lm_eval_false_demos version"),
    Column("lm_eval_version", "lm-eval", "text", "lm-eval version"),
    Column("transformers_version", "transformers", "text", "transformers version"),
    Column("date", "date", "text", "newest run date among the row's files (UTC)"),
    Column("files", "files", "int", "results files merged into the row"),
)

# The markdown table and the page fold the per-setting dataset counts into the accuracy cells
# ("0.644 (5/14)") to stay readable; the CSV and the page's embedded data keep them as columns.
COUNT_COLUMNS = {"correct_datasets", "permuted_datasets", "random_datasets", "half_datasets"}
MARKDOWN_SKIP = COUNT_COLUMNS | {"model_type", "files"}
PAGE_COLUMNS = tuple(column for column in COLUMNS if column.key not in COUNT_COLUMNS)


def format_cell(column: Column, value: Any, summary: Mapping[str, Any] | None = None) -> str:
    if value is None or value == "":
        return ""
    if column.kind == "acc":
        return f"{value:.3f}"
    if column.kind == "signed":
        return f"{value:+.3f}"
    if column.kind == "int" and isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _with_count(column: Column, summary: Mapping[str, Any]) -> str:
    text = format_cell(column, summary[column.key])
    setting = column.key[: -len("_acc")] if column.key.endswith("_acc") else None
    if text and setting in SETTINGS_SHOWN:
        text += f" ({summary[f'{setting}_datasets']}/{len(MAIN_DATASETS)})"
    return text


# ----------------------------------------------------------------------------------------- writers


def render_markdown(summaries: list[dict[str, Any]]) -> str:
    columns = [column for column in COLUMNS if column.key not in MARKDOWN_SKIP]
    matrix = [[_markdown_cell(_with_count(column, summary)) for column in columns] for summary in summaries]
    headers = [column.header for column in columns]
    try:
        from pytablewriter import MarkdownTableWriter
    except ImportError:  # lm-eval depends on it; plain markdown keeps the command working without it
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in matrix]
        table = "\n".join(lines) + "\n"
    else:
        writer = MarkdownTableWriter(headers=headers, value_matrix=matrix or [[""] * len(headers)], margin=1)
        # Cells are preformatted text; pytablewriter must not reinterpret "0.500 (14/14)" or "+.1".
        writer.type_hints = [_StringType] * len(headers)
        table = writer.dumps()
    legend = "\n".join(f"- **{html.escape(column.header)}**: {html.escape(column.description)}" for column in columns)
    return (
        "# Overthinking leaderboard\n\n"
        f"Calibrated accuracy, final layer, mean over the {len(MAIN_DATASETS)} main datasets "
        "(the count in brackets says how many were run).\n\n" + table + "\n" + legend + "\n"
    )


try:
    from typepy import String as _StringType
except ImportError:  # pragma: no cover - typepy comes with pytablewriter
    _StringType = None


def _markdown_cell(text: str) -> str:
    # html.escape keeps a hostile "<script>" visible as text on renderers that allow inline HTML.
    return html.escape(" ".join(text.split()), quote=False)


def _csv_cell(column: Column, value: Any) -> Any:
    if value is None:
        return ""
    if column.kind in ("acc", "signed"):
        return repr(round(float(value), 6))
    if column.kind == "int":
        return str(int(value)) if isinstance(value, (int, float)) else str(value)
    text = str(value)
    # A cell starting with = + - @ is run as a formula by spreadsheets: quote it as text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_outputs(board: Leaderboard, output: Path) -> dict[str, Path]:
    summaries = board.table()
    output.mkdir(parents=True, exist_ok=True)
    # These files are regenerated from the results folders on every build: replacing them is the point.
    paths = {
        "markdown": write_text_atomic(output / OUTPUT_NAMES["markdown"], render_markdown(summaries), overwrite=True),
        "csv": write_csv_atomic(
            output / OUTPUT_NAMES["csv"],
            [column.key for column in COLUMNS],
            [[_csv_cell(column, summary[column.key]) for column in COLUMNS] for summary in summaries],
            overwrite=True,
        ),
        "html": write_text_atomic(output / OUTPUT_NAMES["html"], render_html(board, summaries), overwrite=True),
    }
    return paths


# -------------------------------------------------------------------------------------------- HTML

PAGE_TEMPLATE = "leaderboard_page.html"
SETTING_COLOURS = {"correct": "#1b7837", "permuted": "#c51b7d", "random": "#e08214", "half": "#2166ac"}


def embed_json(payload: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``</script>``, ``<!--`` or entities."""
    text = json.dumps(payload, ensure_ascii=True, allow_nan=False, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render_html(board: Leaderboard, summaries: list[dict[str, Any]]) -> str:
    template = (Path(__file__).with_name(PAGE_TEMPLATE)).read_text(encoding="utf-8")
    columns = PAGE_COLUMNS
    head = "".join(
        f'<th scope="col" data-key="{html.escape(c.key)}" data-kind="{c.kind}" title="{html.escape(c.description)}">'
        f'<button type="button">{html.escape(c.header)}</button></th>'
        for c in columns
    )
    body_rows = []
    figures = []
    for index, (row, summary) in enumerate(zip(board.ordered_rows(), summaries)):
        cells = []
        for column in columns:
            text = html.escape(_with_count(column, summary))
            # long identities and configs are cut with an ellipsis by the style: the tooltip shows them whole
            title = f' title="{text}"' if column.kind == "text" and text else ""
            if column.key == "model" and row.sweep:
                text = f'<a href="#curves-{index}">{text}</a>'
            cells.append(f"<td{title}>{text}</td>")
        body_rows.append(f'<tr data-row="{index}">' + "".join(cells) + "</tr>")
        if row.sweep:
            figures.append(_curves_figure(index, summary, row))
    data = [{column.key: _json_value(summary[column.key]) for column in COLUMNS} for summary in summaries]
    warnings = "".join(f"<li>{html.escape(message)}</li>" for message in board.warnings)
    legend = "".join(
        f"<dt>{html.escape(c.header)}</dt><dd>{html.escape(c.description)}</dd>" for c in columns
    )
    replacements = {
        "{{TITLE}}": "Overthinking leaderboard",
        "{{MAIN_COUNT}}": str(len(MAIN_DATASETS)),
        "{{ROW_COUNT}}": str(len(summaries)),
        "{{TABLE_HEAD}}": head,
        "{{TABLE_BODY}}": "\n".join(body_rows),
        "{{FIGURES}}": "\n".join(figures) or "<p>No sweep results: run <code>falsedemo sweep</code> for layer curves.</p>",
        "{{LEGEND}}": legend,
        "{{WARNINGS}}": f"<details><summary>{len(board.warnings)} input warnings</summary><ul>{warnings}</ul></details>"
        if board.warnings else "",
        "{{DATA}}": embed_json(data),
    }
    for marker, value in replacements.items():
        template = template.replace(marker, value)
    return template


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _curves_figure(index: int, summary: Mapping[str, Any], row: Row) -> str:
    curves = mean_curves(row.sweep)
    title = html.escape(f"{summary['model']} [{summary['config']}]")
    chance = [value for dataset, value in row.sweep["chance"].items() if dataset in MAIN_DATASETS]
    svg = render_curves_svg(
        curves,
        chance=sum(chance) / len(chance) if chance else None,
        critical=summary.get("critical_layer"),
        early_exit=summary.get("early_exit_layer"),
        label=f"Mean calibrated accuracy by layer, {summary['model']}",
    )
    datasets = summary.get("sweep_datasets")
    return (
        f'<figure class="curves" id="curves-{index}"><figcaption>{title} '
        f'<span class="muted">({datasets} datasets with correct and permuted curves)</span></figcaption>{svg}</figure>'
    )


def render_curves_svg(
    curves: Mapping[str, list[float]], critical: Any = None, early_exit: Any = None, chance: float | None = None,
    label: str = "",
    width: int = 420, height: int = 260,
) -> str:
    """A small line plot (mean accuracy by layer, one line per setting) as inline SVG text."""
    left, right, top, bottom = 44, 100, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    layers = max(len(curve) for curve in curves.values()) - 1 if curves else 1
    values = [v for curve in curves.values() for v in curve] + ([chance] if chance is not None else [])
    low = math.floor(min(values, default=0.0) * 10) / 10
    high = math.ceil(max(values, default=1.0) * 10) / 10
    if high - low < 0.1:
        high = min(1.0, low + 0.1) if low + 0.1 <= 1.0 else high
        low = high - 0.1
    def x(layer: float) -> float:
        return left + plot_w * layer / max(layers, 1)
    def y(value: float) -> float:
        return top + plot_h * (1 - (value - low) / (high - low))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(label)}">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#888"/>',
    ]
    steps = 5
    for i in range(steps + 1):
        value = low + (high - low) * i / steps
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.2f}</text>')
    tick_step = max(1, math.ceil(layers / 8))
    for layer in range(0, layers + 1, tick_step):
        parts.append(f'<text x="{x(layer):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{layer}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">layer</text>')
    for name, value, dash in (("critical", critical, "4 3"), ("early exit", early_exit, "1 3")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= layers:
            parts.append(
                f'<line class="marker" x1="{x(value):.1f}" x2="{x(value):.1f}" y1="{top}" y2="{top + plot_h}" '
                f'stroke="#555" stroke-dasharray="{dash}"><title>{name} layer {value}</title></line>'
            )
    if chance is not None:
        parts.append(
            f'<line class="chance" x1="{left}" x2="{left + plot_w}" y1="{y(chance):.1f}" y2="{y(chance):.1f}" '
            f'stroke="#999" stroke-dasharray="6 3"><title>chance (mean 1/K) {chance:.3f}</title></line>'
        )
    legend_y = top + 6
    for setting in SETTINGS_SHOWN:
        curve = curves.get(setting)
        if not curve:
            continue
        colour = SETTING_COLOURS[setting]
        points = " ".join(f"{x(layer):.1f},{y(value):.1f}" for layer, value in enumerate(curve))
        parts.append(
            f'<polyline class="curve" data-setting="{setting}" fill="none" stroke="{colour}" stroke-width="2" '
            f'points="{points}"><title>{setting}</title></polyline>'
        )
        legend_y += 16
        parts.append(f'<line x1="{left + plot_w + 8}" x2="{left + plot_w + 24}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{left + plot_w + 28}" y="{legend_y}">{setting}</text>')
    markers = [("critical", "4 3", "#555"), ("early exit", "1 3", "#555")]
    if chance is not None:
        markers.append(("chance", "6 3", "#999"))
    for name, dash, colour in markers:
        legend_y += 16
        parts.append(f'<line x1="{left + plot_w + 8}" x2="{left + plot_w + 24}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="{colour}" stroke-dasharray="{dash}"/>')
        parts.append(f'<text x="{left + plot_w + 28}" y="{legend_y}">{name}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results", nargs="+", required=True, metavar="PATH",
        help="folders (searched recursively for *.json) or files: lm-eval results_*.json, sweep.json, heads.json",
    )
    parser.add_argument(
        "--output", default="leaderboard", metavar="DIR",
        help=f"folder for {OUTPUT_NAMES['markdown']}, {OUTPUT_NAMES['csv']} and {OUTPUT_NAMES['html']} "
        "(replaced on every build; default: leaderboard)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 if any input file was skipped or duplicated",
    )


def build(results: Iterable[str | Path], output: str | Path) -> tuple[Leaderboard, dict[str, Path]]:
    board = Leaderboard()
    board.add_paths(results)
    return board, write_outputs(board, Path(output))


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    board, paths = build(args.results, args.output)
    print(
        f"{len(board.ordered_rows())} rows from {len(set(board.files_read))} files, {len(board.warnings)} warnings; wrote "
        + ", ".join(os.fspath(path) for path in paths.values())
    )
    return 1 if args.strict and board.warnings else 0
