"""Layer statistics of a sweep: per-layer and per-position metric curves, the critical layer, early exit
(chosen on the same queries, as the paper does, and held out), paired-bootstrap intervals and run summaries.

Pure numpy over label probabilities ``[N, L+1, (P,) K]``: "layer" here is a lens index, 0 (the embeddings)
to L (the model's output), never a block index. The metric functions come from :mod:`core.metrics`."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from lm_eval_false_demos.analysis.prediction_curves import dataset_prediction_metrics, mean_prediction_curves
from lm_eval_false_demos.analysis.records import PromptRecord, TaskInfo
from lm_eval_false_demos.analysis.sweep_results import (
    DatasetComparison,
    HeldOutExit,
    Intervals,
    SettingComparison,
    TaskCurves,
    TaskScores,
)
from lm_eval_false_demos.core import metrics
from lm_eval_false_demos.core.corruption import shows_false_labels
from lm_eval_false_demos.core.datasets import MAIN_DATASETS
from lm_eval_false_demos.core.metrics import normalise, paired_bootstrap
from lm_eval_false_demos.errors import FalseDemoError

LAYER_METRICS = ("calibrated_acc", "acc", "follow_acc", "true_label_prob")


HEADLINE_CORRUPTED_PREFERENCE = ("permuted", "half", "random")  # a dataset's headline setting: the first one run


def _metric_functions():
    return {
        "calibrated_acc": metrics.calibrated_accuracy,
        "acc": metrics.label_accuracy,
        "follow_acc": metrics.follow_accuracy,
        "true_label_prob": metrics.mean_true_label_probability,
    }


def critical_layer(gap: Sequence[float]) -> int | None:
    """First layer where the gap reaches half of its last-layer value; None when the last gap is not positive."""
    gap = np.asarray(gap, dtype=np.float64)
    final = gap[-1]
    if not final > 0:
        return None
    # accuracies are multiples of 1/(K N): a gap equal to half the final one may differ by one rounding step
    return int(np.flatnonzero(gap >= 0.5 * final - 1e-12)[0])


def early_exit(corrupted_curve: Sequence[float]) -> tuple[int, float]:
    """(layer maximising corrupted accuracy, its gain over the last layer); ties go to the earliest layer."""
    values = np.asarray(corrupted_curve, dtype=np.float64)
    layer = int(np.argmax(values))
    return layer, float(values[layer] - values[-1])


def held_out_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of query indices 0..n-1 into a choosing half and a reporting half (sorted)."""
    order = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return np.sort(order[:half]), np.sort(order[half:])


def _calibrated(scores: np.ndarray, gold: np.ndarray) -> float:
    return float(_metric_functions()["calibrated_acc"](scores, gold))


def _calibrated_curve(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    return np.array([_calibrated(scores[:, layer, :], gold) for layer in range(scores.shape[1])])


def compare_settings(
    correct_scores: np.ndarray,
    corrupted_scores: np.ndarray,
    gold: np.ndarray,
    *,
    bootstrap_iters: int,
    seed: int,
    confidence: float,
) -> SettingComparison:
    """Derived numbers for one dataset and one corrupted setting; both score arrays [N, L+1, K] paired by row.

    - critical layer, early-exit layer and gain: chosen on all N queries and reported on them (the paper);
    - held out: the early-exit layer is chosen on one seeded half of the queries and its gain reported on the
      other half (the critical layer is descriptive and stays on all queries);
    - intervals: percentile intervals of a paired bootstrap over queries. Calibrated accuracy is a
      dataset-level statistic, so every resample recomputes it (thresholds included) from the resampled
      queries. The early-exit gain's interval keeps the chosen layer fixed (the selection is not resampled).
    """
    correct_curve = _calibrated_curve(correct_scores, gold)
    corrupted_curve = _calibrated_curve(corrupted_scores, gold)
    gap = correct_curve - corrupted_curve
    exit_layer, gain = early_exit(corrupted_curve)
    last = correct_scores.shape[1] - 1
    n = len(gold)

    choose, report = held_out_halves(n, seed)
    held_out: dict[str, Any] = {"seed": seed, "choose_n": int(len(choose)), "report_n": int(len(report))}
    if len(choose) and len(report):
        chosen_layer, choose_gain = early_exit(_calibrated_curve(corrupted_scores[choose], gold[choose]))
        report_scores, report_gold = corrupted_scores[report], gold[report]
        report_exit = _calibrated(report_scores[:, chosen_layer, :], report_gold)
        report_last = _calibrated(report_scores[:, last, :], report_gold)
        held_out.update(
            early_exit_layer=chosen_layer,
            gain_on_choosing_half=choose_gain,
            early_exit_accuracy=report_exit,
            last_layer_accuracy=report_last,
            early_exit_gain=report_exit - report_last,
        )

    intervals: dict[str, Any] = {}
    if bootstrap_iters > 0 and n > 1:
        # Only the rows the statistics read; one seed for all, so every statistic sees the same resamples.
        correct_last = correct_scores[:, last, :]
        corrupted_last = corrupted_scores[:, last, :]
        corrupted_exit = corrupted_scores[:, exit_layer, :]
        statistics = {
            "correct": (lambda c, g: _calibrated(c, g), (correct_last, gold)),
            "corrupted": (lambda w, g: _calibrated(w, g), (corrupted_last, gold)),
            "gap": (lambda c, w, g: _calibrated(c, g) - _calibrated(w, g), (correct_last, corrupted_last, gold)),
            "early_exit_gain": (lambda e, w, g: _calibrated(e, g) - _calibrated(w, g),
                                (corrupted_exit, corrupted_last, gold)),
        }
        for name, (statistic, arrays) in statistics.items():
            intervals[name] = tuple(paired_bootstrap(statistic, arrays, bootstrap_iters, seed, confidence))
        if "early_exit_layer" in held_out and len(report) > 1:
            chosen_layer = held_out["early_exit_layer"]
            held_out["interval"] = tuple(paired_bootstrap(
                lambda e, w, g: _calibrated(e, g) - _calibrated(w, g),
                (corrupted_scores[report, chosen_layer, :], corrupted_scores[report, last, :], gold[report]),
                bootstrap_iters, seed, confidence,
            ))

    return SettingComparison(
        n=int(n),
        critical_layer=critical_layer(gap),
        early_exit_layer=exit_layer,
        early_exit_gain=gain,
        early_exit_accuracy=float(corrupted_curve[exit_layer]),
        last_correct=float(correct_curve[last]),
        last_corrupted=float(corrupted_curve[last]),
        last_gap=float(gap[last]),
        gap_per_layer=tuple(float(value) for value in gap),
        held_out=HeldOutExit(**held_out),
        intervals=Intervals(confidence=confidence, iterations=bootstrap_iters, seed=seed, **intervals),
    )


def task_metrics(setting: str, num_fewshot: int | None = None) -> tuple[str, ...]:
    """The metrics lm-eval reports for a setting and k: following the wrong labels only means something when
    demonstrations carry the prompt's shifted label (corruption.shows_false_labels)."""
    if shows_false_labels(setting, num_fewshot):
        return LAYER_METRICS
    return tuple(m for m in LAYER_METRICS if m != "follow_acc")


def summarise_tasks(
    infos: Mapping[str, TaskInfo], records: Sequence[PromptRecord], outputs: Mapping[int, np.ndarray]
) -> tuple[dict[str, TaskCurves], dict[str, TaskScores]]:
    """Per-task curves and the per-task probabilities the dataset analysis needs."""
    functions = _metric_functions()
    results, arrays = {}, {}
    for name, info in infos.items():
        indices = [index for index, record in enumerate(records) if record.task == name]
        task_records = [records[index] for index in indices]
        logits = np.stack([outputs[index] for index in indices])  # [N, L+1, P, K]
        probabilities = normalise(logits)  # the K-label softmax: the full-vocabulary one cancels
        query_scores = probabilities[:, :, -1, :]
        names = task_metrics(info.setting, info.num_fewshot)

        # Position i < k reads demo i (i preceding demos) against its TRUE class; position k is the query.
        num_demos = probabilities.shape[2] - 1
        position_targets = np.array([list(r.demo_true_labels) + [r.gold] for r in task_records])
        position_follow = np.array([list(r.demo_follow_targets) + [r.follow_target] for r in task_records])
        per_position: dict[str, Any] = {
            "num_preceding_demos": list(range(num_demos + 1)),
            "readout": ["demo"] * num_demos + ["query"],
        }
        targets = {"calibrated_acc": position_targets, "acc": position_targets, "follow_acc": position_follow,
                   "true_label_prob": position_targets}
        for metric in names:
            per_position[metric] = [
                [
                    float(functions[metric](probabilities[:, layer, position, :], targets[metric][:, position]))
                    for position in range(num_demos + 1)
                ]
                for layer in range(probabilities.shape[1])
            ]
        # The query is the last readout position: its column is the per-layer curve.
        per_layer = {metric: [row[-1] for row in per_position[metric]] for metric in names}
        gold = position_targets[:, -1]
        results[name] = TaskCurves(
            dataset=info.dataset, setting=info.label, n=len(task_records), k=info.num_fewshot,
            num_classes=info.num_classes, label_words=tuple(info.label_words), per_layer=per_layer,
            per_position=per_position, wrong_share=info.wrong_share,
        )
        arrays[name] = TaskScores(
            query_keys=[record.query_key for record in task_records], query_scores=query_scores, gold=gold,
            position_scores=probabilities, position_targets=position_targets,
            follow=position_follow[:, -1] if shows_false_labels(info.setting, info.num_fewshot) else None,
        )
    return results, arrays


def analyse_datasets(
    infos: Mapping[str, TaskInfo], arrays: Mapping[str, TaskScores], bootstrap_iters: int, seed: int,
    confidence: float,
) -> dict[str, DatasetComparison]:
    """Per dataset: correct against each corrupted setting present, paired query by query, and the prediction
    metrics of every setting (:mod:`.prediction_curves`). Settings are named by ``TaskInfo.label``."""
    by_dataset: dict[str, dict[str, str]] = {}
    for name, info in infos.items():
        by_dataset.setdefault(info.dataset, {})[info.label] = name
    datasets = {}
    for dataset, settings in by_dataset.items():
        correct_name = settings.get("correct")
        corrupted = [setting for setting in HEADLINE_CORRUPTED_PREFERENCE if setting in settings]
        corrupted += sorted(set(settings) - set(HEADLINE_CORRUPTED_PREFERENCE) - {"correct", "zeroshot"},
                            key=lambda label: (label.split("@")[0], float(label.partition("@")[2] or -1)))
        predictions = _prediction_metrics(infos, arrays, settings, bootstrap_iters, seed, confidence)
        if correct_name is None or not corrupted:
            datasets[dataset] = DatasetComparison(tasks=dict(settings), prediction_metrics=predictions)
            continue
        correct = arrays[correct_name]
        by_setting = {}
        for setting in corrupted:
            other = arrays[settings[setting]]
            order = _pair_queries(correct.query_keys, other.query_keys, correct_name, settings[setting])
            comparison = compare_settings(
                correct.query_scores, other.query_scores[order], correct.gold,
                bootstrap_iters=bootstrap_iters, seed=seed, confidence=confidence,
            )
            by_setting[setting] = dataclasses.replace(comparison, gap_per_position=_position_gap(correct, other, order))
        datasets[dataset] = DatasetComparison(
            tasks=dict(settings), by_setting=by_setting, primary_setting=corrupted[0],
            num_classes=infos[correct_name].num_classes, k=infos[correct_name].num_fewshot,
            prediction_metrics=predictions,
        )
    return datasets


def _prediction_metrics(infos, arrays, settings: Mapping[str, str], bootstrap_iters, seed, confidence):
    """The dataset's settings paired query by query (on correct's order, else zero-shot's) and their metrics."""
    reference = settings.get("correct") or settings.get("zeroshot") or settings[sorted(settings)[0]]
    keys = arrays[reference].query_keys
    by_label = {
        label: (infos[name], arrays[name].reordered(_pair_queries(keys, arrays[name].query_keys, reference, name)))
        for label, name in settings.items()
    }
    return dataset_prediction_metrics(by_label, bootstrap_iters=bootstrap_iters, seed=seed, confidence=confidence,
                                      label_words=tuple(infos[reference].label_words))


def _pair_queries(reference: Sequence[str], other: Sequence[str], reference_task: str, other_task: str) -> np.ndarray:
    """Row order of ``other`` that lines its queries up with ``reference``'s; the sets must be equal."""
    where = {key: row for row, key in enumerate(other)}
    if len(where) != len(other) or set(where) != set(reference):
        raise FalseDemoError(
            f"tasks {reference_task} and {other_task} do not score the same queries; run them with the same --limit"
        )
    return np.array([where[key] for key in reference])


def _position_gap(correct: TaskScores, other: TaskScores, order: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """Calibrated-accuracy gap [L+1][k+1] at each readout position (demos paired by query and position)."""
    scores_c, scores_o = correct.position_scores, other.position_scores[order]
    targets = correct.position_targets
    return tuple(
        tuple(
            _calibrated(scores_c[:, layer, position, :], targets[:, position])
            - _calibrated(scores_o[:, layer, position, :], targets[:, position])
            for position in range(scores_c.shape[2])
        )
        for layer in range(scores_c.shape[1])
    )


def summarise_run(datasets: Mapping[str, DatasetComparison], tasks: Mapping[str, TaskCurves]) -> dict:
    """Run-level numbers per corrupted setting.

    ``mean_by_setting`` averages the per-dataset numbers over every dataset with derived numbers.
    ``<setting>`` (e.g. ``summary["permuted"]``) follows the paper's headline on the MAIN datasets present
    (unnatural and the sst2_ab control excluded): the calibrated-accuracy curves are averaged over datasets,
    then the critical layer, early-exit layer and gain are taken from the mean curves.
    """
    summary: dict[str, Any] = {"datasets": sorted(name for name, entry in datasets.items() if entry.by_setting)}
    per_setting: dict[str, dict[str, list[float]]] = {}
    for entry in datasets.values():
        for setting, comparison in entry.by_setting.items():
            values = per_setting.setdefault(setting, {})
            values.setdefault("correct", []).append(comparison.last_correct)
            values.setdefault("corrupted", []).append(comparison.last_corrupted)
            values.setdefault("gap", []).append(comparison.last_gap)
            values.setdefault("early_exit_gain", []).append(comparison.early_exit_gain)
            if comparison.held_out.early_exit_gain is not None:
                values.setdefault("held_out_early_exit_gain", []).append(comparison.held_out.early_exit_gain)
    summary["mean_by_setting"] = {
        setting: {name: float(np.mean(values)) for name, values in metrics.items()} | {"datasets": len(metrics["gap"])}
        for setting, metrics in per_setting.items()
    }
    curves = {(task.dataset, task.setting): task.per_layer["calibrated_acc"] for task in tasks.values()}
    for setting in per_setting:
        main = sorted(
            dataset for dataset in datasets
            if dataset in MAIN_DATASETS and (dataset, "correct") in curves and (dataset, setting) in curves
        )
        if not main:
            continue
        correct = np.mean([curves[(dataset, "correct")] for dataset in main], axis=0)
        corrupted = np.mean([curves[(dataset, setting)] for dataset in main], axis=0)
        exit_layer, gain = early_exit(corrupted)
        summary[setting] = {
            "datasets": main,
            "correct_last": float(correct[-1]),
            "corrupted_last": float(corrupted[-1]),
            "gap": float(correct[-1] - corrupted[-1]),
            "critical_layer": critical_layer(correct - corrupted),
            "early_exit_layer": exit_layer,
            "early_exit_gain": gain,
        }
    predictions = {name: entry.prediction_metrics for name, entry in datasets.items() if entry.prediction_metrics}
    summary["prediction_metrics"] = mean_prediction_curves(predictions)
    return summary
