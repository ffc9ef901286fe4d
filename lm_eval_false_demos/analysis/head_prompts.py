"""Where head scoring reads in a prompt: the defaults of ``falsedemo heads`` and the tokens of each label word.

The prompts themselves come from lm-eval's tasks, as the sweep's do (``integrations.sweep_prompts``: the
task's requests as ``PromptRecord``\\ s, token ids as HFLM's ``_encode_pair`` gives them); here the tokenizer's
character offsets are aligned to those ids, so the tokens of every demonstration's label word can be found.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lm_eval_false_demos.core.corruption import SETTINGS
from lm_eval_false_demos.core.datasets import DATASETS
from lm_eval_false_demos.core.task_names import DEFAULT_FEWSHOT_SEED, TASK_PREFIX, parse_task_name
from lm_eval_false_demos.errors import FalseDemoError

DEFAULT_TASK = "falsedemo_unnatural_permuted"
DEFAULT_NUM_PROMPTS = 100
DEFAULT_SEED = DEFAULT_FEWSHOT_SEED  # so the prompts match `lm_eval --tasks ... --limit N`


def task_name(task: str) -> str:
    """A bare dataset key means its permuted task (``unnatural`` -> ``falsedemo_unnatural_permuted``); any other
    name is lm-eval's to resolve (our tasks, or a user's found through ``--include_path``)."""
    return f"{TASK_PREFIX}{task}_permuted" if task in DATASETS else task


def parse_task(task: str) -> tuple[str, str]:
    """``falsedemo_<dataset>_<setting>`` -> (dataset key, setting); a bare dataset key means permuted."""
    name = task.removeprefix(TASK_PREFIX)
    if name in DATASETS:
        return name, "permuted"
    parsed = parse_task_name(TASK_PREFIX + name)
    if parsed and parsed[0] in DATASETS and parsed[1] in SETTINGS:
        return parsed
    raise FalseDemoError(
        f"task {task!r} is not falsedemo_<dataset>_<setting>; datasets: {', '.join(sorted(DATASETS))}; "
        f"settings: {', '.join(SETTINGS)}"
    )


Encoder = Callable[[str], Sequence[int]]


def align_offsets(tokenizer, context: str, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Each token's character span in ``context``: the tokenizer's offsets of the plain text, after the special
    tokens the model's encoding put in front ((0, 0) each).

    lm-eval moves a context's trailing whitespace into the continuation; when the ids end at the stripped
    context and the label's encoding put that whitespace back as tokens of its own (a chat header's newline),
    those last tokens get empty spans at the end of the text."""
    for text in dict.fromkeys((context, context.rstrip())):
        plain = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        plain_ids = list(plain["input_ids"])
        spans = [tuple(span) for span in plain["offset_mapping"]]
        prefix = len(ids) - len(plain_ids)
        if prefix >= 0 and list(ids[prefix:]) == plain_ids:
            return [(0, 0)] * prefix + spans
        specials = set(getattr(tokenizer, "all_special_ids", ()) or ())
        prefix = 0
        while prefix < len(ids) and ids[prefix] in specials:
            prefix += 1
        end = prefix + len(plain_ids)
        if text != context and list(ids[prefix:end]) == plain_ids and end < len(ids):
            return [(0, 0)] * prefix + spans + [(len(text), len(text))] * (len(ids) - end)
    raise FalseDemoError("cannot align the tokenizer's character offsets with the model's encoding of a prompt")


def encode_context(tokenizer, context: str, encode: Encoder | None = None
                   ) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``context`` from ``encode`` (lm-eval's ``HFLM.tok_encode``; None: the tokenizer with its own
    special tokens) and their character spans (:func:`align_offsets`)."""
    ids = list(encode(context)) if encode is not None else list(tokenizer(context)["input_ids"])
    return ids, align_offsets(tokenizer, context, ids)


def label_token_positions(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Positions of the tokens overlapping characters [start, end) (a label word, with or without its space)."""
    return [i for i, (lo, hi) in enumerate(offsets) if hi > lo and lo < end and hi > start]
