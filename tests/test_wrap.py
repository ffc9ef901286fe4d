"""`falsedemo wrap` on local lm-eval task YAMLs (tests/fixtures/wrap: json data files): a fixed-label task
(local_kinds: fruit / tool / animal, its own train split) and a per-document-choices task (local_quiz: answer
texts, one split, so demonstrations come from a seeded half of it); every setting; the refusals."""

import json
from pathlib import Path

import pytest

from lm_eval_false_demos.core.corruption import SETTINGS
from lm_eval_false_demos.errors import FalseDemoError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "wrap"
K = 4
FEWSHOT_SEED = 1234


def _copy_user_tasks(folder: Path, replacements=()) -> Path:
    for yaml in FIXTURES.glob("*.yaml"):
        text = yaml.read_text(encoding="utf-8").replace("FIXTURES", str(FIXTURES))
        for old, new in replacements:
            text = text.replace(old, new)
        (folder / yaml.name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def user_tasks(tmp_path_factory) -> Path:
    return _copy_user_tasks(tmp_path_factory.mktemp("user_tasks"))


@pytest.fixture(scope="module")
def wrapped(user_tasks, tmp_path_factory) -> Path:
    from lm_eval_false_demos.cli.main import main

    out = tmp_path_factory.mktemp("wrapped")
    assert main(["wrap", "local_kinds", "local_quiz", "--include_path", str(user_tasks), "--output_dir", str(out),
                 "--num_fewshot", str(K), "--group", "local"]) == 0
    return out


@pytest.fixture(scope="module")
def manager(wrapped):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(wrapped)], include_defaults=False)


def _load(manager, names, k=K, seed=FEWSHOT_SEED):
    from lm_eval_false_demos.integrations.sweep_prompts import load_tasks

    return load_tasks(names, manager, k, seed)


def _demos(context: str):
    """(question, answer) per demonstration and the query of a raw prompt (blocks split by the blank line)."""
    blocks = context.split("\n\n")
    demos = [tuple(block.rsplit(": ", 1)) for block in blocks[1:-1]]
    return blocks[0], demos, blocks[-1]


def test_wrap_writes_every_setting_a_tag_and_a_group_including_the_original(wrapped, user_tasks, manager):
    names = {path.name for path in wrapped.glob("*.yaml")}
    assert names == {f"falsedemo_{task}_{setting}.yaml" for task in ("local_kinds", "local_quiz", "local")
                     for setting in SETTINGS}
    text = (wrapped / "falsedemo_local_kinds_permuted.yaml").read_text()
    include = json.loads(text.split("include: ", 1)[1].split("\n", 1)[0])
    assert (wrapped / include).resolve() == (user_tasks / "kinds.yaml").resolve() and "doc_to_text" not in text
    from lm_eval_false_demos.integrations.wrap_configs import include_path

    assert include_path(user_tasks / "kinds.yaml", user_tasks / "wrapped") == "../kinds.yaml"  # beside: relative
    assert "follow_acc" in text and "calibrated_acc" in text
    quiz = (wrapped / "falsedemo_local_quiz_permuted.yaml").read_text()
    assert "calibrated_acc" not in quiz and "follow_acc" not in quiz and "- metric: acc" in quiz
    assert "- metric: true_label_prob" in quiz
    assert set(manager.match_tasks(["falsedemo_local_kinds"])) == {"falsedemo_local_kinds"}  # the tag
    assert "falsedemo_local_permuted" in manager.all_groups


def test_a_change_to_the_original_reaches_the_wrapped_task(wrapped, user_tasks, manager):
    from lm_eval.tasks import TaskManager

    original = (user_tasks / "kinds.yaml").read_text()
    try:
        (user_tasks / "kinds.yaml").write_text(original.replace("Say what kind", "Name the kind"))
        fresh = TaskManager(include_path=[str(wrapped)], include_defaults=False)
        task = _load(fresh, ["falsedemo_local_kinds_correct"])["falsedemo_local_kinds_correct"]
        assert task.fewshot_context(task.eval_docs[0], K).startswith("Name the kind of thing each item is.\n\n")
    finally:
        (user_tasks / "kinds.yaml").write_text(original)


def test_fixed_labels_every_setting_changes_only_the_demonstrations_answers(manager, user_tasks):
    from lm_eval.tasks import TaskManager

    names = [f"falsedemo_local_kinds_{setting}" for setting in SETTINGS]
    tasks = _load(manager, names)
    original = _load(TaskManager(include_path=[str(user_tasks)], include_defaults=False), ["local_kinds"], k=0)
    original = original["local_kinds"]
    labels = ["plant", "sport", "animal"]
    docs = list(tasks[names[0]].eval_docs)
    assert len(docs) == 9
    for doc in docs:
        contexts = {name.rsplit("_", 1)[1]: task.fewshot_context(doc, task.get_config("num_fewshot"))
                    for name, task in tasks.items()}
        # The query and description are the original's own (its zero-shot context), in every setting.
        assert contexts["zeroshot"] == original.fewshot_context(doc, 0)
        description, correct, query = _demos(contexts["correct"])
        assert len(correct) == K and query == f"Item: {doc['item']}\nKind:"
        _, permuted, _ = _demos(contexts["permuted"])
        questions = [question for question, _ in correct]
        pool = {f"Item: {row['item']}\nKind": labels[row["kind"]] for row in tasks[names[0]].fewshot_docs()}
        assert [answer for _, answer in correct] == [pool[question] for question in questions]
        shift = tasks[names[1]].query_shift(doc)
        assert [answer for _, answer in permuted] == [labels[(labels.index(pool[q]) + shift) % 3] for q in questions]
        for setting in ("half", "random"):
            head, demos, tail = _demos(contexts[setting])
            assert (head, [question for question, _ in demos], tail) == (description, questions, query)
            assert {answer for _, answer in demos} <= set(labels)
        _, half, _ = _demos(contexts["half"])
        assert all(answer in (pool[q], labels[(labels.index(pool[q]) + shift) % 3]) for q, answer in half)


def test_per_document_choices_show_another_of_their_own_choices_from_a_seeded_half(manager):
    names = ["falsedemo_local_quiz_correct", "falsedemo_local_quiz_permuted"]
    tasks = _load(manager, names)
    correct, permuted = tasks[names[0]], tasks[names[1]]
    meta = permuted.config.metadata["falsedemo"]
    assert meta["labels"] == "per_document" and meta["partition"] == {"pool_share": 0.5, "pool": 17, "queries": 7}
    pool = {row["question"]: row for row in permuted.fewshot_docs()}
    assert not pool.keys() & {row["question"] for row in permuted.eval_docs}  # queries never demonstrate
    for doc in permuted.eval_docs:
        shift = permuted.query_shift(doc)
        _, shown, _ = _demos(permuted.fewshot_context(doc, K))
        _, true, _ = _demos(correct.fewshot_context(doc, K))
        assert [q for q, _ in shown] == [q for q, _ in true]
        for (question, answer), (_, right) in zip(shown, true):
            row = pool[question.split("\n")[0]]
            assert right == row["options"][row["answer"]]
            assert answer == row["options"][(row["answer"] + shift) % 4] != right


def test_prompts_are_the_same_on_every_rank_and_in_any_order(manager):
    name = "falsedemo_local_kinds_permuted"
    whole = _load(manager, [name])[name]
    whole.build_all_requests(rank=0, world_size=1)
    contexts = {instance.doc_id: instance.args[0] for instance in whole.instances}
    for rank in (0, 1):
        part = _load(manager, [name])[name]
        part.build_all_requests(rank=rank, world_size=2)
        assert part.instances and all(contexts[i.doc_id] == i.args[0] for i in part.instances)
    # another few-shot seed: other demonstrations
    other = _load(manager, [name], seed=7)[name]
    other.build_all_requests(rank=0, world_size=1)
    assert any(contexts[i.doc_id] != i.args[0] for i in other.instances)


def test_lm_eval_runs_wrapped_tasks_with_hf_earlyexit(manager, tiny_model_dir):
    import lm_eval

    tasks = ["falsedemo_local_kinds_permuted", "falsedemo_local_quiz_permuted", "falsedemo_local_correct"]
    results = lm_eval.simple_evaluate(
        model="hf-earlyexit", model_args={"pretrained": str(tiny_model_dir("llama")), "dtype": "float32",
                                          "exit_layer": 2},
        tasks=tasks, num_fewshot=K, task_manager=manager, bootstrap_iters=0, device="cpu", batch_size=4,
    )
    kinds = results["results"]["falsedemo_local_kinds_permuted"]
    assert {"calibrated_acc,none", "acc,none", "follow_acc,none"} <= set(kinds)
    quiz = results["results"]["falsedemo_local_quiz_permuted"]
    assert "acc,none" in quiz and "calibrated_acc,none" not in quiz and "follow_acc,none" not in quiz
    group = results["results"]["falsedemo_local_correct"]
    assert "acc,none" in group and "calibrated_acc,none" not in group  # not every member has a label set
    assert results["configs"]["falsedemo_local_quiz_permuted"]["metadata"]["falsedemo"]["wraps"] == "local_quiz"


def test_first_tokens_that_collide_are_refused(tmp_path, tiny_model_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_false_demos.cli.main import main

    same_start = "\"{{['the ' + options[0], 'the ' + options[1], 'the ' + options[2], 'the ' + options[3]]}}\""
    user = _copy_user_tasks(tmp_path, [('"{{options}}"', same_start)])
    (user / "kinds.yaml").unlink()
    out = tmp_path / "out"
    assert main(["wrap", "local_quiz", "--include_path", str(user), "--output_dir", str(out), "--num_fewshot", "2"]) == 0
    with pytest.raises(FalseDemoError, match="share their first token"):
        lm_eval.simple_evaluate(
            model="hf-earlyexit", model_args={"pretrained": str(tiny_model_dir("llama")), "dtype": "float32",
                                              "exit_layer": -1},
            tasks=["falsedemo_local_quiz_permuted"], limit=2,
            task_manager=TaskManager(include_path=[str(out)], include_defaults=False), bootstrap_iters=0,
            device="cpu", batch_size=2,
        )


def test_sweep_reads_a_wrapped_fixed_label_task_and_refuses_per_document_choices(manager, tiny_model_dir, tmp_path):
    from lm_eval_false_demos.integrations.sweep import run_sweep

    args = {"pretrained": str(tiny_model_dir("llama")), "dtype": "float32"}
    result = run_sweep(model="hf", model_args=args, tasks=["falsedemo_local_kinds_correct",
                                                            "falsedemo_local_kinds_permuted"],
                       num_fewshot=K, bootstrap_iters=20, task_manager=manager, show_progress=False)
    dataset = result["datasets"]["local_kinds"]
    assert dataset["n"] == 9 and dataset["k"] == K and dataset["num_classes"] == 3
    permuted = result["tasks"]["falsedemo_local_kinds_permuted"]
    assert permuted["label_words"] == ["plant", "sport", "animal"]
    assert permuted["per_layer"]["calibrated_acc"][0] == pytest.approx(1 / 3)  # layer 0 reads chance exactly
    assert result["config"]["data_provenance"]["local_kinds"]["source"]["task"] == "local_kinds"
    # the leaderboard takes the sweep in: a row with the wrapped dataset's numbers (outside the main-14 headline)
    from lm_eval_false_demos import leaderboard
    from lm_eval_false_demos.results import sweep_files

    board = leaderboard.Leaderboard()
    board.add_file(sweep_files.write_outputs(result, tmp_path, plots=False) / "sweep.json")
    (row,) = board.ordered_rows()
    assert not [warning for warning in board.warnings if "sweep" in warning]
    assert row.accuracy("local_kinds", "permuted").value == pytest.approx(permuted["per_layer"]["calibrated_acc"][-1])
    with pytest.raises(FalseDemoError, match="differ per document"):
        run_sweep(model="hf", model_args=args, tasks=["falsedemo_local_quiz_permuted"], num_fewshot=K,
                  task_manager=manager, show_progress=False)


def test_heads_scores_a_wrapped_task(wrapped, tiny_model_dir, tmp_path):
    """falsedemo heads takes its prompts from the lm-eval task, so a wrapped task works there as in the sweep."""
    from lm_eval_false_demos.cli.main import main

    assert main(["heads", "--model_args", f"pretrained={tiny_model_dir('llama')},dtype=float32", "-n", "4", "-k", "2",
                 "--no_progress", "--no_plots", "--task", "falsedemo_local_kinds_permuted", "--include_path",
                 str(wrapped), "-f", str(K), "-o", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("heads_*/heads.json")
    result = json.loads(path.read_text())
    assert result["config"]["task"] == "falsedemo_local_kinds_permuted" and result["config"]["k"] == K
    assert result["config"]["data_provenance"]["local_kinds"]["source"]["task"] == "local_kinds"
    assert len(result["heads"]) == result["config"]["num_layers"] * result["config"]["num_heads"]


# ------------------------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def plain_manager(user_tasks):
    from lm_eval.tasks import TaskManager

    from lm_eval_false_demos._hook import task_config_dir

    return TaskManager(include_path=[task_config_dir(), str(user_tasks)], include_defaults=False)


@pytest.mark.parametrize("tasks, options, message", [
    (["local_story"], {}, "output_type 'generate_until'; falsedemo wrap takes multiple_choice"),
    (["no_such_task"], {}, "task 'no_such_task' not found"),
    (["falsedemo_unnatural_correct"], {}, "one of ours"),
    (["falsedemo_unnatural"], {}, "is a tag"),
    (["local_kinds"], {"name": "unnatural"}, "'falsedemo_unnatural_correct' .* is an existing task"),
    (["local_kinds"], {"group": "main"}, "'falsedemo_main_correct' .* existing task"),
    (["local_kinds", "local_quiz"], {"name": "x"}, "--name names one wrapped task"),
    (["local_kinds"], {"num_fewshot": 19}, "num_fewshot 19 but only 18 documents"),
    (["local_quiz"], {"num_fewshot": 18}, r"only 17 documents .*half of its evaluation split"),
    (["local_quiz"], {"sampler": "class_uniform"}, "class_uniform needs a fixed label set; local_quiz's choices"),
])
def test_refusals_are_one_line(plain_manager, tmp_path, tasks, options, message):
    from lm_eval_false_demos.integrations import wrap_configs

    with pytest.raises(FalseDemoError, match=message) as error:
        wrap_configs.plan(tasks, plain_manager, wrap_configs.WrapOptions(**options), tmp_path)
    assert "\n" not in str(error.value)
    assert not list(tmp_path.iterdir())  # nothing written


def test_cli_refusal_is_one_line_and_exit_2(user_tasks, tmp_path, capsys):
    from lm_eval_false_demos.cli.main import main

    with pytest.raises(SystemExit) as stop:
        main(["wrap", "local_story", "--include_path", str(user_tasks), "--output_dir", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("falsedemo wrap: error: task 'local_story' has output_type 'generate_until'")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- our datasets as one case


def test_sst2_as_a_plain_lm_eval_task_wrapped_equals_falsedemo_sst2(tmp_path, data_dir, tiny_model_dir):
    """A plain lm-eval YAML for SST-2 (the paper's prompt, label words and splits; local json rows with their
    row ids) wrapped with the paper's draw gives falsedemo_sst2_*'s prompts and per-document log-likelihoods."""
    import lm_eval.api.registry
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager

    from lm_eval_false_demos.cli.main import main

    data = tmp_path / "sst2"
    data.mkdir()
    for split in ("train", "validation"):
        rows = [json.loads(line) for line in (data_dir / "sst2" / f"{split}.jsonl").read_text().splitlines()]
        (data / f"{split}.jsonl").write_text("".join(json.dumps({**row, "uid": f"{split}:{index}"}) + "\n"
                                                     for index, row in enumerate(rows)))
    user = tmp_path / "user"
    user.mkdir()
    (user / "sst2_paper.yaml").write_text((FIXTURES / "sst2_paper.yaml").read_text().replace("SST2DATA", str(data)))
    out = tmp_path / "wrapped"
    assert main(["wrap", "sst2_paper", "--include_path", str(user), "--output_dir", str(out), "--name", "sst2paper",
                 "--sampler", "class_uniform", "--doc_id", "uid", "--stream_key", "sst2"]) == 0
    from lm_eval_false_demos._hook import task_config_dir

    manager = TaskManager(include_path=[task_config_dir(), str(out)], include_defaults=False)
    theirs = _load(manager, [f"falsedemo_sst2paper_{setting}" for setting in SETTINGS])
    ours = _load(manager, [f"falsedemo_sst2_{setting}" for setting in SETTINGS])
    lm = lm_eval.api.registry.get_model("hf").create_from_arg_obj(
        {"pretrained": str(tiny_model_dir("llama")), "dtype": "float32"}, {"batch_size": 4, "device": "cpu"})
    for setting in SETTINGS:
        wrapped, own = theirs[f"falsedemo_sst2paper_{setting}"], ours[f"falsedemo_sst2_{setting}"]
        by_uid = {doc["uid"]: doc for doc in wrapped.eval_docs}
        assert len(by_uid) == len(own.eval_docs) == 872
        requests = []
        for doc in list(own.eval_docs)[:6]:
            k = own.get_config("num_fewshot")
            assert wrapped.get_config("num_fewshot") == k
            context = own.fewshot_context(doc, k)
            assert wrapped.fewshot_context(by_uid[doc["uid"]], k) == context, (setting, doc["uid"])
            for task, item in ((own, doc), (wrapped, by_uid[doc["uid"]])):
                requests.append([Instance("loglikelihood", item, (task.fewshot_context(item, k), " " + choice), 0)
                                 for choice in task.doc_to_choice(item)])
        scores = [[result[0] for result in lm.loglikelihood(pair)] for pair in requests]
        assert scores[0::2] == scores[1::2]
        assert (wrapped.process_results(by_uid[doc["uid"]], [(s, False) for s in scores[-1]])["acc"]
                == own.process_results(doc, [(s, False) for s in scores[-2]])["acc"])
