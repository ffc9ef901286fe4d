"""Generated lm-eval task YAMLs; regenerate with ``python -m lm_eval_false_demos.integrations.task_yamls``."""
