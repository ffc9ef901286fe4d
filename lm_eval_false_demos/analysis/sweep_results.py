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

    @property
    def primary(self) -> SettingComparison | None:
        return self.by_setting.get(self.primary_setting) if self.primary_setting else None

    def to_json(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"tasks": dict(self.tasks)}
        if self.primary is None:
            payload["note"] = "needs a correct and a corrupted setting of this dataset for the derived numbers"
            return payload
        payload.update(num_classes=self.num_classes, chance=1.0 / self.num_classes, k=self.k,
                       corrupted_setting=self.primary_setting)
        headline = self.primary.to_json()
        payload.update({key: headline[key] for key in HEADLINE_KEYS})
        payload["by_setting"] = {setting: comparison.to_json() for setting, comparison in self.by_setting.items()}
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

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "setting": self.setting, "n": self.n, "k": self.k,
                "num_classes": self.num_classes, "chance": 1.0 / self.num_classes,
                "label_words": list(self.label_words), "per_layer": dict(self.per_layer),
                "per_position": dict(self.per_position)}


@dataclasses.dataclass(frozen=True)
class TaskScores:
    """One task's K-label probabilities, for the comparisons and ``query_scores.npz``."""

    query_keys: list[str]  # pairs queries across the settings of one dataset
    query_scores: np.ndarray  # [N, L+1, K] at the query
    gold: np.ndarray  # [N]
    position_scores: np.ndarray  # [N, L+1, k+1, K]
    position_targets: np.ndarray  # [N, k+1] true class at each readout
    follow: np.ndarray | None = None  # [N] the class a copying model answers (corruption.shifted); None: no shift

    def for_file(self) -> dict[str, Any]:
        return {"query_keys": self.query_keys, "query_scores": self.query_scores, "gold": self.gold,
                "follow": self.follow}
