"""Print this report's README (markdown) from the lm-eval results under a folder: one table row per run."""

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
print("""# The paper's levers on gemma-3-270m (unnatural, k = 24, all 90 queries)

Regenerate with `reports/levers/run.sh 9` (every number below is read from `runs/*/**/results_*.json` by
`summarize.py`). Layer 9 is the paper-style early-exit layer of the gemma-3-270m sweep (`reports/gemma-3-270m`):
the layer maximising calibrated accuracy on permuted prompts. Ablations act at the query position only, on
blocks 9..17 (`attn_layers=9-`, `mlp_layers=9-`). Scoring: first label token (`label_scoring=first`).
""")
print("| run | correct calibrated_acc | permuted calibrated_acc | permuted follow_acc | model_args |")
print("|---|---|---|---|---|")
print("\n".join(rows))
