"""The text and settings of a tuned-lens training (``falsedemo lens train``): demonstration documents from the
datasets' demo pools, token windows, held-out split and step budget. Torch-free, so the command line can
check its arguments (and show ``--help``) without loading torch.

Text: demonstrations rendered with their true labels (the prompts' own format) from the datasets' demo
pools only; evaluated queries are never seen (``datasets.load_examples`` keeps the two apart). A held-out
part of the pools measures the full-vocabulary KL per layer before and after training.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence

from lm_eval_false_demos.core.data_loading import load_examples
from lm_eval_false_demos.core.datasets import get_spec
from lm_eval_false_demos.core.prompts import SEPARATOR, render_demo
from lm_eval_false_demos.errors import FalseDemoError

# unnatural is absent: its demonstrations and queries are the same 90 objects, so it has no query-free text.
DEFAULT_DATASETS = ("sst2", "trec", "ag_news", "poem_sentiment", "financial_phrasebank", "rte", "mrpc", "sick")
# The settings a resumed run must repeat (the token budget may change) and training.json records.
RECORDED_SETTINGS = ("seq_len", "batch_size", "positions", "vocab", "lr", "momentum", "weight_decay", "seed",
                     "held_out_sequences")


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """What a lens training computes. ``vocab`` None is the full vocabulary; ``positions`` 0 is every position."""

    datasets: tuple[str, ...] = DEFAULT_DATASETS
    tokens: int = 200_000
    seq_len: int = 128
    batch_size: int = 8
    positions: int = 32
    vocab: int | None = None
    lr: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-3
    seed: int = 0
    held_out_sequences: int = 16
    checkpoint_every: int = 25

    def check(self, prefix: str = "") -> None:
        """FalseDemoError naming the first value that cannot train (before any model loads); ``prefix`` goes
        before each name in the message (the command line's ``--``)."""
        for name in ("tokens", "seq_len", "batch_size", "checkpoint_every", "held_out_sequences"):
            if getattr(self, name) < 1:
                raise FalseDemoError(f"{prefix}{name}={getattr(self, name)} is not allowed; give an integer >= 1")
        if self.positions < 0:
            raise FalseDemoError(f"{prefix}positions={self.positions} is not allowed; give 0 (every position) "
                                 "or more")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise FalseDemoError(f"{prefix}lr={self.lr} is not allowed; give a learning-rate scale > 0 (e.g. 1.0)")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise FalseDemoError(f"{prefix}momentum={self.momentum} is not allowed; give 0 <= momentum < 1")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise FalseDemoError(f"{prefix}weight_decay={self.weight_decay} is not allowed; give a number >= 0")
        if self.positions > self.seq_len:
            raise FalseDemoError(f"{prefix}positions={self.positions} is more than {prefix}seq_len={self.seq_len}; "
                                 f"give 0 (every position) .. {self.seq_len}")
        if self.vocab is not None and self.vocab < 2:
            raise FalseDemoError(f"{prefix}vocab={self.vocab} is not allowed; give all or at least 2 tokens")
        if not self.datasets:
            raise FalseDemoError(f"{prefix}datasets is empty; give at least one dataset key")
        for key in self.datasets:
            try:
                get_spec(key)
            except FalseDemoError as error:
                raise FalseDemoError(f"{prefix}datasets: {error}") from None

    def recorded(self) -> dict:
        """The settings as training.json records them (``vocab`` as given on the command line: all or a count)."""
        values = {name: getattr(self, name) for name in RECORDED_SETTINGS}
        values["vocab"] = "all" if self.vocab is None else str(self.vocab)
        return values


# ------------------------------------------------------------------------------------------- text


def demonstration_documents(keys: Sequence[str], seed: int) -> list[str]:
    """Documents of correctly labelled demonstrations (instruction + demos) from demo pools, minus any query.

    A dataset whose pool is its query set (``unnatural``) contributes nothing; if that leaves no text at all,
    FalseDemoError.
    """
    rng = random.Random(seed)
    documents = []
    for key in keys:
        spec = get_spec(key)
        pool, queries = load_examples(key)
        evaluated = {query.uid for query in queries} | {query.fields for query in queries}
        pool = [example for example in pool if example.uid not in evaluated and example.fields not in evaluated]
        rng.shuffle(pool)
        words = spec.label_word_list
        for start in range(0, len(pool), 16):
            demos = [render_demo(spec, example, words[example.label]) for example in pool[start:start + 16]]
            documents.append(SEPARATOR.join(([spec.instruction] if spec.instruction else []) + demos))
    if not documents:
        raise FalseDemoError(
            f"--datasets {','.join(keys)}: no demonstration text that is not also an evaluated query "
            "(unnatural's demonstrations are its queries); add another dataset"
        )
    rng.shuffle(documents)
    return documents


def token_windows(tokenizer, documents: Sequence[str], seq_len: int) -> list[list[int]]:
    """The documents tokenised into one stream (separated by EOS) and cut into ``seq_len`` windows."""
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for document in documents:
        stream.extend(tokenizer(document, add_special_tokens=False)["input_ids"] + separator)
    return [stream[start:start + seq_len] for start in range(0, len(stream) - seq_len + 1, seq_len)]


@dataclasses.dataclass(frozen=True)
class TrainingText:
    """Token windows of demonstration text: the first ``held_out_sequences`` measure, the rest train."""

    held_out: list[list[int]]
    training: list[list[int]]

    @property
    def windows(self) -> int:
        return len(self.held_out) + len(self.training)


def training_text(tokenizer, settings: TrainingSettings) -> TrainingText:
    windows = token_windows(tokenizer, demonstration_documents(settings.datasets, settings.seed), settings.seq_len)
    return TrainingText(windows[: settings.held_out_sequences], windows[settings.held_out_sequences:])


def planned_steps(settings: TrainingSettings, text: TrainingText) -> int:
    """Steps the token budget pays for; FalseDemoError if not one step, or no training text."""
    steps = settings.tokens // (settings.batch_size * settings.seq_len)
    if steps < 1 or not text.training:
        raise FalseDemoError(
            f"--tokens={settings.tokens} is less than one step of {settings.batch_size} x {settings.seq_len} "
            f"tokens, or the demonstration text ({text.windows} windows) is too short"
        )
    return steps
