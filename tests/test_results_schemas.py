"""The typed readers of sweep.json and heads.json (results.sweep_schema, results.heads_schema): every file kind
written so far loads (fixtures, goldens, committed runs), an unknown format_version is refused in one line, and
older layouts without a field still load."""

import json
from pathlib import Path

import pytest

from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.results import heads_files, heads_schema, sweep_schema
from lm_eval_false_demos.results.heads_schema import HeadsFile
from lm_eval_false_demos.results.schema import SchemaError
from lm_eval_false_demos.results.sweep_schema import SUMMARY_SECTIONS, SweepFile

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
FIXTURE_SWEEP = next((TESTS / "fixtures" / "leaderboard" / "sweeps").rglob("sweep.json"))
FIXTURE_HEADS = next((TESTS / "fixtures" / "leaderboard" / "heads").rglob("heads.json"))
COMMITTED = sorted(
    path for folder in (REPO / "leaderboard" / "runs", REPO / "reports", TESTS / "fixtures" / "leaderboard")
    for name in ("sweep.json", "heads.json") for path in folder.rglob(name)
)


def test_there_are_committed_files_of_both_kinds():
    names = {path.name for path in COMMITTED}
    assert names == {"sweep.json", "heads.json"} and len(COMMITTED) > 30


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: str(path.relative_to(REPO)))
def test_every_committed_file_loads_with_its_numbers(path):
    raw = json.loads(path.read_text())
    if path.name == "sweep.json":
        sweep = SweepFile.load(path)
        assert sweep.format_version == raw["format_version"] and not sweep.ignored
        assert dict(sweep.config.model_args) == {k: str(v) for k, v in raw["config"]["model_args"].items()}
        assert sweep.config.num_layers == raw["config"]["num_layers"]
        for name, task in sweep.tasks.items():
            assert list(task.calibrated_acc) == raw["tasks"][name]["per_layer"]["calibrated_acc"]
            assert len(task.calibrated_acc) == sweep.config.num_layers + 1
            assert (task.dataset, task.setting, task.n) == tuple(raw["tasks"][name][k] for k in ("dataset", "setting", "n"))
        for dataset, derived in sweep.datasets.items():
            entry = raw["datasets"][dataset]
            assert derived.critical_layer == entry.get("critical_layer")
            for setting, comparison in derived.by_setting.items():
                assert comparison.last_gap == pytest.approx(entry["by_setting"][setting]["last_layer"]["gap"])
        assert set(sweep.summary.headline) == set(raw["summary"]) - set(SUMMARY_SECTIONS)
        for dataset, derived in sweep.datasets.items():  # files before issue 23 have none
            assert (derived.prediction_metrics is None) == ("prediction_metrics" not in raw["datasets"][dataset])
    else:
        heads = HeadsFile.load(path)
        assert heads.format_version == raw["format_version"] and heads.top_k == raw["top_k"]
        assert (heads.evaluation is None) == ("evaluation" not in raw)
        assert len(heads.heads) == len(raw["heads"])
        if heads.evaluation is not None:
            assert heads.evaluation.gap_recovered_mean == pytest.approx(raw["evaluation"]["gap_recovered"]["mean"])
            assert heads.evaluation.pooled_gap_recovered() is not None


@pytest.mark.parametrize("name, cls", [("sweep", SweepFile), ("heads", HeadsFile)])
def test_golden_sections_load(name, cls):
    """The goldens keep a written file's measured sections; with a header and a config they read back."""
    golden = json.loads((TESTS / "golden" / f"{name}.json").read_text())
    loaded = cls.from_json({"kind": f"falsedemo.{name}", "format_version": 1,
                            "config": {"model": "hf", "model_args": {"pretrained": "tiny"}}, **golden})
    if name == "sweep":
        assert set(loaded.tasks) == set(golden["tasks"]) and set(loaded.datasets) == set(golden["datasets"])
        for dataset, derived in loaded.datasets.items():
            assert derived.critical_layer == golden["datasets"][dataset]["critical_layer"]
        assert loaded.summary.headline["permuted"].gap == pytest.approx(golden["summary"]["permuted"]["gap"])
    else:
        assert loaded.top_k == golden["top_k"] and set(loaded.evaluation.datasets) == set(golden["evaluation"]["datasets"])


@pytest.mark.parametrize("source, cls", [(FIXTURE_SWEEP, SweepFile), (FIXTURE_HEADS, HeadsFile)])
def test_an_unknown_format_version_is_refused_in_one_line(tmp_path, source, cls):
    payload = json.loads(source.read_text())
    payload["format_version"] = 99
    path = tmp_path / source.name
    path.write_text(json.dumps(payload))
    with pytest.raises(FalseDemoError) as refused:
        cls.load(path)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message
    assert "format_version 99" in message and "reads format_version 1" in message and "newer" in message


def test_the_writers_versions_are_the_ones_read():
    assert heads_files.FORMAT_VERSION in heads_schema.FORMAT_VERSIONS
    assert heads_files.heads_payload({}, None, [])["format_version"] in heads_schema.FORMAT_VERSIONS
    assert 1 in sweep_schema.FORMAT_VERSIONS  # integrations.sweep.run_sweep writes format_version 1


def test_wrong_kind_missing_config_and_unreadable_files_are_refused(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"kind": "falsedemo.heads", "format_version": 1, "config": {}}))
    with pytest.raises(SchemaError, match="not a falsedemo.sweep file"):
        SweepFile.load(path)
    path.write_text(json.dumps({"kind": "falsedemo.sweep", "format_version": 1, "tasks": {}}))
    with pytest.raises(SchemaError, match="missing or malformed 'config'"):
        SweepFile.load(path)
    path.write_text(json.dumps({"kind": "falsedemo.sweep", "format_version": "1", "config": {}, "tasks": {}}))
    with pytest.raises(SchemaError, match="without an integer format_version"):
        SweepFile.load(path)
    path.write_text("{")
    with pytest.raises(SchemaError, match="cannot read"):
        SweepFile.load(path)


def test_an_older_sweep_without_derived_numbers_summary_or_positions_loads():
    """The earliest sweeps (and the leaderboard tests' minimal ones) have tasks and config only."""
    payload = json.loads(FIXTURE_SWEEP.read_text())
    for name in ("datasets", "summary"):
        payload.pop(name, None)
    for task in payload["tasks"].values():
        task.pop("per_position", None)
        task.pop("chance", None)
    payload["config"].pop("date")
    sweep = SweepFile.from_json(payload)
    assert sweep.datasets == {} and sweep.summary.datasets == () and sweep.summary.mean_by_setting == {}
    assert sweep.summary.prediction_curves == {}
    assert sweep.config.date is None and all(task.chance is None for task in sweep.tasks.values())
    assert len(sweep.tasks) == len(payload["tasks"])


def test_a_task_without_a_usable_curve_is_left_out_with_the_reason():
    payload = json.loads(FIXTURE_SWEEP.read_text())
    name = sorted(payload["tasks"])[0]
    payload["tasks"][name]["per_layer"]["calibrated_acc"] = [0.5, 1.5]
    sweep = SweepFile.from_json(payload)
    assert name not in sweep.tasks and len(sweep.ignored) == 1 and "per_layer.calibrated_acc" in sweep.ignored[0]


def test_heads_old_and_new_layouts_read_the_same():
    """Older heads files: model_args as text, the packaged model's identity flat, the data folder as data_source;
    newer: model_args an object, identity nested under "embedded" (loading.model_identity), data_source a kind."""
    old = json.loads(FIXTURE_HEADS.read_text())
    new = json.loads(FIXTURE_HEADS.read_text())
    new["config"]["model_args"] = {"pretrained": "gemma-3-270m", "dtype": "float32"}
    new["config"]["model_identity"] = {
        "embedded": old["config"]["model_identity"], "kind": "local_folder", "path": "/cache/gemma-3-270m",
        "sha256": "0" * 64, "lm_eval_model_info": {"model_num_parameters": 268098176, "model_sha": ""}}
    new["config"]["data_source"] = {"kind": "local", "path": "/work/shared/data"}
    new["config"].update(prompt_mode="raw", chat_template_sha256=None)
    old_file, new_file = HeadsFile.from_json(old), HeadsFile.from_json(new)
    assert old_file.config.model_args == new_file.config.model_args
    for field in ("gguf_file", "gguf_sha256"):
        assert getattr(old_file.config.identity, field) == getattr(new_file.config.identity, field) is not None
    assert new_file.config.identity.model_num_parameters == 268098176 and new_file.config.identity.model_sha is None
    assert (old_file.config.data_source, new_file.config.data_source) == ("/work/shared/data", "local")
    assert old_file.config.readout.prompt_mode is None and new_file.config.readout.prompt_mode == "raw"
    old.pop("evaluation")
    assert HeadsFile.from_json(old).evaluation is None  # a scoring-only run


def test_pooled_gap_recovered_needs_every_accuracy():
    payload = json.loads(FIXTURE_HEADS.read_text())
    top, draws = HeadsFile.from_json(payload).evaluation.pooled_gap_recovered()
    assert top == pytest.approx(0.48) and len(draws) == 5
    del payload["evaluation"]["datasets"]["rte"]["random"]["draws"][4]
    assert HeadsFile.from_json(payload).evaluation.pooled_gap_recovered() is None


def test_critical_layer_from_sweep_reads_through_the_schema(tmp_path):
    payload = json.loads(FIXTURE_SWEEP.read_text())
    payload["datasets"] = {"sst2": {"critical_layer": 8, "by_setting": {"permuted": {"critical_layer": 8}}}}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(payload))
    assert heads_files.critical_layer_from_sweep(path, "sst2") == 8
    assert heads_files.critical_layer_from_sweep(path, "rte") is None
    payload["format_version"] = 99
    path.write_text(json.dumps(payload))
    with pytest.raises(FalseDemoError, match="format_version 99"):
        heads_files.critical_layer_from_sweep(path, "sst2")


def test_the_leaderboard_skips_a_newer_file_with_one_warning(tmp_path):
    from lm_eval_false_demos.leaderboard import Leaderboard

    payload = json.loads(FIXTURE_SWEEP.read_text())
    payload["format_version"] = 99
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(payload))
    board = Leaderboard()
    board.add_paths([path])
    (warning,) = board.warnings
    assert warning.startswith(f"{path}: skipped: falsedemo.sweep format_version 99") and "\n" not in warning
    assert not board.ordered_rows()
