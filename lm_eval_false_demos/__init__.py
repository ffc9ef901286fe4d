"""Overthinking the Truth (Halawi, Denain & Steinhardt, ICLR 2024) as an lm-eval benchmark.

Kept import-light: the ``.pth`` hook imports ``lm_eval_false_demos._hook`` in every
interpreter, which imports this package first.
"""

__version__ = "0.1.0"


def register():
    """Register our models and tasks with lm-eval explicitly (for interpreters run with ``-S``)."""
    from lm_eval_false_demos import _hook

    _hook.register_models()
    _hook.patch_task_manager()
