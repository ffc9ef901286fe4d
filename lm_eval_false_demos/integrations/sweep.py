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
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from lm_eval_false_demos.analysis import readout
from lm_eval_false_demos.analysis.layer_curves import analyse_datasets, summarise_run, summarise_tasks
from lm_eval_false_demos.core.task_names import DEFAULT_SEEDS
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations.run_context import ModelOptions, RunContext, RunOutput, command_line, open_model
from lm_eval_false_demos.integrations.sweep_prompts import (
    check_falsedemo_tasks,
    encode_record,
    falsedemo_task_manager,
    resolve_task_names,
    task_prompts,
)
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
    output: "RunOutput | None" = None,
    checkpoint_seconds: float = 60.0,
    wrong_shares: Sequence[float] | None = None,
) -> dict | None:
    """Run the sweep and return the ``sweep.json`` payload (None on every process but the writer).

    With ``output`` (a :class:`RunOutput`) finished prompts are saved into its run folder as the forward passes
    go, and on a resumed output the ones saved there are reused (the configuration must be the interrupted
    run's); under several processes each reads its share and the writer saves what all finished. With
    ``wrong_shares`` (percent) every permuted task also runs once per share, as ``<task>@<share>``: the same
    demonstrations with that share of their labels shifted (paired; nested wrong sets)."""
    clock = PhaseClock()
    model_args = dict(model_args or {})
    seeds = seed_like_simple_evaluate(seed)
    ModelOptions.parse(model, model_args, device=device, batch_size=batch_size)  # lens= etc. checked before loading
    check_falsedemo_tasks(tasks)
    if task_manager is None:
        task_manager = falsedemo_task_manager(include_path, model_args)
    task_names = resolve_task_names(tasks, task_manager)
    check_falsedemo_tasks(task_names)
    clock.lap("task_index")
    if lm is None:
        check_no_exit_layer(model_args)
    context = open_model(model, model_args, batch_size=batch_size, device=device, lm=lm)
    clock.lap("model_load")
    prompts = task_prompts(context, task_names, task_manager, limit, num_fewshot, seeds[3], apply_chat_template,
                           fewshot_as_multiturn, system_instruction, sst2_formats, wrong_shares=wrong_shares,
                           include_path=include_path)
    task_objects, infos, records = prompts.tasks, prompts.infos, prompts.records
    clock.lap("task_prompts")

    config = run_configuration(
        context=context, requested_tasks=tasks, task_names=list(task_objects), infos=infos, limit=limit,
        num_fewshot=num_fewshot, seed=seeds, batch_size=batch_size, bootstrap_iters=bootstrap_iters,
        analysis_seed=analysis_seed, confidence=confidence,
        # What each dataset read, from its task (SST-2's formats read SST-2's data; a wrapped task its lm-eval task's).
        data_provenance={(task.spec.key if hasattr(task, "spec") else infos[name].dataset): task.data_provenance()
                         for name, task in task_objects.items()},
    )
    config.update(prompts.recorded_format)
    if wrong_shares:  # absent without a grid, so runs checkpointed before the option resume (same fingerprint)
        config["wrong_shares"] = sorted(float(share) for share in wrong_shares)
    config["lens"] = context.lens
    clock.lap("configuration")

    encoded = [encode_record(context.lm, record, index) for index, record in enumerate(records)]
    clock.lap("tokenisation")
    chunks = None
    if output is not None:
        output.begin(config, context)
        digests = {prompt.index: checkpoints.prompt_digest(prompt.input_ids, prompt.positions, prompt.label_token_ids,
                                                           prompt.demo_label_token_ids)
                   for prompt in encoded}
        chunks = checkpoints.PromptChunks(output.checkpoint, digests, checkpoint_seconds)
    parity: dict = {}
    try:
        outputs = read_all_prompts(context, encoded, batch_size, parity, chunks, show_progress)
    finally:
        context.close()  # every process leaves the process group together, after the last collective
    clock.lap("forward")
    if not context.is_writer:
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


# Prompts per process and round of a data-parallel sweep: after each round the processes' readouts are gathered
# and the writer saves them, so an interrupted multi-process run keeps what all processes finished.
ROUND_BATCHES = 16


def read_all_prompts(context: RunContext, encoded, batch_size, parity, chunks, show_progress) -> dict:
    """{prompt index: label logits} of every prompt; under several processes each reads every ``world_size``-th
    prompt of each round (prompts sorted by length, so processes get similar work) and all are gathered."""
    by_length = sorted(range(len(encoded)), key=lambda index: len(encoded[index].input_ids), reverse=True)
    world_size, rank = context.shards, context.shard
    pad_id = context.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = context.tokenizer.eos_token_id or 0
    progress = tqdm(total=len(by_length[rank::world_size]), desc="sweep prompts", unit="prompt",
                    disable=not show_progress or not context.show_progress)

    def read(prompts, stored):
        return readout.read_prompts(context.readout, prompts, batch_size, pad_id=pad_id,
                                    ablation=context.ablation, progress=progress, parity=parity, chunks=stored)

    try:
        with torch.no_grad():
            if world_size == 1:
                return read([encoded[index] for index in by_length], chunks)
            outputs: dict = {}
            stored = checkpoints.StoredReadouts(chunks.done) if chunks is not None else None
            size = world_size * batch_size * ROUND_BATCHES
            for start in range(0, len(by_length), size):
                mine = [encoded[index] for index in by_length[start:start + size][rank::world_size]]
                finished = {}
                for part in context.gather(read(mine, stored)):
                    finished.update(part)
                if chunks is not None and context.is_writer:  # the writer saves what every process finished
                    chunks.record({index: value for index, value in finished.items() if index not in chunks.done})
                outputs.update(finished)
            return outputs
    finally:
        if chunks is not None:
            chunks.flush()  # Ctrl-C or an error keeps every finished batch
        progress.close()


def run_configuration(*, context: RunContext, requested_tasks, task_names, infos, limit, num_fewshot, seed,
                      batch_size, bootstrap_iters, analysis_seed, confidence, data_provenance=None) -> dict:
    ablation = context.ablation
    provenance = context.provenance()  # the data read comes from the tasks themselves (data_provenance)
    return {
        "model": provenance["model"],
        "model_args": provenance["model_args"],
        "requested_tasks": list(requested_tasks),
        "tasks": list(task_names),
        "limit": limit,
        "num_fewshot": num_fewshot,
        "k": sorted({info.num_fewshot for info in infos.values()}),
        "seed": {"python": seed[0], "numpy": seed[1], "torch": seed[2], "fewshot": seed[3]},
        "batch_size": batch_size,
        "device": str(context.device),
        "world_size": context.world_size,
        "num_layers": context.modules.num_layers,
        "model_type": context.modules.model_type,
        "ablation": ablation.describe() if ablation is not None else None,
        "readout": "label-token logits through the model's final norm and head, softmax over the K labels",
        "data_source": provenance["data_source"],
        "data_provenance": dict(data_provenance or {}),
        "model_identity": provenance["model_identity"],
        "versions": provenance["versions"],
        "analysis": {"bootstrap_iters": bootstrap_iters, "seed": analysis_seed, "confidence": confidence,
                     "interval": "percentile, paired over queries", "held_out_fraction": 0.5},
        "command": command_line(),
        "date": time.time(),
    }
