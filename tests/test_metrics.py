"""Calibrated accuracy and friends against hand-worked examples."""

import numpy as np
import pytest

from lm_eval_false_demos.core import metrics
from lm_eval_false_demos.core.metrics import (
    calibrated_accuracy, calibrated_credit, follow_accuracy, label_accuracy, label_thresholds, normalise,
    paired_bootstrap,
)


def test_binary_thresholds_are_medians_and_credit_by_hand():
    # Scores of label 1: .9 .6 .4 .2 -> median .5; label 0 scores .1 .4 .6 .8 -> median .5.
    scores = np.array([[0.1, 0.9], [0.4, 0.6], [0.6, 0.4], [0.8, 0.2]])
    gold = np.array([1, 0, 0, 1])
    assert label_thresholds(scores).tolist() == pytest.approx([0.5, 0.5])
    # q0 gold 1: .9 > .5 -> 1; q1 gold 0: .4 < .5 -> 0; q2 gold 0: .6 > .5 -> 1; q3 gold 1: .2 < .5 -> 0.
    assert calibrated_credit(scores, gold).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert calibrated_accuracy(scores, gold) == 0.5
    assert label_accuracy(scores, gold) == 0.5


def test_calibration_rescues_a_biased_model_that_argmax_misses():
    # Always prefers label 0, but ranks the label-1 queries correctly.
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    gold = np.array([0, 0, 1, 1])
    assert label_accuracy(scores, gold) == 0.5
    assert calibrated_accuracy(scores, gold) == 1.0


def test_three_classes_quantile_with_linear_interpolation_and_a_tie():
    scores = np.array([
        [0.5, 0.3, 0.2],
        [0.2, 0.6, 0.2],
        [0.1, 0.2, 0.7],
        [0.4, 0.4, 0.2],
    ])
    gold = np.array([0, 1, 2, 1])
    # 2/3 quantile, position (4-1)*2/3 = 2 in the sorted column: exact order statistics.
    # label 0: sorted .1 .2 .4 .5 -> .4; label 1: .2 .3 .4 .6 -> .4; label 2: .2 .2 .2 .7 -> .2
    assert label_thresholds(scores).tolist() == pytest.approx([0.4, 0.4, 0.2])
    # q0: .5 > .4 -> 1; q1: .6 > .4 -> 1; q2: .7 > .2 -> 1; q3: .4 == .4 -> 1/3
    assert calibrated_credit(scores, gold).tolist() == pytest.approx([1, 1, 1, 1 / 3])
    assert calibrated_accuracy(scores, gold) == pytest.approx(10 / 12)


def test_interpolated_threshold_between_order_statistics():
    # N = 3, K = 2: median of label-0 scores .2 .5 .9 is .5; of label 1 (.8 .5 .1) is .5.
    # N = 2: median of (.3, .7) is .5 interpolated.
    scores = np.array([[0.3, 0.7], [0.7, 0.3]])
    assert label_thresholds(scores).tolist() == pytest.approx([0.5, 0.5])
    assert calibrated_accuracy(scores, [1, 1]) == 0.5  # .7 above, .3 below


def test_fourteen_classes_one_hot_and_uninformative():
    num = 14
    gold = np.arange(num * 3) % num
    perfect = np.full((len(gold), num), 0.01)
    perfect[np.arange(len(gold)), gold] = 0.87
    # Threshold = 13/14 quantile of each column (3 highs among 42) is below .87 and above .01.
    assert calibrated_accuracy(perfect, gold) == 1.0
    wrong = np.roll(perfect, 1, axis=1)
    assert calibrated_accuracy(wrong, gold) == 0.0


@pytest.mark.parametrize("num_classes", [2, 3, 14])
@pytest.mark.parametrize("size", [1, 7, 100, 999])
def test_uninformative_model_scores_exactly_one_over_k(num_classes, size):
    gold = np.arange(size) % num_classes
    scores = normalise(np.zeros((size, num_classes)))  # identical log-likelihoods for every label
    assert calibrated_accuracy(scores, gold) == 1 / num_classes
    # Any constant score vector (biased but input-independent) is uninformative too.
    biased = np.tile(normalise(np.arange(num_classes, dtype=float)), (size, 1))
    assert calibrated_accuracy(biased, gold) == 1 / num_classes


def test_normalise_is_a_softmax_over_labels():
    out = normalise([[np.log(1), np.log(3)], [-1000.0, -1000.0]])
    assert out.ravel().tolist() == pytest.approx([0.25, 0.75, 0.5, 0.5])


def test_follow_accuracy_counts_the_shifted_label():
    scores = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    assert follow_accuracy(scores, [2, 1]) == 0.5


def test_paired_bootstrap_interval_contains_the_estimate_and_is_deterministic():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    b = a - 0.1 + 0.01 * rng.standard_normal(200)
    low, high = paired_bootstrap(lambda x, y: float(np.mean(x - y)), [a, b], n_resamples=300, seed=3)
    assert low < 0.1 < high and high - low < 0.01
    assert (low, high) == paired_bootstrap(lambda x, y: float(np.mean(x - y)), [a, b], n_resamples=300, seed=3)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        calibrated_accuracy(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError):
        calibrated_accuracy(np.zeros((2, 2)), [0, 2])


def test_gap_recovered_follows_the_spec():
    assert metrics.gap_recovered(0.8, 0.4, 0.6) == pytest.approx(0.5)
    assert metrics.gap_recovered(0.8, 0.4, 0.4) == pytest.approx(0.0)
    assert metrics.gap_recovered(0.8, 0.4, 0.9) == pytest.approx(1.25)
    assert np.isnan(metrics.gap_recovered(0.5, 0.6, 0.7))  # no gap to recover


def test_pooled_gap_recovered_weighs_datasets_by_their_gap():
    # per-dataset ratios: 0.5 and (1 - (0.6 - 0.75) / 0.05) = 4.0; pooled over the means: 0.769
    assert metrics.pooled_gap_recovered([0.9, 0.6], [0.3, 0.55], [0.6, 0.75]) == pytest.approx(0.25 / 0.325)
