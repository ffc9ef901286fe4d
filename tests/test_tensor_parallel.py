"""Tensor parallel (``tp_plan=auto``) under torchrun and accelerate launch: 2 CPU processes over gloo give the one-process numbers.

The model is the tiny random Llama (4 attention heads, 2 key/value heads: ``num_key_value_heads`` must divide by
the number of processes), so each process holds 2 heads of every block and half the vocabulary of the output
head. Each test launches one command exactly as docs/scale.md's CPU recipe writes it (``torchrun --standalone
--nproc_per_node 2 ...``, run as ``python -m torch.distributed.run`` to stay in this interpreter, or accelerate
launch with ``ACCELERATE_USE_CPU=true ... --multi_gpu --num_processes 2``) and compares
with the same command in one process: per-document log-likelihoods to 1e-5, calibrated accuracy, sweep curves,
head ranking and scores, the trained lens; and every command leaves exactly one output.

Before the fixes these commands were wrong in two ways the tests below would catch: ``hf-ablate heads=1:3``
zeroed columns of the wrong process's heads (calibrated accuracy 0.375 against 0.500 on 8 permuted queries,
k = 5; the issue saw 0.250 against 0.375), and the sweep crashed
indexing the vocabulary-sharded head with label ids ("aten.index.Tensor got mixed torch.Tensor and DTensor").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lm_eval_false_demos.cli import main as cli
from lm_eval_false_demos.errors import FalseDemoError
from tiny_models import build_tiny_model, random_tuned_lens, save_tuned_lens

TASKS = ["falsedemo_unnatural_correct", "falsedemo_unnatural_permuted"]
K, LIMIT, SEEDS = 5, 8, "0,1234,1234,1234"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# accelerate starts several CPU processes only with --multi_gpu and ACCELERATE_USE_CPU=true (gloo)
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def _free_port() -> int:
    with socket.socket() as probe:  # the other launch tests may hold accelerate's default port meanwhile
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(*command, cwd: Path, launcher=TORCHRUN) -> subprocess.CompletedProcess:
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                       TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="true")
    if launcher is ACCELERATE:
        launcher = [*ACCELERATE, "--main_process_port", str(_free_port())]
    completed = subprocess.run([*launcher, *command], env=environment, cwd=cwd, capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


@pytest.fixture(scope="module")
def llama(tiny_model_dir) -> Path:
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def lens_dir(tmp_path_factory) -> Path:
    model, _ = build_tiny_model("llama")
    return save_tuned_lens(random_tuned_lens(model, 4, seed=3, scale=0.2), tmp_path_factory.mktemp("lens"))


def _assert_close(ours, theirs, tolerance: float, where: str = "") -> None:
    """Nested JSON values equal, floats within ``tolerance``."""
    if isinstance(theirs, dict):
        assert ours.keys() == theirs.keys(), where
        for key in theirs:
            _assert_close(ours[key], theirs[key], tolerance, f"{where}.{key}")
    elif isinstance(theirs, list):
        assert len(ours) == len(theirs), where
        for index, (a, b) in enumerate(zip(ours, theirs)):
            _assert_close(a, b, tolerance, f"{where}[{index}]")
    elif isinstance(theirs, float):
        assert ours == pytest.approx(theirs, abs=tolerance), where
    else:
        assert ours == theirs, where


def _samples(folder: Path, task: str) -> dict[int, list[float]]:
    """doc_id -> the log-likelihood of each choice, from lm-eval's samples file."""
    (path,) = folder.rglob(f"samples_{task}_*.jsonl")
    rows = (json.loads(line) for line in path.read_text().splitlines())
    return {row["doc_id"]: [float(response[0][0]) for response in row["resps"]] for row in rows}


def _one_process(model: str, model_args: dict, folder: Path) -> None:
    """The same evaluation in this process (lm-eval's simple_evaluate), its samples saved as the CLI saves them."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from lm_eval_false_demos._hook import task_config_dir

    # our tasks without indexing lm-eval's
    manager = TaskManager(include_defaults=False, include_path=task_config_dir(), metadata=model_args)
    results = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[TASKS[1]], num_fewshot=K,
                                      limit=LIMIT, device="cpu", batch_size=4, log_samples=True,
                                      task_manager=manager)
    tracker = EvaluationTracker(output_path=str(folder))
    tracker.save_results_aggregated(results=results, samples=results["samples"])
    tracker.save_results_samples(task_name=TASKS[1], samples=results["samples"][TASKS[1]])


def test_lm_eval_hf_ablate_with_early_exit_and_tuned_lens(llama, lens_dir, tmp_path):
    """Head zeroing maps a global head to the process owning it; the early-exit readout through the tuned
    lens (translators replicated, on replicated residuals) and the gathered full-vocabulary head follow."""
    model_args = dict(pretrained=str(llama), heads="1:3;2:0", exit_layer=3, lens=f"tuned:{lens_dir}",
                      dtype="float32")
    given = ",".join(f"{key}={value}" for key, value in model_args.items())
    _launch("-m", "lm_eval", "--model", "hf-ablate", "--model_args", given + ",tp_plan=auto",
            "--tasks", TASKS[1], "--num_fewshot", str(K), "--limit", str(LIMIT), "--device", "cpu",
            "--batch_size", "4", "--log_samples", "--output_path", str(tmp_path / "tp"), cwd=tmp_path)
    _one_process("hf-ablate", model_args, tmp_path / "one")
    _one_process("hf-earlyexit", {key: value for key, value in model_args.items() if key != "heads"},
                 tmp_path / "unablated")

    tp, one, unablated = (_samples(tmp_path / name, TASKS[1]) for name in ("tp", "one", "unablated"))
    assert len(tp) == LIMIT and tp.keys() == one.keys()
    for doc in one:
        assert tp[doc] == pytest.approx(one[doc], abs=1e-5), doc
    # The heads matter: zeroing them on the wrong process (or on none) would give the unablated numbers.
    assert max(abs(a - b) for doc in one for a, b in zip(one[doc], unablated[doc])) > 1e-3
    results = [json.loads(next((tmp_path / name).rglob("results_*.json")).read_text())["results"][TASKS[1]]
               for name in ("tp", "one")]
    assert results[0]["calibrated_acc,none"] == results[1]["calibrated_acc,none"]
    assert len(list((tmp_path / "tp").rglob("results_*.json"))) == 1  # lm-eval writes on LOCAL_RANK 0 only


# Runs the CLI under the launcher and kills its own process (SIGKILL: nothing is flushed on the way out) once
# the writer has saved STOP_AFTER prompts, so the launch stops mid-run at a known point; torchrun then ends the
# other process.
STOPPING_CLI = """
import os, signal, sys
from lm_eval_false_demos.results import checkpoints
from lm_eval_false_demos.cli.main import main
real_flush = checkpoints.PromptChunks.flush
def flush_then_die(self):
    real_flush(self)
    folder = self.checkpoint.run_directory  # None on a process that does not write
    if folder is not None and len(list((folder / "checkpoint").glob("part-*.npz"))) * 3 >= int(os.environ["STOP_AFTER"]):
        os.kill(os.getpid(), signal.SIGKILL)
checkpoints.PromptChunks.flush = flush_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_sweep_reads_label_rows_of_the_vocabulary_sharded_head_and_resumes(llama, lens_dir, tmp_path):
    """The tensor-parallel sweep is killed after 6 of its 16 prompts are saved and resumed with --resume under
    tensor parallel again: the one-process numbers, in the one run folder."""
    model_args = f"pretrained={llama},heads=1:3,lens=tuned:{lens_dir},dtype=float32"
    arguments = ["sweep", "--model", "hf-ablate", "--tasks", ",".join(TASKS), "--num_fewshot", str(K),
                 "--limit", str(LIMIT), "--seed", SEEDS, "--batch_size", "3", "--device", "cpu",
                 "--bootstrap_iters", "20", "--no_plots"]
    tp_arguments = [*arguments, "--model_args", model_args + ",tp_plan=auto", "--output_path", str(tmp_path / "tp")]
    script = tmp_path / "stopping_cli.py"
    script.write_text(STOPPING_CLI)
    stopped = subprocess.run([*TORCHRUN, str(script), *tp_arguments, "--checkpoint_seconds", "0"], cwd=tmp_path,
                             env=dict(os.environ, OMP_NUM_THREADS="1", STOP_AFTER="6", TOKENIZERS_PARALLELISM="false"),
                             capture_output=True, text=True, timeout=600)
    assert stopped.returncode != 0, "the tensor-parallel sweep was not stopped"
    (tp_folder,) = (tmp_path / "tp").iterdir()
    assert not (tp_folder / "sweep.json").exists() and len(list((tp_folder / "checkpoint").glob("part-*.npz"))) == 2

    _launch("-m", "lm_eval_false_demos.cli", *tp_arguments, "--resume", str(tp_folder), cwd=tmp_path)
    assert cli.main([*arguments, "--model_args", model_args, "--output_path", str(tmp_path / "one")]) == 0

    assert list((tmp_path / "tp").iterdir()) == [tp_folder]  # exactly one run folder: only the writer writes
    assert not (tp_folder / "checkpoint").exists()
    (one_folder,) = (tmp_path / "one").iterdir()
    tp, one = (json.loads((folder / "sweep.json").read_text()) for folder in (tp_folder, one_folder))
    assert tp["timing"]["prompts_from_checkpoint"] == 6 and tp["timing"]["forward_passes"] == 10
    assert tp["config"]["lens"] == one["config"]["lens"] and tp["config"]["lens"]["kind"] == "tuned"
    assert tp["config"]["lens_parity"]["max_abs_diff"] < 1e-4
    # The identity: every query's label probabilities at every layer, to float32 rounding.
    scores = [np.load(folder / "query_scores.npz") for folder in (tp_folder, one_folder)]
    for name in scores[1].files:
        if scores[1][name].dtype.kind == "f":
            np.testing.assert_allclose(scores[0][name], scores[1][name], atol=1e-5, err_msg=name)
    # The curves follow from those scores, but an accuracy at a layer where two queries' scores of a label tie
    # (layer 0 reads the same last token's embedding in every prompt) is decided by float rounding, which a
    # tensor-parallel sum orders differently: compare the accuracies only where the scores decide them.
    tied = _near_tied_layers(scores[1], 1e-5)
    for task in one["tasks"]:
        for metric, curve in one["tasks"][task]["per_layer"].items():
            for layer, value in enumerate(curve):
                if metric == "true_label_prob" or (task, layer) not in tied:
                    assert tp["tasks"][task]["per_layer"][metric][layer] == pytest.approx(value, abs=1e-6), \
                        (task, metric, layer)
    if not tied:  # every analysis of the curves (critical layer, early exit, intervals) then agrees too
        _assert_close(tp["datasets"], one["datasets"], 1e-6)
    for dataset, comparison in one["datasets"].items():  # the last layer reads the model's own output
        if not any(task_layer in tied for task_layer in _last_layers(one, dataset)):
            _assert_close(tp["datasets"][dataset]["last_layer"], comparison["last_layer"], 1e-6)


def _last_layers(sweep: dict, dataset: str) -> list[tuple[str, int]]:
    return [(task, len(curves["per_layer"]["acc"]) - 1) for task, curves in sweep["tasks"].items()
            if curves["dataset"] == dataset]


def _near_tied_layers(query_scores, tolerance: float) -> set[tuple[str, int]]:
    """(task, layer) where two queries' probabilities of one label lie within ``tolerance`` of each other."""
    tied = set()
    for index, task in enumerate(query_scores["tasks"]):
        probabilities = query_scores[f"scores_{index}"]  # [N, L+1, K]
        gaps = np.diff(np.sort(probabilities, axis=0), axis=0)  # [N-1, L+1, K]
        for layer in np.flatnonzero((gaps < tolerance).any(axis=(0, 2))):
            tied.add((str(task), int(layer)))
    return tied


def test_heads_scores_every_head_once_and_ablates_on_the_owning_process(llama, tmp_path):
    """Launched by accelerate this time: tp_plan=auto runs under either launcher."""
    arguments = ["heads", "--num_prompts", "6", "--num_fewshot", str(K), "--top_k", "2", "--evaluate", "unnatural",
                 "--limit", str(LIMIT), "--random_draws", "2", "--device", "cpu", "--no_plots", "--no_progress"]
    _launch("-m", "lm_eval_false_demos.cli", *arguments, "--model_args", f"pretrained={llama},tp_plan=auto",
            "--output_path", str(tmp_path / "tp"), cwd=tmp_path, launcher=ACCELERATE)
    assert cli.main([*arguments, "--model_args", f"pretrained={llama}", "--output_path", str(tmp_path / "one")]) == 0

    (tp_folder,) = (tmp_path / "tp").iterdir()
    (one_folder,) = (tmp_path / "one").iterdir()
    tp, one = (json.loads((folder / "heads.json").read_text()) for folder in (tp_folder, one_folder))
    assert len(tp["heads"]) == 16  # 4 blocks x 4 heads, each read once although each process holds 2 of them
    by_head = {(row["layer"], row["head"]): row for row in one["heads"]}
    for row in tp["heads"]:
        expected = by_head[row["layer"], row["head"]]
        for score in ("prefix_matching", "label_promoting"):
            assert row[score] == pytest.approx(expected[score], abs=1e-5), (row, expected)
    # The same ranking, up to heads whose scores tie within the tolerance.
    for ours, theirs in zip(tp["heads"], one["heads"]):
        if (ours["layer"], ours["head"]) != (theirs["layer"], theirs["head"]):
            assert ours["prefix_matching"] == pytest.approx(theirs["prefix_matching"], abs=1e-6)
    assert tp["top_k"] == one["top_k"]
    _assert_close(tp["evaluation"], one["evaluation"], 1e-5)
    # Zeroing the top heads changes accuracy on correct prompts here: the ablation in --evaluate acts.
    assert one["evaluation"]["datasets"]["unnatural"]["top_k"]["correct_change"] != 0


def test_lens_training_trains_the_same_translators(llama, tmp_path):
    arguments = ["lens", "train", "--datasets", "trec,sst2", "--tokens", "2048", "--seq_len", "32", "--batch_size",
                 "8", "--positions", "0", "--held_out_sequences", "8", "--seed", "1", "--lr", "5"]
    _launch("-m", "lm_eval_false_demos.cli", *arguments, "--model_args",
            f"pretrained={llama},dtype=float32,tp_plan=auto", "--output", str(tmp_path / "tp"), cwd=tmp_path)
    assert cli.main([*arguments, "--model_args", f"pretrained={llama},dtype=float32",
                     "--output", str(tmp_path / "one")]) == 0
    tp, one = (torch.load(tmp_path / name / "params.pt") for name in ("tp", "one"))
    assert tp.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(tp[name], one[name], atol=1e-5, rtol=0)
    summaries = [json.loads((tmp_path / name / "training.json").read_text()) for name in ("tp", "one")]
    _assert_close(summaries[0]["held_out"], summaries[1]["held_out"], 1e-5)
    assert sorted(path.name for path in (tmp_path / "tp").iterdir()) == ["config.json", "params.pt", "training.json"]


def test_qkv_head_zeroing_under_tensor_parallel_is_refused_before_loading():
    from lm_eval_false_demos.integrations.models import AblatedHFLM

    with pytest.raises(FalseDemoError, match="head_method=qkv is not supported with tp_plan.*use head_method=zero"):
        AblatedHFLM(pretrained="/nonexistent", heads="1:3", head_method="qkv", tp_plan="auto")


# ------------------------------------------------------------------------------- the split, in one process


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 300), count=st.integers(1, 9), data=st.data())
def test_shard_windows_tile_the_dimension_and_held_rows_add_up_to_the_rows(size, count, data):
    """Whatever the vocabulary size and the number of processes (uneven splits, processes holding nothing),
    the windows tile 0..size in mesh order, and the rows each process holds add up to ``weight[ids]``."""
    from lm_eval_false_demos.core.tensor_parallel import rows_held, shard_windows

    windows = shard_windows(size, count)
    assert len(windows) == count and sum(length for _, length in windows) == size
    position = 0
    for offset, length in windows:
        assert length >= 0 and (offset == position or length == 0)
        position += length
    weight = torch.randn(size, 3, generator=torch.Generator().manual_seed(size * 31 + count))
    ids = torch.tensor(data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=6)))
    total = sum(rows_held(weight[offset:offset + length], offset, ids) for offset, length in windows)
    torch.testing.assert_close(total, weight[ids], atol=0, rtol=0)
    per_sequence = ids.view(1, -1).expand(2, -1)  # [B, K] label sets
    total = sum(rows_held(weight[offset:offset + length], offset, per_sequence) for offset, length in windows)
    torch.testing.assert_close(total, weight[per_sequence], atol=0, rtol=0)


def test_tensor_parallel_combinations_that_cannot_work_are_one_line_before_loading(llama, tmp_path, monkeypatch,
                                                                                    capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")  # 3 processes cannot share the tiny Llama's 2 key/value heads
    argv = ["sweep", "--model", "hf", "--tasks", TASKS[0], "--output_path", str(tmp_path), "--model_args"]
    with pytest.raises(SystemExit) as stopped:
        cli.main([*argv, f"pretrained={llama},tp_plan=auto"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["falsedemo sweep: error: tp_plan= on 3 processes needs the model's num_key_value_heads (2) to "
                     "divide by 3; launch 1, 2 processes (--nproc_per_node)"], error
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        cli.main([*argv, f"pretrained={llama},tp_plan=auto,parallelize=True"])
    assert "tp_plan= and parallelize=True both split the model" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
