"""Write this folder's README.md (and lens_vs_logit.{png,svg}) from lens/training.json and the newest sweep
of each lens under runs/logit and runs/tuned (see run.sh). Every number is read from those files."""

from __future__ import annotations

import json
from pathlib import Path

from lm_eval_false_demos.core import files as results_io

HERE = Path(__file__).resolve().parent
LENSES = ("logit", "tuned")
DATASETS = ("unnatural", "trec")


def newest(lens: str, dataset: str) -> tuple[Path, dict] | None:
    found = sorted((HERE / "runs" / lens / dataset).glob("sweep_*/sweep.json"))
    return (found[-1], json.loads(found[-1].read_text())) if found else None


def interval(values) -> str:
    return "" if not values else f" [{values[0]:+.3f}, {values[1]:+.3f}]"


def curve(payload: dict, dataset: str, setting: str) -> list[float]:
    task = next(t for t in payload["tasks"].values() if t["dataset"] == dataset and t["setting"] == setting)
    return task["per_layer"]["calibrated_acc"]


def training_section(training: dict) -> list[str]:
    held = training["held_out"]
    settings = training["settings"]
    before, after = held["kl_logit_lens"], held["kl_tuned_lens"]
    lines = [
        "## The tuned lens",
        "",
        f"`falsedemo lens train` on {training['architecture']} ({training['num_layers']} layers, "
        f"{training['vocab_size']:,}-token vocabulary): **{training['tokens']:,} tokens** of demonstration text "
        f"({training['steps']} steps of {settings['batch_size']} x {settings['seq_len']} tokens, "
        f"{training['passes_over_text']:.2f} passes over the demo pools of {', '.join(training['datasets'])}; "
        f"no evaluated query), **{training['training_seconds'] / 60:.1f} minutes** of training steps on this shared "
        f"2-core CPU (the two held-out evaluations and loading come on top), "
        f"{training['estimated_tflop']:.0f} TFLOP. The KL was taken at {settings['positions']} random positions per "
        f"sequence over a subset of {int(settings['vocab']):,} vocabulary tokens (half by final probability "
        f"in the batch, half a fresh uniform sample each step); held-out KL below is over the full vocabulary, at "
        f"{held['positions_per_sequence']} positions of {held['sequences']} held-out sequences. Lens file "
        f"`params.pt` sha256 `{training['params_sha256'][:16]}...` (the weights are not committed; `run.sh` retrains them).",
        "",
        "| layer | " + " | ".join(str(layer) for layer in range(len(before))) + " |",
        "|---|" + "---|" * len(before),
        "| KL logit lens (nats) | " + " | ".join(f"{value:.2f}" for value in before) + " |",
        "| KL tuned lens (nats) | " + " | ".join(f"{value:.2f}" for value in after) + " |",
        "",
        f"Mean over layers: {sum(before) / len(before):.2f} -> {sum(after) / len(after):.2f} nats; lower at "
        f"{sum(a < b for a, b in zip(after, before))} of {len(before)} layers.",
        "",
    ]
    return lines


def dataset_section(dataset: str, runs: dict) -> list[str]:
    lines = [f"### {dataset}", ""]
    entries = {lens: payload["datasets"][dataset] for lens, (_, payload) in runs.items()}
    any_entry = next(iter(entries.values()))
    intervals = any_entry["intervals"]
    lines += [f"k = {any_entry['k']}, n = {any_entry['n']} queries, K = {any_entry['num_classes']} "
              f"(chance {any_entry['chance']:.3f}); {intervals['confidence']:.0%} paired-bootstrap intervals "
              f"({intervals['iterations']} resamples over queries) in brackets.", ""]
    lines += ["| lens | correct (last) | permuted (last) | gap | critical layer | early exit: layer, gain "
              "(same data) | held out: layer, gain |", "|---|---|---|---|---|---|---|"]
    for lens, entry in entries.items():
        comparison = entry["by_setting"]["permuted"]
        last, intervals, held = comparison["last_layer"], comparison["intervals"], comparison["held_out"]
        lines.append(
            f"| {lens} | {last['correct']:.3f} | {last['corrupted']:.3f} | {last['gap']:+.3f}{interval(intervals.get('gap'))} "
            f"| {comparison['critical_layer']} | {comparison['early_exit_layer']}, {comparison['early_exit_gain']:+.3f}"
            f"{interval(intervals.get('early_exit_gain'))} | {held.get('early_exit_layer')}, "
            f"{held.get('early_exit_gain', float('nan')):+.3f}{interval(held.get('interval'))} |"
        )
    lines.append("")
    curves = {(lens, setting): curve(payload, dataset, setting) for lens, (_, payload) in runs.items()
              for setting in ("correct", "permuted")}
    header = [f"{setting} {lens}" for setting in ("correct", "permuted") for lens in runs]
    lines += ["Calibrated accuracy per layer:", "", "| layer | " + " | ".join(header) + " |",
              "|---|" + "---|" * len(header)]
    for layer in range(len(next(iter(curves.values())))):
        values = [curves[(lens, setting)][layer] for setting in ("correct", "permuted") for lens in runs]
        lines.append(f"| {layer} | " + " | ".join(f"{value:.3f}" for value in values) + " |")
    lines.append("")
    return lines, entries


def verdict(dataset: str, entries: dict) -> str:
    logit, tuned = (entries[lens]["by_setting"]["permuted"] for lens in LENSES)
    moved = logit["critical_layer"] != tuned["critical_layer"]
    critical = (f"moves from {logit['critical_layer']} to {tuned['critical_layer']}" if moved
                else f"stays at {tuned['critical_layer']}")

    def gains(comparison):
        held = comparison["held_out"]
        return (f"{comparison['early_exit_gain']:+.3f} at layer {comparison['early_exit_layer']}"
                f"{interval(comparison['intervals'].get('early_exit_gain'))}, held out "
                f"{held.get('early_exit_gain', float('nan')):+.3f}{interval(held.get('interval'))}")

    gap_interval = tuned["intervals"].get("gap") or [float("nan")] * 2
    if not gap_interval[0] > 0:
        critical += (f" (but the last-layer gap's interval reaches zero at n = {entries['tuned']['n']}, so neither "
                     "critical layer is established)")
    held_interval = tuned["held_out"].get("interval") or [float("nan")] * 2
    if held_interval[0] > 0:
        outcome = "holds (its interval is above zero)"
    elif held_interval[1] < 0:
        outcome = "is negative (the layer chosen on half the queries does worse than the last layer on the other half)"
    else:
        outcome = "is not established (its interval reaches zero)"
    return (
        f"- **{dataset}**: the critical layer {critical} under the tuned lens. Early-exit gain on permuted "
        f"demonstrations: logit lens {gains(logit)}; tuned lens {gains(tuned)}. Under the tuned lens the held-out "
        f"gain {outcome}."
    )


def figure(runs_by_dataset: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs_by_dataset), figsize=(5 * len(runs_by_dataset), 3.6), squeeze=False)
    for axis, (dataset, runs) in zip(axes[0], runs_by_dataset.items()):
        for lens, (_, payload) in runs.items():
            for setting, color in (("correct", "tab:blue"), ("permuted", "tab:red")):
                axis.plot(curve(payload, dataset, setting), color=color, linestyle="-" if lens == "tuned" else "--",
                          label=f"{setting}, {lens} lens")
        axis.set_title(f"SmolLM2-135M, {dataset}, k = 24")
        axis.set_xlabel("layer")
        axis.set_ylabel("calibrated accuracy")
        axis.legend(fontsize=7)
    fig.tight_layout()
    paths = [results_io.save_figure_atomic(fig, HERE / f"lens_vs_logit.{ext}", overwrite=True) for ext in ("png", "svg")]
    plt.close(fig)
    return paths


def main() -> None:
    training_path = HERE / "lens" / "training.json"
    runs_by_dataset = {dataset: {lens: found for lens in LENSES if (found := newest(lens, dataset))}
                       for dataset in DATASETS}
    complete = {dataset: runs for dataset, runs in runs_by_dataset.items() if len(runs) == len(LENSES)}
    lines = [
        "# Tuned lens vs logit lens on SmolLM2-135M-Instruct",
        "",
        "Regenerate everything with `./run.sh` (trains the lens if `lens/params.pt` is missing, runs one "
        "`falsedemo sweep` per lens and dataset, then `python make_readme.py`). Both sweeps read the same prompts "
        "(k = 24, lm-eval's default seeds, local data); only the decoder of layers 0..L-1 differs. Layer L is "
        "the model's own logits under both lenses, which each run's parity check confirms.",
        "",
    ]
    if training_path.exists():
        lines += training_section(json.loads(training_path.read_text()))
    gemma = HERE / "gemma_cost.txt"
    if gemma.exists():
        lines += [
            "## Gemma 3 270M: keeping a 262k vocabulary affordable",
            "",
            "`falsedemo lens train --estimate_only` (one timed probe step, batch 1 x 128 tokens, 32 loss positions, "
            "65,536-token budget; `gemma_cost.txt`), full vocabulary vs `--vocab 8192`:",
            "",
            "```",
            *gemma.read_text().strip().splitlines(),
            "```",
            "",
            "Minutes are wall-clock on this shared 2-core machine while other jobs ran; "
            "the TFLOP figures do not depend on load. The subset (half the tokens carrying the most final probability in the batch, half a fresh uniform "
            "sample; both distributions renormalised over it) cuts the lens's share of the work from most of it "
            "to about a fifth. What it costs in fidelity: the KL no longer sees probability a layer puts outside "
            "the subset, so a translator is not pushed away from tokens that are neither likely under the final "
            "distribution nor drawn that step (the uniform half re-draws every step, which bounds this), and "
            "logits are only matched up to the subset's normaliser. The held-out KL is always measured over the "
            "full vocabulary; the SmolLM2 lens above was trained this way (8,192 of 49,152 tokens), so its table "
            "shows the fidelity reached. A same-budget full-vocabulary SmolLM2 lens was not trained for comparison.",
            "",
        ]
    pending = [f"{dataset} ({lens})" for dataset, runs in runs_by_dataset.items() for lens in LENSES if lens not in runs]
    if pending:
        lines += [f"Pending sweeps: {', '.join(pending)}.", ""]
    if complete:
        lines += ["## Overthinking under both lenses", ""]
        verdicts = []
        for dataset, runs in complete.items():
            for lens, (path, payload) in runs.items():
                config, folder = payload["config"], path.parent.relative_to(HERE)
                lines.append(f"- {dataset}, {lens} lens: [`{folder}/sweep.json`]({folder}/sweep.json), lens record "
                             f"`{config['lens']['key']}`, parity max abs(lens - logits) at layer L = "
                             f"{config['lens_parity']['max_abs_diff']:.2e} (tolerance {config['lens_parity']['tolerance']:.2e}).")
            lines.append("")
            section, entries = dataset_section(dataset, runs)
            lines += section
            verdicts.append(verdict(dataset, entries))
        figure(complete)
        lines += ["![calibrated accuracy per layer, logit (dashed) vs tuned (solid) lens](lens_vs_logit.png)", "",
                  "## What holds", ""] + verdicts + [""]
    results_io.write_text_atomic(HERE / "README.md", "\n".join(lines), overwrite=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
