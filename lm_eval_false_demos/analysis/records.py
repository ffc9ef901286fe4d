"""What one sweep prompt is, from the lm-eval task that built it to the token ids read out.

``PromptRecord`` (text, labels, demonstration offsets) is filled from lm-eval's requests by
:mod:`lm_eval_false_demos.integrations.sweep_prompts`; ``EncodedPrompt`` (token ids, readout positions) is
what :mod:`lm_eval_false_demos.analysis.readout` feeds the model; ``TaskInfo`` describes the task."""

from __future__ import annotations

import dataclasses

from lm_eval_false_demos.core.corruption import shifted


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    name: str
    dataset: str
    setting: str
    num_fewshot: int
    num_classes: int
    label_words: tuple[str, ...]
    wrong_share: float | None = None  # percent of demonstrations shown wrong, for a graded permuted task

    @property
    def label(self) -> str:
        """The setting as results name it: ``permuted``, or ``permuted@40`` for a graded share (percent)."""
        return self.setting if self.wrong_share is None else f"{self.setting}@{self.wrong_share:g}"


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    """One lm-eval document of one task: the exact context lm-eval scores and what the readouts are scored against."""

    task: str
    doc_id: int
    query_key: str  # identifies the query across the settings of one dataset (pairing)
    context: str
    continuations: tuple[str, ...]  # lm-eval's continuations, in choice order (" Positive", ...)
    gold: int
    follow_target: int
    demo_true_labels: tuple[int, ...]
    demo_follow_targets: tuple[int, ...]
    demo_offsets: tuple[int, ...]  # char offset in ``context`` where demo i's first label token starts
    demo_shown_labels: tuple[int, ...] = ()

    @classmethod
    def from_prompt(cls, prompt, *, task: str, doc_id: int, query_key: str, continuations, context: str | None = None,
                    demo_offsets=None) -> "PromptRecord":
        """The record of a built ``prompts.Prompt`` (``context`` / ``demo_offsets``: its rendering, e.g. a chat)."""
        num_classes = len(continuations)
        return cls(
            task=task,
            doc_id=int(doc_id),
            query_key=str(query_key),
            context=prompt.context if context is None else context,
            continuations=tuple(continuations),
            gold=int(prompt.query_label),
            follow_target=shifted(prompt.query_label, num_classes, prompt.shift),
            demo_true_labels=tuple(prompt.demo_true_labels),
            demo_follow_targets=tuple(shifted(label, num_classes, prompt.shift) for label in prompt.demo_true_labels),
            demo_offsets=tuple(prompt.demo_readout_offsets if demo_offsets is None else demo_offsets),
            demo_shown_labels=tuple(prompt.demo_shown_labels),
        )


@dataclasses.dataclass(frozen=True)
class EncodedPrompt:
    index: int  # position in the global record list
    input_ids: tuple[int, ...]
    positions: tuple[int, ...]  # readout token positions: demo 0..k-1, then the query (last)
    label_token_ids: tuple[int, ...]
    # The labels' first tokens at the demo positions when spelt differently there (a chat's single user
    # message shows " Positive" where the assistant turn starts with "Positive"); empty: the same ids.
    demo_label_token_ids: tuple[int, ...] = ()
