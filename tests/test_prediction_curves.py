"""The prediction metrics over layers in a sweep (analysis.prediction_curves) and the wrong-share grid."""

import math

import numpy as np
import pytest

from lm_eval_false_demos.analysis import prediction_curves
from lm_eval_false_demos.analysis.records import TaskInfo
from lm_eval_false_demos.analysis.sweep_results import TaskScores
from lm_eval_false_demos.core import metrics
from lm_eval_false_demos.core.files import strict_json_payload


def _task(setting, scores, gold, follow=None, wrong_share=None):
    n = len(gold)
    info = TaskInfo(name=f"t_{setting}", dataset="d", setting=setting, num_fewshot=2, num_classes=scores.shape[-1],
                    label_words=("a", "b", "c")[: scores.shape[-1]], wrong_share=wrong_share)
    return info, TaskScores(query_keys=[str(i) for i in range(n)], query_scores=scores, gold=gold,
                            position_scores=scores[:, :, None, :], position_targets=gold[:, None], follow=follow)


def _scores(rng, n=30, layers=4, k=3):
    return metrics.normalise(rng.normal(size=(n, layers, k)) * 2)


def test_curves_equal_the_metrics_layer_by_layer_and_absent_settings_say_why():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 30)
    follow = (gold + 1) % 3
    correct, permuted, zeroshot = _scores(rng), _scores(rng), _scores(rng)
    tasks = {"correct": _task("correct", correct, gold), "permuted": _task("permuted", permuted, gold, follow),
             "zeroshot": _task("zeroshot", zeroshot, gold)}
    result = prediction_curves.dataset_prediction_metrics(tasks, bootstrap_iters=100, seed=0, confidence=0.9,
                                                          label_words=("a", "b", "c"))
    prior = metrics.predictions(zeroshot[:, -1])
    permuted_metrics = result.settings["permuted"]
    for layer in range(4):
        assert permuted_metrics["flip_rate"].value[layer] == pytest.approx(
            metrics.flip_rate(correct[:, layer], permuted[:, layer], gold))
        assert permuted_metrics["prior_alignment"].value[layer] == pytest.approx(
            metrics.prior_alignment(permuted[:, layer], prior))
        assert permuted_metrics["semantic_override"].value[layer] == pytest.approx(
            metrics.semantic_override_rate(permuted[:, layer], follow, prior))
        assert permuted_metrics["follow_rate"].value[layer] == pytest.approx(
            metrics.follow_accuracy(permuted[:, layer], follow))
        assert result.settings["correct"]["true_label_prob"].value[layer] == pytest.approx(
            metrics.mean_true_label_probability(correct[:, layer], gold))
        assert result.settings["zeroshot"]["class_recall"]["b"].value[layer] == pytest.approx(
            metrics.per_class_recall(zeroshot[:, layer], gold)[1])
    curve = permuted_metrics["prior_alignment"]
    assert all(low <= value <= high for low, value, high in zip(curve.low, curve.value, curve.high))
    # the zero-shot prompt agrees with its own last-layer answer there
    assert "prior_alignment" not in result.settings["zeroshot"]
    assert result.settings["correct"].keys() >= {"prior_alignment", "true_label_prob", "class_recall"}
    assert "flip_rate" not in result.settings["correct"]
    assert result.to_json()["absent"] == {"label_sensitivity": prediction_curves.NEEDS_GRID}

    without_prior = prediction_curves.dataset_prediction_metrics(
        {key: tasks[key] for key in ("correct", "permuted")}, bootstrap_iters=0, seed=0, confidence=0.9,
        label_words=("a", "b", "c"))
    assert "prior_alignment" not in without_prior.settings["permuted"]
    assert without_prior.absent["permuted"] == {"prior_alignment": prediction_curves.NEEDS_PRIOR,
                                                "semantic_override": prediction_curves.NEEDS_PRIOR}
    assert without_prior.settings["permuted"]["flip_rate"].low is None  # no bootstrap asked for


def test_label_sensitivity_is_the_slope_over_the_graded_tasks_with_an_interval():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 3, 40)
    onehot = np.eye(3)[gold][:, None, :]
    tasks = {}
    for share, strength in ((0, 3.0), (50, 1.5), (100, 0.0)):
        scores = metrics.normalise(onehot * strength * np.array([0.0, 1.0])[None, :, None] + rng.normal(size=(40, 2, 3)))
        tasks[f"permuted@{share}"] = _task("permuted", scores, gold, (gold + 1) % 3, wrong_share=float(share))
    result = prediction_curves.dataset_prediction_metrics(tasks, bootstrap_iters=200, seed=0, confidence=0.95,
                                                          label_words=("a", "b", "c")).label_sensitivity
    assert result.wrong_shares == (0.0, 50.0, 100.0)
    accuracy = [metrics.calibrated_accuracy(tasks[f"permuted@{s}"][1].query_scores[:, 1], gold) for s in (0, 50, 100)]
    assert result.calibrated_acc[0][1] == pytest.approx(accuracy[0])
    assert result.slope.value[1] == pytest.approx(metrics.label_correctness_sensitivity([0, 0.5, 1], accuracy))
    assert result.slope.value[1] < -0.3 and result.slope.high[1] < 0  # labels that turn wrong cost accuracy
    assert result.slope.low[0] <= result.slope.value[0] <= result.slope.high[0]


def test_mean_curves_leave_out_undefined_layers_and_non_main_datasets():
    from lm_eval_false_demos.analysis.sweep_results import MetricCurve, PredictionMetrics

    def entry(values):
        return PredictionMetrics(prior_setting=None, settings={"permuted": {"flip_rate": MetricCurve.of(values)}},
                                 absent={})

    mean = prediction_curves.mean_prediction_curves(
        {"trec": entry([0.2, float("nan")]), "sst2_f1": entry([0.4, 0.6]), "unnatural": entry([1.0, 1.0])})
    assert mean["permuted"]["flip_rate"]["value"][0] == pytest.approx(0.3)
    assert mean["permuted"]["flip_rate"]["value"][1] == pytest.approx(0.6)


@pytest.fixture(scope="module")
def grid_sweep(tiny_model_dir, tmp_path_factory):
    from lm_eval_false_demos.cli import main as cli

    out = tmp_path_factory.mktemp("grid")
    tasks = "falsedemo_unnatural_correct,falsedemo_unnatural_permuted,falsedemo_unnatural_zeroshot"
    assert cli.main(["sweep", "--model_args", f"pretrained={tiny_model_dir('llama')},dtype=float32", "--tasks", tasks,
                     "--limit", "8", "--num_fewshot", "3", "--batch_size", "4", "--bootstrap_iters", "30",
                     "--wrong_share", "0,50,100", "--output_path", str(out)]) == 0
    (folder,) = out.glob("sweep_*")
    return folder


def test_the_wrong_share_grid_is_paired_and_its_ends_are_the_correct_and_permuted_settings(grid_sweep):
    import json

    result = json.loads((grid_sweep / "sweep.json").read_text())
    tasks = result["tasks"]
    assert result["config"]["wrong_shares"] == [0.0, 50.0, 100.0]
    assert tasks["falsedemo_unnatural_permuted@50"]["setting"] == "permuted@50"
    assert tasks["falsedemo_unnatural_permuted@50"]["wrong_share"] == 50
    # 0 % wrong shows the correct labels and 100 % the permuted ones: the same prompts, the same numbers
    assert tasks["falsedemo_unnatural_permuted@0"]["per_layer"]["acc"] == tasks["falsedemo_unnatural_correct"]["per_layer"]["acc"]
    assert tasks["falsedemo_unnatural_permuted@100"]["per_layer"] == tasks["falsedemo_unnatural_permuted"]["per_layer"]
    predictions = result["datasets"]["unnatural"]["prediction_metrics"]
    sensitivity = predictions["label_sensitivity"]
    assert sensitivity["wrong_shares"] == [0.0, 50.0, 100.0]
    last = [row[-1] for row in sensitivity["calibrated_acc"]]
    assert sensitivity["slope"]["value"][-1] == pytest.approx(metrics.label_correctness_sensitivity([0, 0.5, 1], last))
    assert last[0] == pytest.approx(tasks["falsedemo_unnatural_correct"]["per_layer"]["calibrated_acc"][-1])
    assert {"prior_alignment", "flip_rate", "follow_rate", "semantic_override"} <= set(predictions["settings"]["permuted"])
    assert "absent" in predictions and "label_sensitivity" not in predictions["absent"]
    assert "prediction_metrics" in result["summary"]
    assert (grid_sweep / "prior_and_follow_by_layer.png").is_file()


def test_strict_json_keeps_undefined_metrics_null_with_a_reason():
    payload = strict_json_payload({"flip_rate": {"value": [math.nan, 0.5]}}, prediction_curves.UNDEFINED_REASONS)
    assert payload["flip_rate"]["value"] == [None, 0.5]
    assert payload["undefined"] == {"flip_rate.value.0": prediction_curves.UNDEFINED_REASONS["flip_rate"]}


def test_the_schema_reads_the_prediction_metrics_back(grid_sweep):
    import json

    from lm_eval_false_demos.results.sweep_schema import SweepFile

    raw = json.loads((grid_sweep / "sweep.json").read_text())
    sweep = SweepFile.load(grid_sweep / "sweep.json")
    record = sweep.datasets["unnatural"].prediction_metrics
    assert record.prior_setting == "zeroshot"
    flip = raw["datasets"]["unnatural"]["prediction_metrics"]["settings"]["permuted"]["flip_rate"]
    assert list(record.curves["permuted"]["flip_rate"].value) == flip["value"]
    assert list(record.curves["permuted"]["flip_rate"].high) == flip["high"]
    assert set(record.class_recall["correct"]) <= {"plant/vegetable", "sport", "animal"}
    assert record.wrong_shares == (0.0, 50.0, 100.0) and record.sensitivity_slope is not None
    assert sweep.tasks["falsedemo_unnatural_permuted@50"].wrong_share == 50.0
    assert set(sweep.summary.prediction_curves) == set()  # unnatural is not a main dataset
    assert "permuted@50" not in sweep.summary.headline or sweep.summary.headline["permuted@50"].datasets == ()


def test_find_run_says_done_resume_or_new(tmp_path):
    import json

    from lm_eval_false_demos.results.checkpoints import find_run

    wanted = {"tasks": ["falsedemo_trec_correct"], "limit": 50.0, "num_fewshot": 12, "model_args": {"pretrained": "m"}}
    assert find_run(tmp_path, "sweep", wanted) == ("new", None)
    interrupted = tmp_path / "sweep_m_2" / "checkpoint"
    interrupted.mkdir(parents=True)
    (interrupted / "MANIFEST").write_text(json.dumps({"kind": "sweep", "arguments": {**wanted, "batch_size": "2"}}))
    assert find_run(tmp_path, "sweep", wanted) == ("resume", tmp_path / "sweep_m_2")
    assert find_run(tmp_path, "sweep", {**wanted, "limit": 24.0}) == ("new", None)
    finished = tmp_path / "sweep_m_1"
    finished.mkdir()
    config = {"requested_tasks": wanted["tasks"], "limit": 50.0, "num_fewshot": 12, "model_args": {"pretrained": "m"}}
    (finished / "sweep.json").write_text(json.dumps({"kind": "falsedemo.sweep", "config": config}))
    assert find_run(tmp_path, "sweep", wanted) == ("done", finished)


def test_an_unused_wrong_share_leaves_the_resume_arguments_of_older_runs_alone():
    from lm_eval_false_demos.cli import args as cli_args
    from lm_eval_false_demos.cli.main import build_parser

    argv = ["sweep", "--tasks", "falsedemo_trec_permuted"]
    assert "wrong_share" not in cli_args.run_arguments(build_parser(argv).parse_args(argv))
    argv += ["--wrong_share", "0,50"]
    assert cli_args.run_arguments(build_parser(argv).parse_args(argv))["wrong_share"] == [0.0, 50.0]
