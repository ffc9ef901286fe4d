"""Choose the MMLU subjects each model is reported on, from its sweep on the *select* half (run.sh, stage 1).

A subject is chosen when the model beats chance clearly there: zero-shot accuracy (argmax over A-D) at the last
layer above 1/4 with a one-sided exact binomial p-value below 0.05 (the count of right answers out of n). Plain
accuracy, not calibrated accuracy: with a handful of questions per subject the per-label thresholds are fitted to
those same few questions and calibrated accuracy is biased upwards (ties are broken by it). The report
takes at most MAX_CHOSEN of them, best first; when fewer pass, it fills up to MIN_REPORTED with the next best
(marked as not clearly above chance in the README), so the report always has numbers to show. Writes
runs/select/<model>/chosen.json.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from lm_eval_false_demos.core.files import write_json_atomic

HERE = Path(__file__).resolve().parent
CHANCE = 0.25
ALPHA = 0.05
MAX_CHOSEN = 3
MIN_REPORTED = 3
PREFIX, SUFFIX = "falsedemo_mmlu_select_", "_zeroshot"


def binomial_p_value(correct: int, n: int, p: float = CHANCE) -> float:
    """P(X >= correct) for X ~ Binomial(n, p): the chance of doing at least this well by guessing."""
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(correct, n + 1))


def newest(folder: Path) -> Path | None:
    found = sorted(folder.glob("sweep_*/sweep.json"))
    return found[-1] if found else None


def selection(sweep: dict) -> list[dict]:
    rows = []
    for name, task in sweep["tasks"].items():
        n, accuracy = task["n"], task["per_layer"]["calibrated_acc"][-1]
        plain = task["per_layer"]["acc"][-1]
        correct = int(round(plain * n))
        rows.append({"subject": name[len(PREFIX):-len(SUFFIX)], "n": n, "calibrated_acc": accuracy,
                     "acc": task["per_layer"]["acc"][-1], "p_value": binomial_p_value(correct, n)})
    return sorted(rows, key=lambda row: (-row["acc"], -row["calibrated_acc"], row["subject"]))


def choose(rows: list[dict]) -> tuple[list[str], list[str]]:
    clear = [row["subject"] for row in rows if row["acc"] > CHANCE and row["p_value"] < ALPHA]
    chosen = clear[:MAX_CHOSEN]
    filled = [row["subject"] for row in rows if row["subject"] not in chosen][:max(0, MIN_REPORTED - len(chosen))]
    return chosen, filled


def main(models) -> None:
    for model in models:
        path = newest(HERE / "runs" / "select" / model)
        if path is None:
            print(f"{model}: no selection sweep yet")
            continue
        rows = selection(json.loads(path.read_text()))
        chosen, filled = choose(rows)
        write_json_atomic(path.parents[1] / "chosen.json", {
            "rule": f"zero-shot accuracy > {CHANCE} with one-sided binomial p < {ALPHA}, best "
                    f"{MAX_CHOSEN}; filled to {MIN_REPORTED} with the next best",
            "sweep": str(path.relative_to(HERE)), "chosen": chosen, "filled": filled, "subjects": rows,
        }, overwrite=True)
        print(f"{model}: chosen {chosen or 'none'}; filled {filled}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["gemma-3-270m", "smollm2-135m"])
