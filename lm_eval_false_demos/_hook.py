"""Post-import hook that plugs this package into lm-eval 0.4.x with no flags.

lm-eval 0.4.13 reads no plugin entry points, so ``lm_eval_false_demos.pth``
(installed at the root of site-packages) imports this module at interpreter
start. It must stay tiny and must never raise: it runs in every interpreter of
the environment, pip's included. It imports nothing heavy and only reacts when
lm-eval itself is imported:

* after ``lm_eval.models`` executes, our model classes are registered as lazy
  ``"module:Class"`` strings. Hooking ``lm_eval.models`` rather than the
  registry module matters: a non-empty registry before ``lm_eval.models`` is
  imported makes lm-eval skip its built-ins (``--model hf`` would vanish).
* after ``lm_eval.tasks.manager`` executes, ``TaskManager`` gets our task
  folder in its index, before any user ``include_path`` (built-ins < ours <
  user), unless that lm-eval already discovers ``lm_eval.tasks`` entry points.
* after ``lm_eval.__main__`` executes, the ``lm_eval`` command prints our own
  errors (:class:`~lm_eval_false_demos.errors.FalseDemoError`) as one line and
  exits with status 2.

On Python >= 3.15 the sibling ``lm_eval_false_demos.start`` file calls
:func:`install` instead of the ``.pth`` import line (PEP 829).
"""

import sys

MODEL_CLASSES = {
    "hf-earlyexit": "lm_eval_false_demos.integrations.models:EarlyExitHFLM",
    "hf-ablate": "lm_eval_false_demos.integrations.models:AblatedHFLM",
}

_installed = False


def task_config_dir():
    """Folder of the generated ``falsedemo_*`` task YAMLs (top-level ``task_configs/``).

    It is installed as the package ``lm_eval_false_demos.task_configs``; asking the
    import system finds it in regular and editable installs alike. A source checkout
    imported ahead of the install (``PYTHONPATH``, a git worktree) reads its own
    folder, not the one the editable install maps to.
    """
    import importlib.util
    import os

    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "task_configs")
    if os.path.isfile(os.path.join(checkout, "__init__.py")):
        return checkout

    spec = importlib.util.find_spec("lm_eval_false_demos.task_configs")
    return list(spec.submodule_search_locations)[0]


def register_models(models_module=None):
    from lm_eval.api.registry import model_registry

    for alias, target in MODEL_CLASSES.items():
        if alias not in model_registry:
            model_registry.register(alias, target=target)


def patch_task_manager(manager_module=None):
    if manager_module is None:
        import lm_eval.tasks.manager as manager_module
    task_manager = manager_module.TaskManager
    if getattr(task_manager, "_falsedemo_patched", False):
        return
    if hasattr(manager_module, "discover_plugin_task_paths"):
        return  # this lm-eval reads our lm_eval.tasks entry point itself
    from lm_eval_false_demos.integrations import compat

    compat.add_task_folder(manager_module, task_config_dir)


def wrap_cli(main_module):
    """``lm_eval`` exits with status 2 and our one-line message on a FalseDemoError (bad model args, task
    options, data), instead of a traceback through lm-eval's internals; other errors are left alone."""
    original = main_module.cli_evaluate
    if getattr(original, "_falsedemo_wrapped", False):
        return

    def cli_evaluate(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        except Exception as error:
            from lm_eval_false_demos.errors import FalseDemoError

            if not isinstance(error, FalseDemoError):
                raise
            print(f"lm_eval: error: {error}", file=sys.stderr)
            return 2

    cli_evaluate.__wrapped__ = original
    cli_evaluate._falsedemo_wrapped = True
    main_module.cli_evaluate = cli_evaluate


_CALLBACKS = {
    "lm_eval.models": register_models,
    "lm_eval.tasks.manager": patch_task_manager,
    "lm_eval.__main__": wrap_cli,
}


class _AfterExecLoader:
    def __init__(self, loader, callback):
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            self._callback(module)
        except Exception as error:  # never break lm-eval's own import
            print(f"lm_eval_false_demos: plugin registration failed: {error!r}", file=sys.stderr)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _PostImportFinder:
    """A ``sys.meta_path`` finder that only wraps the loaders of the modules in ``_CALLBACKS``."""

    def __init__(self):
        self._busy = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _CALLBACKS or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            import importlib.util

            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _AfterExecLoader(spec.loader, _CALLBACKS[fullname])
        return spec


def install():
    """Install the hook once; run callbacks at once for modules already imported."""
    global _installed
    if _installed:
        return
    _installed = True
    try:
        sys.meta_path.insert(0, _PostImportFinder())
        for name in _CALLBACKS:
            module = sys.modules.get(name)
            if module is not None:
                _CALLBACKS[name](module)
    except Exception as error:
        print(f"lm_eval_false_demos: could not install the lm-eval hook: {error!r}", file=sys.stderr)


install()
