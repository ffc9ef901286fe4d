"""Defensive walking of lm-eval's results files (a layout not ours; a hostile or partial file never raises
here) and small helpers of the tables. Single values are read with the results schemas' own readers
(:mod:`results.schema`: number, accuracy, integer, text, model args)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping

from lm_eval_false_demos.results.schema import text

_TIMESTAMP_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2})[-:](\d{2})[-:](\d{2})")


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
    """``hub``, or ``local`` for a folder: a machine's paths say nothing to a reader."""
    found = text(source)
    if found is None:
        return None
    lowered = found.lower()
    if lowered.startswith("hub") or lowered.startswith("hf"):
        return "hub"
    if lowered.startswith("local") or "/" in found or "\\" in found:
        return "local"
    return found


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
