"""The task-name grammar: ``falsedemo_<dataset>_<setting>`` and the ``falsedemo_main_<setting>`` groups, and the
tasks' defaults (k, and lm-eval's default seeds, which fix the demonstrations a query gets).

Used where tasks are generated (integrations/task_yamls), scored (integrations/models), read back from
results (leaderboard) and named on the command line (heads), so one rule names and parses them everywhere.
"""

from __future__ import annotations

TASK_PREFIX = "falsedemo_"
# k of the generated tasks (the paper's 40 demonstrations); --num_fewshot overrides it
DEFAULT_NUM_FEWSHOT = 40
# lm-eval's default --seed (python, numpy, torch, few-shot); the few-shot one picks the corruption shift
DEFAULT_SEEDS = (0, 1234, 1234, 1234)
DEFAULT_FEWSHOT_SEED = DEFAULT_SEEDS[3]


def task_name(key: str, setting: str) -> str:
    return f"{TASK_PREFIX}{key}_{setting}"


def parse_task_name(task) -> tuple[str, str] | None:
    """The inverse of :func:`task_name`: ``falsedemo_tweet_eval_hate_permuted`` -> ``("tweet_eval_hate",
    "permuted")`` (settings hold no underscore); None for a name outside the grammar."""
    if not isinstance(task, str) or not task.startswith(TASK_PREFIX):
        return None
    dataset, _, setting = task[len(TASK_PREFIX):].rpartition("_")
    return (dataset, setting) if dataset and setting else None


def group_name(setting: str) -> str:
    return f"{TASK_PREFIX}main_{setting}"
