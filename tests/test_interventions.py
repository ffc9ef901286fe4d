"""Ablation identities on tiny random models of every architecture, and spec parsing / validation."""

import contextlib
import json

import pytest
import torch

from lm_eval_false_demos.core.architectures import resolve_modules
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.core.ablation_specs import make_ablation, parse_heads, parse_blocks
from lm_eval_false_demos.core.interventions import ablate

LAYER, HEAD = 2, 1


@pytest.fixture(scope="module")
def one_model():
    """A single architecture for checks that do not depend on it."""
    from tiny_models import build_tiny_model

    model, tokenizer = build_tiny_model("llama")
    return "llama", model, tokenizer


@pytest.fixture(scope="module")
def ids(tiny_model):
    _, _, tokenizer = tiny_model
    one = tokenizer("Review: golf Answer: Positive\nReview: kale Answer:", return_tensors="pt").input_ids
    return torch.cat([one, one.roll(3, dims=1)])


def _capture(module, pre=False):
    store = {}
    if pre:
        handle = module.register_forward_pre_hook(lambda m, args: store.__setitem__("in", args[0].detach().clone()))
    else:
        handle = module.register_forward_hook(
            lambda m, args, out: store.__setitem__("out", (out[0] if isinstance(out, tuple) else out).detach().clone())
        )
    return store, handle


def _run(model, ids, ablation=None, captures=()):
    """Logits and captured tensors; captures are registered after the ablation so they see its effect."""
    stores = []
    with contextlib.ExitStack() as stack:
        if ablation is not None:
            stack.enter_context(ablate(model, ablation))
        for module, pre in captures:
            store, handle = _capture(module, pre)
            stores.append(store)
            stack.callback(handle.remove)
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits
    return logits, stores


def _head_contribution(projection, z, modules, head):
    lo, hi = head * modules.head_dim, (head + 1) * modules.head_dim
    weight = projection.weight
    if type(projection).__name__ == "Conv1D":  # GPT-2 stores (in, out)
        return z[..., lo:hi] @ weight[lo:hi, :]
    return z[..., lo:hi] @ weight[:, lo:hi].T


@pytest.mark.parametrize("positions", ["last", "all"])
def test_zeroing_a_head_subtracts_its_write(tiny_model, ids, positions):
    arch, model, _ = tiny_model
    modules = resolve_modules(model)
    projection = modules.attn_out_proj[LAYER]
    _, (clean,) = _run(model, ids, captures=[(projection, True), (projection, False)][:1])
    _, (clean_out,) = _run(model, ids, captures=[(projection, False)])
    ablation = make_ablation(model, heads=f"{LAYER}:{HEAD}", positions=positions)
    _, (ablated_out,) = _run(model, ids, ablation, captures=[(projection, False)])
    expected = clean_out["out"] - _head_contribution(projection, clean["in"], modules, HEAD)
    if positions == "last":
        assert torch.equal(ablated_out["out"][:, :-1], clean_out["out"][:, :-1]), arch
        assert (ablated_out["out"][:, -1] - expected[:, -1]).abs().max() < 1e-5, arch
        assert not torch.allclose(ablated_out["out"][:, -1], clean_out["out"][:, -1])
    else:
        assert (ablated_out["out"] - expected).abs().max() < 1e-5, arch


def test_all_heads_equal_attention_block_up_to_output_bias(tiny_model, ids):
    arch, model, _ = tiny_model
    modules = resolve_modules(model)
    all_heads = ";".join(f"{LAYER}:{h}" for h in range(modules.num_heads))
    heads = make_ablation(model, heads=all_heads)
    block = make_ablation(model, attn_layers=str(LAYER))
    attention = modules.attention[LAYER]
    heads_logits, (heads_attn,) = _run(model, ids, heads, captures=[(attention, False)])
    block_logits, (block_attn,) = _run(model, ids, block, captures=[(attention, False)])
    bias = getattr(modules.attn_out_proj[LAYER], "bias", None)
    assert torch.equal(block_attn["out"][:, -1], torch.zeros_like(block_attn["out"][:, -1]))
    if bias is None:
        assert torch.equal(heads_attn["out"][:, -1], torch.zeros_like(heads_attn["out"][:, -1])), arch
        assert (heads_logits - block_logits).abs().max() < 1e-5, arch
    else:
        # exactly the projection's bias is what "all heads" leaves and "whole block" removes
        assert torch.equal(heads_attn["out"][:, -1], bias.expand_as(heads_attn["out"][:, -1])), arch
        assert torch.equal(heads_attn["out"][:, :-1], block_attn["out"][:, :-1])
        assert not torch.allclose(heads_logits[:, -1], block_logits[:, -1])
        original = bias.detach().clone()
        with torch.no_grad():
            bias.zero_()
        try:
            # everywhere, so that earlier positions (which the last one attends to) match too
            unbiased_logits, _ = _run(model, ids, make_ablation(model, heads=all_heads, positions="all"))
        finally:
            with torch.no_grad():
                bias.copy_(original)
        block_everywhere, _ = _run(model, ids, make_ablation(model, attn_layers=str(LAYER), positions="all"))
        assert (unbiased_logits - block_everywhere).abs().max() < 1e-5, arch


def test_zeroing_mlp_removes_its_write_at_last_position_only(tiny_model, ids):
    arch, model, _ = tiny_model
    modules = resolve_modules(model)
    clean_logits, _ = _run(model, ids)
    logits, (mlp,) = _run(model, ids, make_ablation(model, mlp_layers="1-"), captures=[(modules.mlp[1], False)])
    written = mlp["out"].view(*ids.shape, -1)  # OPT's fc2 sees [B * T, d]
    assert torch.equal(written[:, -1], torch.zeros_like(written[:, -1])), arch
    assert written[:, :-1].abs().sum(-1).gt(0).all()
    assert torch.allclose(logits[:, :-1], clean_logits[:, :-1], atol=1e-5)
    assert not torch.allclose(logits[:, -1], clean_logits[:, -1])


def _values(modules, captured, head):
    hd, nh = modules.head_dim, modules.num_heads
    if modules.qkv_layout == "separate":
        return captured[..., head * hd:(head + 1) * hd]
    if modules.qkv_layout == "concat":
        return captured[..., (2 * nh + head) * hd:(2 * nh + head + 1) * hd]
    return captured[..., (3 * head + 2) * hd:(3 * head + 3) * hd]


def test_qkv_method_gives_uniform_attention_over_earlier_values(tiny_model, ids):
    arch, model, _ = tiny_model
    modules = resolve_modules(model)
    if modules.num_kv_heads != modules.num_heads:
        with pytest.raises(FalseDemoError, match="grouped-query"):
            make_ablation(model, heads=f"{LAYER}:{HEAD}", head_method="qkv")
        return
    value_module = modules.qkv[LAYER][-1]
    projection = modules.attn_out_proj[LAYER]
    _, (clean,) = _run(model, ids, captures=[(value_module, False)])
    ablation = make_ablation(model, heads=f"{LAYER}:{HEAD}", head_method="qkv")
    _, (z,) = _run(model, ids, ablation, captures=[(projection, True)])
    values = _values(modules, clean["out"], HEAD)
    length = ids.shape[1]
    expected = values[:, :-1].sum(1) / length  # q = 0: equal scores; the position's own value is zeroed
    lo, hi = HEAD * modules.head_dim, (HEAD + 1) * modules.head_dim
    assert (z["in"][:, -1, lo:hi] - expected).abs().max() < 1e-5, arch


def test_ablation_rows_follow_attention_mask_and_explicit_positions(one_model):
    _, model, tokenizer = one_model
    one = tokenizer("Review: golf Answer: Positive\nReview: kale Answer:", return_tensors="pt").input_ids
    ids = torch.cat([one, one.roll(3, dims=1)])
    modules = resolve_modules(model)
    mlp = modules.mlp[0]
    ablation = make_ablation(model, mlp_layers="0")
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # right padding on the first sequence
    with torch.no_grad(), ablate(model, ablation, attention_mask=mask) as rows:
        store, handle = _capture(mlp)
        try:
            model(ids, attention_mask=mask, use_cache=False)
            zero_rows = store["out"].abs().sum(-1) == 0
            assert zero_rows[0].nonzero().flatten().tolist() == [ids.shape[1] - 4]
            assert zero_rows[1].nonzero().flatten().tolist() == [ids.shape[1] - 1]
            rows.update(positions=[[1, 2], [0, 3]])
            model(ids, use_cache=False)
            zero_rows = store["out"].abs().sum(-1) == 0
            assert zero_rows[0].nonzero().flatten().tolist() == [1, 2]
            assert zero_rows[1].nonzero().flatten().tolist() == [0, 3]
        finally:
            handle.remove()


def test_spec_parsing(tmp_path):
    assert parse_heads("14:6;16:7") == ((14, 6), (16, 7))
    assert parse_heads(" 14:6 ; 16:7;14:6 ") == ((14, 6), (16, 7))
    assert parse_heads([[1, 2], "3:4", {"layer": 5, "head": 6}]) == ((1, 2), (3, 4), (5, 6))
    assert parse_heads("auto") == "auto"
    assert parse_blocks("16-27") == tuple(range(16, 28))
    assert parse_blocks("3;5;7-9") == (3, 5, 7, 8, 9)
    assert parse_blocks("12-", num_layers=18) == tuple(range(12, 18))
    assert parse_blocks(4.0) == (4,)
    path = tmp_path / "heads.json"
    path.write_text(json.dumps({"kind": "falsedemo.heads", "top_k": "1:2;3:0"}))
    assert parse_heads(f"@{path}") == ((1, 2), (3, 0))
    path.write_text(json.dumps({"top_k": [[1, 2], [0, 3]]}))
    assert parse_heads(f"@{path}") == ((1, 2), (0, 3))


@pytest.mark.parametrize(
    "spec, message",
    [
        (dict(heads="14.6"), "malformed head '14.6'"),
        (dict(heads="4:0"), "block 4 out of range; allowed blocks 0..3"),
        (dict(heads="1:9"), "head 9 of block 1 out of range; allowed heads 0..3"),
        (dict(attn_layers="2-9"), r"range 2-9 is out of range; allowed blocks 0..3"),
        (dict(mlp_layers="1-1000000"), r"^mlp_layers='1-1000000': range 1-1000000 is out of range; allowed blocks 0..3 "),
        (dict(mlp_layers="3-1"), "empty"),
        (dict(mlp_layers="-1"), "malformed mlp_layers='-1'"),
        (dict(attn_layers="a;b"), "malformed"),
        (dict(heads="1:0", positions="first"), "positions='first' is not allowed; allowed: last, all"),
        (dict(heads="1:0", head_method="mean"), "head_method='mean' is not allowed; allowed: zero, qkv"),
        (dict(heads="1:0", attn_layers="1"), "whole attention is zeroed"),
        (dict(heads="@/nonexistent/heads.json"), "does not exist"),
    ],
)
def test_bad_specs_fail_before_any_forward(one_model, spec, message):
    _, model, _ = one_model
    with pytest.raises(FalseDemoError, match=message):
        make_ablation(model, **spec)


def test_heads_file_without_top_k(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"heads": []}))
    with pytest.raises(FalseDemoError, match="no 'top_k' key"):
        parse_heads(f"@{path}")


@pytest.mark.parametrize("spec", ["1-100000000", "1-1000000", "0-" + "9" * 5000, "2;" * 20000 + "100000"])
def test_huge_layer_specs_fail_in_one_short_line_without_building_a_list(spec):
    """A typo must not become a 7.9 MB message or a MemoryError: ranges are checked arithmetically."""
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(FalseDemoError) as raised:
        parse_blocks(spec, None, "mlp_layers")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    message = str(raised.value)
    assert "\n" not in message and len(message) < 300, message[:400]
    assert "out of range" in message
    assert peak < 20 * 1024 * 1024  # far below a list of 10**8 ints (3.2 GB) or even 10**6 (36 MB)
