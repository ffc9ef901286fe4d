"""Logit-lens identities on tiny random models of every supported architecture."""

import pytest
import torch

from lm_eval_false_demos.core.architectures import resolve_modules
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.core.lens import early_exit_logits, lens_logits, read_label_logits, residuals

TEXT = "Review: golf Answer: Positive\nReview: onions Answer:"


def _inputs(tokenizer):
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    return torch.cat([ids, ids.flip(1)], dim=0)


@pytest.fixture(scope="module")
def forward(tiny_model):
    arch, model, tokenizer = tiny_model
    input_ids = _inputs(tokenizer)
    with torch.no_grad():
        out = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    return arch, model, tokenizer, input_ids, out


def test_lens_at_last_layer_equals_model_logits(forward):
    arch, model, _, input_ids, out = forward
    modules = resolve_modules(model)
    hidden = residuals(model, input_ids, [modules.num_layers])[0]
    lensed = lens_logits(model, hidden, modules.num_layers)
    assert (lensed - out.logits).abs().max().item() < 1e-4, arch


def test_lens_equals_norm_and_head_of_each_hidden_state(forward):
    arch, model, _, input_ids, out = forward
    modules = resolve_modules(model)
    captured = residuals(model, input_ids)
    assert captured.shape[0] == modules.num_layers + 1
    for layer in range(modules.num_layers):  # hidden_states[L] is already normed by transformers
        assert torch.allclose(captured[layer], out.hidden_states[layer], atol=1e-5), (arch, layer)
        expected = model.get_output_embeddings()(_norm(modules, out.hidden_states[layer]))
        if modules.softcap:
            expected = torch.tanh(expected / modules.softcap) * modules.softcap
        got = lens_logits(model, captured[layer], layer)
        assert (got - expected).abs().max().item() < 1e-4, (arch, layer)


def _norm(modules, hidden):
    hidden = modules.final_norm(hidden)
    return modules.pre_head(hidden) if modules.pre_head is not None else hidden


def test_read_label_logits_equals_full_lens_restricted(forward):
    arch, model, _, input_ids, out = forward
    modules = resolve_modules(model)
    labels = [5, 17, 42]
    positions = [[-1, 3], [2, -2]]
    got = read_label_logits(model, input_ids, positions, labels)
    full = residuals(model, input_ids)
    assert got.shape == (modules.num_layers + 1, 2, 2, 3)
    length = input_ids.shape[1]
    for layer in range(modules.num_layers + 1):
        logits = lens_logits(model, full[layer], layer)
        for b, row in enumerate(positions):
            for p, position in enumerate(row):
                expected = logits[b, position % length, labels]
                assert (got[layer, b, p] - expected).abs().max().item() < 1e-4, (arch, layer)
    last = got[modules.num_layers, 0, 0]
    assert (last - out.logits[0, -1, labels]).abs().max().item() < 1e-4


def test_read_label_logits_subset_and_per_sequence_labels(forward):
    arch, model, _, input_ids, _ = forward
    per_sequence = torch.tensor([[5, 17], [9, 3]])
    got = read_label_logits(model, input_ids, [-1], per_sequence, layers=[1, -1])
    full = read_label_logits(model, input_ids, [-1], list(range(20)))
    assert got.shape == (2, 2, 1, 2)
    assert torch.allclose(got[0, 0, 0], full[1, 0, 0, [5, 17]], atol=1e-5)
    assert torch.allclose(got[1, 1, 0], full[-1, 1, 0, [9, 3]], atol=1e-5)


def test_early_exit_logits_match_lens(forward):
    arch, model, _, input_ids, out = forward
    assert (early_exit_logits(model, input_ids, -1) - out.logits).abs().max().item() < 1e-4
    hidden = residuals(model, input_ids, [2])[0]
    assert torch.allclose(early_exit_logits(model, input_ids, 2), lens_logits(model, hidden, 2), atol=1e-5)


def test_early_exit_skips_later_blocks(tiny_model):
    arch, model, tokenizer = tiny_model
    modules = resolve_modules(model)
    ran = []
    handle = modules.blocks[-1].register_forward_hook(lambda *args: ran.append(True))
    try:
        early_exit_logits(model, _inputs(tokenizer), 1)
    finally:
        handle.remove()
    assert not ran


@pytest.mark.parametrize("layer", [5, -6, 2.5, "x", True])
def test_bad_layers_fail_naming_range(tiny_model, layer):
    _, model, tokenizer = tiny_model
    with pytest.raises(FalseDemoError, match="0..4"):
        early_exit_logits(model, _inputs(tokenizer), layer)


def test_integral_float_layer_accepted(tiny_model):
    _, model, tokenizer = tiny_model
    assert early_exit_logits(model, _inputs(tokenizer), -1.0).shape[-1] == model.get_output_embeddings().weight.shape[0]
