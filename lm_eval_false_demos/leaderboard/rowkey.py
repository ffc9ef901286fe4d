"""What makes two results files the same leaderboard row: the checkpoint and everything that defines its readout.

lm-eval writes every configuration of one checkpoint (exit layers, ablations) into one folder, so rows are
keyed by the checkpoint plus the model args that change results, with values in canonical form
(``exit_layer=-1`` and ``exit_layer=L`` are the same readout), plus readout-defining fields that live
outside the model args. Those are listed once, in ``READOUT_FIELDS``: a new one (a lens kind and hash, a
chat template hash) is one entry there, named as the field of :class:`results.schema.Readout` that our
sweep and heads files record it in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from lm_eval_false_demos.core.sst2_formats import parse_variant_key
from lm_eval_false_demos.results.schema import Readout, integer, number, parse_model_args, text

# Model args that change where or how fast a model runs, not what it computes.
RUNTIME_ONLY_ARGS = frozenset(
    {"device", "batch_size", "max_batch_size", "parallelize", "device_map", "max_memory_per_gpu",
     "max_cpu_memory", "offload_folder"}
)
CHECKPOINT_ARGS = ("pretrained", "model", "path", "engine")


@dataclass(frozen=True)
class ReadoutField:
    """A readout-defining value recorded outside the model args: its name in the row's config text (also the
    ``Readout`` field our sweep and heads files record it in), the places it is in an lm-eval results file
    (key paths from the top, ``*`` for any key; first found wins), and values that mean "the default" (a file
    that does not record the field is taken to have it)."""

    name: str
    lm_eval_paths: tuple[tuple[str, ...], ...]
    defaults: tuple[Any, ...] = ()


READOUT_FIELDS: tuple[ReadoutField, ...] = (
    # chat rendering (chat.py): every lm-eval task's metadata; raw prompts are the default
    ReadoutField("prompt_mode", (("configs", "*", "metadata", "prompt_mode"),), ("raw",)),
    ReadoutField("chat_template_sha256", (("configs", "*", "metadata", "chat_template_sha256"),
                                          ("chat_template_sha",))),  # lm-eval's own, when ours is absent
    ReadoutField("system_instruction", (("system_instruction_sha",),)),
    # the lens layers are read through (the Lens.describe() record): our lm-eval models' record; the plain logit lens
    # records none
    ReadoutField("lens_sha256", (("config", "falsedemo", "lens", "sha256"),)),
)


class RowKeyError(ValueError):
    """model args that cannot be read as a row key (the message says why)."""


def _lookup(node: Any, path: tuple[str, ...]) -> Any:
    if not path:
        return node
    if not isinstance(node, dict):
        return None
    if path[0] != "*":
        return _lookup(node.get(path[0]), path[1:])
    for child in node.values():
        found = _lookup(child, path[1:])
        if found not in (None, ""):
            return found
    return None


def canonical_args(args: dict[str, str], num_layers: int | None) -> dict[str, str]:
    """Model-arg values in one spelling per readout: ``exit_layer`` as the resolved lens index 0..L."""
    args = dict(args)
    exit_layer = integer(args.get("exit_layer"))
    if exit_layer is not None:
        if exit_layer < 0 and num_layers:
            exit_layer += num_layers + 1
        args["exit_layer"] = str(exit_layer)
    return args


def _recorded(value: Any, field: ReadoutField) -> bool:
    return value not in (None, "", False) and value not in field.defaults


def lm_eval_readout(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The readout fields of an lm-eval results file: {name: the first non-default value found}."""
    found = {}
    for field in READOUT_FIELDS:
        for path in field.lm_eval_paths:
            value = _lookup(payload, path)
            if _recorded(value, field):
                found[field.name] = value
                break
    return found


def schema_readout(readout: Readout) -> dict[str, Any]:
    """The readout fields a sweep or heads file records (results.schema.Readout)."""
    return {field.name: getattr(readout, field.name) for field in READOUT_FIELDS}


def row_key(model: Any, model_args: Any, readout: Mapping[str, Any], num_layers: int | None
            ) -> tuple[str, tuple[tuple[str, str], ...], str | None]:
    """(checkpoint, sorted readout-defining (name, value) pairs, lm-eval model type) for one results file;
    ``readout``: its readout fields by name (lm_eval_readout, schema_readout)."""
    args = parse_model_args(model_args)
    if args is None:
        raise RowKeyError(f"model_args is neither a string nor an object: {model_args!r:.80}")
    checkpoint = None
    for name in CHECKPOINT_ARGS:
        if args.get(name):
            checkpoint = args.pop(name)
            break
    model_type = text(model)
    checkpoint = checkpoint or model_type
    if not checkpoint:
        raise RowKeyError("no model name (config.model and model_args are empty)")
    args = canonical_args(args, num_layers)
    pairs = {name: value for name, value in args.items() if name not in RUNTIME_ONLY_ARGS}
    for field in READOUT_FIELDS:
        value = readout.get(field.name)
        if _recorded(value, field):
            pairs[field.name] = str(value) if not isinstance(value, str) else " ".join(value.split())
    return checkpoint, tuple(sorted(pairs.items())), model_type


# ------------------------------------------------------------------------------------------- protocol
# What was measured, beside which model: runs that differ in any of these are never merged into one row, and rows
# under different protocols are never ranked together (render.py groups them). k counts the demonstrations of the
# settings that show any (a zeroshot task has none by definition); N is the query limit asked for ("all" without
# one: each dataset's full query set), kept apart for SST-2's prompt formats (a protocol may run each format on fewer
# queries, as the published one does: their cost is the format count times N); label scoring is which part of each
# label is scored.

LABEL_SCORING_TEXT = {"first": "first label token", "full": "whole label"}
OUR_MODELS = ("hf-earlyexit", "hf-ablate")
NO_TASKS = ""  # a limit of a file without tasks of that kind


@dataclass(frozen=True, order=True)
class Protocol:
    k: tuple[int, ...]
    limit: str  # the --limit of the datasets other than SST-2 ("50", "0.5", "all"); NO_TASKS: none in the file
    sst2_limit: str  # the --limit of SST-2's tasks (its prompt formats); NO_TASKS: none in the file
    data_source: str  # "local", "hub" or "?"
    label_scoring: str  # "first", "full" or "?"

    @property
    def text(self) -> str:
        ks = ",".join(map(str, self.k)) or "?"
        if self.limit == NO_TASKS:  # SST-2 alone: comparable with rows whose N is its N
            sizes = f"N={self.sst2_limit}"
        elif self.sst2_limit in (NO_TASKS, self.limit):
            sizes = f"N={self.limit}"
        else:
            sizes = f"N={self.limit} (SST-2: {self.sst2_limit} a format)"
        return (f"k={ks}, {sizes}, data {self.data_source}, "
                f"{LABEL_SCORING_TEXT.get(self.label_scoring, 'label scoring ' + self.label_scoring)}")

    def completes(self, other: "Protocol") -> bool:
        """``other`` (a file with one part of the datasets) fits this protocol: the same k, data and scoring, and
        each limit equal where both files have tasks of that kind."""
        return ((self.k, self.data_source, self.label_scoring) == (other.k, other.data_source, other.label_scoring)
                and all(mine == theirs or NO_TASKS in (mine, theirs)
                        for mine, theirs in ((self.limit, other.limit), (self.sst2_limit, other.sst2_limit))))

    def joined(self, other: "Protocol") -> "Protocol":
        return dataclasses.replace(self, limit=self.limit if self.limit != NO_TASKS else other.limit,
                                   sst2_limit=self.sst2_limit if self.sst2_limit != NO_TASKS else other.sst2_limit)


HEADS_PROTOCOL = None  # a heads file describes its own ablations: it joins every protocol of its model's readout


def limit_text(limit: Any) -> str:
    value = number(limit)
    if value is None:
        return "all"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def label_scoring_of(model: Any, recorded: Any) -> str:
    """Our wrappers record their choice (config.falsedemo.label_scoring, default first for falsedemo tasks);
    lm-eval's plain models score the whole continuation; a sweep reads the first token."""
    recorded = text(recorded)
    if recorded:
        return recorded
    return "first" if text(model) in OUR_MODELS else "full"


def protocol(ks: Any, limit: Any, data_source: str | None, label_scoring: str, datasets: Any = ()) -> Protocol:
    """A file's protocol; ``datasets``: the dataset keys of its tasks (which limit the file sets: SST-2's, the
    others', or both)."""
    keys = {str(key) for key in datasets}
    sst2 = {key for key in keys if parse_variant_key(key) is not None or key == "sst2_formats"}
    others = keys - sst2
    return Protocol(tuple(sorted({int(k) for k in ks if k is not None})),
                    limit_text(limit) if others or not keys else NO_TASKS,
                    limit_text(limit) if sst2 else NO_TASKS, data_source or "?", label_scoring or "?")
