"""How a model trades its prior against the demonstrations, layer by layer (issue 23): the prediction metrics of
:mod:`core.metrics` as curves over lens layers 0..L, per dataset and setting, with paired-bootstrap intervals, and
the label-correctness sensitivity over a wrong-share grid.

Predictions are the argmax over the K labels at each layer (``metrics.predictions``); the model's *prior* for a
query is its zero-shot prompt's answer at the last layer (what the model answers without demonstrations), so
prior alignment and semantic override need the zeroshot setting of the same queries. A metric whose setting was
not run is absent, with the reason under ``absent``, never 0. Intervals resample queries once per dataset, so all
metrics and settings of a dataset see the same resamples (paired)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from lm_eval_false_demos.analysis.records import TaskInfo
from lm_eval_false_demos.analysis.sweep_results import (
    LabelSensitivity,
    MetricCurve,
    PredictionMetrics,
    TaskScores,
)
from lm_eval_false_demos.core import metrics
from lm_eval_false_demos.core.corruption import FOLLOW_SETTINGS
from lm_eval_false_demos.core.datasets import MAIN_DATASETS
from lm_eval_false_demos.core.sst2_formats import parse_variant_key

PRIOR_SETTING = "zeroshot"
NEEDS_PRIOR = "needs the zeroshot setting of the same queries (not run)"
NEEDS_CORRECT = "needs the correct setting of the same queries (not run)"
NEEDS_GRID = "needs a wrong-share grid of at least two shares (falsedemo sweep --wrong_share 0,25,50,75,100)"
NO_SHIFT = "the setting's demonstrations carry no single shifted label to follow"
# Why a value can be undefined (NaN, written as null): the ratio's denominator is empty.
UNDEFINED_REASONS = {
    "flip_rate": "no query answered right with correct demonstrations at this layer",
    "semantic_override": "no query whose zero-shot answer differs from its follow target",
    "class_recall": "no query of this class",
    "slope": "fewer than half of the resamples define it",
}


def _curve(parts, iterations: int, seed: int, confidence: float) -> MetricCurve | None:
    value = metrics.ratio(parts)
    if np.all(np.isnan(value)):
        return None
    low = high = None
    if iterations > 0 and len(parts[0]) > 1:
        low, high = metrics.bootstrap_ratio([parts], iterations, seed, confidence)
    return MetricCurve.of(value, low, high)


def dataset_prediction_metrics(
    by_label: Mapping[str, tuple[TaskInfo, TaskScores]], *, bootstrap_iters: int, seed: int, confidence: float,
    label_words: tuple[str, ...],
) -> PredictionMetrics:
    """The prediction metrics of one dataset; ``by_label``: its {setting label: (task, scores)}, the scores' rows
    the same queries in the same order in every setting."""
    gold = next(iter(by_label.values()))[1].gold
    prior = (metrics.predictions(by_label[PRIOR_SETTING][1].query_scores[:, -1, :])
             if PRIOR_SETTING in by_label else None)
    correct = by_label["correct"][1] if "correct" in by_label else None

    def curve(parts):
        return _curve(parts, bootstrap_iters, seed, confidence)

    settings, absent = {}, {}
    for label, (info, scores) in by_label.items():
        found: dict[str, object] = {}
        missing: dict[str, str] = {}
        found["true_label_prob"] = curve(metrics.true_probability_parts(scores.query_scores, gold))
        found["class_recall"] = {
            word: recall for index, word in enumerate(label_words)
            if (recall := curve(metrics.recall_parts(scores.query_scores, gold, index))) is not None}
        if label != PRIOR_SETTING:
            if prior is None:
                missing["prior_alignment"] = NEEDS_PRIOR
            else:
                found["prior_alignment"] = curve(metrics.agreement_parts(scores.query_scores, prior))
        if label not in ("correct", PRIOR_SETTING):
            if correct is None:
                missing["flip_rate"] = NEEDS_CORRECT
            else:
                found["flip_rate"] = curve(metrics.flip_parts(correct.query_scores, scores.query_scores, gold))
            if info.setting in FOLLOW_SETTINGS and scores.follow is not None:
                found["follow_rate"] = curve(metrics.agreement_parts(scores.query_scores, scores.follow))
                if prior is None:
                    missing["semantic_override"] = NEEDS_PRIOR
                else:
                    override = curve(metrics.override_parts(scores.query_scores, scores.follow, prior))
                    if override is None:
                        missing["semantic_override"] = UNDEFINED_REASONS["semantic_override"]
                    found["semantic_override"] = override
            else:
                missing["follow_rate"] = missing["semantic_override"] = NO_SHIFT
        settings[label] = {name: value for name, value in found.items() if value is not None and value != {}}
        if missing:
            absent[label] = missing
    sensitivity = label_sensitivity(by_label, gold, bootstrap_iters, seed, confidence)
    return PredictionMetrics(
        prior_setting=PRIOR_SETTING if prior is not None else None, settings=settings, absent=absent,
        label_sensitivity=sensitivity, label_sensitivity_note=None if sensitivity is not None else NEEDS_GRID,
    )


def label_sensitivity(by_label: Mapping[str, tuple[TaskInfo, TaskScores]], gold: np.ndarray, iterations: int,
                      seed: int, confidence: float) -> LabelSensitivity | None:
    """Slope of calibrated accuracy against the wrong share (a fraction) at every layer, over the graded tasks
    of one dataset (``falsedemo sweep --wrong_share``), with a paired bootstrap over queries (one resample for
    every share, thresholds recomputed)."""
    graded = sorted((info.wrong_share, label) for label, (info, _) in by_label.items()
                    if info.wrong_share is not None)
    if len({share for share, _ in graded}) < 2:
        return None
    shares = np.array([share / 100 for share, _ in graded])
    stacked = np.stack([by_label[label][1].query_scores for _, label in graded], axis=1)  # [N, S, L+1, K]
    n, count, layers, k = stacked.shape

    def accuracy_curves(index: np.ndarray | None = None) -> np.ndarray:
        scores, labels = (stacked, gold) if index is None else (stacked[index], gold[index])
        # thresholds are per column: shares x layers flattened into the layer axis
        return metrics.calibrated_accuracy_by_layer(scores.reshape(len(labels), count * layers, k), labels
                                                    ).reshape(count, layers)

    curves = accuracy_curves()
    slope = metrics.label_correctness_sensitivity(shares, curves)
    low = high = None
    if iterations > 0 and n > 1:
        rng = np.random.default_rng(seed)
        draws = np.stack([metrics.label_correctness_sensitivity(shares, accuracy_curves(rng.integers(0, n, n)))
                          for _ in range(iterations)])
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(draws, [tail, 100 - tail], axis=0)
    return LabelSensitivity(
        wrong_shares=tuple(float(share) for share, _ in graded), settings=tuple(label for _, label in graded),
        calibrated_acc=tuple(tuple(float(v) for v in row) for row in curves),
        slope=MetricCurve.of(slope, low, high),
    )


def _nanmean(stacked: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of the defined (finite) values; NaN where none is."""
    counts = np.isfinite(stacked).sum(axis=0)
    return np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)


def mean_prediction_curves(datasets: Mapping[str, PredictionMetrics]) -> dict[str, dict[str, dict]]:
    """{setting: {metric: {"value": curve, "datasets": count}}}: each metric's curve averaged over the MAIN
    datasets that define it, SST-2 counted once as the mean over its prompt formats (as the leaderboard counts
    it); a layer where a dataset's value is undefined leaves that dataset out of that layer's mean."""
    found: dict[tuple[str, str], dict[str, list]] = {}
    for dataset, entry in datasets.items():
        base = (parse_variant_key(dataset) or (dataset,))[0]
        if base not in MAIN_DATASETS:
            continue
        for label, values in entry.settings.items():
            for name, curve in values.items():
                if isinstance(curve, MetricCurve):
                    found.setdefault((label, name), {}).setdefault(base, []).append(curve.value)
    summary: dict[str, dict] = {}
    for (label, name), by_dataset in sorted(found.items()):
        per_dataset = np.array([_nanmean(np.array(curves, dtype=np.float64)) for curves in by_dataset.values()])
        summary.setdefault(label, {})[name] = {"value": _nanmean(per_dataset).tolist(), "datasets": len(by_dataset)}
    return summary
