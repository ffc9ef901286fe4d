"""Write this folder's README.md and label_sensitivity_by_layer.png from the newest sweep of each job x model
under runs/ (see run.sh). Every number is read from a ``sweep.json``; jobs that have not finished are listed as
pending. The @0 and @100 settings are checked against the leaderboard's correct and permuted runs of the same
queries (leaderboard/runs), which they must reproduce exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from lm_eval_false_demos.analysis.layer_curves import critical_layer  # noqa: E402
from lm_eval_false_demos.core import files as results_io  # noqa: E402

HERE = Path(__file__).resolve().parent
LEADERBOARD_RUNS = HERE.parent.parent / "leaderboard" / "runs"
MODELS = ("gemma-3-270m", "smollm2-135m")
JOBS = {"main": "unnatural, k = 24, all 90 queries", "real": "k = 12, the first 50 queries (SST-2: format 0)"}
FIGURE = "label_sensitivity_by_layer.png"


def newest_sweep(job: str, model: str) -> Path | None:
    found = sorted((HERE / "runs" / job / model).glob("sweep_*/sweep.json"))
    return found[-1] if found else None


def sensitivity_onset(low: list, high: list) -> int | None:
    """First layer from which the slope's interval stays below zero through the last layer."""
    below = [h is not None and h < 0 for h in high]
    if not below or not below[-1]:
        return None
    layer = len(below) - 1
    while layer > 0 and below[layer - 1]:
        layer -= 1
    return layer


def leaderboard_accuracy(model: str, dataset: str, setting: str, n: int, k: int) -> float | None:
    """Final-layer calibrated accuracy of the leaderboard's run of this dataset and setting with the same k and
    N (and lm-eval's default seeds, as here); None where it has none (its SST-2 formats ran 8 queries each)."""
    for path in sorted((LEADERBOARD_RUNS / model).glob("sweep_*/sweep.json")):
        payload = json.loads(path.read_text())
        task = payload["tasks"].get(f"falsedemo_{dataset}_{setting}")
        if task is not None and task["n"] == n and payload["config"]["num_fewshot"] == k:
            return task["per_layer"]["calibrated_acc"][-1]
    return None


def main() -> None:
    runs = {(job, model): newest_sweep(job, model) for job in JOBS for model in MODELS}
    pending = [f"{job} / {model}" for (job, model), path in runs.items() if path is None]
    rows, checks, curves = [], [], {}
    for (job, model), path in runs.items():
        if path is not None:
            payload = json.loads(path.read_text())
            config = payload["config"]
            for dataset, entry in payload["datasets"].items():
                grid = entry["prediction_metrics"]["label_sensitivity"]
                accuracy = np.asarray(grid["calibrated_acc"], dtype=float)  # [shares, layers]
                shares = grid["wrong_shares"]
                slope = grid["slope"]
                last = len(slope["value"]) - 1
                critical = critical_layer(accuracy[0] - accuracy[-1])  # @0 vs @100: the paper's gap
                onset = sensitivity_onset(slope["low"], slope["high"])
                steepest = int(np.nanargmin(np.asarray(slope["value"], dtype=float)))
                n = payload["tasks"][f"falsedemo_{dataset}_permuted"]["n"]
                folder = path.parent.relative_to(HERE)
                rows.append(
                    f"| {model} | {dataset} | {config['num_fewshot']} | {n} | "
                    + " | ".join(f"{value:.3f}" for value in accuracy[:, -1])
                    + f" | {slope['value'][-1]:+.3f} [{slope['low'][-1]:+.3f}, {slope['high'][-1]:+.3f}] | "
                    f"{'-' if critical is None else critical} | {'-' if onset is None else onset} | {steepest} of {last} | "
                    f"[sweep.json]({folder}/sweep.json) |"
                )
                curves[(model, dataset)] = (np.asarray(slope["value"], dtype=float),
                                            np.asarray(slope["low"], dtype=float),
                                            np.asarray(slope["high"], dtype=float), critical)
                for share, setting in ((0, "correct"), (100, "permuted")):
                    reference = leaderboard_accuracy(model, dataset, setting, n, config["num_fewshot"])
                    if reference is not None:
                        ours = accuracy[shares.index(float(share))][-1]
                        checks.append(f"| {model} | {dataset} | @{share} vs {setting} | {ours:.4f} | {reference:.4f} | "
                                      f"{'equal' if abs(ours - reference) < 1e-9 else 'DIFFERENT'} |")
    if curves:
        draw(curves)
    text = [
        "# Label-correctness sensitivity on the embedded models",
        "",
        "How calibrated accuracy falls as the share of wrong demonstration labels grows, per layer: `falsedemo sweep "
        "--wrong_share 0,25,50,75,100` runs each permuted task once more per share, with the same demonstrations and "
        "nested wrong sets (a label wrong at 25% is wrong at 50%), so the five settings are paired query by query. The "
        "sensitivity is the least-squares slope of calibrated accuracy against the wrong share (a fraction 0..1; "
        "StaICC's GLER as a slope): about minus the accuracy lost from all-correct to all-wrong labels. Intervals: 95% "
        "paired bootstrap over queries (1000 resamples, thresholds recomputed). lm-eval's default seeds, local data, "
        "float32, CPU. Regenerate: `reports/label-sensitivity/run.sh` (the sweeps, both models side by side with one thread "
        "each, then this README; `python reports/label-sensitivity/make_readme.py` alone rewrites it from the runs).",
        "",
        "Jobs: " + "; ".join(f"**{name}**: {what}" for name, what in JOBS.items()) + ".",
        "",
        "| model | dataset | k | N | acc @0% | @25% | @50% | @75% | @100% | slope, last layer | critical layer | "
        "slope < 0 from layer | steepest layer | file |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "acc @s%: calibrated accuracy at the last layer with s% of the demonstration labels wrong. Critical layer: the "
        "paper's, on the @0 vs @100 gap (first layer where it reaches half its last-layer value; - when the last gap "
        "is not positive). Slope < 0 from layer: the first layer from which the slope's interval stays below zero "
        "through the last layer (-: the last layer's interval reaches zero). Steepest layer: where the slope is most "
        "negative.",
        "",
        f"![slope by layer]({FIGURE})",
        "",
        "## @0 and @100 reproduce the correct and permuted prompts",
        "",
        "The grid's end points are the correct and permuted settings by construction; the leaderboard's runs of "
        "the same datasets with the same k and N (same seeds, separate commands) must give the same final-layer "
        "accuracy (the leaderboard has no SST-2 format 0 run at N = 50, nor unnatural):",
        "",
        "| model | dataset | grid vs leaderboard | grid | leaderboard | |",
        "|---|---|---|---|---|---|",
        *checks,
        "",
    ]
    if pending:
        text += [f"Pending (not run when this README was generated): {', '.join(pending)}.", ""]
    results_io.write_text_atomic(HERE / "README.md", "\n".join(text), overwrite=True)
    print(f"wrote {HERE / 'README.md'} ({len(rows)} rows, pending: {', '.join(pending) or 'none'})")


def draw(curves: dict) -> None:
    models = [model for model in MODELS if any(m == model for m, _ in curves)]
    figure, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.8), squeeze=False)
    for axis, model in zip(axes[0], models):
        for (m, dataset), (value, low, high, critical) in curves.items():
            if m != model:
                continue
            layers = np.arange(len(value))
            line, = axis.plot(layers, value, label=dataset)
            axis.fill_between(layers, low, high, color=line.get_color(), alpha=0.15)
            if critical is not None:
                axis.axvline(critical, color=line.get_color(), linestyle=":", linewidth=1)
        axis.axhline(0, color="#888", linewidth=0.8)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(model)
        axis.set_xlabel("layer (dotted: critical layer)")
        axis.set_ylabel("accuracy slope over the wrong share")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(HERE / FIGURE, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
