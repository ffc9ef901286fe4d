"""What the leaderboard knows about one model configuration: its measurements and everything its files say."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRIC = "calibrated_acc"
GROUP_DATASET = "main"  # falsedemo_main_<setting>: lm-eval's group row over the 14 datasets
IDENTITY_PRECEDENCE = ("gguf", "sha", "revision", "folder")


class SkipFile(Exception):
    """A results file that cannot be used as a whole; the message says why."""


@dataclass
class Measurement:
    """One dataset x setting calibrated accuracy, and the file it came from."""

    value: float
    n: int | None
    source: Path
    date: float | None
    curve: list[float] | None = None  # sweeps: per layer 0..L
    scores: dict | None = None  # sweeps with query_scores.npz: {"scores" [N, L+1, K], "gold", "keys"}


@dataclass
class Row:
    """Everything known about one model configuration, merged over all its files."""

    checkpoint: str
    args: tuple[tuple[str, str], ...]
    protocol: Any = None  # rowkey.Protocol: k, N, data source, label scoring (None: a heads-only row)
    model_types: set[str] = field(default_factory=set)
    identities: set[tuple[str, str]] = field(default_factory=set)  # (kind, text), see identity_text
    parameters: set[int] = field(default_factory=set)
    layers: set[int] = field(default_factory=set)
    k: set[int] = field(default_factory=set)
    seeds: set[int] = field(default_factory=set)
    data_sources: set[str] = field(default_factory=set)
    label_scoring: set[str] = field(default_factory=set)
    versions: dict[str, set[str]] = field(
        default_factory=lambda: {"plugin": set(), "lm_eval": set(), "transformers": set()}
    )
    dates: list[float] = field(default_factory=list)
    files: set[Path] = field(default_factory=set)
    commands: dict[Path, str] = field(default_factory=dict)  # results file -> the command that wrote it
    # lm-eval results take precedence over a sweep's final layer (see Leaderboard.accuracy)
    lm_eval: dict[tuple[str, str], Measurement] = field(default_factory=dict)
    sweep: dict[tuple[str, str], Measurement] = field(default_factory=dict)
    heads: dict[str, Any] | None = None  # the newest heads.json's numbers (collect_runs.heads_numbers)
    heads_source: Path | None = None
    heads_date: float | None = None

    @property
    def key(self) -> tuple:
        return self.checkpoint, self.args, self.protocol

    @property
    def config_text(self) -> str:
        return ",".join(f"{name}={value}" for name, value in self.args) or "(default)"

    def absorb(self, other: "Row") -> None:
        """Everything ``other``'s files said about the checkpoint and the runs, except its measurements (the
        caller puts those, reporting duplicates)."""
        for name in ("model_types", "identities", "parameters", "layers", "k", "seeds", "data_sources",
                     "label_scoring", "files"):
            getattr(self, name).update(getattr(other, name))
        for which, found in other.versions.items():
            self.versions.setdefault(which, set()).update(found)
        self.dates.extend(other.dates)
        self.commands.update(other.commands)

    def accuracy(self, dataset: str, setting: str) -> Measurement | None:
        """lm-eval's own result if there is one, else the sweep's final layer (the model's real output)."""
        return self.lm_eval.get((dataset, setting)) or self.sweep.get((dataset, setting))

    def datasets_run(self) -> list[str]:
        return sorted({dataset for dataset, _ in (*self.lm_eval, *self.sweep) if dataset != GROUP_DATASET})


def identity_text(identities: set[tuple[str, str]]) -> str:
    """The most exact identity recorded: a GGUF file hash, else the hub commit sha, else the requested
    revision, else a local folder's digest (a converted GGUF folder's digest says less than its file's)."""
    for kind in IDENTITY_PRECEDENCE:
        texts = sorted(found_text for found, found_text in identities if found == kind)
        if texts:
            return "; ".join(texts)
    return ""
