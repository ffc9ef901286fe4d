"""lm-eval's ``results_*.json`` into leaderboard rows: tasks ``falsedemo_<dataset>_<setting>`` (metric
``calibrated_acc,none``), the SST-2 formats (``falsedemo_sst2_formats_<setting>``, ``falsedemo_sst2_f<i>_<setting>``)
and the groups ``falsedemo_main_<setting>``.

lm-eval's format is not ours, and our model wrappers add ``config.falsedemo`` to it: it is read defensively,
with :mod:`leaderboard.values` and the schemas' value readers.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from lm_eval_false_demos.core.task_names import parse_task_name
from lm_eval_false_demos.leaderboard.rowkey import (
    LABEL_SCORING_TEXT,
    Protocol,
    label_scoring_of,
    lm_eval_readout,
    protocol,
)
from lm_eval_false_demos.leaderboard.rows import GROUP_DATASET, METRIC, Measurement, Row, SkipFile
from lm_eval_false_demos.leaderboard.values import data_source_text, date_from_name, first, mapping_at, walk_objects
from lm_eval_false_demos.results.schema import accuracy, integer, number, text

if TYPE_CHECKING:
    from lm_eval_false_demos.leaderboard.collect import Leaderboard


def add_lm_eval(board: "Leaderboard", path: Path, payload: Mapping[str, Any]) -> None:
    config = payload["config"]
    entries = {**(payload.get("groups") if isinstance(payload.get("groups"), dict) else {}), **payload["results"]}
    tasks = {name: value for name, value in entries.items() if isinstance(name, str) and name.startswith("falsedemo_")}
    if not tasks:
        raise SkipFile("lm-eval results without any falsedemo_* task")
    info = mapping_at(config, "falsedemo")
    date = number(payload.get("date")) or date_from_name(path)
    configs = payload.get("configs") if isinstance(payload.get("configs"), dict) else {}
    n_samples = payload.get("n-samples") if isinstance(payload.get("n-samples"), dict) else {}
    n_shot = payload.get("n-shot") if isinstance(payload.get("n-shot"), dict) else {}
    row = board.row(config.get("model"), config.get("model_args"), lm_eval_readout(payload),
                    integer(info.get("num_layers")), file_protocol(config, tasks, configs, n_shot))
    used = 0
    for task, metrics in sorted(tasks.items()):
        parsed = parse_task_name(task)
        if parsed is None or not isinstance(metrics, dict):
            board.warn(f"{path}: ignored task {task!r}: not falsedemo_<dataset>_<setting> with metrics")
            continue
        value = accuracy(metrics.get(f"{METRIC},none"))
        if value is None:
            if parsed[0] != GROUP_DATASET:  # a group without aggregate_metric_list has no value: fine
                board.warn(f"{path}: ignored task {task}: no finite {METRIC},none value in [0, 1]")
            continue
        metadata = mapping_at(configs, task, "metadata")
        sst2_format = metadata.get("sst2_format")
        if parsed[0] == "sst2" and integer(sst2_format):  # --metadata sst2_format on the format-0 task
            parsed = (f"sst2_f{integer(sst2_format)}", parsed[1])
        n = integer(mapping_at(n_samples, task).get("effective"))
        source = data_source_text(first(metadata, ("data_source",)))
        if source:
            row.data_sources.add(source)
        board.put(row.lm_eval, parsed, Measurement(value, n, path, date), row, "lm-eval results")
        used += 1
    if not used:
        raise SkipFile("no usable falsedemo_* task results")
    row.k.update(row.protocol.k)
    row.commands[path] = lm_eval_command(config, sorted(tasks), n_shot)
    fewshot_seed = integer(config.get("fewshot_seed"))
    if fewshot_seed is not None:
        row.seeds.add(fewshot_seed)
    row.label_scoring.add(LABEL_SCORING_TEXT.get(row.protocol.label_scoring, row.protocol.label_scoring))
    plugin = text(first(config, ("plugin_version",)))
    for task_config in configs.values():
        plugin = plugin or text(first(mapping_at(task_config, "metadata"), ("plugin_version",)))
    board.add_version(row, "plugin", plugin)
    board.add_version(row, "lm_eval", payload.get("lm_eval_version"))
    board.add_version(row, "transformers", payload.get("transformers_version"))
    add_identity(row, config)
    board.register(row, path, date)


def task_k(task: str, metadata: Mapping[str, Any], n_shot: Mapping[str, Any]) -> int | None:
    return integer(first(metadata, ("k", "num_demos"))) or integer(n_shot.get(task))


def file_protocol(config: Mapping[str, Any], tasks: Mapping[str, Any], configs: Mapping[str, Any],
                  n_shot: Mapping[str, Any]) -> Protocol:
    """k (of the tasks that show demonstrations), the --limit, the data source and the label scoring of one file."""
    ks, sources, datasets = set(), [], []
    for task in tasks:
        parsed = parse_task_name(task)
        if parsed is None or parsed[0] == GROUP_DATASET:
            continue
        metadata = mapping_at(configs, task, "metadata")
        datasets.append(parsed[0])
        sources.append(data_source_text(first(metadata, ("data_source",))))
        if parsed[1] != "zeroshot":
            ks.add(task_k(task, metadata, n_shot))
    source = next((found for found in sources if found), None)
    return protocol(ks, config.get("limit"), source,
                    label_scoring_of(config.get("model"), mapping_at(config, "falsedemo").get("label_scoring")),
                    datasets)


def add_identity(row: Row, config: Mapping[str, Any]) -> None:
    """Checkpoint identity, parameters and layers, wherever lm-eval and our wrappers nested them: lm-eval puts
    ``model_sha`` / ``model_num_parameters`` at the top of ``config``, our model wrappers add
    ``falsedemo.{num_layers, model_identity.gguf_sha256}``."""
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


def lm_eval_command(config: Mapping[str, Any], tasks: list[str], n_shot: Mapping[str, Any]) -> str:
    """The lm_eval command line of a results file, rebuilt from its config (lm-eval records no command)."""
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
