"""Chat templates: exact prompt text, pairing, the scored token and the sweep's demo-label positions.

Two hand-written templates on the tiny tokenizer: NEWLINE (ChatML-like, with a system role; the assistant
header ends in a newline, so the label follows with no space) and SPACE (no system role; the header ends
in "Assistant: ", so the label keeps its leading space). Both are exercised through the ``lm_eval``
command and through ``falsedemo sweep``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lm_eval_false_demos.core import chat
from lm_eval_false_demos.core.datasets import get_spec
from lm_eval_false_demos.core.data_loading import load_examples
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.core.prompts import build_prompt, label_token_ids

NEWLINE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPACE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "{% if m['role'] == 'user' %}User: {{ m['content'] }}\n{% else %}Assistant: {{ m['content'] }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}"
)
TEMPLATES = {"newline": NEWLINE, "space": SPACE}
LM_EVAL = Path(sys.executable).with_name("lm_eval")
FALSEDEMO = Path(sys.executable).with_name("falsedemo")
TASKS = ["falsedemo_unnatural_correct", "falsedemo_unnatural_permuted"]
K, LIMIT, SEED = 3, 4, 1234
INSTRUCTION = "Consider the categories plant/vegetable, sport, and animal. Classify each object in its category."


@pytest.fixture(scope="module")
def unnatural_prompts():
    spec = get_spec("unnatural")
    pool, queries = load_examples("unnatural")
    return {setting: build_prompt(spec, queries[0], pool, K, setting, SEED) for setting in ("correct", "permuted")}


@pytest.fixture(scope="module")
def chat_model_dir(tiny_model_dir, tmp_path_factory):
    """Factory: the tiny llama saved with one of the two templates."""
    import shutil

    import transformers

    made = {}

    def make(name: str) -> Path:
        if name not in made:
            target = tmp_path_factory.mktemp(f"chat_{name}")
            shutil.copytree(tiny_model_dir("llama"), target, dirs_exist_ok=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(target)
            tokenizer.chat_template = TEMPLATES[name]
            tokenizer.save_pretrained(target)
            made[name] = target
        return made[name]

    return make


def _template(name):
    import copy

    from tiny_models import tiny_tokenizer

    tokenizer = copy.deepcopy(tiny_tokenizer())  # the shared tokenizer stays template-free
    tokenizer.chat_template = TEMPLATES[name]
    return chat.tokenizer_template(tokenizer)


# ------------------------------------------------------------------------------- core rendering


def test_multiturn_newline_template_exact_text(unnatural_prompts):
    prompt = unnatural_prompts["permuted"]
    questions, words = prompt.demo_questions, prompt.demo_label_words
    rendering = chat.render(prompt, _template("newline"), multiturn=True, system_instruction="Be brief.")
    expected = (
        f"<|im_start|>system\nBe brief.\n\n{INSTRUCTION}<|im_end|>\n"
        + "".join(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{w}<|im_end|>\n"
                  for q, w in zip(questions, words))
        + f"<|im_start|>user\n{prompt.query_text}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert rendering.context == expected and rendering.mode == "chat_multiturn" and rendering.system_role
    assert questions[0].endswith(":") and prompt.query_text.endswith(":")
    for start, readout, word in zip(rendering.demo_label_starts, rendering.demo_readout_offsets, words):
        assert readout == start and rendering.context[start - 1] == "\n"  # no space: the word itself
        assert rendering.context[start:start + len(word) + 10] == word + "<|im_end|>"


def test_single_turn_space_template_without_system_role(unnatural_prompts):
    prompt = unnatural_prompts["correct"]
    rendering = chat.render(prompt, _template("space"), multiturn=False)
    body = "".join(f"{q} {w}\n\n" for q, w in zip(prompt.demo_questions, prompt.demo_label_words))
    assert rendering.context == f"User: {INSTRUCTION}\n\n{body}{prompt.query_text}\nAssistant: "
    assert not rendering.system_role  # the template refuses the system role: the instruction opens the user turn
    for start, readout, word in zip(rendering.demo_label_starts, rendering.demo_readout_offsets,
                                    prompt.demo_label_words):
        assert readout == start - 1 and rendering.context[readout:start + len(word)] == " " + word
        assert rendering.label_lead(0) == " "


def test_pairing_settings_differ_only_in_label_words(unnatural_prompts):
    correct, permuted = unnatural_prompts["correct"], unnatural_prompts["permuted"]
    assert correct.demo_shown_labels != permuted.demo_shown_labels
    for name in TEMPLATES:
        for multiturn in (True, False):
            a = chat.render(correct, _template(name), multiturn)
            b = chat.render(permuted, _template(name), multiturn)
            assert a.demo_label_starts[0] == b.demo_label_starts[0]
            # Replacing each demo's label word gives the other setting's prompt, character for character.
            text = a.context
            for start, old, new in sorted(zip(a.demo_label_starts, correct.demo_label_words,
                                              permuted.demo_label_words), reverse=True):
                assert text[start:start + len(old)] == old
                text = text[:start] + new + text[start + len(old):]
            assert text == b.context


def test_zero_shot_chat_is_the_query_alone():
    spec = get_spec("unnatural")
    pool, queries = load_examples("unnatural")
    prompt = build_prompt(spec, queries[0], pool, 0, "zeroshot", SEED)
    for multiturn in (True, False):
        rendering = chat.render(prompt, _template("space"), multiturn)
        assert rendering.context == f"User: {INSTRUCTION}\n\n{prompt.query_text}\nAssistant: "
        assert rendering.demo_readout_offsets == ()


def test_prompt_modes_and_missing_template():
    assert [chat.prompt_mode(a, m) for a, m in ((False, True), (True, False), (True, True))] == list(chat.MODES)
    from tiny_models import tiny_tokenizer

    with pytest.raises(FalseDemoError, match="model 'my/base-model': its tokenizer has no chat template"):
        chat.check_has_template(tiny_tokenizer(), "my/base-model")


def test_label_token_index_skips_only_the_moved_newline():
    from tiny_models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    newline = tokenizer("\nsport", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(newline[:1]) == "\n"
    assert chat.label_token_index(tokenizer, "assistant\n", newline) == 1
    spaced = tokenizer(" sport", add_special_tokens=False)["input_ids"]
    assert chat.label_token_index(tokenizer, "Assistant: ", spaced) == 0
    assert chat.label_token_index(tokenizer, "Answer:", spaced) == 0
    bare, with_space = label_token_ids(tokenizer, ["sport"], lead=""), label_token_ids(tokenizer, ["sport"])
    assert bare == [newline[1]] and with_space == [spaced[0]] and bare != with_space


# ------------------------------------------------------------------------------- through the lm_eval command


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                OMP_NUM_THREADS="1")


def _lm_eval(model_dir, tmp_path, *flags, model="hf-earlyexit", extra_args=",exit_layer=-1"):
    command = [
        str(LM_EVAL), "--model", model, "--model_args", f"pretrained={model_dir},dtype=float32{extra_args}",
        "--tasks", ",".join(TASKS), "--num_fewshot", str(K), "--limit", str(LIMIT), "--device", "cpu",
        "--batch_size", "4", "--output_path", str(tmp_path), "--log_samples", *flags,
    ]
    out = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
    return out


def _read_run(tmp_path):
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    samples = {}
    for task in TASKS:
        path = next(tmp_path.rglob(f"samples_{task}_*.jsonl"))
        samples[task] = {json.loads(line)["doc"]["uid"]: json.loads(line) for line in path.read_text().splitlines()}
    return results, samples


@pytest.mark.parametrize("name,flags,mode", [
    ("newline", ["--apply_chat_template"], "chat_multiturn"),
    ("space", ["--apply_chat_template", "--fewshot_as_multiturn", "false"], "chat_single"),
])
def test_lm_eval_command_renders_pairs_and_scores_the_label_token(chat_model_dir, tmp_path, name, flags, mode):
    import transformers

    model_dir = chat_model_dir(name)
    out = _lm_eval(model_dir, tmp_path, *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    results, samples = _read_run(tmp_path)
    spec = get_spec("unnatural")
    pool, queries = load_examples("unnatural")
    by_uid = {query.uid: query for query in queries}
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sha = chat.template_sha256(TEMPLATES[name])
    for task in TASKS:
        metadata = results["configs"][task]["metadata"]
        assert metadata["prompt_mode"] == mode and metadata["chat_template_sha256"] == sha
    assert samples[TASKS[0]].keys() == samples[TASKS[1]].keys() and len(samples[TASKS[0]]) == LIMIT
    lead = "" if name == "newline" else " "
    label_ids = label_token_ids(tokenizer, spec.label_word_list, lead=lead)
    for uid in samples[TASKS[0]]:
        contexts = {}
        for task in TASKS:
            sample = samples[task][uid]
            setting = task.rsplit("_", 1)[1]
            prompt = build_prompt(spec, by_uid[uid], pool, K, setting, SEED)
            expected = chat.render(prompt, chat.tokenizer_template(tokenizer), mode == "chat_multiturn").context
            arguments = [sample["arguments"][f"gen_args_{i}"] for i in range(spec.num_classes)]
            context = arguments[0]["arg_0"]
            assert context == expected
            # lm-eval drops the target delimiter with a chat template: continuations are the bare words.
            assert [argument["arg_1"] for argument in arguments] == list(spec.label_word_list)
            contexts[setting] = prompt
            # The score is log p(first label token | context up to the label), the header's newline included.
            ids = tokenizer(context, add_special_tokens=False)["input_ids"]
            if lead == " ":
                ids = tokenizer(context[:-1], add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
            lls = [float(response[0]) for response in sample["filtered_resps"]]
            assert lls == pytest.approx([float(logits[i]) for i in label_ids], abs=1e-4)
        assert contexts["correct"].demo_uids == contexts["permuted"].demo_uids


def test_lm_eval_command_names_a_model_without_chat_template(tiny_model_dir, tmp_path):
    out = _lm_eval(tiny_model_dir("llama"), tmp_path, "--apply_chat_template", model="hf", extra_args="")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "its tokenizer has no chat template" in out.stderr and str(tiny_model_dir("llama")) in out.stderr
    assert "Traceback" not in out.stderr


# ------------------------------------------------------------------------------- through falsedemo sweep


@pytest.mark.parametrize("name,flags,mode", [
    ("newline", ["--apply_chat_template"], "chat_multiturn"),
    ("space", ["--apply_chat_template", "--fewshot_as_multiturn", "false"], "chat_single"),
])
def test_sweep_reads_demo_labels_where_the_template_puts_them(chat_model_dir, tmp_path, name, flags, mode):
    import transformers

    model_dir = chat_model_dir(name)
    command = [
        str(FALSEDEMO), "sweep", "--model_args", f"pretrained={model_dir},dtype=float32", "--tasks", ",".join(TASKS),
        "--num_fewshot", str(K), "--limit", str(LIMIT), "--batch_size", "2", "--device", "cpu",
        "--bootstrap_iters", "0", "--no_plots", "--output_path", str(tmp_path), *flags,
    ]
    out = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(tmp_path.rglob("sweep.json")).read_text())
    assert result["config"]["prompt_mode"] == mode
    assert result["config"]["chat_template_sha256"] == chat.template_sha256(TEMPLATES[name])

    # The per-position curve at demo i equals reading, by hand, the token before demo i's label in the
    # templated prompt against the labels' first tokens as spelt there.
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    spec = get_spec("unnatural")
    pool, queries = load_examples("unnatural")
    template = chat.tokenizer_template(tokenizer)
    from lm_eval_false_demos.core.metrics import calibrated_accuracy, label_accuracy

    for task in TASKS:
        setting = task.rsplit("_", 1)[1]
        probabilities, targets, query_probabilities, gold = [], [], [], []
        for query in queries[:LIMIT]:
            prompt = build_prompt(spec, query, pool, K, setting, SEED)
            rendering = chat.render(prompt, template, mode == "chat_multiturn")
            encoding = tokenizer(rendering.context, add_special_tokens=False, return_offsets_mapping=True)
            ends = {end: index for index, (_, end) in enumerate(encoding["offset_mapping"])}
            ids = label_token_ids(tokenizer, spec.label_word_list, lead=rendering.label_lead(0))
            with torch.no_grad():
                logits = model(torch.tensor([encoding["input_ids"]])).logits[0]
            row = []
            for demo, readout in enumerate(rendering.demo_readout_offsets):
                position = ends[readout]
                shown = prompt.demo_shown_labels[demo]
                assert encoding["input_ids"][position + 1] == ids[shown]  # the label's first token follows
                row.append(logits[position, ids].softmax(-1).numpy())
            probabilities.append(row)
            targets.append(prompt.demo_true_labels)
            # The query: the label right after the open assistant turn (a header's trailing space joins the label).
            context = rendering.context[:-1] if rendering.context.endswith(" ") else rendering.context
            query_ids = label_token_ids(tokenizer, spec.label_word_list, lead=_query_label_lead(tokenizer, chat.ChatOptions()))
            with torch.no_grad():
                last = model(torch.tensor([tokenizer(context, add_special_tokens=False)["input_ids"]])).logits[0, -1]
            query_probabilities.append(last[query_ids].softmax(-1).numpy())
            gold.append(prompt.query_label)
        probabilities, targets = np.array(probabilities), np.array(targets)
        curve = result["tasks"][task]["per_position"]["acc"][-1]
        for demo in range(K):
            assert curve[demo] == pytest.approx(label_accuracy(probabilities[:, demo], targets[:, demo]))
        assert result["tasks"][task]["per_layer"]["calibrated_acc"][-1] == pytest.approx(
            calibrated_accuracy(np.array(query_probabilities), np.array(gold)))


# ------------------------------------------------------------------------------- falsedemo heads


def _query_label_lead(tokenizer, options: chat.ChatOptions | None) -> str:
    """The oracle for the query's label lead, from the template alone: " " in raw prompts (lm-eval's target
    delimiter); in a chat, what the assistant header leaves: nothing after a newline, " " after a space."""
    if options is None:
        return " "
    opened = chat.tokenizer_template(tokenizer)([{"role": "user", "content": "x"}])
    return " " if opened.endswith(" ") else ""


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_heads_label_positions_follow_the_template(chat_model_dir, name):
    """Prefix matching reads the shown label words' tokens in the templated prompt lm-eval's task builds; the
    readout is the token before the query's label, scored with the label's spelling after the assistant header."""
    from lm_eval_false_demos.integrations import head_runs
    from lm_eval_false_demos.integrations.run_context import open_model

    context = open_model("hf", {"pretrained": str(chat_model_dir(name)), "dtype": "float32"}, device="cpu")
    tokenizer = context.tokenizer
    request = head_runs.HeadsRequest(task="falsedemo_unnatural_permuted", num_prompts=3, seed=SEED, num_fewshot=K,
                                     top_k=1, apply_chat_template=True, fewshot_as_multiturn=True)
    prompts = head_runs.HeadPrompts(context, request)
    items = prompts.scoring_items("falsedemo_unnatural_permuted", 3)
    assert prompts.recorded_format["prompt_mode"] == "chat_multiturn"
    spec = get_spec("unnatural")
    lead = _query_label_lead(tokenizer, chat.ChatOptions(multiturn=True))
    assert lead == ("" if name == "newline" else " ")
    ids = label_token_ids(tokenizer, spec.label_word_list, lead=lead)
    pool, queries = load_examples("unnatural")
    for query, item in zip(queries, items):
        raw = build_prompt(spec, query, pool, K, "permuted", SEED)
        positions = sorted(item.same_class_positions + item.other_class_positions)
        read = "".join(tokenizer.decode([item.input_ids[p]]) for p in positions)
        shown = [spec.label_word_list[s] for s in raw.demo_shown_labels]
        assert read.replace(" ", "") == "".join(shown).replace(" ", "")  # exactly the shown words' tokens, in order
        same = [w for w, t in zip(shown, raw.demo_true_labels) if t == raw.query_label]
        assert "".join(tokenizer.decode([item.input_ids[p]]) for p in item.same_class_positions).replace(" ", "") \
            == "".join(same).replace(" ", "")
        assert tokenizer.decode([item.input_ids[-1]]) == ("\n" if name == "newline" else ":")
        assert item.true_label_id == ids[raw.query_label]


def test_heads_command_with_chat_template(chat_model_dir, tmp_path, data_dir, monkeypatch):
    from lm_eval_false_demos.cli import main as cli

    monkeypatch.setenv("FALSEDEMO_DATA_DIR", str(data_dir))
    model = f"pretrained={chat_model_dir('newline')},dtype=float32"
    assert cli.main(["heads", "--model_args", model, "-o", str(tmp_path), "--no_progress", "--no_plots", "-n", "3",
                     "-f", "3", "-k", "2", "--apply_chat_template", "--fewshot_as_multiturn", "false"]) == 0
    payload = json.loads(next(tmp_path.glob("heads_*/heads.json")).read_text())
    assert payload["config"]["prompt_mode"] == "chat_single"
    assert payload["config"]["chat_template_sha256"] == chat.template_sha256(NEWLINE)


def test_sweep_names_a_model_without_chat_template(tiny_model_dir, tmp_path):
    command = [
        str(FALSEDEMO), "sweep", "--model_args", f"pretrained={tiny_model_dir('llama')},dtype=float32",
        "--tasks", TASKS[0], "--num_fewshot", "2", "--limit", "2", "--device", "cpu", "--output_path", str(tmp_path),
        "--apply_chat_template",
    ]
    out = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"model '{tiny_model_dir('llama')},dtype=float32'" not in out.stderr
    assert f"model '{tiny_model_dir('llama')}': its tokenizer has no chat template" in out.stderr
    assert "Loading weights" not in out.stderr  # refused from the tokenizer alone, before the model loads
    assert not list(tmp_path.glob("sweep_*"))


def test_heads_names_a_model_without_chat_template_before_loading_it(tiny_model_dir, tmp_path):
    command = [
        str(FALSEDEMO), "heads", "--model_args", f"pretrained={tiny_model_dir('llama')},dtype=float32",
        "-o", str(tmp_path), "--no_progress", "--no_plots", "-n", "2", "--apply_chat_template",
    ]
    out = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"model '{tiny_model_dir('llama')}': its tokenizer has no chat template" in out.stderr
    assert "Loading weights" not in out.stderr
    assert not list(tmp_path.glob("heads_*"))


def test_heads_refuses_ablation_model_args_with_its_own_hint(tmp_path, capsys):
    from lm_eval_false_demos.cli import main as cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["heads", "--model_args", "pretrained=gemma-3-270m,attn_layers=3", "-o", str(tmp_path)])
    assert exited.value.code == 2
    assert "attn_layers= is not read by falsedemo heads" in capsys.readouterr().err
