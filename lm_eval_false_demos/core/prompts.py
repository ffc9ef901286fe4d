"""Paired prompt building (paper spec sections 2-3), shared by the lm-eval tasks and the sweep analysis.

A prompt is the instruction line (if any), k demonstrations and the query, joined by a blank line; the
query is the demo format cut just before `` {label}``. Demonstrations are drawn as in the paper: each
slot's class uniformly at random, then an unused example of that class (the query excluded); a class
whose examples run out leaves the draw. Every class must offer at least ceil(k / K) candidates.

Pairing: the demonstrations depend only on (dataset, query uid, seed, k, token budget), through their
own RNG stream; the corruption (shift, per-demo coin flips) uses a second stream seeded by (dataset,
query uid, seed). So the correct / permuted / half / random prompts of one query show the same texts in
the same order and differ only in label words, whatever the query order, ``--limit`` or process rank.

Token budget: with a ``token_counter`` and ``max_tokens``, every demonstration is measured with the
label word that costs most tokens (so the budget never depends on the setting). If the drawn prompt does
not fit, the draw is repeated among demonstrations no longer than the per-slot share of the budget; if
k of those do not exist, the build fails. Demonstrations are never cut.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lm_eval_false_demos.core.corruption import check_wrong_share, draw_shift, get_setting, shifted
from lm_eval_false_demos.core.datasets import DatasetSpec, Example
from lm_eval_false_demos.errors import FalseDemoError

SEPARATOR = "\n\n"
# Tokens reserved beyond the measured pieces: BOS and merges across the joins.
BUDGET_SLACK = 8


@dataclass(frozen=True)
class Prompt:
    context: str
    query_label: int
    demo_true_labels: tuple[int, ...]
    demo_shown_labels: tuple[int, ...]
    shift: int
    demo_readout_offsets: tuple[int, ...]
    demo_uids: tuple[str, ...] = ()
    num_classes: int = 0
    # The pieces, for renderings other than raw text (chat.py): demo i is demo_questions[i] + " " +
    # demo_label_words[i] (+ the format's tail, e.g. "."); the query is query_text.
    instruction: str | None = None
    demo_questions: tuple[str, ...] = ()
    demo_label_words: tuple[str, ...] = ()
    query_text: str = ""

    @property
    def follow_label(self) -> int:
        """The label the corruption maps the query's class to (the answer of a model copying false labels)."""
        return shifted(self.query_label, self.num_classes, self.shift)


def _stream_seed(*parts) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def query_shift(spec: DatasetSpec, query_uid: str, seed: int) -> int:
    """The cyclic shift s of the prompt for this query (same for every setting and every k)."""
    return draw_shift(random.Random(_stream_seed("corruption", spec.key, query_uid, seed)), spec.num_classes)


def follow_target(spec: DatasetSpec, query: Example, seed: int) -> int:
    """The label the corruption maps the query's class to: what a model copying false labels answers."""
    return shifted(query.label, spec.num_classes, query_shift(spec, query.uid, seed))


def render_demo(spec: DatasetSpec, example: Example, label_word: str) -> str:
    return spec.demo_format.format(label=label_word, **dict(zip(spec.format_fields, example.fields)))


def render_query(spec: DatasetSpec, example: Example) -> str:
    cut = spec.demo_format.index(" {label}")
    return spec.demo_format[:cut].format(**dict(zip(spec.format_fields, example.fields)))


class _Grouped:
    """Pool grouped by class; kept for the last pool seen (the pool object is held, so ids stay valid)."""

    last: tuple[object, dict[int, list[Example]]] | None = None

    @classmethod
    def of(cls, pool: Sequence[Example], num_classes: int) -> dict[int, list[Example]]:
        if cls.last is not None and cls.last[0] is pool:
            return cls.last[1]
        groups: dict[int, list[Example]] = {c: [] for c in range(num_classes)}
        for example in pool:
            groups[example.label].append(example)
        cls.last = (pool, groups)
        return groups


def _draw(rng: random.Random, groups: dict[int, list[Example]], query_uid: str, k: int,
          fits: Callable[[Example], bool] | None) -> list[Example] | None:
    """Class-uniform draw without repeats; None when fewer than k eligible examples exist."""
    tried: dict[int, set[int]] = {c: set() for c in groups}
    open_classes = [c for c in groups if groups[c]]
    chosen: list[Example] = []
    while len(chosen) < k:
        if not open_classes:
            return None
        label = open_classes[rng.randrange(len(open_classes))]
        members = groups[label]
        index = rng.randrange(len(members))
        if index not in tried[label]:
            tried[label].add(index)
            candidate = members[index]
            if candidate.uid != query_uid and (fits is None or fits(candidate)):
                chosen.append(candidate)
        if len(tried[label]) == len(members):
            open_classes.remove(label)
    return chosen


def _check_pool(spec: DatasetSpec, groups: dict[int, list[Example]], query_uid: str, k: int) -> None:
    check_class_pool(spec.key, spec.class_names, groups, query_uid, k)


def check_class_pool(name: str, class_names: Sequence[str], groups: dict[int, list[Example]], query_uid: str,
                     k: int) -> None:
    """A class-uniform draw of k demonstrations needs k examples besides the query and ceil(k / K) per class."""
    available = {c: sum(1 for e in members if e.uid != query_uid) for c, members in groups.items()}
    total = sum(available.values())
    if k > total:
        raise FalseDemoError(
            f"k={k} demonstrations requested but dataset {name!r} has only {total} in its demo pool "
            f"(query excluded); use k <= {total}"
        )
    needed = math.ceil(k / len(class_names))
    for label, count in available.items():
        if count < needed:
            raise FalseDemoError(
                f"dataset {name!r}: class {class_names[label]!r} has only {count} demonstrations "
                f"(query excluded), fewer than ceil(k/K) = {needed} needed for k={k}; "
                f"allowed: k <= {count * len(class_names)}"
            )


def class_uniform_demos(name: str, class_names: Sequence[str], query_uid: str, pool: Sequence[Example], k: int,
                        seed: int) -> list[Example]:
    """The paper's draw (each slot's class uniform, then an unused example of it, the query excluded) from the
    stream the lm-eval tasks use: for dataset ``name`` the same demonstrations as :func:`choose_demos` without a
    budget, whoever calls it (our tasks, a wrapped task with ``sampler: class_uniform``)."""
    if k == 0:
        return []
    groups = _Grouped.of(pool, len(class_names))
    check_class_pool(name, class_names, groups, query_uid, k)
    return _draw(random.Random(_stream_seed("demos", name, query_uid, seed, k)), groups, query_uid, k, None)


def corrupted_labels(name: str, query_uid: str, seed: int, setting: str, true_labels: Sequence[int], num_classes: int,
                     parameters=None) -> tuple[int, list[int]]:
    """(the prompt's shift, the labels its demonstrations show) for this query: a stream of its own, seeded by
    (dataset, query, seed), so every setting of one query shares the shift and the demonstrations stay paired."""
    rng = random.Random(_stream_seed("corruption", name, query_uid, seed))
    shift = draw_shift(rng, num_classes)
    return shift, get_setting(setting).shown_labels(true_labels, num_classes, rng, shift, **dict(parameters or {}))


def stream_seed(*parts) -> int:
    """An integer seed from the parts (a sha256 prefix): the same on every process and in every order."""
    return _stream_seed(*parts)


def choose_demos(spec: DatasetSpec, query: Example, pool: Sequence[Example], k: int, seed: int, *,
                 token_counter: Callable[[str], int] | None = None, max_tokens: int | None = None) -> list[Example]:
    if k < 0:
        raise FalseDemoError(f"k must be >= 0, got {k}")
    if k == 0:
        return []
    groups = _Grouped.of(pool, spec.num_classes)
    _check_pool(spec, groups, query.uid, k)
    budgeted = token_counter is not None and max_tokens is not None
    # The first draw ignores the budget, so a budget that is never hit changes nothing (a long-context
    # model and a run without a tokenizer see the same demonstrations).
    stream = ("demos", spec.key, query.uid, seed, k)
    demos = _draw(random.Random(_stream_seed(*stream)), groups, query.uid, k, None)
    if not budgeted:
        return demos
    longest_word = max(spec.label_word_list, key=lambda word: token_counter(" " + word))
    lengths: dict[str, int] = {}

    def demo_tokens(example: Example) -> int:
        if example.uid not in lengths:
            lengths[example.uid] = token_counter(render_demo(spec, example, longest_word))
        return lengths[example.uid]

    fixed = (token_counter(render_query(spec, query)) + token_counter(" " + longest_word) + BUDGET_SLACK
             + (token_counter(spec.instruction) if spec.instruction else 0)
             + token_counter(SEPARATOR) * (k + (1 if spec.instruction else 0)))
    room = max_tokens - fixed
    if sum(map(demo_tokens, demos)) <= room:
        return demos
    if room < k:  # not even one token per demonstration: "at most -1 tokens long" would mislead
        raise FalseDemoError(
            f"dataset {spec.key!r}, query {query.uid}: the query, instruction and label alone take {fixed} of "
            f"max_tokens={max_tokens} tokens, leaving no room for k={k} demonstrations; use a model with a longer "
            "context (or max_length=) or a smaller k"
        )
    per_slot = room // k
    demos = _draw(random.Random(_stream_seed(*stream, "capped", max_tokens)), groups, query.uid, k,
                  lambda example: demo_tokens(example) <= per_slot)
    if demos is None:
        raise FalseDemoError(
            f"dataset {spec.key!r}, query {query.uid}: cannot fit k={k} demonstrations in max_tokens={max_tokens} "
            f"(query, instruction and label take {fixed} tokens; fewer than k demonstrations are at most "
            f"{per_slot} tokens long); use a smaller k or a model with a longer context"
        )
    return demos


def build_prompt(spec: DatasetSpec, query: Example, pool: Sequence[Example], k: int, setting: str, seed: int, *,
                 wrong_share=None, token_counter: Callable[[str], int] | None = None,
                 max_tokens: int | None = None) -> Prompt:
    if not get_setting(setting).demonstrations and k != 0:
        raise FalseDemoError(f"setting {setting!r} shows no demonstrations; got k={k} (use k=0)")
    demos = choose_demos(spec, query, pool, k, seed, token_counter=token_counter, max_tokens=max_tokens)
    true_labels = [demo.label for demo in demos]
    shift, shown = corrupted_labels(spec.key, query.uid, seed, setting, true_labels, spec.num_classes,
                                    {"wrong_share": check_wrong_share(wrong_share)})
    words = spec.label_word_list
    parts: list[str] = [spec.instruction] if spec.instruction else []
    offsets: list[int] = []
    questions: list[str] = []
    position = sum(len(part) + len(SEPARATOR) for part in parts)
    for demo, label in zip(demos, shown):
        text = render_demo(spec, demo, words[label])
        questions.append(render_query(spec, demo))
        offsets.append(position + len(questions[-1]))
        parts.append(text)
        position += len(text) + len(SEPARATOR)
    query_text = render_query(spec, query)
    parts.append(query_text)
    return Prompt(
        context=SEPARATOR.join(parts),
        query_label=query.label,
        demo_true_labels=tuple(true_labels),
        demo_shown_labels=tuple(shown),
        shift=shift,
        demo_readout_offsets=tuple(offsets),
        demo_uids=tuple(demo.uid for demo in demos),
        num_classes=spec.num_classes,
        instruction=spec.instruction,
        demo_questions=tuple(questions),
        demo_label_words=tuple(words[label] for label in shown),
        query_text=query_text,
    )


def label_token_ids(tokenizer, label_words: Sequence[str], lead: str = " ", anchor: str = "") -> list[int]:
    """First token id of ``lead + word`` for each label word, as tokenised right after ``anchor`` (the text
    the label follows, e.g. a chat template's assistant header; "" for none). The raw prompts' spelling is
    " " + word; after a header ending in a newline it is the bare word. Colliding first tokens are an error."""
    base = list(tokenizer(anchor, add_special_tokens=False)["input_ids"]) if anchor else []
    ids = []
    for word in label_words:
        encoded = list(tokenizer(anchor + lead + word, add_special_tokens=False)["input_ids"])
        if encoded[:len(base)] != base:
            raise FalseDemoError(
                f"this tokenizer merges the text before the label ({anchor[-20:]!r}) with the label "
                f"{lead + word!r}; no token position reads the label alone"
            )
        if len(encoded) == len(base):
            raise FalseDemoError(f"label word {word!r} encodes to no tokens")
        ids.append(int(encoded[len(base)]))
    seen: dict[int, str] = {}
    for word, token in zip(label_words, ids):
        if token in seen:
            raise FalseDemoError(
                f"label words {seen[token]!r} and {word!r} share their first token {token} "
                f"({tokenizer.convert_ids_to_tokens(token)!r}) for this tokenizer when spelt {lead + word!r}; "
                f"first-token scoring cannot tell them apart. Label words: {list(label_words)}"
            )
        seen[token] = word
    return ids
