"""Print the lever table (markdown) from the lm-eval results under a folder: one row per run."""

import json
import sys
from pathlib import Path

rows = []
for path in sorted(Path(sys.argv[1]).glob("*/**/results_*.json")):
    results = json.loads(path.read_text())
    run = path.relative_to(sys.argv[1]).parts[0]
    correct = results["results"]["falsedemo_unnatural_correct"]
    permuted = results["results"]["falsedemo_unnatural_permuted"]
    rows.append(
        f"| {run} | {correct['calibrated_acc,none']:.3f} | {permuted['calibrated_acc,none']:.3f} "
        f"| {permuted['follow_acc,none']:.3f} | `{results['config']['model_args']}` |"
    )
print("| run | correct calibrated_acc | permuted calibrated_acc | permuted follow_acc | model_args |")
print("|---|---|---|---|---|")
print("\n".join(rows))
