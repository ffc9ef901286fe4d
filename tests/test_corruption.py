"""Corruption semantics (spec section 3) over many prompts, with binomial bounds."""

import math
import random

import pytest

from lm_eval_false_demos.core.corruption import SETTINGS, draw_shift, shown_labels
from lm_eval_false_demos.errors import FalseDemoError


def _bounds(n, p, sigmas=5):
    spread = sigmas * math.sqrt(n * p * (1 - p))
    return n * p - spread, n * p + spread


@pytest.mark.parametrize("num_classes", [2, 3, 6, 14])
def test_permuted_is_a_derangement_consistent_by_class(num_classes):
    rng = random.Random(0)
    for _ in range(200):
        labels = [rng.randrange(num_classes) for _ in range(40)]
        shift = draw_shift(rng, num_classes)
        shown = shown_labels(labels, num_classes, "permuted", rng, shift)
        mapping = {}
        for true, label in zip(labels, shown):
            assert label != true
            assert mapping.setdefault(true, label) == label  # one wrong label per class
        assert len(set(mapping.values())) == len(mapping)  # a permutation of the classes


def test_binary_permuted_swaps_labels():
    rng = random.Random(1)
    assert shown_labels([0, 1, 1, 0], 2, "permuted", rng, draw_shift(rng, 2)) == [1, 0, 0, 1]


def test_shift_is_uniform_over_one_to_k_minus_one():
    rng = random.Random(2)
    draws = [draw_shift(rng, 4) for _ in range(3000)]
    assert set(draws) == {1, 2, 3}
    for value in (1, 2, 3):
        low, high = _bounds(3000, 1 / 3)
        assert low < draws.count(value) < high


def test_half_keeps_about_half_and_otherwise_uses_the_prompt_shift():
    rng = random.Random(3)
    kept = total = 0
    for _ in range(500):
        labels = [rng.randrange(3) for _ in range(40)]
        shift = draw_shift(rng, 3)
        shown = shown_labels(labels, 3, "half", rng, shift)
        for true, label in zip(labels, shown):
            assert label in (true, (true + shift) % 3)
            kept += label == true
            total += 1
    low, high = _bounds(total, 0.5)
    assert low < kept < high


@pytest.mark.parametrize("num_classes", [2, 4])
def test_random_is_uniform_and_about_one_in_k_right(num_classes):
    rng = random.Random(4)
    counts = [0] * num_classes
    right = total = 0
    for _ in range(500):
        labels = [rng.randrange(num_classes) for _ in range(40)]
        shown = shown_labels(labels, num_classes, "random", rng, draw_shift(rng, num_classes))
        for true, label in zip(labels, shown):
            counts[label] += 1
            right += label == true
            total += 1
    low, high = _bounds(total, 1 / num_classes)
    assert low < right < high
    assert all(low < count < high for count in counts)


def test_correct_and_zeroshot_show_true_labels():
    rng = random.Random(5)
    for setting in ("correct", "zeroshot"):
        assert shown_labels([0, 2, 1], 3, setting, rng, 1) == [0, 2, 1]


def test_wrong_share_grades_permuted_with_nested_wrong_sets():
    labels = [i % 3 for i in range(40)]
    previous = set()
    for share in (0, 20, 40, 60, 80, 100):
        shown = shown_labels(labels, 3, "permuted", random.Random(9), 2, wrong_share=share)
        wrong = {i for i, (t, s) in enumerate(zip(labels, shown)) if t != s}
        assert len(wrong) == round(40 * share / 100)
        assert all(shown[i] == (labels[i] + 2) % 3 for i in wrong)
        assert previous <= wrong
        previous = wrong


@pytest.mark.parametrize("bad", ["shuffled", "", "Correct", None])
def test_unknown_setting_names_the_allowed_ones(bad):
    with pytest.raises(FalseDemoError, match="allowed: " + ", ".join(SETTINGS)):
        shown_labels([0], 2, bad, random.Random(0), 1)


@pytest.mark.parametrize("bad", [-1, 101, "lots"])
def test_bad_wrong_share(bad):
    with pytest.raises(FalseDemoError, match="wrong_share"):
        shown_labels([0], 2, "permuted", random.Random(0), 1, wrong_share=bad)


def test_registry_objects_say_what_follow_means_and_what_they_read():
    from lm_eval_false_demos.core.corruption import FOLLOW_SETTINGS, REGISTRY, get_setting

    assert SETTINGS == tuple(REGISTRY) and FOLLOW_SETTINGS == ("permuted", "half")
    permuted, random_labels = get_setting("permuted"), get_setting("random")
    assert permuted.follow_target(2, 3, 2) == 1 and random_labels.follow_target(2, 3, 2) is None
    assert permuted.metrics == ("calibrated_acc", "acc", "follow_acc", "true_label_prob")
    assert random_labels.metrics == ("calibrated_acc", "acc", "true_label_prob")
    assert permuted.parameter_values({"wrong_share": "40", "other": 1}) == {"wrong_share": 40.0}
    assert get_setting("half").parameter_values({"wrong_share": 40}) == {}  # a parameter of another setting
    assert not get_setting("zeroshot").demonstrations and all(REGISTRY[s].demonstrations for s in SETTINGS[:4])
    with pytest.raises(FalseDemoError, match="wrong_share"):
        permuted.parameter_values({"wrong_share": 140})


def test_a_new_setting_is_one_registry_entry(monkeypatch):
    """Everything downstream reads the registry: a setting added there gets its task YAMLs and metrics."""
    from lm_eval_false_demos.core import corruption
    from lm_eval_false_demos.integrations import task_yamls

    inverted = corruption.Setting("inverted", "test only", lambda labels, k, rng, shift, **_: [k - 1 - y for y in labels])
    monkeypatch.setitem(corruption.REGISTRY, "inverted", inverted)
    assert corruption.shown_labels([0, 1, 2], 3, "inverted", random.Random(0), 1) == [2, 1, 0]
    template = task_yamls.render_setting_template("inverted")
    assert "num_fewshot: 40" in template and "follow_acc" not in template and "calibrated_acc" in template
