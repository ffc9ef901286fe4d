"""``falsedemo heads`` as an analysis run: score every head on an lm-eval task's prompts, and ablate the top heads
against random heads on the tasks of the datasets to evaluate.

The prompts take the one route every analysis takes (:mod:`.sweep_prompts`): lm-eval's ``TaskManager`` (our
task folder and ``--include_path``), the task's requests as ``PromptRecord``\\ s, token ids as HFLM's
``_encode_pair`` gives them. So any task the sweep reads can be scored, and the numbers are the ones
``lm_eval --tasks <task> --limit N`` evaluates on. The work is split across processes by the run context and
the scores gathered in order, so one process or N give the same record.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from lm_eval_false_demos.analysis import head_evaluation, head_scores
from lm_eval_false_demos.analysis.head_prompts import align_offsets, task_name
from lm_eval_false_demos.analysis.head_scores import HeadScores, draw_random_heads, format_heads
from lm_eval_false_demos.analysis.records import EncodedPrompt, PromptRecord, TaskInfo
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations.run_context import RunContext, RunOutput, command_line, seconds_since
from lm_eval_false_demos.integrations.sweep_prompts import (
    check_falsedemo_tasks,
    encode_record,
    falsedemo_task_manager,
    resolve_task_names,
    task_prompts,
)
from lm_eval_false_demos.results.heads_files import heads_payload
from lm_eval_false_demos.results.run_records import HeadsRecord

# Scores are sums over attention rows and a frozen-norm logit attribution: float32 unless dtype= says otherwise
# (lm_eval's own default, auto, would take a bf16 checkpoint's bf16 on CPU). Scoring swaps in a
# weights-returning variant of sdpa for its pass (core/readout_attention.py).
LOAD_DEFAULTS = {"dtype": "float32", "attn_implementation": "sdpa"}


@dataclasses.dataclass(frozen=True)
class HeadsRequest:
    """What ``falsedemo heads`` computes (its flags, checked)."""

    task: str
    num_prompts: int
    seed: int  # the few-shot seed (lm-eval's 4th --seed value)
    num_fewshot: int | None
    top_k: int
    given_heads: tuple[tuple[int, int], ...] | None = None  # --heads: skip scoring
    heads_text: str | None = None
    datasets: tuple[str, ...] = ()  # --evaluate
    limit: int = 100
    corrupted_setting: str = "permuted"
    random_draws: int = 10
    random_seed: int = 0
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    system_instruction: str | None = None
    include_path: str | None = None

    def evaluated_task(self, dataset: str, setting: str) -> str:
        return f"falsedemo_{dataset}_{setting}"


class HeadPrompts:
    """The prompts of one run's tasks through lm-eval (one task manager, one rendering, one few-shot seed)."""

    def __init__(self, context: RunContext, request: HeadsRequest):
        self.context, self.request = context, request
        self.task_manager = falsedemo_task_manager(request.include_path, context.options.given)
        self.recorded_format: dict = {}
        self._built: dict[tuple[str, int], tuple] = {}
        # what tasks outside our dataset table (falsedemo wrap) read, from the tasks themselves
        self.task_provenance: dict[str, dict] = {}

    def resolve(self, task: str) -> str:
        """One leaf task name (a bare dataset key means its permuted task); FalseDemoError otherwise."""
        names = resolve_task_names([task_name(task)], self.task_manager)
        check_falsedemo_tasks(names)
        if len(names) != 1:
            raise FalseDemoError(f"--task {task!r} names {len(names)} tasks ({', '.join(names[:4])}...); "
                                 "head scoring reads one task")
        return names[0]

    def encoded(self, task: str, limit: int) -> tuple[TaskInfo, list[PromptRecord], list[EncodedPrompt]]:
        """(task description, the first ``limit`` prompts' records, their encodings), built once per run."""
        if (task, limit) not in self._built:
            self._built[(task, limit)] = self._build(task, limit)
        return self._built[(task, limit)]

    def _build(self, task: str, limit: int):
        request = self.request
        prompts = task_prompts(self.context, [self.resolve(task)], self.task_manager, limit, request.num_fewshot,
                               request.seed, request.apply_chat_template, request.fewshot_as_multiturn,
                               request.system_instruction)
        if len(prompts.infos) != 1:
            raise FalseDemoError(f"task {task!r} holds {len(prompts.infos)} tasks; head scoring reads one")
        self.recorded_format = prompts.recorded_format
        (info,) = prompts.infos.values()
        (task_object,) = prompts.tasks.values()
        if not hasattr(task_object, "spec"):
            self.task_provenance[info.dataset] = task_object.data_provenance()
        encoded = [encode_record(self.context.lm, record, index) for index, record in enumerate(prompts.records)]
        return info, prompts.records, encoded

    def scoring_items(self, task: str, limit: int) -> list[head_scores.ScoringItem]:
        info, records, encoded = self.encoded(task, limit)
        tokenizer = self.context.tokenizer
        return [
            head_scores.scoring_item(record, prompt.input_ids, align_offsets(tokenizer, record.context,
                                                                             prompt.input_ids),
                                     info.label_words, prompt.label_token_ids)
            for record, prompt in zip(records, encoded)
        ]

    def queries(self, dataset: str, setting: str) -> list[head_evaluation.EncodedQuery]:
        _, records, encoded = self.encoded(self.request.evaluated_task(dataset, setting), self.request.limit)
        return [head_evaluation.encode_query(record, prompt) for record, prompt in zip(records, encoded)]


def score_task(context: RunContext, prompts: HeadPrompts, task: str, num_prompts: int,
               show_progress: bool = False) -> HeadScores:
    """Every head's scores over the first ``num_prompts`` prompts of ``task``, split across the processes."""
    items = prompts.scoring_items(task, num_prompts)
    return head_scores.score_heads(context.model, items, modules=context.modules, show_progress=show_progress,
                                   spread=context.map_in_order)


def run_heads(context: RunContext, output: RunOutput | None, request: HeadsRequest,
              log: Callable[[str], Any] = lambda message: None, show_progress: bool = False) -> HeadsRecord | None:
    """Score (unless heads are given), evaluate (with datasets), and return the record (None on every process
    but the writer)."""
    started = time.time()
    timing: dict[str, float] = {}
    modules = context.modules
    prompts = HeadPrompts(context, request)
    scored_task = None if request.given_heads else prompts.resolve(request.task)
    config = {
        "model": "hf",
        "model_args": None,
        "model_identity": None,
        "num_layers": modules.num_layers,
        "num_heads": modules.num_heads,
        "task": request.task,
        "num_prompts": None,
        "seed": request.seed,
        "k": None,
        "top_k": len(request.given_heads) if request.given_heads else request.top_k,
        "heads_given": request.heads_text,
        "readout": "last query token",
        "label_promoting_norm": "final norm (and Gemma's post-attention norm) with scale frozen at the actual "
                                "residual; output-head bias cancels; pre soft-cap",
    }
    if scored_task is not None:
        info, _, _ = prompts.encoded(scored_task, request.num_prompts)
        config["k"] = info.num_fewshot
        dataset_keys = [info.dataset]
    else:
        dataset_keys = []
    if request.datasets:
        info, _, _ = prompts.encoded(request.evaluated_task(request.datasets[0], "correct"), request.limit)
        config["k"] = config["k"] if config["k"] is not None else info.num_fewshot
    provenance = context.provenance([key for key in dataset_keys if key not in prompts.task_provenance]
                                    + list(request.datasets))
    config.update(
        model_args=provenance["model_args"], model_identity=provenance["model_identity"],
        data_source=provenance["data_source"], versions=provenance["versions"], world_size=context.world_size,
        **(prompts.recorded_format or {"prompt_mode": "raw", "chat_template_sha256": None}),
        command=command_line(),
    )
    if request.datasets:
        config.update(evaluate=list(request.datasets), limit=request.limit, random_draws=request.random_draws,
                      random_seed=request.random_seed, corrupted_setting=request.corrupted_setting)
    # What is read for the datasets used (scored task, evaluated datasets): source, sizes, fingerprint. Known
    # before any work, so a resumed run refuses changed data.
    config["data_provenance"] = {**provenance["data_provenance"], **prompts.task_provenance}
    if output is not None:
        output.begin(config, context)
    checkpoint = output.checkpoint if output is not None else None

    scores = None
    if scored_task is not None:
        began = time.time()
        stored = checkpoint.load("scores") if checkpoint is not None else None
        if stored is not None:
            scores = HeadScores(stored["prefix_matching"], stored["label_promoting"])
        else:
            scores = score_task(context, prompts, scored_task, request.num_prompts, show_progress)
            if checkpoint is not None:
                checkpoint.save("scores", {"prefix_matching": scores.prefix_matching,
                                           "label_promoting": scores.label_promoting})
        top = scores.top_k(request.top_k)
        timing["scoring_seconds"] = seconds_since(began)
        log(f"[heads] scored {scores.num_prompts} prompts in {time.time() - began:.0f}s; top-{request.top_k}: "
            f"{format_heads(top)}")
        config["num_prompts"] = scores.num_prompts
    else:
        top = list(request.given_heads)
    evaluation = None
    if request.datasets:
        draws = draw_random_heads(modules.num_layers, modules.num_heads, len(top), request.random_draws,
                                  request.random_seed)
        began = time.time()
        evaluation = head_evaluation.evaluate_heads(
            context.model, request.datasets, top, draws, prompts.queries, request.corrupted_setting, log=log,
            show_progress=show_progress, checkpoint=checkpoint, spread=context.map_in_order)
        timing["evaluation_seconds"] = seconds_since(began)
    timing["total_seconds"] = seconds_since(started)
    if not context.is_writer:
        return None
    return HeadsRecord(heads_payload(config, scores, top, evaluation, timing), scores)


def discover_heads(lm, k: int, task: str, num_prompts: int, seed: int, num_fewshot: int | None = None,
                   given_args: dict | None = None) -> str:
    """``hf-ablate heads=auto``: the top-``k`` prefix-matching heads on ``task``'s first ``num_prompts`` prompts
    (the lm-eval task's, as ``falsedemo heads`` reads them), as an ``hf-ablate heads=`` string."""
    from lm_eval_false_demos.integrations.run_context import open_model

    context = open_model("hf", given_args or {}, lm=lm)
    request = HeadsRequest(task=task, num_prompts=num_prompts, seed=seed, num_fewshot=num_fewshot, top_k=k)
    prompts = HeadPrompts(context, request)
    scores = head_scores.score_heads(context.model, prompts.scoring_items(prompts.resolve(task), num_prompts),
                                     context.modules)
    return format_heads(scores.top_k(k))
