"""falsedemo sweep: derived analyses, output files, and equality with lm-eval runs on a tiny random model.

The expensive pieces (TaskManager indexing, the tiny model, one sweep) are built once per module.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lm_eval_false_demos.cli import sweep
from lm_eval_false_demos.analysis import layer_curves
from lm_eval_false_demos.analysis import readout
from lm_eval_false_demos.analysis.records import PromptRecord
from lm_eval_false_demos.integrations import sweep as sweep_run
from lm_eval_false_demos.integrations import sweep_prompts
from lm_eval_false_demos.results import sweep_files
from lm_eval_false_demos.core.lens import Readout
from lm_eval_false_demos.core.metrics import normalise
from lm_eval_false_demos.core.data_loading import data_provenance
from lm_eval_false_demos.core.files import strict_json_payload
from lm_eval_false_demos.errors import FalseDemoError

TASKS = ["falsedemo_unnatural_correct", "falsedemo_unnatural_permuted"]
LIMIT = 12
# Shares of queries are exact; a mean probability (true_label_prob) carries float32's noise from another batching.
PROBABILITY_TOLERANCE = 1e-6


def _probabilities_approx(tasks: dict) -> dict:
    """The tasks' curves with every true-label probability compared up to PROBABILITY_TOLERANCE."""
    copied = json.loads(json.dumps(tasks))
    for task in copied.values():
        task["per_layer"]["true_label_prob"] = pytest.approx(task["per_layer"]["true_label_prob"],
                                                             abs=PROBABILITY_TOLERANCE)
        task["per_position"]["true_label_prob"] = [pytest.approx(row, abs=PROBABILITY_TOLERANCE)
                                                   for row in task["per_position"]["true_label_prob"]]
    return copied
NUM_FEWSHOT = 5
FEWSHOT_SEED = 1234


# ------------------------------------------------------------------------------- pure analyses


def test_critical_layer_is_first_layer_reaching_half_the_final_gap():
    assert layer_curves.critical_layer([0.0, 0.05, 0.1, 0.3, 0.2]) == 2
    assert layer_curves.critical_layer([0.0, 0.1, 0.4, 0.2]) == 1  # reaching half counts (0.1 >= 0.2 / 2)
    assert layer_curves.critical_layer([0.0, 0.09, 0.4, 0.2]) == 2
    assert layer_curves.critical_layer([0.0, 0.3 - 0.2, 0.4, 0.5 - 0.3]) == 1  # 0.09999999999999998 reaches 0.1
    assert layer_curves.critical_layer([0.0, 0.1, 0.05]) == 1
    assert layer_curves.critical_layer([0.0, 0.2, 0.0]) is None
    assert layer_curves.critical_layer([0.0, 0.1, -0.1]) is None


def test_early_exit_picks_earliest_maximum_and_gain_over_last_layer():
    assert layer_curves.early_exit([0.5, 0.7, 0.7, 0.4]) == (1, pytest.approx(0.3))
    assert layer_curves.early_exit([0.5, 0.4, 0.6]) == (2, 0.0)


def test_held_out_halves_are_disjoint_seeded_and_cover_all_queries():
    choose, report = layer_curves.held_out_halves(11, seed=3)
    assert len(choose) == 5 and len(report) == 6
    assert sorted(np.concatenate([choose, report]).tolist()) == list(range(11))
    again = layer_curves.held_out_halves(11, seed=3)
    assert choose.tolist() == again[0].tolist() and report.tolist() == again[1].tolist()
    assert layer_curves.held_out_halves(11, seed=4)[0].tolist() != choose.tolist()


def _synthetic_scores(n=60, layers=6, classes=3, seed=0):
    """Correct prompts sharpen with depth; corrupted ones peak mid-way then fall (overthinking)."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, classes, size=n)
    onehot = np.eye(classes)[gold]
    noise = rng.normal(size=(n, layers, classes))
    correct_strength = np.linspace(0, 3, layers)
    corrupted_strength = np.array([0, 0.8, 1.6, 1.2, 0.4, 0.1])[:layers]
    correct = normalise(onehot[:, None, :] * correct_strength[None, :, None] + noise)
    corrupted = normalise(onehot[:, None, :] * corrupted_strength[None, :, None] + noise)
    correct[:, 0] = corrupted[:, 0] = 1.0 / classes  # layer 0 reads the same embedding for every query
    return correct, corrupted, gold


def test_compare_settings_finds_the_split_and_the_early_exit_with_seeded_intervals():
    correct, corrupted, gold = _synthetic_scores()
    first = layer_curves.compare_settings(correct, corrupted, gold, bootstrap_iters=200, seed=5, confidence=0.9)
    second = layer_curves.compare_settings(correct, corrupted, gold, bootstrap_iters=200, seed=5, confidence=0.9)
    assert first == second  # seeded: identical numbers run to run
    assert first.gap_per_layer[0] == pytest.approx(0.0)
    assert first.last_gap > 0.3
    assert first.early_exit_layer in (2, 3) and first.early_exit_gain > 0.1
    assert first.critical_layer is not None and 1 <= first.critical_layer <= 5
    for name in ("correct", "corrupted", "gap", "early_exit_gain"):
        low, high = getattr(first.intervals, name)
        assert low <= high
    low, high = first.intervals.gap
    assert low <= first.last_gap <= high
    held_out = first.held_out
    assert held_out.choose_n + held_out.report_n == len(gold)
    assert held_out.early_exit_gain == pytest.approx(held_out.early_exit_accuracy - held_out.last_layer_accuracy)
    assert held_out.interval[0] <= held_out.interval[1]
    # the file layout: "last_layer" nested, optional numbers absent rather than null
    assert first.to_json()["last_layer"] == {"correct": first.last_correct, "corrupted": first.last_corrupted,
                                             "gap": first.last_gap}
    unsplit = layer_curves.compare_settings(correct[:1], corrupted[:1], gold[:1], bootstrap_iters=0, seed=5,
                                            confidence=0.9).to_json()
    assert unsplit["held_out"] == {"seed": 5, "choose_n": 0, "report_n": 1}
    assert unsplit["intervals"] == {"confidence": 0.9, "iterations": 0, "seed": 5}


def test_bootstrap_is_paired_over_queries():
    """Identical correct and corrupted scores give a gap of exactly 0 in every resample only if both settings
    are resampled with the same queries; independent resampling would spread the interval."""
    correct, _, gold = _synthetic_scores()
    result = layer_curves.compare_settings(correct, correct.copy(), gold, bootstrap_iters=100, seed=0, confidence=0.95)
    assert result.intervals.gap == (0.0, 0.0)
    assert result.intervals.correct == result.intervals.corrupted
    assert result.intervals.correct[0] < result.intervals.correct[1]


# ------------------------------------------------------------------------------- tiny-model fixtures


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager()


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    import lm_eval.api.registry
    import lm_eval.models  # noqa: F401

    return lm_eval.api.registry.get_model("hf").create_from_arg_obj(
        {"pretrained": str(tiny_model_dir("llama")), "dtype": "float32"}, {"batch_size": 2, "device": "cpu"}
    )


@pytest.fixture(scope="module")
def sweep_result(tiny_lm, task_manager, tiny_model_dir):
    return sweep_run.run_sweep(
        model="hf", model_args={"pretrained": str(tiny_model_dir("llama")), "dtype": "float32"}, tasks=TASKS,
        limit=LIMIT, num_fewshot=NUM_FEWSHOT, seed=[0, 1234, 1234, FEWSHOT_SEED], batch_size=3,
        bootstrap_iters=50, task_manager=task_manager, lm=tiny_lm, show_progress=False,
    )


# ------------------------------------------------------------------------------- against lm-eval


def test_layer_numbers_equal_lm_eval_earlyexit_runs(sweep_result, task_manager, tiny_model_dir):
    """The sweep's layer-l numbers equal ``lm_eval --model hf-earlyexit --model_args ...,exit_layer=l``."""
    import lm_eval

    num_layers = sweep_result["config"]["num_layers"]
    for layer in range(num_layers + 1):
        results = lm_eval.simple_evaluate(
            model="hf-earlyexit",
            model_args={"pretrained": str(tiny_model_dir("llama")), "dtype": "float32", "exit_layer": layer},
            tasks=TASKS, limit=LIMIT, num_fewshot=NUM_FEWSHOT, fewshot_random_seed=FEWSHOT_SEED,
            task_manager=task_manager, bootstrap_iters=0, device="cpu", batch_size=4,
        )
        assert results["config"]["model_args"]["exit_layer"] == layer  # canonical, from get_model_info
        for task in TASKS:
            ours = sweep_result["tasks"][task]
            theirs = results["results"][task]
            assert ours["n"] == LIMIT
            reported = {key.split(",")[0] for key in theirs if key.endswith(",none") and "_stderr" not in key}
            assert set(ours["per_layer"]) == reported
            for metric in reported:
                # shares of queries are exact; a mean probability carries float32's batching noise
                tolerance = PROBABILITY_TOLERANCE if metric == "true_label_prob" else 1e-9
                assert ours["per_layer"][metric][layer] == pytest.approx(theirs[f"{metric},none"], abs=tolerance), (
                    task, metric, layer
                )


def test_layer_zero_reads_chance_exactly(sweep_result):
    for task in sweep_result["tasks"].values():
        assert task["per_layer"]["calibrated_acc"][0] == pytest.approx(task["chance"])


def test_per_position_readouts_equal_rerunning_with_fewer_demos(tiny_lm, task_manager):
    """Demo i's readout inside the k-demo prompt equals scoring the prompt cut to its first i demos."""
    import torch

    from lm_eval_false_demos.core.architectures import resolve_modules
    from lm_eval_false_demos.core.metrics import calibrated_accuracy

    tasks = sweep_prompts.load_tasks(TASKS[1:], task_manager, NUM_FEWSHOT, FEWSHOT_SEED)
    info, records = sweep_prompts.build_records(TASKS[1], tasks[TASKS[1]], LIMIT)
    modules = resolve_modules(tiny_lm.model)
    encoded = [sweep_prompts.encode_record(tiny_lm, record, index) for index, record in enumerate(records)]
    with torch.no_grad():
        full = readout.read_prompts(Readout(tiny_lm.model, modules), encoded, 4,
                                    pad_id=tiny_lm.tokenizer.pad_token_id or 0)

    for position in range(NUM_FEWSHOT):
        shortened = [
            PromptRecord(
                task=record.task, doc_id=record.doc_id, query_key=record.query_key,
                context=record.context[: record.demo_offsets[position]], continuations=record.continuations,
                gold=record.demo_true_labels[position], follow_target=record.demo_follow_targets[position],
                demo_true_labels=(), demo_follow_targets=(), demo_offsets=(),
            )
            for record in records
        ]
        short_encoded = [sweep_prompts.encode_record(tiny_lm, record, index) for index, record in enumerate(shortened)]
        with torch.no_grad():
            short = readout.read_prompts(Readout(tiny_lm.model, modules), short_encoded, 1, pad_id=0)
        for index in range(len(records)):
            np.testing.assert_allclose(full[index][:, position], short[index][:, 0], rtol=1e-5, atol=1e-5)
        # and the dataset-level number at that position, at every layer
        gold = np.array([record.gold for record in shortened])
        for layer in range(modules.num_layers + 1):
            ours = calibrated_accuracy(
                normalise(np.stack([full[i][layer, position] for i in range(len(records))])), gold
            )
            theirs = calibrated_accuracy(
                normalise(np.stack([short[i][layer, 0] for i in range(len(records))])), gold
            )
            assert ours == pytest.approx(theirs)


def test_per_position_curve_ends_with_the_query_readout(sweep_result):
    for task in sweep_result["tasks"].values():
        positions = task["per_position"]
        assert positions["num_preceding_demos"] == list(range(NUM_FEWSHOT + 1))
        assert positions["readout"][-1] == "query"
        for metric in task["per_layer"]:
            assert [row[-1] for row in positions[metric]] == task["per_layer"][metric]


def test_result_has_the_documented_shape(sweep_result):
    assert sweep_result["kind"] == "falsedemo.sweep" and sweep_result["format_version"] == 1
    config = sweep_result["config"]
    for key in ("model", "model_args", "seed", "k", "limit", "data_source", "versions", "model_identity"):
        assert key in config
    assert config["seed"]["fewshot"] == FEWSHOT_SEED and config["k"] == [NUM_FEWSHOT]
    assert config["data_provenance"] == {"unnatural": {
        "source": {"kind": "builtin"}, "split_rows": {"all": 90}, "pool": 90, "queries": 90,
        "fingerprint": data_provenance("unnatural")["fingerprint"]}}
    assert config["model_identity"]["kind"] == "local_folder" and len(config["model_identity"]["sha256"]) == 64
    for package in ("lm_eval_false_demos", "lm_eval", "transformers", "torch"):
        assert package in config["versions"]
    entry = sweep_result["datasets"]["unnatural"]
    for key in ("critical_layer", "early_exit_layer", "early_exit_gain", "held_out", "intervals", "by_setting"):
        assert key in entry
    assert entry["corrupted_setting"] == "permuted"
    assert len(entry["gap_per_layer"]) == config["num_layers"] + 1
    # everything but the per-query scores is JSON; those stay arrays until query_scores.npz
    json.dumps({key: value for key, value in sweep_result.items() if key != "query_scores"}, allow_nan=True)
    scores = sweep_result["query_scores"][TASKS[1]]
    num_classes = sweep_result["tasks"][TASKS[1]]["num_classes"]
    assert scores["query_scores"].shape == (LIMIT, config["num_layers"] + 1, num_classes) and len(scores["query_keys"]) == LIMIT


def test_outputs_are_written_atomically_and_never_overwritten(sweep_result, tmp_path):
    first = sweep_files.write_outputs(sweep_result, tmp_path)
    second = sweep_files.write_outputs(sweep_result, tmp_path)
    assert first != second
    for folder in (first, second):
        names = {path.name for path in folder.iterdir()}
        assert {"sweep.json", "curves.csv", "derived.csv", "accuracy_by_layer.png", "accuracy_by_layer.svg",
                "gap_by_demos.png", "gap_by_demos.svg"} <= names
        assert not [name for name in names if name.endswith(".tmp")]
    loaded = json.loads((first / "sweep.json").read_text())
    assert loaded["tasks"][TASKS[0]]["per_layer"] == sweep_result["tasks"][TASKS[0]]["per_layer"]
    rows = (first / "curves.csv").read_text().splitlines()
    layers = sweep_result["config"]["num_layers"] + 1
    assert len(rows) == 1 + len(TASKS) * layers * (NUM_FEWSHOT + 1)


def test_leaderboard_reads_the_sweep(sweep_result, tmp_path):
    from lm_eval_false_demos import leaderboard

    folder = sweep_files.write_outputs(sweep_result, tmp_path, plots=False)
    board = leaderboard.Leaderboard()
    board.add_file(folder / "sweep.json")
    assert board.rows and not [warning for warning in board.warnings if "sweep" in warning]


def test_ablations_from_model_args_apply_during_the_sweep(task_manager, tiny_model_dir):
    """``--model hf-ablate``: the sweep's last layer equals lm-eval's hf-ablate run (ablation at the query)."""
    import lm_eval

    model_args = {"pretrained": str(tiny_model_dir("llama")), "dtype": "float32", "attn_layers": "1-"}
    ours = sweep_run.run_sweep(
        model="hf-ablate", model_args=model_args, tasks=TASKS[1:], limit=LIMIT, num_fewshot=NUM_FEWSHOT,
        seed=[0, 1234, 1234, FEWSHOT_SEED], batch_size=4, bootstrap_iters=0, task_manager=task_manager,
        show_progress=False,
    )
    theirs = lm_eval.simple_evaluate(
        model="hf-ablate", model_args=model_args, tasks=TASKS[1:], limit=LIMIT, num_fewshot=NUM_FEWSHOT,
        fewshot_random_seed=FEWSHOT_SEED, task_manager=task_manager, bootstrap_iters=0, device="cpu", batch_size=4,
    )["results"][TASKS[1]]
    assert ours["config"]["ablation"]["attn_layers"] == [1, 2, 3]
    per_layer = ours["tasks"][TASKS[1]]["per_layer"]
    for metric in per_layer:
        tolerance = PROBABILITY_TOLERANCE if metric == "true_label_prob" else 1e-9
        assert per_layer[metric][-1] == pytest.approx(theirs[f"{metric},none"], abs=tolerance)


# ------------------------------------------------------------------------------- command line


def test_exit_layer_is_rejected_clearly():
    with pytest.raises(FalseDemoError, match="exit_layer makes no sense for a sweep"):
        sweep_run.check_no_exit_layer({"pretrained": "x", "exit_layer": 3})


def test_cli_parses_model_args_like_lm_eval():
    from lm_eval_false_demos.cli.main import build_parser

    argv = ["sweep", "--model", "hf-ablate", "--model_args", "pretrained=/m,heads=14:6;16:7,dtype=float32",
            "--tasks", "falsedemo_unnatural", "--seed", "0,1,2,3", "--limit", "5"]
    args = build_parser(argv).parse_args(argv)
    assert args.model_args == {"pretrained": "/m", "heads": "14:6;16:7", "dtype": "float32"}
    assert args.tasks == ["falsedemo_unnatural"] and args.seed == [0, 1, 2, 3] and args.limit == 5.0
    with pytest.raises(FalseDemoError, match="batch_size"):
        sweep._parse_batch_size("auto")


def test_two_accelerate_processes_give_the_same_numbers(sweep_result, tiny_model_dir, tmp_path):
    """``accelerate launch`` with 2 CPU processes: prompts sharded by rank, gathered to rank 0, same numbers.

    On a CPU-only machine accelerate starts several processes only with ``--multi_gpu`` plus
    ``ACCELERATE_USE_CPU=true`` (gloo process group); ``--cpu --num_processes 2`` silently runs one.
    """
    environment = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "lm_eval_false_demos.cli.main", "sweep", "--model", "hf",
        "--model_args", f"pretrained={tiny_model_dir('llama')},dtype=float32", "--tasks", ",".join(TASKS),
        "--limit", str(LIMIT), "--num_fewshot", str(NUM_FEWSHOT), "--seed", f"0,1234,1234,{FEWSHOT_SEED}",
        "--batch_size", "3", "--device", "cpu", "--bootstrap_iters", "50", "--output_path", str(tmp_path),
        "--no_plots",
    ]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1  # only rank 0 writes
    launched = json.loads((folders[0] / "sweep.json").read_text())
    assert launched["config"]["world_size"] == 2
    assert launched["tasks"] == _probabilities_approx(sweep_result["tasks"])
    expected = strict_json_payload({"datasets": sweep_result["datasets"]})["datasets"]  # NaN in memory: null in files
    for entry in expected.values():
        for values in entry["prediction_metrics"]["settings"].values():
            values["true_label_prob"] = {key: pytest.approx(curve, abs=PROBABILITY_TOLERANCE)
                                         for key, curve in values["true_label_prob"].items()}
    assert launched["datasets"] == expected


def test_the_sweeps_own_loading_reads_the_tokenizer_once_and_indexes_only_our_tasks(
        sweep_result, tiny_model_dir, monkeypatch):
    """Left to itself (no lm, no task manager passed) the sweep loads the tokenizer once (the tasks borrow the
    model's for their token budget), indexes our task folder without lm-eval's built-ins, and gets the same
    numbers as the run with lm-eval's full index and separately loaded tokenizers."""
    import transformers
    from lm_eval.tasks import TaskManager

    loads, indexes = [], []
    original_load = transformers.AutoTokenizer.from_pretrained.__func__
    original_init = TaskManager.__init__

    def counting_load(cls, *args, **kwargs):
        loads.append(args[0] if args else kwargs.get("pretrained_model_name_or_path"))
        return original_load(cls, *args, **kwargs)

    @functools.wraps(original_init)
    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        indexes.append(self)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(counting_load))
    monkeypatch.setattr(TaskManager, "__init__", recording_init)
    from lm_eval_false_demos.integrations import tasks as task_module

    monkeypatch.setattr(task_module, "_LENT_TOKENIZERS", {})
    task_module.load_tokenizer_and_length.cache_clear()
    alone = sweep_run.run_sweep(
        model="hf", model_args={"pretrained": str(tiny_model_dir("llama")), "dtype": "float32"}, tasks=TASKS,
        limit=LIMIT, num_fewshot=NUM_FEWSHOT, seed=[0, 1234, 1234, FEWSHOT_SEED], batch_size=3,
        bootstrap_iters=50, show_progress=False,
    )
    assert len(loads) == 1
    assert len(indexes) == 1 and "hellaswag" not in indexes[0].all_tasks and TASKS[0] in indexes[0].all_tasks
    for name in TASKS:
        assert alone["tasks"][name]["per_layer"] == sweep_result["tasks"][name]["per_layer"]
    assert alone["datasets"] == sweep_result["datasets"]


def test_tasks_other_than_ours_are_refused_before_anything_loads():
    with pytest.raises(FalseDemoError, match="hellaswag: not a falsedemo task"):
        sweep_run.run_sweep(model="hf", model_args={"pretrained": "/nonexistent"}, tasks=["hellaswag"])


def test_the_lens_parity_check_rides_on_the_first_batch_forward(tiny_lm, task_manager, tiny_model_dir):
    """One forward per batch, parity included: the first batch's forward runs on to the model's head (at the
    scored positions) instead of a separate forward for the check."""
    calls = []
    handle = tiny_lm.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        result = sweep_run.run_sweep(
            model="hf", model_args={"pretrained": str(tiny_model_dir("llama")), "dtype": "float32"}, tasks=TASKS,
            limit=LIMIT, num_fewshot=NUM_FEWSHOT, seed=[0, 1234, 1234, FEWSHOT_SEED], batch_size=3,
            bootstrap_iters=0, task_manager=task_manager, lm=tiny_lm, show_progress=False,
        )
    finally:
        handle.remove()
    assert len(calls) == -(-2 * LIMIT // 3)  # 24 prompts in batches of 3
    parity = result["config"]["lens_parity"]
    assert parity["max_abs_diff"] < 1e-4 and parity["positions"] == 3 * (NUM_FEWSHOT + 1)


def test_the_summary_shows_a_dash_where_the_analysis_defines_no_value():
    """No critical layer (the gap never opens), no held-out exit: "-", never "None" or "nan" (issue 24)."""
    from lm_eval_false_demos.results.sweep_files import format_summary

    comparison = {"last_layer": {"correct": 0.75, "corrupted": 0.5, "gap": 0.25}, "intervals": {"gap": [0.1, 0.4]},
                  "critical_layer": None, "early_exit_layer": 3, "early_exit_gain": float("nan"),
                  "held_out": {"early_exit_layer": None, "early_exit_gain": None, "interval": None}}
    table = format_summary({"datasets": {"sst2": {"by_setting": {"permuted": comparison}}}})
    row = table.splitlines()[1]
    assert row == "sst2  permuted  0.750  0.500  +0.250 [+0.100,+0.400]  -  3:- [-]  -:- [-]", row
