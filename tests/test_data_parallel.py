"""Every command under two processes (CPU, gloo), launched exactly as docs/scale.md says, gives the one-process
numbers and exactly one set of results.

One launch per command (a launch costs the imports twice on a 2-core machine): the sweep resumed under torchrun
from a one-process run's checkpoint, the sweep over two simulated nodes, heads under ``accelerate launch``, lens
training under torchrun. The
sweep and heads runs repeat the golden runs (tests/golden_runs.py), so their numbers are compared with the
stored goldens; the fresh two-process sweep is tests/test_sweep.py's accelerate test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from golden_runs import SWEEP_TASKS
from test_golden_outputs import GOLDEN, _differences

# The commands of docs/scale.md (CPU recipe), with the venv's launchers.
BIN = Path(sys.executable).parent
ACCELERATE = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2"]
TORCHRUN = [str(BIN / "torchrun"), "--nproc_per_node", "2"]
CLI = ["-m", "lm_eval_false_demos.cli"]
TOLERANCE = 1e-5  # the lens: float32 sums in another order


def _launch(launcher: list[str], argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    environment.pop("ACCELERATE_USE_CPU", None)
    if launcher is ACCELERATE:  # the CPU recipe; plain torchrun needs nothing (the processes join over gloo)
        environment["ACCELERATE_USE_CPU"] = "true"
    completed = subprocess.run([*launcher, *CLI, *argv], env=environment, capture_output=True, text=True,
                               timeout=600, cwd=cwd)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


def _same_numbers(name: str, payload: dict) -> None:
    """The golden run's numbers (tests/golden/<name>.json, to 1e-6)."""
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    differences = _differences(expected, {key: payload.get(key) for key in expected})
    assert not differences, "\n".join(differences[:20])


def test_a_sweep_resumed_under_two_processes_gives_the_one_process_numbers(tiny_model_dir, tmp_path, monkeypatch):
    """One process stops after saving a few batches; torchrun resumes the folder with two processes: both read
    the stored prompts, split the rest, rank 0 writes into that folder and nowhere else."""
    from lm_eval_false_demos.cli import main as cli
    from lm_eval_false_demos.results import checkpoints

    model = tiny_model_dir("llama")
    argv = ["sweep", "--model_args", f"pretrained={model},dtype=float32", "--tasks", SWEEP_TASKS, "--limit", "10",
            "--num_fewshot", "4", "--batch_size", "3", "--bootstrap_iters", "40", "--no_plots",
            "--output_path", str(tmp_path / "runs")]
    saved = []
    real_record = checkpoints.PromptChunks.record

    def record_then_stop(self, outputs):
        real_record(self, outputs)
        saved.append(len(outputs))
        if len(saved) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.PromptChunks, "record", record_then_stop)
    with pytest.raises(SystemExit) as exited:  # Ctrl-C: the finished batches are kept, status 130
        cli.main(argv + ["--checkpoint_seconds", "0"])
    assert exited.value.code == 128 + signal.SIGINT
    (folder,) = (tmp_path / "runs").iterdir()

    _launch(TORCHRUN, argv + ["--resume", str(folder)], tmp_path)
    assert list((tmp_path / "runs").iterdir()) == [folder]  # one folder: the resumed one
    assert not (folder / "checkpoint").exists()
    payload = json.loads((folder / "sweep.json").read_text())
    assert payload["config"]["world_size"] == 2
    assert payload["timing"]["prompts_from_checkpoint"] == 9 and payload["timing"]["prompts"] == 40
    _same_numbers("sweep", payload)


def test_a_sweep_over_two_nodes_writes_once_from_global_rank_0(tiny_model_dir, tmp_path):
    """Two machines of one process each, as two torchrun launches on this one, with docs/scale.md's several-node
    line (``--nnodes 2 --node_rank 0/1 --rdzv_backend c10d``):
    every process has LOCAL_RANK 0, so a writer chosen by the local rank would write twice. One run folder,
    written by global rank 0, with the one-process numbers."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = tiny_model_dir("llama")
    argv = ["sweep", "--model_args", f"pretrained={model},dtype=float32", "--tasks", SWEEP_TASKS, "--limit", "10",
            "--num_fewshot", "4", "--batch_size", "3", "--bootstrap_iters", "40", "--no_plots",
            "--output_path", str(tmp_path / "runs")]
    environment = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    environment["OMP_NUM_THREADS"] = "1"
    nodes = [subprocess.Popen([str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
                               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", *CLI, *argv],
                              env=environment, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-4000:]
    assert "sweep written to" in outputs[0][0] and "sweep written to" not in outputs[1][0]
    (folder,) = (tmp_path / "runs").iterdir()
    payload = json.loads((folder / "sweep.json").read_text())
    assert payload["config"]["world_size"] == 2
    _same_numbers("sweep", payload)


def test_heads_under_two_processes_gives_the_one_process_scores_ranking_and_evaluation(tiny_model_dir, tmp_path):
    """Scoring, evaluation and the random-head control split across two processes; one heads_* folder."""
    model = tiny_model_dir("llama")
    _launch(ACCELERATE, ["heads", "--model_args", f"pretrained={model},dtype=float32", "-n", "5", "-f", "4", "-k", "2",
                         "--evaluate", "unnatural,sst2", "--limit", "6", "-R", "3", "--random_seed", "4",
                         "-o", str(tmp_path / "runs"), "--no_progress", "--no_plots"], tmp_path)
    (folder,) = (tmp_path / "runs").iterdir()
    assert not (folder / "checkpoint").exists()
    payload = json.loads((folder / "heads.json").read_text())
    assert payload["config"]["world_size"] == 2
    _same_numbers("heads", payload)


def test_lens_training_under_two_processes_trains_once_the_one_process_lens(tiny_model_dir, tmp_path, capsys):
    import torch

    from lm_eval_false_demos.cli import main as cli

    model = tiny_model_dir("llama")
    argv = ["lens", "train", "--model_args", f"pretrained={model},dtype=float32", "--datasets", "trec",
            "--tokens", "1024", "--seq_len", "32", "--batch_size", "4", "--held_out_sequences", "4",
            "--checkpoint_every", "3", "--seed", "1"]
    assert cli.main(argv + ["--output", str(tmp_path / "alone")]) == 0
    launched = _launch(TORCHRUN, argv + ["--output", str(tmp_path / "launched")], tmp_path)
    assert launched.stdout.count("lens train: 2 processes started, one (rank 0) trains") == 1
    assert launched.stdout.count("cost estimate:") == 1  # the other process neither trains nor prints
    alone = torch.load(tmp_path / "alone" / "params.pt", weights_only=True)
    two = torch.load(tmp_path / "launched" / "params.pt", weights_only=True)
    assert alone.keys() == two.keys() and all(torch.allclose(alone[key], two[key], atol=TOLERANCE) for key in alone)
    summary = json.loads((tmp_path / "launched" / "training.json").read_text())
    assert summary["held_out"] == json.loads((tmp_path / "alone" / "training.json").read_text())["held_out"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["alone", "launched"]
