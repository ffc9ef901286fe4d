"""Tuned lens and lens parity on tiny random models: identities, the tuned-lens file layout, training, refusals."""

import json
import pickle

import pytest
import torch
import transformers

from lm_eval_false_demos.cli import main as cli
from lm_eval_false_demos.core.architectures import resolve_modules
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.core.lens import early_exit_logits, lens_logits, read_label_logits, residuals
from lm_eval_false_demos.core.lens_parity import check_parity
from lm_eval_false_demos.core.tuned_lens import TunedLens, load_tuned_lens, parse_lens
from tiny_models import random_tuned_lens as _random_lens
from tiny_models import save_tuned_lens as _write_like_tuned_lens

TEXT = "Review: golf Answer: Positive\nReview: onions Answer:"
LABELS = [5, 17, 42]


def _inputs(tokenizer):
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    return torch.cat([ids, ids.flip(1)], dim=0)


def test_zero_translators_equal_the_logit_lens_exactly(tiny_model):
    arch, model, tokenizer = tiny_model
    input_ids = _inputs(tokenizer)
    modules = resolve_modules(model)
    lens = TunedLens.for_model(model, modules.num_layers)
    plain = read_label_logits(model, input_ids, [[-1, 3], [2, -2]], LABELS)
    tuned = read_label_logits(model, input_ids, [[-1, 3], [2, -2]], LABELS, translator=lens)
    assert torch.equal(plain, tuned), arch
    for layer in (0, 2):
        assert torch.equal(early_exit_logits(model, input_ids, layer), early_exit_logits(model, input_ids, layer,
                                                                                          translator=lens)), arch


def test_tuned_readout_is_norm_and_head_of_the_translated_residual_and_last_layer_is_untouched(tiny_model):
    arch, model, tokenizer = tiny_model
    input_ids = _inputs(tokenizer)
    modules = resolve_modules(model)
    lens = _random_lens(model, modules.num_layers)
    rows = residuals(model, input_ids)
    got = read_label_logits(model, input_ids, None, LABELS, translator=lens)  # every position
    for layer in range(modules.num_layers + 1):
        translator = lens.layer_translators[layer] if layer < modules.num_layers else None
        hidden = rows[layer] + translator(rows[layer]) if translator is not None else rows[layer]
        expected = lens_logits(model, hidden, layer, modules)[..., LABELS]
        assert (got[layer] - expected).abs().max().item() < 1e-4, (arch, layer)
    plain = read_label_logits(model, input_ids, None, LABELS, layers=[modules.num_layers])
    assert torch.equal(got[-1], plain[0]), arch  # layer L: the model's own logits, no translator
    assert (got[1] - read_label_logits(model, input_ids, None, LABELS, layers=[1])[0]).abs().max() > 1e-3


def test_checkpoint_in_tuned_lens_layout_loads_and_gives_the_same_readout(tmp_path):
    from tiny_models import build_tiny_model

    model, tokenizer = build_tiny_model("gpt_neox")
    modules = resolve_modules(model)
    lens = _random_lens(model, modules.num_layers, seed=3)
    folder = _write_like_tuned_lens(lens, tmp_path / "lens")
    loaded = load_tuned_lens(folder, model, modules.num_layers)
    assert loaded.source["file"] == "params.pt" and len(loaded.source["sha256"]) == 64
    input_ids = _inputs(tokenizer)
    expected = read_label_logits(model, input_ids, [-1], LABELS, translator=lens)
    assert torch.equal(read_label_logits(model, input_ids, [-1], LABELS, translator=loaded), expected)
    # Our own save writes the same layout (and the same keys) back.
    ours = tmp_path / "ours"
    loaded.save(ours)
    assert set(torch.load(ours / "params.pt", weights_only=True)) == set(torch.load(folder / "params.pt",
                                                                                  weights_only=True))
    assert json.loads((ours / "config.json").read_text())["num_hidden_layers"] == modules.num_layers
    # safetensors with the same keys reads the same.
    from safetensors.torch import save_file

    st_folder = tmp_path / "st"
    st_folder.mkdir()
    (st_folder / "config.json").write_text((folder / "config.json").read_text())
    save_file(lens.layer_translators.state_dict(), str(st_folder / "params.safetensors"))
    assert torch.equal(read_label_logits(model, input_ids, [-1], LABELS,
                                         translator=load_tuned_lens(st_folder, model, 4)), expected)


def test_lens_for_another_model_is_refused(tmp_path):
    from tiny_models import build_tiny_model

    model, _ = build_tiny_model("llama")
    folder = _write_like_tuned_lens(TunedLens(64, 7), tmp_path / "lens")
    with pytest.raises(FalseDemoError, match="7 translators but the model has 4 blocks"):
        load_tuned_lens(folder, model, 4)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the hostile file is pickled by hand
def test_a_pickle_with_code_is_refused(tmp_path, capsys):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"d_model": 64, "num_hidden_layers": 4}))
    with open(folder / "params.pt", "wb") as stream:
        pickle.dump({"0.weight": _RunsCode()}, stream)
    with pytest.raises(FalseDemoError, match=r"refusing to load .*params.pt: it is not a tensors-only checkpoint"):
        load_tuned_lens(folder)
    assert "runs code" not in capsys.readouterr().out


@pytest.mark.parametrize("value, message", [
    ("tuned", "is not allowed; allowed: logit, tuned:"),
    ("probe:x", "is not allowed"),
    ("tuned:./no/such/folder", "no such folder"),
])
def test_bad_lens_values_fail_in_one_line(value, message):
    with pytest.raises(FalseDemoError, match=message):
        parse_lens(value)


def test_half_written_lens_folder_fails_before_loading(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FalseDemoError, match="needs config.json and one of params.safetensors, params.pt"):
        parse_lens(f"tuned:{tmp_path}")


# ------------------------------------------------------------------------------- parity


def test_parity_passes_on_every_architecture(tiny_model):
    arch, model, tokenizer = tiny_model
    record = check_parity(model, _inputs(tokenizer), [[-1, 3], [2, -2]])
    assert record["max_abs_diff"] < 1e-4 and record["positions"] == 4 and record["dtype"] == "float32", arch


def test_parity_runs_the_models_head_only_at_the_scored_positions(tiny_model):
    arch, model, tokenizer = tiny_model
    inputs = _inputs(tokenizer)
    widths = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, args, out: widths.append(args[0].shape[1]))
    try:
        record = check_parity(model, inputs, [[-1, 3], [2, -1]])
    finally:
        handle.remove()
    # each sequence's own 2 positions: not the union of every row's positions (3) nor every position
    assert 2 in widths and 3 not in widths and inputs.shape[1] not in widths, (arch, widths)
    assert record["max_abs_diff"] < 1e-4


def test_parity_fails_naming_architecture_and_paths_on_a_wrong_norm_override():
    from tiny_models import build_tiny_model

    model, tokenizer = build_tiny_model("llama")
    modules = resolve_modules(model, norm_path="model.layers.0.input_layernorm")
    with pytest.raises(FalseDemoError, match=(
        r"lens parity check failed: .* by [0-9.e-]+ \(tolerance .* float32\); architecture 'llama' "
        r"\(layers='model.layers', norm='model.layers.0.input_layernorm'"
    )):
        check_parity(model, _inputs(tokenizer), [-1], modules=modules)


def test_hf_earlyexit_checks_parity_on_its_first_batch_and_records_lens(tiny_model_dir, tmp_path):
    from lm_eval.api.instance import Instance

    from lm_eval_false_demos.integrations.models import AblatedHFLM, EarlyExitHFLM

    path = tiny_model_dir("llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    lens = _random_lens(model, 4, seed=1)
    folder = _write_like_tuned_lens(lens, tmp_path / "lens")
    requests = [Instance("loglikelihood", {}, ("Review: kale Answer:", word), idx=i,
                         metadata=("falsedemo_sst2_correct", 0, 1)) for i, word in enumerate([" Positive", " Negative"])]
    common = dict(device="cpu", dtype="float32", batch_size=2)
    results = {}
    for kind in ("logit", f"tuned:{folder}"):
        lm = EarlyExitHFLM(pretrained=str(path), exit_layer=2, lens=kind, **common)
        results[kind] = [value for value, _ in lm.loglikelihood(requests)]
        info = lm.get_model_info()["falsedemo"]
        assert info["lens_parity"]["max_abs_diff"] < 1e-4
    assert info["lens"]["kind"] == "tuned" and info["lens"]["key"].startswith("tuned:")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    ids = tokenizer("Review: kale Answer:", return_tensors="pt").input_ids
    first = [tokenizer("Review: kale Answer:" + word).input_ids[ids.shape[1]] for word in [" Positive", " Negative"]]
    expected = early_exit_logits(model, ids, 2, translator=lens)[0, -1].log_softmax(-1)[first]
    assert results[f"tuned:{folder}"] == pytest.approx(expected.tolist(), abs=1e-4)
    assert results["logit"] != pytest.approx(results[f"tuned:{folder}"], abs=1e-4)

    ablated = AblatedHFLM(pretrained=str(path), heads="0:1", exit_layer=3, lens=f"tuned:{folder}", **common)
    ablated.loglikelihood(requests)
    info = ablated.get_model_info()["falsedemo"]
    assert info["lens"]["sha256"] == load_tuned_lens(folder).source["sha256"]
    assert info["lens_parity"]["max_abs_diff"] < 1e-4 and info["lens_parity"]["positions"] >= 1

    for model_class, extra in ((EarlyExitHFLM, {"exit_layer": 2}), (AblatedHFLM, {"heads": "0:1"})):
        wrong = model_class(pretrained=str(path), norm_path="model.layers.0.input_layernorm", **extra, **common)
        with pytest.raises(FalseDemoError, match="lens parity check failed.*'llama'.*norm='model.layers.0.input_layernorm'"):
            wrong.loglikelihood(requests)


# ------------------------------------------------------------------------------- training


def test_training_lowers_held_out_kl_at_every_layer_and_resumes(tiny_model_dir, tmp_path, capsys):
    path = tiny_model_dir("llama")
    output = tmp_path / "lens"
    argv = ["lens", "train", "--model_args", f"pretrained={path},dtype=float32", "--output", str(output),
            "--datasets", "trec,sst2", "--tokens", "6144", "--seq_len", "32", "--batch_size", "8",
            "--positions", "0", "--held_out_sequences", "8", "--checkpoint_every", "10", "--seed", "1", "--lr", "5"]
    assert cli.main(argv) == 0
    summary = json.loads((output / "training.json").read_text())
    before, after = summary["held_out"]["kl_logit_lens"], summary["held_out"]["kl_tuned_lens"]
    assert len(before) == 4 and all(a < b for a, b in zip(after, before)), (before, after)
    assert sum(after) < 0.97 * sum(before), (before, after)
    assert summary["tokens"] == 24 * 8 * 32 and summary["params_sha256"]
    assert "cost estimate: 24 steps" in capsys.readouterr().out
    loaded = load_tuned_lens(output)
    assert loaded.source["sha256"] == summary["params_sha256"]
    assert not (output / "checkpoint.pt").exists()
    with pytest.raises(SystemExit):
        cli.main(argv)  # a finished lens is never overwritten

    # Interrupted after a checkpoint: rerunning the command resumes there and ends with the same lens.
    resumed = tmp_path / "resumed"
    from lm_eval_false_demos.results import lens_files

    original = lens_files.save_checkpoint

    def save_then_stop(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    lens_files.save_checkpoint = save_then_stop
    try:
        for folder in (resumed, tmp_path / "cut"):
            capsys.readouterr()
            with pytest.raises(SystemExit, match="130"):  # Ctrl-C: exit status 128 + SIGINT, no traceback
                cli.main(argv[:5] + [str(folder)] + argv[6:])
            error = capsys.readouterr().err
            assert f"training progress is saved in {folder / 'checkpoint.pt'}; rerun the same command to continue\n" \
                   "falsedemo lens: interrupted\n" in error, error[-300:]  # (tqdm's bar shares stderr)
            assert "Traceback" not in error
    finally:
        lens_files.save_checkpoint = original
    # Another budget on resume: here one that the checkpoint (step 10) already reached, so training stops there.
    cut = argv[:5] + [str(tmp_path / "cut")] + argv[6:]
    cut[cut.index("--tokens") + 1] = str(10 * 8 * 32)
    assert cli.main(cut) == 0
    assert "resuming from" in capsys.readouterr().out
    cut_summary = json.loads((tmp_path / "cut" / "training.json").read_text())
    assert cut_summary["steps"] == 10
    # "before" is the logit lens (zero translators) on a resumed run too, not the checkpoint's translators.
    assert cut_summary["held_out"]["kl_logit_lens"] == pytest.approx(before, abs=1e-6)
    assert cut_summary["held_out"]["kl_tuned_lens"] != pytest.approx(before, abs=1e-6)
    assert (resumed / "checkpoint.pt").exists() and not (resumed / "params.pt").exists()
    assert cli.main(argv[:5] + [str(resumed)] + argv[6:]) == 0
    assert "resuming from" in capsys.readouterr().out
    first = torch.load(output / "params.pt", weights_only=True)
    second = torch.load(resumed / "params.pt", weights_only=True)
    assert all(torch.allclose(first[key], second[key], atol=1e-6) for key in first)


def test_vocabulary_subset_training_runs_and_helps(tiny_model_dir, tmp_path):
    path = tiny_model_dir("gemma2")
    output = tmp_path / "lens"
    argv = ["lens", "train", "--model_args", f"pretrained={path}", "--output", str(output), "--datasets", "trec",
            "--tokens", "4096", "--seq_len", "32", "--batch_size", "8", "--positions", "8", "--vocab", "128",
            "--held_out_sequences", "4"]
    assert cli.main(argv) == 0
    summary = json.loads((output / "training.json").read_text())
    assert sum(summary["held_out"]["kl_tuned_lens"]) < sum(summary["held_out"]["kl_logit_lens"])


@pytest.mark.parametrize("flag, value, message", [
    ("--vocab", "some", "--vocab='some' is not allowed"),
    ("--datasets", "nope", "nope"),
    ("--tokens", "0", "--tokens=0 is not allowed"),
    ("--positions", "-1", "--positions=-1 is not allowed"),
    ("--seq_len", "64", "--seq_len=64 is longer than the model arg max_length=48"),
    ("--model_args", "dtype=bogus", "dtype='bogus' is not allowed; allowed: auto, float32"),
    ("--lr", "-5", "--lr=-5.0 is not allowed; give a learning-rate scale > 0"),  # torch's traceback after the load
    ("--lr", "nan", "--lr=nan is not allowed"),
    ("--momentum", "1", "--momentum=1.0 is not allowed; give 0 <= momentum < 1"),
    ("--weight_decay", "-0.1", "--weight_decay=-0.1 is not allowed"),
    ("--positions", "33", "--positions=33 is more than --seq_len=32"),
    ("--model_args", "max_length=forty", "max_length='forty' is not allowed; give an integer >= 1"),
])
def test_bad_training_arguments_fail_before_loading(flag, value, message, tiny_model_dir, tmp_path, monkeypatch,
                                                    capsys):
    from lm_eval_false_demos.integrations import loading

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad argument was reported")

    monkeypatch.setattr(loading, "create_model", loaded)
    with pytest.raises(SystemExit) as exited:
        cli.main(["lens", "train", "--model_args", f"pretrained={tiny_model_dir('llama')},max_length=48",
                  "--output", str(tmp_path / "lens"), "--seq_len", "32", flag, value])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "lens").exists()


def test_lens_train_loads_through_lm_evals_registry(tiny_model_dir, tmp_path, monkeypatch):
    """`falsedemo lens train` loads lm-eval's `hf` model from its registry, in float32 unless dtype= says
    otherwise, frozen: model args only lm-eval knows (max_length, add_bos_token) reach it and are recorded."""
    from lm_eval_false_demos.integrations import loading

    created = []
    real_create = loading.create_model

    def create(*args):
        lm = real_create(*args)
        created.append((args, lm))
        return lm

    monkeypatch.setattr(loading, "create_model", create)
    path = str(tiny_model_dir("llama"))
    output = tmp_path / "lens"
    assert cli.main(["lens", "train", "--model_args", f"pretrained={path},max_length=48,add_bos_token=True",
                     "--output", str(output), "--datasets", "trec", "--tokens", "512", "--seq_len", "32",
                     "--batch_size", "4", "--held_out_sequences", "2", "--device", "cpu"]) == 0
    (model, model_args, batch_size, device), lm = created[-1]
    assert model == "hf" and device == "cpu" and batch_size == 4
    assert model_args == {"pretrained": path, "max_length": 48, "add_bos_token": True, "dtype": "float32"}
    assert lm.max_length == 48 and lm.add_bos_token is True
    assert lm.model.dtype == torch.float32 and not any(p.requires_grad for p in lm.model.parameters())
    summary = json.loads((output / "training.json").read_text())
    assert summary["model_args"] == {"pretrained": path, "max_length": 48, "add_bos_token": True}
    assert summary["steps"] == 4 and load_tuned_lens(output).source["sha256"] == summary["params_sha256"]


def test_lens_training_runs_from_settings_without_the_command_line(tiny_model_dir):
    """The analysis takes a model, tokenizer, modules and TrainingSettings: no argparse, no files."""
    from lm_eval_false_demos.analysis.lens_text import TrainingSettings, planned_steps, training_text
    from lm_eval_false_demos.analysis.lens_training import LensTrainer

    path = tiny_model_dir("llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    settings = TrainingSettings(datasets=("trec",), tokens=4096, seq_len=32, batch_size=8, positions=0, lr=5.0,
                                held_out_sequences=8, seed=1)
    settings.check()
    text = training_text(tokenizer, settings)
    trainer = LensTrainer(model, resolve_modules(model), settings)
    steps = planned_steps(settings, text)
    assert steps == 16 and trainer.estimate(text, steps).tokens == 4096
    before = trainer.held_out_kl(text.held_out)
    seen, saved = [], []
    trainer.fit(text.training, steps, on_step=lambda step, losses: seen.append(step),
                on_checkpoint=lambda state: saved.append(state.step))
    after = trainer.held_out_kl(text.held_out)
    assert seen == list(range(16)) and saved == [] and trainer.step == 16
    assert all(a < b for a, b in zip(after, before)), (before, after)
    with pytest.raises(FalseDemoError, match="vocab=1 is not allowed"):
        TrainingSettings(vocab=1).check()


# ------------------------------------------------------------------------------- sweep


def test_sweep_reads_through_the_tuned_lens_records_it_and_checks_parity(tiny_model_dir, tmp_path):
    from lm_eval.tasks import TaskManager

    from lm_eval_false_demos.integrations import sweep as sweep_run

    path = tiny_model_dir("llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    folder = _write_like_tuned_lens(_random_lens(model, 4, seed=2, scale=1.0), tmp_path / "lens")
    tasks, manager = ["falsedemo_unnatural_correct", "falsedemo_unnatural_permuted"], TaskManager()

    def run(model_type="hf", **extra):
        return sweep_run.run_sweep(
            model=model_type, model_args={"pretrained": str(path), "dtype": "float32", **extra}, tasks=tasks,
            limit=6, num_fewshot=3, batch_size=4, bootstrap_iters=0, task_manager=manager, show_progress=False,
        )

    logit, tuned = run(), run(lens=f"tuned:{folder}")
    assert logit["config"]["lens"]["kind"] == "logit" and tuned["config"]["lens"]["kind"] == "tuned"
    assert tuned["config"]["lens"]["sha256"] == load_tuned_lens(folder).source["sha256"]
    for result in (logit, tuned):
        assert result["config"]["lens_parity"]["max_abs_diff"] < 1e-4
        assert result["config"]["lens_parity"]["positions"] == 4 * 4  # 4 prompts x (3 demos + the query)
    for task in tasks:
        ours, theirs = tuned["tasks"][task]["per_position"]["acc"], logit["tasks"][task]["per_position"]["acc"]
        assert ours[-1] == theirs[-1]  # layer L is the model's own readout under either lens
    raw = {}
    for name, result in (("logit", logit), ("tuned", tuned)):
        raw[name] = [result["tasks"][task]["per_position"][metric][1:-1] for task in tasks for metric in ("acc",
                                                                                                          "calibrated_acc")]
    assert raw["logit"] != raw["tuned"]
    with pytest.raises(FalseDemoError, match="lens parity check failed.*'llama'"):
        run("hf-earlyexit", norm_path="model.layers.0.input_layernorm")


def test_estimate_only_prints_the_cost_and_writes_nothing(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "lens"
    argv = ["lens", "train", "--model_args", f"pretrained={tiny_model_dir('llama')}", "--output", str(output),
            "--datasets", "trec", "--tokens", "2048", "--seq_len", "32", "--batch_size", "8", "--estimate_only"]
    assert cli.main(argv) == 0
    assert "cost estimate: 8 steps x 8 x 32 = 2,048 tokens" in capsys.readouterr().out
    assert not output.exists()


def test_vocabulary_subset_keeps_the_most_probable_tokens_and_samples_the_rest():
    from types import SimpleNamespace

    from lm_eval_false_demos.analysis.lens_training import _Objective

    head = torch.nn.Linear(4, 1000, bias=False)
    objective = _Objective(None, SimpleNamespace(output_head=head), None, vocab_subset=100)
    probs = torch.full((3, 5, 1000), 1e-6)
    probs[..., 900:950] = 0.02  # the 50 most probable tokens sit at high ids
    subset = objective._subset(probs, torch.Generator().manual_seed(0))
    assert subset.numel() == 100 and subset.unique().numel() == 100
    assert set(range(900, 950)) <= set(subset.tolist())
    other = objective._subset(probs, torch.Generator().manual_seed(1))
    assert set(subset.tolist()) != set(other.tolist())  # the uniform half is re-drawn


def test_hub_ids_resolve_like_tuned_lens_and_fail_in_one_line_offline(tmp_path, monkeypatch):
    import huggingface_hub

    from tiny_models import build_tiny_model

    model, _ = build_tiny_model("gpt2")
    folder = _write_like_tuned_lens(_random_lens(model, 4), tmp_path / "cache")
    calls = []

    def fake_download(repo_id, filename, subfolder=None, repo_type=None, **kwargs):
        calls.append((repo_id, filename, subfolder, repo_type))
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert parse_lens("tuned:gpt2-tiny").source == "gpt2-tiny"  # not a folder: a hub id, checked at load
    lens = load_tuned_lens("gpt2-tiny", model, 4)
    assert lens.source["sha256"] == load_tuned_lens(folder).source["sha256"]
    assert calls == [("AlignmentResearch/tuned-lens", "config.json", "lens/gpt2-tiny", "space"),
                     ("AlignmentResearch/tuned-lens", "params.pt", "lens/gpt2-tiny", "space")]
    monkeypatch.setenv("TUNED_LENS_REPO_ID", "me/lenses")
    monkeypatch.setenv("TUNED_LENS_REPO_TYPE", "model")
    load_tuned_lens("gpt2-tiny", model, 4)
    assert calls[-1] == ("me/lenses", "params.pt", "lens/gpt2-tiny", "model")

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(FalseDemoError, match="lens=tuned:gpt2-tiny: not a local folder and not found as model me/lenses"):
        load_tuned_lens("gpt2-tiny", model, 4)


def test_training_text_never_contains_an_evaluated_query():
    from lm_eval_false_demos.core.data_loading import load_examples
    from lm_eval_false_demos.analysis.lens_text import DEFAULT_DATASETS, demonstration_documents

    assert "unnatural" not in DEFAULT_DATASETS
    text = "\n".join(demonstration_documents(["trec"], seed=0))
    _, queries = load_examples("trec")
    assert len(text) > 10_000
    assert not [query for query in queries if query.fields[0] in text]
    with pytest.raises(FalseDemoError, match="unnatural's demonstrations are its queries"):
        demonstration_documents(["unnatural"], seed=0)
