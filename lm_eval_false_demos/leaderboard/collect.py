"""Reading results files into leaderboard rows.

Reads, recursively, every ``*.json`` under the given folders:

* lm-eval's ``results_*.json``: tasks ``falsedemo_<dataset>_<setting>`` (metric ``calibrated_acc,none``), the
  SST-2 formats (``falsedemo_sst2_formats_<setting>``, ``falsedemo_sst2_f<i>_<setting>``) and the groups
  ``falsedemo_main_<setting>``;
* our ``sweep.json`` (``"kind": "falsedemo.sweep"``): per-layer curves, and beside it ``query_scores.npz``
  (per-query scores, for intervals over datasets). A row may be made of several sweeps (one per chunk of
  datasets); they merge task by task;
* our ``heads.json`` (``"kind": "falsedemo.heads"``): false-induction-head gap recovered vs random heads.

Rows are keyed by :func:`rowkey.row_key`. Anything unreadable, partial or foreign is skipped with a warning
naming the file and why, and a measurement given twice is reported (the newer file wins).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from lm_eval_false_demos.results import query_scores
from lm_eval_false_demos.core.metrics import pooled_gap_recovered_by_condition
from lm_eval_false_demos.core.task_names import parse_task_name
from lm_eval_false_demos.leaderboard.rowkey import RowKeyError, row_key
from lm_eval_false_demos.leaderboard.values import (
    accuracy, curve, data_source_text, date_from_name, date_of, first, integer, mapping_at, number,
    text, walk_objects,
)

logger = logging.getLogger(__name__)

METRIC = "calibrated_acc"
SWEEP_KIND = "falsedemo.sweep"
HEADS_KIND = "falsedemo.heads"
SUPPORTED_FORMAT_VERSION = 1
GROUP_DATASET = "main"  # falsedemo_main_<setting>: lm-eval's group row over the 14 datasets


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
    chance: dict[str, float] = field(default_factory=dict)  # 1/K per dataset key
    heads: dict[str, Any] | None = None
    heads_source: Path | None = None
    heads_date: float | None = None

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.checkpoint, self.args

    @property
    def config_text(self) -> str:
        return ",".join(f"{name}={value}" for name, value in self.args) or "(default)"

    def accuracy(self, dataset: str, setting: str) -> Measurement | None:
        """lm-eval's own result if there is one, else the sweep's final layer (the model's real output)."""
        return self.lm_eval.get((dataset, setting)) or self.sweep.get((dataset, setting))

    def datasets_run(self) -> list[str]:
        return sorted({dataset for dataset, _ in (*self.lm_eval, *self.sweep) if dataset != GROUP_DATASET})


class Leaderboard:
    """Collects rows from results files; ``warnings`` lists every skipped file or duplicate."""

    def __init__(self) -> None:
        self.rows: dict[tuple, Row] = {}
        self.warnings: list[str] = []
        self.files_read: list[Path] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        logger.warning(message)

    def add_paths(self, paths: Iterable[str | Path]) -> None:
        for path in paths:
            path = Path(path)
            if path.is_file():
                self.add_file(path)
            elif path.is_dir():
                for file in sorted(path.rglob("*.json")):
                    if file.is_file():
                        self.add_file(file)
            else:
                self.warn(f"{path}: skipped: no such file or folder")

    def add_file(self, path: Path) -> None:
        try:
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            self.warn(f"{path}: skipped: unreadable ({error.__class__.__name__}: {error})")
            return
        try:
            payload = json.loads(content)
        except (json.JSONDecodeError, RecursionError) as error:
            reason = "empty file" if not content.strip() else f"not valid JSON, partial or corrupt ({error})"
            self.warn(f"{path}: skipped: {reason}")
            return
        if not isinstance(payload, dict):
            self.warn(f"{path}: skipped: foreign JSON (top level is {type(payload).__name__}, not an object)")
            return
        kind = payload.get("kind")
        try:
            if kind == SWEEP_KIND:
                self._add_sweep(path, payload)
            elif kind == HEADS_KIND:
                self._add_heads(path, payload)
            elif isinstance(payload.get("results"), dict) and isinstance(payload.get("config"), dict):
                self._add_lm_eval(path, payload)
            else:
                self.warn(
                    f"{path}: skipped: foreign JSON (neither lm-eval results nor a {SWEEP_KIND} / "
                    f"{HEADS_KIND} file)"
                )
        except _SkipFile as skip:
            self.warn(f"{path}: skipped: {skip}")

    # -- lm-eval results_*.json

    def _add_lm_eval(self, path: Path, payload: Mapping[str, Any]) -> None:
        config = payload["config"]
        entries = {**(payload.get("groups") if isinstance(payload.get("groups"), dict) else {}), **payload["results"]}
        tasks = {name: value for name, value in entries.items() if isinstance(name, str) and name.startswith("falsedemo_")}
        if not tasks:
            raise _SkipFile("lm-eval results without any falsedemo_* task")
        info = mapping_at(config, "falsedemo")
        row = self._row(config.get("model"), config.get("model_args"), payload, integer(info.get("num_layers")), path)
        date = number(payload.get("date")) or date_from_name(path)
        configs = payload.get("configs") if isinstance(payload.get("configs"), dict) else {}
        n_samples = payload.get("n-samples") if isinstance(payload.get("n-samples"), dict) else {}
        n_shot = payload.get("n-shot") if isinstance(payload.get("n-shot"), dict) else {}
        used = 0
        for task, metrics in sorted(tasks.items()):
            parsed = parse_task_name(task)
            if parsed is None or not isinstance(metrics, dict):
                self.warn(f"{path}: ignored task {task!r}: not falsedemo_<dataset>_<setting> with metrics")
                continue
            value = accuracy(metrics.get(f"{METRIC},none"))
            if value is None:
                if parsed[0] != GROUP_DATASET:  # a group without aggregate_metric_list has no value: fine
                    self.warn(f"{path}: ignored task {task}: no finite {METRIC},none value in [0, 1]")
                continue
            metadata = mapping_at(configs, task, "metadata")
            sst2_format = metadata.get("sst2_format")
            if parsed[0] == "sst2" and integer(sst2_format):  # --metadata sst2_format on the format-0 task
                parsed = (f"sst2_f{integer(sst2_format)}", parsed[1])
            n = integer(mapping_at(n_samples, task).get("effective"))
            k = integer(first(metadata, ("k", "num_demos"))) or integer(n_shot.get(task))
            if k is not None and parsed[0] != GROUP_DATASET:
                row.k.add(k)
            source = data_source_text(first(metadata, ("data_source",)))
            if source:
                row.data_sources.add(source)
            self._put(row.lm_eval, parsed, Measurement(value, n, path, date), row, "lm-eval results")
            used += 1
        if not used:
            raise _SkipFile("no usable falsedemo_* task results")
        row.commands[path] = _lm_eval_command(config, sorted(tasks), n_shot)
        fewshot_seed = integer(config.get("fewshot_seed"))
        if fewshot_seed is not None:
            row.seeds.add(fewshot_seed)
        if text(info.get("label_scoring")):
            row.label_scoring.add(f"{text(info.get('label_scoring'))} label token")
        plugin = text(first(config, ("plugin_version",)))
        for task_config in configs.values():
            plugin = plugin or text(first(mapping_at(task_config, "metadata"), ("plugin_version",)))
        self._add_version(row, "plugin", plugin)
        self._add_version(row, "lm_eval", payload.get("lm_eval_version"))
        self._add_version(row, "transformers", payload.get("transformers_version"))
        self._register_file(row, config, payload, path, date)

    # -- falsedemo.sweep

    def _add_sweep(self, path: Path, payload: Mapping[str, Any]) -> None:
        _check_format(payload)
        config = _mapping(payload.get("config"), "config")
        tasks = _mapping(payload.get("tasks"), "tasks")
        row = self._row(config.get("model"), config.get("model_args"), payload, integer(config.get("num_layers")), path)
        date = date_of(config) or number(payload.get("date")) or date_from_name(path)
        scores = self._query_scores(path)
        found: dict[tuple[str, str], Measurement] = {}
        for task, entry in sorted(tasks.items()):
            if not isinstance(entry, dict):
                self.warn(f"{path}: ignored task {task!r}: not an object")
                continue
            parsed = parse_task_name(task)
            dataset, setting = entry.get("dataset"), entry.get("setting")
            if isinstance(dataset, str) and isinstance(setting, str):
                parsed = (dataset, setting)
            if parsed is None:
                self.warn(f"{path}: ignored task {task!r}: no dataset and setting")
                continue
            layer_curve = curve(mapping_at(entry, "per_layer").get(METRIC))
            if layer_curve is None:
                self.warn(f"{path}: ignored task {task}: per_layer.{METRIC} is not a list of accuracies in [0, 1]")
                continue
            if accuracy(entry.get("chance")) is not None:
                row.chance[parsed[0]] = entry["chance"]
            task_scores = scores.get(task)
            if task_scores is not None and task_scores["scores"].shape[1] != len(layer_curve):
                task_scores = None
            found[parsed] = Measurement(layer_curve[-1], integer(entry.get("n")), path, date, layer_curve, task_scores)
        if not found:
            raise _SkipFile(f"sweep without any usable per_layer.{METRIC} curve")
        lengths = {len(measurement.curve) for measurement in found.values()}
        known = {len(measurement.curve) for measurement in row.sweep.values()}
        if len(lengths | known) != 1:
            raise _SkipFile(f"sweep curves have {sorted(lengths | known)} layers across this row's sweeps (mixed models?)")
        for key, measurement in found.items():
            self._put(row.sweep, key, measurement, row, "sweep")
        row.layers.add(lengths.pop() - 1)
        seed = integer(mapping_at(config, "seed").get("fewshot"))
        if seed is not None:
            row.seeds.add(seed)
        row.label_scoring.add("first label token")  # the sweep reads the first token of " " + label
        if text(config.get("command")):
            row.commands[path] = text(config.get("command"))
        self._register_file(row, config, payload, path, date)

    def _query_scores(self, path: Path) -> dict:
        scores_path = path.with_name(query_scores.FILE_NAME)
        if not scores_path.is_file():
            return {}
        try:
            return query_scores.read(scores_path)
        except (OSError, ValueError, KeyError) as error:
            self.warn(f"{scores_path}: ignored: unreadable per-query scores ({error}); no intervals from it")
            return {}

    # -- falsedemo.heads

    def _add_heads(self, path: Path, payload: Mapping[str, Any]) -> None:
        _check_format(payload)
        config = _mapping(payload.get("config"), "config")
        evaluation = payload.get("evaluation") if isinstance(payload.get("evaluation"), dict) else None
        top_k = text(payload.get("top_k"))
        if top_k is None and evaluation is None:
            raise _SkipFile("heads file with neither top_k nor evaluation")
        row = self._row(config.get("model"), config.get("model_args"), payload, integer(config.get("num_layers")), path)
        date = date_of(config) or number(payload.get("date")) or date_from_name(path)
        summary = {"top_k": top_k, **heads_evaluation(evaluation or {})}
        if row.heads is not None:
            older, newer = sorted([(row.heads_date or 0, str(row.heads_source)), (date or 0, str(path))])
            self.warn(
                f"duplicate heads result for {row.checkpoint} [{row.config_text}]: {older[1]} and {newer[1]}; "
                f"keeping the newer {newer[1]}"
            )
            if newer[1] != str(path):
                self._register_file(row, config, payload, path, date)
                return
        row.heads, row.heads_source, row.heads_date = summary, path, date
        self._register_file(row, config, payload, path, date)

    # -- shared helpers

    def _register_file(self, row: Row, config: Mapping, payload: Mapping, path: Path, date: float | None) -> None:
        self._add_identity(row, config)
        # k describes the accuracy columns; a heads file's k is that of its own ablation experiment
        ks = [] if payload.get("kind") == HEADS_KIND else config.get("k")
        for k in ks if isinstance(ks, list) else [ks]:
            if integer(k):
                row.k.add(integer(k))
        source = data_source_text(config.get("data_source"))
        if source:
            row.data_sources.add(source)
        for name, value in (config.get("versions") if isinstance(config.get("versions"), dict) else {}).items():
            lowered = str(name).lower().replace("-", "_")
            if "transformers" in lowered:
                self._add_version(row, "transformers", value)
            elif "false_demos" in lowered or "falsedemo" in lowered or "plugin" in lowered:
                self._add_version(row, "plugin", value)
            elif "lm_eval" in lowered:
                self._add_version(row, "lm_eval", value)
        if date:
            row.dates.append(date)
        row.files.add(path)
        self.files_read.append(path)

    def _row(self, model: Any, model_args: Any, payload: Mapping, num_layers: int | None, path: Path) -> Row:
        try:
            checkpoint, args, model_type = row_key(model, model_args, payload, num_layers)
        except RowKeyError as error:
            raise _SkipFile(str(error)) from None
        row = self.rows.get((checkpoint, args))
        if row is None:
            row = self.rows[(checkpoint, args)] = Row(checkpoint=checkpoint, args=args)
        if model_type:
            row.model_types.add(model_type)
        revision = dict(args).get("revision")
        if revision and revision != "main":
            row.identities.add(("revision", f"revision:{revision}"))
        return row

    def _put(self, table: dict, key: tuple[str, str], measurement: Measurement, row: Row, what: str) -> None:
        previous = table.get(key)
        if previous is not None:
            older, newer = sorted([previous, measurement], key=lambda m: (m.date or 0, str(m.source)))
            self.warn(
                f"duplicate {what} for {row.checkpoint} [{row.config_text}] {key[0]}/{key[1]}: "
                f"{older.source} ({older.value:.4f}) and {newer.source} ({newer.value:.4f}); keeping the newer "
                f"{newer.source}"
            )
            measurement = newer
        table[key] = measurement

    @staticmethod
    def _add_identity(row: Row, config: Mapping[str, Any]) -> None:
        """Checkpoint identity, parameters and layers, wherever the writer nested them.

        lm-eval puts ``model_sha`` / ``model_num_parameters`` at the top of ``config`` and our model
        wrappers add ``falsedemo.{num_layers, model_identity.gguf_sha256}``; a sweep keeps
        ``num_layers`` and ``model_identity.{kind, sha256, embedded.gguf_sha256, lm_eval_model_info}``.
        """
        for node in walk_objects(config):
            gguf = text(node.get("gguf_sha256")) or (text(node.get("sha256")) if node.get("kind") == "gguf" else None)
            if gguf:
                file = text(node.get("gguf_file")) or (Path(node["path"]).name if text(node.get("path")) else None)
                row.identities.add(("gguf", f"GGUF {file} sha256:{gguf}" if file else f"GGUF sha256:{gguf}"))
            if node.get("kind") == "local_folder" and text(node.get("sha256")):
                row.identities.add(("folder", f"local folder sha256:{text(node.get('sha256'))}"))
            if text(node.get("model_sha")):
                row.identities.add(("sha", f"sha:{text(node.get('model_sha'))}"))
            revision = text(node.get("model_revision")) or (text(node.get("revision")) if node.get("kind") == "hub" else None)
            if revision and revision != "main":
                row.identities.add(("revision", f"revision:{revision}"))
            parameters = integer(node.get("model_num_parameters"))
            if parameters and parameters > 0:
                row.parameters.add(parameters)
            layers = integer(node.get("num_layers"))
            if layers and layers > 0:
                row.layers.add(layers)

    @staticmethod
    def _add_version(row: Row, which: str, value: Any) -> None:
        found = text(value)
        if found:
            row.versions[which].add(found)

    def ordered_rows(self) -> list[Row]:
        """Rows that at least one file filled, by model then config."""
        return [self.rows[key] for key in sorted(self.rows) if self.rows[key].files]


def _lm_eval_command(config: Mapping[str, Any], tasks: list[str], n_shot: Mapping[str, Any]) -> str:
    """The lm_eval command line of a results file, rebuilt from its config (lm-eval records no command)."""
    import shlex

    model_args = config.get("model_args")
    if isinstance(model_args, dict):
        model_args = ",".join(f"{name}={value}" for name, value in model_args.items())
    parts = ["lm_eval", "--model", str(config.get("model") or "hf"), "--model_args", str(model_args or ""),
             "--tasks", ",".join(tasks)]
    shots = {integer(value) for value in n_shot.values()} - {None, 0}
    if len(shots) == 1:
        parts += ["--num_fewshot", str(shots.pop())]
    if integer(config.get("limit")):
        parts += ["--limit", str(integer(config.get("limit")))]
    seeds = [config.get(name) for name in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")]
    if all(integer(seed) is not None for seed in seeds):
        parts += ["--seed", ",".join(str(integer(seed)) for seed in seeds)]
    return " ".join(shlex.quote(part) for part in parts)


class _SkipFile(Exception):
    """A results file that cannot be used as a whole; the message says why."""


def _check_format(payload: Mapping[str, Any]) -> None:
    version = payload.get("format_version")
    if version != SUPPORTED_FORMAT_VERSION:
        raise _SkipFile(f"{payload.get('kind')} format_version {version!r} (this reader knows {SUPPORTED_FORMAT_VERSION})")


def _mapping(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise _SkipFile(f"missing or malformed {name!r} (partial file?)")
    return value


IDENTITY_PRECEDENCE = ("gguf", "sha", "revision", "folder")


def identity_text(identities: set[tuple[str, str]]) -> str:
    """The most exact identity recorded: a GGUF file hash, else the hub commit sha, else the requested
    revision, else a local folder's digest (a converted GGUF folder's digest says less than its file's)."""
    for kind in IDENTITY_PRECEDENCE:
        texts = sorted(found_text for found, found_text in identities if found == kind)
        if texts:
            return "; ".join(texts)
    return ""


def heads_evaluation(evaluation: Mapping[str, Any]) -> dict[str, float | None]:
    """Gap recovered by the top heads and by random heads: pooled over datasets (computed by metrics from the
    per-dataset entries) and the paper's mean of ratios, in the layouts heads.py may write."""
    def find(*paths):
        for path in paths:
            value: Any = evaluation
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            found = number(value)
            if found is not None:
                return found
        return None

    pooled, random_pooled, random_pooled_sd = _pooled_heads(evaluation.get("datasets"))
    return {
        "pooled_gap_recovered": pooled,
        "random_pooled_gap_recovered": random_pooled,
        "random_pooled_gap_recovered_sd": random_pooled_sd,
        "gap_recovered": find(("mean_gap_recovered",), ("gap_recovered", "mean"), ("top_k", "mean"), ("gap_recovered",)),
        "random_gap_recovered": find(("random_control", "mean"), ("random", "mean"), ("random_gap_recovered",)),
        "random_gap_recovered_sd": find(("random_control", "sd"), ("random", "sd"), ("random_control", "std")),
    }


def _pooled_heads(per_dataset) -> tuple[float | None, float | None, float | None]:
    if not isinstance(per_dataset, dict) or not per_dataset:
        return None, None, None
    try:
        top, draws = pooled_gap_recovered_by_condition(per_dataset)
    except (KeyError, TypeError, IndexError):
        return None, None, None
    draws = [value for value in draws if math.isfinite(value)]
    return (
        number(top),
        number(statistics.fmean(draws)) if draws else None,
        number(statistics.stdev(draws)) if len(draws) > 1 else None,
    )
