"""Every analysis's prompts, taken from lm-eval itself (the one prompt route: the sweep's, head scoring's and
head evaluation's): tasks resolved by lm-eval's ``TaskManager`` (names, tags,
globs), configured as ``simple_evaluate`` configures them (``--num_fewshot``, the few-shot seed), their requests
built with ``build_all_requests`` and tokenised by the model's own ``HFLM._encode_pair``, so the contexts,
continuations and token ids are the ones ``lm_eval --model hf-earlyexit`` scores."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from lm_eval_false_demos.analysis.records import EncodedPrompt, PromptRecord, TaskInfo
from lm_eval_false_demos.core.chat import check_has_template, label_token_index, prompt_mode, template_sha256
from lm_eval_false_demos.core.prompts import label_token_ids
from lm_eval_false_demos.core.sst2_formats import expand_task_names
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations import compat


def falsedemo_task_manager(include_path, model_args: Mapping[str, Any]):
    """lm-eval's ``TaskManager`` over our task folder and the user's ``include_path`` only.

    Analyses read falsedemo tasks alone, and indexing lm-eval's thousands of built-in YAML files costs several
    seconds. Model args reach task metadata as in lm_eval's CLI (custom_dataset callables receive them)."""
    from lm_eval.tasks import TaskManager

    from lm_eval_false_demos._hook import task_config_dir

    user_paths = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) \
        else [include_path]
    return TaskManager(include_path=[task_config_dir(), *user_paths], include_defaults=False,
                       metadata=dict(model_args))


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

    The demonstration details (true labels, shift, readout offsets) come from the task's own ``render_for``
    (``prompts.build_prompt`` for our datasets, lm-eval's own rendering for a wrapped task); its context is
    checked to be lm-eval's context.
    """
    if not hasattr(task, "render_for"):
        raise FalseDemoError(
            f"task {name} is not a falsedemo task; the sweep needs demonstrations it can read out "
            "(tasks falsedemo_<dataset>_<setting>, tags falsedemo_<dataset> / falsedemo_<setting>, or a task "
            "written by falsedemo wrap)"
        )
    if getattr(task, "label_mode", "fixed") != "fixed":
        raise FalseDemoError(
            f"task {name}: its choices differ per document; the sweep reads the logits of one fixed label set at "
            "every layer (run per-document-choice tasks with lm_eval --model hf-earlyexit)"
        )
    if len(getattr(task, "formats", ())) > 1:
        raise FalseDemoError(f"task {name} holds several SST-2 prompt formats; the sweep scores one task per format")
    # Every rank builds every prompt (the demos of a query do not depend on the order or the rank) and the
    # sweep shards them itself, so one process and several see the same prompts.
    chat = dict(chat or {})
    task.build_all_requests(limit=compat.sample_size(task, limit), rank=0, world_size=1, **chat)
    by_doc: dict[int, list] = {}
    for instance in task.instances:
        by_doc.setdefault(instance.doc_id, []).append(instance)
    num_fewshot = int(task.get_config("num_fewshot") or 0)
    num_classes = task.num_classes
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
        records.append(PromptRecord.from_prompt(
            prompt, task=name, doc_id=doc_id, query_key=task.doc_key(doc), context=context,
            continuations=[instance.args[1] for instance in instances], demo_offsets=demo_offsets))
    if not records:
        raise FalseDemoError(f"task {name} produced no prompts (check --limit)")
    info = TaskInfo(
        name=name,
        dataset=task.dataset_key,  # sst2_f3: SST-2 in prompt format 3; a wrapped task's name
        setting=task.setting,
        num_fewshot=num_fewshot,
        num_classes=num_classes,
        label_words=tuple(task.label_words),
        wrong_share=task.setting_parameters.get("wrong_share"),  # only settings that read it (permuted) hold one
    )
    return info, records


def encode_record(lm, record: PromptRecord, index: int) -> EncodedPrompt:
    """Token ids exactly as HFLM builds them for ``(context, continuation)`` and the readout positions.

    lm-eval feeds ``context_enc + continuation_enc`` minus the last token; the logits after the last context
    token score the continuation's first token, which is the label token we read.
    """
    context_ids = None
    label_ids = []
    moved = 0
    for continuation in record.continuations:
        context_enc, continuation_enc = compat.encode_pair(lm, record.context, continuation)
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


def check_falsedemo_tasks(task_names: Sequence[str]) -> None:
    """Before any data loads: the sweep reads demonstrations only falsedemo tasks build (names and globs are
    checked as given, then again once resolved)."""
    foreign = [name for name in task_names if not str(name).startswith("falsedemo") and not set("*?[") & set(name)]
    if foreign:
        raise FalseDemoError(
            f"{', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}: not a falsedemo task; the sweep reads "
            "falsedemo_<dataset>_<setting> tasks and the falsedemo* tags (run other tasks with lm_eval)"
        )


def prompt_format(lm, model_args, apply_chat_template, fewshot_as_multiturn, system_instruction) -> tuple[dict, dict]:
    """(what sweep.json records about the rendering, the chat arguments lm_eval's evaluate passes to tasks)."""
    template = None
    chat_args = {"system_instruction": system_instruction}
    if apply_chat_template:
        template = check_has_template(lm.tokenizer, str(model_args.get("pretrained") or lm.tokenizer.name_or_path))
        chat_args.update(apply_chat_template=True, fewshot_as_multiturn=bool(fewshot_as_multiturn),
                         chat_template=lm.apply_chat_template)
    recorded = {"prompt_mode": prompt_mode(apply_chat_template, fewshot_as_multiturn),
                "chat_template_sha256": template_sha256(template), "system_instruction": system_instruction}
    return recorded, chat_args


def load_leaf_tasks(task_names, task_manager, num_fewshot, fewshot_seed, sst2_formats=None) -> dict:
    """The leaf task objects; each SST-2 prompt format is its own task here (calibrated thresholds are per format).
    Groups such as falsedemo_main_permuted hold the all-formats task, so the expansion works on loaded leaves."""
    task_objects = load_tasks(task_names, task_manager, num_fewshot, fewshot_seed)
    leaves = list(task_objects)
    kept = {name: task.formats for name, task in task_objects.items() if len(getattr(task, "formats", ())) > 1}
    expanded = expand_task_names(leaves, sst2_formats, kept)
    if expanded != leaves:
        task_objects = load_tasks(expanded, task_manager, num_fewshot, fewshot_seed)
    return task_objects


@dataclasses.dataclass(frozen=True)
class TaskPrompts:
    """The prompts of a run's tasks, as lm-eval builds them: the task objects, their descriptions, every
    document's prompt record (tasks in order, documents in lm-eval's order) and what results record about the
    rendering (prompt mode, chat template digest, system instruction)."""

    tasks: dict
    infos: dict  # {task name: TaskInfo}
    records: list  # PromptRecord
    recorded_format: dict


def task_prompts(context, task_names: Sequence[str], task_manager, limit, num_fewshot, fewshot_seed,
                 apply_chat_template=False, fewshot_as_multiturn=False, system_instruction=None,
                 sst2_formats=None, wrong_shares=None, include_path=None) -> TaskPrompts:
    """The one prompt route: lm-eval's tasks (resolved by its ``TaskManager``, configured as ``simple_evaluate``
    configures them, with lm-eval's chat flags) and their requests turned into :class:`PromptRecord`\\ s;
    ``context`` is the run's :class:`~.run_context.RunContext` (its model renders chat templates)."""
    recorded_format, chat_args = prompt_format(context.lm, context.options.given, apply_chat_template,
                                               fewshot_as_multiturn, system_instruction)
    task_objects = load_leaf_tasks(task_names, task_manager, num_fewshot, fewshot_seed, sst2_formats)
    if wrong_shares:
        task_objects.update(graded_tasks(task_objects, wrong_shares, include_path, context.options.given,
                                         num_fewshot, fewshot_seed))
    infos, records = {}, []
    for name in task_objects:
        info, task_records = build_records(name, task_objects[name], limit, chat_args)
        infos[name] = info
        records.extend(task_records)
    return TaskPrompts(task_objects, infos, records, recorded_format)


def graded_task_name(name: str, share: float) -> str:
    return f"{name}@{share:g}"


def graded_tasks(task_objects: Mapping[str, Any], wrong_shares: Sequence[float], include_path, model_args,
                 num_fewshot, fewshot_seed) -> dict:
    """Every permuted task once more per wrong share, as ``<task>@<share>``: lm-eval's task with
    ``metadata.wrong_share`` (the same demonstrations, that share of their labels shifted)."""
    permuted = [name for name, task in task_objects.items() if getattr(task, "setting", None) == "permuted"]
    if not permuted:
        raise FalseDemoError(
            "--wrong_share grades the permuted setting; add falsedemo_<dataset>_permuted tasks to --tasks")
    graded = {}
    for share in wrong_shares:
        manager = falsedemo_task_manager(include_path, {**dict(model_args), "wrong_share": share})
        for name, task in load_tasks(permuted, manager, num_fewshot, fewshot_seed).items():
            graded[graded_task_name(name, share)] = task
    return graded
