"""hf-earlyexit / hf-ablate through lm-eval's HFLM machinery equal the core lens and ablation numbers."""

import pytest
import torch
import transformers
from lm_eval.api.instance import Instance

from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.core.ablation_specs import make_ablation
from lm_eval_false_demos.core.interventions import ablate
from lm_eval_false_demos.core.lens import early_exit_logits, read_label_logits
from lm_eval_false_demos.integrations.models import AblatedHFLM, EarlyExitHFLM

CONTEXTS = ["Review: golf Answer: Positive\nReview: kale Answer:", "Tweet: lion Sentiment:"]
CHOICES = [" Positive", " Negative"]
COMMON = dict(device="cpu", dtype="float32", batch_size=2)


def _requests(task="falsedemo_sst2_permuted"):
    requests = []
    for doc_id, context in enumerate(CONTEXTS):
        for choice in CHOICES:
            requests.append(
                Instance("loglikelihood", {}, (context, choice), idx=len(requests), metadata=(task, doc_id, 1))
            )
    return requests


def _expected(model, tokenizer, layer, ablation=None):
    """Log-probs of the first choice token from the core lens (and ablation) on one unpadded sequence."""
    out = []
    for context in CONTEXTS:
        ids = tokenizer(context, return_tensors="pt").input_ids
        first = [tokenizer(context + choice).input_ids[ids.shape[1]] for choice in CHOICES]
        with contextlib_ablate(model, ablation):
            logits = early_exit_logits(model, ids, layer)[0, -1]
            labels = read_label_logits(model, ids, [-1], first, layers=[layer])[0, 0, 0]
        logprobs = torch.log_softmax(logits, -1)[first]
        assert torch.allclose(labels - labels[0], logits[first] - logits[first][0], atol=1e-5)
        out.extend(logprobs.tolist())
    return out


def contextlib_ablate(model, ablation):
    import contextlib

    return ablate(model, ablation) if ablation is not None else contextlib.nullcontext()


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma2"])
def saved(request, tiny_model_dir):
    path = tiny_model_dir(request.param)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return request.param, path, model, tokenizer


@pytest.mark.parametrize("exit_layer", [0, 2, -1.0])
def test_exit_layer_through_lm_eval_equals_lens(saved, exit_layer):
    arch, path, model, tokenizer = saved
    lm = EarlyExitHFLM(pretrained=str(path), exit_layer=exit_layer, **COMMON)
    got = [logprob for logprob, _ in lm.loglikelihood(_requests())]
    expected = _expected(model, tokenizer, int(exit_layer) % 5)
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-4, arch
    info = lm.get_model_info()["falsedemo"]
    assert info["exit_layer"] == int(exit_layer) % 5 and info["num_layers"] == 4
    assert info["requested"]["exit_layer"] == exit_layer and info["label_scoring"] == "first"
    # lm-eval merges get_model_info into results["config"]: -1, -1.0 and 4 are one readout, one record.
    recorded = lm.get_model_info()["model_args"]
    assert recorded == {"pretrained": str(path), "dtype": "float32", "exit_layer": int(exit_layer) % 5}
    assert type(recorded["exit_layer"]) is int


def test_ablation_through_lm_eval_equals_core(saved):
    arch, path, model, tokenizer = saved
    lm = AblatedHFLM(pretrained=str(path), heads="1:0;2:3", mlp_layers="3", exit_layer=-1, **COMMON)
    got = [logprob for logprob, _ in lm.loglikelihood(_requests())]
    ablation = make_ablation(model, heads="1:0;2:3", mlp_layers="3")
    assert max(abs(a - b) for a, b in zip(got, _expected(model, tokenizer, 4, ablation))) < 1e-4, arch
    plain = _expected(model, tokenizer, 4)
    assert max(abs(a - b) for a, b in zip(got, plain)) > 1e-4
    info = lm.get_model_info()["falsedemo"]
    assert info["ablation"] == {
        "heads": "1:0;2:3", "attn_layers": [], "mlp_layers": [3], "positions": "last", "head_method": "zero"
    }


def test_other_tasks_score_the_full_continuation(saved):
    arch, path, model, tokenizer = saved
    lm = EarlyExitHFLM(pretrained=str(path), exit_layer=-1, **COMMON)
    requests = [Instance("loglikelihood", {}, (CONTEXTS[0], " Positive golf"), idx=0, metadata=("sst2", 0, 1))]
    ours = lm.loglikelihood(requests)[0][0]
    from lm_eval.models.huggingface import HFLM

    plain = HFLM(pretrained=str(path), **COMMON).loglikelihood(requests)[0][0]
    assert abs(ours - plain) < 1e-4
    first = EarlyExitHFLM(pretrained=str(path), exit_layer=-1, label_scoring="full", **COMMON)
    assert first._label_scoring == "full"


def test_early_exit_multi_token_continuations_equal_lens(saved):
    arch, path, model, tokenizer = saved
    lm = EarlyExitHFLM(pretrained=str(path), exit_layer=2, **COMMON)
    pairs = [(CONTEXTS[0], " Positive golf"), (CONTEXTS[1], " Negative"), (CONTEXTS[1], " kale onions tiger")]
    requests = [Instance("loglikelihood", {}, pair, idx=i, metadata=("sst2", i, 1)) for i, pair in enumerate(pairs)]
    got = [logprob for logprob, _ in lm.loglikelihood(requests)]
    for (context, continuation), logprob in zip(pairs, got):
        context_ids = tokenizer(context).input_ids
        whole = tokenizer(context + continuation).input_ids
        logits = early_exit_logits(model, torch.tensor([whole[:-1]]), 2)[0]
        logprobs = torch.log_softmax(logits, -1)
        expected = sum(logprobs[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole)))
        assert abs(logprob - expected) < 1e-4, (arch, continuation)


@pytest.fixture(scope="module")
def llama_dir(tiny_model_dir):
    return str(tiny_model_dir("llama"))


@pytest.mark.parametrize(
    "cls, args, message",
    [
        (EarlyExitHFLM, dict(exit_layer=5), r"exit_layer=5 is out of range .*allowed: 0..4"),
        (EarlyExitHFLM, dict(exit_layer=-6), "out of range"),
        (EarlyExitHFLM, dict(exit_layer=2.5), "exit_layer=2.5 is not an integer"),
        (EarlyExitHFLM, dict(), "needs exit_layer"),
        (AblatedHFLM, dict(), "needs heads="),
        (AblatedHFLM, dict(heads="4:0"), "block 4 out of range; allowed blocks 0..3"),
        (AblatedHFLM, dict(heads="1:7"), "head 7 of block 1 out of range; allowed heads 0..3"),
        (AblatedHFLM, dict(heads="12.1"), "malformed head"),
        (AblatedHFLM, dict(attn_layers="2-7"), r"out of range; allowed blocks 0..3"),
        (AblatedHFLM, dict(mlp_layers="x"), "malformed mlp_layers"),
        (AblatedHFLM, dict(heads="1:0", positions="first"), "positions='first' is not allowed"),
        (AblatedHFLM, dict(heads="1:0", head_method="mean"), "head_method='mean' is not allowed"),
        (EarlyExitHFLM, dict(exit_layer=2, dtype="bogus"), "dtype='bogus' is not allowed; allowed: auto"),
        (EarlyExitHFLM, dict(exit_layer=2, positions="all"), "only apply to ablations"),
        (AblatedHFLM, dict(mlp_layers="1", head_method="qkv"), "applies to heads= only"),
        (AblatedHFLM, dict(heads="3:0", exit_layer=2), r"ablated layers \[3\] never run with exit_layer=2"),
        (AblatedHFLM, dict(heads="1:0", head_method="qkv"), "grouped-query"),
        (EarlyExitHFLM, dict(exit_layer=2, label_scoring="last"), "label_scoring='last' is not allowed"),
        (EarlyExitHFLM, dict(exitlayer=2), "did you mean exit_layer"),
        (EarlyExitHFLM, dict(exit_layer=1.5), r"^exit_layer=1.5 is not an integer; allowed: 0..L, L the model's "),
        (EarlyExitHFLM, dict(exit_layer="last"), r"^exit_layer='last' is not an integer; allowed: 0..L"),
        (EarlyExitHFLM, dict(exit_layer=9), r"exit_layer=9 is out of range for a model with 4 blocks \(5 layers: the embeddings and each block's "
         r"output\); allowed: 0..4"),
        (EarlyExitHFLM, dict(exit_layer=2, ablate_heads="1:0"), "unknown model arg ablate_heads"),
    ],
)
def test_bad_model_args_fail_clearly(llama_dir, cls, args, message):
    with pytest.raises(FalseDemoError, match=message):
        cls(pretrained=llama_dir, **{**COMMON, **args})


def test_first_token_collision_is_an_error(llama_dir):
    lm = EarlyExitHFLM(pretrained=llama_dir, exit_layer=2, **COMMON)
    requests = [
        Instance("loglikelihood", {}, (CONTEXTS[0], choice), idx=i, metadata=("falsedemo_x_correct", 0, 1))
        for i, choice in enumerate([" Positive", " Positive golf"])
    ]
    with pytest.raises(FalseDemoError, match="share their first token"):
        lm.loglikelihood(requests)


def test_unsupported_architecture_fails_and_paths_fix_it(tmp_path):
    from tiny_models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = transformers.BloomConfig(vocab_size=len(tokenizer), hidden_size=32, n_layer=2, n_head=2)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(FalseDemoError, match=r"unsupported architecture 'bloom'.*supported: .*gpt2.*llama"):
        EarlyExitHFLM(pretrained=str(tmp_path), exit_layer=1, **COMMON)
    lm = EarlyExitHFLM(
        pretrained=str(tmp_path), exit_layer=-1, layers_path="transformer.h", norm_path="transformer.ln_f", **COMMON
    )
    assert lm.get_model_info()["falsedemo"]["path_overrides"] == {
        "layers_path": "transformer.h", "norm_path": "transformer.ln_f"
    }
    assert len(lm.loglikelihood(_requests())) == 4


@pytest.mark.parametrize("cls, args", [(EarlyExitHFLM, dict(exit_layer=2)), (AblatedHFLM, dict(heads="1:0"))])
def test_forward_passes_build_no_autograd_graph(saved, cls, args):
    """Like HFLM's own call: a graph would cost memory and time for nothing."""
    _, path, _, _ = saved
    lm = cls(pretrained=str(path), **args, **COMMON)
    seen = []
    model_call = lm._model_call

    def recording_call(*call_args, **kwargs):
        logits = model_call(*call_args, **kwargs)
        seen.append(logits.requires_grad)
        return logits

    lm._model_call = recording_call
    lm.loglikelihood(_requests())
    assert seen and not any(seen)
