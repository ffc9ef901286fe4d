"""What to zero, as the user writes it: head specs (``heads="14:6;16:7"``, ``@heads.json``), block specs
(``attn_layers="16-27"``, ``"3;5;7-9"``, ``"12-"``), and the checked :class:`Ablation` built from them for one
model (every index against the model's blocks and heads, before any forward pass).

The numbers in these specs (and in ``heads.json``'s "layer" field, named after the paper) are *block* indices
0..L-1, never lens layers 0..L: zeroing everything after early-exit (lens) layer l is ``"l-"``, blocks l..L-1.
:mod:`.interventions` applies an ``Ablation`` with hooks.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from lm_eval_false_demos.core import tensor_parallel
from lm_eval_false_demos.core.architectures import ModelModules, resolve_modules
from lm_eval_false_demos.errors import FalseDemoError

POSITIONS = ("last", "all")
HEAD_METHODS = ("zero", "qkv")
# Under tensor parallelism q, k and v are split over the processes in layouts that differ per architecture
# (fused projections are packed per process); head_method=zero needs only the output projection's input.
TP_QKV_REFUSAL = ("head_method=qkv is not supported with tp_plan= (tensor parallel); use head_method=zero (the "
                  "default), or run head_method=qkv without tp_plan")

_HEAD_ITEM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_LAYER_ITEM = re.compile(r"^\s*(\d+)\s*(?:(-)\s*(\d*)\s*)?$")


def _head_items(items, origin: str) -> tuple[tuple[int, int], ...]:
    pairs = []
    for item in items:
        if isinstance(item, str):
            match = _HEAD_ITEM.match(item)
            if not match:
                raise FalseDemoError(f"malformed head {item!r} in {origin}; expected block:head, e.g. heads=14:6;16:7")
            if max(len(match.group(1)), len(match.group(2))) > 9:
                raise FalseDemoError(f"head {item[:24]!r} in {origin} is out of range; blocks 0..L-1, heads 0..H-1")
            pairs.append((int(match.group(1)), int(match.group(2))))
        elif isinstance(item, dict) and {"layer", "head"} <= set(item):
            pairs.append((_int(item["layer"], origin), _int(item["head"], origin)))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            pairs.append((_int(item[0], origin), _int(item[1], origin)))
        else:
            raise FalseDemoError(f"malformed head {item!r} in {origin}; expected 'block:head' or [block, head]")
    return tuple(dict.fromkeys(pairs))


def _int(value, origin: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise FalseDemoError(f"{value!r} in {origin} is not an integer")
    return int(value)


def parse_heads(spec) -> tuple[tuple[int, int], ...] | str:
    """``"14:6;16:7"``, a list of pairs, ``"@heads.json"`` (key ``"top_k"``) or ``"auto"`` (returned as is).

    Order is kept, duplicates dropped; ranges are checked by :func:`make_ablation` against the model.
    """
    if spec is None or spec == "" or spec == ():
        return ()
    if isinstance(spec, str):
        text = spec.strip()
        if text == "auto":
            return "auto"
        if text.startswith("@"):
            return _heads_from_file(Path(text[1:]))
        items = [item for item in re.split(r"[;\s]+", text) if item]
        return _head_items(items, f"heads={spec!r}")
    if isinstance(spec, (list, tuple)):
        return _head_items(spec, f"heads={spec!r}")
    raise FalseDemoError(f"heads={spec!r} is not a head list; expected e.g. heads=14:6;16:7")


def _heads_from_file(path: Path):
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FalseDemoError(f"heads file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as error:
        raise FalseDemoError(f"heads file {str(path)!r} is not JSON: {error}") from None
    if not isinstance(data, dict) or "top_k" not in data:
        raise FalseDemoError(f"heads file {str(path)!r} has no 'top_k' key (written by `falsedemo heads`)")
    top_k = data["top_k"]
    heads = parse_heads(top_k)
    if heads == "auto" or not heads:
        raise FalseDemoError(f"heads file {str(path)!r}: 'top_k' holds no heads ({top_k!r})")
    return heads


# Without the model the block count is unknown; no supported model comes near this many blocks, and the
# bound keeps a typo such as 1-100000000 from becoming a list of a hundred million layers.
MAX_BLOCKS = 10_000


def parse_blocks(spec, num_layers: int | None = None, name: str = "layers") -> tuple[int, ...]:
    """``"16-27"``, ``"3;5;7-9"``, ``"12-"`` (to the last block, needs ``num_layers``), an int or a list.

    Ranges are checked arithmetically against ``num_layers`` (or :data:`MAX_BLOCKS` without a model) before
    any list is built, and errors name at most the offending range, never the layers one by one.
    """
    if spec is None or spec == "" or spec == ():
        return ()
    ranges = _block_ranges(spec, num_layers, name)
    limit = num_layers if num_layers is not None else MAX_BLOCKS
    for start, end, item in ranges:
        if start < 0 or end >= limit:
            where = f"allowed blocks 0..{num_layers - 1} (the model has {num_layers})" if num_layers is not None \
                else f"block indices are 0..L-1 and no model has {MAX_BLOCKS} blocks"
            raise FalseDemoError(f"{name}={_shown(spec)}: {item} is out of range; {where}")
    return tuple(sorted({block for start, end, _ in ranges for block in range(start, end + 1)}))


def _block_ranges(spec, num_layers: int | None, name: str) -> list[tuple[int, int, str]]:
    """(first, last, as written) per item of a block spec, inclusive; nothing expanded."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        value = _int(spec, f"{name}={_shown(spec)}")
        return [(value, value, str(value))]
    if isinstance(spec, (list, tuple)):
        values = [_int(item, f"{name}={_shown(spec)}") for item in spec]
        return [(value, value, str(value)) for value in values]
    if not isinstance(spec, str):
        raise FalseDemoError(f"{name}={_shown(spec)} is not a block list; expected e.g. 16-27 or 3;5;7-9")
    ranges = []
    for item in (part for part in re.split(r"[;\s]+", spec.strip()) if part):
        match = _LAYER_ITEM.match(item)
        if not match:
            raise FalseDemoError(
                f"malformed {name}={_shown(spec)} (at {_shown(item)}); expected e.g. 16-27, 3;5;7-9 or 12- (block indices >= 0)"
            )
        start_text, dash, end_text = match.groups()
        start = _bounded(start_text, spec, name)
        if not dash:
            ranges.append((start, start, f"block {start}"))
            continue
        if end_text == "":
            if num_layers is None:
                raise FalseDemoError(f"{name}={_shown(spec)}: an open range needs the model's block count")
            end = num_layers - 1
        else:
            end = _bounded(end_text, spec, name)
        if end < start:
            raise FalseDemoError(f"{name}={_shown(spec)}: range {_shown(item)} is empty (end before start)")
        ranges.append((start, end, f"range {start}-{end}" if end != start else f"block {start}"))
    return ranges


def _shown(value, width: int = 60) -> str:
    """A user value for an error message, cut so a pasted megabyte stays one readable line."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 5] + "...'"


def _bounded(digits: str, spec, name: str) -> int:
    # int() of a 5000-digit string is itself an error in Python; any number this long is out of range anyway.
    if len(digits) > 9:
        raise FalseDemoError(f"{name}={_shown(spec)}: {digits[:12]}... is out of range; block indices are 0..L-1")
    return int(digits)


@dataclasses.dataclass(frozen=True)
class Ablation:
    """A validated ablation; build it with :func:`make_ablation`."""

    heads: tuple[tuple[int, int], ...] = ()
    attn_layers: tuple[int, ...] = ()
    mlp_layers: tuple[int, ...] = ()
    positions: str = "last"
    head_method: str = "zero"

    @property
    def is_empty(self) -> bool:
        return not (self.heads or self.attn_layers or self.mlp_layers)

    def heads_spec(self) -> str:
        return ";".join(f"{block}:{head}" for block, head in self.heads)

    def describe(self) -> dict:
        """JSON-ready form echoed into results files."""
        return {
            "heads": self.heads_spec(),
            "attn_layers": list(self.attn_layers),
            "mlp_layers": list(self.mlp_layers),
            "positions": self.positions,
            "head_method": self.head_method,
        }


def make_ablation(
    model,
    heads=None,
    attn_layers=None,
    mlp_layers=None,
    positions: str = "last",
    head_method: str = "zero",
    modules: ModelModules | None = None,
) -> Ablation:
    """Parse and check every part against ``model`` before any forward pass (errors name value and range).

    ``heads="auto"`` is the model wrapper's to resolve (it runs the head discovery); here heads are explicit.
    """
    modules = modules or resolve_modules(model)
    if positions not in POSITIONS:
        raise FalseDemoError(f"positions={positions!r} is not allowed; allowed: {', '.join(POSITIONS)}")
    if head_method not in HEAD_METHODS:
        raise FalseDemoError(f"head_method={head_method!r} is not allowed; allowed: {', '.join(HEAD_METHODS)}")
    parsed_heads = parse_heads(heads)
    if parsed_heads == "auto":
        raise ValueError("make_ablation needs explicit heads: resolve heads='auto' first (heads.discover_default_heads)")
    num_layers, num_heads = modules.num_layers, modules.num_heads
    for block, head in parsed_heads:
        if not 0 <= block < num_layers:
            raise FalseDemoError(
                f"heads={heads!r}: block {block} out of range; allowed blocks 0..{num_layers - 1}"
            )
        if not 0 <= head < num_heads:
            raise FalseDemoError(
                f"heads={heads!r}: head {head} of block {block} out of range; allowed heads 0..{num_heads - 1}"
            )
    ablation = Ablation(
        heads=parsed_heads,
        attn_layers=parse_blocks(attn_layers, num_layers, "attn_layers"),
        mlp_layers=parse_blocks(mlp_layers, num_layers, "mlp_layers"),
        positions=positions,
        head_method=head_method,
    )
    if ablation.heads:
        modules.require("attn_out_proj")
    if ablation.attn_layers:
        modules.require("attention")
    if ablation.mlp_layers:
        modules.require("mlp")
    if ablation.heads and head_method == "qkv":
        if tensor_parallel.is_tensor_parallel(model):
            raise FalseDemoError(TP_QKV_REFUSAL)
        if modules.qkv_layout is None:
            raise FalseDemoError(
                f"head_method=qkv needs known q/k/v projections; {modules.model_type!r} with path overrides has none"
            )
        if modules.num_kv_heads != modules.num_heads:
            raise FalseDemoError(
                f"head_method=qkv is undefined for grouped-query attention ({modules.num_heads} query heads share "
                f"{modules.num_kv_heads} key/value heads: zeroing a head's k and v would change its siblings); "
                "use head_method=zero"
            )
    overlap = set(ablation.attn_layers) & {block for block, _ in ablation.heads}
    if overlap:
        raise FalseDemoError(
            f"heads={heads!r} lie in blocks {sorted(overlap)} whose whole attention is zeroed by attn_layers={attn_layers!r}"
        )
    return ablation
