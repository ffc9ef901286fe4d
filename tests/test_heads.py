"""False-induction-head scoring on a hand-built model, the head-write maths, and the random-head control."""

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from lm_eval_false_demos.core import data_loading as dl
from lm_eval_false_demos.analysis import head_evaluation, head_prompts, head_readout, head_scores
from lm_eval_false_demos.results import heads_files
from lm_eval_false_demos.core.architectures import resolve_modules
from lm_eval_false_demos.errors import FalseDemoError
from tiny_models import ARCHITECTURES

# ---------------------------------------------------------------------------------------------------------
# A 2-layer GPT-2 whose weights are set by hand so that head (1, FALSE_HEAD) is a false induction head.
#
# Residual subspaces (d = 256): CLASS dims 0..2 (object tokens), LABEL dims 3..5 (label tokens),
# PREV_CLASS dims 6..8 (written by layer 0), BOS dim 9, one-hot positions in dims 64..127.
# Layer 0 head 0 attends from every token to the previous one and copies its CLASS into PREV_CLASS, so a
# label token learns which class its demo's object had. Layer 1 head FALSE_HEAD matches the readout's own
# CLASS against PREV_CLASS: it attends to the label tokens of earlier same-class demos and copies their
# LABEL identity into the output direction of that label (GPT-2 ties the unembedding to the embeddings).
# Every other head has small random weights, the MLPs are zero: the scorer has to find the one head.

K = 3
D = 256
HEAD_DIM = 64
N_HEAD = 4
FALSE_HEAD = 2
CLASS, LABEL, PREV_CLASS, BOS_DIM, POS = 0, 3, 6, 9, 64
OBJECT_IDS = (0, 1, 2)  # one object token per class
LABEL_IDS = (3, 4, 5)  # label word token of class j
BOS_ID = 6


def _set_head(c_attn_weight, c_proj_weight, head, query, key, value, out):
    """Write one head's Q/K/V maps (d -> head_dim, as (in, out) blocks) and its O map (head_dim -> d)."""
    lo, hi = head * HEAD_DIM, (head + 1) * HEAD_DIM
    c_attn_weight[:, lo:hi] = query
    c_attn_weight[:, D + lo:D + hi] = key
    c_attn_weight[:, 2 * D + lo:2 * D + hi] = value
    c_proj_weight[lo:hi, :] = out


def hand_built_false_induction_model():
    config = transformers.GPT2Config(
        vocab_size=16, n_embd=D, n_layer=2, n_head=N_HEAD, n_positions=64, attn_implementation="eager"
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).float().eval()
    eye = torch.eye(D)
    with torch.no_grad():
        wte = torch.zeros(16, D)
        for c, token in enumerate(OBJECT_IDS):
            wte[token, CLASS + c] = 1.0
        for j, token in enumerate(LABEL_IDS):
            wte[token, LABEL + j] = 1.0
        wte[BOS_ID, BOS_DIM] = 1.0
        model.transformer.wte.weight.copy_(wte)
        model.transformer.wpe.weight.copy_(eye[POS:POS + 64])
        for block in model.transformer.h:
            block.mlp.c_fc.weight.zero_(), block.mlp.c_fc.bias.zero_()
            block.mlp.c_proj.weight.zero_(), block.mlp.c_proj.bias.zero_()
            block.attn.c_attn.bias.zero_(), block.attn.c_proj.bias.zero_()
            block.attn.c_attn.weight.normal_(0, 0.02)
            block.attn.c_proj.weight.normal_(0, 0.02)
        for norm in [block.ln_1 for block in model.transformer.h] + [model.transformer.ln_f]:
            norm.weight.fill_(1.0), norm.bias.zero_()

        # Layer 0, head 0: previous-token head. q_t = e_t, k_s = e_{s+1} in head space (positions < 63).
        attn0 = model.transformer.h[0].attn
        query = torch.zeros(D, HEAD_DIM)
        key = torch.zeros(D, HEAD_DIM)
        for t in range(HEAD_DIM):
            query[POS + t, t] = 1.0
            if t + 1 < HEAD_DIM:
                key[POS + t, t + 1] = 1.0
        value = torch.zeros(D, HEAD_DIM)
        out = torch.zeros(HEAD_DIM, D)
        for c in range(K):
            value[CLASS + c, c] = 0.1  # undo LayerNorm's ~x10 scale so PREV_CLASS is of order 1
            out[c, PREV_CLASS + c] = 1.0
        _set_head(attn0.c_attn.weight, attn0.c_proj.weight, 0, query, key, value, out)

        # Layer 1, FALSE_HEAD: query CLASS against key PREV_CLASS; copy LABEL identity to the output.
        attn1 = model.transformer.h[1].attn
        query = torch.zeros(D, HEAD_DIM)
        key = torch.zeros(D, HEAD_DIM)
        value = torch.zeros(D, HEAD_DIM)
        out = torch.zeros(HEAD_DIM, D)
        for c in range(K):
            query[CLASS + c, c] = 1.0
            key[PREV_CLASS + c, c] = 1.0
            value[LABEL + c, c] = 0.1
            out[c, LABEL + c] = 1.0
        _set_head(attn1.c_attn.weight, attn1.c_proj.weight, FALSE_HEAD, query, key, value, out)
    model.tie_weights()
    return model


def permuted_items(num_prompts=24, num_demos=12, seed=0):
    """Token-level permuted prompts: BOS, (object, shown label) pairs, query object; shift s in 1..K-1."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(num_prompts):
        shift = int(rng.integers(1, K))
        classes = rng.integers(0, K, size=num_demos)
        query_class = int(rng.integers(0, K))
        ids, same, other = [BOS_ID], [], []
        for c in classes:
            ids.append(OBJECT_IDS[c])
            (same if c == query_class else other).append(len(ids))
            ids.append(LABEL_IDS[(c + shift) % K])
        ids.append(OBJECT_IDS[query_class])
        items.append(
            head_scores.ScoringItem(
                input_ids=tuple(ids),
                same_class_positions=tuple(same),
                other_class_positions=tuple(other),
                true_label_id=LABEL_IDS[query_class],
                shown_label_id=LABEL_IDS[(query_class + shift) % K],
                num_classes=K,
            )
        )
    return items


@pytest.fixture(scope="module")
def false_induction_model():
    return hand_built_false_induction_model()


def test_hand_built_false_induction_head_ranks_first(false_induction_model):
    scores = head_scores.score_heads(false_induction_model, permuted_items())
    ranked = scores.ranked()
    assert (ranked[0]["layer"], ranked[0]["head"]) == (1, FALSE_HEAD)
    assert ranked[0]["prefix_matching"] > 0.9  # nearly all its readout attention is on same-class labels
    assert ranked[0]["label_promoting"] > 1.0
    others = [row for row in ranked[1:]]
    assert max(abs(row["label_promoting"]) for row in others) < 0.5 * ranked[0]["label_promoting"]
    assert scores.top_k(1) == [(1, FALSE_HEAD)]
    # The mechanism is real: zeroing the head makes the model stop following the shown label.
    from lm_eval_false_demos.core.ablation_specs import make_ablation
    from lm_eval_false_demos.core.interventions import ablate

    item = permuted_items(num_prompts=1, seed=3)[0]
    ids = torch.tensor([item.input_ids])
    with torch.no_grad():
        logits = false_induction_model(ids).logits[0, -1]
        with ablate(false_induction_model, make_ablation(false_induction_model, heads=f"1:{FALSE_HEAD}")):
            ablated = false_induction_model(ids).logits[0, -1]
    follow = logits[item.shown_label_id] - logits[item.true_label_id]
    assert follow > 1.0
    assert ablated[item.shown_label_id] - ablated[item.true_label_id] < 0.1 * follow


def test_scoring_restores_the_attention_implementation(tiny_model_factory):
    model, _ = tiny_model_factory("llama")
    model.set_attn_implementation("sdpa")
    items = [head_scores.ScoringItem(tuple(range(3, 20)), (4, 9), (6, 12), 5, 7, 3)]
    scores = head_scores.score_heads(model, items)
    assert scores.prefix_matching.shape == (1, 4, 4)
    assert model.config._attn_implementation == "sdpa"


def _last_row_weights(model, ids, implementation):
    """Every layer's attention weights at the last position, [L, H, S], under ``implementation``."""
    modules = resolve_modules(model)
    rows = {}

    def keep(layer):
        def hook(module, args, output):
            rows[layer] = output[1][0, :, -1, :].clone()

        return hook

    handles = [modules.attention[layer].register_forward_hook(keep(layer)) for layer in range(modules.num_layers)]
    model.set_attn_implementation(implementation)
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        for handle in handles:
            handle.remove()
        model.set_attn_implementation("eager")
    return torch.stack([rows[layer] for layer in range(modules.num_layers)]), logits


@pytest.mark.parametrize("arch", [arch for arch in ARCHITECTURES if arch != "gemma2"])  # gemma2 soft-caps: eager
def test_readout_row_attention_equals_eager_attention_last_row(arch, tiny_model_factory):
    """The sdpa variant's one recomputed row is eager attention's last row (rotary, GQA, gemma3's
    query_pre_attn_scalar and its sliding window over a prompt longer than the window), and the model's
    output is sdpa's."""
    from lm_eval_false_demos.core.readout_attention import IMPLEMENTATION

    model, _ = tiny_model_factory(arch)
    ids = torch.randint(3, 500, (1, 90), generator=torch.Generator().manual_seed(2))
    eager_rows, eager_logits = _last_row_weights(model, ids, "eager")
    readout_rows, readout_logits = _last_row_weights(model, ids, IMPLEMENTATION)
    assert readout_rows.shape == eager_rows.shape == (4, 4, 90)
    torch.testing.assert_close(readout_rows, eager_rows, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(readout_logits, eager_logits, atol=1e-5, rtol=1e-4)
    if arch == "gemma3":  # some layers slide: their row puts zero weight on keys older than the window
        assert (eager_rows[:, :, : 90 - 64].sum(-1) == 0).any()


def test_soft_capped_attention_scores_under_eager_and_others_under_the_readout_variant(tiny_model_factory):
    from lm_eval_false_demos.core.readout_attention import IMPLEMENTATION, weights_capturing_attention

    gemma2, _ = tiny_model_factory("gemma2")
    llama, _ = tiny_model_factory("llama")
    with weights_capturing_attention(gemma2) as used:
        assert used == "eager"
    with weights_capturing_attention(llama) as used:
        assert used == IMPLEMENTATION == llama.config._attn_implementation
    assert llama.config._attn_implementation == "eager"
    items = [head_scores.ScoringItem(tuple(range(3, 80)), (4, 9, 30), (6, 12, 50), 5, 7, 3)]
    assert np.isfinite(head_scores.score_heads(gemma2, items).prefix_matching).all()


def test_scores_do_not_depend_on_the_attention_path(tiny_model_factory):
    """Scoring through eager attention (the slow reference) gives the scores the readout variant gives."""
    model, _ = tiny_model_factory("gemma3")
    items = [head_scores.ScoringItem(tuple(range(3, 90)), (4, 9, 40), (6, 12, 70), 5, 7, 3)]
    fast = head_scores.score_heads(model, items)
    reference = head_scores.score_heads(model, items, eager=True)
    np.testing.assert_allclose(fast.prefix_matching, reference.prefix_matching, atol=1e-6)
    np.testing.assert_allclose(fast.label_promoting, reference.label_promoting, atol=1e-5, rtol=1e-4)
    assert np.abs(fast.prefix_matching).max() > 1e-3  # the scores compared are not all zero


@pytest.fixture(scope="module")
def tiny_model_factory():
    from tiny_models import build_tiny_model

    return build_tiny_model


# ---------------------------------------------------------------------------------------------------------
# Head-write maths: the per-head split and the frozen norms add up to the model's own computation


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3", "gpt_neox"])
def test_head_writes_sum_to_the_output_projection(arch, tiny_model_factory):
    model, _ = tiny_model_factory(arch)
    modules = resolve_modules(model)
    out_proj = modules.attn_out_proj[1]
    z = torch.randn(modules.num_heads * modules.head_dim)
    writes = head_readout.head_writes(out_proj, z, modules.num_heads, modules.head_dim)
    bias = out_proj.bias if getattr(out_proj, "bias", None) is not None else 0
    torch.testing.assert_close(writes.sum(0) + bias, out_proj(z[None])[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_frozen_norm_is_exact_on_the_residual_it_was_frozen_at(arch, tiny_model_factory):
    """Components add up: the frozen map applied to the whole residual equals the norm (minus its bias)."""
    model, _ = tiny_model_factory(arch)
    norm = resolve_modules(model).final_norm
    x = 3 * torch.randn(norm.weight.shape[0])
    parts = torch.randn(5, x.shape[0])
    parts[-1] = x - parts[:-1].sum(0)
    mapped = head_readout.frozen_norm(norm, x)(parts).sum(0)
    bias = getattr(norm, "bias", None)
    expected = norm(x[None])[0] - (bias if bias is not None else 0)
    torch.testing.assert_close(mapped, expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Random-head control


def test_random_heads_are_distinct_reproducible_and_cover_all_heads():
    draws = head_scores.draw_random_heads(num_layers=18, num_heads=4, k=5, draws=200, seed=7)
    assert draws == head_scores.draw_random_heads(18, 4, 5, 200, seed=7)
    assert draws != head_scores.draw_random_heads(18, 4, 5, 200, seed=8)
    for draw in draws:
        assert len(set(draw)) == 5
        assert all(0 <= layer < 18 and 0 <= head < 4 for layer, head in draw)
    # Layer and head ranges are not swapped (the paper's bug): late layers are drawn, heads stay < 4.
    seen = {pair for draw in draws for pair in draw}
    assert {layer for layer, _ in seen} == set(range(18))
    assert {head for _, head in seen} == set(range(4))
    with pytest.raises(FalseDemoError):
        head_scores.draw_random_heads(2, 2, 5, 1, 0)


def test_format_heads_round_trips_through_the_ablation_parser():
    from lm_eval_false_demos.core.ablation_specs import parse_heads

    pairs = [(14, 6), (16, 7), (3, 0)]
    assert head_scores.format_heads(pairs) == "14:6;16:7;3:0"
    assert list(parse_heads(head_scores.format_heads(pairs))) == pairs


# ---------------------------------------------------------------------------------------------------------
# Evaluation readout: cached context + one query-token forward per condition equals a full forward


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_cached_query_readout_matches_full_forward_with_and_without_ablation(arch, tiny_model_factory):
    from lm_eval_false_demos.core.ablation_specs import make_ablation
    from lm_eval_false_demos.core.interventions import ablate
    from lm_eval_false_demos.core.lens import read_label_logits

    model, _ = tiny_model_factory(arch)
    modules = resolve_modules(model)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 500, (1, 90), generator=generator)  # longer than gemma3's sliding window of 64
    query = head_evaluation.EncodedQuery(tuple(ids[0].tolist()), (10, 11, 12), gold=0, shown_for_gold=1)
    ablation = make_ablation(model, heads="2:1;3:0", modules=modules)
    cached, promotion = head_evaluation.query_readouts(model, query, [None, ablation], modules, with_promotion=True)
    full = read_label_logits(model, ids, [-1], list(query.label_ids), layers=[modules.num_layers])[0, 0, 0]
    with ablate(model, ablation, modules=modules):
        full_ablated = read_label_logits(model, ids, [-1], list(query.label_ids), layers=[modules.num_layers])[0, 0, 0]
    np.testing.assert_allclose(cached[0], full.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(cached[1], full_ablated.numpy(), atol=1e-4, rtol=1e-4)
    assert promotion.shape == (modules.num_layers, modules.num_heads)
    # The same head writes read in the scoring pass give the same label-promoting scores.
    item = head_scores.ScoringItem(query.input_ids, (5,), (6,), 10, 11, 3)
    scored = head_scores.score_heads(model, [item], modules)
    np.testing.assert_allclose(scored.label_promoting[0], promotion, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_batched_conditions_equal_one_ablated_forward_each(arch, tiny_model_factory):
    """Conditions batched as rows (in chunks that do not divide C) give each row's own ablation, no leakage."""
    from lm_eval_false_demos.core.ablation_specs import make_ablation
    from lm_eval_false_demos.core.interventions import ablate
    from lm_eval_false_demos.core.lens import read_label_logits

    model, _ = tiny_model_factory(arch)
    modules = resolve_modules(model)
    ids = torch.randint(3, 500, (1, 80), generator=torch.Generator().manual_seed(5))
    query = head_evaluation.EncodedQuery(tuple(ids[0].tolist()), (10, 11, 12), gold=0, shown_for_gold=1)
    specs = [None, "0:0;3:3", "1:1", "2:0;2:1;2:2;2:3", "3:2"]
    conditions = [None if spec is None else make_ablation(model, heads=spec, modules=modules) for spec in specs]
    batched = head_evaluation.query_readouts(model, query, conditions, modules, condition_batch_size=2)
    one_by_one = head_evaluation.query_readouts(model, query, conditions, modules, condition_batch_size=1)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5, rtol=1e-5)
    for row, condition in enumerate(conditions):
        manager = ablate(model, condition, modules=modules) if condition else contextlib.nullcontext()
        with manager:
            full = read_label_logits(model, ids, [-1], list(query.label_ids), layers=[modules.num_layers])[0, 0, 0]
        np.testing.assert_allclose(batched[row], full.numpy(), atol=1e-4, rtol=1e-4)
    assert len({tuple(np.round(row, 4)) for row in batched}) == len(conditions)


def test_per_row_head_zeroing_rejects_other_ablations(tiny_model_factory):
    from lm_eval_false_demos.core.ablation_specs import make_ablation
    from lm_eval_false_demos.core.interventions import zero_heads_per_row

    model, _ = tiny_model_factory("llama")
    with pytest.raises(FalseDemoError, match="head zeroing at the last position only"):
        with zero_heads_per_row(model, [None, make_ablation(model, attn_layers="2-")]):
            pass


def test_pooled_gap_recovered_by_condition_reads_the_evaluation_layout():
    """Two datasets: a big gap half recovered and a tiny gap over-recovered. Pooling weighs them by gap."""
    from lm_eval_false_demos.core.metrics import pooled_gap_recovered_by_condition

    def entry(correct, corrupted, top, draws):
        return {"acc_correct": correct, "acc_corrupted": corrupted, "top_k": {"acc_corrupted_ablated": top},
                "random": {"draws": [{"acc_corrupted_ablated": value} for value in draws]}}

    per_dataset = {"a": entry(0.9, 0.3, 0.6, [0.3, 0.36]), "b": entry(0.6, 0.55, 0.75, [0.55, 0.5])}
    top, draws = pooled_gap_recovered_by_condition(per_dataset)
    assert top == pytest.approx(1 - (0.75 - 0.675) / (0.75 - 0.425))  # 0.769, while the ratio mean is 2.25
    assert draws == pytest.approx([1 - (0.75 - 0.425) / 0.325, 1 - (0.75 - 0.43) / 0.325])
    summary = head_evaluation.summarise_evaluation(
        {key: {**value, "top_k": {**value["top_k"], "gap_recovered": 0.0, "correct_change": 0.0,
                                   "label_promoting": 0.0},
               "random": {"draws": [{**d, "gap_recovered": 0.0, "correct_change": 0.0, "label_promoting": 0.0}
                                    for d in value["random"]["draws"]]}}
         for key, value in per_dataset.items()},
        [(1, 0)], [[(0, 0)], [(0, 1)]], "permuted",
    )
    assert summary["pooled_gap_recovered"]["top_k"] == pytest.approx(top)
    assert summary["pooled_gap_recovered"]["random"]["per_draw"] == pytest.approx(draws)
    assert summary["pooled_gap_recovered"]["random"]["max"] == pytest.approx(max(draws))


# ---------------------------------------------------------------------------------------------------------
# heads=@file.json and heads=auto reach the hf-ablate wrapper


def test_heads_file_and_auto_reach_the_ablation_wrapper(tiny_model_dir, tmp_path, monkeypatch, data_dir):
    from lm_eval_false_demos.integrations.models import AblatedHFLM

    from lm_eval_false_demos.integrations import head_runs
    from lm_eval_false_demos.integrations.run_context import open_model

    path = str(tiny_model_dir("llama"))
    common = dict(device="cpu", dtype="float32", batch_size=1)
    context = open_model("hf", {"pretrained": path, "dtype": "float32"}, device="cpu")
    small = dict(num_prompts=4, num_fewshot=6)
    request = head_runs.HeadsRequest(task=head_prompts.DEFAULT_TASK, seed=head_prompts.DEFAULT_SEED, top_k=3, **small)
    scores = head_runs.score_task(context, head_runs.HeadPrompts(context, request), head_prompts.DEFAULT_TASK, 4)
    top = scores.top_k(3)
    payload = heads_files.heads_payload({"model": "hf", "model_args": f"pretrained={path}", "top_k": 3}, scores, top)
    written = heads_files.write_outputs(payload, scores, tmp_path, plots=False, critical_layer=None)
    saved = json.loads(written[0].read_text())
    assert saved["kind"] == "falsedemo.heads" and saved["top_k"] == head_scores.format_heads(top)
    assert len(saved["heads"]) == 16 and saved["heads"][0]["rank"] == 1

    lm = AblatedHFLM(pretrained=path, heads=f"@{written[0]}", **common)
    assert lm.get_model_info()["falsedemo"]["ablation"]["heads"] == head_scores.format_heads(top)

    # heads=auto: hf-ablate scores the default task's lm-eval prompts on itself; shrink the defaults for speed.
    real = head_runs.discover_heads
    calls = []

    def smaller(lm, k, task, num_prompts, seed, num_fewshot=None, given_args=None):
        calls.append((lm, task, seed, given_args))
        return real(lm, 3, task, small["num_prompts"], seed, small["num_fewshot"], given_args=given_args)

    monkeypatch.setattr(head_runs, "discover_heads", smaller)
    lm = AblatedHFLM(pretrained=path, heads="auto", **common)
    assert calls and lm.get_model_info()["falsedemo"]["ablation"]["heads"] == head_scores.format_heads(top)
    # The wrapper itself encodes the prompts (lm-eval's BOS rule and its max_length), as `falsedemo heads`.
    assert calls[0][0] is lm and calls[0][1:3] == (head_prompts.DEFAULT_TASK, head_prompts.DEFAULT_SEED)
    assert calls[0][3]["pretrained"] == path


# ---------------------------------------------------------------------------------------------------------
# The `falsedemo heads` command end to end


def test_heads_command_scores_evaluates_and_writes_a_complete_run(tiny_model_dir, tmp_path, monkeypatch, data_dir):
    from lm_eval_false_demos.cli import main as cli

    monkeypatch.setenv("FALSEDEMO_DATA_DIR", str(data_dir))
    model = f"pretrained={tiny_model_dir('llama')},dtype=float32"
    common = ["--model_args", model, "-o", str(tmp_path), "--no_progress", "--no_plots"]
    assert cli.main(["heads", *common, "-n", "5", "-f", "4", "-k", "2", "--evaluate", "unnatural,sst2",
                     "--limit", "6", "-R", "3", "--random_seed", "4"]) == 0
    (path,) = tmp_path.glob("heads_*/heads.json")
    payload = json.loads(path.read_text())
    assert payload["kind"] == "falsedemo.heads"
    assert payload["config"]["num_prompts"] == 5 and payload["config"]["k"] == 4
    provenance = payload["config"]["data_provenance"]
    assert set(provenance) == {"unnatural", "sst2"}  # the scored task's dataset (unnatural) and the evaluated ones
    assert provenance["sst2"]["source"] == {"kind": "local", "path": str((data_dir / "sst2").resolve())}
    assert provenance["sst2"]["split_rows"] == {"train": 6920, "validation": 872}
    assert provenance["sst2"]["fingerprint"] == dl.data_provenance("sst2")["fingerprint"]
    assert provenance["unnatural"]["source"] == {"kind": "builtin"}
    assert len(payload["heads"]) == 16 and [row["rank"] for row in payload["heads"]] == list(range(1, 17))
    top = [(row["layer"], row["head"]) for row in payload["heads"][:2]]
    assert payload["top_k"] == head_scores.format_heads(top)
    evaluation = payload["evaluation"]
    assert set(evaluation["datasets"]) == {"unnatural", "sst2"}
    assert all(entry["n"] == 6 for entry in evaluation["datasets"].values())
    assert evaluation["random_heads"] == [head_scores.format_heads(d) for d in head_scores.draw_random_heads(4, 4, 2, 3, 4)]
    assert set(payload["timing"]) == {"scoring_seconds", "evaluation_seconds", "total_seconds"}
    assert (path.parent / "heads.csv").is_file()

    # The heads just found, given back with --heads, evaluate to the same numbers without scoring again.
    again = tmp_path / "again"
    assert cli.main(["heads", *common[:2], "-o", str(again), "--no_progress", "--no_plots", "--heads", f"@{path}",
                     "-f", "4", "--evaluate", "unnatural,sst2", "--limit", "6", "-R", "3", "--random_seed", "4"]) == 0
    (second,) = again.glob("heads_*/heads.json")
    replay = json.loads(second.read_text())
    assert replay["heads"] == [] and "scoring_seconds" not in replay["timing"]
    assert replay["evaluation"]["datasets"] == evaluation["datasets"]


def test_heads_loads_through_lm_evals_registry_and_scores_what_it_encodes(tiny_model_dir, tmp_path, monkeypatch,
                                                                         data_dir):
    """`falsedemo heads` loads lm-eval's `hf` model from its registry: model args only lm-eval knows reach the
    scoring. add_bos_token=True puts BOS before every scored prompt (the tiny tokenizer adds none of itself), and
    max_length= is the prompts' token budget (the demonstrations are redrawn to fit, as the lm-eval task does)."""
    from lm_eval_false_demos.cli import main as cli
    from lm_eval_false_demos.integrations import loading

    monkeypatch.setenv("FALSEDEMO_DATA_DIR", str(data_dir))
    created, scored = [], []
    real_create, real_score = loading.create_model, head_scores.score_heads
    monkeypatch.setattr(loading, "create_model", lambda *args: created.append(args) or real_create(*args))
    monkeypatch.setattr(head_scores, "score_heads",
                        lambda model, items, **kwargs: scored.append(list(items)) or real_score(model, items, **kwargs))
    path = str(tiny_model_dir("llama"))

    def run(extra: str) -> tuple[list, dict]:
        output = tmp_path / f"run{len(created)}"
        assert cli.main(["heads", "--model_args", f"pretrained={path}{extra}", "-n", "3", "-f", "4", "-k", "2",
                         "-o", str(output), "--no_progress", "--no_plots"]) == 0
        (heads_file,) = output.glob("heads_*/heads.json")
        return [item.input_ids for item in scored[-1]], json.loads(heads_file.read_text())["config"]

    plain, config = run("")
    model, model_args, _, device = created[-1]
    assert model == "hf" and device is None
    assert model_args == {"pretrained": path, "dtype": "float32", "attn_implementation": "sdpa"}  # heads' defaults
    assert config["model_args"] == {"pretrained": path}  # what was given, as the sweep records it
    assert config["model_identity"]["kind"] == "local_folder"
    assert config["model_identity"]["lm_eval_model_info"]["model_dtype"] == "torch.float32"
    bos = transformers.AutoTokenizer.from_pretrained(path).bos_token_id
    assert all(ids[0] != bos for ids in plain)

    with_bos, config = run(",add_bos_token=True")
    assert created[-1][1]["add_bos_token"] is True and config["model_args"]["add_bos_token"] is True
    assert with_bos == [(bos, *ids) for ids in plain]

    budgeted, config = run(",max_length=90")
    assert config["model_args"]["max_length"] == 90
    # The budget counts the longest label word and some slack, so it bites before the plain prompts reach 90.
    assert budgeted != plain and max(map(len, budgeted)) <= 90


def test_heads_command_rejects_bad_input_in_one_line(capsys, tmp_path):
    from lm_eval_false_demos.cli import main as cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["heads", "--model_args", "pretrained=x", "--heads", "1:0", "-o", str(tmp_path)])
    assert exited.value.code == 2
    assert "--heads only makes sense with --evaluate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["heads", "--model_args", "pretrained=x", "--evaluate", "nosuchset", "-o", str(tmp_path)])
    assert "nosuchset" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_heads_figures_are_written_as_pngs(tmp_path):
    from PIL import Image

    from lm_eval_false_demos.results.heads_files import write_figures

    rng = np.random.default_rng(0)
    scores = head_scores.HeadScores(rng.random((3, 4, 2)), rng.normal(size=(3, 4, 2)))
    written = write_figures(scores, [(2, 1), (3, 0)], tmp_path, "tiny", critical_layer=2)
    assert [path.name for path in written] == ["prefix_matching_by_layer.png", "heads_heatmap.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100


def test_contexts_take_the_models_encoding_with_the_tokenizers_offsets(tiny_model_dir):
    """Head scoring encodes a context with the caller's encoder (HFLM.tok_encode) and aligns the tokenizer's
    character offsets after whatever special tokens that encoder put in front."""
    from lm_eval_false_demos.errors import FalseDemoError

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir("llama"))
    text = "Review: fine film.\nAnswer: Positive"
    plain = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    bos = tokenizer.bos_token_id
    ids, offsets = head_prompts.encode_context(tokenizer, text, lambda t: [bos] + tokenizer(
        t, add_special_tokens=False)["input_ids"])
    assert ids == [bos, *plain["input_ids"]]
    assert offsets == [(0, 0), *map(tuple, plain["offset_mapping"])]
    with pytest.raises(FalseDemoError, match="cannot align"):
        head_prompts.encode_context(tokenizer, text, lambda t: [bos, bos, 5])


def test_heads_scores_a_users_task_found_through_include_path(tiny_model_dir, tmp_path, data_dir, monkeypatch):
    """One prompt route: heads reads the prompts of whatever falsedemo task lm-eval resolves, a user's YAML in an
    --include_path folder too (here our half-label task under another name, with its own k = 6); the scores
    equal those of our task at -f 6, whose prompts are the same."""
    from lm_eval_false_demos._hook import task_config_dir
    from lm_eval_false_demos.cli import main as cli

    monkeypatch.setenv("FALSEDEMO_DATA_DIR", str(data_dir))
    ours = (Path(task_config_dir()) / "falsedemo_unnatural_half.yaml").read_text()
    user_tasks = tmp_path / "user_tasks"
    user_tasks.mkdir()
    template = Path(task_config_dir()) / "_falsedemo_half_template_yaml"  # ours include it from beside them
    (user_tasks / "mine.yaml").write_text(
        ours.replace("task: falsedemo_unnatural_half", "task: falsedemo_mine_half_k6")
        .replace("tag: [falsedemo, falsedemo_half, falsedemo_unnatural]", "tag: [mine]")
        .replace("include: _falsedemo_half_template_yaml", f"include: {template}") + "num_fewshot: 6\n")
    common = ["--model_args", f"pretrained={tiny_model_dir('llama')},dtype=float32", "-n", "4", "-k", "2",
              "--no_progress", "--no_plots"]
    assert cli.main(["heads", *common, "--task", "falsedemo_mine_half_k6", "--include_path", str(user_tasks),
                     "-o", str(tmp_path / "mine")]) == 0
    assert cli.main(["heads", *common, "--task", "falsedemo_unnatural_half", "-f", "6", "-o", str(tmp_path / "ours")]) == 0
    (mine,), (reference,) = (tmp_path / "mine").glob("heads_*/heads.json"), (tmp_path / "ours").glob("heads_*/heads.json")
    mine, reference = json.loads(mine.read_text()), json.loads(reference.read_text())
    assert mine["config"]["task"] == "falsedemo_mine_half_k6" and mine["config"]["k"] == 6
    assert mine["heads"] == reference["heads"] and mine["top_k"] == reference["top_k"]
