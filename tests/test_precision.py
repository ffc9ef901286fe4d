"""Half precision is right or refused: bfloat16 / float16 match float32 within a stated tolerance, and a score
that is not finite stops the run with one line naming the dtype (never a silent 0.0 accuracy).

Tolerance on a log-likelihood or label logit: 2 units of the half format's rounding of the largest magnitude
compared, 2^-8 (bfloat16, 8 significant bits) and 2^-11 (float16, 11 bits) relative to it. Every block rounds
its activations to that precision, and the readout itself is float32 (K label rows and full logits are
upcast), so what remains is the forward's own rounding: on these 4-block models the largest differences seen
are 3.6e-4 (bfloat16) and 7.8e-5 (float16) relative, an order of magnitude inside. Calibrated accuracy is not
compared: its per-label thresholds tie on float noise, so a half-precision run may flip a tie (measured on real
models in reports/precision-and-offload).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from lm_eval.api.instance import Instance

from lm_eval_false_demos.core import precision
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations.models import EarlyExitHFLM

RELATIVE_TOLERANCE = {"bfloat16": 2 ** -8, "float16": 2 ** -11}
CONTEXTS = ["Review: golf Answer: Positive\nReview: kale Answer:", "Tweet: lion Sentiment:"]
CHOICES = [" Positive", " Negative"]
TASK = "falsedemo_unnatural_permuted"


def _requests():
    return [Instance("loglikelihood", {}, (context, choice), idx=2 * doc + i, metadata=(TASK, doc, 1))
            for doc, context in enumerate(CONTEXTS) for i, choice in enumerate(CHOICES)]


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt_neox"])
def test_half_precision_log_likelihoods_match_float32_within_the_stated_tolerance(arch, tiny_model_dir):
    path = str(tiny_model_dir(arch))
    scores = {}
    for dtype in ("float32", "bfloat16", "float16"):
        lm = EarlyExitHFLM(pretrained=path, dtype=dtype, exit_layer=2, batch_size=2, device="cpu")
        scores[dtype] = np.array([value for value, _ in lm.loglikelihood(_requests())])
        assert lm.get_model_info()["falsedemo"]["lens_parity"]["dtype"] == dtype
        assert lm.get_model_info()["falsedemo"]["lens_parity"]["compared_in"] == "float32"
    reference = scores["float32"]
    for dtype, relative in RELATIVE_TOLERANCE.items():
        difference = np.abs(scores[dtype] - reference).max()
        assert difference <= relative * np.abs(reference).max(), (arch, dtype, difference)
        assert difference > 0  # the model really ran in half precision


@pytest.fixture(scope="module")
def overflowing_model(tmp_path_factory, tiny_model_dir):
    """A tiny Llama whose logits reach about 1e5: finite in float32 and bfloat16, inf in float16 (max 65504)."""
    path = tmp_path_factory.mktemp("overflowing")
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(1e6)
    model.save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(tiny_model_dir("llama")).save_pretrained(path)
    return str(path)


def test_float16_overflow_in_the_models_own_logits_is_named_not_blamed_on_module_paths(overflowing_model):
    lm = EarlyExitHFLM(pretrained=overflowing_model, dtype="float16", exit_layer=2, batch_size=2, device="cpu")
    with pytest.raises(FalseDemoError) as error:
        lm.loglikelihood(_requests())
    message = str(error.value)
    assert "\n" not in message and "the model's own logits" in message and "float16" in message
    assert "dtype=bfloat16" in message and "norm_path" not in message
    finite = EarlyExitHFLM(pretrained=overflowing_model, dtype="float32", exit_layer=2, batch_size=2, device="cpu")
    assert np.isfinite([value for value, _ in finite.loglikelihood(_requests())]).all()


def test_plain_hf_scores_that_are_not_finite_stop_our_task_in_one_line(overflowing_model):
    """lm-eval's own hf model: its float16 log-softmax gives NaN, which our task refuses (no 0.0 accuracy)."""
    import lm_eval

    from lm_eval_false_demos.integrations.sweep_prompts import falsedemo_task_manager

    model_args = {"pretrained": overflowing_model, "dtype": "float16"}
    with pytest.raises(FalseDemoError) as error:
        lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=[TASK], limit=2, num_fewshot=2,
                                task_manager=falsedemo_task_manager(None, model_args), device="cpu", batch_size=2,
                                bootstrap_iters=0)
    message = str(error.value)
    assert "\n" not in message and TASK in message and "not finite" in message
    assert "float16" in message and "dtype=bfloat16" in message


def test_require_finite_names_the_dtype_and_what_to_do():
    values = torch.tensor([0.0, float("-inf"), float("nan")])
    with pytest.raises(FalseDemoError, match=r"scores are not finite \(NaN or inf\) \(2 of 3 values\) with the "
                                             r"model in float16: .*dtype=bfloat16"):
        precision.require_finite(values, "scores", torch.float16)
    with pytest.raises(FalseDemoError, match="bfloat16: run with dtype=float32"):
        precision.require_finite(values, "scores", torch.bfloat16)
    finite = torch.tensor([1.0, -2.0])
    assert precision.require_finite(finite, "scores", torch.float16) is finite
