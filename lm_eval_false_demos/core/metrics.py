"""Scores over a whole evaluated set (paper spec section 4). Pure numpy; no other project imports.

``scores`` are per-query label scores normalised over the K labels (rows sum to 1), ``gold`` the true
class indices. Calibrated accuracy is a dataset-level statistic: each label gets a threshold, the
(K-1)/K quantile (linear interpolation) of its score over the N queries; a query earns 1 if its gold
label's score is above the gold label's threshold, 1/K if equal, 0 below. A model that gives every query
the same scores earns exactly 1/K.
"""

from __future__ import annotations

import warnings
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


# ------------------------------------------------------------------------------------------------------------
# Prediction metrics (issue 23): how a model trades its prior against the demonstrations.
#
# Every one is a ratio of per-query sums, numerator / denominator, so the same per-query parts give the value,
# its curve over layers and its paired-bootstrap interval (``bootstrap_ratio``). Scores are [N, K] or
# [N, L, K] (any axes between the queries and the K labels: the result keeps them, e.g. a curve over layers).
# A *prediction* is the argmax over the K labels of the normalised scores (the model's answer; no calibration:
# calibrated accuracy is a dataset-level statistic and gives no per-query answer). A ratio with an empty
# denominator is NaN (undefined), never 0.


def predictions(scores) -> np.ndarray:
    """The argmax over the K labels (last axis): [N, ..., K] -> [N, ...]; ties go to the lower label."""
    return np.asarray(scores, dtype=np.float64).argmax(axis=-1)


def _per_query(labels, like: np.ndarray) -> np.ndarray:
    """[N] class indices broadcast against per-query arrays [N, ...]."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or len(labels) != like.shape[0]:
        raise ValueError(f"need one class per query ({like.shape[0]}), got shape {labels.shape}")
    return labels.reshape((-1,) + (1,) * (like.ndim - 1))


def _check_scores(scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim < 2 or scores.shape[0] == 0:
        raise ValueError(f"need scores [N, ..., K] with N > 0, got {scores.shape}")
    return scores


def ratio(parts: tuple[np.ndarray, np.ndarray]):
    """sum(numerator) / sum(denominator) over queries (axis 0); NaN where the denominator is empty."""
    numerator, denominator = (np.asarray(part, dtype=np.float64) for part in parts)
    total = denominator.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(total > 0, numerator.sum(axis=0) / np.where(total > 0, total, 1), np.nan)
    return float(value) if np.ndim(value) == 0 else value


def agreement_parts(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Per query: [prediction == label], over every query."""
    scores = _check_scores(scores)
    hit = predictions(scores) == _per_query(labels, scores[..., 0])
    return hit.astype(np.float64), np.ones(hit.shape)


def flip_parts(correct_scores, corrupted_scores, gold) -> tuple[np.ndarray, np.ndarray]:
    """Per query (paired: row i is the same query in both settings): denominator [right with correct
    demonstrations], numerator [right with correct and wrong with corrupted ones]."""
    correct_scores, corrupted_scores = _check_scores(correct_scores), _check_scores(corrupted_scores)
    if correct_scores.shape != corrupted_scores.shape:
        raise ValueError(f"paired scores must have one shape, got {correct_scores.shape} and {corrupted_scores.shape}")
    gold = _per_query(gold, correct_scores[..., 0])
    right = predictions(correct_scores) == gold
    return (right & (predictions(corrupted_scores) != gold)).astype(np.float64), right.astype(np.float64)


def flip_rate(correct_scores, corrupted_scores, gold):
    """Share of the queries answered right with correct demonstrations that are answered wrong with corrupted
    ones (argmax predictions, paired by query); NaN when none was right."""
    return ratio(flip_parts(correct_scores, corrupted_scores, gold))


def prior_alignment(scores, prior):
    """Share of queries whose prediction equals the model's own zero-shot answer ``prior`` [N] (the argmax of
    the zero-shot prompt of the same query)."""
    return ratio(agreement_parts(scores, prior))


def override_parts(scores, follow_target, prior) -> tuple[np.ndarray, np.ndarray]:
    """Per query: denominator [the zero-shot answer is not the follow target], numerator [and the prediction
    is the follow target]."""
    scores = _check_scores(scores)
    follow = _per_query(follow_target, scores[..., 0])
    against = np.broadcast_to(follow != _per_query(prior, scores[..., 0]), follow.shape[:1] + scores.shape[1:-1])
    return (against & (predictions(scores) == follow)).astype(np.float64), against.astype(np.float64)


def semantic_override_rate(scores, follow_target, prior):
    """Of the queries whose zero-shot answer ``prior`` differs from the label the shown (corrupted) mapping
    gives them (``follow_target``), the share answered with that label: following the demonstrations against
    the prior (argmax predictions); NaN when no query's prior differs from its follow target."""
    return ratio(override_parts(scores, follow_target, prior))


def recall_parts(scores, gold, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query: denominator [gold == label], numerator [and predicted label]."""
    scores = _check_scores(scores)
    gold = _per_query(gold, scores[..., 0])
    is_class = np.broadcast_to(gold == label, gold.shape[:1] + scores.shape[1:-1])
    return (is_class & (predictions(scores) == label)).astype(np.float64), is_class.astype(np.float64)


def per_class_recall(scores, gold) -> np.ndarray:
    """Recall of each class c (argmax predictions): of the queries of class c, the share predicted c.
    [K] (or [K, ...] over the middle axes); NaN for a class without queries."""
    scores = _check_scores(scores)
    return np.array([ratio(recall_parts(scores, gold, label)) for label in range(scores.shape[-1])])


def true_probability_parts(scores, gold) -> tuple[np.ndarray, np.ndarray]:
    scores = _check_scores(scores)
    gold = _per_query(gold, scores[..., 0])
    own = np.take_along_axis(scores, gold[..., None], axis=-1)[..., 0]
    return own, np.ones(own.shape)


def mean_true_label_probability(scores, gold):
    """Mean over queries of the probability of the true label (scores normalised over the K labels); no
    prediction involved."""
    return ratio(true_probability_parts(scores, gold))


def label_correctness_sensitivity(wrong_shares, accuracies):
    """Slope of the least-squares line of accuracy against the share of wrong demonstration labels (a fraction
    0..1; give percent / 100): the accuracy a model loses going from all-correct to all-wrong labels is minus
    this slope (StaICC's GLER, as a slope). ``accuracies`` [S] or [S, ...] (e.g. [S, L+1] curves); NaN with
    fewer than two distinct shares or any undefined accuracy."""
    shares = np.asarray(wrong_shares, dtype=np.float64)
    values = np.asarray(accuracies, dtype=np.float64)
    if shares.ndim != 1 or values.shape[:1] != shares.shape:
        raise ValueError(f"need one accuracy per wrong share, got {shares.shape} and {values.shape}")
    if np.any((shares < 0) | (shares > 1)):
        raise ValueError("wrong shares are fractions in 0..1")
    centred = shares - shares.mean()
    spread = float((centred ** 2).sum())
    if spread == 0:
        slope = np.full(values.shape[1:], np.nan)
    else:
        slope = np.tensordot(centred, values - values.mean(axis=0), axes=(0, 0)) / spread
    return float(slope) if np.ndim(slope) == 0 else slope


def bootstrap_ratio(parts: Sequence[tuple[np.ndarray, np.ndarray]], n_resamples: int = 1000, seed: int = 0,
                    confidence: float = 0.95, combine: Callable[..., np.ndarray] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of a statistic of ratio metrics, resampling queries once for all of them (paired).

    ``parts``: one (numerator, denominator) pair of per-query arrays [N, ...] per metric, the same N queries in
    the same order. ``combine(*ratios)`` maps the metrics' resampled values (each [B, ...], B resamples) to the
    statistic [B, ...] (default: the one metric's value). Returns (low, high) shaped like one resample's
    statistic; NaN where fewer than half of the resamples define it (an empty denominator)."""
    size = np.shape(parts[0][0])[0]
    if size == 0 or any(np.shape(part)[0] != size for pair in parts for part in pair):
        raise ValueError("bootstrap_ratio needs per-query arrays with one number of queries")
    if combine is None and len(parts) != 1:
        raise ValueError("several metrics need a combine function")
    rng = np.random.default_rng(seed)
    # a resample is a count per query, so a resampled sum is counts @ per-query values (all resamples at once)
    counts = np.stack([np.bincount(rng.integers(0, size, size), minlength=size) for _ in range(n_resamples)])
    resampled = []
    for numerator, denominator in parts:
        shape = np.shape(numerator)[1:]
        top = counts @ np.asarray(numerator, dtype=np.float64).reshape(size, -1)
        bottom = counts @ np.asarray(denominator, dtype=np.float64).reshape(size, -1)
        with np.errstate(invalid="ignore", divide="ignore"):
            resampled.append(np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), np.nan)
                             .reshape((n_resamples, *shape)))
    statistic = combine(*resampled) if combine is not None else resampled[0]
    tail = (1 - confidence) / 2 * 100
    defined = np.isfinite(statistic).mean(axis=0) >= 0.5
    with warnings.catch_warnings():  # all-NaN columns: reported as NaN below
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(np.where(np.isfinite(statistic), statistic, np.nan), [tail, 100 - tail], axis=0)
    return np.where(defined, low, np.nan), np.where(defined, high, np.nan)
