"""Label corruption of demonstrations (paper spec section 3): the settings, as objects in one registry.

A setting says what the demonstrations show (a pure function of the true labels, K, an RNG and the prompt's
cyclic shift), what "following" the demonstrations means for the query (the follow target, or none), which
parameters it reads (``wrong_share``) and whether it shows demonstrations at all. Everything else reads the
registry: the generated task YAMLs (one per dataset and setting, the metrics each setting reports), the lm-eval
task classes, ``falsedemo wrap``, the sweep's curves. A new setting is one more entry in ``REGISTRY``.

The query is never corrupted: only the labels *shown* on demonstrations change. ``shift`` is the prompt's cyclic
shift s in 1..K-1; a corrupted demonstration of class y shows (y + s) mod K, which is also the label a model
"following" the false demonstrations would give the query.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from lm_eval_false_demos.errors import FalseDemoError

# Metrics every setting reports; FOLLOW_METRIC after them for settings with a follow target, TRAILING_METRICS last.
BASE_METRICS = ("calibrated_acc", "acc")
FOLLOW_METRIC = "follow_acc"
TRAILING_METRICS = ("true_label_prob",)  # mean probability of the true label (softmax over the K labels)


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


# name -> checker of a setting parameter (read from lm-eval's --metadata); None means "not given".
PARAMETER_CHECKS: dict[str, Callable] = {"wrong_share": check_wrong_share}


def draw_shift(rng: random.Random, num_classes: int) -> int:
    if num_classes < 2:
        raise FalseDemoError(f"label corruption needs at least 2 classes, got {num_classes}")
    return 1 + rng.randrange(num_classes - 1)


def shifted(label: int, num_classes: int, shift: int) -> int:
    """The label a cyclic shift maps ``label`` to: a corrupted demonstration shows it, and a model copying the
    false labels answers it for the query (the follow target)."""
    return (label + shift) % num_classes


def _true(labels, num_classes, rng, shift, **_):
    return list(labels)


def _permuted(labels, num_classes, rng, shift, wrong_share=None, **_):
    if wrong_share is None:
        return [shifted(label, num_classes, shift) for label in labels]
    # Exactly round(k * share / 100) wrong, at positions from one seeded permutation: the wrong sets are nested
    # across shares (20 % within 40 % ...), so a graded curve compares like with like.
    positions = list(range(len(labels)))
    rng.shuffle(positions)
    wrong = set(positions[: int(round(len(labels) * wrong_share / 100))])
    return [shifted(label, num_classes, shift) if i in wrong else label for i, label in enumerate(labels)]


def _half(labels, num_classes, rng, shift, **_):
    return [label if rng.random() < 0.5 else shifted(label, num_classes, shift) for label in labels]


def _random(labels, num_classes, rng, shift, **_):
    return [rng.randrange(num_classes) for _ in labels]


@dataclass(frozen=True)
class Setting:
    """One corruption setting.

    ``shows`` is what the demonstrations show; ``follows`` whether a wrong label is systematic enough for the
    query to have a follow target (the prompt's shift of its class); ``parameters`` the options it reads from
    lm-eval's ``--metadata``; ``demonstrations`` False for a setting that shows none (k = 0)."""

    name: str
    description: str
    shows: Callable[..., list[int]]
    follows: bool = False
    parameters: tuple[str, ...] = ()
    demonstrations: bool = True

    def shown_labels(self, true_labels: Sequence[int], num_classes: int, rng: random.Random, shift: int,
                     **parameters) -> list[int]:
        if not 1 <= shift < num_classes:
            raise FalseDemoError(f"shift must be in 1..{num_classes - 1}, got {shift}")
        values = self.parameter_values(parameters)
        return self.shows([int(label) for label in true_labels], num_classes, rng, shift, **values)

    def follow_target(self, label: int, num_classes: int, shift: int) -> int | None:
        """The answer of a model copying these demonstrations, or None where the setting has no such answer."""
        return shifted(int(label), num_classes, shift) if self.follows else None

    def parameter_values(self, given: Mapping) -> dict:
        """This setting's parameters from ``given`` (e.g. lm-eval's task metadata), checked; others are ignored,
        so one ``--metadata`` serves a run over several settings."""
        return {name: PARAMETER_CHECKS[name](given.get(name)) for name in self.parameters
                if given.get(name) is not None}

    @property
    def metrics(self) -> tuple[str, ...]:
        return BASE_METRICS + ((FOLLOW_METRIC,) if self.follows else ()) + TRAILING_METRICS


REGISTRY: dict[str, Setting] = {setting.name: setting for setting in (
    Setting("correct", "every demonstration shows its true label", _true),
    Setting("permuted", "every demonstration's label moved by the prompt's cyclic shift s in 1..K-1 (a derangement "
            "consistent by class); with wrong_share (percent), only that share of the demonstrations",
            _permuted, follows=True, parameters=("wrong_share",)),
    Setting("half", "each demonstration keeps its label with probability 0.5, else shows it shifted by s",
            _half, follows=True),
    Setting("random", "each demonstration shows a label drawn uniformly from the K labels", _random),
    Setting("zeroshot", "no demonstrations", _true, demonstrations=False),
)}
SETTINGS = tuple(REGISTRY)
FOLLOW_SETTINGS = tuple(name for name, setting in REGISTRY.items() if setting.follows)


def shows_false_labels(setting: str, num_fewshot: int | None) -> bool:
    """Whether a prompt of ``setting`` with ``num_fewshot`` demonstrations shows the prompt's shifted (false)
    label, so that following it (``follow_acc``) means something: a setting with a follow target and k >= 1
    (``--num_fewshot 0`` on a permuted task shows no label at all)."""
    return get_setting(setting).follows and (num_fewshot is None or int(num_fewshot) > 0)


def get_setting(name) -> Setting:
    if name not in REGISTRY:
        raise FalseDemoError(f"unknown setting {name!r}; allowed: {', '.join(SETTINGS)}")
    return REGISTRY[name]


def shown_labels(true_labels: Sequence[int], num_classes: int, setting: str, rng: random.Random, shift: int,
                 wrong_share=None) -> list[int]:
    """Labels shown on the demonstrations under ``setting`` (see ``REGISTRY``); ``wrong_share`` only grades the
    settings that read it (permuted)."""
    parameters = {"wrong_share": check_wrong_share(wrong_share)}
    return get_setting(setting).shown_labels(true_labels, num_classes, rng, shift, **parameters)
