"""The prediction metrics of issue 23 (flip rate, prior alignment, semantic override, per-class recall, mean
true-label probability, label-correctness sensitivity) against hand-made scores, and the rules they obey."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lm_eval_false_demos.core import metrics

# Four queries, K = 3; rows are probabilities, argmax in the comment.
CORRECT = np.array([[0.7, 0.2, 0.1],   # 0 (gold 0: right)
                    [0.1, 0.8, 0.1],   # 1 (gold 1: right)
                    [0.2, 0.2, 0.6],   # 2 (gold 2: right)
                    [0.5, 0.3, 0.2]])  # 0 (gold 1: wrong)
CORRUPTED = np.array([[0.2, 0.7, 0.1],   # 1: flipped, follows (0 + 1)
                      [0.1, 0.6, 0.3],   # 1: kept
                      [0.6, 0.1, 0.3],   # 0: flipped, follows (2 + 1) % 3
                      [0.1, 0.1, 0.8]])  # 2: follows (1 + 1)
GOLD = np.array([0, 1, 2, 1])
FOLLOW = (GOLD + 1) % 3
ZEROSHOT = np.array([[0.6, 0.3, 0.1],   # prior 0
                     [0.3, 0.4, 0.3],   # prior 1
                     [0.1, 0.1, 0.8],   # prior 2
                     [0.2, 0.2, 0.6]])  # prior 2 (= its follow target)
PRIOR = metrics.predictions(ZEROSHOT)


def test_predictions_are_the_argmax_with_ties_to_the_lower_label():
    assert metrics.predictions(CORRECT).tolist() == [0, 1, 2, 0]
    assert metrics.predictions([[0.5, 0.5]]).tolist() == [0]


def test_flip_rate_by_hand():
    # right with correct demos: queries 0, 1, 2; of them 0 and 2 are wrong with corrupted demos
    assert metrics.flip_rate(CORRECT, CORRUPTED, GOLD) == pytest.approx(2 / 3)
    assert metrics.flip_rate(CORRECT, CORRECT, GOLD) == 0.0


def test_flip_rate_is_undefined_not_zero_when_nothing_was_right():
    wrong = np.array([[0.1, 0.9], [0.9, 0.1]])
    assert math.isnan(metrics.flip_rate(wrong, wrong, [0, 1]))


def test_prior_alignment_by_hand():
    assert PRIOR.tolist() == [0, 1, 2, 2]
    assert metrics.prior_alignment(CORRUPTED, PRIOR) == pytest.approx(2 / 4)  # queries 1 and 3
    assert metrics.prior_alignment(CORRECT, PRIOR) == pytest.approx(3 / 4)
    assert metrics.prior_alignment(ZEROSHOT, PRIOR) == 1.0


def test_semantic_override_by_hand():
    # query 3's prior (2) already is its follow target: not counted; queries 0, 2 follow against the prior,
    # query 1 keeps it
    assert metrics.semantic_override_rate(CORRUPTED, FOLLOW, PRIOR) == pytest.approx(2 / 3)
    assert math.isnan(metrics.semantic_override_rate(CORRUPTED, FOLLOW, FOLLOW))


def test_per_class_recall_by_hand_and_absent_classes():
    assert metrics.per_class_recall(CORRECT, GOLD).tolist() == pytest.approx([1.0, 0.5, 1.0])
    recall = metrics.per_class_recall(np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]]), [0, 0])
    assert recall[0] == 0.5 and math.isnan(recall[1]) and math.isnan(recall[2])


def test_mean_true_label_probability_by_hand():
    assert metrics.mean_true_label_probability(CORRECT, GOLD) == pytest.approx((0.7 + 0.8 + 0.6 + 0.3) / 4)


def test_label_correctness_sensitivity_is_the_least_squares_slope():
    assert metrics.label_correctness_sensitivity([0, 0.5, 1], [0.9, 0.6, 0.3]) == pytest.approx(-0.6)
    # noisy points: slope by the normal equations
    shares, accuracy = np.array([0, 0.25, 0.5, 0.75, 1]), np.array([0.8, 0.7, 0.75, 0.4, 0.35])
    assert metrics.label_correctness_sensitivity(shares, accuracy) == pytest.approx(np.polyfit(shares, accuracy, 1)[0])
    assert math.isnan(metrics.label_correctness_sensitivity([0.5, 0.5], [0.9, 0.1]))
    curves = np.array([[0.9, 0.5], [0.6, 0.5], [0.3, 0.5]])  # two layers
    assert metrics.label_correctness_sensitivity([0, 0.5, 1], curves).tolist() == pytest.approx([-0.6, 0.0])
    with pytest.raises(ValueError):
        metrics.label_correctness_sensitivity([0, 50, 100], [0.9, 0.6, 0.3])  # percent, not fractions


def test_metrics_over_layers_equal_the_metric_of_each_layer():
    rng = np.random.default_rng(0)
    scores = metrics.normalise(rng.normal(size=(12, 5, 3)))
    other = metrics.normalise(rng.normal(size=(12, 5, 3)))
    gold, prior = rng.integers(0, 3, 12), rng.integers(0, 3, 12)
    follow = (gold + 1) % 3
    curves = {
        "flip": (metrics.flip_rate(scores, other, gold), lambda l: metrics.flip_rate(scores[:, l], other[:, l], gold)),
        "prior": (metrics.prior_alignment(other, prior), lambda l: metrics.prior_alignment(other[:, l], prior)),
        "override": (metrics.semantic_override_rate(other, follow, prior),
                     lambda l: metrics.semantic_override_rate(other[:, l], follow, prior)),
        "true": (metrics.mean_true_label_probability(scores, gold),
                 lambda l: metrics.mean_true_label_probability(scores[:, l], gold)),
    }
    for name, (curve, at_layer) in curves.items():
        assert np.allclose(curve, [at_layer(layer) for layer in range(5)], equal_nan=True), name
    recall = metrics.per_class_recall(scores, gold)
    assert recall.shape == (3, 5)
    assert np.allclose(recall[:, 2], metrics.per_class_recall(scores[:, 2], gold), equal_nan=True)


def test_bootstrap_ratio_brackets_the_value_and_is_paired():
    rng = np.random.default_rng(1)
    scores = metrics.normalise(rng.normal(size=(40, 3)) + np.eye(3)[rng.integers(0, 3, 40)] * 2)
    gold = scores.argmax(axis=1)
    gold[:10] = (gold[:10] + 1) % 3
    value = metrics.mean_true_label_probability(scores, gold)
    low, high = metrics.bootstrap_ratio([metrics.true_probability_parts(scores, gold)], 200, seed=0)
    assert low < value < high
    # the same metric twice, combined as a difference: paired resamples give exactly zero
    parts = metrics.agreement_parts(scores, gold)
    low, high = metrics.bootstrap_ratio([parts, parts], 50, combine=lambda a, b: a - b)
    assert low == high == 0.0
    # an undefined ratio is NaN, not 0
    low, high = metrics.bootstrap_ratio([(np.zeros(5), np.zeros(5))], 20)
    assert math.isnan(low) and math.isnan(high)


probabilities = arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(2, 5)),
                       elements=st.floats(0.01, 1.0)).map(lambda a: a / a.sum(axis=1, keepdims=True))


@settings(max_examples=60, deadline=None)
@given(probabilities, st.data())
def test_rates_are_shares_in_zero_one_or_undefined(scores, data):
    n, k = scores.shape
    labels = st.lists(st.integers(0, k - 1), min_size=n, max_size=n).map(np.array)
    gold, prior = data.draw(labels), data.draw(labels)
    shift = data.draw(st.integers(1, k - 1))
    other = scores[::-1].copy()
    for value in (metrics.flip_rate(scores, other, gold), metrics.prior_alignment(scores, prior),
                  metrics.semantic_override_rate(scores, (gold + shift) % k, prior),
                  metrics.mean_true_label_probability(scores, gold), *metrics.per_class_recall(scores, gold)):
        assert math.isnan(value) or 0.0 <= value <= 1.0


@settings(max_examples=60, deadline=None)
@given(probabilities, st.data())
def test_relabelling_the_classes_changes_nothing(scores, data):
    """Renaming the classes (permuting the K columns and every label the same way) leaves every metric as it
    was, and moves per-class recall with its class."""
    n, k = scores.shape
    labels = st.lists(st.integers(0, k - 1), min_size=n, max_size=n).map(np.array)
    gold, prior = data.draw(labels), data.draw(labels)
    scores = scores + np.arange(k) * 1e-9  # no exact ties: argmax ties break by position, not by class
    other = np.roll(scores, 1, axis=0)
    rename = np.array(data.draw(st.permutations(range(k))))
    new = np.empty_like(scores)
    new[:, rename] = scores
    new_other = np.empty_like(other)
    new_other[:, rename] = other
    follow = (gold + 1) % k
    pairs = [
        (metrics.flip_rate(scores, other, gold), metrics.flip_rate(new, new_other, rename[gold])),
        (metrics.prior_alignment(other, prior), metrics.prior_alignment(new_other, rename[prior])),
        (metrics.semantic_override_rate(other, follow, prior),
         metrics.semantic_override_rate(new_other, rename[follow], rename[prior])),
        (metrics.mean_true_label_probability(scores, gold), metrics.mean_true_label_probability(new, rename[gold])),
    ]
    for before, after in pairs:
        assert (math.isnan(before) and math.isnan(after)) or before == pytest.approx(after)
    assert np.allclose(metrics.per_class_recall(scores, gold),
                       metrics.per_class_recall(new, rename[gold])[rename], equal_nan=True)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 100), min_size=2, max_size=6, unique=True), st.floats(-1, 1), st.floats(0, 1))
def test_sensitivity_recovers_a_linear_fall(percent, slope, intercept):
    shares = np.array(percent) / 100
    accuracies = intercept + slope * np.array(shares)
    assert metrics.label_correctness_sensitivity(shares, accuracies) == pytest.approx(slope, abs=1e-6)
