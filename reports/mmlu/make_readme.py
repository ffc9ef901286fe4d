"""Write this folder's README.md from the results files under runs/ (see run.sh); nothing is typed by hand.

Stage 1 (runs/select/<model>/chosen.json, from choose_subjects.py over the select-half sweep) and stage 2
(runs/report/<model>/sweep_*/sweep.json, correct vs permuted on the report half of the chosen subjects). A stage
that has not finished is shown as pending.
"""

from __future__ import annotations

import json
from pathlib import Path

from lm_eval_false_demos.core.files import write_text_atomic

from choose_subjects import binomial_p_value

HERE = Path(__file__).resolve().parent
MODELS = ("gemma-3-270m", "smollm2-135m")
CHANCE = 0.25


def newest(folder: Path) -> Path | None:
    found = sorted(folder.glob("sweep_*/sweep.json"))
    return found[-1] if found else None


def interval(values) -> str:
    return "n/a" if not values or values[0] is None else f"[{values[0]:+.3f}, {values[1]:+.3f}]"


def number(value, fmt="+.3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def selection_section(model: str) -> list[str]:
    path = HERE / "runs" / "select" / model / "chosen.json"
    if not path.is_file():
        return [f"### {model}: selection pending", ""]
    chosen = json.loads(path.read_text())
    rows = chosen["subjects"]
    clear = [row for row in rows if row["acc"] > CHANCE and row["p_value"] < 0.05]
    mean = sum(row["acc"] for row in rows) / len(rows)
    mean_calibrated = sum(row["calibrated_acc"] for row in rows) / len(rows)
    pooled_n = sum(row["n"] for row in rows)
    pooled_right = int(round(sum(row["acc"] * row["n"] for row in rows)))
    lines = [
        f"### {model}: selection (select half, zero-shot)",
        "",
        f"Sweep: [`{chosen['sweep']}`]({chosen['sweep']}); {len(rows)} subjects, n = "
        f"{min(r['n'] for r in rows)}-{max(r['n'] for r in rows)} questions each. Mean zero-shot accuracy over the "
        f"subjects: {mean:.3f} (chance {CHANCE}); mean calibrated accuracy {mean_calibrated:.3f}, inflated because each "
        "subject's thresholds are fitted to its own few questions, so the choice uses plain accuracy. Subjects "
        "clearly above chance "
        f"(one-sided binomial p < 0.05): {len(clear)} of {len(rows)}"
        + (f" ({', '.join(r['subject'] for r in clear)})." if clear else ".")
        + f" Pooled over all subjects: {pooled_right} of {pooled_n} right, one-sided binomial p = "
        f"{binomial_p_value(pooled_right, pooled_n):.3f} against guessing.",
        f"Chosen: {', '.join(chosen['chosen']) or 'none'}; added as the next best (not clearly above chance): "
        f"{', '.join(chosen['filled']) or 'none'}.",
        "",
        "| subject | n | acc | calibrated acc | p (vs 1/4, from acc) |",
        "|---|---|---|---|---|",
    ]
    for row in rows[:8]:
        lines.append(f"| {row['subject']} | {row['n']} | {row['acc']:.3f} | {row['calibrated_acc']:.3f} "
                     f"| {row['p_value']:.3f} |")
    lines += ["", f"(best 8 of {len(rows)} shown; every subject is in `runs/select/{model}/chosen.json`)", ""]
    return lines


def report_section(model: str) -> tuple[list[str], dict | None]:
    path = newest(HERE / "runs" / "report" / model)
    if path is None:
        return [f"### {model}: report pending", ""], None
    payload = json.loads(path.read_text())
    folder = path.parent.relative_to(HERE)
    num_layers = payload["config"]["num_layers"]
    lines = [
        f"### {model}: correct vs permuted (report half)",
        "",
        f"Sweep: [`{folder}/sweep.json`]({folder}/sweep.json); {num_layers} blocks (lens layers 0..{num_layers}), "
        f"k = {', '.join(map(str, payload['config']['k']))}, few-shot seed {payload['config']['seed']['fewshot']}; "
        "95% paired-bootstrap intervals over questions.",
        "",
        "| subject | n | correct (last layer) | permuted (last layer) | gap [95% CI] | critical layer "
        "| early exit: layer, gain [95% CI] | held out: layer, gain [95% CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    gaps, gains = [], []
    for dataset, entry in payload["datasets"].items():
        comparison = (entry.get("by_setting") or {}).get("permuted")
        if not comparison:
            continue
        last, intervals, held = comparison["last_layer"], comparison["intervals"], comparison["held_out"]
        subject = dataset.removeprefix("mmlu_report_")
        gaps.append((last["gap"], intervals.get("gap")))
        gains.append(comparison["early_exit_gain"])
        lines.append(
            f"| {subject} | {entry['n']} | {last['correct']:.3f} {interval(intervals.get('correct'))} "
            f"| {last['corrupted']:.3f} {interval(intervals.get('corrupted'))} | {last['gap']:+.3f} "
            f"{interval(intervals.get('gap'))} | {comparison['critical_layer']} "
            f"| {comparison['early_exit_layer']}, {number(comparison['early_exit_gain'])} "
            f"{interval(intervals.get('early_exit_gain'))} "
            f"| {held.get('early_exit_layer')}, {number(held.get('early_exit_gain'))} {interval(held.get('interval'))} |"
        )
    mean = (payload.get("summary") or {}).get("mean_by_setting", {}).get("permuted")
    if mean:
        lines += ["", f"Mean over the {len(gaps)} subjects: correct {mean['correct']:.3f}, permuted "
                  f"{mean['corrupted']:.3f}, gap {mean['gap']:+.3f}, early-exit gain {mean['early_exit_gain']:+.3f} "
                  f"(held out {number(mean.get('held_out_early_exit_gain'))})."]
    lines += ["", f"![accuracy by layer, {model}]({folder}/accuracy_by_layer.png)", ""]
    excluding_zero = sum(1 for _, ci in gaps if ci and ci[0] is not None and ci[0] > 0)
    return lines, {"subjects": len(gaps), "gaps_above_zero": excluding_zero, "mean": mean}


def main() -> None:
    lines = [
        "# MMLU with false demonstrations on the embedded models",
        "",
        "<!-- Generated by make_readme.py from runs/; do not edit. -->",
        "",
        "MMLU (the local copy of its test set, `$FALSEDEMO_DATA_DIR/mmlu/test.jsonl`: 14,042 questions, 57 subjects) "
        "as plain lm-eval tasks in lm-eval's standard MMLU prompt (`tasks/`, written by `make_tasks.py`: the "
        "subject's description, the question, `A. .. D.`, `Answer:`, letter choices), wrapped by `falsedemo wrap` "
        "(`run.sh`, stage 0) and run with `falsedemo sweep`. The letters A-D are a fixed label set, so the wrapped "
        "tasks report calibrated accuracy over them and permuted demonstrations shift each demonstration's letter by "
        "one cyclic shift per prompt.",
        "",
        "**Protocol.** Each subject's questions are split in two halves by a seeded hash of the question (`tasks/"
        "halves.py`): subjects are chosen on the *select* half and reported on the *report* half. MMLU has no dev "
        "split here, so each wrapped task draws its demonstrations from a seeded half of its own questions and "
        "evaluates the other half. Stage 1: zero-shot sweep of every subject's select half (`choose_subjects.py`: "
        "chosen when zero-shot accuracy at the last layer beats 1/4 with a one-sided binomial p < 0.05, "
        "at most 3, filled up to 3 with the next best). Stage 2: correct vs permuted on the report half of the chosen "
        "subjects, k = 3 (MMLU usually takes 5; 3 keeps the prompts short enough for this machine), lm-eval's "
        "default seeds.",
        "",
        "**Why so few questions.** This machine has 2 cores shared by five sessions and their test suites (load "
        "average 12-20 while these ran): a gemma-3-270m forward over a 500-token MMLU prompt took about 50 s of wall "
        "time. A first plan (16 select questions per subject at k = 5) was on course for about 12 hours (tqdm's estimate); the numbers "
        "below use 2 select questions per subject (zero-shot, so short prompts) and up to 16 report questions per "
        "chosen subject (`SELECT_LIMIT`, `REPORT_LIMIT` in run.sh). With n = 2 no subject can be shown to be "
        "clearly above chance (2 of 2 right has p = 1/16 > 0.05), so no subject passes the rule, the report takes the three best by "
        "accuracy (ties broken by calibrated accuracy, then name), and the intervals below are wide; `run.sh` with larger limits reruns the same protocol on a real machine.",
        "",
    ]
    summaries = {}
    for model in MODELS:
        lines += selection_section(model)
    for model in MODELS:
        section, summary = report_section(model)
        lines += section
        summaries[model] = summary
    lines += ["## What it says", ""]
    for model, summary in summaries.items():
        if summary is None:
            lines.append(f"* {model}: pending.")
            continue
        mean = summary["mean"] or {}
        lines.append(
            f"* {model}: over {summary['subjects']} subjects the mean gap (correct - permuted, last layer) is "
            f"{number(mean.get('gap'))} and the mean early-exit gain {number(mean.get('early_exit_gain'))}; "
            f"{summary['gaps_above_zero']} of {summary['subjects']} subjects have a gap interval above zero."
        )
    if all(summary is not None and summary["gaps_above_zero"] == 0 for summary in summaries.values()):
        lines += ["", "**These small models know too little MMLU for an overthinking effect to show.** Zero-shot accuracy "
                  "pooled over every subject's select questions is at chance (above), correct demonstrations lift the "
                  "reported subjects only to about a third right on 16 questions each, and no subject's "
                  "correct-permuted gap has an interval above zero. The wrapped tasks, the sweep and the intervals "
                  "work; the effect needs a model that answers MMLU well above chance, and more questions."]
    lines += ["", "Reproduce: `./run.sh` (stages 0-2, then this README); `STAGE=2 ./run.sh` reruns the report only.", ""]
    write_text_atomic(HERE / "README.md", "\n".join(lines), overwrite=True)
    print(f"wrote {HERE / 'README.md'}")


if __name__ == "__main__":
    main()
