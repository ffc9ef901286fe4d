"""Per-architecture module lookup: every tiny model resolves; unknown ones fail loudly; overrides work."""

import pytest
import torch

from lm_eval_false_demos.architectures import resolve_modules, supported_architectures
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.lens import lens_logits, residuals
from tiny_models import build_tiny_model


def test_every_tiny_architecture_resolves(tiny_model):
    arch, model, _ = tiny_model
    modules = resolve_modules(model)
    config = model.config
    assert modules.num_layers == 4
    assert modules.final_norm is not None
    assert modules.output_head is model.get_output_embeddings()
    assert all(m is not None for m in modules.attention + modules.attn_out_proj + modules.mlp)
    assert modules.num_heads * modules.head_dim == (
        modules.attn_out_proj[0].weight.shape[0] if arch == "gpt2" else modules.attn_out_proj[0].in_features
    )
    assert modules.softcap == getattr(config, "final_logit_softcapping", None)
    assert modules.num_kv_heads == getattr(config, "num_key_value_heads", None) or modules.num_heads
    assert resolve_modules(model) is modules  # cached


def test_unknown_architecture_names_supported_ones():
    model, _ = build_tiny_model("llama")
    original = model.config.model_type
    model.__dict__.pop("_falsedemo_modules", None)
    try:
        type(model.config).model_type = "mystery"
        with pytest.raises(FalseDemoError, match=r"unsupported architecture 'mystery'.*gpt2.*llama.*layers_path="):
            resolve_modules(model)
        modules = resolve_modules(
            model, layers_path="model.layers", norm_path="model.norm", attn_out_path="self_attn.o_proj",
            attn_path="self_attn", mlp_path="mlp",
        )
        ids = torch.tensor([[3, 4, 5, 6]])
        hidden = residuals(model, ids, [4], modules=modules)[0]
        assert torch.allclose(lens_logits(model, hidden, 4, modules), model(ids).logits, atol=1e-4)
        assert modules.qkv_layout is None
    finally:
        type(model.config).model_type = original
        model.__dict__.pop("_falsedemo_modules", None)


def test_bad_override_paths_fail():
    model, _ = build_tiny_model("gpt2")
    with pytest.raises(FalseDemoError, match="'transformer.nope'"):
        resolve_modules(model, layers_path="transformer.nope")
    with pytest.raises(FalseDemoError, match="unknown path override"):
        resolve_modules(model, layer_path="transformer.h")


def test_supported_list_covers_issue_architectures():
    needed = {"gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text", "opt", "phi"}
    assert needed <= set(supported_architectures())
