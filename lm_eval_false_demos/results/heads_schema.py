"""``heads.json`` read back typed: the configuration, the ranked heads, the top-k heads and the ``--evaluate``
numbers (gap recovered by zeroing the top heads against random heads), as ``results.heads_files`` writes them.

Versions read: ``format_version`` 1, in every layout written so far (older files record ``model_args`` as
lm-eval's ``a=1,b=2`` text, the packaged model's identity at the top of ``model_identity`` and the data folder
as ``data_source``; a scoring-only run has no ``evaluation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lm_eval_false_demos.core.metrics import pooled_gap_recovered
from lm_eval_false_demos.results import schema
from lm_eval_false_demos.results.schema import RunConfig

KIND = "falsedemo.heads"
FORMAT_VERSIONS = (1,)  # every version results.heads_files has written


@dataclass(frozen=True)
class HeadsConfig(RunConfig):
    task: str | None  # the task the heads were scored on
    k: int | None  # demonstrations per prompt of this experiment (not of any accuracy reported elsewhere)

    @classmethod
    def from_json(cls, config: Mapping[str, Any], path: str | Path) -> "HeadsConfig":
        return cls(**RunConfig.fields_from_json(config, path), task=schema.string(config.get("task")),
                   k=schema.integer(config.get("k")))


@dataclass(frozen=True)
class HeadScore:
    """One entry of ``heads``, best first."""

    layer: int | None  # block 0..L-1
    head: int | None
    prefix_matching: float | None
    label_promoting: float | None


@dataclass(frozen=True)
class DatasetAblation:
    """``evaluation.datasets.<d>``: mean accuracies with correct and corrupted demonstrations, and corrupted with
    the top heads zeroed (``top_k.acc_corrupted_ablated``) and with each random draw's heads zeroed."""

    acc_correct: float | None
    acc_corrupted: float | None
    top_k_ablated: float | None
    random_ablated: tuple[float | None, ...]  # random.draws[i].acc_corrupted_ablated

    @classmethod
    def from_json(cls, entry: Any) -> "DatasetAblation":
        entry = entry if isinstance(entry, dict) else {}
        top_k = entry.get("top_k") if isinstance(entry.get("top_k"), dict) else {}
        random = entry.get("random") if isinstance(entry.get("random"), dict) else {}
        draws = random.get("draws") if isinstance(random.get("draws"), list) else []
        return cls(schema.number(entry.get("acc_correct")), schema.number(entry.get("acc_corrupted")),
                   schema.number(top_k.get("acc_corrupted_ablated")),
                   tuple(schema.number(draw.get("acc_corrupted_ablated")) if isinstance(draw, dict) else None
                         for draw in draws))


@dataclass(frozen=True)
class HeadsEvaluation:
    """``evaluation``: written by ``falsedemo heads --evaluate``."""

    corrupted_setting: str | None
    top_k: str | None  # the heads zeroed, "layer:head;..."
    datasets: Mapping[str, DatasetAblation]
    gap_recovered_mean: float | None  # gap_recovered.mean: the paper's mean over datasets of per-dataset shares
    random_gap_recovered_mean: float | None  # random_control.{mean, sd}: the same for the random draws
    random_gap_recovered_sd: float | None

    @classmethod
    def from_json(cls, evaluation: Mapping[str, Any], path: str | Path) -> "HeadsEvaluation":
        gap = evaluation.get("gap_recovered") if isinstance(evaluation.get("gap_recovered"), dict) else {}
        control = evaluation.get("random_control") if isinstance(evaluation.get("random_control"), dict) else {}
        return cls(
            corrupted_setting=schema.string(evaluation.get("corrupted_setting")),
            top_k=schema.text(evaluation.get("top_k")),
            datasets={name: DatasetAblation.from_json(entry)
                      for name, entry in schema.section(evaluation, "datasets", path).items()},
            gap_recovered_mean=schema.number(gap.get("mean")),
            random_gap_recovered_mean=schema.number(control.get("mean")),
            random_gap_recovered_sd=schema.number(control.get("sd")),
        )

    def pooled_gap_recovered(self) -> tuple[float, list[float]] | None:
        """(top heads, each random draw) gap recovered pooled over the datasets (core.metrics); None when a
        dataset lacks an accuracy or a draw the first dataset has."""
        entries = list(self.datasets.values())
        if not entries:
            return None
        draws = len(entries[0].random_ablated)
        values = [(e.acc_correct, e.acc_corrupted, e.top_k_ablated, *e.random_ablated[:draws]) for e in entries]
        if any(None in value or len(value) != 3 + draws for value in values):
            return None
        correct, corrupted = [value[0] for value in values], [value[1] for value in values]
        return (pooled_gap_recovered(correct, corrupted, [value[2] for value in values]),
                [pooled_gap_recovered(correct, corrupted, [value[3 + i] for value in values]) for i in range(draws)])


@dataclass(frozen=True)
class HeadsFile:
    path: str
    format_version: int
    config: HeadsConfig
    heads: tuple[HeadScore, ...]
    top_k: str | None  # "layer:head;..." of the top heads
    evaluation: HeadsEvaluation | None

    @classmethod
    def load(cls, path: str | Path) -> "HeadsFile":
        return cls.from_json(schema.read_object(path, KIND), path)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any], path: str | Path = "<heads.json>") -> "HeadsFile":
        version = schema.check_header(payload, KIND, FORMAT_VERSIONS, path)
        config = HeadsConfig.from_json(schema.section(payload, "config", path, required=True), path)
        heads = payload.get("heads") if isinstance(payload.get("heads"), list) else []
        evaluation = payload.get("evaluation") if isinstance(payload.get("evaluation"), dict) else None
        return cls(
            path=str(path), format_version=version, config=config,
            heads=tuple(HeadScore(schema.integer(h.get("layer")), schema.integer(h.get("head")), schema.number(h.get("prefix_matching")),
                                  schema.number(h.get("label_promoting"))) for h in heads if isinstance(h, dict)),
            top_k=schema.text(payload.get("top_k")),
            evaluation=HeadsEvaluation.from_json(evaluation, path) if evaluation is not None else None,
        )
