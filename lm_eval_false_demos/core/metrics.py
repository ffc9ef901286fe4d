"""Scores over a whole evaluated set (paper spec section 4). Pure numpy; no other project imports.

``scores`` are per-query label scores normalised over the K labels (rows sum to 1), ``gold`` the true
class indices. Calibrated accuracy is a dataset-level statistic: each label gets a threshold, the
(K-1)/K quantile (linear interpolation) of its score over the N queries; a query earns 1 if its gold
label's score is above the gold label's threshold, 1/K if equal, 0 below. A model that gives every query
the same scores earns exactly 1/K.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# Scores equal up to float noise (e.g. the same logits normalised in a different order) are ties.
TIE_TOLERANCE = 1e-12


def _as_scores(scores, gold) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[0] != gold.shape[0] or scores.shape[0] == 0:
        raise ValueError(f"need scores [N, K] and gold [N] with N > 0, got {scores.shape} and {gold.shape}")
    if gold.min() < 0 or gold.max() >= scores.shape[1]:
        raise ValueError(f"gold labels must be in 0..{scores.shape[1] - 1}")
    return scores, gold


def normalise(log_scores) -> np.ndarray:
    """Softmax over the last axis: label log-likelihoods (or logits) to scores summing to 1 over K labels."""
    values = np.asarray(log_scores, dtype=np.float64)
    values = values - values.max(axis=-1, keepdims=True)
    exp = np.exp(values)
    return exp / exp.sum(axis=-1, keepdims=True)


def label_thresholds(scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    num_classes = scores.shape[1]
    return np.quantile(scores, (num_classes - 1) / num_classes, axis=0, method="linear")


def _above_and_tied(scores, gold) -> tuple[np.ndarray, np.ndarray, int]:
    scores, gold = _as_scores(scores, gold)
    above, tie = _above_and_tied_by_layer(scores[:, None, :], gold)
    return above[:, 0], tie[:, 0], scores.shape[1]


def _above_and_tied_by_layer(scores: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, L, K] scores: per query and layer, is the gold score above / tied with its label's threshold."""
    num_classes = scores.shape[2]
    thresholds = np.quantile(scores, (num_classes - 1) / num_classes, axis=0, method="linear")  # [L, K]
    own = np.take_along_axis(scores, gold[:, None, None], axis=2)[:, :, 0]
    limit = thresholds[:, gold].T
    tie = np.abs(own - limit) <= TIE_TOLERANCE
    return (own > limit) & ~tie, tie


def calibrated_accuracy_by_layer(scores, gold) -> np.ndarray:
    """``calibrated_accuracy(scores[:, l, :], gold)`` for every l of [N, L, K] scores, in one pass
    (a bootstrap over queries recomputes every layer's thresholds thousands of times)."""
    scores = np.asarray(scores, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.int64)
    if scores.ndim != 3 or scores.shape[0] != gold.shape[0] or scores.shape[0] == 0:
        raise ValueError(f"need scores [N, L, K] and gold [N] with N > 0, got {scores.shape} and {gold.shape}")
    _as_scores(scores[:, 0, :], gold)  # label range check
    above, tie = _above_and_tied_by_layer(scores, gold)
    num_classes = scores.shape[2]
    return (above.sum(axis=0) * num_classes + tie.sum(axis=0)) / (num_classes * len(gold))


def calibrated_credit(scores, gold) -> np.ndarray:
    """Per-query credit (1, 1/K or 0); only meaningful inside the set whose thresholds it used."""
    above, tie, num_classes = _above_and_tied(scores, gold)
    return np.where(tie, 1.0 / num_classes, np.where(above, 1.0, 0.0))


def calibrated_accuracy(scores, gold) -> float:
    above, tie, num_classes = _above_and_tied(scores, gold)
    # One integer ratio, so an all-ties (uninformative) model gives exactly float(1/K).
    return float((int(above.sum()) * num_classes + int(tie.sum())) / (num_classes * len(tie)))


def label_accuracy(scores, gold) -> float:
    scores, gold = _as_scores(scores, gold)
    return float((scores.argmax(axis=1) == gold).mean())


def follow_accuracy(scores, follow_target) -> float:
    """How often the argmax is the label the corruption maps the query's class to."""
    return label_accuracy(scores, follow_target)


def paired_bootstrap(statistic: Callable[..., float], arrays: Sequence, n_resamples: int = 1000,
                     seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``statistic(*arrays)`` resampling queries; one index draw for all arrays.

    Drawing the same queries for every array keeps paired comparisons paired (e.g. a gap between the
    correct and the permuted setting of the same queries).
    """
    arrays = [np.asarray(array) for array in arrays]
    size = len(arrays[0])
    if any(len(array) != size for array in arrays) or size == 0:
        raise ValueError("paired_bootstrap needs non-empty arrays of equal length")
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    for i in range(n_resamples):
        index = rng.integers(0, size, size)
        values[i] = statistic(*(array[index] for array in arrays))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def gap_recovered(acc_correct: float, acc_corrupted: float, acc_corrupted_ablated: float) -> float:
    """Share of the corrupted-label gap an ablation recovers (spec section 7):
    1 - (acc_correct - acc_corrupted_ablated) / (acc_correct - acc_corrupted); NaN without a gap."""
    gap = acc_correct - acc_corrupted
    if gap <= 0:
        return float("nan")
    return 1.0 - (acc_correct - acc_corrupted_ablated) / gap


def pooled_gap_recovered(acc_correct: Sequence[float], acc_corrupted: Sequence[float],
                         acc_corrupted_ablated: Sequence[float]) -> float:
    """Gap recovered over several datasets from their mean accuracies. The paper's figure is the mean of
    per-dataset ratios, which one dataset with a near-zero gap can blow up (a gap of 0.05 closed by 0.2 counts
    as +400%); pooling weighs each dataset by its gap instead."""
    return gap_recovered(float(np.mean(acc_correct)), float(np.mean(acc_corrupted)),
                         float(np.mean(acc_corrupted_ablated)))


def pooled_gap_recovered_by_condition(per_dataset: dict) -> tuple[float, list[float]]:
    """(top-k heads, each random draw) gap recovered pooled over datasets, from the per-dataset entries of a
    ``falsedemo heads --evaluate`` result (its ``evaluation.datasets``: acc_correct, acc_corrupted,
    top_k.acc_corrupted_ablated, random.draws[i].acc_corrupted_ablated). Every heads.json has them, so the
    command, the reports and the leaderboard all compute the figure here, old files included."""
    entries = list(per_dataset.values())
    correct = [entry["acc_correct"] for entry in entries]
    corrupted = [entry["acc_corrupted"] for entry in entries]
    top = pooled_gap_recovered(correct, corrupted, [entry["top_k"]["acc_corrupted_ablated"] for entry in entries])
    draws = [
        pooled_gap_recovered(correct, corrupted, [entry["random"]["draws"][i]["acc_corrupted_ablated"] for entry in entries])
        for i in range(len(entries[0]["random"]["draws"]) if entries else 0)
    ]
    return top, draws
