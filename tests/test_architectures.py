"""Per-architecture module lookup: every tiny model resolves; unknown ones fail loudly; overrides work."""

import pytest
import torch

from lm_eval_false_demos.core.architectures import resolve_modules, supported_architectures
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.core.lens import lens_logits, residuals
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


def test_block_output_is_input_plus_attention_and_mlp_writes(tiny_model):
    """The table's attention post-norm is the one the block applies: each block's output equals its input plus
    the attention output (through ``attn_post_norm`` when listed) plus the MLP output (through the block's
    post-feedforward norm when it has one). A Llama-style ``post_attention_layernorm`` (the pre-MLP norm)
    listed as a post-norm, or an OLMo 2 / Gemma post-norm left out, breaks the equality."""
    arch, model, _ = tiny_model
    modules = resolve_modules(model)
    captured = {}

    def keep(name):
        def hook(module, args, kwargs, output):
            captured[name] = (args[0] if args else kwargs["hidden_states"], output)
        return hook

    handles = []
    for name, module in (("block", modules.blocks[1]), ("attn", modules.attention[1]), ("mlp", modules.mlp[1])):
        handles.append(module.register_forward_hook(keep(name), with_kwargs=True))
    try:
        with torch.no_grad():
            model(torch.tensor([[3, 4, 5, 6, 7, 8]]))
    finally:
        for handle in handles:
            handle.remove()
    block_in, block_out = captured["block"]
    block_out = block_out[0] if isinstance(block_out, tuple) else block_out
    attn_out = captured["attn"][1][0]
    mlp_out = captured["mlp"][1]
    post_attn = modules.attn_post_norm[1]
    post_mlp = getattr(modules.blocks[1], "post_feedforward_layernorm", None)
    with torch.no_grad():
        attn_write = post_attn(attn_out) if post_attn is not None else attn_out
        mlp_write = post_mlp(mlp_out) if post_mlp is not None else mlp_out
    torch.testing.assert_close(block_out, block_in + attn_write + mlp_write, atol=1e-5, rtol=1e-5)
    assert (post_attn is not None) == (arch in ("gemma2", "gemma3", "olmo2"))


def test_readme_lists_exactly_the_table():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    listed = readme.split("Supported architectures (`config.model_type`", 1)[1].split(":", 1)[1].split("(unknown", 1)[0]
    assert [name.strip() for name in listed.replace("\n", " ").split(",")] == supported_architectures()
