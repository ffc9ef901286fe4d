"""Typed results of a sweep's analysis (:mod:`.layer_curves`) and their ``sweep.json`` layout.

Each type's ``to_json`` gives exactly the dict ``sweep.json`` holds (format_version 1): key names and order,
and optional numbers left out rather than written as null where the file always left them out. Layers are
lens layers 0..L throughout. Files are read back (any vintage, leniently) by
:mod:`lm_eval_false_demos.results.sweep_schema`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

Interval = tuple[float, float]


class _SetFieldsOnly:
    """``to_json``: the fields that are set, in declaration order (tuples as lists, as JSON has them); the file
    leaves a number out when it was not computed."""

    def to_json(self) -> dict[str, Any]:
        return {field.name: list(value) if isinstance(value, tuple) else value
                for field in dataclasses.fields(self) if (value := getattr(self, field.name)) is not None}


@dataclasses.dataclass(frozen=True)
class HeldOutExit(_SetFieldsOnly):
    """The early-exit layer chosen on one seeded half of the queries, its gain reported on the other half."""

    seed: int
    choose_n: int
    report_n: int
    early_exit_layer: int | None = None
    gain_on_choosing_half: float | None = None
    early_exit_accuracy: float | None = None
    last_layer_accuracy: float | None = None
    early_exit_gain: float | None = None
    interval: Interval | None = None


@dataclasses.dataclass(frozen=True)
class Intervals(_SetFieldsOnly):
    """Paired-bootstrap percentile intervals over queries (None: not computed)."""

    confidence: float
    iterations: int
    seed: int
    correct: Interval | None = None
    corrupted: Interval | None = None
    gap: Interval | None = None
    early_exit_gain: Interval | None = None


@dataclasses.dataclass(frozen=True)
class SettingComparison:
    """Correct against one corrupted setting of one dataset, query by query."""

    n: int
    critical_layer: int | None  # None when the last-layer gap is not positive
    early_exit_layer: int
    early_exit_gain: float
    early_exit_accuracy: float
    last_correct: float
    last_corrupted: float
    last_gap: float
    gap_per_layer: tuple[float, ...]
    held_out: HeldOutExit
    intervals: Intervals
    gap_per_position: tuple[tuple[float, ...], ...] | None = None  # [L+1][k+1]

    def to_json(self) -> dict[str, Any]:
        payload = {
            "n": self.n,
            "critical_layer": self.critical_layer,
            "early_exit_layer": self.early_exit_layer,
            "early_exit_gain": self.early_exit_gain,
            "early_exit_accuracy": self.early_exit_accuracy,
            "last_layer": {"correct": self.last_correct, "corrupted": self.last_corrupted, "gap": self.last_gap},
            "gap_per_layer": list(self.gap_per_layer),
            "held_out": self.held_out.to_json(),
            "intervals": self.intervals.to_json(),
        }
        if self.gap_per_position is not None:
            payload["gap_per_position"] = [list(row) for row in self.gap_per_position]
        return payload


# A dataset's headline numbers are its primary corrupted setting's, repeated flat for readers.
HEADLINE_KEYS = ("critical_layer", "early_exit_layer", "early_exit_gain", "early_exit_accuracy", "last_layer",
                 "held_out", "intervals", "gap_per_layer", "gap_per_position", "n")


@dataclasses.dataclass(frozen=True)
class DatasetComparison:
    """One dataset's tasks and, when it has a correct and a corrupted setting, their comparisons."""

    tasks: Mapping[str, str]  # setting -> task name
    by_setting: Mapping[str, SettingComparison] = dataclasses.field(default_factory=dict)
    primary_setting: str | None = None  # the headline corrupted setting (permuted when present)
    num_classes: int | None = None
    k: int | None = None
    prediction_metrics: "PredictionMetrics | None" = None

    @property
    def primary(self) -> SettingComparison | None:
        return self.by_setting.get(self.primary_setting) if self.primary_setting else None

    def to_json(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"tasks": dict(self.tasks)}
        if self.primary is None:
            payload["note"] = "needs a correct and a corrupted setting of this dataset for the derived numbers"
            if self.prediction_metrics is not None:
                payload["prediction_metrics"] = self.prediction_metrics.to_json()
            return payload
        payload.update(num_classes=self.num_classes, chance=1.0 / self.num_classes, k=self.k,
                       corrupted_setting=self.primary_setting)
        headline = self.primary.to_json()
        payload.update({key: headline[key] for key in HEADLINE_KEYS})
        payload["by_setting"] = {setting: comparison.to_json() for setting, comparison in self.by_setting.items()}
        if self.prediction_metrics is not None:
            payload["prediction_metrics"] = self.prediction_metrics.to_json()
        return payload


@dataclasses.dataclass(frozen=True)
class TaskCurves:
    """One task's metric curves: per lens layer at the query, and per layer and readout position."""

    dataset: str
    setting: str
    n: int
    k: int
    num_classes: int
    label_words: tuple[str, ...]
    per_layer: Mapping[str, list[float]]  # metric -> [L+1]
    per_position: Mapping[str, Any]  # num_preceding_demos, readout, metric -> [L+1][k+1]
    wrong_share: float | None = None  # a graded permuted task (setting "permuted@<share>"): percent shown wrong

    def to_json(self) -> dict[str, Any]:
        payload = {"dataset": self.dataset, "setting": self.setting, "n": self.n, "k": self.k,
                   "num_classes": self.num_classes, "chance": 1.0 / self.num_classes,
                   "label_words": list(self.label_words), "per_layer": dict(self.per_layer),
                   "per_position": dict(self.per_position)}
        if self.wrong_share is not None:
            payload["wrong_share"] = self.wrong_share
        return payload


@dataclasses.dataclass(frozen=True)
class TaskScores:
    """One task's K-label probabilities, for the comparisons and ``query_scores.npz``."""

    query_keys: list[str]  # pairs queries across the settings of one dataset
    query_scores: np.ndarray  # [N, L+1, K] at the query
    gold: np.ndarray  # [N]
    position_scores: np.ndarray  # [N, L+1, k+1, K]
    position_targets: np.ndarray  # [N, k+1] true class at each readout
    follow: np.ndarray | None = None  # [N] the class a copying model answers (corruption.shifted); None: no shift

    def reordered(self, order: np.ndarray) -> "TaskScores":
        """The same task with its queries in ``order`` (rows of every per-query array)."""
        return TaskScores(
            query_keys=[self.query_keys[row] for row in order], query_scores=self.query_scores[order],
            gold=self.gold[order], position_scores=self.position_scores[order],
            position_targets=self.position_targets[order],
            follow=None if self.follow is None else self.follow[order])

    def for_file(self) -> dict[str, Any]:
        return {"query_keys": self.query_keys, "query_scores": self.query_scores, "gold": self.gold,
                "follow": self.follow}


def _floats(values) -> tuple[float, ...]:
    return tuple(float(value) for value in np.atleast_1d(np.asarray(values, dtype=np.float64)))


@dataclasses.dataclass(frozen=True)
class MetricCurve(_SetFieldsOnly):
    """A metric at every lens layer 0..L, with its paired-bootstrap interval per layer (NaN: undefined)."""

    value: tuple[float, ...]
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    @classmethod
    def of(cls, value, low=None, high=None) -> "MetricCurve":
        return cls(_floats(value), None if low is None else _floats(low), None if high is None else _floats(high))


@dataclasses.dataclass(frozen=True)
class LabelSensitivity:
    """Calibrated accuracy over a wrong-share grid and the slope of its least-squares line, per layer."""

    wrong_shares: tuple[float, ...]  # percent
    settings: tuple[str, ...]  # the graded settings, one per share (permuted@25 ...)
    calibrated_acc: tuple[tuple[float, ...], ...]  # [share][layer]
    slope: MetricCurve  # accuracy per unit wrong share (a fraction): minus the loss from all-correct to all-wrong

    def to_json(self) -> dict[str, Any]:
        return {"wrong_shares": list(self.wrong_shares), "settings": list(self.settings),
                "calibrated_acc": [list(row) for row in self.calibrated_acc], "slope": self.slope.to_json()}


PREDICTIONS_NOTE = ("predictions are the argmax over the K labels at each layer; the prior is the zero-shot "
                    "prompt's answer at the last layer")


@dataclasses.dataclass(frozen=True)
class PredictionMetrics:
    """One dataset's prediction metrics (analysis.prediction_curves) by setting label, and what is absent and why."""

    prior_setting: str | None
    settings: Mapping[str, Mapping[str, Any]]  # label -> metric -> MetricCurve (class_recall: word -> MetricCurve)
    absent: Mapping[str, Mapping[str, str]]  # label -> metric -> why it is absent
    label_sensitivity: LabelSensitivity | None = None
    label_sensitivity_note: str | None = None

    def to_json(self) -> dict[str, Any]:
        def encode(value):
            return {word: curve.to_json() for word, curve in value.items()} if isinstance(value, Mapping) \
                else value.to_json()

        payload: dict[str, Any] = {
            "predictions": PREDICTIONS_NOTE,
            "prior_setting": self.prior_setting,
            "settings": {label: {name: encode(value) for name, value in values.items()}
                         for label, values in self.settings.items()},
            "absent": {label: dict(values) for label, values in self.absent.items()},
        }
        if self.label_sensitivity is not None:
            payload["label_sensitivity"] = self.label_sensitivity.to_json()
        else:
            payload["absent"]["label_sensitivity"] = self.label_sensitivity_note
        return payload
