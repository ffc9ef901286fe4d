"""Write this folder's README.md from the newest heads results under runs/<model>/ (see run_report.sh).

Every number is read from a ``heads.json``; nothing is typed by hand. The verdict weighs the top-5 heads' gap
recovered, pooled over datasets, against the random draws (mean + 2 sd, and how many draws they beat) and their
cost on correct prompts: the paper's heads recover the gap without hurting correct prompts.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from lm_eval_false_demos.core.metrics import pooled_gap_recovered_by_condition

HERE = Path(__file__).resolve().parent
MODELS = ("gemma-3-270m", "smollm2-135m")
SELECTIVE_COST = 0.05  # a larger drop on correct prompts means the heads serve in-context learning in general


def newest(model: str, step: str) -> Path | None:
    found = sorted((HERE / "runs" / model / step).glob("heads_*/heads.json"))
    return found[-1] if found else None


def link(path: Path) -> str:
    relative = path.relative_to(HERE)
    return f"[`{relative}`]({relative})"


def score_section(path: Path, payload: dict) -> list[str]:
    config = payload["config"]
    figures = sorted(path.parent.glob("*.png"))
    lines = [
        f"Scoring: {link(path)}, task `{config['task']}`, {config['num_prompts']} prompts, k = {config['k']}, "
        f"few-shot seed {config['seed']}; {config['num_layers']} layers x {config['num_heads']} heads.",
        "",
        "| rank | layer:head | prefix-matching (sd) | label-promoting (sd) |",
        "|---|---|---|---|",
    ]
    for row in payload["heads"][:5]:
        lines.append(
            f"| {row['rank']} | {row['layer']}:{row['head']} | {row['prefix_matching']:.4f} "
            f"({row['prefix_matching_sd']:.4f}) | {row['label_promoting']:+.3f} ({row['label_promoting_sd']:.3f}) |"
        )
    everything = payload["heads"]
    mean_pm = sum(row["prefix_matching"] for row in everything) / len(everything)
    mean_lp = sum(row["label_promoting"] for row in everything) / len(everything)
    promoter = max(everything, key=lambda row: row["label_promoting"])
    lines += ["", f"Mean over all {len(everything)} heads: prefix-matching {mean_pm:.4f}, label-promoting {mean_lp:+.3f}. "
              f"Strongest label promoter: {promoter['layer']}:{promoter['head']} ({promoter['label_promoting']:+.3f}, "
              f"prefix-matching rank {promoter['rank']}).", ""]
    lines += [f"![{figure.stem}]({figure.relative_to(HERE)})" for figure in figures]
    return lines + [""]


def evaluation_section(path: Path, payload: dict) -> list[str]:
    config, evaluation = payload["config"], payload["evaluation"]
    control = evaluation["random_control"]
    lines = [
        f"Evaluation: {link(path)}, top-5 `{evaluation['top_k']}` zeroed at the query position vs "
        f"{control['n']} seeded draws of 5 distinct random heads (seed {config['random_seed']}); "
        f"{config['limit']} queries per dataset and setting, k = {config['k']}, `{config['corrupted_setting']}`.",
        "",
        "| dataset | n | correct | permuted | permuted, top-5 zeroed | gap recovered: top-5 | random: mean (sd) "
        "| correct change: top-5 | random |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in evaluation["datasets"].items():
        random = entry["random"]
        lines.append(
            f"| {key} | {entry['n']} | {entry['acc_correct']:.3f} | {entry['acc_corrupted']:.3f} "
            f"| {entry['top_k']['acc_corrupted_ablated']:.3f} | {entry['top_k']['gap_recovered']:+.3f} "
            f"| {random['gap_recovered']['mean']:+.3f} ({random['gap_recovered']['sd']:.3f}) "
            f"| {entry['top_k']['correct_change']:+.3f} | {random['correct_change']['mean']:+.3f} |"
        )
    top_mean = evaluation["gap_recovered"]["mean"]
    promoting = evaluation["label_promoting"]
    lines += [
        f"| **mean** | | {evaluation['acc_correct']['mean']:.3f} | {evaluation['acc_corrupted']['mean']:.3f} "
        f"| {evaluation['acc_corrupted_ablated']['mean']:.3f} | **{top_mean:+.3f}** "
        f"| **{control['mean']:+.3f} ({control['sd']:.3f})** | {evaluation['correct_change']['top_k']:+.3f} "
        f"| {evaluation['correct_change']['random']['mean']:+.3f} |",
        "",
        f"Label-promoting score on these datasets' permuted prompts: top-5 {promoting['top_k']:+.3f}, random "
        f"{promoting['random']['mean']:+.3f} (sd {promoting['random']['sd']:.3f} over draws).",
        "",
    ]
    top, draws = pooled_gap_recovered_by_condition(evaluation["datasets"])
    random_mean, random_sd = statistics.fmean(draws), statistics.stdev(draws)
    threshold = random_mean + 2 * random_sd
    beaten = sum(top > draw for draw in draws)
    cost_top, cost_random = evaluation["correct_change"]["top_k"], evaluation["correct_change"]["random"]["mean"]
    lines += [
        f"Pooled over datasets (1 - (mean correct - mean ablated) / (mean correct - mean permuted), which a dataset "
        f"with a near-zero gap cannot blow up): top-5 **{top:+.3f}**; random **{random_mean:+.3f}** (sd {random_sd:.3f}, "
        f"max {max(draws):+.3f}).",
        "",
    ]
    facts = (f"pooled over the datasets the top-5 recover {top:+.1%} of the gap against {random_mean:+.1%} for random "
             f"heads (more than {beaten} of {len(draws)} random draws; mean + 2 sd = {threshold:+.1%}), "
             f"and change accuracy on correct prompts by {cost_top:+.3f} (random heads: {cost_random:+.3f})")
    selective = cost_top > -SELECTIVE_COST
    if top > threshold and selective:
        verdict = f"**The paper's finding holds here**: {facts}."
    elif beaten >= 0.9 * len(draws) or top > threshold:
        verdict = (f"**The paper's finding holds only in part here**: {facts}. "
                   + ("" if selective else "Zeroing them also damages in-context learning on correct prompts, "
                      "so they are not specific to false demonstrations as the paper's heads are."))
    else:
        verdict = f"**The paper's finding does not hold here**: {facts}."
    return lines + [verdict, ""]


def main() -> int:
    lines = [
        "# False induction heads on gemma-3-270m and SmolLM2-135M",
        "",
        "Generated by `python reports/heads/make_readme.py` from the runs of `reports/heads/run_report.sh <model>`",
        "(local dataset copies; sizes as in each model's command, chosen for a 2-core CPU). Method: paper-spec",
        "sections 7-8. Prefix-matching: attention from the last query token to the label tokens of earlier",
        "demonstrations of the query's class minus 1/(K-1) of that to other classes. Label-promoting: the head's",
        "write at that position through the (frozen-scale) final norm and the output head, logit(shown wrong label)",
        "- logit(true label). Gap recovered = 1 - (correct - permuted ablated) / (correct - permuted), averaged",
        "over datasets; the random control's sd is over draws.",
        "",
    ]
    for model in MODELS:
        lines += [f"## {model}", ""]
        score, evaluation = newest(model, "score"), newest(model, "evaluate")
        if score is None:
            lines += ["Not run yet.", ""]
            continue
        lines += score_section(score, json.loads(score.read_text()))
        if evaluation is not None:
            payload = json.loads(evaluation.read_text())
            lines += [f"Command: `{payload['config']['command']}`", ""]
            lines += evaluation_section(evaluation, payload)
    (HERE / "README.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
