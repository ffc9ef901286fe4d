"""The lm-eval adapter end to end through simple_evaluate (tiny random Llama, local data, offline)."""

import random

import numpy as np
import pytest
from lm_eval.tasks import TaskManager

from lm_eval_false_demos._hook import task_config_dir
from lm_eval_false_demos.integrations import task_yamls
from lm_eval_false_demos.core.corruption import SETTINGS
from lm_eval_false_demos.core.datasets import DATASETS, get_spec
from lm_eval_false_demos.core.data_loading import data_provenance, load_examples
from lm_eval_false_demos.integrations.tasks import calibrated_accuracy_aggregation
from lm_eval_false_demos.core.metrics import calibrated_accuracy, normalise
from lm_eval_false_demos.core.prompts import build_prompt, query_shift

TASKS = ["falsedemo_unnatural_correct", "falsedemo_unnatural_permuted", "falsedemo_unnatural_zeroshot"]


def test_generated_yamls_are_in_sync():
    from pathlib import Path

    from lm_eval_false_demos._hook import task_config_dir

    # the generator writes the folder lm-eval reads (the one installed as lm_eval_false_demos.task_configs)
    assert task_yamls.TASK_CONFIG_DIR.resolve() == Path(task_config_dir()).resolve()
    assert task_yamls.stale_files() == [], "run: python -m lm_eval_false_demos.integrations.task_yamls"


def test_task_manager_sees_every_task_and_tag():
    manager = TaskManager(include_defaults=False, include_path=task_config_dir())
    names = set(manager.all_tasks)
    expected = {f"falsedemo_{key}_{setting}" for key in DATASETS for setting in SETTINGS}
    assert len(expected) == 80 and expected <= names
    assert {"falsedemo", "falsedemo_main", "falsedemo_permuted", "falsedemo_zeroshot", "falsedemo_trec"} <= names
    main = manager.match_tasks(["falsedemo_main"])
    assert main == ["falsedemo_main"]


def test_aggregation_is_a_pure_function_of_the_gathered_items():
    rng = np.random.default_rng(0)
    scores = normalise(rng.standard_normal((50, 3)))
    gold = rng.integers(0, 3, 50)
    items = [(int(g), s.tolist()) for g, s in zip(gold, scores)]
    expected = calibrated_accuracy(scores, gold)
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    assert calibrated_accuracy_aggregation(items) == calibrated_accuracy_aggregation(shuffled) == expected
    assert isinstance(expected, float)


@pytest.fixture(scope="module")
def evaluation(tiny_model_dir):
    import lm_eval

    model_dir = tiny_model_dir("llama")
    model_args = {"pretrained": str(model_dir), "dtype": "float32"}
    manager = TaskManager(include_defaults=False, include_path=task_config_dir(), metadata=model_args)
    results = lm_eval.simple_evaluate(
        model="hf", model_args=model_args, tasks=TASKS, num_fewshot=3, limit=6, device="cpu", batch_size=8,
        bootstrap_iters=0, task_manager=manager, log_samples=True,
    )
    return results


def test_metrics_reported_per_task(evaluation):
    results = evaluation["results"]
    for task in TASKS:
        row = results[task]
        for metric in ("calibrated_acc,none", "acc,none", "true_label_prob,none"):
            assert isinstance(row[metric], float) and 0.0 <= row[metric] <= 1.0
        assert ("follow_acc,none" in row) == task.endswith("permuted")
    assert evaluation["n-shot"]["falsedemo_unnatural_correct"] == 3
    assert evaluation["n-shot"]["falsedemo_unnatural_zeroshot"] == 0


def test_contexts_are_our_paired_prompts_and_metrics_recompute(evaluation):
    spec = get_spec("unnatural")
    pool, queries = load_examples("unnatural")
    by_uid = {q.uid: q for q in queries}
    seed = evaluation["config"]["fewshot_seed"]
    assert seed == 1234
    samples = {task: {s["doc"]["uid"]: s for s in evaluation["samples"][task]} for task in TASKS}
    assert samples["falsedemo_unnatural_correct"].keys() == samples["falsedemo_unnatural_permuted"].keys()
    for task in TASKS:
        setting = task.rsplit("_", 1)[1]
        k = 0 if setting == "zeroshot" else 3
        items = []
        for uid, sample in samples[task].items():
            query = by_uid[uid]
            context = sample["arguments"][0][0]
            assert context == build_prompt(spec, query, pool, k, setting, seed).context
            assert [a[1] for a in sample["arguments"]] == [" " + w for w in spec.label_word_list]
            lls = [float(r[0]) for r in sample["filtered_resps"]]
            items.append((query.label, normalise(lls).tolist()))
            assert sample["true_label_prob"] == pytest.approx(normalise(lls)[query.label])
            if setting == "permuted":
                follow = (query.label + query_shift(spec, uid, seed)) % 3
                assert sample["follow_acc"] == float(int(np.argmax(lls)) == follow)
        assert evaluation["results"][task]["calibrated_acc,none"] == pytest.approx(
            calibrated_accuracy_aggregation(items))
        assert evaluation["results"][task]["true_label_prob,none"] == pytest.approx(
            np.mean([scores[gold] for gold, scores in items]))
    correct = build_prompt(spec, by_uid[next(iter(samples[TASKS[0]]))], pool, 3, "correct", seed)
    permuted = build_prompt(spec, by_uid[next(iter(samples[TASKS[0]]))], pool, 3, "permuted", seed)
    assert correct.demo_uids == permuted.demo_uids and correct.context != permuted.context


def test_wrong_share_from_metadata_grades_permuted(tiny_model_dir):
    manager = TaskManager(include_defaults=False, include_path=task_config_dir(), metadata={"wrong_share": 0})
    task = manager.load(["falsedemo_unnatural_permuted"])["tasks"]["falsedemo_unnatural_permuted"]
    task.set_fewshot_seed(1234)
    doc = task.dataset["queries"][0]
    prompt = task.build_prompt_for(doc, 6)
    assert prompt.demo_shown_labels == prompt.demo_true_labels  # 0 % wrong
    assert task.token_counter is None  # no model known: built without a budget


def test_task_learns_the_tokenizer_budget_from_model_args(tiny_model_dir):
    manager = TaskManager(include_defaults=False, include_path=task_config_dir(), metadata={"pretrained": str(tiny_model_dir("llama")),
                                                            "max_length": 600})
    task = manager.load(["falsedemo_sst2_correct"])["tasks"]["falsedemo_sst2_correct"]
    task.set_fewshot_seed(1234)
    assert task.max_tokens == 600
    for doc in task.dataset["queries"].select(range(10)):
        context = task.fewshot_context(doc, 4)
        assert context.count("\nAnswer: ") == 4
        assert task.token_counter(context) + task.token_counter(" Positive") + 1 <= 600
    with pytest.raises(ValueError, match="cannot fit k=40 demonstrations in max_tokens=600"):
        task.fewshot_context(task.dataset["queries"][0], 40)


def test_colliding_label_first_tokens_fail_at_task_load(tiny_model_dir):
    # The tiny tokenizer splits " Sports" and " Science" after the same first token " S".
    manager = TaskManager(include_defaults=False, include_path=task_config_dir(), metadata={"pretrained": str(tiny_model_dir("llama"))})
    with pytest.raises(ValueError, match="'Sports' and 'Science' share their first token"):
        manager.load(["falsedemo_ag_news_correct"])


def test_results_record_data_source_plugin_version_and_label_scoring(evaluation, data_dir, monkeypatch):
    import lm_eval_false_demos

    metadata = evaluation["configs"]["falsedemo_unnatural_permuted"]["metadata"]
    assert metadata["data_source"] == "builtin" and metadata["plugin_version"] == lm_eval_false_demos.__version__
    assert "first label token" in metadata["label_scoring"]
    monkeypatch.setenv("FALSEDEMO_DATA_DIR", str(data_dir))
    task = TaskManager(include_defaults=False, include_path=task_config_dir()).load(["falsedemo_sst2_correct"])["tasks"]["falsedemo_sst2_correct"]
    metadata = task.dump_config()["metadata"]
    assert metadata["data_source"] == str(data_dir / "sst2")
    assert metadata["data_provenance"] == {
        "source": {"kind": "local", "path": str((data_dir / "sst2").resolve())},
        "split_rows": {"train": 6920, "validation": 872}, "pool": 6920, "queries": 872,
        "fingerprint": data_provenance("sst2")["fingerprint"]}
    assert evaluation["configs"]["falsedemo_unnatural_permuted"]["metadata"]["data_provenance"]["source"] == {
        "kind": "builtin"}


def test_no_follow_acc_where_no_false_label_was_shown():
    """--num_fewshot 0 on a corrupted task shows no demonstration, so no false label: follow_acc is not reported
    (issue 24); with k >= 1 it is, as the paper defines it."""
    manager = TaskManager(include_defaults=False, include_path=task_config_dir())
    task = manager.load(["falsedemo_unnatural_permuted"])["tasks"]["falsedemo_unnatural_permuted"]
    doc = task.dataset["queries"][0]
    results = [(-float(index), False) for index in range(task.spec.num_classes)]
    assert "follow_acc" in task.process_results(doc, results)
    task.set_config(key="num_fewshot", value=0)
    assert "follow_acc" not in task.process_results(doc, results)
    from lm_eval_false_demos.analysis.layer_curves import task_metrics

    assert "follow_acc" not in task_metrics("permuted", 0) and "follow_acc" not in task_metrics("correct", 4)
    assert "follow_acc" in task_metrics("permuted", 1) and "follow_acc" in task_metrics("half", 4)
