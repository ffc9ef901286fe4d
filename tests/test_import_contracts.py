"""The layering holds: import-linter checks the contracts declared in setup.cfg ([importlinter] sections)."""

from pathlib import Path

from importlinter.cli import lint_imports

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"


def test_import_contracts_hold(capsys):
    assert lint_imports(config_filename=str(SETUP_CFG), no_cache=True, no_logo=True) == 0, capsys.readouterr().out
