"""Build glue only: package metadata lives in setup.cfg.

lm-eval 0.4.13 has no plugin entry points, so the package ships a one-line
``lm_eval_false_demos.pth`` that installs a post-import hook (see
``lm_eval_false_demos/_hook.py``). Setuptools has no declarative way to put a
file at the root of site-packages, hence these two command overrides: one for
wheels (regular installs), one for PEP 660 editable installs.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HOOK_FILES = ("lm_eval_false_demos.pth", "lm_eval_false_demos.start")
HERE = os.path.dirname(os.path.abspath(__file__))


def _copy_hook_files(target_dir):
    for name in HOOK_FILES:
        with open(os.path.join(HERE, "packaging", name), encoding="utf-8") as src:
            content = src.read()
        with open(os.path.join(target_dir, name), "w", encoding="utf-8") as dst:
            dst.write(content)


class BuildPyWithHook(build_py):
    def run(self):
        super().run()
        _copy_hook_files(self.build_lib)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [
            os.path.join(self.build_lib, name) for name in HOOK_FILES
        ]


class EditableWheelWithHook(editable_wheel):
    def _install_namespaces(self, installation_dir, pth_prefix):
        # installation_dir is the unpacked editable wheel, whose root becomes site-packages.
        super()._install_namespaces(installation_dir, pth_prefix)
        _copy_hook_files(installation_dir)


setup(cmdclass={"build_py": BuildPyWithHook, "editable_wheel": EditableWheelWithHook})
