"""A row's headline numbers: means over the 14 main datasets, the paper's layer statistics, and intervals.

* Per dataset and setting, the final-layer calibrated accuracy (lm-eval's result, else the sweep's last
  layer). SST-2 is the mean over its prompt formats, as in the paper: lm-eval's all-formats task when run,
  else the mean of the per-format tasks present (``sst2``, ``sst2_f1``..``sst2_f14``).
* Critical layer and early exit come from the mean layer curves, through the sweep's own functions.
* Intervals: a paired bootstrap over queries, dataset by dataset (each dataset's queries resampled with
  one draw for both settings and all SST-2 formats), every resample recomputing every dataset's
  calibrated thresholds; the mean over datasets of the resampled numbers gives the percentile interval.
  It needs the sweeps' per-query scores for every dataset in the mean; otherwise no interval is claimed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lm_eval_false_demos.analysis.layer_curves import critical_layer, early_exit
from lm_eval_false_demos.core.datasets import MAIN_DATASETS
from lm_eval_false_demos.core import metrics
from lm_eval_false_demos.core.metrics import calibrated_accuracy_by_layer
from lm_eval_false_demos.core.sst2_formats import BASE_KEY, parse_variant_key
from lm_eval_false_demos.leaderboard.rows import Measurement, Row

SST2_ALL_FORMATS = f"{BASE_KEY}_formats"  # lm-eval's all-formats task


def format_measurements(row: Row, setting: str) -> dict[int, Measurement]:
    """SST-2's per-format measurements of one setting: {format index: measurement}, lm-eval's first."""
    found: dict[int, Measurement] = {}
    for table in (row.sweep, row.lm_eval):  # lm-eval last, so it wins
        for (dataset, which), measurement in table.items():
            parsed = parse_variant_key(dataset)
            if which == setting and parsed is not None:
                found[parsed[1]] = measurement
    return found


def dataset_value(row: Row, dataset: str, setting: str) -> tuple[float, int | None, int] | None:
    """(final-layer calibrated accuracy, queries, prompt formats averaged) of one main dataset."""
    if dataset != BASE_KEY:
        measurement = row.accuracy(dataset, setting)
        return None if measurement is None else (measurement.value, measurement.n, 1)
    combined = row.lm_eval.get((SST2_ALL_FORMATS, setting))
    if combined is not None:
        return combined.value, None, 0  # 0: as many formats as the task kept (recorded in its metadata)
    formats = format_measurements(row, setting)
    if not formats:
        return None
    sizes = {m.n for m in formats.values() if m.n}
    return float(np.mean([m.value for m in formats.values()])), (max(sizes) if sizes else None), len(formats)


def main_values(row: Row, setting: str) -> dict[str, float]:
    values = {}
    for dataset in MAIN_DATASETS:
        found = dataset_value(row, dataset, setting)
        if found is not None:
            values[dataset] = found[0]
    return values


def dataset_curve(row: Row, dataset: str, setting: str) -> list[float] | None:
    """Per-layer curve of one main dataset from sweeps (SST-2: mean over the formats swept)."""
    if dataset != BASE_KEY:
        measurement = row.sweep.get((dataset, setting))
        return measurement.curve if measurement is not None else None
    curves = [m.curve for (d, s), m in row.sweep.items() if s == setting and parse_variant_key(d) is not None]
    return [float(value) for value in np.mean(curves, axis=0)] if curves else None


# -------------------------------------------------------------------------------------------- units


@dataclass
class Unit:
    """One main dataset's paired per-query scores: for each prompt format, [N, L+1, K] arrays whose rows are
    the same queries (in ``gold``'s order) in the correct and the corrupted setting."""

    dataset: str
    gold: np.ndarray
    correct: list[np.ndarray] = field(default_factory=list)
    corrupted: list[np.ndarray] = field(default_factory=list)

    def curves(self, index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean over formats of the calibrated-accuracy curves, on the queries ``index`` (all by default)."""
        gold = self.gold if index is None else self.gold[index]
        pick = (lambda a: a) if index is None else (lambda a: a[index])
        correct = np.mean([calibrated_accuracy_by_layer(pick(a), gold) for a in self.correct], axis=0)
        corrupted = np.mean([calibrated_accuracy_by_layer(pick(a), gold) for a in self.corrupted], axis=0)
        return correct, corrupted


def _aligned(first: Measurement, second: Measurement, keys: list[str] | None):
    """Rows of both score arrays in the order of ``keys`` (or of ``first``); None if the queries differ."""
    if first.scores is None or second.scores is None:
        return None
    a_keys, b_keys = list(first.scores["keys"]), list(second.scores["keys"])
    keys = keys or a_keys
    if set(a_keys) != set(keys) or set(b_keys) != set(keys):
        return None
    a_where = {key: row for row, key in enumerate(a_keys)}
    b_where = {key: row for row, key in enumerate(b_keys)}
    a_order = [a_where[key] for key in keys]
    b_order = [b_where[key] for key in keys]
    return keys, first.scores["gold"][a_order], first.scores["scores"][a_order], second.scores["scores"][b_order]


def units(row: Row, setting: str) -> dict[str, Unit]:
    """Per main dataset with per-query scores in both settings: its Unit (SST-2: the formats with both)."""
    found: dict[str, Unit] = {}
    for dataset in MAIN_DATASETS:
        if dataset == BASE_KEY:
            pairs = [
                (row.sweep.get((key, "correct")), row.sweep.get((key, setting)))
                for key in sorted({d for d, _ in row.sweep if parse_variant_key(d) is not None})
            ]
        else:
            pairs = [(row.sweep.get((dataset, "correct")), row.sweep.get((dataset, setting)))]
        keys, unit = None, None
        for correct, corrupted in pairs:
            if correct is None or corrupted is None:
                continue
            aligned = _aligned(correct, corrupted, keys)
            if aligned is None:
                unit = None
                break
            keys, gold, correct_scores, corrupted_scores = aligned
            unit = unit or Unit(dataset, gold)
            unit.correct.append(correct_scores)
            unit.corrupted.append(corrupted_scores)
        if unit is not None:
            found[dataset] = unit
    return found


# ----------------------------------------------------------------------------------------- headline


def layer_statistics(correct: list[float] | np.ndarray, corrupted: list[float] | np.ndarray) -> dict[str, Any]:
    """The paper's critical layer and early exit on mean curves, with the sweep's definitions."""
    correct, corrupted = np.asarray(correct, dtype=float), np.asarray(corrupted, dtype=float)
    exit_layer, gain = early_exit(corrupted)
    return {"critical_layer": critical_layer(correct - corrupted), "early_exit_layer": exit_layer,
            "early_exit_gain": gain}


def setting_headline(row: Row, setting: str, iterations: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, Any]:
    """Mean correct / corrupted / gap over the paired main datasets, layer statistics and intervals."""
    correct_values, corrupted_values = main_values(row, "correct"), main_values(row, setting)
    paired = [d for d in MAIN_DATASETS if d in correct_values and d in corrupted_values]
    result: dict[str, Any] = {"datasets": len(paired), "interval_datasets": 0}
    if paired:
        result.update(
            correct=float(np.mean([correct_values[d] for d in paired])),
            corrupted=float(np.mean([corrupted_values[d] for d in paired])),
        )
        result["gap"] = result["correct"] - result["corrupted"]
    curves = {d: (dataset_curve(row, d, "correct"), dataset_curve(row, d, setting)) for d in MAIN_DATASETS}
    curves = {d: pair for d, pair in curves.items() if pair[0] is not None and pair[1] is not None}
    if curves:
        mean_correct = np.mean([pair[0] for pair in curves.values()], axis=0)
        mean_corrupted = np.mean([pair[1] for pair in curves.values()], axis=0)
        result.update(layer_statistics(mean_correct, mean_corrupted), curve_datasets=len(curves),
                      curves={"correct": mean_correct.tolist(), setting: mean_corrupted.tolist()})
    paired_units = units(row, setting)
    if paired and set(paired_units) == set(paired) and iterations > 0:
        result.update(_bootstrap(list(paired_units.values()), result.get("early_exit_layer"), iterations, seed,
                                 confidence))
        result["interval_datasets"] = len(paired_units)
    return result


def _bootstrap(paired_units: list[Unit], exit_layer: int | None, iterations: int, seed: int,
               confidence: float) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    layers = paired_units[0].correct[0].shape[1]
    correct = np.empty((iterations, layers))
    corrupted = np.empty((iterations, layers))
    for b in range(iterations):
        sums_c, sums_w = np.zeros(layers), np.zeros(layers)
        for unit in paired_units:
            index = rng.integers(0, len(unit.gold), len(unit.gold))
            c, w = unit.curves(index)
            sums_c += c
            sums_w += w
        correct[b], corrupted[b] = sums_c / len(paired_units), sums_w / len(paired_units)
    tail = (1 - confidence) / 2 * 100

    def interval(values: np.ndarray) -> list[float]:
        return [float(v) for v in np.percentile(values, [tail, 100 - tail])]

    found = {
        "correct_ci": interval(correct[:, -1]),
        "corrupted_ci": interval(corrupted[:, -1]),
        "gap_ci": interval(correct[:, -1] - corrupted[:, -1]),
        "bands": {"correct": [interval(correct[:, layer]) for layer in range(layers)],
                  "corrupted": [interval(corrupted[:, layer]) for layer in range(layers)]},
        "bootstrap": {"iterations": iterations, "seed": seed, "confidence": confidence,
                      "method": "percentile, queries resampled per dataset, paired across settings and formats"},
    }
    if exit_layer is not None:
        # the exit layer is chosen once on all queries and held fixed, as in the sweep's per-dataset intervals
        found["early_exit_gain_ci"] = interval(corrupted[:, exit_layer] - corrupted[:, -1])
    return found


# ----------------------------------------------------------------------------------- prediction metrics
# The prediction metrics of core.metrics at the final layer, from the sweeps' per-query scores: per main dataset
# (SST-2: the mean over its formats) and then the mean over the datasets that have them; intervals resample each
# dataset's queries (one draw for every setting, format and metric), as the gap's do.

PREDICTION_METRICS = ("flip_rate", "prior_alignment", "prior_alignment_correct", "semantic_override", "follow_rate",
                      "true_label_prob_correct", "true_label_prob_permuted")
_SWEPT = "of the same queries in a sweep (query_scores.npz)"
NEEDS = {"flip_rate": f"the correct and permuted settings {_SWEPT}",
         "prior_alignment": f"the permuted and zeroshot settings {_SWEPT}",
         "prior_alignment_correct": f"the correct and zeroshot settings {_SWEPT}",
         "semantic_override": f"the permuted and zeroshot settings {_SWEPT}, with follow targets",
         "follow_rate": f"the permuted setting {_SWEPT}, with follow targets (sweeps since f508f32)",
         "true_label_prob_correct": f"the correct setting {_SWEPT}",
         "true_label_prob_permuted": f"the permuted setting {_SWEPT}",
         "lowest_class_recall": f"the correct setting {_SWEPT}",
         "label_sensitivity": "a wrong-share grid (falsedemo sweep --wrong_share 0,25,50,75,100)"}


def _format_keys(row: Row, dataset: str) -> list[str]:
    if dataset != BASE_KEY:
        return [dataset]
    return sorted({d for d, _ in row.sweep if parse_variant_key(d) is not None})


def _aligned_settings(row: Row, key: str, settings: tuple[str, ...]) -> dict[str, Any] | None:
    """{"keys", "gold", setting: scores [N, L+1, K], "follow": [N] or None} on the correct setting's query order
    (else the first setting present); settings without per-query scores, or other queries, are left out."""
    found = {s: m for s in settings if (m := row.sweep.get((key, s))) is not None and m.scores is not None}
    if not found:
        return None
    reference = found.get("correct") or next(iter(found.values()))
    keys = list(reference.scores["keys"])
    aligned: dict[str, Any] = {"keys": keys, "gold": reference.scores["gold"], "follow": None}
    for setting, measurement in found.items():
        where = {k: i for i, k in enumerate(measurement.scores["keys"])}
        if set(where) != set(keys):
            continue
        order = [where[k] for k in keys]
        aligned[setting] = measurement.scores["scores"][order]
        if setting == "permuted" and measurement.scores.get("follow") is not None:
            aligned["follow"] = np.asarray(measurement.scores["follow"])[order]
    return aligned


def _parts(aligned: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The per-layer (numerator, denominator) parts [N, L+1] of every metric this format's settings define. The
    prior is the zero-shot answer at the final layer: what the model says with no demonstrations."""
    gold, parts = aligned["gold"], {}
    correct, permuted, zeroshot = (aligned.get(s) for s in ("correct", "permuted", "zeroshot"))
    prior = metrics.predictions(zeroshot[:, -1, :]) if zeroshot is not None else None
    if correct is not None:
        parts["true_label_prob_correct"] = metrics.true_probability_parts(correct, gold)
        if prior is not None:
            parts["prior_alignment_correct"] = metrics.agreement_parts(correct, prior)
    if permuted is not None:
        parts["true_label_prob_permuted"] = metrics.true_probability_parts(permuted, gold)
        if correct is not None:
            parts["flip_rate"] = metrics.flip_parts(correct, permuted, gold)
        if prior is not None:
            parts["prior_alignment"] = metrics.agreement_parts(permuted, prior)
        if aligned["follow"] is not None:
            parts["follow_rate"] = metrics.agreement_parts(permuted, aligned["follow"])
            if prior is not None:
                parts["semantic_override"] = metrics.override_parts(permuted, aligned["follow"], prior)
    return parts


def _sensitivity(row: Row, key: str) -> float | None:
    """Slope of final-layer calibrated accuracy over the graded permuted settings (permuted@<share>) swept."""
    graded = sorted((float(setting.split("@", 1)[1]), m.value) for (d, setting), m in row.sweep.items()
                    if d == key and setting.startswith("permuted@"))
    if len({share for share, _ in graded}) < 2:
        return None
    return float(metrics.label_correctness_sensitivity([s / 100 for s, _ in graded], [v for _, v in graded]))


def prediction_headline(row: Row, iterations: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """{metric: mean over main datasets, metric_ci: [low, high], metric_datasets: count} for PREDICTION_METRICS,
    ``lowest_class_recall`` (correct setting: the mean over datasets of the lowest per-class recall),
    ``label_sensitivity`` and ``notes`` (why a metric is absent); None where no dataset defines a metric.
    ``curves`` and ``bands``: each of PREDICTION_METRICS over layers (the same means and intervals at every
    layer; the final layer is the headline value)."""
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {name: [] for name in (*PREDICTION_METRICS, "lowest_class_recall",
                                                            "label_sensitivity")}
    curves: dict[str, list[np.ndarray]] = {name: [] for name in PREDICTION_METRICS}
    draws: dict[str, list[np.ndarray]] = {name: [] for name in PREDICTION_METRICS}
    for dataset in MAIN_DATASETS:
        per_format = []
        for key in _format_keys(row, dataset):
            aligned = _aligned_settings(row, key, ("correct", "permuted", "zeroshot"))
            if aligned is not None:
                per_format.append(aligned)
        if not per_format:
            continue
        n = len(per_format[0]["gold"])
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(iterations)]) \
            if iterations > 0 and all(len(a["gold"]) == n for a in per_format) else None
        format_parts = [_parts(aligned) for aligned in per_format]
        for name in PREDICTION_METRICS:
            found = [parts[name] for parts in format_parts if name in parts]
            if not found:
                continue
            # A layer (or a resample) where no format defines the metric is NaN: undefined, never 0.
            with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                curve = np.nanmean([metrics.ratio(pair) for pair in found], axis=0)
                if not np.isfinite(curve[-1]):
                    continue
                values[name].append(float(curve[-1]))
                curves[name].append(curve)
                if counts is not None:
                    resampled = [(counts @ top) / (counts @ bottom) for top, bottom in found]
                    draws[name].append(np.nanmean(resampled, axis=0) if len(resampled) > 1 else resampled[0])
        recalls = [np.nanmin(metrics.per_class_recall(a["correct"][:, -1, :], a["gold"])) for a in per_format
                   if a.get("correct") is not None]
        if recalls:
            values["lowest_class_recall"].append(float(np.mean(recalls)))
        slopes = [found for key in _format_keys(row, dataset) if (found := _sensitivity(row, key)) is not None]
        if slopes:
            values["label_sensitivity"].append(float(np.mean(slopes)))
    tail = (1 - confidence) / 2 * 100
    result: dict[str, Any] = {"notes": {}, "curves": {}, "bands": {}}
    for name, found in values.items():
        result[name] = float(np.mean(found)) if found else None
        result[f"{name}_datasets"] = len(found)
        if not found:
            result["notes"][name] = f"needs {NEEDS[name]}"
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if curves.get(name):
                result["curves"][name] = [_finite_or_none(v) for v in np.nanmean(np.stack(curves[name]), axis=0)]
            if draws.get(name) and len(draws[name]) == len(found):
                mean = np.nanmean(np.stack(draws[name]), axis=0)  # [iterations, L+1]
                low, high = np.nanpercentile(mean, [tail, 100 - tail], axis=0)
                result[f"{name}_ci"] = [float(low[-1]), float(high[-1])]
                result["bands"][name] = [[_finite_or_none(a), _finite_or_none(b)] for a, b in zip(low, high)]
    return result


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
