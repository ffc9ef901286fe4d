"""Long runs resume: a sweep killed part-way (a real SIGKILL to a subprocess) and resumed with ``--resume``
equals an uninterrupted run, to the byte for the curves; ``falsedemo heads --evaluate`` stopped by Ctrl-C
resumes to the same numbers; a changed configuration is refused in one line (issue 11)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lm_eval_false_demos.analysis import head_evaluation
from lm_eval_false_demos.cli import main as cli
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations import head_runs
from lm_eval_false_demos.results import checkpoints

TASKS = "falsedemo_sst2_correct,falsedemo_sst2_permuted"


def _sweep_argv(model: Path, output: Path, *extra: str) -> list[str]:
    return ["sweep", "--model_args", f"pretrained={model},dtype=float32", "--tasks", TASKS, "--limit", "12",
            "--num_fewshot", "8", "--batch_size", "2", "--device", "cpu", "--bootstrap_iters", "20", "--no_plots",
            "--output_path", str(output), *extra]


def _comparable(sweep_json: Path) -> dict:
    payload = json.loads(sweep_json.read_text())
    payload.pop("timing")
    for key in ("date", "command"):
        payload["config"].pop(key)
    return payload


def _one_run_folder(output: Path) -> Path:
    (folder,) = [path for path in output.iterdir() if path.name.startswith(("sweep_", "heads_"))]
    return folder


def test_sweep_killed_midway_resumes_to_the_uninterrupted_result(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import torch

    model = tiny_model_dir("llama")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert cli.main(_sweep_argv(model, whole)) == 0
    reference = _one_run_folder(whole)
    assert not (reference / "checkpoint").exists()  # a finished run keeps only its results

    # The same run in a subprocess, saving after every batch, killed once a few batches are saved.
    environment = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "lm_eval_false_demos.cli.main", *_sweep_argv(model, killed, "--checkpoint_seconds", "0")],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    parts = []
    while time.monotonic() < deadline and process.poll() is None:
        parts = list(killed.glob("sweep_*/checkpoint/part-*.npz"))
        if len(parts) >= 3:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the sweep finished before it could be killed"
    folder = _one_run_folder(killed)
    assert not (folder / "sweep.json").exists() and (folder / "checkpoint" / "MANIFEST").is_file()

    # A different configuration is refused in one line before any model loads, and changes nothing.
    saved = sorted(path.name for path in (folder / "checkpoint").iterdir())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main(_sweep_argv(model, killed, "--resume", str(folder)) + ["--num_fewshot", "4"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"falsedemo sweep: error: --resume '{folder}': arguments differ from the interrupted "
                            "run: num_fewshot (8 in the checkpoint, 4 now); resume with its arguments: falsedemo sweep "
                            ), error
    # The hint is the interrupted command itself, continuing the folder: --resume, never a fresh run.
    assert "--num_fewshot 8 " in error and error.rstrip().endswith(f"--resume {folder}"), error
    assert sorted(path.name for path in (folder / "checkpoint").iterdir()) == saved

    # What the arguments do not show (here: the package versions) is in the fingerprint too: refused after the
    # load, before any forward pass.
    from lm_eval_false_demos.integrations import run_context

    real_versions = run_context.versions
    monkeypatch.setattr(run_context, "versions", lambda: {**real_versions(), "transformers": "0.0.1"})
    with pytest.raises(SystemExit) as exited:
        cli.main(_sweep_argv(model, killed, "--resume", str(folder)))
    assert exited.value.code == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(f"falsedemo sweep: error: --resume '{folder}': the configuration differs from the "
                           "interrupted run: versions ("), line
    assert sorted(path.name for path in (folder / "checkpoint").iterdir()) == saved
    monkeypatch.setattr(run_context, "versions", real_versions)

    assert cli.main(_sweep_argv(model, killed, "--resume", str(folder))) == 0
    assert not (folder / "checkpoint").exists()
    assert (folder / "curves.csv").read_bytes() == (reference / "curves.csv").read_bytes()
    assert (folder / "derived.csv").read_bytes() == (reference / "derived.csv").read_bytes()
    resumed, uninterrupted = _comparable(folder / "sweep.json"), _comparable(reference / "sweep.json")
    assert resumed == uninterrupted
    timing = json.loads((folder / "sweep.json").read_text())["timing"]
    assert 0 < timing["prompts_from_checkpoint"] < 24
    assert timing["forward_passes"] == 24 - timing["prompts_from_checkpoint"]

    # A finished folder has nothing to resume.
    with pytest.raises(SystemExit):
        cli.main(_sweep_argv(model, killed, "--resume", str(folder)))
    assert "is finished (it has sweep.json); nothing to resume" in capsys.readouterr().err


def test_sigterm_mid_sweep_saves_every_finished_prompt_and_resumes(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """``kill`` (SIGTERM) stops a sweep like Ctrl-C: with saving due only once an hour, every batch finished so
    far is flushed on the way out, the exit status is 143 with the resume line, and resuming gives the
    uninterrupted numbers."""

    model = tiny_model_dir("llama")
    assert cli.main(_sweep_argv(model, tmp_path / "whole")) == 0
    reference = _one_run_folder(tmp_path / "whole")

    recorded = []
    real_record = checkpoints.PromptChunks.record

    def record_then_terminate(self, outputs):
        real_record(self, outputs)
        recorded.extend(outputs)
        if len(recorded) == 6:  # three batches of two: the scheduler's stop arrives now
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(checkpoints.PromptChunks, "record", record_then_terminate)
    stopped = tmp_path / "stopped"
    with pytest.raises(SystemExit) as exited:
        cli.main(_sweep_argv(model, stopped, "--checkpoint_seconds", "3600"))
    assert exited.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler lives only as long as the command
    folder = _one_run_folder(stopped)
    hint = capsys.readouterr().err
    assert "finished work is saved; continue with: falsedemo sweep " in hint and f"--resume {folder}" in hint
    assert not (folder / "sweep.json").exists() and list((folder / "checkpoint").glob("part-*.npz"))

    monkeypatch.setattr(checkpoints.PromptChunks, "record", real_record)
    assert cli.main(_sweep_argv(model, stopped, "--resume", str(folder))) == 0
    timing = json.loads((folder / "sweep.json").read_text())["timing"]
    assert timing["prompts_from_checkpoint"] == 6  # nothing finished was lost, though no save was due
    assert (folder / "curves.csv").read_bytes() == (reference / "curves.csv").read_bytes()
    assert _comparable(folder / "sweep.json") == _comparable(reference / "sweep.json")


def test_heads_evaluation_interrupted_by_ctrl_c_resumes_to_the_same_numbers(tiny_model_dir, tmp_path, monkeypatch,
                                                                           capsys):
    model = f"pretrained={tiny_model_dir('llama')},dtype=float32"
    argv = ["heads", "--model_args", model, "--no_progress", "--no_plots", "-n", "4", "-f", "4", "-k", "2",
            "--evaluate", "unnatural,sst2", "--limit", "5", "-R", "2"]
    assert cli.main(argv + ["-o", str(tmp_path / "whole")]) == 0
    reference = json.loads((_one_run_folder(tmp_path / "whole") / "heads.json").read_text())

    calls = {"readouts": 0, "scoring": 0}
    real_readouts, real_scoring = head_evaluation.query_readouts, head_runs.score_task

    def readouts(*args, **kwargs):
        calls["readouts"] += 1
        if calls["readouts"] == 2 * 5 + 3:  # inside sst2's correct prompts: unnatural is saved
            raise KeyboardInterrupt
        return real_readouts(*args, **kwargs)

    def scoring(*args, **kwargs):
        calls["scoring"] += 1
        return real_scoring(*args, **kwargs)

    # Ctrl-C before anything finished leaves no folder behind.
    output = tmp_path / "stopped"
    monkeypatch.setattr(head_runs, "score_task", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit) as exited:
        cli.main(argv + ["-o", str(output)])
    assert exited.value.code == 128 + signal.SIGINT
    assert not output.exists()

    monkeypatch.setattr(head_evaluation, "query_readouts", readouts)
    monkeypatch.setattr(head_runs, "score_task", scoring)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main(argv + ["-o", str(output)])
    assert exited.value.code == 128 + signal.SIGINT
    folder = _one_run_folder(output)
    error = capsys.readouterr().err
    # The resume line is a command to paste (with --resume), and Ctrl-C ends in one line, not a traceback.
    assert "Traceback" not in error and "KeyboardInterrupt" not in error, error
    hint, last = error.splitlines()[-2:]
    assert hint.startswith("finished work is saved; continue with: falsedemo heads ") and hint.endswith(
        f"--resume {folder}"), error
    assert last == "falsedemo heads: interrupted", error
    assert sorted(path.name for path in (folder / "checkpoint").glob("part-*")) == [
        "part-evaluate-unnatural-correct.npz", "part-evaluate-unnatural-permuted.npz", "part-scores.npz"
    ]

    calls.update(readouts=0, scoring=0)
    counted = []
    monkeypatch.setattr(head_evaluation, "query_readouts", lambda *a, **k: counted.append(1) or real_readouts(*a, **k))
    assert cli.main(argv + ["-o", str(output), "--resume", str(folder)]) == 0
    assert calls["scoring"] == 0 and len(counted) == 2 * 5  # only sst2 is computed again
    resumed = json.loads((folder / "heads.json").read_text())
    for payload in (resumed, reference):
        payload.pop("timing")
        payload["config"].pop("command")
    assert resumed == reference
    assert not (folder / "checkpoint").exists()


@settings(max_examples=60, deadline=None)
@given(config=st.dictionaries(st.sampled_from(["num_fewshot", "limit", "tasks", "device", "seed"]),
                              st.one_of(st.integers(), st.text(max_size=8)), max_size=5),
       launch=st.dictionaries(st.sampled_from(sorted(checkpoints.VOLATILE_KEYS)), st.integers(), max_size=4),
       earlier_launch=st.dictionaries(st.sampled_from(sorted(checkpoints.VOLATILE_KEYS)), st.integers(), max_size=4))
def test_a_checkpoint_resumes_whatever_its_launch_fields_recorded(tmp_path_factory, config, launch, earlier_launch):
    """Fields that say how a run was launched never block a resume, even where an older version stored them in
    the manifest's configuration (world_size was stored before it became volatile); any other field does."""
    run = tmp_path_factory.mktemp("run")
    (run / checkpoints.FOLDER).mkdir()
    manifest = {"kind": "sweep", "fingerprint": "written by an older version",
                "config": {**config, **earlier_launch}, "arguments": {}, "command": "falsedemo sweep"}
    (run / checkpoints.FOLDER / checkpoints.MANIFEST).write_text(json.dumps(manifest))
    checkpoints.RunCheckpoint(run).resume("sweep", {**config, **launch})
    with pytest.raises(FalseDemoError, match="the configuration differs from the interrupted run: num_fewshot"):
        checkpoints.RunCheckpoint(run).resume("sweep", {**config, **launch, "num_fewshot": [config.get("num_fewshot")]})


_WORDS = st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                          min_size=1, max_size=12).filter(lambda word: not word.startswith("--resume")), max_size=8)


@given(words=_WORDS, folder=st.text(min_size=1, max_size=20).filter(lambda text: "\x00" not in text),
       where=st.integers(min_value=0, max_value=8), joined=st.booleans())
def test_a_recorded_command_reproduces_without_its_resume_folder(words, folder, where, joined):
    """The command a leaderboard reproduces is the recorded one minus --resume <folder> (either spelling,
    anywhere among the words, any quoting); a command without --resume is kept exactly as recorded."""
    import shlex

    fresh = shlex.join(["falsedemo", "sweep", *words])
    resume = [f"--resume={folder}"] if joined else ["--resume", folder]
    at = min(where, len(words))
    resumed = shlex.join(["falsedemo", "sweep", *words[:at], *resume, *words[at:]])
    assert shlex.split(checkpoints.fresh_command(resumed)) == shlex.split(fresh)
    assert checkpoints.fresh_command(fresh) == fresh or "--resume" in fresh
