"""False induction heads: prefix-matching and label-promoting scores of every head, and the random control.

Scoring (paper-spec section 7) runs ONE forward per prompt of the scoring task (default
``falsedemo_unnatural_permuted``, the same prompts ``lm_eval --tasks <task> --limit N`` builds) and keeps,
per layer, only what the scores need at the query's readout token (head_readout.ReadoutCapture):

* the readout row of every head's post-softmax attention: the pass runs sdpa with an implementation that
  also returns that one row (core/readout_attention.py), so no [T, T] matrix is ever formed (Gemma-2's
  soft-capped attention falls back to eager, whose matrices are sliced and freed layer by layer);
* the readout row of the attention output projection's input (the heads' ``z`` vectors) and the final
  residual, from which head_readout.label_promotion forms each head's label-promoting score.

Prefix-matching score, per prompt: ``sum A_h(readout, t)`` over the tokens t of the *shown* label words of
earlier demonstrations whose TRUE class equals the query's, minus ``1/(K-1)`` times the same sum over the
other demonstrations. Label-promoting score, per prompt: the head's write pushed through the final norm and
the output head's label rows, ``logit(label shown for the query's class, (y+s)%K) - logit(true label y)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from lm_eval_false_demos.analysis.head_prompts import label_token_positions
from lm_eval_false_demos.analysis.head_readout import ReadoutCapture, label_promotion, run_to_last_block
from lm_eval_false_demos.analysis.records import PromptRecord
from lm_eval_false_demos.core.architectures import ModelModules, resolve_modules
from lm_eval_false_demos.core.devices import input_device
from lm_eval_false_demos.core.readout_attention import weights_capturing_attention
from lm_eval_false_demos.errors import FalseDemoError

DEFAULT_TOP_K = 5


@dataclasses.dataclass(frozen=True)
class ScoringItem:
    """One prompt reduced to token ids and positions; the readout is the last token of ``input_ids``."""

    input_ids: tuple[int, ...]
    same_class_positions: tuple[int, ...]  # label tokens of earlier demos whose true class is the query's
    other_class_positions: tuple[int, ...]  # label tokens of the other demos
    true_label_id: int  # first token of " " + label word of the query's true class y
    shown_label_id: int  # first token of the label shown for class y in the demos, class (y + s) % K
    num_classes: int


def scoring_item(record: PromptRecord, input_ids: Sequence[int], offsets: Sequence[tuple[int, int]],
                 label_words: Sequence[str], label_ids: Sequence[int]) -> ScoringItem:
    """Token positions of every demo's shown label word, split by the demo's TRUE class vs the query's.

    ``input_ids``: the prompt as the model encodes it (its last token is the readout), ``offsets``: each token's
    character span in ``record.context`` (head_prompts.align_offsets), ``label_ids``: the labels' first tokens
    as the query's label is scored, in class order."""
    num_classes = len(label_words)
    same, other = [], []
    context = record.context
    for offset, true_class, shown in zip(record.demo_offsets, record.demo_true_labels, record.demo_shown_labels):
        word = label_words[shown]
        start = offset + 1 if context[offset:offset + 1] == " " else offset  # a chat turn has no space
        if context[start:start + len(word)] != word:
            raise FalseDemoError(
                f"demo label offset {offset} does not point at ' {word}' in the prompt "
                f"(found {context[offset:offset + 1 + len(word)]!r})"
            )
        # The word's own characters: a token holding only the separating space is not part of the label.
        positions = label_token_positions(offsets, start, start + len(word))
        if not positions:
            raise FalseDemoError(f"no token covers the label ' {word}' at character {offset}")
        (same if true_class == record.gold else other).extend(positions)
    return ScoringItem(
        input_ids=tuple(input_ids),
        same_class_positions=tuple(same),
        other_class_positions=tuple(other),
        true_label_id=int(label_ids[record.gold]),
        shown_label_id=int(label_ids[record.follow_target]),
        num_classes=num_classes,
    )


@dataclasses.dataclass
class HeadScores:
    """Per-prompt scores, [N, L, H] each; means and standard deviations over prompts as properties."""

    prefix_matching: np.ndarray
    label_promoting: np.ndarray

    @property
    def num_prompts(self) -> int:
        return self.prefix_matching.shape[0]

    @property
    def pm_mean(self) -> np.ndarray:
        return self.prefix_matching.mean(0)

    @property
    def lp_mean(self) -> np.ndarray:
        return self.label_promoting.mean(0)

    def ranked(self) -> list[dict]:
        """All heads, highest mean prefix-matching score first (ties: layer, head)."""
        pm, lp = self.pm_mean, self.lp_mean
        sd_pm, sd_lp = self.prefix_matching.std(0), self.label_promoting.std(0)
        layers, heads = pm.shape
        order = sorted(((l, h) for l in range(layers) for h in range(heads)), key=lambda p: (-pm[p], p))
        return [
            {
                "rank": rank + 1,
                "layer": l,
                "head": h,
                "prefix_matching": float(pm[l, h]),
                "label_promoting": float(lp[l, h]),
                "prefix_matching_sd": float(sd_pm[l, h]),
                "label_promoting_sd": float(sd_lp[l, h]),
            }
            for rank, (l, h) in enumerate(order)
        ]

    def top_k(self, k: int) -> list[tuple[int, int]]:
        return [(row["layer"], row["head"]) for row in self.ranked()[:k]]


def prefix_matching(attention_rows: torch.Tensor, item: ScoringItem) -> torch.Tensor:
    """[L, H] prefix-matching score of one prompt from readout attention rows [L, H, S]."""
    same = attention_rows[..., list(item.same_class_positions)].sum(-1)
    other = attention_rows[..., list(item.other_class_positions)].sum(-1)
    return same - other / (item.num_classes - 1)


class Spread(Protocol):
    """Runs ``work`` over ``items`` and returns the results in item order; ``progress`` (a tqdm bar counting the
    items) is sized to the share of the items this process works on."""

    def __call__(self, items: Sequence, work: Callable, progress: Any = None) -> list: ...


def in_order(items: Sequence, work: Callable, progress: Any = None) -> list:
    """One process does all the work (a run context's ``map_in_order`` splits it across processes)."""
    return [work(item) for item in items]


def score_heads(
    model, items: Iterable[ScoringItem], modules: ModelModules | None = None, show_progress: bool = False,
    eager: bool = False, spread: Spread = in_order,
) -> HeadScores:
    """Prefix-matching and label-promoting scores of every (layer, head), one forward per item (through
    eager attention if ``eager``: the slower reference for the readout-row implementation). ``spread`` runs
    the per-item work (``RunContext.map_in_order``: split across processes, gathered in order)."""
    modules = modules or resolve_modules(model)
    modules.require("attention")
    modules.require("attn_out_proj")
    device = input_device(model)
    items = list(items)
    if not items:
        raise FalseDemoError("no prompts to score")
    progress = tqdm(total=len(items), desc="scoring heads", unit="prompt", disable=not show_progress)

    def score(item: ScoringItem) -> tuple[np.ndarray, np.ndarray]:
        capture.clear()
        run_to_last_block(model, input_ids=torch.tensor([item.input_ids], device=device), use_cache=False)
        attention = torch.stack([rows[0] for rows in capture.attention])
        lp = label_promotion(
            modules, [z[0] for z in capture.z], [out[0] for out in capture.attn_out], capture.final[0],
            item.shown_label_id, item.true_label_id,
        )
        progress.update(1)
        return prefix_matching(attention, item).cpu().numpy(), lp.cpu().numpy()

    with weights_capturing_attention(model, eager), torch.no_grad(), ReadoutCapture(modules, want_attention=True) as capture:
        rows = spread(items, score, progress=progress)
    progress.close()
    return HeadScores(np.stack([pm for pm, _ in rows]), np.stack([lp for _, lp in rows]))


def format_heads(heads: Iterable[tuple[int, int]]) -> str:
    """The ``hf-ablate heads=`` syntax: ``14:6;16:7``."""
    return ";".join(f"{layer}:{head}" for layer, head in heads)


def draw_random_heads(num_layers: int, num_heads: int, k: int, draws: int, seed: int) -> list[list[tuple[int, int]]]:
    """``draws`` sets of ``k`` distinct (layer, head) pairs, uniform over all heads, reproducible from ``seed``.

    Each head is one index in 0..L*H-1 split as (index // H, index % H), so layer and head ranges cannot be
    swapped (the paper's control drew layers from the head range and vice versa).
    """
    total = num_layers * num_heads
    if not 0 < k <= total:
        raise FalseDemoError(f"cannot draw {k} distinct heads from {total} (allowed k: 1..{total})")
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(draws):
        flat = sorted(int(i) for i in rng.choice(total, size=k, replace=False))
        result.append([(i // num_heads, i % num_heads) for i in flat])
    return result
