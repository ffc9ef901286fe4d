"""Label corruption of demonstrations (paper spec section 3), as pure functions of labels and an RNG.

The query is never corrupted: only the labels *shown* on demonstrations change. ``shift`` is the
prompt's cyclic shift s in 1..K-1; a corrupted demonstration of class y shows (y + s) mod K, which is
also the label a model "following" the false demonstrations would give the query.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from lm_eval_false_demos.errors import FalseDemoError

SETTINGS = ("correct", "permuted", "half", "random", "zeroshot")
FOLLOW_SETTINGS = ("permuted", "half")


def shows_false_labels(setting: str, num_fewshot: int | None) -> bool:
    """Whether a prompt of ``setting`` with ``num_fewshot`` demonstrations shows the prompt's shifted (false)
    label, so that following it (``follow_acc``) means something: a FOLLOW_SETTINGS setting with k >= 1
    (``--num_fewshot 0`` on a permuted task shows no label at all)."""
    return setting in FOLLOW_SETTINGS and (num_fewshot is None or int(num_fewshot) > 0)


def check_setting(setting: str) -> str:
    if setting not in SETTINGS:
        raise FalseDemoError(f"unknown setting {setting!r}; allowed: {', '.join(SETTINGS)}")
    return setting


def check_wrong_share(wrong_share) -> float | None:
    if wrong_share is None:
        return None
    try:
        share = float(wrong_share)
    except (TypeError, ValueError):
        raise FalseDemoError(f"wrong_share must be a number of percent in 0..100, got {wrong_share!r}") from None
    if not 0 <= share <= 100:
        raise FalseDemoError(f"wrong_share must be a number of percent in 0..100, got {wrong_share!r}")
    return share


def draw_shift(rng: random.Random, num_classes: int) -> int:
    if num_classes < 2:
        raise FalseDemoError(f"label corruption needs at least 2 classes, got {num_classes}")
    return 1 + rng.randrange(num_classes - 1)


def shifted(label: int, num_classes: int, shift: int) -> int:
    """The label a cyclic shift maps ``label`` to: a corrupted demonstration shows it, and a model copying the
    false labels answers it for the query (the follow target)."""
    return (label + shift) % num_classes


def shown_labels(true_labels: Sequence[int], num_classes: int, setting: str, rng: random.Random, shift: int,
                 wrong_share=None) -> list[int]:
    """Labels shown on the demonstrations.

    correct / zeroshot: the true labels. permuted: every label shifted by ``shift``, or, with
    ``wrong_share`` (percent), exactly round(k * share / 100) demonstrations shifted, at positions taken
    from one seeded permutation so the wrong sets are nested across shares (20 % within 40 % ...).
    half: each demonstration independently keeps its label with probability 0.5, else shifted.
    random: each label uniform over all K classes. ``wrong_share`` only grades ``permuted``.
    """
    check_setting(setting)
    labels = [int(label) for label in true_labels]
    share = check_wrong_share(wrong_share)
    if not 1 <= shift < num_classes:
        raise FalseDemoError(f"shift must be in 1..{num_classes - 1}, got {shift}")
    if setting in ("correct", "zeroshot"):
        return labels
    if setting == "permuted":
        if share is None:
            return [shifted(label, num_classes, shift) for label in labels]
        positions = list(range(len(labels)))
        rng.shuffle(positions)
        wrong = set(positions[: int(round(len(labels) * share / 100))])
        return [shifted(label, num_classes, shift) if i in wrong else label for i, label in enumerate(labels)]
    if setting == "half":
        return [label if rng.random() < 0.5 else shifted(label, num_classes, shift) for label in labels]
    return [rng.randrange(num_classes) for _ in labels]
