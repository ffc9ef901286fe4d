"""Every use of lm-eval's private or internal API, in one place.

lm-eval 0.4.x offers no public way to do what these do (tokenise a request pair as HFLM scores it, parse
``--model_args``/``--seed`` exactly as its CLI does, see HFLM's right-padded batch, add a task folder to
``TaskManager`` before user paths), so the plugin leans on names that may move between releases. Each is
wrapped here and listed in :data:`INTERNALS`; :func:`check_internals` verifies them (a test calls it, and model
loading does, so a rename in lm-eval fails loudly with the name that moved instead of deep inside a run).

Imports of lm-eval happen inside the functions: :mod:`lm_eval_false_demos._hook` imports this module at
interpreter start-up, where nothing heavy may load.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from typing import Callable, Iterator

from lm_eval_false_demos.errors import FalseDemoError

# (module, attribute path, parameters the plugin passes): what this module touches.
INTERNALS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("lm_eval.models.huggingface", "HFLM._encode_pair", ("context", "continuation")),
    ("lm_eval.models.huggingface", "HFLM._model_call", ("inps",)),
    ("lm_eval.models.huggingface", "HFLM._loglikelihood_tokens", ("requests", "disable_tqdm", "override_bs")),
    ("lm_eval.models.huggingface", "HFLM._select_cont_toks", ("logits", "contlen", "inplen")),
    ("lm_eval.models.huggingface", "pad_and_concat", ("max_length", "tensors", "padding_side")),
    ("lm_eval.models.utils", "resolve_max_length", ()),
    ("lm_eval.evaluator_utils", "get_sample_size", ("task", "limit")),
    ("lm_eval._cli.utils", "MergeDictAction", ()),
    ("lm_eval._cli.utils", "SplitArgs", ()),
    ("lm_eval._cli.utils", "_int_or_none_list_arg_type", ()),
    ("lm_eval.tasks.manager", "TaskManager.__init__", ("verbosity", "include_path", "include_defaults")),
    ("lm_eval.api.samplers", "ContextSampler.sample", ("n", "eval_doc")),
    ("lm_eval.tasks.manager", "TaskManager.task_index", ()),
    ("lm_eval.tasks._yaml_loader", "load_yaml", ("path", "resolve_func")),
)


def _lookup(module_name: str, path: str):
    target = importlib.import_module(module_name)
    for part in path.split("."):
        target = getattr(target, part)
    return target


def check_internals() -> None:
    """Raise FalseDemoError naming every internal that is missing or whose parameters changed."""
    import lm_eval

    problems = []
    for module_name, path, parameters in INTERNALS:
        try:
            target = _lookup(module_name, path)
        except (ImportError, AttributeError) as error:
            problems.append(f"{module_name}.{path} is gone ({type(error).__name__})")
            continue
        if parameters:
            present = inspect.signature(target).parameters
            lost = [name for name in parameters if name not in present]
            if lost:
                problems.append(f"{module_name}.{path} lost parameter(s) {', '.join(lost)}")
    if problems:
        version = getattr(lm_eval, "__version__", "?")
        raise FalseDemoError(
            f"lm-eval {version} changed internals this plugin uses: {'; '.join(problems)} "
            "(supported: lm-eval 0.4.11-0.4.x; see lm_eval_false_demos/integrations/compat.py)"
        )


# ------------------------------------------------------------------------------------- HFLM


def encode_pair(lm, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) exactly as HFLM encodes a loglikelihood request (its BOS rule, the
    trailing whitespace of the context moved into the continuation)."""
    return lm._encode_pair(context, continuation)


@contextlib.contextmanager
def right_padding_recorded(record: Callable[[list[int]], None]) -> Iterator[None]:
    """While active, ``record(row lengths)`` sees each batch HFLM right-pads in ``_loglikelihood_tokens``:
    HFLM builds no attention mask there, and an ablation of "the last token" needs each row's own length."""
    import lm_eval.models.huggingface as hf_module

    original = hf_module.pad_and_concat

    def recording(max_length, tensors, padding_side="right"):
        if padding_side == "right":
            record([tensor.shape[-1] for tensor in tensors])
        return original(max_length, tensors, padding_side=padding_side)

    hf_module.pad_and_concat = recording
    try:
        yield
    finally:
        hf_module.pad_and_concat = original


class ScoredColumnsLogits:
    """Mixin for an HFLM subclass whose ``_model_call`` may return only the columns HFLM scores.

    HFLM log-softmaxes whatever ``_model_call`` returns, then ``_select_cont_toks`` slices each row's
    continuation ``[inplen - contlen : inplen]`` out of a [B, T, V] tensor. A subclass that returns [B, W, V]
    instead (row b's columns are its last W input positions, right-aligned to its own length, W the longest
    continuation of the batch) sets ``self.scored_columns = W`` for that batch; the continuation is then the
    last ``contlen`` columns. Memory: B x W x V instead of B x T x V, twice (logits and log-softmax).
    """

    scored_columns: int | None = None

    def _select_cont_toks(self, logits, contlen=None, inplen=None):
        if self.scored_columns is None:
            return super()._select_cont_toks(logits, contlen=contlen, inplen=inplen)
        if not contlen or contlen > logits.shape[0]:
            raise RuntimeError(f"continuation of {contlen} tokens but {logits.shape[0]} scored columns")
        return logits[logits.shape[0] - contlen:]


def resolve_max_length(config, tokenizer) -> int:
    """The context length HFLM would use for this config and tokenizer."""
    from lm_eval.models.utils import resolve_max_length as resolve

    return int(resolve(config, tokenizer))


# ------------------------------------------------------------------------------------- tasks


def sample_size(task, limit: float | None) -> int | None:
    """How many documents ``simple_evaluate`` evaluates for ``--limit`` (a count, or a fraction below 1)."""
    from lm_eval.evaluator_utils import get_sample_size

    return get_sample_size(task, limit)


def fewshot_settings(task) -> dict:
    """{split, samples} of a task's few-shot configuration (``fewshot_cfg`` from 0.4.12, the config before)."""
    fewshot = getattr(task, "fewshot_cfg", None)
    if fewshot is not None:
        return {"split": fewshot.split, "samples": fewshot.samples}
    config = task.config.fewshot_config or {}
    return {"split": task.config.fewshot_split, "samples": config.get("samples")}


def read_task_yaml(path, resolve_functions: bool = True) -> dict:
    """A task YAML as lm-eval reads it (``include:`` merged; ``!function`` resolved or kept as text)."""
    try:
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:  # lm-eval before 0.4.12
        from lm_eval.utils import load_yaml_config

        return load_yaml_config(str(path), mode="full" if resolve_functions else "simple")
    return load_yaml(path, resolve_func=resolve_functions)


def reseed_sampler(sampler, seed: int) -> None:
    """Give an lm-eval few-shot sampler a fresh RNG seeded with ``seed`` (per query, for paired prompts)."""
    import random

    if hasattr(sampler, "set_rnd"):
        sampler.set_rnd(seed)
    else:
        sampler.rnd = random.Random(seed)


def task_yaml_path(task_manager, name: str):
    """(kind, YAML path) of an indexed name: kind 'task', 'group' or 'tag'; None when not indexed."""
    entry = task_manager.task_index.get(name)
    if entry is None:
        return None
    if isinstance(entry, dict):  # lm-eval before the Entry objects
        kind = {"python_task": "task"}.get(entry.get("type"), entry.get("type"))
        return kind, entry.get("yaml_path")
    kind = getattr(entry.kind, "name", str(entry.kind)).lower()
    return ("task" if kind in ("task", "py_task") else kind), entry.yaml_path


def add_task_folder(manager_module, folder_of: Callable[[], str]) -> None:
    """``TaskManager`` indexes ``folder_of()`` after lm-eval's built-ins and before any user ``include_path``
    (built-ins < ours < user). A caller passing ``include_defaults=False`` asks for its own paths only and gets
    exactly those: our folder comes with lm-eval's defaults, never uninvited (name it in ``include_path`` to
    have it). ``include_path`` keeps the caller's value, so nothing else lm-eval records changes."""
    task_manager = manager_module.TaskManager
    if getattr(task_manager, "_falsedemo_patched", False):
        return
    original_init = task_manager.__init__

    def __init__(self, verbosity=None, include_path=None, include_defaults=True, *args, **kwargs):
        if not include_defaults:
            original_init(self, verbosity, include_path, include_defaults, *args, **kwargs)
            return
        if include_path is None:
            paths = []
        elif isinstance(include_path, (list, tuple)):
            paths = list(include_path)
        else:
            paths = [include_path]
        ours = folder_of()
        if ours not in paths:
            paths.insert(0, ours)
        original_init(self, verbosity, paths, include_defaults, *args, **kwargs)
        self.include_path = include_path

    __init__.__wrapped__ = original_init
    task_manager.__init__ = __init__
    task_manager._falsedemo_patched = True


# ------------------------------------------------------------------------------------- command line


def model_args_actions():
    """(MergeDictAction, SplitArgs): lm_eval's own argparse actions for ``--model_args`` and ``--tasks``."""
    from lm_eval._cli.utils import MergeDictAction, SplitArgs

    return MergeDictAction, SplitArgs


def parse_seed_list(default: str, text: str) -> list[int | None]:
    """``--seed`` by lm_eval's rule: one integer for all four, or python,numpy,torch[,fewshot] (None allowed)."""
    from lm_eval._cli.utils import _int_or_none_list_arg_type

    return _int_or_none_list_arg_type(3, 4, default, text)
