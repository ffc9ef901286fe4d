"""What makes two results files the same leaderboard row: the checkpoint and everything that defines its readout.

lm-eval writes every configuration of one checkpoint (exit layers, ablations) into one folder, so rows are
keyed by the checkpoint plus the model args that change results, with values in canonical form
(``exit_layer=-1`` and ``exit_layer=L`` are the same readout), plus readout-defining fields that live
outside the model args. Those are listed once, in ``READOUT_FIELDS``: a new one (a lens kind and hash, a
chat template hash) is one entry there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .values import integer, parse_model_args, text

# Model args that change where or how fast a model runs, not what it computes.
RUNTIME_ONLY_ARGS = frozenset(
    {"device", "batch_size", "max_batch_size", "parallelize", "device_map", "max_memory_per_gpu",
     "max_cpu_memory", "offload_folder"}
)
CHECKPOINT_ARGS = ("pretrained", "model", "path", "engine")


@dataclass(frozen=True)
class ReadoutField:
    """A readout-defining value recorded outside the model args: its name in the row's config text and the
    places writers put it (key paths from the top of the results file), first found wins."""

    name: str
    paths: tuple[tuple[str, ...], ...]


READOUT_FIELDS: tuple[ReadoutField, ...] = (
    # lm-eval's own chat fields (top level of results_*.json); a sweep records them under config.
    ReadoutField("chat_template_sha", (("chat_template_sha",), ("config", "chat_template_sha"),
                                       ("config", "chat", "template_sha256"))),
    ReadoutField("fewshot_as_multiturn", (("fewshot_as_multiturn",), ("config", "fewshot_as_multiturn"),
                                          ("config", "chat", "fewshot_as_multiturn"))),
    ReadoutField("system_instruction_sha", (("system_instruction_sha",), ("config", "system_instruction_sha"))),
    # the lens a sweep reads layers through, when it is not the plain logit lens
    ReadoutField("lens_sha256", (("config", "lens", "sha256"),)),
)


class RowKeyError(ValueError):
    """model args that cannot be read as a row key (the message says why)."""


def _lookup(payload: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = payload
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def canonical_args(args: dict[str, str], num_layers: int | None) -> dict[str, str]:
    """Model-arg values in one spelling per readout: ``exit_layer`` as the resolved lens index 0..L."""
    args = dict(args)
    exit_layer = integer(args.get("exit_layer"))
    if exit_layer is not None:
        if exit_layer < 0 and num_layers:
            exit_layer += num_layers + 1
        args["exit_layer"] = str(exit_layer)
    return args


def row_key(model: Any, model_args: Any, payload: Mapping[str, Any], num_layers: int | None
            ) -> tuple[str, tuple[tuple[str, str], ...], str | None]:
    """(checkpoint, sorted readout-defining (name, value) pairs, lm-eval model type) for one results file."""
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
        for path in field.paths:
            value = _lookup(payload, path)
            if value not in (None, "", False):
                pairs[field.name] = str(value) if not isinstance(value, str) else " ".join(value.split())
                break
    return checkpoint, tuple(sorted(pairs.items())), model_type
