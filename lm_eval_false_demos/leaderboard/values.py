"""Defensive readers of single values in results files: a hostile or partial file never raises here."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

_TIMESTAMP_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2})[-:](\d{2})[-:](\d{2})")


def parse_model_args(model_args: Any) -> dict[str, str] | None:
    """lm-eval model args (``"a=1,b=2"`` or a dict) as ``{name: text}``; None if neither."""
    if model_args is None:
        return {}
    if isinstance(model_args, dict):
        return {str(name).strip(): arg_text(value) for name, value in model_args.items() if str(name).strip()}
    if isinstance(model_args, str):
        parsed = {}
        for part in model_args.split(","):
            name, sep, value = part.partition("=")
            if name.strip():
                parsed[name.strip()] = value.strip() if sep else ""
        return parsed
    return None


def arg_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # lm-eval's CLI turns exit_layer=-1 into -1.0
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def accuracy(value: Any) -> float | None:
    found = number(value)
    return found if found is not None and 0.0 <= found <= 1.0 else None


def integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            parsed = float(value.strip())  # lm-eval's CLI writes exit_layer=-1 as "-1.0"
        except ValueError:
            return None
        return int(parsed) if parsed.is_integer() else None
    return None


def curve(value: Any) -> list[float] | None:
    if not isinstance(value, list) or len(value) < 2:
        return None
    values = [accuracy(item) for item in value]
    return None if any(item is None for item in values) else values


def text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return " ".join(value.split())
    return None


def first(mapping: Mapping[str, Any], names: Iterable[str]) -> Any:
    for name in names:
        if isinstance(mapping, dict) and mapping.get(name) not in (None, ""):
            return mapping[name]
    return None


def mapping_at(node: Any, *path: str) -> dict:
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def data_source_text(source: Any) -> str | None:
    """``hub``, or ``local`` for a folder: a machine's paths say nothing to a reader.

    Accepts the sweep's ``{"kind": "local", "path": ...}`` as well as plain text.
    """
    if isinstance(source, dict):
        source = source.get("kind")
    found = text(source)
    if found is None:
        return None
    lowered = found.lower()
    if lowered.startswith("hub") or lowered.startswith("hf"):
        return "hub"
    if lowered.startswith("local") or "/" in found or "\\" in found:
        return "local"
    return found


def date_of(config: Mapping[str, Any]) -> float | None:
    value = first(config, ("date", "timestamp", "created"))
    if number(value) is not None:
        return number(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return date_from_name(Path(value))
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    return None


def date_from_name(path: Path) -> float | None:
    """lm-eval and results_io name files and folders by UTC timestamp: use it when nothing else says."""
    match = _TIMESTAMP_IN_NAME.search(str(path))
    if not match:
        return None
    day, hour, minute, second = match.groups()
    try:
        return datetime.fromisoformat(f"{day}T{hour}:{minute}:{second}+00:00").timestamp()
    except ValueError:
        return None


def walk_objects(value: Any) -> Iterable[dict]:
    """Every dict inside ``value`` (iterative: a hostile, deeply nested file cannot overflow the stack)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def joined(values: set) -> str | None:
    return ", ".join(str(value) for value in sorted(values, key=str)) if values else None
