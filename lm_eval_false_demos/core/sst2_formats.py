"""SST-2's 15 prompt formats (paper spec section 2a); the paper's SST-2 figure is their mean.

Format 0 is the ``sst2`` entry of the dataset table. A format ``i`` is the same dataset (same splits,
same queries, same demonstrations: the prompt streams are seeded by the dataset key ``sst2``) with
other label words, another demo format and, for formats 2 and 3, a narrative line before the
demonstrations (it takes the instruction's place). Its *variant key* ``sst2_f<i>`` names it in task
names (``falsedemo_sst2_f3_permuted``) and in results; format 0 keeps the plain key ``sst2``.
"""

from __future__ import annotations

import dataclasses
import re

from lm_eval_false_demos.core.corruption import SETTINGS
from lm_eval_false_demos.core.datasets import DatasetSpec, get_spec
from lm_eval_false_demos.errors import FalseDemoError

BASE_KEY = "sst2"
_RSQUO = "\u2019"  # format 2's apostrophes are typographic in the authors' code

# index: ((negative word, positive word), demo format, narrative line or None)
FORMATS: tuple[tuple[tuple[str, str], str, str | None], ...] = (
    (("Negative", "Positive"), "Review: {text}\nAnswer: {label}.", None),
    (("bad", "good"), "Review: {text}\nAnswer: {label}.", None),
    (("bad", "good"),
     f"My review for last night{_RSQUO}s film: {{text}} The critics agreed that this movie was {{label}}.",
     f"Here is what our critics think for this month{_RSQUO}s films."),
    (("negative", "positive"), 'One of our critics wrote "{text}". Her sentiment towards the film was {label}.',
     "Critical reception [ edit ]."),
    (("bad", "good"),
     'In a contemporary review, Roger Ebert wrote: "{text}". Entertainment Weekly  agreed, and the overall '
     "critical reception of the film was {label}.", None),
    (("No", "Yes"), "Review: {text}\nPositive Review? {label}.", None),
    (("Negative", "Positive"),
     "Review: {text}\nQuestion: Is the sentiment of the above review Positive or Negative?\nAnswer: {label}.", None),
    (("bad", "good"),
     "Review: {text}\nQuestion: Did the author think that the movie was good or bad?\nAnswer: {label}.", None),
    (("bad", "good"),
     "Question: Did the author of the following tweet think that the movie was good or bad?\nTweet: {text}\n"
     "Answer: {label}.", None),
    (("bad", "good"), "{text} My overall feeling was that the movie was {label}.", None),
    # Inverted as in the authors' code: a negative review shows "liked", a positive one "hated".
    (("liked", "hated"), "{text} I {label}.", None),
    (("0", "5"), "{text} My friend asked me if I would give the movie 0 or 5 stars, I said {label}.", None),
    (("Negative", "Positive"), "Input: {text}\nSentiment: {label}.", None),
    (("False", "True"), "Review: {text}\nPositive: {label}.", None),
    (("0", "5"), "Review: {text}\nStars: {label}.", None),
)
FORMAT_COUNT = len(FORMATS)
ALL_FORMATS = tuple(range(FORMAT_COUNT))
_VARIANT = re.compile(rf"^{BASE_KEY}_f(\d+)$")


def variant_key(index: int) -> str:
    """``sst2`` for format 0, ``sst2_f<i>`` otherwise."""
    check_format(index)
    return BASE_KEY if index == 0 else f"{BASE_KEY}_f{index}"


def parse_variant_key(key: str) -> tuple[str, int] | None:
    """``sst2_f3`` -> ``("sst2", 3)``, ``sst2`` -> ``("sst2", 0)``; None for any other key."""
    if key == BASE_KEY:
        return BASE_KEY, 0
    match = _VARIANT.match(key) if isinstance(key, str) else None
    if match and 1 <= int(match.group(1)) < FORMAT_COUNT:
        return BASE_KEY, int(match.group(1))
    return None


def check_format(index) -> int:
    """An index 0..14 given as an int or as digits; anything else is one clear error."""
    if isinstance(index, int) and not isinstance(index, bool):
        value = index
    elif isinstance(index, str) and index.strip().isdigit():
        value = int(index.strip())
    else:
        raise FalseDemoError(f"SST-2 prompt format {index!r} is not an integer; allowed: 0..{FORMAT_COUNT - 1}")
    if not 0 <= value < FORMAT_COUNT:
        raise FalseDemoError(f"SST-2 prompt format {value} does not exist; allowed: 0..{FORMAT_COUNT - 1}")
    return value


def parse_formats(text: str) -> tuple[int, ...]:
    """``all``, ``3``, ``0,5,10`` or ``0-14`` -> sorted format indices."""
    text = str(text).strip()
    if text == "all":
        return ALL_FORMATS
    chosen: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if dash:
            first, last = check_format(low), check_format(high)
            if first > last:
                raise FalseDemoError(f"SST-2 format range {part!r} is empty; write low-high with low <= high")
            chosen.update(range(first, last + 1))
        else:
            chosen.add(check_format(part))
    return tuple(sorted(chosen))


def format_spec(index: int, base: DatasetSpec | None = None) -> DatasetSpec:
    """The ``sst2`` spec with format ``index``'s label words, demo format and narrative line.

    The key stays ``sst2``: the demonstration and corruption streams, the splits and the query set are
    the same for every format, so formats differ only in how the same examples are worded.
    """
    index = check_format(index)
    base = base or get_spec(BASE_KEY)
    (negative, positive), demo_format, narrative = FORMATS[index]
    if index == 0:
        return base
    negative_class, positive_class = base.class_names
    return dataclasses.replace(
        base, label_words={negative_class: negative, positive_class: positive}, demo_format=demo_format,
        instruction=narrative,
    )


def expand_task_names(task_names, formats: tuple[int, ...] | None, available=None) -> list[str]:
    """SST-2 task names -> one task per prompt format, for analyses that score each format on its own.

    ``falsedemo_sst2_formats_<setting>`` (all formats in one task) becomes the 15 per-format tasks; with
    ``formats`` given, every SST-2 task of a setting (format 0's, a single format's or all formats') becomes
    the tasks of exactly those formats. ``available`` maps an all-formats task to the formats it kept (it
    leaves out formats its tokenizer cannot score). Other names pass unchanged; order is kept, duplicates dropped.
    """
    prefix = f"falsedemo_{BASE_KEY}_"
    expanded: list[str] = []
    for name in task_names:
        chosen = None
        rest, _, setting = name.rpartition("_")
        if name.startswith(prefix) and setting in SETTINGS:
            key = rest[len("falsedemo_"):]
            if key == f"{BASE_KEY}_formats":
                chosen = formats or (available or {}).get(name, ALL_FORMATS)
            elif parse_variant_key(key) is not None and formats is not None:
                chosen = formats
        names = [f"falsedemo_{variant_key(index)}_{setting}" for index in chosen] if chosen else [name]
        expanded += [item for item in names if item not in expanded]
    return expanded
