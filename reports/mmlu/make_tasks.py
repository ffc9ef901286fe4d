"""Write lm-eval task YAMLs for the local MMLU copy (``$FALSEDEMO_DATA_DIR/mmlu/test.jsonl``) in lm-eval's standard
MMLU prompt (its ``mmlu/default`` template: the subject's description, "question / A. .. D. / Answer:", letter
choices), two tasks per subject that split its questions in two halves by a seeded hash of the question:

* ``mmlu_select_<subject>``: the half on which subjects are chosen (where a model beats chance clearly);
* ``mmlu_report_<subject>``: the other half, on which the chosen subjects are reported.

MMLU ships no dev split here, so ``falsedemo wrap`` draws each wrapped task's demonstrations from a seeded half of
its own questions (the other half are the queries). Plain lm-eval tasks: nothing here knows about false
demonstrations. Run once (``python make_tasks.py``); the YAMLs record the data file's absolute path.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = HERE / "tasks"
DOC_TO_TEXT = "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"


def data_file() -> Path:
    root = Path(os.environ.get("FALSEDEMO_DATA_DIR", HERE.parents[2] / "shared" / "data"))
    return (root / "mmlu" / "test.jsonl").resolve()


def main() -> None:
    path = data_file()
    subjects = sorted(Counter(json.loads(line)["subject"] for line in path.open(encoding="utf-8")))
    TASKS.mkdir(exist_ok=True)
    (TASKS / "_mmlu_local_template_yaml").write_text("\n".join([
        "# lm-eval's mmlu/default template, reading the local copy (make_tasks.py writes this folder).",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(path))}",
        "test_split: test",
        "output_type: multiple_choice",
        f'doc_to_text: "{DOC_TO_TEXT}"',
        'doc_to_choice: ["A", "B", "C", "D"]',
        "doc_to_target: answer",
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
    ]) + "\n", encoding="utf-8")
    for subject in subjects:
        for half in ("select", "report"):
            (TASKS / f"mmlu_{half}_{subject}.yaml").write_text("\n".join([
                "include: _mmlu_local_template_yaml",
                f"task: mmlu_{half}_{subject}",
                f"tag: [mmlu_{half}]",
                f"process_docs: !function halves.{half}_{subject}",
                f'description: "The following are multiple choice questions (with answers) about '
                f'{subject.replace("_", " ")}.\\n\\n"',
            ]) + "\n", encoding="utf-8")
    print(f"wrote {2 * len(subjects)} task YAMLs for {len(subjects)} subjects to {TASKS} (data {path})")


if __name__ == "__main__":
    main()
