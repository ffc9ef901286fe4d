"""The .pth hook: our tasks and models appear in lm-eval without flags, built-ins keep working."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LM_EVAL = Path(sys.executable).with_name("lm_eval")


def _env():
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def test_ls_tasks_lists_ours_and_the_built_ins():
    out = subprocess.run([str(LM_EVAL), "ls", "tasks"], capture_output=True, text=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("falsedemo_sst2_permuted", "falsedemo_unnatural_zeroshot", "falsedemo_dbpedia_14_half",
                 "arc_easy", "hellaswag"):
        assert name in out.stdout


def test_model_registry_keeps_hf_and_registers_ours_lazily():
    from lm_eval.api.registry import get_model, model_registry
    from lm_eval.models.huggingface import HFLM

    assert get_model("hf") is HFLM
    from lm_eval_false_demos._hook import MODEL_CLASSES

    for alias, target in MODEL_CLASSES.items():
        assert alias in model_registry
        module_name, class_name = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            pytest.skip(f"{module_name} not written yet")
        cls = getattr(module, class_name)
        assert target == f"{cls.__module__}:{cls.__name__}"
        assert get_model(alias) is cls


def test_cli_runs_a_falsedemo_task_with_the_builtin_hf_model(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("llama")
    command = [
        str(LM_EVAL), "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
        "--tasks", "falsedemo_unnatural_permuted", "--num_fewshot", "2", "--limit", "4", "--device", "cpu",
        "--batch_size", "4", "--output_path", str(tmp_path), "--seed", "0,1234,1234,7",
    ]
    out = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result_files = list(tmp_path.rglob("results_*.json"))
    assert len(result_files) == 1
    results = json.loads(result_files[0].read_text())
    row = results["results"]["falsedemo_unnatural_permuted"]
    assert 0.0 <= row["calibrated_acc,none"] <= 1.0 and 0.0 <= row["follow_acc,none"] <= 1.0
    assert results["config"]["fewshot_seed"] == 7
    assert results["n-shot"]["falsedemo_unnatural_permuted"] == 2
    assert results["n-samples"]["falsedemo_unnatural_permuted"]["effective"] == 4


def test_regular_wheel_ships_the_hook_the_task_yamls_and_the_page(tmp_path):
    """A regular (non-editable) install gets everything the editable install tests rely on."""
    import zipfile

    from lm_eval_false_demos.integrations import task_yamls

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), "."],
        cwd=Path(__file__).resolve().parents[1], check=True, env=_env(),
    )
    (wheel,) = tmp_path.glob("lm_eval_false_demos-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"lm_eval_false_demos.pth", "lm_eval_false_demos.start"} <= names
    assert "lm_eval_false_demos/leaderboard/page.html" in names
    yamls = {name.rsplit("/", 1)[1] for name in names if name.startswith("lm_eval_false_demos/task_configs/")}
    expected = {path.name for path in task_yamls.TASK_CONFIG_DIR.glob("*.yaml")}
    assert len(expected) == 160 and expected <= yamls  # 80 tasks, 70 SST-2 format tasks, 5 all-formats tasks, 5 groups
    templates = {path.name for path in task_yamls.TASK_CONFIG_DIR.glob("_falsedemo_*_yaml")}
    assert len(templates) == 6 and templates <= yamls  # the shared one and one per setting, which the tasks include


def test_cli_reports_our_errors_in_one_line_without_a_traceback(tiny_model_dir, tmp_path):
    command = [
        str(LM_EVAL), "--model", "hf-earlyexit", "--model_args", f"pretrained={tiny_model_dir('llama')},exit_layer=9",
        "--tasks", "falsedemo_unnatural_permuted", "--limit", "2", "--device", "cpu",
    ]
    out = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "lm_eval: error: exit_layer=9" in out.stderr and "0..4" in out.stderr, out.stderr[-2000:]


def _one_task_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "my_only_task.yaml").write_text(
        "task: my_only_task\ndataset_path: json\ndataset_kwargs:\n  data_files: {test: none.jsonl}\n"
        "test_split: test\noutput_type: loglikelihood\ndoc_to_text: '{{text}}'\ndoc_to_target: ' {{label}}'\n"
    )
    return folder


def test_task_manager_without_defaults_lists_only_the_callers_paths(tmp_path):
    """lm-eval's own test_include_defaults_false_with_custom_path, with the plugin installed: a caller asking for
    its own tasks alone gets them alone, and its include_path is recorded as given."""
    from lm_eval.tasks import TaskManager

    from lm_eval_false_demos._hook import task_config_dir

    folder = _one_task_folder(tmp_path / "mine")
    manager = TaskManager(include_defaults=False, include_path=str(folder))
    assert manager.all_tasks == ["my_only_task"]
    assert manager.include_path == str(folder)
    assert TaskManager(include_defaults=False).all_tasks == []
    # Ours are there when named, as any other folder.
    named = TaskManager(include_defaults=False, include_path=[task_config_dir(), str(folder)])
    assert "my_only_task" in named.all_tasks and "falsedemo_sst2_permuted" in named.all_tasks


def test_task_manager_with_defaults_lists_lm_evals_tasks_unchanged_plus_ours(tmp_path):
    """Everything lm-eval lists without the plugin is listed, from the same file; the only additions are ours."""
    from lm_eval.tasks import TaskManager

    from lm_eval_false_demos._hook import task_config_dir

    folder = _one_task_folder(tmp_path / "mine")
    ours = TaskManager(include_defaults=False, include_path=task_config_dir())
    plugged = TaskManager(include_path=str(folder))
    plain = TaskManager.__new__(TaskManager)
    TaskManager.__init__.__wrapped__(plain, include_path=str(folder))  # lm-eval's own __init__, unpatched
    assert plugged.include_path == plain.include_path == str(folder)
    assert "falsedemo_sst2_permuted" not in plain.all_tasks and "my_only_task" in plain.all_tasks
    added = set(plugged.all_tasks) - set(plain.all_tasks)
    assert set(plain.all_tasks) <= set(plugged.all_tasks)
    assert added == set(ours.all_tasks), sorted(added ^ set(ours.all_tasks))[:5]
    assert {name: plugged._index[name] for name in plain.all_tasks} == dict(plain._index)
    for listing in ("all_groups", "all_subtasks", "all_tags"):
        assert set(getattr(plain, listing)) <= set(getattr(plugged, listing))
        assert set(getattr(plugged, listing)) - set(getattr(plain, listing)) == set(getattr(ours, listing))
