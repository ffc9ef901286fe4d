"""Write this folder's README.md and figure from the runs under runs/ (see run.sh).

Every number in the README is read from a run's files: ``sweep.json``, ``query_scores.npz``, ``resources.json``
(wall time and peak RSS from /usr/bin/time), ``error.txt`` (a run's one-line refusal) and
``runs/offload/device_map.json``; nothing is typed by hand. Runs that have not finished are listed as pending.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lm_eval_false_demos.core import files as results_io
from lm_eval_false_demos.core.metrics import calibrated_credit
from lm_eval_false_demos.results import figures, query_scores

HERE = Path(__file__).resolve().parent
MODELS = ("gemma-3-270m", "smollm2-135m")
DTYPES = ("float32", "bfloat16", "float16")
DATASET = "unnatural"
SETTINGS = ("correct", "permuted")
# float32 wide and pale underneath, so a half-precision curve on top of it stays visible where they agree
DTYPE_STYLES = {"float32": dict(color="tab:blue", linewidth=4, alpha=0.45), "bfloat16": dict(color="tab:orange"),
                "float16": dict(color="tab:green")}
SETTING_LINES = {"correct": dict(linestyle="-", marker="o"), "permuted": dict(linestyle="--", marker="s")}
FIGURE = "accuracy_by_layer_by_dtype.png"


@dataclass
class Run:
    folder: Path
    sweep: dict | None
    scores: dict | None  # task -> {"scores" [N, L+1, K], "gold", "keys"}
    resources: dict | None
    error: str | None

    @property
    def entry(self) -> dict:
        return self.sweep["datasets"][DATASET]

    def task_scores(self, setting: str) -> dict:
        return self.scores[f"falsedemo_{DATASET}_{setting}"]


def load_run(folder: Path) -> Run | None:
    found = sorted(folder.glob("sweep_*/sweep.json"))
    # /usr/bin/time's record: empty while the run is still going; its last line is the JSON (a failed command's
    # "Command exited with non-zero status" line comes first)
    resources_path = folder / "resources.json"
    recorded = resources_path.read_text().strip().splitlines() if resources_path.exists() else []
    resources = json.loads(recorded[-1]) if recorded else None
    error = (folder / "error.txt").read_text().strip() if (folder / "error.txt").exists() else None
    if error:
        return Run(folder, None, None, resources, error)
    if not found:
        return None
    sweep_path = found[-1]
    scores_path = sweep_path.parent / query_scores.FILE_NAME
    return Run(sweep_path.parent, json.loads(sweep_path.read_text()),
               query_scores.read(scores_path) if scores_path.exists() else None, resources, None)


def interval(values, signed: bool = True) -> str:
    if not values:
        return ""
    return f" [{values[0]:+.3f}, {values[1]:+.3f}]" if signed else f" [{values[0]:.3f}, {values[1]:.3f}]"


def link(run: Run) -> str:
    folder = run.folder.relative_to(HERE)
    return f"[sweep.json]({folder}/sweep.json)"


def resources_cell(run: Run) -> str:
    if not run.resources:
        return "n/a | n/a"
    return f"{run.resources['wall_seconds']:.0f} s | {run.resources['max_rss_kb'] / 1024:.0f} MiB"


def parity_cell(run: Run) -> str:
    parity = run.sweep["config"].get("lens_parity") or {}
    if "max_abs_diff" not in parity:
        return "n/a"
    return f"{parity['max_abs_diff']:.2g} (tol. {parity.get('tolerance', float('nan')):.2g})"


def result_row(model: str, dtype: str, run: Run) -> str:
    if run.error:
        return f"| {model} | {dtype} | refused: `{run.error}` |||||||||"
    entry = run.entry
    last, intervals, held_out = entry["last_layer"], entry["intervals"], entry["held_out"]
    return (f"| {model} | {dtype} | {last['correct']:.3f}{interval(intervals.get('correct'), signed=False)} "
            f"| {last['corrupted']:.3f}{interval(intervals.get('corrupted'), signed=False)} "
            f"| {last['gap']:+.3f}{interval(intervals.get('gap'))} | {entry['critical_layer']} "
            f"| {entry['early_exit_layer']}: {entry['early_exit_gain']:+.3f}{interval(intervals.get('early_exit_gain'))} "
            f"| {held_out.get('early_exit_layer')}: {held_out.get('early_exit_gain', float('nan')):+.3f}"
            f"{interval(held_out.get('interval'))} | {parity_cell(run)} | {resources_cell(run)} | {link(run)} |")


def aligned(reference: dict, other: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reference scores, other scores, gold) over the queries both hold, in the reference's order."""
    position = {key: index for index, key in enumerate(other["keys"])}
    if set(position) != set(reference["keys"]):
        raise ValueError("the two runs scored different queries")
    order = [position[key] for key in reference["keys"]]
    return reference["scores"], other["scores"][order], reference["gold"]


def agreement(reference: Run, other: Run) -> dict:
    """Per setting: queries whose argmax / calibrated credit differ (last layer, and any layer), largest
    probability and label log-probability differences over every layer, query and label."""
    result = {}
    for setting in SETTINGS:
        ref, oth, gold = aligned(reference.task_scores(setting), other.task_scores(setting))
        argmax_changed = ref.argmax(axis=2) != oth.argmax(axis=2)  # [N, L+1]
        credit_changed = np.stack([calibrated_credit(ref[:, layer], gold) != calibrated_credit(oth[:, layer], gold)
                                   for layer in range(ref.shape[1])], axis=1)
        with np.errstate(divide="ignore"):
            log_difference = np.abs(np.log(ref) - np.log(oth))
        result[setting] = {
            "n": len(gold),
            "argmax_last": int(argmax_changed[:, -1].sum()),
            "argmax_any": int(argmax_changed.any(axis=1).sum()),
            "credit_last": int(credit_changed[:, -1].sum()),
            "credit_any": int(credit_changed.any(axis=1).sum()),
            "max_probability_difference": float(np.abs(ref - oth).max()),
            "max_log_probability_difference": float(np.nan_to_num(log_difference, nan=np.inf).max()),
            "identical_curves": all(
                reference.sweep["tasks"][f"falsedemo_{DATASET}_{setting}"]["per_layer"][metric]
                == other.sweep["tasks"][f"falsedemo_{DATASET}_{setting}"]["per_layer"][metric]
                for metric in ("calibrated_acc", "acc")),
        }
    return result


def agreement_row(model: str, dtype: str, numbers: dict) -> str:
    cells = []
    for key in ("argmax_last", "argmax_any", "credit_last", "credit_any"):
        cells.append(" / ".join(f"{numbers[setting][key]}" for setting in SETTINGS))
    largest = max(numbers[setting]["max_probability_difference"] for setting in SETTINGS)
    n = numbers[SETTINGS[0]]["n"]
    return f"| {model} | {dtype} vs float32 | {n} | " + " | ".join(cells) + f" | {largest:.3g} |"


def figure(runs: dict) -> str | None:
    panels = []
    for model in MODELS:
        curves, styles, chance = {}, {}, None
        for dtype in DTYPES:
            run = runs.get((model, dtype))
            if run is None or run.sweep is None:
                continue
            for setting in SETTINGS:
                task = run.sweep["tasks"][f"falsedemo_{DATASET}_{setting}"]
                chance = task["chance"]
                name = f"{setting}, {dtype}"
                curves[name] = task["per_layer"]["calibrated_acc"]
                styles[name] = {**DTYPE_STYLES[dtype], **SETTING_LINES[setting]}
        if curves:
            panels.append({"curves": curves, "styles": styles, "chance": chance,
                           "title": f"{model}: {DATASET}, k = 24"})
    if not panels:
        return None
    figures.save_png(figures.layer_figure(panels, "calibrated accuracy by layer, by dtype"), HERE / FIGURE,
                     overwrite=True)
    return FIGURE


def offload_section(runs: dict) -> list[str]:
    offloaded = load_run(HERE / "runs" / "offload")
    in_memory = runs.get(("gemma-3-270m", "float32"))
    device_map_path = HERE / "runs" / "offload" / "device_map.json"
    if offloaded is None or in_memory is None or in_memory.sweep is None:
        return ["## Offloaded to disk", "", "Pending (the offloaded run or the in-memory float32 run is missing).", ""]
    lines = ["## gemma-3-270m with half its blocks on disk", ""]
    if offloaded.error:
        return lines + [f"The offloaded run failed: `{offloaded.error}`", ""]
    args = offloaded.sweep["config"]["model_args"]
    shown = ",".join(f"{key}={value}" for key, value in args.items() if key != "offload_folder")
    lines += [f"`falsedemo sweep --model_args {shown},offload_folder=<temporary folder>` (the main job, float32)."]
    on_disk = "the"
    if device_map_path.exists():
        placed = json.loads(device_map_path.read_text())
        on_disk = f"the {len(placed['blocks'].get('disk', []))}"
        blocks = "; ".join(f"{device}: {len(numbers)} blocks ({numbers[0]}-{numbers[-1]})"
                           for device, numbers in placed["blocks"].items())
        other = "; ".join(f"{device}: {', '.join(modules)}" for device, modules in placed["other_modules"].items())
        lines += [f"accelerate's `hf_device_map` ([device_map.json](runs/offload/device_map.json)): {blocks}; "
                  f"other modules {other}. Modules on `disk` are read from `offload_folder` by their hook at every "
                  "forward pass."]
    numbers = agreement(in_memory, offloaded)
    largest_log = max(numbers[setting]["max_log_probability_difference"] for setting in SETTINGS)
    identical = all(numbers[setting]["identical_curves"] for setting in SETTINGS)
    changed = sum(numbers[setting]["argmax_any"] + numbers[setting]["credit_any"] for setting in SETTINGS)
    lines += [
        "",
        f"Against the in-memory float32 run: the largest difference of a per-query label log-probability (the K "
        f"label logits minus their log-sum-exp), over every layer, query and label of both tasks, is "
        f"{largest_log:.3g}{' (bitwise equal)' if largest_log == 0 else ''}; the per-layer curves are {'identical' if identical else 'NOT identical'}, and "
        f"{changed} query decisions (argmax or calibrated credit, any layer) differ.",
        "",
        "| run | critical layer | gap | early-exit gain | wall time | peak RSS | files |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in (("in memory", in_memory), ("half the blocks on disk", offloaded)):
        entry = run.entry
        lines.append(f"| {name} | {entry['critical_layer']} | {entry['last_layer']['gap']:+.3f} "
                     f"| {entry['early_exit_gain']:+.3f} | {resources_cell(run)} | {link(run)} |")
    if in_memory.resources and offloaded.resources:
        saved = (in_memory.resources["max_rss_kb"] - offloaded.resources["max_rss_kb"]) / 1024
        lines += ["", f"With half the blocks on disk the peak RSS is {saved:.0f} MiB lower, about what "
                  f"{on_disk} offloaded blocks weigh in float32; "
                  "the embedding (tied to the output head), the largest tensor, stays in memory."]
    lines += ["", "Wall time and peak RSS of the whole command (/usr/bin/time), one thread, on a shared 2-core "
              "machine: indicative, not a benchmark.", ""]
    return lines


def half_width(values) -> float:
    return (values[1] - values[0]) / 2 if values else float("nan")


def verdict(difference: float, noise_half_width: float) -> str:
    """Same (to rounding), within a quarter of the sampling noise, or not."""
    if abs(difference) < 1e-9:
        return "same"
    return "within noise" if abs(difference) <= 0.25 * noise_half_width else "differs: check in float32"


def trust_section(runs: dict) -> list[str]:
    """bfloat16 against float32, per quantity, next to the sampling noise (the float32 interval's half-width)."""
    pairs = [(model, runs[(model, "float32")], runs[(model, "bfloat16")]) for model in MODELS
             if (model, "float32") in runs and (model, "bfloat16") in runs
             and runs[(model, "float32")].sweep and runs[(model, "bfloat16")].sweep]
    if not pairs:
        return []
    lines = ["## What a user can trust in bfloat16", "",
             "bfloat16 against float32 on the same prompts; the noise scale is the float32 run's 95% interval "
             "half-width (sampling over queries), the size of difference a reader already has to allow for.", "",
             "| quantity | model | float32 | bfloat16 | difference | float32 interval half-width | verdict |",
             "|---|---|---|---|---|---|---|"]
    quantities = (
        ("correct, last layer", lambda e: e["last_layer"]["correct"], lambda e: e["intervals"].get("correct")),
        ("permuted, last layer", lambda e: e["last_layer"]["corrupted"], lambda e: e["intervals"].get("corrupted")),
        ("gap", lambda e: e["last_layer"]["gap"], lambda e: e["intervals"].get("gap")),
        ("early-exit gain", lambda e: e["early_exit_gain"], lambda e: e["intervals"].get("early_exit_gain")),
        ("held-out early-exit gain", lambda e: e["held_out"].get("early_exit_gain", float("nan")),
         lambda e: e["held_out"].get("interval")),
    )
    for model, reference, half in pairs:
        ref, oth = reference.entry, half.entry
        for name, value, noise in quantities:
            difference = value(oth) - value(ref)
            width = half_width(noise(ref))
            lines.append(f"| {name} | {model} | {value(ref):.3f} | {value(oth):.3f} | {difference:+.3f} "
                         f"| {width:.3f} | {verdict(difference, width)} |")
        for setting, key in (("correct", "correct"), ("permuted", "corrupted")):
            task = f"falsedemo_{DATASET}_{setting}"
            ref_curve = np.array(reference.sweep["tasks"][task]["per_layer"]["calibrated_acc"])
            oth_curve = np.array(half.sweep["tasks"][task]["per_layer"]["calibrated_acc"])
            layer = int(np.abs(oth_curve - ref_curve).argmax())
            difference = float(oth_curve[layer] - ref_curve[layer])
            width = half_width(ref["intervals"].get(key))
            lines.append(f"| {setting} curve, largest change (layer {layer}) | {model} | {ref_curve[layer]:.3f} "
                         f"| {oth_curve[layer]:.3f} | {difference:+.3f} | {width:.3f} (last layer) "
                         f"| {verdict(difference, width)} |")
        for name, key in (("critical layer", "critical_layer"), ("early-exit layer", "early_exit_layer")):
            same = ref[key] == oth[key]
            lines.append(f"| {name} | {model} | {ref[key]} | {oth[key]} | {oth[key] - ref[key]:+d} "
                         f"| | {'same' if same else 'differs: check in float32'} |")
    return lines + [""]


def main() -> int:
    runs: dict[tuple[str, str], Run] = {}
    pending = []
    for model in MODELS:
        for dtype in DTYPES:
            run = load_run(HERE / "runs" / model / dtype)
            if run is None:
                pending.append(f"{model} {dtype}")
            else:
                runs[(model, dtype)] = run
    lines = [
        "# Precision and offload: float32, bfloat16, float16 and disk offload on the main job",
        "",
        "The README's main job (`falsedemo sweep`, `unnatural` with correct and with permuted demonstrations, "
        "k = 24, all 90 queries, lm-eval's default seeds, batch size 4, CPU) on gemma-3-270m (18 blocks) and "
        "smollm2-135m (30 blocks), loaded in float32, bfloat16 and float16 (`dtype=` in `--model_args`; the "
        "GGUF weights are de-quantised once, then cast), and gemma-3-270m in float32 with half its blocks "
        "offloaded to disk by accelerate. Intervals are 95% paired-bootstrap intervals over queries (1000 "
        "resamples, seed 0). Critical layer, early exit and held-out early exit are defined as in "
        "[reports/gemma-3-270m](../gemma-3-270m/README.md).",
        "",
        "## Regenerate",
        "",
        "```sh",
        "./reports/precision-and-offload/run.sh          # every run below, one at a time, then this README",
        "python reports/precision-and-offload/make_readme.py",
        "```",
        "",
        "## Results",
        "",
        "| model | dtype | correct (last layer) | permuted (last layer) | gap | critical layer "
        "| early exit: layer, gain | held out: layer, gain | lens parity | wall time | peak RSS | files |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        for dtype in DTYPES:
            if (model, dtype) in runs:
                lines.append(result_row(model, dtype, runs[(model, dtype)]))
    lines += ["", "Lens parity: the largest difference between the lens at the last layer and the model's own "
              "logits at the scored positions, on the first batch, compared in float32 (its tolerance scales with "
              "the dtype). Wall time and peak RSS: the whole command, one thread, on a shared machine.", ""]
    drawn = figure(runs)
    if drawn:
        lines += [f"![calibrated accuracy by layer, by dtype]({drawn})", ""]
    agreement_lines = []
    for model in MODELS:
        reference = runs.get((model, "float32"))
        for dtype in DTYPES[1:]:
            other = runs.get((model, dtype))
            if reference and other and reference.scores and other.scores:
                agreement_lines.append(agreement_row(model, dtype, agreement(reference, other)))
    if agreement_lines:
        lines += [
            "### How many queries change their decision",
            "",
            "Queries (of n, correct / permuted) whose argmax over the K labels, or whose calibrated decision "
            "(credit 1, 1/K or 0 against that run's own per-label thresholds), differs from float32, at the last "
            "layer and at any of the layers 0..L; and the largest difference of a label probability (softmax over "
            "the K labels) at any layer.",
            "",
            "| model | dtypes | n | argmax, last layer | argmax, any layer | calibrated, last layer "
            "| calibrated, any layer | max label-probability difference |",
            "|---|---|---|---|---|---|---|---|",
            *agreement_lines,
            "",
        ]
    lines += trust_section(runs)
    lines += offload_section(runs)
    if pending:
        lines += [f"Pending (not run when this README was generated): {', '.join(pending)}.", ""]
    results_io.write_text_atomic(HERE / "README.md", "\n".join(lines) + "\n", overwrite=True)
    print(f"wrote {HERE / 'README.md'} ({len(runs)} runs, pending: {pending or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
