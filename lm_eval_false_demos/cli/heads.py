"""False induction heads: prefix-matching and label-promoting scores, top-k export, ablation vs random heads.

Scoring (paper-spec section 7) runs ONE forward per prompt of the scoring task (default
``falsedemo_unnatural_permuted``, the same prompts ``lm_eval --tasks <task> --limit N`` builds) and keeps,
per layer, only what the scores need at the query's readout token (the last context token):

* the readout row of every head's post-softmax attention: the pass runs sdpa with an implementation that
  also returns that one row (readout_attention.py), so no [T, T] matrix is ever formed (Gemma-2's
  soft-capped attention falls back to eager, whose matrices are sliced and freed layer by layer);
* the readout row of the attention output projection's input (the heads' ``z`` vectors), from which each
  head's write ``z_h @ W_O[h-slice]`` is formed;
* the last block's output at the readout (the final residual); the forward stops there, before the final
  norm and the output head.

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
from tqdm.auto import tqdm

from lm_eval_false_demos.core import files as results_io
from lm_eval_false_demos.results import checkpoints

from lm_eval_false_demos.cli import args as cli_args
from lm_eval_false_demos.core.architectures import ModelModules, resolve_modules
from lm_eval_false_demos.core.datasets import data_provenance_for, data_source_summary
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.core.readout_attention import weights_capturing_attention

DEFAULT_TASK = "falsedemo_unnatural_permuted"
DEFAULT_NUM_PROMPTS = 100
DEFAULT_TOP_K = 5
DEFAULT_SEED = 1234  # lm-eval's default few-shot seed: the prompts match `lm_eval --tasks ... --limit N`
DEFAULT_RANDOM_DRAWS = 10
CONDITION_BATCH_SIZE = 6  # ablation conditions per one-token forward in --evaluate (cache copies held at once)
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
    from lm_eval_false_demos.core.corruption import SETTINGS
    from lm_eval_false_demos.core.datasets import DATASETS
    from lm_eval_false_demos.core.task_names import TASK_PREFIX, parse_task_name

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
        start = offset + 1 if prompt.context[offset:offset + 1] == " " else offset  # a chat turn has no space
        if prompt.context[start:start + len(word)] != word:
            raise FalseDemoError(
                f"demo label offset {offset} does not point at ' {word}' in the prompt "
                f"(found {prompt.context[offset:offset + 1 + len(word)]!r})"
            )
        # The word's own characters: a token holding only the separating space is not part of the label.
        positions = label_token_positions(offsets, start, start + len(word))
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


def build_task_prompts(task: str, num_prompts: int, seed: int, num_fewshot: int | None, tokenizer, max_tokens=None,
                       chat_options=None):
    """(spec, setting, prompts) for the first ``num_prompts`` queries, built exactly as the lm-eval task builds them
    (with ``chat_options``, as ``lm_eval --apply_chat_template`` renders them)."""
    from lm_eval_false_demos.core import prompts as prompts_module
    from lm_eval_false_demos.core.datasets import get_spec, load_examples

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
    if chat_options is not None:
        from lm_eval_false_demos.core.chat import render_prompt

        name = str(getattr(tokenizer, "name_or_path", "") or "model")
        built = [render_prompt(prompt, tokenizer, chat_options, name) for prompt in built]
    return spec, setting, built


def default_num_fewshot(dataset: str) -> int:
    """The number of demonstrations the generated lm-eval task YAMLs use (0 for the zero-shot setting)."""
    from lm_eval_false_demos.integrations.task_yamls import DEFAULT_NUM_FEWSHOT

    return DEFAULT_NUM_FEWSHOT


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
        post_norm = modules.attn_post_norm[layer]
        if post_norm is not None:
            writes = frozen_norm(post_norm, attn_outputs[layer])(writes)
        scores.append(pre_head(to_final(writes)) @ direction)
    return torch.stack(scores)


# ----------------------------------------------------------------------------------------------------------
# The scoring pass


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
    """Hooks keeping only the last position of every sequence in the batch: attention rows [B, H, S], o_proj
    inputs [B, H * head_dim], attention outputs and the last block's output [B, d]; the forward stops there."""

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
                    f"the attention module of layer {layer} ({type(module).__name__}) returned no weights: it does "
                    "not dispatch through transformers' AttentionInterface, so head scoring cannot read its rows"
                )
            self.attention[layer] = weights[:, :, -1, :].detach().to(torch.float32)  # [B, H, S]

        return hook

    def _z_hook(self, layer):
        def hook(module, args, kwargs):
            tensor = args[0] if args else next(iter(kwargs.values()))
            self.z[layer] = tensor[:, -1].detach().to(torch.float32)

        return hook

    def _out_hook(self, layer):
        def hook(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            self.attn_out[layer] = tensor[:, -1].detach().to(torch.float32)

        return hook

    def _final_hook(self, module, args, output):
        tensor = output[0] if isinstance(output, tuple) else output
        self.final = tensor[:, -1].detach()
        raise _StopForward  # the scores need nothing after the last block: skip the norm and the output head


def _run_to_last_block(model, **inputs) -> None:
    """Forward under a ``_ReadoutCapture``, which stops the model once its last block has run."""
    try:
        model(**inputs)
    except _StopForward:
        return
    raise RuntimeError("the forward passed the last block without reaching the readout capture's hook")


def prefix_matching(attention_rows: torch.Tensor, item: ScoringItem) -> torch.Tensor:
    """[L, H] prefix-matching score of one prompt from readout attention rows [L, H, S]."""
    same = attention_rows[..., list(item.same_class_positions)].sum(-1)
    other = attention_rows[..., list(item.other_class_positions)].sum(-1)
    return same - other / (item.num_classes - 1)


def score_heads(
    model, items: Iterable[ScoringItem], modules: ModelModules | None = None, show_progress: bool = False,
    eager: bool = False,
) -> HeadScores:
    """Prefix-matching and label-promoting scores of every (layer, head), one forward per item (through
    eager attention if ``eager``: the slower reference for the readout-row implementation)."""
    modules = modules or resolve_modules(model)
    modules.require("attention")
    modules.require("attn_out_proj")
    device = next(model.parameters()).device
    pm_rows, lp_rows = [], []
    with weights_capturing_attention(model, eager), torch.no_grad(), _ReadoutCapture(modules, want_attention=True) as capture:
        for item in tqdm(items, desc="scoring heads", unit="prompt", disable=not show_progress):
            capture.clear()
            _run_to_last_block(model, input_ids=torch.tensor([item.input_ids], device=device), use_cache=False)
            attention = torch.stack([rows[0] for rows in capture.attention])
            pm_rows.append(prefix_matching(attention, item).cpu().numpy())
            lp = label_promotion(
                modules, [z[0] for z in capture.z], [out[0] for out in capture.attn_out], capture.final[0],
                item.shown_label_id, item.true_label_id,
            )
            lp_rows.append(lp.cpu().numpy())
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

    Used by ``hf-ablate heads=auto``; one scoring pass over ``num_prompts`` prompts.
    """
    if tokenizer is None:
        raise FalseDemoError("heads=auto needs the model's tokenizer to build the scoring prompts")
    scores = score_task(model, tokenizer, task, num_prompts, seed, num_fewshot)
    return format_heads(scores.top_k(k))


def score_task(model, tokenizer, task, num_prompts, seed, num_fewshot=None, show_progress=False,
               chat_options=None) -> HeadScores:
    from lm_eval_false_demos.core.chat import label_lead
    from lm_eval_false_demos.core.prompts import label_token_ids

    spec, _, prompts = build_task_prompts(task, num_prompts, seed, num_fewshot, tokenizer, _max_tokens(model, tokenizer),
                                          chat_options)
    words = list(spec.label_word_list)
    ids = label_token_ids(tokenizer, words, lead=label_lead(tokenizer, chat_options))
    bos = adds_bos(model, tokenizer)
    items = [scoring_item(prompt, words, ids, tokenizer, bos) for prompt in prompts]
    return score_heads(model, items, show_progress=show_progress)


def _max_tokens(model, tokenizer) -> int:
    """The prompt budget the lm-eval task uses: HFLM's max length for this model and tokenizer."""
    from lm_eval.models.utils import resolve_max_length

    return int(resolve_max_length(model.config, tokenizer))


# ----------------------------------------------------------------------------------------------------------
# Ablation against the random-head control


@dataclasses.dataclass(frozen=True)
class EncodedQuery:
    input_ids: tuple[int, ...]
    label_ids: tuple[int, ...]  # first tokens of " " + label word, in class order
    gold: int
    shown_for_gold: int  # class whose label the demos of the query's class show, (y + s) % K


def encode_query(prompt, label_ids: Sequence[int], tokenizer, add_bos: bool) -> EncodedQuery:
    ids, _ = encode_context(tokenizer, prompt.context, add_bos)
    return EncodedQuery(
        input_ids=tuple(ids),
        label_ids=tuple(int(i) for i in label_ids),
        gold=int(prompt.query_label),
        shown_for_gold=int((prompt.query_label + prompt.shift) % len(label_ids)),
    )


def query_readouts(
    model, query: EncodedQuery, ablations: Sequence, modules: ModelModules, with_promotion=False,
    condition_batch_size: int = CONDITION_BATCH_SIZE,
):
    """Last-layer label logits [C, K] at the query token under each head ablation (None = no ablation).

    The context before the query token runs once with the KV cache; the conditions then run only the query
    token, ``condition_batch_size`` of them at a time as rows of one batch over copies of that cache, each
    row with its own heads zeroed. So the ablation acts at the query position (the paper's last-position
    ablation) and C conditions cost one long forward plus ceil(C / batch) one-token forwards; the batch
    bounds the cache copies held at once. With ``with_promotion`` the unablated condition (``ablations[0]``
    must be None) also returns the [L, H] label-promoting scores.
    """
    from lm_eval_false_demos.core.interventions import zero_heads_per_row
    from lm_eval_false_demos.core.lens import lens_label_logits

    if with_promotion and ablations[0] is not None:
        raise ValueError("label promotion is read from the unablated condition, which must come first")
    device = next(model.parameters()).device
    ids = torch.tensor([query.input_ids], device=device)
    label_ids = torch.tensor(query.label_ids, device=device)
    rows, promotion = [], None
    with torch.no_grad():
        prefix = model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1).cache
        for start in range(0, len(ablations), condition_batch_size):
            batch = list(ablations[start:start + condition_batch_size])
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(len(batch))
            with _ReadoutCapture(modules, want_attention=False) as capture, zero_heads_per_row(model, batch, modules):
                _run_to_last_block(model, input_ids=ids[:, -1:].expand(len(batch), 1), cache=cache, use_cache=True)
            rows.append(lens_label_logits(model, capture.final, label_ids, modules).float())
            if with_promotion and start == 0:
                promotion = label_promotion(
                    modules, [z[0] for z in capture.z], [out[0] for out in capture.attn_out], capture.final[0],
                    query.label_ids[query.shown_for_gold], query.label_ids[query.gold],
                )
    logits = torch.cat(rows).cpu().numpy()
    return (logits, promotion.cpu().numpy()) if with_promotion else logits


def _mean_sd(values) -> dict:
    values = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if values.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "n": int(values.size)}


def evaluate_heads(
    model,
    tokenizer,
    datasets: Sequence[str],
    top_heads: Sequence[tuple[int, int]],
    random_draws: Sequence[Sequence[tuple[int, int]]],
    limit: int,
    seed: int,
    num_fewshot: int | None = None,
    corrupted_setting: str = "permuted",
    log=print,
    show_progress: bool = False,
    chat_options=None,
    checkpoint=None,
) -> dict:
    """Gap recovered by zeroing ``top_heads`` vs each random draw, per dataset and averaged over datasets.

    With ``checkpoint`` (:class:`checkpoints.RunCheckpoint`) each finished dataset and setting is saved, and
    one an interrupted run saved is read back instead of recomputed."""
    from lm_eval_false_demos.core.chat import label_lead
    from lm_eval_false_demos.core.interventions import make_ablation
    from lm_eval_false_demos.core.metrics import calibrated_accuracy, gap_recovered, normalise
    from lm_eval_false_demos.core.prompts import label_token_ids

    modules = resolve_modules(model)
    conditions = [None, make_ablation(model, heads=list(top_heads), modules=modules)]
    conditions += [make_ablation(model, heads=list(draw), modules=modules) for draw in random_draws]
    bos = adds_bos(model, tokenizer)
    per_dataset = {}
    for dataset in datasets:
        started = time.time()
        logits = {}
        promotion = []
        for setting in ("correct", corrupted_setting):
            part = f"evaluate-{dataset}-{setting}"
            stored = checkpoint.load(part) if checkpoint is not None else None
            if stored is not None:
                logits[setting] = (stored["logits"], stored["gold"])
                if setting == corrupted_setting:
                    promotion = list(stored["promotion"])
                continue
            spec, _, prompts = build_task_prompts(
                f"falsedemo_{dataset}_{setting}", limit, seed, num_fewshot, tokenizer, _max_tokens(model, tokenizer),
                chat_options,
            )
            ids = label_token_ids(tokenizer, list(spec.label_word_list), lead=label_lead(tokenizer, chat_options))
            rows, golds = [], []
            for prompt in tqdm(prompts, desc=f"{dataset} {setting}", unit="prompt", disable=not show_progress):
                query = encode_query(prompt, ids, tokenizer, bos)
                if setting == corrupted_setting:
                    readout, lp = query_readouts(model, query, conditions, modules, with_promotion=True)
                    promotion.append(lp)
                else:
                    readout = query_readouts(model, query, conditions, modules)
                rows.append(readout)
                golds.append(query.gold)
            logits[setting] = (np.stack(rows), np.asarray(golds))  # [N, C, K], [N]
            if checkpoint is not None:
                checkpoint.save(part, {"logits": logits[setting][0], "gold": logits[setting][1],
                                       **({"promotion": np.stack(promotion)} if setting == corrupted_setting else {})})

        def accuracy(setting, condition):
            values, gold = logits[setting]
            return float(calibrated_accuracy(normalise(values[:, condition]), gold))

        acc_correct, acc_corrupted = accuracy("correct", 0), accuracy(corrupted_setting, 0)
        lp_mean = np.mean(promotion, axis=0)  # [L, H] on this dataset's corrupted prompts

        def condition_summary(condition, heads_used):
            ablated = accuracy(corrupted_setting, condition)
            correct_ablated = accuracy("correct", condition)
            return {
                "heads": format_heads(heads_used),
                "acc_corrupted_ablated": ablated,
                "acc_correct_ablated": correct_ablated,
                "gap_recovered": gap_recovered(acc_correct, acc_corrupted, ablated),
                "correct_change": correct_ablated - acc_correct,
                "label_promoting": float(np.mean([lp_mean[l, h] for l, h in heads_used])),
            }

        top = condition_summary(1, top_heads)
        randoms = [condition_summary(2 + i, draw) for i, draw in enumerate(random_draws)]
        per_dataset[dataset] = {
            "n": int(len(logits["correct"][1])),
            "acc_correct": acc_correct,
            "acc_corrupted": acc_corrupted,
            "gap": acc_correct - acc_corrupted,
            "top_k": top,
            "random": {
                "draws": randoms,
                "gap_recovered": _mean_sd(r["gap_recovered"] for r in randoms),
                "correct_change": _mean_sd(r["correct_change"] for r in randoms),
                "acc_corrupted_ablated": _mean_sd(r["acc_corrupted_ablated"] for r in randoms),
                "label_promoting": _mean_sd(r["label_promoting"] for r in randoms),
            },
            "label_promoting_all_heads_mean": float(lp_mean.mean()),
            "label_promoting_all_heads_sd": float(lp_mean.std(ddof=1)),
        }
        log(
            f"[heads] {dataset}: correct {acc_correct:.3f} {corrupted_setting} {acc_corrupted:.3f} "
            f"top-k ablated {top['acc_corrupted_ablated']:.3f} (gap recovered {top['gap_recovered']:+.2f}); "
            f"random {per_dataset[dataset]['random']['gap_recovered']['mean']:+.2f} "
            f"(sd {per_dataset[dataset]['random']['gap_recovered']['sd']:.2f}) [{time.time() - started:.0f}s]"
        )
    return summarise_evaluation(per_dataset, top_heads, random_draws, corrupted_setting)


def summarise_evaluation(per_dataset: dict, top_heads, random_draws, corrupted_setting: str) -> dict:
    """Means over datasets (of per-dataset ratios, as the paper) and the gap recovered pooled over datasets;
    the random control's spread is over draws."""
    from lm_eval_false_demos.core.metrics import pooled_gap_recovered_by_condition

    keys = list(per_dataset)

    def dataset_mean(values):
        values = [v for v in values if not math.isnan(v)]
        return float(np.mean(values)) if values else float("nan")

    random_gap_by_draw = [
        dataset_mean(per_dataset[key]["random"]["draws"][i]["gap_recovered"] for key in keys)
        for i in range(len(random_draws))
    ]
    random_change_by_draw = [
        dataset_mean(per_dataset[key]["random"]["draws"][i]["correct_change"] for key in keys)
        for i in range(len(random_draws))
    ]
    random_lp_by_draw = [
        dataset_mean(per_dataset[key]["random"]["draws"][i]["label_promoting"] for key in keys)
        for i in range(len(random_draws))
    ]
    pooled_top, pooled_random = pooled_gap_recovered_by_condition(per_dataset)
    return {
        "corrupted_setting": corrupted_setting,
        "ablation": {"method": "zero (head's slice of the o_proj input)", "positions": "query token only"},
        "top_k": format_heads(top_heads),
        "random_heads": [format_heads(draw) for draw in random_draws],
        "datasets": per_dataset,
        "acc_correct": {"mean": dataset_mean(per_dataset[k]["acc_correct"] for k in keys)},
        "acc_corrupted": {"mean": dataset_mean(per_dataset[k]["acc_corrupted"] for k in keys)},
        "acc_corrupted_ablated": {"mean": dataset_mean(per_dataset[k]["top_k"]["acc_corrupted_ablated"] for k in keys)},
        "gap_recovered": {
            "mean": dataset_mean(per_dataset[k]["top_k"]["gap_recovered"] for k in keys),
            "per_dataset": {k: per_dataset[k]["top_k"]["gap_recovered"] for k in keys},
        },
        "random_control": {**_mean_sd(random_gap_by_draw), "per_draw": random_gap_by_draw},
        "pooled_gap_recovered": {
            "top_k": pooled_top,
            "random": {**_mean_sd(pooled_random), "max": max(pooled_random, default=float("nan")),
                       "per_draw": pooled_random},
        },
        "correct_change": {
            "top_k": dataset_mean(per_dataset[k]["top_k"]["correct_change"] for k in keys),
            "random": {**_mean_sd(random_change_by_draw), "per_draw": random_change_by_draw},
        },
        "label_promoting": {
            "top_k": dataset_mean(per_dataset[k]["top_k"]["label_promoting"] for k in keys),
            "random": {**_mean_sd(random_lp_by_draw), "per_draw": random_lp_by_draw},
        },
    }


# ----------------------------------------------------------------------------------------------------------
# Outputs


def critical_layer_from_sweep(path: str | Path, dataset: str) -> int | None:
    """The critical layer (lens numbering 0..L) a ``sweep.json`` found for ``dataset`` (else its summary's)."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise FalseDemoError(f"cannot read sweep result {str(path)!r}: {error}") from None
    if payload.get("kind") != "falsedemo.sweep":
        raise FalseDemoError(f"{str(path)!r} is not a sweep.json (kind {payload.get('kind')!r})")
    entry = (payload.get("datasets") or {}).get(dataset) or {}
    layer = entry.get("critical_layer")
    if layer is None:
        layer = (payload.get("summary") or {}).get("critical_layer")
    return int(layer) if isinstance(layer, (int, float)) else None


def write_figures(scores: HeadScores, top: Sequence[tuple[int, int]], directory: Path, title: str,
                  critical_layer: int | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pm, lp = scores.pm_mean, scores.lp_mean
    num_layers, num_heads = pm.shape
    written = []

    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.bar(range(num_layers), pm.sum(1), color="tab:blue")
    axis.axhline(0, color="black", linewidth=0.8)
    if critical_layer is not None:
        # Lens layer c is the residual entering block c: heads of blocks >= c act after the critical layer.
        axis.axvline(critical_layer - 0.5, color="tab:red", linestyle="--", label=f"critical layer {critical_layer}")
        axis.legend()
    axis.set_xlabel("block (layer of the head)")
    axis.set_ylabel("sum of prefix-matching scores")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    written.append(results_io.save_figure_atomic(figure, directory / "prefix_matching_by_layer.png", dpi=120))
    plt.close(figure)

    figure, axes = plt.subplots(1, 2, figsize=(2 + 1.2 * num_heads, 0.35 * num_layers + 2))
    for axis, values, name, cmap in ((axes[0], pm, "prefix-matching", "viridis"), (axes[1], lp, "label-promoting", "RdBu_r")):
        limit = float(np.nanmax(np.abs(values))) or 1.0
        image = axis.imshow(values, aspect="auto", cmap=cmap,
                            **({"vmin": -limit, "vmax": limit} if cmap == "RdBu_r" else {}))
        for layer, head in top:
            axis.add_patch(matplotlib.patches.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False,
                                                        edgecolor="red", linewidth=1.5))
        axis.set_xlabel("head")
        axis.set_ylabel("layer")
        axis.set_xticks(range(num_heads))
        axis.set_title(name, fontsize=9)
        figure.colorbar(image, ax=axis, shrink=0.8)
    figure.suptitle(title + " (red: top-k)", fontsize=9)
    figure.tight_layout()
    written.append(results_io.save_figure_atomic(figure, directory / "heads_heatmap.png", dpi=120))
    plt.close(figure)
    return written


def heads_payload(
    config: dict, scores: HeadScores | None, top: Sequence[tuple[int, int]], evaluation=None, timing=None
) -> dict:
    payload = {
        "kind": "falsedemo.heads",
        "format_version": FORMAT_VERSION,
        "config": config,
        "timing": timing or {},
        "heads": scores.ranked() if scores is not None else [],
        "top_k": format_heads(top),
    }
    if evaluation is not None:
        payload["evaluation"] = evaluation
    return payload


def write_outputs(payload: dict, scores: HeadScores | None, directory: Path, plots: bool,
                  critical_layer: int | None) -> list[Path]:
    written = [results_io.write_json_atomic(directory / "heads.json", payload, reasons=UNDEFINED_REASONS)]
    if scores is not None:
        header = ["rank", "layer", "head", "prefix_matching", "prefix_matching_sd", "label_promoting",
                  "label_promoting_sd"]
        written.append(results_io.write_csv_atomic(
            directory / "heads.csv", header, ([row[name] for name in header] for row in payload["heads"])
        ))
        if plots:
            config = payload["config"]
            title = f"{config.get('model_args')} · {config.get('task')} · N={scores.num_prompts}"
            top = [(row["layer"], row["head"]) for row in payload["heads"][: config.get("top_k")]]
            written += write_figures(scores, top, directory, title, critical_layer)
    return written


# ----------------------------------------------------------------------------------------------------------
# Command line


def parse_model_args(text: str | None) -> dict:
    """``pretrained=gemma-3-270m,dtype=float32`` -> dict (lm-eval's syntax)."""
    args = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise FalseDemoError(f"model arg {part!r} is not key=value (e.g. pretrained=gemma-3-270m)")
        key, value = part.split("=", 1)
        args[key.strip()] = value.strip()
    if "pretrained" not in args:
        raise FalseDemoError("--model_args needs pretrained=<hub id, folder or gemma-3-270m / smollm2-135m>")
    return args


MODEL_ARGS = frozenset({"pretrained", "dtype", "revision", "trust_remote_code"})


def load_model(model_args: dict, device: str | None):
    """(model, tokenizer) with sdpa attention (scoring switches to a weights-returning variant for its pass)."""
    import transformers

    from lm_eval_false_demos.core.embedded_models import resolve_pretrained

    unknown = set(model_args) - MODEL_ARGS
    if unknown:
        raise FalseDemoError(f"unsupported model args {sorted(unknown)}; allowed: {', '.join(sorted(MODEL_ARGS))}")
    path = resolve_pretrained(model_args["pretrained"])
    dtype = model_args.get("dtype", "float32")
    if not hasattr(torch, dtype) and dtype != "auto":
        raise FalseDemoError(f"dtype={dtype!r} is not a torch dtype (e.g. float32, bfloat16)")
    kwargs = {"revision": model_args["revision"]} if "revision" in model_args else {}
    trust = str(model_args.get("trust_remote_code", "")).lower() in ("1", "true", "yes")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust, **kwargs)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype if dtype == "auto" else getattr(torch, dtype), attn_implementation="sdpa",
        trust_remote_code=trust, **kwargs,
    )
    model.eval()
    if device:
        model.to(device)
    return model, tokenizer


def _identity(pretrained: str) -> dict | None:
    from lm_eval_false_demos.core.embedded_models import model_identity, resolve_pretrained

    try:
        return model_identity(resolve_pretrained(pretrained))
    except FalseDemoError:
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_args", "-a", required=True,
                        help="pretrained=<hub id | folder | gemma-3-270m | smollm2-135m>[,dtype=float32]")
    parser.add_argument("--task", default=DEFAULT_TASK, help=f"scoring task (default {DEFAULT_TASK})")
    parser.add_argument("--num_prompts", "-n", type=int, default=DEFAULT_NUM_PROMPTS,
                        help="prompts scored: the task's first N queries, as lm_eval --limit N")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="few-shot seed of the prompts (lm-eval's 4th --seed value; default 1234)")
    parser.add_argument("--num_fewshot", "-f", type=int, default=None, help="demonstrations k (default: the task's)")
    parser.add_argument("--top_k", "-k", type=int, default=DEFAULT_TOP_K, help="heads exported and ablated")
    parser.add_argument("--heads", default=None,
                        help="skip scoring and use these heads (14:6;16:7 or @heads.json); needs --evaluate")
    parser.add_argument("--sweep", default=None, help="sweep.json whose critical layer is marked in the plot")
    parser.add_argument("--evaluate", default=None,
                        help="comma-separated dataset keys (e.g. unnatural,sst2,ag_news,trec): gap recovered "
                             "by zeroing the top-k heads vs random heads")
    parser.add_argument("--limit", type=int, default=100, help="queries per dataset in --evaluate")
    parser.add_argument("--corrupted_setting", default="permuted", help="corrupted setting in --evaluate")
    parser.add_argument("--random_draws", "-R", type=int, default=DEFAULT_RANDOM_DRAWS,
                        help="random-head draws (k distinct heads each) in --evaluate")
    parser.add_argument("--random_seed", type=int, default=0, help="seed of the random-head draws")
    parser.add_argument("--output_path", "-o", default="results",
                        help="folder; each run gets a new heads_* folder (with --resume: the resumed folder)")
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda:0")
    parser.add_argument("--no_plots", action="store_true", help="skip the figures")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--apply_chat_template", action="store_true",
                        help="render prompts with the model's chat template, as lm_eval --apply_chat_template")
    parser.add_argument("--fewshot_as_multiturn", type=lambda x: x.lower() in ("true", "1", "yes"), nargs="?",
                        const=True, default=None, metavar="<bool>",
                        help="demos as user/assistant turns (default with --apply_chat_template); 'false': one user message")
    parser.add_argument("--system_instruction", default=None, help="system message text (with --apply_chat_template)")
    parser.add_argument("--resume", default=None, metavar="<run folder>",
                        help="continue an interrupted run in its run folder (same arguments; refuses others)")


# Why a value in heads.json can be undefined (written as null, listed under "undefined").
UNDEFINED_REASONS = {
    "gap_recovered": "no gap: accuracy with correct demonstrations does not exceed the corrupted one, so the "
                     "share of the gap recovered is undefined",
    "mean": "no defined values to average (every gap recovered was undefined)",
    "sd": "no defined values to average (every gap recovered was undefined)",
    "max": "no defined values (every gap recovered was undefined)",
    "top_k": "no gap in the pooled accuracies: the share of the gap recovered is undefined",
}


def check_arguments(args: argparse.Namespace, model_args: dict) -> None:
    """Every argument, before any model or data loads."""
    from lm_eval_false_demos.core.interventions import parse_heads

    cli_args.check_at_least(args.top_k, 1, "--top_k", "heads exported and ablated")
    cli_args.check_at_least(args.num_prompts, 1, "--num_prompts")
    cli_args.check_at_least(args.limit, 1, "--limit", "queries per dataset")
    cli_args.check_at_least(args.random_draws, 1, "--random_draws")
    if args.num_fewshot is not None:
        cli_args.check_at_least(args.num_fewshot, 0, "--num_fewshot")
    parse_task(args.task)
    unknown = set(model_args) - MODEL_ARGS
    if unknown:
        raise FalseDemoError(f"unsupported model args {sorted(unknown)}; allowed: {', '.join(sorted(MODEL_ARGS))}")
    cli_args.check_pretrained(model_args["pretrained"], revision=model_args.get("revision"))
    shape = cli_args.model_shape_from_config(model_args)
    if shape is not None:
        given = len(parse_heads(args.heads)) if args.heads and not args.heads.strip() == "auto" else args.top_k
        cli_args.check_top_k(given, *shape, evaluate=bool(args.evaluate))
    if args.sweep and not Path(args.sweep).is_file():
        raise FalseDemoError(f"--sweep {args.sweep!r} is not a file; give a sweep.json")
    if args.resume:
        if cli_args.launched_world_size() > 1:
            raise FalseDemoError("--resume runs on one process; resume without accelerate launch")
        checkpoints.check_resumable(args.resume, "heads", cli_args.run_arguments(args))
    else:
        cli_args.check_output_folder(args.output_path)


def run(args: argparse.Namespace) -> int:
    from lm_eval_false_demos.core.interventions import parse_heads

    model_args = parse_model_args(args.model_args)
    given = None
    if args.heads:
        given = parse_heads(args.heads)
        if given == "auto" or not given:
            raise FalseDemoError("--heads needs explicit heads (14:6;16:7 or @heads.json); omit it to discover them")
        if not args.evaluate:
            raise FalseDemoError("--heads only makes sense with --evaluate (scoring would replace them)")
    datasets = [key.strip() for key in (args.evaluate or "").split(",") if key.strip()]
    for key in datasets:
        parse_task(f"falsedemo_{key}_{args.corrupted_setting}")  # fail before loading the model
    chat_options = _chat_options(args)
    check_arguments(args, model_args)
    if args.resume:
        checkpoint = checkpoints.RunCheckpoint(args.resume)
    else:
        name = Path(model_args["pretrained"]).name or "model"
        checkpoint = checkpoints.RunCheckpoint(root=args.output_path, name=f"heads_{name}")
    with checkpoints.kept_or_discarded(checkpoint, "heads", args.output_path, bool(args.resume)):
        return _run(args, model_args, given, datasets, checkpoint, chat_options)


def _run(args, model_args, given, datasets, checkpoint, chat_options) -> int:
    started = run_started = time.time()
    timing = {}
    model, tokenizer = load_model(model_args, args.device)
    prompt_format = _prompt_format(tokenizer, chat_options, model_args["pretrained"])
    modules = resolve_modules(model)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    log(f"[heads] loaded {model_args['pretrained']} ({modules.num_layers} layers x {modules.num_heads} heads) "
        f"in {time.time() - started:.0f}s")
    cli_args.check_top_k(len(given) if given else args.top_k, modules.num_layers, modules.num_heads, bool(datasets))

    config = {
        "model": "hf",
        "model_args": args.model_args,
        "model_identity": _identity(model_args["pretrained"]),
        "num_layers": modules.num_layers,
        "num_heads": modules.num_heads,
        "task": args.task,
        "num_prompts": None,
        "seed": args.seed,
        "k": args.num_fewshot if args.num_fewshot is not None else default_num_fewshot(parse_task(args.task)[0]),
        "top_k": len(given) if given else args.top_k,
        "heads_given": args.heads,
        "readout": "last query token",
        "label_promoting_norm": "final norm (and Gemma's post-attention norm) with scale frozen at the actual "
                                "residual; output-head bias cancels; pre soft-cap",
        "data_source": data_source_summary(),
        "versions": results_io.versions(),
        **prompt_format,
        "command": "falsedemo heads " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["heads"] else sys.argv[1:]),
    }
    if datasets:
        config.update(evaluate=datasets, limit=args.limit, random_draws=args.random_draws,
                      random_seed=args.random_seed, corrupted_setting=args.corrupted_setting)
    # What is read for the datasets used (scored task, evaluated datasets): source, sizes, fingerprint. Known
    # before any work, so a resumed run refuses changed data.
    config["data_provenance"] = data_provenance_for(([] if given else [parse_task(args.task)[0]]) + datasets)
    if args.resume:
        checkpoint.resume("heads", config)
    else:
        checkpoint.start("heads", config, cli_args.run_arguments(args), config["command"])

    scores = None
    if given is None:
        started = time.time()
        stored = checkpoint.load("scores")
        if stored is not None:
            scores = HeadScores(stored["prefix_matching"], stored["label_promoting"])
        else:
            scores = score_task(model, tokenizer, args.task, args.num_prompts, args.seed, args.num_fewshot,
                                show_progress=not args.no_progress, chat_options=chat_options)
            checkpoint.save("scores", {"prefix_matching": scores.prefix_matching,
                                       "label_promoting": scores.label_promoting})
        top = scores.top_k(args.top_k)
        timing["scoring_seconds"] = round(time.time() - started, 3)
        log(f"[heads] scored {scores.num_prompts} prompts in {time.time() - started:.0f}s; top-{args.top_k}: "
            f"{format_heads(top)}")
        config["num_prompts"] = scores.num_prompts
    else:
        top = list(given)
    evaluation = None
    if datasets:
        draws = draw_random_heads(modules.num_layers, modules.num_heads, len(top), args.random_draws, args.random_seed)
        started = time.time()
        evaluation = evaluate_heads(model, tokenizer, datasets, top, draws, args.limit, args.seed,
                                    args.num_fewshot, args.corrupted_setting, log=log,
                                    show_progress=not args.no_progress, chat_options=chat_options,
                                    checkpoint=checkpoint)
        timing["evaluation_seconds"] = round(time.time() - started, 3)
    critical = critical_layer_from_sweep(args.sweep, parse_task(args.task)[0]) if args.sweep else None
    directory = checkpoint.run_directory
    timing["total_seconds"] = round(time.time() - run_started, 3)
    payload = heads_payload(config, scores, top, evaluation, timing)
    written = write_outputs(payload, scores, directory, plots=not args.no_plots, critical_layer=critical)
    checkpoint.finish()
    print(format_summary(payload))
    print(f"wrote {', '.join(str(path) for path in written)}")
    print(f"ablate them with: lm_eval --model hf-ablate --model_args pretrained={model_args['pretrained']},"
          f"heads=@{directory / 'heads.json'} ...")
    return 0


def _chat_options(args):
    """lm_eval's chat flags (``--apply_chat_template`` alone is multi-turn), checked before the model loads."""
    from lm_eval_false_demos.core.chat import ChatOptions

    multiturn = getattr(args, "fewshot_as_multiturn", None)
    system_instruction = getattr(args, "system_instruction", None)
    if not getattr(args, "apply_chat_template", False):
        if multiturn or system_instruction:
            raise FalseDemoError("--fewshot_as_multiturn and --system_instruction need --apply_chat_template")
        return None
    return ChatOptions(multiturn=True if multiturn is None else multiturn, system_instruction=system_instruction)


def _prompt_format(tokenizer, chat_options, model_name: str) -> dict:
    from lm_eval_false_demos.core.chat import check_has_template, template_sha256

    if chat_options is None:
        return {"prompt_mode": "raw", "chat_template_sha256": None}
    template = check_has_template(tokenizer, model_name)
    return {"prompt_mode": chat_options.mode, "chat_template_sha256": template_sha256(template),
            "system_instruction": chat_options.system_instruction}


def format_summary(payload: dict) -> str:
    lines = [f"top-k heads: {payload['top_k']}"]
    if payload["heads"]:
        lines.append("rank layer:head  prefix_matching  label_promoting")
        for row in payload["heads"][: max(payload["config"].get("top_k") or 5, 5)]:
            lines.append(f"{row['rank']:>4} {row['layer']:>5}:{row['head']:<4} {row['prefix_matching']:>15.4f}"
                         f" {row['label_promoting']:>16.4f}")
    evaluation = payload.get("evaluation")
    if evaluation:
        lines.append("dataset  acc_correct  acc_corrupted  ablated  gap_recovered  random_gap_recovered (sd)")
        for key, entry in evaluation["datasets"].items():
            random = entry["random"]["gap_recovered"]
            lines.append(f"{key:<12} {entry['acc_correct']:.3f} {entry['acc_corrupted']:.3f} "
                         f"{entry['top_k']['acc_corrupted_ablated']:.3f} {entry['top_k']['gap_recovered']:+.3f} "
                         f"{random['mean']:+.3f} ({random['sd']:.3f})")
        control = evaluation["random_control"]
        pooled = evaluation["pooled_gap_recovered"]
        lines.append(f"pooled gap recovered: top-k {pooled['top_k']:+.3f}; random {pooled['random']['mean']:+.3f} "
                     f"(sd {pooled['random']['sd']:.3f}, max {pooled['random']['max']:+.3f})")
        lines.append(f"mean of per-dataset gap recovered: top-k {evaluation['gap_recovered']['mean']:+.3f}; random "
                     f"{control['mean']:+.3f} (sd {control['sd']:.3f}, {control['n']} draws)")
        lp = evaluation["label_promoting"]
        lines.append(f"label-promoting: top-k {lp['top_k']:+.3f}; random {lp['random']['mean']:+.3f} "
                     f"(sd {lp['random']['sd']:.3f})")
    return "\n".join(lines)
