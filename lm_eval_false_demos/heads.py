"""False induction heads: prefix-matching and label-promoting scores, top-k export, ablation vs random heads.

Scoring (paper-spec section 7) runs ONE eager forward per prompt of the scoring task (default
``falsedemo_unnatural_permuted``, the same prompts ``lm_eval --tasks <task> --limit N`` builds) and keeps,
per layer, only what the scores need at the query's readout token (the last context token):

* the readout row of every head's post-softmax attention, sliced inside a forward hook on the attention
  module, so the full [T, T] matrices are freed layer by layer and never accumulate;
* the readout row of the attention output projection's input (the heads' ``z`` vectors), from which each
  head's write ``z_h @ W_O[h-slice]`` is formed;
* the last block's output at the readout (the final residual).

Prefix-matching score, per prompt: ``sum A_h(readout, t)`` over the tokens t of the *shown* label words of
earlier demonstrations whose TRUE class equals the query's, minus ``1/(K-1)`` times the same sum over the
other demonstrations. Label-promoting score, per prompt: the head's write pushed through the final norm and
the output head's label rows, ``logit(label shown for the query's class, (y+s)%K) - logit(true label y)``.

The final norm is not linear, so the head's write is passed through it with the scale *frozen* at the
value the real final residual at that position has (``(c - mean c) * g / sigma(x)`` for LayerNorm,
``c * g / rms(x)`` for RMSNorm): then the heads' terms, plus the other components', add up exactly to
the normed residual, which is what direct logit attribution must satisfy. Gemma-2/3 also norm the
attention output before it joins the residual; that norm is frozen the same way with the layer's whole
attention output. The output head's bias cancels in the logit difference; soft-capping (Gemma-2) is
applied to the sum of all components and has no per-head share, so contributions are pre-cap logits.

Evaluation (``--evaluate``) reads last-layer label logits with one forward of the query token per
ablation condition on top of a cached forward of the rest of the prompt: the ablation (interventions.ablate,
head zeroing at the o_proj input) acts at the query position only, as in the paper, and the shared prefix
makes R random draws cheap. Calibrated accuracy comes from metrics.calibrated_accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from . import results_io
from .architectures import ModelModules, resolve_modules
from .errors import FalseDemoError

DEFAULT_TASK = "falsedemo_unnatural_permuted"
DEFAULT_NUM_PROMPTS = 100
DEFAULT_TOP_K = 5
DEFAULT_SEED = 1234  # lm-eval's default few-shot seed: the prompts match `lm_eval --tasks ... --limit N`
DEFAULT_RANDOM_DRAWS = 10
FORMAT_VERSION = 1


class _StopForward(Exception):
    """Raised once the last block has run: the scoring pass never computes the final norm or the logits."""


# ----------------------------------------------------------------------------------------------------------
# Scoring items: what the scorer needs from one prompt, in token positions


@dataclasses.dataclass(frozen=True)
class ScoringItem:
    """One prompt reduced to token ids and positions; the readout is the last token of ``input_ids``."""

    input_ids: tuple[int, ...]
    same_class_positions: tuple[int, ...]  # label tokens of earlier demos whose true class is the query's
    other_class_positions: tuple[int, ...]  # label tokens of the other demos
    true_label_id: int  # first token of " " + label word of the query's true class y
    shown_label_id: int  # first token of the label shown for class y in the demos, class (y + s) % K
    num_classes: int


def parse_task(task: str) -> tuple[str, str]:
    """``falsedemo_<dataset>_<setting>`` -> (dataset key, setting); a bare dataset key means permuted."""
    from .corruption import SETTINGS
    from .datasets import DATASETS

    name = task[len("falsedemo_"):] if task.startswith("falsedemo_") else task
    if name in DATASETS:
        return name, "permuted"
    for setting in sorted(SETTINGS, key=len, reverse=True):
        suffix = "_" + setting
        if name.endswith(suffix) and name[: -len(suffix)] in DATASETS:
            return name[: -len(suffix)], setting
    raise FalseDemoError(
        f"task {task!r} is not falsedemo_<dataset>_<setting>; datasets: {', '.join(sorted(DATASETS))}; "
        f"settings: {', '.join(SETTINGS)}"
    )


def adds_bos(model, tokenizer) -> bool:
    """Whether lm-eval's HFLM would prepend BOS: it does for Gemma models only (they break without it)."""
    model_type = getattr(getattr(model, "config", None), "model_type", "") or ""
    return "gemma" in model_type and tokenizer.bos_token_id is not None


def encode_context(tokenizer, context: str, add_bos: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``context`` and each token's character span (BOS gets the empty span (0, 0))."""
    encoded = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    offsets = [tuple(span) for span in encoded["offset_mapping"]]
    if add_bos:
        ids = [tokenizer.bos_token_id] + ids
        offsets = [(0, 0)] + offsets
    return ids, offsets


def label_token_positions(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Positions of the tokens overlapping characters [start, end) (a label word, with or without its space)."""
    return [i for i, (lo, hi) in enumerate(offsets) if hi > lo and lo < end and hi > start]


def scoring_item(prompt, label_words: Sequence[str], label_ids: Sequence[int], tokenizer, add_bos: bool) -> ScoringItem:
    """Token positions of every demo's shown label word, split by the demo's TRUE class vs the query's."""
    ids, offsets = encode_context(tokenizer, prompt.context, add_bos)
    num_classes = len(label_words)
    same, other = [], []
    for offset, true_class, shown in zip(
        prompt.demo_readout_offsets, prompt.demo_true_labels, prompt.demo_shown_labels
    ):
        word = label_words[shown]
        if prompt.context[offset:offset + 1 + len(word)] != " " + word:
            raise FalseDemoError(
                f"demo label offset {offset} does not point at ' {word}' in the prompt "
                f"(found {prompt.context[offset:offset + 1 + len(word)]!r})"
            )
        # The word's own characters: a token holding only the separating space is not part of the label.
        positions = label_token_positions(offsets, offset + 1, offset + 1 + len(word))
        if not positions:
            raise FalseDemoError(f"no token covers the label ' {word}' at character {offset}")
        (same if true_class == prompt.query_label else other).extend(positions)
    shown_for_query = (prompt.query_label + prompt.shift) % num_classes
    return ScoringItem(
        input_ids=tuple(ids),
        same_class_positions=tuple(same),
        other_class_positions=tuple(other),
        true_label_id=int(label_ids[prompt.query_label]),
        shown_label_id=int(label_ids[shown_for_query]),
        num_classes=num_classes,
    )


def build_task_prompts(task: str, num_prompts: int, seed: int, num_fewshot: int | None, tokenizer, max_tokens=None):
    """(spec, setting, prompts) for the first ``num_prompts`` queries, built exactly as the lm-eval task builds them."""
    from . import prompts as prompts_module
    from .datasets import get_spec, load_examples

    dataset, setting = parse_task(task)
    spec = get_spec(dataset)
    pool, queries = load_examples(dataset)
    if num_prompts is not None:
        queries = queries[:num_prompts]
    k = num_fewshot if num_fewshot is not None else default_num_fewshot(dataset)
    counter = _token_counter(tokenizer)
    built = [
        prompts_module.build_prompt(
            spec, query, pool, k, setting, seed, token_counter=counter, max_tokens=max_tokens
        )
        for query in queries
    ]
    return spec, setting, built


def default_num_fewshot(dataset: str) -> int:
    """The number of demonstrations the lm-eval task uses by default."""
    from . import prompts as prompts_module

    for name in ("DEFAULT_NUM_FEWSHOT", "DEFAULT_K"):
        value = getattr(prompts_module, name, None)
        if value is not None:
            return int(value)
    return 40  # the paper's k


def _token_counter(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


# ----------------------------------------------------------------------------------------------------------
# Head writes through the frozen final norm


def _conv1d_like(module) -> bool:
    return type(module).__name__ == "Conv1D"


def head_writes(out_proj: torch.nn.Module, z: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Each head's write to the residual, [H, d], from one row ``z`` [H * head_dim] of the o_proj input."""
    weight = out_proj.weight
    z = z.to(weight.dtype).view(num_heads, head_dim)
    if _conv1d_like(out_proj):  # GPT-2 Conv1D: weight is (in, out)
        return torch.einsum("hk,hkd->hd", z, weight.view(num_heads, head_dim, -1))
    if isinstance(out_proj, torch.nn.Linear) or weight.dim() == 2:
        return torch.einsum("hk,dhk->hd", z, weight.view(weight.shape[0], num_heads, head_dim))
    raise FalseDemoError(f"cannot split the attention output projection {type(out_proj).__name__} by head")


def _rms_gain(norm: torch.nn.Module, width: int, dtype, device) -> torch.Tensor:
    """The per-feature gain an RMS norm applies, read off the module itself (Gemma's (1 + w) included)."""
    # A constant vector has rms = its value; at 1000 >> sqrt(eps) the norm returns the gain itself.
    probe = torch.full((1, width), 1000.0, dtype=dtype, device=device)
    with torch.no_grad():
        return norm(probe)[0].to(torch.float32)


def frozen_norm(norm: torch.nn.Module | None, x: torch.Tensor):
    """The norm's linear map at the input ``x`` [d] with its scale frozen: c [..., d] -> normed share of c."""
    if norm is None:
        return lambda c: c
    name = type(norm).__name__
    x = x.to(torch.float32)
    if "RMS" in name:
        eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None) or 1e-6
        gain = _rms_gain(norm, x.shape[-1], next(norm.parameters(), x).dtype, x.device)
        rms = torch.sqrt(x.pow(2).mean() + eps)
        return lambda c: c.to(torch.float32) * gain / rms
    if isinstance(norm, torch.nn.LayerNorm) or "LayerNorm" in name:
        eps = getattr(norm, "eps", 1e-5)
        weight = getattr(norm, "weight", None)
        gain = torch.ones_like(x) if weight is None else weight.to(torch.float32)
        sigma = torch.sqrt(x.var(unbiased=False) + eps)
        return lambda c: (c.to(torch.float32) - c.to(torch.float32).mean(-1, keepdim=True)) * gain / sigma
    raise FalseDemoError(f"cannot linearise the norm {name}; supported: LayerNorm and RMSNorm variants")


def post_attention_norm(block: torch.nn.Module) -> torch.nn.Module | None:
    """Gemma-2/3 norm the attention output before the residual add (they also have a pre-feedforward norm;
    in Llama-style blocks ``post_attention_layernorm`` is the pre-MLP norm and must not be used here)."""
    if hasattr(block, "pre_feedforward_layernorm") and hasattr(block, "post_attention_layernorm"):
        return block.post_attention_layernorm
    return None


def _label_rows(modules: ModelModules, label_ids: torch.Tensor) -> torch.Tensor:
    head = modules.output_head
    weight = getattr(head, "weight", None)
    if weight is None:
        raise FalseDemoError(f"output head {type(head).__name__} has no weight to read label rows from")
    return weight[label_ids].to(torch.float32)


def _pre_head_linear(modules: ModelModules):
    if modules.pre_head is None:
        return lambda c: c
    weight = modules.pre_head.weight.to(torch.float32)  # OPT's project_out: linear, no bias
    return lambda c: c @ weight.T


def label_promotion(
    modules: ModelModules,
    z_rows: Sequence[torch.Tensor],
    attn_outputs: Sequence[torch.Tensor],
    final_residual: torch.Tensor,
    promoted_id: int,
    true_id: int,
) -> torch.Tensor:
    """[L, H] label-promoting scores of one readout: logit(promoted) - logit(true) of each head's write."""
    to_final = frozen_norm(modules.final_norm, final_residual)
    pre_head = _pre_head_linear(modules)
    rows = _label_rows(modules, torch.tensor([promoted_id, true_id], device=final_residual.device))
    direction = rows[0] - rows[1]
    scores = []
    for layer, z in enumerate(z_rows):
        writes = head_writes(modules.attn_out_proj[layer], z, modules.num_heads, modules.head_dim)
        post_norm = post_attention_norm(modules.blocks[layer])
        if post_norm is not None:
            writes = frozen_norm(post_norm, attn_outputs[layer])(writes)
        scores.append(pre_head(to_final(writes)) @ direction)
    return torch.stack(scores)


# ----------------------------------------------------------------------------------------------------------
# The scoring pass


@contextlib.contextmanager
def eager_attention(model):
    """Switch to eager attention (the only implementation returning weights) and back afterwards."""
    current = getattr(model.config, "_attn_implementation", None)
    switch = current != "eager"
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(current)


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


class _ReadoutCapture:
    """Hooks keeping only readout-row tensors: attention rows, o_proj input rows, attention outputs, residual."""

    def __init__(self, modules: ModelModules, want_attention: bool):
        self.modules = modules
        self.want_attention = want_attention
        self.handles = []
        self.clear()

    def clear(self):
        num_layers = self.modules.num_layers
        self.attention: list[torch.Tensor | None] = [None] * num_layers
        self.z: list[torch.Tensor | None] = [None] * num_layers
        self.attn_out: list[torch.Tensor | None] = [None] * num_layers
        self.final: torch.Tensor | None = None

    def __enter__(self):
        modules = self.modules
        for layer in range(modules.num_layers):
            if self.want_attention:
                self.handles.append(modules.attention[layer].register_forward_hook(self._attention_hook(layer)))
            out_proj = modules.attn_out_proj[layer]
            self.handles.append(out_proj.register_forward_pre_hook(self._z_hook(layer), with_kwargs=True))
            self.handles.append(out_proj.register_forward_hook(self._out_hook(layer)))
        self.handles.append(modules.blocks[-1].register_forward_hook(self._final_hook))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []
        return False

    def _attention_hook(self, layer):
        def hook(module, args, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise FalseDemoError(
                    "the attention module returned no weights: the scoring pass needs attn_implementation='eager'"
                )
            self.attention[layer] = weights[0, :, -1, :].detach().to(torch.float32)  # [H, S]

        return hook

    def _z_hook(self, layer):
        def hook(module, args, kwargs):
            tensor = args[0] if args else next(iter(kwargs.values()))
            self.z[layer] = tensor[0, -1].detach().to(torch.float32)

        return hook

    def _out_hook(self, layer):
        def hook(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            self.attn_out[layer] = tensor[0, -1].detach().to(torch.float32)

        return hook

    def _final_hook(self, module, args, output):
        tensor = output[0] if isinstance(output, tuple) else output
        self.final = tensor[0, -1].detach()


def prefix_matching(attention_rows: torch.Tensor, item: ScoringItem) -> torch.Tensor:
    """[L, H] prefix-matching score of one prompt from readout attention rows [L, H, S]."""
    same = attention_rows[..., list(item.same_class_positions)].sum(-1)
    other = attention_rows[..., list(item.other_class_positions)].sum(-1)
    return same - other / (item.num_classes - 1)


def score_heads(model, items: Iterable[ScoringItem], modules: ModelModules | None = None, progress=None) -> HeadScores:
    """Prefix-matching and label-promoting scores of every (layer, head), one eager forward per item."""
    modules = modules or resolve_modules(model)
    modules.require("attention")
    modules.require("attn_out_proj")
    device = next(model.parameters()).device
    pm_rows, lp_rows = [], []
    with eager_attention(model), torch.no_grad(), _ReadoutCapture(modules, want_attention=True) as capture:
        for index, item in enumerate(items):
            capture.clear()
            ids = torch.tensor([item.input_ids], device=device)
            try:
                model(input_ids=ids, use_cache=False)
            except _StopForward:  # pragma: no cover - raised only by callers' hooks
                pass
            attention = torch.stack(capture.attention)
            pm_rows.append(prefix_matching(attention, item).cpu().numpy())
            lp = label_promotion(
                modules, capture.z, capture.attn_out, capture.final, item.shown_label_id, item.true_label_id
            )
            lp_rows.append(lp.cpu().numpy())
            if progress:
                progress(index + 1)
    if not pm_rows:
        raise FalseDemoError("no prompts to score")
    return HeadScores(np.stack(pm_rows), np.stack(lp_rows))


# ----------------------------------------------------------------------------------------------------------
# Head lists and the random control


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


def discover_default_heads(
    model,
    tokenizer,
    k: int = DEFAULT_TOP_K,
    task: str = DEFAULT_TASK,
    num_prompts: int = DEFAULT_NUM_PROMPTS,
    seed: int = DEFAULT_SEED,
    num_fewshot: int | None = None,
    **_ignored,
) -> str:
    """The top-``k`` prefix-matching heads on the default task, as an ``hf-ablate heads=`` string.

    Used by ``hf-ablate heads=auto``; one eager pass over ``num_prompts`` prompts.
    """
    if tokenizer is None:
        raise FalseDemoError("heads=auto needs the model's tokenizer to build the scoring prompts")
    scores = score_task(model, tokenizer, task, num_prompts, seed, num_fewshot)
    return format_heads(scores.top_k(k))


def score_task(model, tokenizer, task, num_prompts, seed, num_fewshot=None, progress=None) -> HeadScores:
    from .prompts import label_token_ids

    spec, _, prompts = build_task_prompts(task, num_prompts, seed, num_fewshot, tokenizer, _max_tokens(model))
    words = list(spec.label_word_list)
    ids = label_token_ids(tokenizer, words)
    bos = adds_bos(model, tokenizer)
    items = (scoring_item(prompt, words, ids, tokenizer, bos) for prompt in prompts)
    return score_heads(model, items, progress=progress)


def _max_tokens(model) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(length) if length else None
