"""``falsedemo sweep``: every layer and every demonstration position from ONE forward pass per prompt.

The metric only needs the K label-token logits, so one forward with hooks (``lens.read_label_logits``)
reads them after every block (layers 0..L) at the query's readout position *and* at each demonstration's
label readout position. Running lm-eval once per ``exit_layer`` would cost L+1 evaluations that each also
pay for the full-vocabulary head at every position; this costs one evaluation without that head.

Prompts are taken from lm-eval itself: the tasks are resolved by lm-eval's ``TaskManager`` (names, tags,
globs), configured exactly as ``simple_evaluate`` configures them (``--num_fewshot``, the few-shot seed
of ``--seed``) and their requests built with ``build_all_requests``, so the contexts, continuations and
tokenisation (the model's own ``HFLM._encode_pair``) are the ones ``lm_eval --model hf-earlyexit`` scores.

Derived per dataset (``correct`` against each corrupted setting of the same queries, paired by query):
the critical layer, the early-exit layer and gain chosen on the same data (the paper) and held out,
and paired-bootstrap intervals. Everything, with the full configuration, goes into one ``sweep.json``,
curves into CSV files and figures into PNG and SVG, all through :mod:`results_io`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from lm_eval_false_demos.results import checkpoints, query_scores, files as results_io

from lm_eval_false_demos.cli import args as cli_args
from lm_eval_false_demos.integrations import loading
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.core.datasets import data_provenance_for, data_source_summary
from lm_eval_false_demos.core.metrics import normalise
from lm_eval_false_demos.results.files import versions
from lm_eval_false_demos.core.sst2_formats import parse_variant_key

logger = logging.getLogger(__name__)

LAYER_METRICS = ("calibrated_acc", "acc", "follow_acc")
CORRUPTED_SETTINGS = ("permuted", "half", "random")  # preference order for a dataset's headline numbers
DEFAULT_SEED_STRING = cli_args.DEFAULT_SEED_STRING
# Keys of --model_args that select modules for the lens (architectures.PATH_OVERRIDES); the model
# classes accept them too, so they are forwarded to both.
PATH_OVERRIDE_KEYS = loading.PATH_OVERRIDE_KEYS


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The lm-eval flags a sweep needs, parsed with lm-eval's own argument actions and types."""
    from lm_eval._cli.utils import MergeDictAction, SplitArgs

    parser.add_argument("--model", "-M", default="hf",
                        help="lm-eval model type: hf, hf-earlyexit or hf-ablate (ablations apply during the sweep)")
    parser.add_argument("--model_args", "-a", default=None, nargs="+", action=MergeDictAction, metavar="<arg>",
                        help="model arguments exactly as lm_eval takes them: key=val,key2=val2 or a JSON object")
    parser.add_argument("--tasks", "-t", required=True, nargs="+", action=SplitArgs, metavar="<task>",
                        help="task names, tags (e.g. falsedemo_unnatural) or globs, resolved by lm-eval's TaskManager")
    parser.add_argument("--include_path", default=None, metavar="<dir>", help="extra task folder, as in lm_eval")
    parser.add_argument("--limit", "-L", type=float, default=None,
                        help="queries per task (integer count, or a fraction < 1 of the split), as in lm_eval")
    parser.add_argument("--num_fewshot", "-f", type=int, default=None, help="number of demonstrations k")
    parser.add_argument("--seed", type=cli_args.seed_list, default=cli_args.seed_list(DEFAULT_SEED_STRING),
                        metavar="<python,numpy,torch,fewshot>",
                        help=f"seeds with lm_eval's meaning (default {DEFAULT_SEED_STRING}); the fewshot slot "
                             "chooses the demonstrations, so prompts equal lm_eval's for the same value")
    parser.add_argument("--output_path", "-o", default="results",
                        help="folder; each run gets a new sweep_* folder (with --resume: the resumed folder)")
    parser.add_argument("--batch_size", "-b", default="1", help="prompts per forward pass (an integer)")
    parser.add_argument("--device", default=None, help="device, e.g. cpu or cuda:0 (default: as lm_eval's HFLM)")
    parser.add_argument("--bootstrap_iters", type=int, default=1000,
                        help="paired bootstrap resamples of the queries for the intervals (0 disables)")
    parser.add_argument("--analysis_seed", type=int, default=0,
                        help="seed of the held-out split of queries and of the bootstrap resampling")
    parser.add_argument("--confidence", type=float, default=0.95, help="level of the bootstrap intervals")
    parser.add_argument("--no_plots", action="store_true", help="skip the PNG/SVG figures")
    # lm_eval's chat flags, with its meaning: --apply_chat_template alone is multi-turn.
    parser.add_argument("--apply_chat_template", type=str, nargs="?", const=True, default=False, metavar="<template>",
                        help="render prompts with the model's chat template (as lm_eval; optional template name)")
    parser.add_argument("--fewshot_as_multiturn", type=lambda x: x.lower() in ("true", "1", "yes"), nargs="?",
                        const=True, default=None, metavar="<bool>",
                        help="demonstrations as user/assistant turns (default with --apply_chat_template); "
                             "'false': one user message")
    parser.add_argument("--system_instruction", type=str, default=None, metavar="<text>",
                        help="system message text (with --apply_chat_template), before the dataset's instruction")
    parser.add_argument("--sst2_format", default=None, metavar="<formats>",
                        help="SST-2 prompt formats (paper: 15, 0-14) for the SST-2 tasks requested: all, 3, 0,5 or "
                             "0-14; each format is scored as its own task (falsedemo_sst2_f<i>_<setting>)")
    parser.add_argument("--resume", default=None, metavar="<run folder>",
                        help="continue an interrupted sweep in its run folder (same arguments; refuses others)")
    parser.add_argument("--checkpoint_seconds", type=float, default=60.0,
                        help="save finished prompts into the run folder at most this often (0: after every batch)")


def check_arguments(args: argparse.Namespace) -> int:
    """Every argument, before any model or data loads; returns the batch size."""
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise FalseDemoError(f"--num_fewshot={args.num_fewshot} is negative; give k >= 0")
    batch_size = _parse_batch_size(args.batch_size)
    apply_chat_template = getattr(args, "apply_chat_template", False)
    multiturn = getattr(args, "fewshot_as_multiturn", None)
    if multiturn and not apply_chat_template:
        raise FalseDemoError("--fewshot_as_multiturn needs --apply_chat_template (as in lm_eval)")
    if getattr(args, "system_instruction", None) and not apply_chat_template:
        raise FalseDemoError("--system_instruction needs --apply_chat_template (it becomes the system message)")
    if args.sst2_format is not None:
        from lm_eval_false_demos.core.sst2_formats import parse_formats

        parse_formats(args.sst2_format)
    cli_args.check_limit(args.limit)
    cli_args.check_confidence(args.confidence)
    cli_args.check_at_least(args.bootstrap_iters, 0, "--bootstrap_iters", "0 disables the intervals")
    if not args.checkpoint_seconds >= 0:
        raise FalseDemoError(f"--checkpoint_seconds={args.checkpoint_seconds} is not allowed; give seconds >= 0")
    check_no_exit_layer(args.model_args or {})
    if args.resume:
        if cli_args.launched_world_size() > 1:
            raise FalseDemoError("--resume runs on one process; resume without accelerate launch (the numbers "
                                 "are the same)")
        checkpoints.check_resumable(args.resume, "sweep", cli_args.run_arguments(args))
    else:
        cli_args.check_output_folder(args.output_path)
    # last: it imports lm-eval's HF model
    cli_args.check_model_args(args.model, args.model_args or {}, read_by_caller=("lens", *PATH_OVERRIDE_KEYS))
    if apply_chat_template:
        check_chat_template(args.model_args or {})
    return batch_size


def check_chat_template(model_args: Mapping[str, Any]) -> None:
    """A tokenizer without a chat template is refused before the model loads: only the tokenizer is read (the
    same cached load the tasks use later)."""
    from lm_eval_false_demos.core.chat import check_has_template
    from lm_eval_false_demos.core.embedded_models import is_embedded, resolve_pretrained
    from lm_eval_false_demos.integrations.tasks import load_tokenizer_and_length

    named = str(model_args.get("pretrained", ""))
    pretrained = resolve_pretrained(named) if is_embedded(named) else named
    max_length = model_args.get("max_length")
    tokenizer, _ = load_tokenizer_and_length(
        pretrained, model_args.get("tokenizer"), model_args.get("gguf_file"), model_args.get("revision"),
        str(model_args.get("trust_remote_code", False)).lower() in ("true", "1"),
        int(max_length) if max_length else None,
    )
    check_has_template(tokenizer, named)


def run(args: argparse.Namespace) -> int:
    batch_size = check_arguments(args)
    checkpoint = None
    if args.resume:
        checkpoint = checkpoints.RunCheckpoint(args.resume)
    elif cli_args.launched_world_size() == 1:
        # The run folder is made before the forward passes, so finished prompts can be saved into it.
        label = _model_label({"model": args.model, "model_args": args.model_args or {}})
        checkpoint = checkpoints.RunCheckpoint(root=args.output_path, name=f"sweep_{label}")
    with checkpoints.kept_or_discarded(checkpoint, "sweep", args.output_path, bool(args.resume)):
        result = _run_from_arguments(args, batch_size, checkpoint)
    if result is None:  # not rank 0 under accelerate: rank 0 writes
        return 0
    run_directory = write_outputs(result, args.output_path, plots=not args.no_plots,
                                  run_directory=checkpoint.run_directory if checkpoint else None)
    if checkpoint is not None:
        checkpoint.finish()
    print(format_summary(result))
    print(f"sweep written to {run_directory}")
    return 0


def _run_from_arguments(args, batch_size, checkpoint):
    from lm_eval_false_demos.core.sst2_formats import parse_formats

    apply_chat_template = getattr(args, "apply_chat_template", False)
    multiturn = getattr(args, "fewshot_as_multiturn", None)
    sst2_formats = None if args.sst2_format is None else parse_formats(args.sst2_format)
    return run_sweep(
        model=args.model,
        model_args=args.model_args or {},
        tasks=args.tasks,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        seed=args.seed,
        batch_size=batch_size,
        device=args.device,
        include_path=args.include_path,
        bootstrap_iters=args.bootstrap_iters,
        analysis_seed=args.analysis_seed,
        confidence=args.confidence,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=bool(apply_chat_template) if multiturn is None else multiturn,
        system_instruction=getattr(args, "system_instruction", None),
        sst2_formats=sst2_formats,
        checkpoint=checkpoint,
        resume=bool(args.resume),
        checkpoint_seconds=args.checkpoint_seconds,
        checkpoint_arguments=cli_args.run_arguments(args),
    )


def _parse_batch_size(value) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise FalseDemoError(
            f"--batch_size={value!r} is not an integer; the sweep batches prompts itself (auto is not supported)"
        ) from None
    if size < 1:
        raise FalseDemoError(f"--batch_size={size} must be >= 1")
    return size


# --------------------------------------------------------------------------------------------------
# Analyses of per-layer arrays (pure numpy; the calibrated metric comes from metrics.py)
# --------------------------------------------------------------------------------------------------


def _metric_functions():
    from lm_eval_false_demos.core import metrics

    return {
        "calibrated_acc": metrics.calibrated_accuracy,
        "acc": metrics.label_accuracy,
        "follow_acc": metrics.follow_accuracy,
    }


def curve(scores: np.ndarray, gold: np.ndarray, follow_target: np.ndarray,
          metrics: Sequence[str] = LAYER_METRICS) -> dict[str, list[float]]:
    """Metrics per layer: ``scores`` [N, L+1, K] probabilities -> {metric: [L+1 floats]}."""
    functions = _metric_functions()
    targets = {"calibrated_acc": gold, "acc": gold, "follow_acc": follow_target}
    return {
        name: [float(functions[name](scores[:, layer, :], targets[name])) for layer in range(scores.shape[1])]
        for name in metrics
    }


def critical_layer(gap: Sequence[float]) -> int | None:
    """First layer where the gap reaches half of its last-layer value; None when the last gap is not positive."""
    gap = np.asarray(gap, dtype=np.float64)
    final = gap[-1]
    if not final > 0:
        return None
    # accuracies are multiples of 1/(K N): a gap equal to half the final one may differ by one rounding step
    return int(np.flatnonzero(gap >= 0.5 * final - 1e-12)[0])


def early_exit(corrupted_curve: Sequence[float]) -> tuple[int, float]:
    """(layer maximising corrupted accuracy, its gain over the last layer); ties go to the earliest layer."""
    values = np.asarray(corrupted_curve, dtype=np.float64)
    layer = int(np.argmax(values))
    return layer, float(values[layer] - values[-1])


def held_out_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of query indices 0..n-1 into a choosing half and a reporting half (sorted)."""
    order = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return np.sort(order[:half]), np.sort(order[half:])


def _calibrated(scores: np.ndarray, gold: np.ndarray) -> float:
    return float(_metric_functions()["calibrated_acc"](scores, gold))


def _calibrated_curve(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    return np.array([_calibrated(scores[:, layer, :], gold) for layer in range(scores.shape[1])])


def compare_settings(
    correct_scores: np.ndarray,
    corrupted_scores: np.ndarray,
    gold: np.ndarray,
    *,
    bootstrap_iters: int,
    seed: int,
    confidence: float,
) -> dict[str, Any]:
    """Derived numbers for one dataset and one corrupted setting; both score arrays [N, L+1, K] paired by row.

    - critical layer, early-exit layer and gain: chosen on all N queries and reported on them (the paper);
    - held out: the early-exit layer is chosen on one seeded half of the queries and its gain reported on the
      other half (the critical layer is descriptive and stays on all queries);
    - intervals: percentile intervals of a paired bootstrap over queries. Calibrated accuracy is a
      dataset-level statistic, so every resample recomputes it (thresholds included) from the resampled
      queries. The early-exit gain's interval keeps the chosen layer fixed (the selection is not resampled).
    """
    correct_curve = _calibrated_curve(correct_scores, gold)
    corrupted_curve = _calibrated_curve(corrupted_scores, gold)
    gap = correct_curve - corrupted_curve
    exit_layer, gain = early_exit(corrupted_curve)
    last = correct_scores.shape[1] - 1
    n = len(gold)

    choose, report = held_out_halves(n, seed)
    held_out: dict[str, Any] = {"seed": seed, "choose_n": int(len(choose)), "report_n": int(len(report))}
    if len(choose) and len(report):
        chosen_layer, choose_gain = early_exit(_calibrated_curve(corrupted_scores[choose], gold[choose]))
        report_scores, report_gold = corrupted_scores[report], gold[report]
        report_exit = _calibrated(report_scores[:, chosen_layer, :], report_gold)
        report_last = _calibrated(report_scores[:, last, :], report_gold)
        held_out.update(
            early_exit_layer=chosen_layer,
            gain_on_choosing_half=choose_gain,
            early_exit_accuracy=report_exit,
            last_layer_accuracy=report_last,
            early_exit_gain=report_exit - report_last,
        )

    intervals: dict[str, Any] = {"confidence": confidence, "iterations": bootstrap_iters, "seed": seed}
    if bootstrap_iters > 0 and n > 1:
        from lm_eval_false_demos.core.metrics import paired_bootstrap

        # Only the rows the statistics read; one seed for all, so every statistic sees the same resamples.
        correct_last = correct_scores[:, last, :]
        corrupted_last = corrupted_scores[:, last, :]
        corrupted_exit = corrupted_scores[:, exit_layer, :]
        statistics = {
            "correct": (lambda c, g: _calibrated(c, g), (correct_last, gold)),
            "corrupted": (lambda w, g: _calibrated(w, g), (corrupted_last, gold)),
            "gap": (lambda c, w, g: _calibrated(c, g) - _calibrated(w, g), (correct_last, corrupted_last, gold)),
            "early_exit_gain": (lambda e, w, g: _calibrated(e, g) - _calibrated(w, g),
                                (corrupted_exit, corrupted_last, gold)),
        }
        for name, (statistic, arrays) in statistics.items():
            intervals[name] = list(paired_bootstrap(statistic, arrays, bootstrap_iters, seed, confidence))
        if "early_exit_layer" in held_out and len(report) > 1:
            chosen_layer = held_out["early_exit_layer"]
            held_out["interval"] = list(paired_bootstrap(
                lambda e, w, g: _calibrated(e, g) - _calibrated(w, g),
                (corrupted_scores[report, chosen_layer, :], corrupted_scores[report, last, :], gold[report]),
                bootstrap_iters, seed, confidence,
            ))

    return {
        "n": int(n),
        "critical_layer": critical_layer(gap),
        "early_exit_layer": exit_layer,
        "early_exit_gain": gain,
        "early_exit_accuracy": float(corrupted_curve[exit_layer]),
        "last_layer": {
            "correct": float(correct_curve[last]),
            "corrupted": float(corrupted_curve[last]),
            "gap": float(gap[last]),
        },
        "gap_per_layer": [float(value) for value in gap],
        "held_out": held_out,
        "intervals": intervals,
    }


# --------------------------------------------------------------------------------------------------
# Prompts from lm-eval tasks
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    name: str
    dataset: str
    setting: str
    num_fewshot: int
    num_classes: int
    label_words: tuple[str, ...]


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


def resolve_task_names(tasks: Sequence[str], task_manager) -> list[str]:
    """Names, tags and globs to task names, exactly as lm_eval's CLI resolves ``--tasks``."""
    names: list[str] = []
    missing = []
    for pattern in tasks:
        matches = task_manager.match_tasks([pattern])
        if not matches:
            missing.append(pattern)
        for match in matches:
            if match not in names:
                names.append(match)
    if missing:
        raise FalseDemoError(f"tasks not found: {', '.join(missing)} (see `lm_eval ls tasks`)")
    return names


def load_tasks(task_names: Sequence[str], task_manager, num_fewshot: int | None, fewshot_seed: int | None) -> dict:
    """{name: task object} for every leaf task, configured as ``lm_eval.simple_evaluate`` configures them."""
    loaded = task_manager.load(list(task_names))
    tasks = dict(loaded["tasks"])
    for name, task in tasks.items():
        # The same override rules as simple_evaluate: --num_fewshot wins unless the YAML pins 0.
        if num_fewshot is not None:
            if task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=fewshot_seed)
    return tasks


def build_records(name: str, task, limit: float | None, chat: Mapping[str, Any] | None = None
                  ) -> tuple[TaskInfo, list[PromptRecord]]:
    """The task's requests (as lm-eval builds them on one process) turned into prompt records.

    The demonstration details (true labels, shift, readout offsets) come from the task's own
    ``build_prompt_for``, i.e. ``prompts.build_prompt``; its context is checked to be lm-eval's context.
    """
    from lm_eval.evaluator_utils import get_sample_size

    if not hasattr(task, "build_prompt_for"):
        raise FalseDemoError(
            f"task {name} is not a falsedemo task; the sweep needs demonstrations it can read out "
            "(tasks falsedemo_<dataset>_<setting>, tags falsedemo_<dataset> / falsedemo_<setting>)"
        )
    if len(getattr(task, "formats", ())) > 1:
        raise FalseDemoError(f"task {name} holds several SST-2 prompt formats; the sweep scores one task per format")
    # Every rank builds every prompt (the demos of a query do not depend on the order or the rank) and the
    # sweep shards them itself, so one process and several see the same prompts.
    chat = dict(chat or {})
    task.build_all_requests(limit=get_sample_size(task, limit), rank=0, world_size=1, **chat)
    by_doc: dict[int, list] = {}
    for instance in task.instances:
        by_doc.setdefault(instance.doc_id, []).append(instance)
    num_fewshot = int(task.get_config("num_fewshot") or 0)
    num_classes = task.spec.num_classes
    records = []
    for doc_id in sorted(by_doc):
        instances = sorted(by_doc[doc_id], key=lambda instance: instance.idx)
        doc = instances[0].doc
        context = instances[0].args[0]
        rendered, demo_offsets, prompt = task.render_for(
            doc, num_fewshot, chat.get("system_instruction"), chat.get("apply_chat_template", False),
            chat.get("fewshot_as_multiturn", False), chat.get("chat_template"))
        if rendered != context or any(instance.args[0] != context for instance in instances):
            raise FalseDemoError(f"task {name} doc {doc_id}: lm-eval's context differs from the rebuilt prompt")
        if len(instances) != num_classes:
            raise FalseDemoError(f"task {name} doc {doc_id}: {len(instances)} choices for {num_classes} classes")
        records.append(
            PromptRecord(
                task=name,
                doc_id=int(doc_id),
                query_key=str(doc["uid"]),
                context=context,
                continuations=tuple(instance.args[1] for instance in instances),
                gold=int(prompt.query_label),
                follow_target=(prompt.query_label + prompt.shift) % num_classes,
                demo_true_labels=tuple(prompt.demo_true_labels),
                demo_follow_targets=tuple((label + prompt.shift) % num_classes for label in prompt.demo_true_labels),
                demo_offsets=tuple(demo_offsets),
                demo_shown_labels=tuple(prompt.demo_shown_labels),
            )
        )
    if not records:
        raise FalseDemoError(f"task {name} produced no prompts (check --limit)")
    info = TaskInfo(
        name=name,
        dataset=getattr(task, "dataset_key", task.spec.key),  # sst2_f3: SST-2 in prompt format 3
        setting=task.setting,
        num_fewshot=num_fewshot,
        num_classes=num_classes,
        label_words=tuple(task.spec.label_word_list),
    )
    return info, records


def task_metrics(setting: str) -> tuple[str, ...]:
    """The metrics lm-eval reports for a setting: following the wrong labels only means something when
    demonstrations carry the prompt's shifted label (corruption.FOLLOW_SETTINGS)."""
    from lm_eval_false_demos.core.corruption import FOLLOW_SETTINGS

    return LAYER_METRICS if setting in FOLLOW_SETTINGS else tuple(m for m in LAYER_METRICS if m != "follow_acc")


# --------------------------------------------------------------------------------------------------
# Tokenisation and the one forward pass
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EncodedPrompt:
    index: int  # position in the global record list
    input_ids: tuple[int, ...]
    positions: tuple[int, ...]  # readout token positions: demo 0..k-1, then the query (last)
    label_token_ids: tuple[int, ...]
    # The labels' first tokens at the demo positions when spelt differently there (a chat's single user
    # message shows " Positive" where the assistant turn starts with "Positive"); empty: the same ids.
    demo_label_token_ids: tuple[int, ...] = ()


def encode_record(lm, record: PromptRecord, index: int) -> EncodedPrompt:
    """Token ids exactly as HFLM builds them for ``(context, continuation)`` and the readout positions.

    lm-eval feeds ``context_enc + continuation_enc`` minus the last token; the logits after the last context
    token score the continuation's first token, which is the label token we read.
    """
    from lm_eval_false_demos.core.chat import label_token_index

    context_ids = None
    label_ids = []
    moved = 0
    for continuation in record.continuations:
        context_enc, continuation_enc = lm._encode_pair(record.context, continuation)
        if not continuation_enc:
            raise FalseDemoError(f"task {record.task} doc {record.doc_id}: continuation {continuation!r} has no tokens")
        # A chat header's trailing newline, moved into the continuation by lm-eval, is read as context.
        label_at = label_token_index(lm.tokenizer, record.context, continuation_enc)
        context_enc, moved = list(context_enc) + list(continuation_enc[:label_at]), label_at
        if context_ids is None:
            context_ids = context_enc
        elif context_enc != context_ids:
            raise FalseDemoError(f"task {record.task} doc {record.doc_id}: the context encodes differently per choice")
        label_ids.append(int(continuation_enc[label_at]))
    if len(set(label_ids)) != len(label_ids):
        raise FalseDemoError(
            f"task {record.task}: label continuations {record.continuations} share a first token {label_ids}; "
            "first-token scoring cannot tell them apart"
        )
    max_length = getattr(lm, "max_length", None)
    if max_length and len(context_ids) + 1 > max_length:
        raise FalseDemoError(
            f"task {record.task} doc {record.doc_id}: prompt of {len(context_ids)} tokens exceeds the model's "
            f"{max_length}; lm-eval would cut it from the left. Use a smaller --num_fewshot"
        )
    demo_positions = _demo_token_positions(lm.tokenizer, record, context_ids[:len(context_ids) - moved])
    demo_ids = _demo_label_ids(lm.tokenizer, record, context_ids, demo_positions, label_ids)
    return EncodedPrompt(
        index=index,
        input_ids=tuple(context_ids),
        positions=tuple(demo_positions) + (len(context_ids) - 1,),
        label_token_ids=tuple(label_ids),
        demo_label_token_ids=() if demo_ids == label_ids else tuple(demo_ids),
    )


def _demo_label_ids(tokenizer, record: PromptRecord, context_ids: list[int], positions: list[int],
                    query_ids: list[int]) -> list[int]:
    """The K labels' first tokens as spelt at the demo positions, checked against each demo's token in the prompt."""
    from lm_eval_false_demos.core.prompts import label_token_ids

    if not positions:
        return query_ids
    words = [continuation.strip() for continuation in record.continuations]
    lead = record.context[record.demo_offsets[0]:].split(words[record.demo_shown_labels[0]], 1)[0] \
        if record.demo_shown_labels else " "
    anchor = tokenizer.decode([context_ids[positions[0]]])
    ids = label_token_ids(tokenizer, words, lead=lead, anchor=anchor)
    for demo, (position, shown) in enumerate(zip(positions, record.demo_shown_labels)):
        if position + 1 >= len(context_ids) or context_ids[position + 1] != ids[shown]:
            raise FalseDemoError(
                f"task {record.task} doc {record.doc_id}: demo {demo}'s label {lead + words[shown]!r} does not start "
                f"with the token {ids[shown]} the labels are read with; this tokenizer splits it differently in context"
            )
    return ids


def _demo_token_positions(tokenizer, record: PromptRecord, context_ids: list[int]) -> list[int]:
    """Token index whose text ends exactly at each demo readout offset (the last token before " {label}")."""
    if not record.demo_offsets:
        return []
    context = record.context.rstrip()  # HFLM moves trailing whitespace into the continuation
    encoding = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    plain_ids = list(encoding["input_ids"])
    prefix = len(context_ids) - len(plain_ids)
    if prefix < 0 or context_ids[prefix:] != plain_ids:
        raise FalseDemoError(
            f"task {record.task} doc {record.doc_id}: cannot align the tokenizer's offsets with lm-eval's encoding"
        )
    ends = {}
    for token_index, (start, end) in enumerate(encoding["offset_mapping"]):
        if end > start:
            ends[end] = token_index  # a later token with the same end (e.g. byte pieces) wins: it is the last
    positions = []
    for demo, offset in enumerate(record.demo_offsets):
        if offset not in ends:
            raise FalseDemoError(
                f"task {record.task} doc {record.doc_id}: no token ends at demo {demo}'s label offset {offset} "
                f"(text {context[max(0, offset - 20):offset + 10]!r}); this tokenizer merges across the label boundary"
            )
        positions.append(prefix + ends[offset])
    return positions


def _model_ablation(lm):
    """The validated ``Ablation`` an ``hf-ablate`` (or ``hf-earlyexit`` with ablations) model was built with."""
    return getattr(lm, "_ablation", None)


def _ablation_context(lm, model, modules, attention_mask):
    """The ``hf-ablate`` model's ablation around our own forward pass (our hooks call the model directly)."""
    ablation = _model_ablation(lm)
    if ablation is None or ablation.is_empty:
        return contextlib.nullcontext()
    from lm_eval_false_demos.core.interventions import ablate

    return ablate(model, ablation, attention_mask=attention_mask, modules=modules)


def read_prompts(lm, encoded: Sequence[EncodedPrompt], batch_size: int, modules, progress=None, translator=None,
                 on_first_batch=None, chunks=None) -> dict[int, np.ndarray]:
    """{index: label logits [L+1, P, K] float32} from one forward per prompt, batched by similar length.

    ``translator`` is a tuned lens (None: the logit lens); ``on_first_batch(input_ids, attention_mask,
    positions)`` runs once, before the first readout (the lens parity check).

    Sequences are right-padded: in a causal model padding after a position cannot change it, so every readout
    equals the unpadded one. Prompts with different K or readout counts never share a batch. With ``chunks``
    (:class:`checkpoints.PromptChunks`) a batch an earlier attempt finished is taken from it, and each new
    batch is handed to it; the batches are the same either way, so the numbers are too.
    """
    import torch

    from lm_eval_false_demos.core.lens import read_label_logits

    model = lm.model
    device = next(model.parameters()).device
    pad_id = lm.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = lm.tokenizer.eos_token_id or 0
    groups: dict[tuple[int, int], list[EncodedPrompt]] = {}
    for prompt in encoded:
        key = (len(prompt.label_token_ids), len(prompt.demo_label_token_ids), len(prompt.positions))
        groups.setdefault(key, []).append(prompt)
    outputs: dict[int, np.ndarray] = {}
    for group in groups.values():
        group = sorted(group, key=lambda prompt: len(prompt.input_ids), reverse=True)
        for start in range(0, len(group), batch_size):
            batch = group[start:start + batch_size]
            stored = chunks is not None and all(prompt.index in chunks.done for prompt in batch)
            if stored and on_first_batch is None:
                outputs.update({prompt.index: chunks.done[prompt.index] for prompt in batch})
                if progress is not None:
                    progress.update(len(batch))
                continue
            width = max(len(prompt.input_ids) for prompt in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, prompt in enumerate(batch):
                input_ids[row, : len(prompt.input_ids)] = torch.tensor(prompt.input_ids)
                attention_mask[row, : len(prompt.input_ids)] = 1
            positions = torch.tensor([prompt.positions for prompt in batch], dtype=torch.long)
            label_ids = torch.tensor([prompt.label_token_ids + prompt.demo_label_token_ids for prompt in batch],
                                     dtype=torch.long)
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            if on_first_batch is not None:
                # on the first batch of the plan even when it is stored, so a resumed run checks the same prompts
                on_first_batch(input_ids, attention_mask, positions.to(device))
                on_first_batch = None
            if stored:
                outputs.update({prompt.index: chunks.done[prompt.index] for prompt in batch})
                if progress is not None:
                    progress.update(len(batch))
                continue
            with _ablation_context(lm, model, modules, attention_mask):
                logits = read_label_logits(
                    model, input_ids, positions.to(device), label_ids.to(device),
                    attention_mask=attention_mask, modules=modules, translator=translator,
                )  # [L+1, B, P, K]
            logits = logits.float().cpu().numpy()
            for row, prompt in enumerate(batch):
                outputs[prompt.index] = _labels_by_position(logits[:, row], prompt)
            if chunks is not None:
                chunks.record({prompt.index: outputs[prompt.index] for prompt in batch})
            if progress is not None:
                progress.update(len(batch))
    return outputs


def _labels_by_position(logits: np.ndarray, prompt: EncodedPrompt) -> np.ndarray:
    """[L+1, P, K] from logits read for the query's K ids and, if they differ, the demos' K ids after them."""
    num_labels = len(prompt.label_token_ids)
    if not prompt.demo_label_token_ids:
        return logits
    selected = logits[:, :, num_labels:].copy()
    selected[:, -1] = logits[:, -1, :num_labels]
    return selected


# --------------------------------------------------------------------------------------------------
# The whole sweep
# --------------------------------------------------------------------------------------------------


def check_no_exit_layer(model_args: Mapping[str, Any]) -> None:
    if "exit_layer" in model_args:
        raise FalseDemoError(
            "exit_layer makes no sense for a sweep: it reads every layer 0..L in one pass; drop exit_layer "
            "from --model_args (use lm_eval --model hf-earlyexit for a single layer)"
        )


def check_falsedemo_tasks(task_names: Sequence[str]) -> None:
    """Before any data loads: the sweep reads demonstrations only falsedemo tasks build."""
    foreign = [name for name in task_names if not str(name).startswith("falsedemo")]
    if foreign:
        raise FalseDemoError(
            f"{', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}: not a falsedemo task; the sweep reads "
            "falsedemo_<dataset>_<setting> tasks and the falsedemo* tags (run other tasks with lm_eval)"
        )


def run_sweep(
    model: str = "hf",
    model_args: Mapping[str, Any] | None = None,
    tasks: Sequence[str] = (),
    limit: float | None = None,
    num_fewshot: int | None = None,
    seed: Sequence[int | None] | None = None,
    batch_size: int = 1,
    device: str | None = None,
    include_path: str | None = None,
    bootstrap_iters: int = 1000,
    analysis_seed: int = 0,
    confidence: float = 0.95,
    task_manager=None,
    lm=None,
    show_progress: bool = True,
    apply_chat_template: bool | str = False,
    fewshot_as_multiturn: bool = False,
    system_instruction: str | None = None,
    sst2_formats: Sequence[int] | None = None,
    checkpoint: "checkpoints.RunCheckpoint | None" = None,
    resume: bool = False,
    checkpoint_seconds: float = 60.0,
    checkpoint_arguments: Mapping[str, Any] | None = None,
) -> dict | None:
    """Run the sweep and return the ``sweep.json`` payload (None on ranks other than 0).

    With ``checkpoint`` finished prompts are saved into its run folder as the forward passes go; with
    ``resume`` the ones saved there are reused (the configuration must be the interrupted run's)."""
    import random

    import torch
    from tqdm.auto import tqdm

    started = time.perf_counter()
    model_args = dict(model_args or {})
    seed = list(seed) if seed is not None else [0, 1234, 1234, 1234]
    python_seed, numpy_seed, torch_seed, fewshot_seed = (list(seed) + [None] * 4)[:4]
    # Same seeding as simple_evaluate, so anything random in task building matches lm_eval's run.
    if python_seed is not None:
        random.seed(python_seed)
    if numpy_seed is not None:
        np.random.seed(numpy_seed)
    if torch_seed is not None:
        torch.manual_seed(torch_seed)

    from lm_eval_false_demos.core import tuned_lens

    # lens= is read here (every model type; plain hf would hand it to from_pretrained), checked before loading.
    lens_spec = tuned_lens.parse_lens(model_args.get("lens"))
    if task_manager is None:
        from lm_eval.tasks import TaskManager

        # Model args reach task metadata as in lm_eval's CLI (custom_dataset callables receive them).
        task_manager = TaskManager(include_path=include_path, metadata=dict(model_args))
    from lm_eval_false_demos.core.sst2_formats import expand_task_names

    task_names = resolve_task_names(tasks, task_manager)
    check_falsedemo_tasks(task_names)
    if lm is None:
        model_only_args = {key: value for key, value in model_args.items() if key != "lens"}
        check_no_exit_layer(model_args)
        lm = loading.create_model(model, loading.resolve_embedded(model_only_args), batch_size, device)
    rank, world_size = loading.process_rank_and_count(lm)
    task_objects = load_tasks(task_names, task_manager, num_fewshot, fewshot_seed)
    prompt_format, chat_args = _prompt_format(lm, model_args, apply_chat_template, fewshot_as_multiturn,
                                              system_instruction)
    # Each SST-2 prompt format is its own task here (calibrated thresholds are per format); groups such as
    # falsedemo_main_permuted hold the all-formats task, so the expansion works on the loaded leaves.
    leaves = list(task_objects)
    kept = {name: task.formats for name, task in task_objects.items() if len(getattr(task, "formats", ())) > 1}
    if expand_task_names(leaves, sst2_formats, kept) != leaves:
        task_objects = load_tasks(expand_task_names(leaves, sst2_formats, kept), task_manager, num_fewshot,
                                  fewshot_seed)

    infos: dict[str, TaskInfo] = {}
    records: list[PromptRecord] = []
    for name in task_objects:
        info, task_records = build_records(name, task_objects[name], limit, chat_args)
        infos[name] = info
        records.extend(task_records)

    from lm_eval_false_demos.core.architectures import resolve_modules

    # Our model classes resolved the modules already (with any path overrides from model_args).
    modules = getattr(lm, "_falsedemo_modules", None)
    if modules is None:
        overrides = {key: model_args[key] for key in PATH_OVERRIDE_KEYS if key in model_args}
        modules = resolve_modules(lm.model, **overrides)
    num_layers = modules.num_layers
    translator = tuned_lens.build_lens(lens_spec, lm.model, num_layers)
    parity: dict = {}

    def check_lens_parity(input_ids, attention_mask, positions):
        from lm_eval_false_demos.core.lens_parity import check_parity

        parity.update(check_parity(lm.model, input_ids, positions, attention_mask, modules))

    config = run_configuration(
        lm=lm, model=model, model_args=model_args, tasks=tasks, task_names=list(task_objects), infos=infos,
        limit=limit, num_fewshot=num_fewshot, seed=[python_seed, numpy_seed, torch_seed, fewshot_seed],
        batch_size=batch_size, device=device, world_size=world_size, num_layers=num_layers, modules=modules,
        bootstrap_iters=bootstrap_iters, analysis_seed=analysis_seed, confidence=confidence,
    )
    config.update(prompt_format)
    config["lens"] = tuned_lens.describe(lens_spec, translator)

    forward_started = time.perf_counter()
    encoded = [encode_record(lm, record, index) for index, record in enumerate(records)]
    chunks = None
    if checkpoint is not None:
        digests = {prompt.index: checkpoints.prompt_digest(prompt.input_ids, prompt.positions, prompt.label_token_ids,
                                                           prompt.demo_label_token_ids)
                   for prompt in encoded}
        chunks = checkpoints.prompt_chunks(checkpoint, "sweep", resume, world_size, config, digests,
                                           checkpoint_seconds, checkpoint_arguments or {})
    # Shard round-robin over prompts sorted by length, so every rank gets a similar amount of work.
    by_length = sorted(range(len(encoded)), key=lambda index: len(encoded[index].input_ids), reverse=True)
    mine = [encoded[index] for index in by_length[rank::world_size]]
    progress = tqdm(total=len(mine), desc="sweep prompts", unit="prompt", disable=not show_progress or rank != 0)
    try:
        with torch.no_grad():
            outputs = read_prompts(lm, mine, batch_size, modules, progress, translator, check_lens_parity, chunks)
    finally:
        if chunks is not None:
            chunks.flush()  # Ctrl-C or an error keeps every finished batch
    progress.close()
    outputs = _gather_to_rank0(outputs, world_size)
    forward_seconds = time.perf_counter() - forward_started
    if rank != 0:
        return None
    if len(outputs) != len(records):
        raise RuntimeError(f"gathered {len(outputs)} readouts for {len(records)} prompts")

    task_results, arrays = summarise_tasks(infos, records, outputs)
    datasets = analyse_datasets(infos, arrays, bootstrap_iters, analysis_seed, confidence)
    config["lens_parity"] = parity or None
    config["sst2_formats"] = sorted({getattr(task, "formats", (0,))[0] for task in task_objects.values()
                                     if getattr(getattr(task, "spec", None), "key", None) == "sst2"})
    return {
        "kind": "falsedemo.sweep",
        "format_version": 1,
        "config": config,
        "tasks": task_results,
        "datasets": datasets,
        "summary": summarise_run(datasets, task_results),
        # write_outputs moves these into query_scores.npz (intervals pooled over datasets); lists keep the result JSON
        "query_scores": {name: {key: np.asarray(arrays[name][key]).tolist()
                                for key in ("query_keys", "query_scores", "gold")} for name in arrays},
        "timing": {
            "total_seconds": time.perf_counter() - started,
            "forward_seconds": forward_seconds,
            "prompts": len(records),
            "forward_passes": len(records) - (len(chunks.done) if chunks is not None else 0),
            "prompts_from_checkpoint": len(chunks.done) if chunks is not None else 0,
        },
    }


def _prompt_format(lm, model_args, apply_chat_template, fewshot_as_multiturn, system_instruction) -> tuple[dict, dict]:
    """(what sweep.json records about the rendering, the chat arguments lm_eval's evaluate passes to tasks)."""
    from lm_eval_false_demos.core.chat import check_has_template, prompt_mode, template_sha256

    template = None
    chat_args = {"system_instruction": system_instruction}
    if apply_chat_template:
        template = check_has_template(lm.tokenizer, str(model_args.get("pretrained") or lm.tokenizer.name_or_path))
        chat_args.update(apply_chat_template=True, fewshot_as_multiturn=bool(fewshot_as_multiturn),
                         chat_template=lm.apply_chat_template)
    recorded = {"prompt_mode": prompt_mode(apply_chat_template, fewshot_as_multiturn),
                "chat_template_sha256": template_sha256(template), "system_instruction": system_instruction}
    return recorded, chat_args


def _gather_to_rank0(outputs: dict[int, np.ndarray], world_size: int) -> dict[int, np.ndarray]:
    if world_size <= 1:
        return outputs
    import torch.distributed as dist

    gathered: list[dict[int, np.ndarray] | None] = [None] * world_size
    dist.all_gather_object(gathered, outputs)
    merged: dict[int, np.ndarray] = {}
    for part in gathered:
        merged.update(part or {})
    return merged


def summarise_tasks(
    infos: Mapping[str, TaskInfo], records: Sequence[PromptRecord], outputs: Mapping[int, np.ndarray]
) -> tuple[dict, dict]:
    """Per-task curves (JSON-ready) and the per-task arrays the dataset analysis needs."""
    functions = _metric_functions()
    results, arrays = {}, {}
    for name, info in infos.items():
        indices = [index for index, record in enumerate(records) if record.task == name]
        task_records = [records[index] for index in indices]
        logits = np.stack([outputs[index] for index in indices])  # [N, L+1, P, K]
        probabilities = normalise(logits)  # the K-label softmax: the full-vocabulary one cancels
        gold = np.array([record.gold for record in task_records])
        follow = np.array([record.follow_target for record in task_records])
        query_scores = probabilities[:, :, -1, :]
        metrics = task_metrics(info.setting)
        per_layer = curve(query_scores, gold, follow, metrics)

        # Position i < k reads demo i (i preceding demos) against its TRUE class; position k is the query.
        num_demos = probabilities.shape[2] - 1
        position_targets = np.array([list(r.demo_true_labels) + [r.gold] for r in task_records])
        position_follow = np.array([list(r.demo_follow_targets) + [r.follow_target] for r in task_records])
        per_position: dict[str, Any] = {
            "num_preceding_demos": list(range(num_demos + 1)),
            "readout": ["demo"] * num_demos + ["query"],
        }
        targets = {"calibrated_acc": position_targets, "acc": position_targets, "follow_acc": position_follow}
        for metric in metrics:
            per_position[metric] = [
                [
                    float(functions[metric](probabilities[:, layer, position, :], targets[metric][:, position]))
                    for position in range(num_demos + 1)
                ]
                for layer in range(probabilities.shape[1])
            ]
        results[name] = {
            "dataset": info.dataset,
            "setting": info.setting,
            "n": len(task_records),
            "k": info.num_fewshot,
            "num_classes": info.num_classes,
            "chance": 1.0 / info.num_classes,
            "label_words": list(info.label_words),
            "per_layer": per_layer,
            "per_position": per_position,
        }
        arrays[name] = {
            "query_keys": [record.query_key for record in task_records],
            "query_scores": query_scores,
            "gold": gold,
            "position_scores": probabilities,
            "position_targets": position_targets,
        }
    return results, arrays


def analyse_datasets(
    infos: Mapping[str, TaskInfo], arrays: Mapping[str, Mapping], bootstrap_iters: int, seed: int, confidence: float
) -> dict:
    """Per dataset: correct against each corrupted setting present, paired query by query."""
    by_dataset: dict[str, dict[str, str]] = {}
    for name, info in infos.items():
        by_dataset.setdefault(info.dataset, {})[info.setting] = name
    datasets = {}
    for dataset, settings in by_dataset.items():
        entry: dict[str, Any] = {"tasks": dict(settings)}
        correct_name = settings.get("correct")
        corrupted = [setting for setting in CORRUPTED_SETTINGS if setting in settings]
        corrupted += sorted(set(settings) - set(CORRUPTED_SETTINGS) - {"correct", "zeroshot"})
        if correct_name is None or not corrupted:
            entry["note"] = "needs a correct and a corrupted setting of this dataset for the derived numbers"
            datasets[dataset] = entry
            continue
        correct = arrays[correct_name]
        any_info = infos[correct_name]
        entry.update(num_classes=any_info.num_classes, chance=1.0 / any_info.num_classes, k=any_info.num_fewshot)
        by_setting = {}
        for setting in corrupted:
            other = arrays[settings[setting]]
            order = _pair_queries(correct["query_keys"], other["query_keys"], correct_name, settings[setting])
            comparison = compare_settings(
                correct["query_scores"], other["query_scores"][order], correct["gold"],
                bootstrap_iters=bootstrap_iters, seed=seed, confidence=confidence,
            )
            comparison["gap_per_position"] = _position_gap(correct, other, order)
            by_setting[setting] = comparison
        primary = corrupted[0]
        entry["corrupted_setting"] = primary
        # The headline fields are the primary corrupted setting's (permuted when present), flat for readers.
        for key in ("critical_layer", "early_exit_layer", "early_exit_gain", "early_exit_accuracy", "last_layer",
                    "held_out", "intervals", "gap_per_layer", "gap_per_position", "n"):
            entry[key] = by_setting[primary][key]
        entry["by_setting"] = by_setting
        datasets[dataset] = entry
    return datasets


def _pair_queries(reference: Sequence[str], other: Sequence[str], reference_task: str, other_task: str) -> np.ndarray:
    """Row order of ``other`` that lines its queries up with ``reference``'s; the sets must be equal."""
    where = {key: row for row, key in enumerate(other)}
    if len(where) != len(other) or set(where) != set(reference):
        raise FalseDemoError(
            f"tasks {reference_task} and {other_task} do not score the same queries; run them with the same --limit"
        )
    return np.array([where[key] for key in reference])


def _position_gap(correct: Mapping, other: Mapping, order: np.ndarray) -> list[list[float]]:
    """Calibrated-accuracy gap [L+1][k+1] at each readout position (demos paired by query and position)."""
    scores_c, scores_o = correct["position_scores"], other["position_scores"][order]
    targets = correct["position_targets"]
    return [
        [
            _calibrated(scores_c[:, layer, position, :], targets[:, position])
            - _calibrated(scores_o[:, layer, position, :], targets[:, position])
            for position in range(scores_c.shape[2])
        ]
        for layer in range(scores_c.shape[1])
    ]


def summarise_run(datasets: Mapping[str, Mapping], tasks: Mapping[str, Mapping]) -> dict:
    """Run-level numbers per corrupted setting.

    ``mean_by_setting`` averages the per-dataset numbers over every dataset with derived numbers.
    ``<setting>`` (e.g. ``summary["permuted"]``) follows the paper's headline on the MAIN datasets present
    (unnatural and the sst2_ab control excluded): the calibrated-accuracy curves are averaged over datasets,
    then the critical layer, early-exit layer and gain are taken from the mean curves.
    """
    from lm_eval_false_demos.core.datasets import MAIN_DATASETS

    summary: dict[str, Any] = {"datasets": sorted(name for name, entry in datasets.items() if "by_setting" in entry)}
    per_setting: dict[str, dict[str, list[float]]] = {}
    for entry in datasets.values():
        for setting, comparison in entry.get("by_setting", {}).items():
            values = per_setting.setdefault(setting, {})
            values.setdefault("correct", []).append(comparison["last_layer"]["correct"])
            values.setdefault("corrupted", []).append(comparison["last_layer"]["corrupted"])
            values.setdefault("gap", []).append(comparison["last_layer"]["gap"])
            values.setdefault("early_exit_gain", []).append(comparison["early_exit_gain"])
            if "early_exit_gain" in comparison["held_out"]:
                values.setdefault("held_out_early_exit_gain", []).append(comparison["held_out"]["early_exit_gain"])
    summary["mean_by_setting"] = {
        setting: {name: float(np.mean(values)) for name, values in metrics.items()} | {"datasets": len(metrics["gap"])}
        for setting, metrics in per_setting.items()
    }
    curves = {(task["dataset"], task["setting"]): task["per_layer"]["calibrated_acc"] for task in tasks.values()}
    for setting in per_setting:
        main = sorted(
            dataset for dataset in datasets
            if dataset in MAIN_DATASETS and (dataset, "correct") in curves and (dataset, setting) in curves
        )
        if not main:
            continue
        correct = np.mean([curves[(dataset, "correct")] for dataset in main], axis=0)
        corrupted = np.mean([curves[(dataset, setting)] for dataset in main], axis=0)
        exit_layer, gain = early_exit(corrupted)
        summary[setting] = {
            "datasets": main,
            "correct_last": float(correct[-1]),
            "corrupted_last": float(corrupted[-1]),
            "gap": float(correct[-1] - corrupted[-1]),
            "critical_layer": critical_layer(correct - corrupted),
            "early_exit_layer": exit_layer,
            "early_exit_gain": gain,
        }
    return summary


# --------------------------------------------------------------------------------------------------
# Configuration record
# --------------------------------------------------------------------------------------------------


def run_configuration(*, lm, model, model_args, tasks, task_names, infos, limit, num_fewshot, seed, batch_size, device,
                      world_size, num_layers, modules, bootstrap_iters, analysis_seed, confidence) -> dict:
    from lm_eval_false_demos.integrations.models import canonical_model_args

    ablation = _model_ablation(lm)
    return {
        "model": model,
        "model_args": canonical_model_args(model_args),
        "requested_tasks": list(tasks),
        "tasks": list(task_names),
        "limit": limit,
        "num_fewshot": num_fewshot,
        "k": sorted({info.num_fewshot for info in infos.values()}),
        "seed": {"python": seed[0], "numpy": seed[1], "torch": seed[2], "fewshot": seed[3]},
        "batch_size": batch_size,
        "device": str(getattr(lm, "device", device)),
        "world_size": world_size,
        "num_layers": num_layers,
        "model_type": modules.model_type,
        "ablation": ablation.describe() if ablation is not None else None,
        "readout": "label-token logits through the model's final norm and head, softmax over the K labels",
        "data_source": data_source_summary(),
        # SST-2's formats (sst2_f3) read SST-2's data
        "data_provenance": data_provenance_for((parse_variant_key(info.dataset) or (info.dataset,))[0]
                                               for info in infos.values()),
        "model_identity": loading.model_identity(loading.resolve_embedded(model_args), lm),
        "versions": versions(),
        "analysis": {"bootstrap_iters": bootstrap_iters, "seed": analysis_seed, "confidence": confidence,
                     "interval": "percentile, paired over queries", "held_out_fraction": 0.5},
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "date": time.time(),
    }


# --------------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------------


def _model_label(config: Mapping) -> str:
    args = config.get("model_args", {})
    name = str(args.get("gguf_file") or args.get("pretrained") or config.get("model", "model"))
    name = Path(name).name if ("/" in name and Path(name).exists()) else name
    return "".join(character if character.isalnum() or character in "-._" else "_" for character in name)[:80]


def curve_rows(result: Mapping) -> list[list[Any]]:
    """Long-format rows: one per task, layer and readout position (the query's rows are the per-layer curve)."""
    rows = []
    for name, task in result["tasks"].items():
        positions = task["per_position"]
        for layer in range(len(task["per_layer"]["calibrated_acc"])):
            for position, readout in zip(positions["num_preceding_demos"], positions["readout"]):
                rows.append([
                    name, task["dataset"], task["setting"], task["n"], task["k"], layer, position, readout,
                    *(positions[metric][layer][position] if metric in positions else "" for metric in LAYER_METRICS),
                ])
    return rows


CURVE_HEADER = ["task", "dataset", "setting", "n", "k", "layer", "num_preceding_demos", "readout", *LAYER_METRICS]
DERIVED_HEADER = [
    "dataset", "corrupted_setting", "n", "k", "num_classes", "correct_last", "correct_low", "correct_high",
    "corrupted_last", "corrupted_low", "corrupted_high", "gap", "gap_low", "gap_high", "critical_layer",
    "early_exit_layer", "early_exit_accuracy", "early_exit_gain", "early_exit_gain_low", "early_exit_gain_high",
    "held_out_early_exit_layer", "held_out_early_exit_gain", "held_out_gain_low", "held_out_gain_high",
]


def derived_rows(result: Mapping) -> list[list[Any]]:
    rows = []
    for dataset, entry in result["datasets"].items():
        for setting, comparison in entry.get("by_setting", {}).items():
            intervals, held_out = comparison["intervals"], comparison["held_out"]

            def bounds(name):
                interval = intervals.get(name) or [None, None]
                return interval[0], interval[1]

            held_interval = held_out.get("interval") or [None, None]
            rows.append([
                dataset, setting, comparison["n"], entry["k"], entry["num_classes"],
                comparison["last_layer"]["correct"], *bounds("correct"),
                comparison["last_layer"]["corrupted"], *bounds("corrupted"),
                comparison["last_layer"]["gap"], *bounds("gap"),
                comparison["critical_layer"], comparison["early_exit_layer"], comparison["early_exit_accuracy"],
                comparison["early_exit_gain"], *bounds("early_exit_gain"),
                held_out.get("early_exit_layer"), held_out.get("early_exit_gain"), *held_interval,
            ])
    return rows


def write_outputs(result: Mapping, output_path: str | Path, plots: bool = True, run_directory: Path | None = None) -> Path:
    """sweep.json, curves.csv, derived.csv and figures in ``run_directory`` (default: a fresh
    ``sweep_<model>_<timestamp>`` folder under ``output_path``)."""
    if run_directory is None:
        run_directory = results_io.new_run_directory(output_path, f"sweep_{_model_label(result['config'])}")
    results_io.write_csv_atomic(run_directory / "curves.csv", CURVE_HEADER, curve_rows(result))
    results_io.write_csv_atomic(run_directory / "derived.csv", DERIVED_HEADER, derived_rows(result))
    figures = write_figures(result, run_directory) if plots else []
    payload = dict(result)
    written = ["curves.csv", "derived.csv"] + [path.name for path in figures]
    if payload.get("query_scores"):
        written.append(query_scores.write(run_directory, payload.pop("query_scores")).name)
    payload.pop("query_scores", None)
    payload["files"] = written
    # sweep.json last: its presence means the folder is complete.
    results_io.write_json_atomic(run_directory / "sweep.json", payload)
    return run_directory


def layer_panels(result: Mapping) -> list[dict]:
    """One panel per dataset: the last-query-position curve of each setting, with the derived markers."""
    panels = []
    by_dataset: dict[str, dict[str, Mapping]] = {}
    for task in result["tasks"].values():
        by_dataset.setdefault(task["dataset"], {})[task["setting"]] = task
    for dataset, settings in by_dataset.items():
        derived = result["datasets"].get(dataset, {})
        curves = {
            setting: settings[setting]["per_layer"]["calibrated_acc"]
            for setting in ("correct", *CORRUPTED_SETTINGS, "zeroshot") if setting in settings
        }
        if "zeroshot" not in curves and "correct" in settings:
            # Without a zero-shot task, demo 0 of the correct prompts is read with no preceding demos.
            curves["zeroshot (demo 0)"] = [row[0] for row in settings["correct"]["per_position"]["calibrated_acc"]]
        any_task = next(iter(settings.values()))
        panels.append({
            "dataset": dataset,
            "curves": curves,
            "chance": any_task["chance"],
            "critical_layer": derived.get("critical_layer"),
            "early_exit_layer": derived.get("early_exit_layer"),
            "title": f"{dataset} (k={any_task['k']}, n={any_task['n']})",
        })
    return panels


def position_panels(result: Mapping) -> list[dict]:
    panels = []
    for dataset, entry in result["datasets"].items():
        if "by_setting" not in entry:
            continue
        gaps = {setting: comparison["gap_per_position"][-1] for setting, comparison in entry["by_setting"].items()}
        panels.append({
            "dataset": dataset,
            "gaps": gaps,
            "query_position": entry["k"],
            "title": f"{dataset}: gap at the last layer",
        })
    return panels


def write_figures(result: Mapping, run_directory: Path) -> list[Path]:
    from lm_eval_false_demos.results import figures as plots

    model = _model_label(result["config"])
    written = []
    panels = layer_panels(result)
    if panels:
        written += plots.save_figure(plots.layer_figure(panels, f"{model}: accuracy by layer"), run_directory,
                                     "accuracy_by_layer")
    gap_panels = position_panels(result)
    if gap_panels:
        written += plots.save_figure(plots.position_figure(gap_panels, f"{model}: gap by number of demonstrations"),
                                     run_directory, "gap_by_demos")
    return written


def format_summary(result: Mapping) -> str:
    """A short table for the terminal: last-layer accuracies, gap, critical layer and early-exit gains."""
    lines = ["dataset  setting  correct  corrupted  gap [CI]  critical  exit:gain [CI]  held-out exit:gain [CI]"]

    def interval(values):
        return "[-]" if not values else f"[{values[0]:+.3f},{values[1]:+.3f}]"

    for dataset, entry in result["datasets"].items():
        for setting, comparison in entry.get("by_setting", {}).items():
            last, intervals, held_out = comparison["last_layer"], comparison["intervals"], comparison["held_out"]
            lines.append(
                f"{dataset}  {setting}  {last['correct']:.3f}  {last['corrupted']:.3f}  "
                f"{last['gap']:+.3f} {interval(intervals.get('gap'))}  {comparison['critical_layer']}  "
                f"{comparison['early_exit_layer']}:{comparison['early_exit_gain']:+.3f} "
                f"{interval(intervals.get('early_exit_gain'))}  "
                f"{held_out.get('early_exit_layer')}:{held_out.get('early_exit_gain', float('nan')):+.3f} "
                f"{interval(held_out.get('interval'))}"
            )
    return "\n".join(lines)
