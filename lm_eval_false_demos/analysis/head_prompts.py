"""The prompts head scoring and evaluation read, and their tokens.

Prompts are built as the lm-eval task ``falsedemo_<dataset>_<setting>`` builds them (same demonstrations for
the same few-shot seed, same token budget; with chat options, as ``lm_eval --apply_chat_template`` renders
them), and encoded by the caller's ``encode`` (lm-eval's ``HFLM.tok_encode``: its BOS rule, no second BOS after a
chat template's ``<bos>``), with the tokenizer's character offsets aligned to those ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from lm_eval_false_demos.core import prompts as prompts_module
from lm_eval_false_demos.core.chat import render_prompt
from lm_eval_false_demos.core.corruption import SETTINGS
from lm_eval_false_demos.core.data_loading import load_examples
from lm_eval_false_demos.core.datasets import DATASETS, get_spec
from lm_eval_false_demos.core.task_names import DEFAULT_FEWSHOT_SEED, DEFAULT_NUM_FEWSHOT, TASK_PREFIX, parse_task_name
from lm_eval_false_demos.errors import FalseDemoError

DEFAULT_TASK = "falsedemo_unnatural_permuted"
DEFAULT_NUM_PROMPTS = 100
DEFAULT_SEED = DEFAULT_FEWSHOT_SEED  # so the prompts match `lm_eval --tasks ... --limit N`


class TaskPrompts(NamedTuple):
    spec: Any  # datasets.DatasetSpec
    setting: str
    prompts: list  # prompts.Prompt, rendered as a chat with chat options


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


def default_num_fewshot(dataset: str) -> int:
    """The number of demonstrations the generated lm-eval task YAMLs use (0 for the zero-shot setting)."""
    return DEFAULT_NUM_FEWSHOT


def token_counter(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_task_prompts(task: str, num_prompts: int | None, seed: int, num_fewshot: int | None, tokenizer,
                       max_tokens: int | None = None, chat_options=None) -> TaskPrompts:
    """(spec, setting, prompts) for the first ``num_prompts`` queries, built exactly as the lm-eval task builds
    them within ``max_tokens`` (lm-eval's ``max_length``; None: no budget) and, with ``chat_options``, as
    ``lm_eval --apply_chat_template`` renders them."""
    dataset, setting = parse_task(task)
    spec = get_spec(dataset)
    pool, queries = load_examples(dataset)
    if num_prompts is not None:
        queries = queries[:num_prompts]
    k = num_fewshot if num_fewshot is not None else default_num_fewshot(dataset)
    counter = token_counter(tokenizer)
    built = [
        prompts_module.build_prompt(
            spec, query, pool, k, setting, seed, token_counter=counter, max_tokens=max_tokens
        )
        for query in queries
    ]
    if chat_options is not None:
        name = str(getattr(tokenizer, "name_or_path", "") or "model")
        built = [render_prompt(prompt, tokenizer, chat_options, name) for prompt in built]
    return TaskPrompts(spec, setting, built)


Encoder = Callable[[str], Sequence[int]]


def encode_context(tokenizer, context: str, encode: Encoder | None = None
                   ) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``context`` from ``encode`` (lm-eval's ``HFLM.tok_encode``; None: the tokenizer with its own
    special tokens), and each token's character span: the tokenizer's offsets of the plain text, after the
    special tokens the encoder put in front ((0, 0) each)."""
    ids = list(encode(context)) if encode is not None else list(tokenizer(context)["input_ids"])
    plain = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    prefix = len(ids) - len(plain["input_ids"])
    if prefix < 0 or ids[prefix:] != list(plain["input_ids"]):
        raise FalseDemoError("cannot align the tokenizer's character offsets with the model's encoding of a prompt")
    return ids, [(0, 0)] * prefix + [tuple(span) for span in plain["offset_mapping"]]


def label_token_positions(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Positions of the tokens overlapping characters [start, end) (a label word, with or without its space)."""
    return [i for i, (lo, hi) in enumerate(offsets) if hi > lo and lo < end and hi > start]
