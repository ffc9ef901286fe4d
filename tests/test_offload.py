"""Big-model placement: accelerate CPU + disk offload gives the in-memory numbers on every path.

Offload is forced the way users ask for it, through lm-eval's model args (``parallelize=True,
max_cpu_memory=...,offload_folder=...``: ``device_map="auto"`` with a CPU memory budget): half the model's
weight bytes leave part of the model in memory and the rest on disk; 1 KB puts all of it on disk (no
module fits). Each placement's ``hf_device_map`` is checked to really be split / all on disk. Offloaded
weights are ``meta`` tensors until accelerate's hook loads them, so any code that asks a parameter where
it is, or reads a weight outside the hook, fails here. Three families: Llama (RMSNorm, untied head),
Gemma 3 (tied head, soft-cap, post-attention norms), GPT-NeoX (LayerNorm with biases, parallel blocks).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

FAMILIES = ("llama", "gemma3", "gpt_neox")
PLACEMENTS = ("memory", "partial", "disk")
TASK = "falsedemo_unnatural_permuted"
LIMIT, NUM_FEWSHOT, FEWSHOT_SEED = 6, 3, 1234


def weight_bytes(path) -> int:
    return sum(os.path.getsize(path / name) for name in os.listdir(path) if name.endswith(".safetensors"))


def placement_args(path, placement: str, tmp_path) -> dict:
    """lm-eval model args placing the model in memory, split between memory and disk, or all on disk."""
    if placement == "memory":
        return {}
    budget = weight_bytes(path) // 2 if placement == "partial" else 1000
    return {"parallelize": True, "max_cpu_memory": budget, "offload_folder": str(tmp_path / f"offload_{placement}")}


def check_placement(model, placement: str) -> None:
    device_map = getattr(model, "hf_device_map", None)
    if placement == "memory":
        assert not device_map or set(device_map.values()) <= {"cpu"}
        return
    places = set(device_map.values())
    assert places == ({"cpu", "disk"} if placement == "partial" else {"disk"}), device_map
    assert any(parameter.device.type == "meta" for parameter in model.parameters())


def create(name: str, args: dict, batch_size: int = 2):
    import lm_eval.api.registry
    import lm_eval.models  # noqa: F401

    return lm_eval.api.registry.get_model(name).create_from_arg_obj(args, {"batch_size": batch_size, "device": "cpu"})


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval_false_demos.integrations.sweep_prompts import falsedemo_task_manager

    return falsedemo_task_manager(None, {})  # our task folder only: indexing lm-eval's own costs seconds


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tiny_model_dir):
    return request.param, tiny_model_dir(request.param)


def _evaluate(lm, task_manager):
    """(per-document choice log-likelihoods [N, K], calibrated accuracy) of one lm-eval run."""
    import lm_eval

    out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], limit=LIMIT, num_fewshot=NUM_FEWSHOT,
                                  fewshot_random_seed=FEWSHOT_SEED, task_manager=task_manager, bootstrap_iters=0,
                                  log_samples=True)
    samples = sorted(out["samples"][TASK], key=lambda sample: sample["doc_id"])
    scores = np.array([[float(response[0]) for response in sample["filtered_resps"]] for sample in samples])
    return scores, out["results"][TASK]["calibrated_acc,none"]


@pytest.mark.parametrize("wrapper,extra", [("hf-earlyexit", {"exit_layer": 2}),
                                           ("hf-ablate", {"heads": "1:0;2:1", "mlp_layers": "0"})])
def test_wrappers_offloaded_give_the_in_memory_log_likelihoods(family, wrapper, extra, task_manager, tmp_path):
    arch, path = family
    results = {}
    for placement in PLACEMENTS:
        lm = create(wrapper, {"pretrained": str(path), "dtype": "float32", **extra,
                              **placement_args(path, placement, tmp_path)})
        check_placement(lm.model, placement)
        results[placement] = _evaluate(lm, task_manager)
        assert lm.get_model_info()["falsedemo"]["lens_parity"]["max_abs_diff"] < 1e-4
    scores, accuracy = results["memory"]
    assert scores.shape == (LIMIT, 3) and np.isfinite(scores).all()
    for placement in ("partial", "disk"):
        np.testing.assert_allclose(results[placement][0], scores, rtol=0, atol=1e-5, err_msg=f"{arch} {placement}")
        assert results[placement][1] == accuracy, (arch, placement)


def test_sweep_offloaded_gives_the_in_memory_curves(family, task_manager, tmp_path):
    from lm_eval_false_demos.integrations import sweep

    arch, path = family
    curves = {}
    for placement in PLACEMENTS:
        args = {"pretrained": str(path), "dtype": "float32", **placement_args(path, placement, tmp_path)}
        lm = create("hf", args, batch_size=3)
        check_placement(lm.model, placement)
        result = sweep.run_sweep(model="hf", model_args=args, tasks=[TASK], limit=LIMIT, num_fewshot=NUM_FEWSHOT,
                                 seed=[0, 1234, 1234, FEWSHOT_SEED], batch_size=3, bootstrap_iters=0,
                                 task_manager=task_manager, lm=lm, show_progress=False)
        assert result["config"]["lens_parity"]["max_abs_diff"] < 1e-4
        curves[placement] = result["tasks"][TASK]["per_position"]
    for placement in ("partial", "disk"):
        for metric, values in curves["memory"].items():
            if metric in ("num_preceding_demos", "readout"):
                assert curves[placement][metric] == values
            else:
                np.testing.assert_allclose(curves[placement][metric], values, rtol=0, atol=1e-9,
                                           err_msg=f"{arch} {placement} {metric}")


def _heads_readouts(model, tokenizer):
    """(scores of every head over 3 prompts, last-layer label logits under three ablation conditions)."""
    from lm_eval_false_demos.analysis import head_evaluation, head_scores
    from lm_eval_false_demos.analysis.head_scores import ScoringItem
    from lm_eval_false_demos.core.ablation_specs import make_ablation

    ids = tokenizer("Review: golf Answer: Positive\nReview: kale Answer: Negative\nReview: corn Answer:").input_ids
    items = [ScoringItem(input_ids=tuple(ids), same_class_positions=(3, 5), other_class_positions=(9, 11),
                         num_classes=2, shown_label_id=ids[4], true_label_id=ids[10])] * 2
    scores = head_scores.score_heads(model, items)
    query = head_evaluation.EncodedQuery(input_ids=tuple(ids), label_ids=(ids[4], ids[10]), gold=0, shown_for_gold=1)
    conditions = [None, make_ablation(model, heads=[(1, 0), (2, 1)]), make_ablation(model, heads=[(0, 2)])]
    logits, promotion = head_evaluation.query_readouts(model, query, conditions,
                                                       head_scores.resolve_modules(model), with_promotion=True)
    return scores.prefix_matching, scores.label_promoting, logits, promotion


def test_head_scores_and_evaluation_offloaded_equal_in_memory(family, tmp_path):
    arch, path = family
    readouts = {}
    for placement in PLACEMENTS:
        lm = create("hf", {"pretrained": str(path), "dtype": "float32", **placement_args(path, placement, tmp_path)})
        check_placement(lm.model, placement)
        readouts[placement] = _heads_readouts(lm.model, lm.tokenizer)
    for placement in ("partial", "disk"):
        for got, expected in zip(readouts[placement], readouts["memory"]):
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=f"{arch} {placement}")
    prefix, promoting = readouts["memory"][:2]
    assert np.abs(promoting).max() > 0 and np.abs(prefix).max() > 0  # real scores, not zeros


def test_tuned_lens_loads_and_trains_on_an_offloaded_model(family, tmp_path):
    from lm_eval_false_demos.analysis.lens_text import TrainingSettings
    from lm_eval_false_demos.analysis.lens_training import LensTrainer
    from lm_eval_false_demos.core.architectures import resolve_modules
    from lm_eval_false_demos.core.lens import Readout
    from lm_eval_false_demos.core.tuned_lens import load_tuned_lens

    arch, path = family
    windows = [[(7 * row + 3 * column) % 500 + 3 for column in range(16)] for row in range(8)]
    settings = TrainingSettings(seq_len=16, batch_size=4, positions=0, seed=0, checkpoint_every=100)
    results = {}
    for placement in PLACEMENTS:
        lm = create("hf", {"pretrained": str(path), "dtype": "float32", **placement_args(path, placement, tmp_path)})
        check_placement(lm.model, placement)
        model = lm.model.requires_grad_(False)
        trainer = LensTrainer(model, resolve_modules(model), settings)
        losses = trainer.fit(windows, steps=3)
        folder = tmp_path / f"lens_{placement}"
        trainer.lens.save(folder)
        lens = load_tuned_lens(folder, model, resolve_modules(model).num_layers)
        ids = torch.tensor(windows[:2])
        labels = Readout(model, lens=lens).read_label_logits(ids, [-1, 5], [3, 4, 5])
        results[placement] = (np.array(losses), labels.cpu().numpy())
    for placement in ("partial", "disk"):
        np.testing.assert_allclose(results[placement][0], results["memory"][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(results[placement][1], results["memory"][1], rtol=0, atol=1e-5)
