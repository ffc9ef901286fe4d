"""Every bad input of `falsedemo sweep` / `falsedemo heads` is one line, exit status 2, before any model or
data loads, and nothing is written (issue 11). Loading is made to fail the test, so a check that ran too
late shows up as that failure instead of the expected message."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lm_eval_false_demos.cli import main as cli, args as cli_args

from lm_eval_false_demos.core import files as results_io
from lm_eval_false_demos.errors import FalseDemoError


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else b"<dir>"
            for path in sorted(folder.rglob("*"))}


@pytest.fixture
def unwritable(tmp_path):
    """(an existing folder, a folder that cannot be created), both unwritable for this process.

    chmod does not stop root, so as root the probes use /sys, where nobody may create entries."""
    if os.geteuid() == 0:
        return Path("/sys"), Path("/sys/falsedemo-results/run")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder, folder / "sub"


def _fails(capsys, argv) -> str:
    capsys.readouterr()  # whatever fixtures printed
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error, error
    # one line; argparse's own errors (types) come after its usage lines, as with every argparse tool
    lines = error.splitlines()
    assert len(lines) == 1 or lines[0].startswith("usage:"), error
    return lines[-1]


SWEEP_CASES = [
    (["--confidence", "1.5"], r"--confidence=1.5 is not allowed; give a level strictly between 0 and 1"),
    (["--confidence", "nan"], r"--confidence=nan is not allowed"),
    (["--bootstrap_iters", "-5"], r"--bootstrap_iters=-5 is not allowed; give an integer >= 0"),
    (["--limit", "0"], r"--limit=0 is not allowed; give a number of queries \(an integer >= 1\) or a fraction"),
    (["--limit", "-3"], r"--limit=-3 is not allowed"),
    (["--limit", "2.5"], r"--limit=2.5 is not allowed"),
    (["--seed", "1,2,x"], r"argument --seed: '1,2,x': x is not an integer or None; give one integer or"),
    (["--seed", "1,2"], r"argument --seed: '1,2': Argument requires 4 integers"),
    (["--num_fewshot", "-1"], r"--num_fewshot=-1 is negative"),
    (["--batch_size", "auto"], r"--batch_size='auto' is not an integer"),
    (["--checkpoint_seconds", "-1"], r"--checkpoint_seconds=-1.0 is not allowed"),
    (["--model_args", "pretrained={model},dtpye=float32"], r"unknown model arg dtpye='float32'; did you mean dtype=\?"),
    (["--model_args", "pretraned={model}"], r"unknown model arg pretraned=.*; did you mean pretrained=\?"),
    (["--model_args", "pretrained={model},dtype=bogus"], r"dtype='bogus' is not allowed; allowed: auto, float32"),
    (["--model_args", "pretrained={model},dtype=int8"], r"dtype='int8' is not allowed"),
    (["--model_args", "pretrained={model},exit_layer=3"], r"exit_layer makes no sense for a sweep"),
    (["--model_args", "pretrained={model},heads=1:0"], r"model arg heads= needs --model hf-earlyexit or hf-ablate"),
    (["--model_args", "pretrained=/no/such/model"],
     r"pretrained='/no/such/model' does not exist; give an existing model folder, a hub id \(org/name\) or one of "
     r"gemma-3-270m, smollm2-135m"),
    (["--model_args", "pretrained=./models/missing"], r"pretrained='./models/missing' does not exist"),
    (["--model_args", "pretrained=nobody-here/no-such-model"],
     r"pretrained='nobody-here/no-such-model' is neither a local folder nor in the hub cache, and HF_HUB_OFFLINE"),
    (["--tasks", "hellaswag"], r"hellaswag: not a falsedemo task; the sweep reads falsedemo_<dataset>_<setting>"),
    (["--model", "hf-ablate", "--model_args", "pretrained={model},mlp_layers=1-100000000"],
     r"mlp_layers='1-100000000': range 1-100000000 is out of range"),
    (["--model", "hf-earlyexit", "--model_args", "pretrained={model},exit_layer=1.5"],
     r"exit_layer makes no sense for a sweep"),
]


@pytest.mark.parametrize("extra, message", SWEEP_CASES, ids=[" ".join(case[0])[:40] for case in SWEEP_CASES])
def test_sweep_bad_input_is_one_line_before_loading(extra, message, tiny_model_dir, tmp_path, capsys, no_loading):
    model = str(tiny_model_dir("llama"))
    output = tmp_path / "results"
    argv = ["sweep", "--model_args", f"pretrained={model}", "--tasks", "falsedemo_unnatural_correct",
            "--output_path", str(output), "--device", "cpu"]
    extra = [part.replace("{model}", model) for part in extra]
    for flag in {part for part in extra if part.startswith("--")} & set(argv):
        at = argv.index(flag)
        del argv[at:at + 2]
    error = _fails(capsys, argv + extra)
    import re

    assert re.search(message, error), error
    assert not output.exists()


def test_sweep_refuses_an_output_path_that_is_a_file_and_leaves_it_alone(tmp_path, capsys, no_loading):
    target = tmp_path / "results"
    target.write_text("my notes\n")
    error = _fails(capsys, ["sweep", "--model_args", "pretrained=gemma-3-270m", "--tasks", "falsedemo_unnatural",
                            "--output_path", str(target)])
    assert f"--output_path '{target}' is a file; give a folder" in error
    assert target.read_text() == "my notes\n" and _tree(tmp_path) == {"results": b"my notes\n"}


def test_sweep_and_heads_refuse_unwritable_output_before_loading(unwritable, tmp_path, capsys, no_loading):
    existing, uncreatable = unwritable
    before = _tree(existing) if existing != Path("/sys") else None
    for output, reason in ((existing, "cannot write into it"), (uncreatable, "cannot create folders in")):
        error = _fails(capsys, ["sweep", "--model_args", "pretrained=gemma-3-270m", "--tasks",
                                "falsedemo_unnatural", "--output_path", str(output)])
        assert f"--output_path '{output}' is not writable ({reason}" in error
        error = _fails(capsys, ["heads", "--model_args", "pretrained=gemma-3-270m", "--output_path", str(output)])
        assert f"--output_path '{output}' is not writable" in error
    assert not uncreatable.parent.exists() or uncreatable.parent == existing
    if before is not None:
        assert _tree(existing) == before


HEADS_CASES = [
    (["--top_k", "0"], r"--top_k=0 is not allowed; give an integer >= 1"),
    (["--num_prompts", "0"], r"--num_prompts=0 is not allowed"),
    (["--evaluate", "unnatural", "--limit", "0"], r"--limit=0 is not allowed; give an integer >= 1 \(queries"),
    (["--evaluate", "unnatural", "--random_draws", "0"], r"--random_draws=0 is not allowed"),
    (["--model_args", "pretrained=/no/such/model"], r"pretrained='/no/such/model' does not exist"),
    (["--model_args", "pretrained={model},dtpye=float32"], r"unknown model arg dtpye='float32'; did you mean dtype=\?"),
    (["--model_args", "dtype=float32"], r"--model_args needs pretrained="),
    (["--model_args", "pretrained={model},dtype=bogus"], r"dtype='bogus' is not allowed"),
    (["--model_args", "pretrained={model}", "--device", "cpu", "--model_args", "device=meta"],
     r"--device cpu and model arg device=meta disagree"),
    (["--sweep", "/no/such/sweep.json"], r"--sweep '/no/such/sweep.json' is not a file"),
]


@pytest.mark.parametrize("extra, message", HEADS_CASES, ids=[" ".join(case[0])[:40] for case in HEADS_CASES])
def test_heads_bad_input_is_one_line_before_loading(extra, message, tiny_model_dir, tmp_path, capsys, no_loading):
    import re

    model = str(tiny_model_dir("llama"))
    output = tmp_path / "results"
    argv = ["heads", "--model_args", f"pretrained={model}", "--output_path", str(output)]
    extra = [part.replace("{model}", model) for part in extra]
    if "--model_args" in extra:
        del argv[1:3]
    error = _fails(capsys, argv + extra)
    assert re.search(message, error), error
    assert not output.exists()


def test_heads_top_k_beyond_the_head_count_fails_before_loading_and_writes_nothing(tiny_model_dir, tmp_path, capsys,
                                                                                    no_loading):
    """The head count comes from the model's config file; the weights are never loaded."""
    argv = ["heads", "--model_args", f"pretrained={tiny_model_dir('llama')},dtype=float32", "-o", str(tmp_path),
            "--no_progress"]
    error = _fails(capsys, argv + ["--top_k", "100"])
    assert "--top_k=100 is more than this model's 4 x 4 = 16 heads allow; give 1..16" in error
    # With --evaluate the random control must be able to draw heads outside the top set.
    error = _fails(capsys, argv + ["--top_k", "16", "--evaluate", "unnatural"])
    assert "--top_k=16 is more than this model's 4 x 4 = 16 heads allow; give 1..15 (the random control" in error
    assert list(tmp_path.iterdir()) == []  # the run folder made for checkpoints is gone again


def test_unexpected_errors_keep_their_traceback(monkeypatch, tmp_path):
    from lm_eval_false_demos.cli import sweep

    def broken(args):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(sweep, "run", broken)
    with pytest.raises(ValueError, match="a bug, not bad input"):
        cli.main(["sweep", "--tasks", "falsedemo_unnatural", "--output_path", str(tmp_path)])


# ------------------------------------------------------------------------------------------ helpers


def test_hub_ids_and_packaged_names_pass_the_pretrained_check(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for value in ("gemma-3-270m", "smollm2-135m", "gpt2", "EleutherAI/pythia-70m", "org/name.v2", str(tmp_path)):
        cli_args.check_pretrained(value)
    for value in ("./here", "/abs/missing", "a/b/c", "~/model", "../up", "org/../x"):
        with pytest.raises(FalseDemoError, match="does not exist"):
            cli_args.check_pretrained(value)


def test_output_probe_leaves_nothing_behind(tmp_path):
    assert cli_args.check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert list(tmp_path.iterdir()) == []
    cli_args.check_output_folder(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_results_are_strict_json_with_null_and_a_reason(tmp_path):
    from lm_eval_false_demos.results.heads_files import UNDEFINED_REASONS

    payload = {"evaluation": {"gap_recovered": {"mean": float("nan"), "per_dataset": {"sst2": float("nan")}}},
               "curve": [0.5, float("inf")]}
    path = results_io.write_json_atomic(tmp_path / "heads.json", payload, reasons=UNDEFINED_REASONS)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text

    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    stored = json.loads(text, parse_constant=refuse)
    assert stored["evaluation"]["gap_recovered"] == {"mean": None, "per_dataset": {"sst2": None}}
    assert stored["curve"] == [0.5, None]
    assert stored["undefined"] == {
        "evaluation.gap_recovered.mean": UNDEFINED_REASONS["mean"],
        "evaluation.gap_recovered.per_dataset.sst2": UNDEFINED_REASONS["gap_recovered"],
        "curve.1": "not a finite number (inf)",
    }


def test_heads_top_k_is_checked_against_the_loaded_model_when_no_config_file_says(tiny_model_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    """Packaged short names have no config file before their conversion: the loaded model decides, and the run
    folder created for checkpoints is removed again (with the output folder the run created)."""
    from lm_eval_false_demos.integrations import head_runs

    def scored(*args, **kwargs):
        raise AssertionError("scored with an impossible --top_k")

    monkeypatch.setattr(cli_args, "model_shape_from_config", lambda model_args: None)
    monkeypatch.setattr(head_runs, "score_task", scored)
    output = tmp_path / "new" / "results"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main(["heads", "--model_args", f"pretrained={tiny_model_dir('llama')},dtype=float32", "-o", str(output),
                  "--no_progress", "--top_k", "100"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "falsedemo heads: error: --top_k=100 is more than this model's 4 x 4 = 16 heads allow; give 1..16"
    )
    assert list(tmp_path.iterdir()) == []
