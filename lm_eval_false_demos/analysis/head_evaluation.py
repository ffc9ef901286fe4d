"""Ablating heads against the random-head control: the share of the corrupted-demonstration gap recovered.

``--evaluate`` reads last-layer label logits with one forward of the query token per ablation condition on
top of a cached forward of the rest of the prompt: the ablation (interventions.zero_heads_per_row, head
zeroing at the o_proj input) acts at the query position only, as in the paper, and the shared prefix makes R
random draws cheap. Calibrated accuracy comes from metrics.calibrated_accuracy. The results are the
``evaluation`` object of heads.json, as plain data.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from lm_eval_false_demos.analysis.head_readout import ReadoutCapture, label_promotion, run_to_last_block
from lm_eval_false_demos.analysis.head_scores import Spread, format_heads, in_order
from lm_eval_false_demos.analysis.records import EncodedPrompt, PromptRecord
from lm_eval_false_demos.core.ablation_specs import make_ablation
from lm_eval_false_demos.core.architectures import ModelModules, resolve_modules
from lm_eval_false_demos.core.interventions import zero_heads_per_row
from lm_eval_false_demos.core.devices import input_device
from lm_eval_false_demos.core.unembed import Unembed
from lm_eval_false_demos.core.metrics import (
    calibrated_accuracy,
    gap_recovered,
    normalise,
    pooled_gap_recovered_by_condition,
)

DEFAULT_RANDOM_DRAWS = 10
CONDITION_BATCH_SIZE = 6  # ablation conditions per one-token forward in --evaluate (cache copies held at once)


class PartStore(Protocol):
    """Where finished parts of an evaluation are kept (results.checkpoints.RunCheckpoint): ``load`` returns
    None for a part not stored."""

    def load(self, part: str) -> dict[str, Any] | None: ...

    def save(self, part: str, arrays: dict[str, Any]) -> None: ...


@dataclasses.dataclass(frozen=True)
class EncodedQuery:
    input_ids: tuple[int, ...]
    label_ids: tuple[int, ...]  # first tokens of " " + label word, in class order
    gold: int
    shown_for_gold: int  # class whose label the demos of the query's class show, (y + s) % K


def encode_query(record: PromptRecord, encoded: EncodedPrompt) -> EncodedQuery:
    """A task's prompt as head evaluation reads it: the context as the model encodes it, the labels' first
    tokens as the query's label is scored."""
    return EncodedQuery(
        input_ids=tuple(encoded.input_ids),
        label_ids=tuple(int(i) for i in encoded.label_token_ids),
        gold=int(record.gold),
        shown_for_gold=int(record.follow_target),
    )


def query_readouts(
    model, query: "EncodedQuery", ablations: Sequence, modules: ModelModules, with_promotion=False,
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
    if with_promotion and ablations[0] is not None:
        raise ValueError("label promotion is read from the unablated condition, which must come first")
    ids = torch.tensor([query.input_ids], device=input_device(model))
    label_ids = torch.tensor(query.label_ids)
    unembed = Unembed(modules)
    rows, promotion = [], None
    with torch.no_grad():
        prefix = model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1).cache
        for start in range(0, len(ablations), condition_batch_size):
            batch = list(ablations[start:start + condition_batch_size])
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(len(batch))
            with ReadoutCapture(modules, want_attention=False) as capture, zero_heads_per_row(model, batch, modules):
                run_to_last_block(model, input_ids=ids[:, -1:].expand(len(batch), 1), cache=cache, use_cache=True)
            rows.append(unembed.label_logits(capture.final, label_ids))
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
    datasets: Sequence[str],
    top_heads: Sequence[tuple[int, int]],
    random_draws: Sequence[Sequence[tuple[int, int]]],
    queries_for: Callable[[str, str], Sequence[EncodedQuery]],
    corrupted_setting: str = "permuted",
    log: Callable[[str], Any] = lambda message: None,
    show_progress: bool = False,
    checkpoint: PartStore | None = None,
    spread: Spread = in_order,
) -> dict:
    """Gap recovered by zeroing ``top_heads`` vs each random draw, per dataset and averaged over datasets.

    ``queries_for(dataset, setting)`` gives the encoded queries of a dataset's task in a setting (the lm-eval
    task's prompts, integrations.head_runs). ``log`` receives one line per finished dataset. With
    ``checkpoint`` each finished dataset and setting is saved, and one an interrupted run saved is read back
    instead of recomputed. ``spread`` runs the per-query work (``RunContext.map_in_order``: split across
    processes, gathered in order)."""
    modules = resolve_modules(model)
    conditions = [None, make_ablation(model, heads=list(top_heads), modules=modules)]
    conditions += [make_ablation(model, heads=list(draw), modules=modules) for draw in random_draws]
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
            queries = list(queries_for(dataset, setting))
            progress = tqdm(total=len(queries), desc=f"{dataset} {setting}", unit="prompt", disable=not show_progress)
            with_promotion = setting == corrupted_setting

            def read(query: EncodedQuery):
                progress.update(1)
                return query_readouts(model, query, conditions, modules, with_promotion=with_promotion)

            rows = spread(queries, read, progress=progress)
            progress.close()
            if with_promotion:
                promotion = [lp for _, lp in rows]
                rows = [readout for readout, _ in rows]
            logits[setting] = (np.stack(rows), np.asarray([query.gold for query in queries]))  # [N, C, K], [N]
            if checkpoint is not None:
                checkpoint.save(part, {"logits": logits[setting][0], "gold": logits[setting][1],
                                       **({"promotion": np.stack(promotion)} if with_promotion else {})})

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
