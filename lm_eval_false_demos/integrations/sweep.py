"""``run_sweep``: every layer and every demonstration position from ONE forward pass per prompt.

The metric only needs the K label-token logits, so one forward with hooks reads them after every block
(layers 0..L) at the query's readout position *and* at each demonstration's label readout position. Running
lm-eval once per ``exit_layer`` would cost L+1 evaluations that each also pay for the full-vocabulary head at
every position; this costs one evaluation without that head.

Orchestration only: the model comes from lm-eval's registry (:mod:`.loading`), the prompts from lm-eval's
tasks (:mod:`.sweep_prompts`), the forward passes and statistics from :mod:`analysis`; the result is the
``sweep.json`` payload that :mod:`results.sweep_files` writes."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from lm_eval_false_demos.analysis import readout
from lm_eval_false_demos.analysis.layer_curves import analyse_datasets, summarise_run, summarise_tasks
from lm_eval_false_demos.analysis.records import PromptRecord, TaskInfo
from lm_eval_false_demos.core import tuned_lens
from lm_eval_false_demos.core.architectures import PATH_OVERRIDES, resolve_modules
from lm_eval_false_demos.core.data_loading import data_provenance_for, data_source_summary
from lm_eval_false_demos.core.files import canonical_model_args, versions
from lm_eval_false_demos.core.sst2_formats import expand_task_names, parse_variant_key
from lm_eval_false_demos.core.task_names import DEFAULT_SEEDS
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations import loading
from lm_eval_false_demos.integrations.sweep_prompts import (
    build_records,
    check_falsedemo_tasks,
    encode_record,
    load_tasks,
    prompt_format,
    resolve_task_names,
)
from lm_eval_false_demos.integrations.tasks import lend_tokenizer
from lm_eval_false_demos.results import checkpoints


def check_no_exit_layer(model_args: Mapping[str, Any]) -> None:
    if "exit_layer" in model_args:
        raise FalseDemoError(
            "exit_layer makes no sense for a sweep: it reads every layer 0..L in one pass; drop exit_layer "
            "from --model_args (use lm_eval --model hf-earlyexit for a single layer)"
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
    clock = PhaseClock()
    model_args = dict(model_args or {})
    seeds = seed_like_simple_evaluate(seed)
    # lens= is read here (every model type; plain hf would hand it to from_pretrained), checked before loading.
    lens_spec = tuned_lens.parse_lens(model_args.get("lens"))
    check_falsedemo_tasks(tasks)
    if task_manager is None:
        task_manager = falsedemo_task_manager(include_path, model_args)
    task_names = resolve_task_names(tasks, task_manager)
    check_falsedemo_tasks(task_names)
    clock.lap("task_index")
    resolved_args = loading.resolve_embedded(model_args)  # packaged short names -> their converted folders
    if lm is None:
        check_no_exit_layer(model_args)
        model_only_args = {key: value for key, value in resolved_args.items() if key != "lens"}
        lm = loading.create_model(model, model_only_args, batch_size, device)
    clock.lap("model_load")
    lend_tokenizer(model_args, lm.tokenizer, lm.max_length)
    rank, world_size = loading.process_rank_and_count(lm)
    recorded_format, chat_args = prompt_format(lm, model_args, apply_chat_template, fewshot_as_multiturn,
                                               system_instruction)
    task_objects = _load_leaf_tasks(task_names, task_manager, num_fewshot, seeds[3], sst2_formats)
    infos: dict[str, TaskInfo] = {}
    records: list[PromptRecord] = []
    for name in task_objects:
        info, task_records = build_records(name, task_objects[name], limit, chat_args)
        infos[name] = info
        records.extend(task_records)
    clock.lap("task_prompts")

    # Our model classes resolved the modules already (with any path overrides from model_args).
    modules = getattr(lm, "_falsedemo_modules", None)
    if modules is None:
        overrides = {key: model_args[key] for key in PATH_OVERRIDES if key in model_args}
        modules = resolve_modules(lm.model, **overrides)
    translator = tuned_lens.build_lens(lens_spec, lm.model, modules.num_layers)
    config = run_configuration(
        lm=lm, model=model, model_args=model_args, resolved_args=resolved_args, tasks=tasks,
        task_names=list(task_objects), infos=infos, limit=limit, num_fewshot=num_fewshot, seed=seeds, batch_size=batch_size, device=device,
        world_size=world_size, num_layers=modules.num_layers, modules=modules,
        bootstrap_iters=bootstrap_iters, analysis_seed=analysis_seed, confidence=confidence,
    )
    config.update(recorded_format)
    config["lens"] = tuned_lens.describe(lens_spec, translator)
    clock.lap("configuration")

    encoded = [encode_record(lm, record, index) for index, record in enumerate(records)]
    clock.lap("tokenisation")
    chunks = None
    if checkpoint is not None:
        digests = {prompt.index: checkpoints.prompt_digest(prompt.input_ids, prompt.positions, prompt.label_token_ids,
                                                           prompt.demo_label_token_ids)
                   for prompt in encoded}
        chunks = checkpoints.prompt_chunks(checkpoint, "sweep", resume, world_size, config, digests,
                                           checkpoint_seconds, checkpoint_arguments or {})
    parity: dict = {}
    outputs = _read_my_share(lm, encoded, rank, world_size, batch_size, modules, translator, parity, chunks,
                             show_progress)
    outputs = readout.gather_to_rank0(outputs, world_size)
    loading.leave_process_group(world_size)  # the last collective: ranks > 0 are done
    clock.lap("forward")
    if rank != 0:
        return None
    if len(outputs) != len(records):
        raise RuntimeError(f"gathered {len(outputs)} readouts for {len(records)} prompts")

    task_results, arrays = summarise_tasks(infos, records, outputs)
    datasets = analyse_datasets(infos, arrays, bootstrap_iters, analysis_seed, confidence)
    config["lens_parity"] = parity or None
    config["sst2_formats"] = sorted({getattr(task, "formats", (0,))[0] for task in task_objects.values()
                                     if getattr(getattr(task, "spec", None), "key", None) == "sst2"})
    summary = summarise_run(datasets, task_results)
    clock.lap("analysis")
    return {
        "kind": "falsedemo.sweep",
        "format_version": 1,
        "config": config,
        "tasks": {name: curves.to_json() for name, curves in task_results.items()},
        "datasets": {name: comparison.to_json() for name, comparison in datasets.items()},
        "summary": summary,
        # write_outputs moves these arrays into query_scores.npz (intervals pooled over datasets)
        "query_scores": {name: scores.for_file() for name, scores in arrays.items()},
        "timing": {
            "total_seconds": clock.total(),
            "forward_seconds": clock.phases["tokenisation"] + clock.phases["forward"],
            "phases": dict(clock.phases),  # seconds by phase, in order; sweep.json is written after these
            "prompts": len(records),
            "forward_passes": len(records) - (len(chunks.done) if chunks is not None else 0),
            "prompts_from_checkpoint": len(chunks.done) if chunks is not None else 0,
        },
    }


class PhaseClock:
    """Wall-clock seconds of consecutive phases of a run (what a GPU user pays outside the forwards)."""

    def __init__(self):
        self.started = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.started


def seed_like_simple_evaluate(seed: Sequence[int | None] | None) -> list[int | None]:
    """(python, numpy, torch, few-shot) seeds, applied as ``simple_evaluate`` applies them, so anything random
    in task building matches lm_eval's run."""
    seeds = (list(seed) if seed is not None else list(DEFAULT_SEEDS)) + [None] * 4
    python_seed, numpy_seed, torch_seed, fewshot_seed = seeds[:4]
    if python_seed is not None:
        random.seed(python_seed)
    if numpy_seed is not None:
        np.random.seed(numpy_seed)
    if torch_seed is not None:
        torch.manual_seed(torch_seed)
    return [python_seed, numpy_seed, torch_seed, fewshot_seed]


def falsedemo_task_manager(include_path, model_args: Mapping[str, Any]):
    """lm-eval's ``TaskManager`` over our task folder and the user's ``include_path`` only.

    The sweep reads falsedemo tasks alone, and indexing lm-eval's thousands of built-in YAML files costs several
    seconds. Model args reach task metadata as in lm_eval's CLI (custom_dataset callables receive them)."""
    from lm_eval.tasks import TaskManager

    from lm_eval_false_demos._hook import task_config_dir

    user_paths = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) \
        else [include_path]
    return TaskManager(include_path=[task_config_dir(), *user_paths], include_defaults=False,
                       metadata=dict(model_args))


def _load_leaf_tasks(task_names, task_manager, num_fewshot, fewshot_seed, sst2_formats) -> dict:
    """The leaf task objects; each SST-2 prompt format is its own task here (calibrated thresholds are per format).
    Groups such as falsedemo_main_permuted hold the all-formats task, so the expansion works on loaded leaves."""
    task_objects = load_tasks(task_names, task_manager, num_fewshot, fewshot_seed)
    leaves = list(task_objects)
    kept = {name: task.formats for name, task in task_objects.items() if len(getattr(task, "formats", ())) > 1}
    expanded = expand_task_names(leaves, sst2_formats, kept)
    if expanded != leaves:
        task_objects = load_tasks(expanded, task_manager, num_fewshot, fewshot_seed)
    return task_objects


def _read_my_share(lm, encoded, rank, world_size, batch_size, modules, translator, parity, chunks, show_progress):
    """This rank's prompts (round-robin over prompts sorted by length, so ranks get similar work) read out."""
    by_length = sorted(range(len(encoded)), key=lambda index: len(encoded[index].input_ids), reverse=True)
    mine = [encoded[index] for index in by_length[rank::world_size]]

    pad_id = lm.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = lm.tokenizer.eos_token_id or 0
    progress = tqdm(total=len(mine), desc="sweep prompts", unit="prompt", disable=not show_progress or rank != 0)
    try:
        with torch.no_grad():
            return readout.read_prompts(lm.model, mine, batch_size, modules, pad_id=pad_id, ablation=model_ablation(lm),
                                        progress=progress, translator=translator, parity=parity,
                                        chunks=chunks)
    finally:
        if chunks is not None:
            chunks.flush()  # Ctrl-C or an error keeps every finished batch
        progress.close()


def model_ablation(lm):
    """The validated ``Ablation`` an ``hf-ablate`` (or ``hf-earlyexit`` with ablations) model was built with."""
    return getattr(lm, "_ablation", None)


def run_configuration(*, lm, model, model_args, resolved_args, tasks, task_names, infos, limit, num_fewshot, seed,
                      batch_size, device, world_size, num_layers, modules, bootstrap_iters, analysis_seed,
                      confidence) -> dict:
    ablation = model_ablation(lm)
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
        "model_identity": loading.model_identity(resolved_args, lm),
        "versions": versions(),
        "analysis": {"bootstrap_iters": bootstrap_iters, "seed": analysis_seed, "confidence": confidence,
                     "interval": "percentile, paired over queries", "held_out_fraction": 0.5},
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "date": time.time(),
    }
