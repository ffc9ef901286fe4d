"""What an analysis run yields, and the one writer of each kind.

An analysis returns its record (the sweep: the ``sweep.json`` payload with its per-query arrays; heads: a
:class:`HeadsRecord`); the run's output (``integrations.run_context.RunOutput``, on the writing process only)
hands it to :func:`store`, which calls the writer registered for the run's kind. A new analysis adds its record
type and one entry in :data:`WRITERS`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

from lm_eval_false_demos.analysis.head_scores import HeadScores
from lm_eval_false_demos.results import heads_files, sweep_files


@dataclasses.dataclass
class HeadsRecord:
    """What a heads run found: the ``heads.json`` payload and the per-prompt scores (for heads.csv and figures)."""

    payload: dict
    scores: HeadScores | None


def _write_sweep(record: Mapping, folder: Path, *, plots: bool = True) -> Path:
    return sweep_files.write_outputs(record, folder.parent, plots=plots, run_directory=folder)


def _write_heads(record: HeadsRecord, folder: Path, *, plots: bool = True, critical_layer: int | None = None
                 ) -> list[Path]:
    return heads_files.write_outputs(record.payload, record.scores, folder, plots=plots, critical_layer=critical_layer)


# kind -> the one writer of that kind's results into a run folder
WRITERS: dict[str, Callable[..., Any]] = {"sweep": _write_sweep, "heads": _write_heads}


def store(kind: str, record: Any, folder: Path, **options) -> Any:
    """Write ``record`` into the run folder with the writer of ``kind`` (what it wrote)."""
    return WRITERS[kind](record, folder, **options)
