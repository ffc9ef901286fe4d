"""``sweep.json`` read back typed: the configuration, each task's per-layer curves, each dataset's derived numbers
and the run summary, as ``integrations.sweep.run_sweep`` builds them and ``results.sweep_files`` writes them.

The records here are what a file of any vintage holds (numbers may be missing); the exact results a run
computes are :mod:`lm_eval_false_demos.analysis.sweep_results`, whose ``to_json`` writes the layout read here.

Versions read: ``format_version`` 1, in every layout written so far (``datasets``, ``summary`` and
``summary.mean_by_setting`` are absent from the earliest files, ``per_position`` and ``label_words`` from some,
``datasets.<d>.prediction_metrics``, ``summary.prediction_metrics`` and a task's ``wrong_share`` from files
written before issue 23).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lm_eval_false_demos.results.schema import (
    RunConfig,
    SchemaError,
    at_path,
    check_header,
    curve,
    integer,
    interval,
    number,
    numbers,
    read_fields,
    read_object,
    section,
    string,
    text,
)

KIND = "falsedemo.sweep"
FORMAT_VERSIONS = (1,)  # every version integrations.sweep has written
CURVE_METRIC = "calibrated_acc"  # the curve every task has; the others (acc, follow_acc) are in per_layer


@dataclass(frozen=True)
class SweepConfig(RunConfig):
    date: float | None  # config.date: seconds since the epoch
    k: tuple[int, ...]  # demonstrations per prompt, over the tasks
    fewshot_seed: int | None  # config.seed.fewshot
    limit: float | None = None  # config.limit: queries per task asked for (None: all)

    @classmethod
    def from_json(cls, config: Mapping[str, Any], path: str | Path) -> "SweepConfig":
        ks = config.get("k") if isinstance(config.get("k"), list) else []
        seed = config.get("seed") if isinstance(config.get("seed"), dict) else {}
        return cls(**RunConfig.fields_from_json(config, path), date=number(config.get("date")),
                   k=tuple(k for k in map(integer, ks) if k), fewshot_seed=integer(seed.get("fewshot")),
                   limit=number(config.get("limit")))


@dataclass(frozen=True)
class TaskRecord:
    """``tasks.<task>``: one task's metrics at every lens layer 0..L (the query's readout position)."""

    name: str
    dataset: str  # a dataset key, SST-2's formats as sst2_f<i>
    setting: str
    n: int | None
    k: int | None
    chance: float | None
    calibrated_acc: tuple[float, ...]  # per_layer.calibrated_acc, layers 0..L
    per_layer: Mapping[str, tuple[float | None, ...]]  # every metric recorded
    wrong_share: float | None = None  # a graded permuted task (setting "permuted@<share>"): percent shown wrong

    @classmethod
    def from_json(cls, name: str, entry: Any) -> "TaskRecord":
        """Raises ValueError naming what is missing (the caller skips the task, not the file)."""
        if not isinstance(entry, dict):
            raise ValueError(f"ignored task {name!r}: not an object")
        dataset, setting = string(entry.get("dataset")), string(entry.get("setting"))
        if dataset is None or setting is None:
            raise ValueError(f"ignored task {name!r}: no dataset and setting")
        per_layer = entry.get("per_layer") if isinstance(entry.get("per_layer"), dict) else {}
        calibrated = curve(per_layer.get(CURVE_METRIC))
        if calibrated is None:
            raise ValueError(f"ignored task {name}: per_layer.{CURVE_METRIC} is not a list of accuracies in [0, 1]")
        return cls(name, dataset, setting, integer(entry.get("n")), integer(entry.get("k")), number(entry.get("chance")),
                   calibrated, {metric: numbers(values) for metric, values in per_layer.items()},
                   number(entry.get("wrong_share")))


# ComparisonRecord's fields: the one path each is written at (analysis.sweep_results.SettingComparison.to_json)
_COMPARISON_FIELDS = {
    "n": ("n", integer),
    "critical_layer": ("critical_layer", integer),
    "early_exit_layer": ("early_exit_layer", integer),
    "early_exit_gain": ("early_exit_gain", number),
    "early_exit_accuracy": ("early_exit_accuracy", number),
    "last_correct": ("last_layer.correct", number),
    "last_corrupted": ("last_layer.corrupted", number),
    "last_gap": ("last_layer.gap", number),
    "held_out_early_exit_layer": ("held_out.early_exit_layer", integer),
    "held_out_early_exit_gain": ("held_out.early_exit_gain", number),
    "held_out_interval": ("held_out.interval", interval),
    "gap_per_layer": ("gap_per_layer", numbers),
}


@dataclass(frozen=True)
class ComparisonRecord:
    """Correct against one corrupted setting, paired query by query (``datasets.<d>.by_setting.<setting>``)."""

    n: int | None
    critical_layer: int | None  # first lens layer where the gap reaches half its last-layer value
    early_exit_layer: int | None
    early_exit_gain: float | None
    early_exit_accuracy: float | None
    last_correct: float | None  # last_layer.{correct, corrupted, gap}
    last_corrupted: float | None
    last_gap: float | None
    intervals: Mapping[str, tuple[float, float]]  # intervals.{correct, corrupted, gap, early_exit_gain}
    held_out_early_exit_layer: int | None  # held_out: the exit layer chosen on half the queries
    held_out_early_exit_gain: float | None
    held_out_interval: tuple[float, float] | None
    gap_per_layer: tuple[float | None, ...]

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> "ComparisonRecord":
        intervals = {name: found for name in ("correct", "corrupted", "gap", "early_exit_gain")
                     if (found := interval(at_path(entry, f"intervals.{name}"))) is not None}
        return cls(**read_fields(entry, _COMPARISON_FIELDS), intervals=intervals)


@dataclass(frozen=True)
class CurveRecord:
    """A metric over lens layers 0..L with its interval bounds per layer (None: undefined or not computed)."""

    value: tuple[float | None, ...]
    low: tuple[float | None, ...] | None
    high: tuple[float | None, ...] | None

    @classmethod
    def from_json(cls, entry: Any) -> "CurveRecord | None":
        if not isinstance(entry, dict) or not isinstance(entry.get("value"), list):
            return None
        bounds = [numbers(entry[name]) if isinstance(entry.get(name), list) else None for name in ("low", "high")]
        return cls(numbers(entry["value"]), *bounds)


@dataclass(frozen=True)
class PredictionMetricsRecord:
    """``datasets.<d>.prediction_metrics`` (analysis.prediction_curves): argmax-prediction metrics by setting."""

    prior_setting: str | None
    curves: Mapping[str, Mapping[str, CurveRecord]]  # setting -> metric -> curve (flip_rate, prior_alignment, ...)
    class_recall: Mapping[str, Mapping[str, CurveRecord]]  # setting -> label word -> curve
    absent: Mapping[str, Any]  # setting -> {metric: why}; "label_sensitivity": why
    wrong_shares: tuple[float, ...]  # label_sensitivity's grid (percent); empty without one
    sensitivity_slope: CurveRecord | None  # label_sensitivity.slope

    @classmethod
    def from_json(cls, entry: Any) -> "PredictionMetricsRecord | None":
        if not isinstance(entry, dict):
            return None
        settings = entry.get("settings") if isinstance(entry.get("settings"), dict) else {}
        curves, recall = {}, {}
        for label, values in settings.items():
            if not isinstance(values, dict):
                continue
            curves[label] = {name: found for name, value in values.items()
                             if name != "class_recall" and (found := CurveRecord.from_json(value)) is not None}
            words = values.get("class_recall") if isinstance(values.get("class_recall"), dict) else {}
            recall[label] = {word: found for word, value in words.items()
                             if (found := CurveRecord.from_json(value)) is not None}
        sensitivity = entry.get("label_sensitivity") if isinstance(entry.get("label_sensitivity"), dict) else {}
        return cls(
            prior_setting=string(entry.get("prior_setting")), curves=curves, class_recall=recall,
            absent=dict(entry.get("absent")) if isinstance(entry.get("absent"), dict) else {},
            wrong_shares=tuple(v for v in numbers(sensitivity.get("wrong_shares")) if v is not None),
            sensitivity_slope=CurveRecord.from_json(sensitivity.get("slope")),
        )


@dataclass(frozen=True)
class DatasetRecord:
    """``datasets.<d>``: one dataset's derived numbers; a dataset without a correct and a corrupted setting has
    only ``tasks`` and a ``note``."""

    dataset: str
    tasks: Mapping[str, str]  # setting -> task name
    k: int | None
    num_classes: int | None
    note: str | None
    corrupted_setting: str | None  # the headline's (permuted when run)
    headline: ComparisonRecord | None  # the entry's flat fields: by_setting[corrupted_setting]
    by_setting: Mapping[str, ComparisonRecord]
    prediction_metrics: PredictionMetricsRecord | None = None  # None in files written before them

    @property
    def critical_layer(self) -> int | None:
        return self.headline.critical_layer if self.headline is not None else None

    @classmethod
    def from_json(cls, dataset: str, entry: Mapping[str, Any], path: str | Path) -> "DatasetRecord":
        tasks = section(entry, "tasks", path)
        by_setting = section(entry, "by_setting", path)
        for setting, comparison in by_setting.items():
            if not isinstance(comparison, dict):
                raise SchemaError(path, f"datasets.{dataset}.by_setting.{setting} is not an object")
        return cls(
            dataset=dataset,
            tasks={str(setting): str(name) for setting, name in tasks.items()},
            k=integer(entry.get("k")),
            num_classes=integer(entry.get("num_classes")),
            note=text(entry.get("note")),
            corrupted_setting=string(entry.get("corrupted_setting")),
            headline=ComparisonRecord.from_json(entry) if by_setting else None,
            by_setting={setting: ComparisonRecord.from_json(comparison) for setting, comparison in by_setting.items()},
            prediction_metrics=PredictionMetricsRecord.from_json(entry.get("prediction_metrics")),
        )


@dataclass(frozen=True)
class SettingMeans:
    """``summary.mean_by_setting.<setting>``: per-dataset numbers averaged over the datasets with them."""

    datasets: int | None
    correct: float | None
    corrupted: float | None
    gap: float | None
    early_exit_gain: float | None
    held_out_early_exit_gain: float | None


@dataclass(frozen=True)
class SettingHeadline:
    """``summary.<setting>``: the paper's headline on the main datasets' mean curves."""

    datasets: tuple[str, ...]
    correct_last: float | None
    corrupted_last: float | None
    gap: float | None
    critical_layer: int | None
    early_exit_layer: int | None
    early_exit_gain: float | None


SUMMARY_SECTIONS = ("datasets", "mean_by_setting", "prediction_metrics")  # the rest are headlines by setting


@dataclass(frozen=True)
class SweepSummary:
    datasets: tuple[str, ...]  # the datasets with derived numbers
    mean_by_setting: Mapping[str, SettingMeans]
    headline: Mapping[str, SettingHeadline]  # by corrupted setting: summary.<setting>
    # summary.prediction_metrics: setting -> metric -> mean curve over the main datasets (empty in older files)
    prediction_curves: Mapping[str, Mapping[str, tuple[float | None, ...]]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, summary: Mapping[str, Any], path: str | Path) -> "SweepSummary":
        means = section(summary, "mean_by_setting", path)
        headline = {key: value for key, value in summary.items() if key not in SUMMARY_SECTIONS}
        for key, value in (*means.items(), *headline.items()):
            if not isinstance(value, dict):
                raise SchemaError(path, f"summary entry {key!r} is not an object")
        return cls(
            datasets=_names(summary.get("datasets")),
            mean_by_setting={setting: SettingMeans(
                integer(value.get("datasets")), number(value.get("correct")), number(value.get("corrupted")),
                number(value.get("gap")), number(value.get("early_exit_gain")),
                number(value.get("held_out_early_exit_gain"))) for setting, value in means.items()},
            headline={setting: SettingHeadline(
                _names(value.get("datasets")), number(value.get("correct_last")), number(value.get("corrupted_last")),
                number(value.get("gap")), integer(value.get("critical_layer")), integer(value.get("early_exit_layer")),
                number(value.get("early_exit_gain"))) for setting, value in headline.items()},
            prediction_curves=_mean_curves(summary.get("prediction_metrics")),
        )


@dataclass(frozen=True)
class SweepFile:
    """A whole ``sweep.json``. ``tasks`` holds the usable tasks; ``ignored`` says why any other was left out."""

    path: str
    format_version: int
    config: SweepConfig
    tasks: Mapping[str, TaskRecord]
    ignored: tuple[str, ...]
    datasets: Mapping[str, DatasetRecord]
    summary: SweepSummary

    @classmethod
    def load(cls, path: str | Path) -> "SweepFile":
        return cls.from_json(read_object(path, KIND), path)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any], path: str | Path = "<sweep.json>") -> "SweepFile":
        version = check_header(payload, KIND, FORMAT_VERSIONS, path)
        config = SweepConfig.from_json(section(payload, "config", path, required=True), path)
        tasks, ignored = {}, []
        for name, entry in sorted(section(payload, "tasks", path, required=True).items()):
            try:
                tasks[name] = TaskRecord.from_json(name, entry)
            except ValueError as problem:
                ignored.append(str(problem))
        datasets = section(payload, "datasets", path)
        for dataset, entry in datasets.items():
            if not isinstance(entry, dict):
                raise SchemaError(path, f"datasets.{dataset} is not an object")
        return cls(
            path=str(path), format_version=version, config=config, tasks=tasks, ignored=tuple(ignored),
            datasets={dataset: DatasetRecord.from_json(dataset, entry, path) for dataset, entry in datasets.items()},
            summary=SweepSummary.from_json(section(payload, "summary", path), path),
        )


def _mean_curves(value: Any) -> dict[str, dict[str, tuple[float | None, ...]]]:
    if not isinstance(value, dict):
        return {}
    return {setting: {name: numbers(curve.get("value")) for name, curve in metrics.items() if isinstance(curve, dict)}
            for setting, metrics in value.items() if isinstance(metrics, dict)}


def _names(value: Any) -> tuple[str, ...]:
    return tuple(item for item in value if isinstance(item, str)) if isinstance(value, list) else ()
