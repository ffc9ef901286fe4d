"""Reading results files into leaderboard rows.

Reads, recursively, every ``*.json`` under the given folders:

* lm-eval's ``results_*.json`` (:mod:`leaderboard.lm_eval_files`);
* our ``sweep.json`` (``"kind": "falsedemo.sweep"``, read through :class:`results.sweep_schema.SweepFile`):
  per-layer curves, and beside it ``query_scores.npz`` (per-query scores, for intervals over datasets). A row
  may be made of several sweeps (one per chunk of datasets); they merge task by task;
* our ``heads.json`` (``"kind": "falsedemo.heads"``, :class:`results.heads_schema.HeadsFile`):
  false-induction-head gap recovered vs random heads.

Rows are keyed by :func:`rowkey.row_key` plus the file's :class:`rowkey.Protocol` (k, N, data source, label
scoring): runs under different protocols are never merged. A heads file describes its own ablations, so it joins
every row of its model's readout. Anything unreadable, partial or foreign is skipped with a warning naming the file
and why, and a measurement given twice is reported (the newer file wins).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Mapping

from lm_eval_false_demos.leaderboard.lm_eval_files import add_lm_eval
from lm_eval_false_demos.leaderboard.rowkey import (
    HEADS_PROTOCOL,
    NO_TASKS,
    Protocol,
    RowKeyError,
    protocol,
    row_key,
    schema_readout,
)
from lm_eval_false_demos.leaderboard.rows import METRIC, Measurement, Row, SkipFile
from lm_eval_false_demos.leaderboard.values import data_source_text, date_from_name
from lm_eval_false_demos.results import query_scores
from lm_eval_false_demos.results.checkpoints import fresh_command
from lm_eval_false_demos.results.heads_schema import KIND as HEADS_KIND
from lm_eval_false_demos.results.heads_schema import HeadsEvaluation, HeadsFile
from lm_eval_false_demos.results.schema import ModelIdentity, RunConfig, SchemaError, number, text
from lm_eval_false_demos.results.sweep_schema import KIND as SWEEP_KIND
from lm_eval_false_demos.results.sweep_schema import SweepFile

logger = logging.getLogger(__name__)


class Leaderboard:
    """Collects rows from results files; ``warnings`` lists every skipped file or duplicate."""

    def __init__(self) -> None:
        self.rows: dict[tuple, Row] = {}
        self.warnings: list[str] = []
        self._ambiguous: set[tuple] = set()
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
                self.add_sweep(path, SweepFile.from_json(payload, path))
            elif kind == HEADS_KIND:
                self.add_heads(path, HeadsFile.from_json(payload, path))
            elif isinstance(payload.get("results"), dict) and isinstance(payload.get("config"), dict):
                add_lm_eval(self, path, payload)
            else:
                self.warn(
                    f"{path}: skipped: foreign JSON (neither lm-eval results nor a {SWEEP_KIND} / "
                    f"{HEADS_KIND} file)"
                )
        except SchemaError as error:
            self.warn(f"{path}: skipped: {error.reason}")
        except SkipFile as skip:
            self.warn(f"{path}: skipped: {skip}")

    # -- falsedemo.sweep

    def add_sweep(self, path: Path, sweep: SweepFile) -> None:
        config = sweep.config
        shown = {task.k for task in sweep.tasks.values() if task.setting != "zeroshot" and task.k is not None}
        row = self.run_row(config, protocol(shown or set(config.k), config.limit,
                                            data_source_text(config.data_source), "first",
                                            [task.dataset for task in sweep.tasks.values()]))
        date = config.date or date_from_name(path)
        scores = self._query_scores(path)
        for problem in sweep.ignored:
            self.warn(f"{path}: {problem}")
        found: dict[tuple[str, str], Measurement] = {}
        for name, task in sweep.tasks.items():
            task_scores = scores.get(name)
            if task_scores is not None and task_scores["scores"].shape[1] != len(task.calibrated_acc):
                task_scores = None
            found[(task.dataset, task.setting)] = Measurement(
                task.calibrated_acc[-1], task.n, path, date, list(task.calibrated_acc), task_scores)
        if not found:
            raise SkipFile(f"sweep without any usable per_layer.{METRIC} curve")
        lengths = {len(measurement.curve) for measurement in found.values()}
        known = {len(measurement.curve) for measurement in row.sweep.values()}
        if len(lengths | known) != 1:
            raise SkipFile(
                f"sweep curves have {sorted(lengths | known)} layers across this row's sweeps (mixed models?)")
        for key, measurement in found.items():
            self.put(row.sweep, key, measurement, row, "sweep")
        row.layers.add(lengths.pop() - 1)
        if config.fewshot_seed is not None:
            row.seeds.add(config.fewshot_seed)
        row.label_scoring.add("first label token")  # the sweep reads the first token of " " + label
        if config.command:
            row.commands[path] = fresh_command(config.command)  # a resumed run reproduces from the start
        row.k.update(row.protocol.k)
        self.register_run(row, config, path, date)

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

    def add_heads(self, path: Path, heads: HeadsFile) -> None:
        if heads.top_k is None and heads.evaluation is None:
            raise SkipFile("heads file with neither top_k nor evaluation")
        row = self.run_row(heads.config, HEADS_PROTOCOL)
        date = date_from_name(path)  # heads.json records no date: its folder is named by it
        # k is not added: it describes the accuracy columns, and a heads file's k is that of its own ablations
        self.register_run(row, heads.config, path, date)
        if row.heads is not None:
            older, newer = sorted([(row.heads_date or 0, str(row.heads_source)), (date or 0, str(path))])
            self.warn(
                f"duplicate heads result for {row.checkpoint} [{row.config_text}]: {older[1]} and {newer[1]}; "
                f"keeping the newer {newer[1]}"
            )
            if newer[1] != str(path):
                return
        row.heads = {"top_k": heads.top_k, **heads_numbers(heads.evaluation)}
        row.heads_source, row.heads_date = path, date

    # -- shared helpers

    def row(self, model: Any, model_args: Any, readout: Mapping[str, Any], num_layers: int | None,
            run_protocol: Protocol | None) -> Row:
        try:
            checkpoint, args, model_type = row_key(model, model_args, readout, num_layers)
        except RowKeyError as error:
            raise SkipFile(str(error)) from None
        row = self.rows.get((checkpoint, args, run_protocol))
        if row is None:
            row = self.rows[(checkpoint, args, run_protocol)] = Row(checkpoint=checkpoint, args=args,
                                                                    protocol=run_protocol)
        if model_type:
            row.model_types.add(model_type)
        revision = dict(args).get("revision")
        if revision and revision != "main":
            row.identities.add(("revision", f"revision:{revision}"))
        return row

    def run_row(self, config: RunConfig, run_protocol: Protocol | None) -> Row:
        return self.row(config.model, dict(config.model_args), schema_readout(config.readout), config.num_layers,
                        run_protocol)

    def register_run(self, row: Row, config: RunConfig, path: Path, date: float | None) -> None:
        """What a sweep's or heads run's configuration says about the checkpoint, data and versions."""
        if config.identity is not None:
            add_identity(row, config.identity)
        if config.num_layers and config.num_layers > 0:
            row.layers.add(config.num_layers)
        source = data_source_text(config.data_source)
        if source:
            row.data_sources.add(source)
        self.add_version(row, "plugin", config.versions.plugin)
        self.add_version(row, "lm_eval", config.versions.lm_eval)
        self.add_version(row, "transformers", config.versions.transformers)
        self.register(row, path, date)

    def register(self, row: Row, path: Path, date: float | None) -> None:
        if date:
            row.dates.append(date)
        row.files.add(path)
        self.files_read.append(path)

    def put(self, table: dict, key: tuple[str, str], measurement: Measurement, row: Row, what: str) -> None:
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
    def add_version(row: Row, which: str, value: Any) -> None:
        found = text(value)
        if found:
            row.versions[which].add(found)

    def ordered_rows(self) -> list[Row]:
        """Rows that at least one file filled, by model, config and protocol; a heads file's numbers joined to every
        row of its model's readout (a heads-only row where there is none)."""
        self._merge_sst2_limits()
        self._attach_heads()
        measured = {(row.checkpoint, row.args) for row in self.rows.values() if row.protocol is not None}
        keep = [row for row in self.rows.values()
                if row.files and (row.protocol is not None or (row.checkpoint, row.args) not in measured)]
        return sorted(keep, key=lambda row: (row.checkpoint, row.args, row.protocol or Protocol((), "", "", "", "")))

    def _merge_sst2_limits(self) -> None:
        """A file without SST-2 (or with SST-2 alone) says nothing about the other part's limit: it joins the one
        row of the same model, readout, k, data and scoring whose limits it does not contradict (a protocol may run
        SST-2's formats on fewer queries, as the published one does). With several candidates it stays a row of
        its own, said in one warning; runs whose limits differ stay apart."""
        def merge(source_key, target: Row, protocol_: Protocol) -> None:
            source = self.rows.pop(source_key)
            self.rows.pop(target.key)
            target.protocol = protocol_
            self.rows[target.key] = target
            for table in ("sweep", "lm_eval"):
                for measured, measurement in getattr(source, table).items():
                    self.put(getattr(target, table), measured, measurement, target, table.replace("_", "-"))
            target.absorb(source)

        def partial(row: Row) -> bool:
            return row.protocol is not None and NO_TASKS in (row.protocol.limit, row.protocol.sst2_limit)

        def candidates(row: Row) -> list[Row]:
            return [other for other in self.rows.values()
                    if other is not row and other.protocol is not None
                    and (other.checkpoint, other.args) == (row.checkpoint, row.args)
                    and other.protocol.completes(row.protocol)]

        changed = True
        while changed:
            changed = False
            for key, row in list(self.rows.items()):
                if not partial(row):
                    continue
                targets = candidates(row)
                # merged only when each is the other's one candidate: a part that fits two rows joins neither
                if len(targets) == 1 and (not partial(targets[0]) or candidates(targets[0]) == [row]):
                    merge(key, targets[0], targets[0].protocol.joined(row.protocol))
                    changed = True
                    break
                if len(targets) > 1 and key not in self._ambiguous:
                    self._ambiguous.add(key)
                    self.warn(f"results of {row.checkpoint} [{row.config_text}] ({row.protocol.text}) "
                              f"could belong to {len(targets)} rows ({'; '.join(r.protocol.text for r in targets)}): "
                              "kept as a row of their own")

    def _attach_heads(self) -> None:
        for heads_row in [row for row in self.rows.values() if row.protocol is None and row.heads is not None]:
            for row in self.rows.values():
                if row.protocol is not None and (row.checkpoint, row.args) == (heads_row.checkpoint, heads_row.args):
                    row.heads, row.heads_source, row.heads_date = heads_row.heads, heads_row.heads_source, \
                        heads_row.heads_date
                    row.files |= heads_row.files
                    row.identities |= heads_row.identities
                    row.parameters |= heads_row.parameters
                    row.layers |= heads_row.layers
                    row.model_types |= heads_row.model_types
                    for which, found in heads_row.versions.items():
                        row.versions[which] |= found


def add_identity(row: Row, identity: ModelIdentity) -> None:
    """The checkpoint's identity, from a sweep's or heads run's ``config.model_identity``."""
    if identity.gguf_sha256:  # a packaged model converted from GGUF
        file = identity.gguf_file
        row.identities.add(("gguf", f"GGUF {file} sha256:{identity.gguf_sha256}" if file
                            else f"GGUF sha256:{identity.gguf_sha256}"))
    if identity.kind == "gguf" and identity.sha256:
        file = Path(identity.path).name if identity.path else None
        row.identities.add(("gguf", f"GGUF {file} sha256:{identity.sha256}" if file
                            else f"GGUF sha256:{identity.sha256}"))
    if identity.kind == "local_folder" and identity.sha256:
        row.identities.add(("folder", f"local folder sha256:{identity.sha256}"))
    if identity.model_sha:
        row.identities.add(("sha", f"sha:{identity.model_sha}"))
    for revision in (identity.model_revision, identity.revision if identity.kind == "hub" else None):
        if revision and revision != "main":
            row.identities.add(("revision", f"revision:{revision}"))
    if identity.model_num_parameters and identity.model_num_parameters > 0:
        row.parameters.add(identity.model_num_parameters)


def heads_numbers(evaluation: HeadsEvaluation | None) -> dict[str, float | None]:
    """Gap recovered by the top heads and by random heads: pooled over datasets (computed by metrics from the
    per-dataset accuracies) and the paper's mean of per-dataset ratios."""
    pooled = evaluation.pooled_gap_recovered() if evaluation is not None else None
    top, draws = pooled if pooled is not None else (None, [])
    draws = [value for value in draws if math.isfinite(value)]
    return {
        "pooled_gap_recovered": number(top),
        "random_pooled_gap_recovered": number(statistics.fmean(draws)) if draws else None,
        "random_pooled_gap_recovered_sd": number(statistics.stdev(draws)) if len(draws) > 1 else None,
        "gap_recovered": evaluation.gap_recovered_mean if evaluation is not None else None,
        "random_gap_recovered": evaluation.random_gap_recovered_mean if evaluation is not None else None,
        "random_gap_recovered_sd": evaluation.random_gap_recovered_sd if evaluation is not None else None,
    }
