"""SST-2's 15 prompt formats (paper spec 2a) and the falsedemo_main_<setting> groups, through lm-eval itself."""

import json

import numpy as np
import pytest
from lm_eval.tasks import TaskManager

from lm_eval_false_demos._hook import task_config_dir
from lm_eval_false_demos.integrations import task_yamls
from lm_eval_false_demos.core.datasets import MAIN_DATASETS, get_spec
from lm_eval_false_demos.core.data_loading import load_examples
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations.tasks import calibrated_accuracy_aggregation
from lm_eval_false_demos.core.metrics import calibrated_accuracy, normalise
from lm_eval_false_demos.core.prompts import build_prompt
from lm_eval_false_demos.core.sst2_formats import (
    FORMAT_COUNT, expand_task_names, format_spec, parse_formats, parse_variant_key, variant_key,
)


def test_fifteen_formats_as_the_paper_words_them():
    assert FORMAT_COUNT == 15
    assert format_spec(0) is get_spec("sst2")
    # format 10 is inverted as in the authors' code: a negative review shows "liked"
    assert format_spec(10).label_word_list == ["liked", "hated"]
    assert format_spec(11).label_word_list == ["0", "5"] and format_spec(13).label_word_list == ["False", "True"]
    two = format_spec(2)
    assert two.instruction == "Here is what our critics think for this month\u2019s films."
    assert "night\u2019s film" in two.demo_format and "'" not in two.demo_format
    assert format_spec(3).instruction == "Critical reception [ edit ]."
    assert "Entertainment Weekly  agreed" in format_spec(4).demo_format  # two spaces, as published
    assert format_spec(7).key == "sst2" and format_spec(7).class_names == ("negative", "positive")


def test_a_format_words_the_same_demonstrations_and_query(data_dir):
    pool, queries = load_examples("sst2")
    query = queries[3]
    base = build_prompt(get_spec("sst2"), query, pool, 4, "permuted", 7)
    inverted = build_prompt(format_spec(10), query, pool, 4, "permuted", 7)
    assert inverted.demo_uids == base.demo_uids and inverted.demo_shown_labels == base.demo_shown_labels
    demos = inverted.context.split("\n\n")
    negative_words = {0: "liked", 1: "hated"}
    for text, shown in zip(demos, inverted.demo_shown_labels):
        assert text.endswith(f" I {negative_words[shown]}.")
    assert demos[-1] == f"{query.fields[0]} I"  # the query is cut just before " {label}"


def test_format_selection_parsing_and_names():
    assert parse_formats("all") == tuple(range(15))
    assert parse_formats("0,5,10") == (0, 5, 10) and parse_formats("3-5") == (3, 4, 5)
    for bad in ("15", "x", "5-3", "-1"):
        with pytest.raises(FalseDemoError, match="allowed: 0..14|low <= high"):
            parse_formats(bad)
    assert variant_key(0) == "sst2" and variant_key(3) == "sst2_f3"
    assert parse_variant_key("sst2_f14") == ("sst2", 14) and parse_variant_key("sst2_f15") is None
    assert expand_task_names(["falsedemo_sst2_formats_permuted", "falsedemo_trec_permuted"], None) == [
        *(f"falsedemo_{variant_key(i)}_permuted" for i in range(15)), "falsedemo_trec_permuted"]
    assert expand_task_names(["falsedemo_sst2_correct", "falsedemo_sst2_ab_correct"], (0, 10)) == [
        "falsedemo_sst2_correct", "falsedemo_sst2_f10_correct", "falsedemo_sst2_ab_correct"]


def test_aggregation_over_formats_is_the_mean_of_per_format_calibrated_accuracies():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 2, 40)
    # formats with different biases towards "positive": pooled thresholds would mix them
    per_format = {index: normalise(rng.standard_normal((40, 2)) + [0.0, index / 3]) for index in (0, 4, 9)}
    items = [(int(g), scores[row].tolist(), index) for index, scores in per_format.items()
             for row, g in enumerate(gold)]
    expected = np.mean([calibrated_accuracy(scores, gold) for scores in per_format.values()])
    assert calibrated_accuracy_aggregation(items) == pytest.approx(expected, abs=1e-12)
    # pooled thresholds would give another number: the per-format split matters
    pooled = calibrated_accuracy(np.concatenate(list(per_format.values())), np.tile(gold, 3))
    assert abs(pooled - expected) > 1e-6


def test_groups_list_the_fourteen_datasets_with_sst2_as_its_formats():
    manager = TaskManager(include_defaults=False, include_path=task_config_dir())
    for setting in ("correct", "permuted"):
        assert f"falsedemo_main_{setting}" in manager.all_groups
    text = task_yamls.render_group_yaml("permuted")
    children = [line.strip()[2:] for line in text.splitlines() if line.startswith("  - falsedemo_")]
    assert len(children) == len(MAIN_DATASETS) == 14
    assert "falsedemo_sst2_formats_permuted" in children and "falsedemo_sst2_permuted" not in children
    assert text.count("weight_by_size: false") == 2


@pytest.fixture(scope="module")
def group_run(tiny_model_dir):
    import lm_eval

    model_args = {"pretrained": str(tiny_model_dir("llama")), "dtype": "float32"}
    # No tokenizer in the task metadata: the tiny tokenizer's label words collide on their first tokens
    # (ag_news), which only matters for first-token scoring; plain hf scores whole continuations.
    manager = TaskManager(include_defaults=False, include_path=task_config_dir())
    return lm_eval.simple_evaluate(
        model="hf", model_args=model_args, tasks=["falsedemo_main_permuted"], num_fewshot=1, limit=15,
        device="cpu", batch_size=16, bootstrap_iters=0, task_manager=manager, log_samples=True,
    )


def test_group_row_is_the_unweighted_mean_over_the_fourteen_datasets(group_run):
    results, groups = group_run["results"], group_run["groups"]
    leaves = [name for name in results if name != "falsedemo_main_permuted"]
    assert len(leaves) == 14
    for metric in ("calibrated_acc,none", "acc,none"):
        expected = np.mean([results[name][metric] for name in leaves])
        assert groups["falsedemo_main_permuted"][metric] == pytest.approx(expected, abs=1e-12)


def test_sst2_formats_task_scores_each_format_with_its_own_words_and_thresholds(group_run):
    samples = group_run["samples"]["falsedemo_sst2_formats_permuted"]
    assert len(samples) == 15  # --limit counts (query, format) documents: 1 query x 15 formats
    assert [sample["doc"]["format"] for sample in samples] == list(range(15))
    assert len({sample["doc"]["uid"] for sample in samples}) == 1
    tenth = next(sample for sample in samples if sample["doc"]["format"] == 10)
    assert [arguments[1] for arguments in tenth["arguments"]] == [" liked", " hated"]
    config = group_run["configs"]["falsedemo_sst2_formats_permuted"]
    assert config["metadata"]["sst2_format"] == list(range(15))


def test_sweep_scores_each_format_as_its_own_task_and_saves_per_query_scores(tiny_model_dir, tmp_path):
    from lm_eval_false_demos.results import query_scores
    from lm_eval_false_demos.integrations import sweep as sweep_run
    from lm_eval_false_demos.results import sweep_files
    from lm_eval_false_demos.core.metrics import calibrated_accuracy_by_layer

    model_args = {"pretrained": str(tiny_model_dir("llama")), "dtype": "float32"}
    result = sweep_run.run_sweep(
        model="hf", model_args=model_args, tasks=["falsedemo_sst2_formats_correct", "falsedemo_sst2_permuted"],
        limit=4, num_fewshot=2, batch_size=4, bootstrap_iters=0, task_manager=TaskManager(include_defaults=False, include_path=task_config_dir()),
        show_progress=False, sst2_formats=(0, 10),
    )
    assert sorted(result["tasks"]) == sorted(["falsedemo_sst2_correct", "falsedemo_sst2_f10_correct",
                                              "falsedemo_sst2_permuted", "falsedemo_sst2_f10_permuted"])
    assert result["tasks"]["falsedemo_sst2_f10_permuted"]["label_words"] == ["liked", "hated"]
    assert set(result["datasets"]) == {"sst2", "sst2_f10"} and result["config"]["sst2_formats"] == [0, 10]
    folder = sweep_files.write_outputs(result, tmp_path, plots=False)
    saved = query_scores.read(folder / "query_scores.npz")
    assert "query_scores" not in json.loads((folder / "sweep.json").read_text())
    for name, task in result["tasks"].items():
        curve = calibrated_accuracy_by_layer(saved[name]["scores"], saved[name]["gold"])
        assert curve.tolist() == task["per_layer"]["calibrated_acc"]
        assert list(saved[name]["keys"]) == list(saved["falsedemo_sst2_correct"]["keys"])  # the same 4 queries


def test_leaderboard_reads_lm_evals_own_results_of_the_group(group_run, tmp_path):
    from lm_eval_false_demos import leaderboard

    results = {key: value for key, value in group_run.items() if key != "samples"}
    (tmp_path / "results_2026-01-01T00-00-00.json").write_text(json.dumps(results, default=str))
    board, _ = leaderboard.build([tmp_path], tmp_path / "out", bootstrap_iters=0)
    (row,) = board.ordered_rows()
    summary = leaderboard.summarise(row, iterations=0)
    assert summary["permuted_datasets"] == 14
    assert summary["permuted_acc"] == pytest.approx(group_run["groups"]["falsedemo_main_permuted"]["calibrated_acc,none"])
    assert not [warning for warning in board.warnings if "falsedemo_" in warning]
