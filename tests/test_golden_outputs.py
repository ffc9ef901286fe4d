"""Numbers do not move: a fixed tiny-model sweep, heads evaluation and leaderboard equal the stored goldens.

The goldens (tests/golden/*.json) were written by tests/golden/make_golden.py before the analyses were
reorganised; refactors must reproduce them. Fields may be added to the results, never changed or dropped.
"""

import json
import math
from pathlib import Path

import pytest

from golden_runs import GOLDEN_SECTIONS, run_all

GOLDEN = Path(__file__).resolve().parent / "golden"
TOLERANCE = 1e-6  # float32 forwards may differ in the last bits across CPUs; results are rounded far above it


def _differences(expected, actual, where="") -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {actual!r}"[:200]]
        found = []
        for key, value in expected.items():
            if key not in actual:
                found.append(f"{where}.{key}: missing")
            else:
                found.extend(_differences(value, actual[key], f"{where}.{key}"))
        return found
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{where}: expected a list of {len(expected)}, got {actual!r}"[:200]]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in _differences(e, a, f"{where}[{i}]")]
    if expected is None and isinstance(actual, float) and math.isnan(actual):
        return []  # an undefined value (e.g. gap recovered with no gap): goldens store it as strict-JSON null
    if isinstance(expected, float) or isinstance(actual, float):
        if isinstance(expected, (int, float)) and isinstance(actual, (int, float)) and math.isclose(
            expected, actual, rel_tol=0, abs_tol=TOLERANCE
        ):
            return []
        return [f"{where}: expected {expected!r}, got {actual!r}"]
    if isinstance(expected, str) and isinstance(actual, str):
        try:
            if math.isclose(float(expected), float(actual), rel_tol=0, abs_tol=TOLERANCE):
                return []
        except ValueError:
            pass
    return [] if expected == actual else [f"{where}: expected {expected!r}, got {actual!r}"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, data_dir):
    return run_all(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", sorted(GOLDEN_SECTIONS))
def test_outputs_equal_the_goldens(outputs, name):
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    assert set(expected) == set(GOLDEN_SECTIONS[name]) & set(expected)
    actual = {key: outputs[name].get(key) for key in expected}
    if name == "leaderboard":
        # The page's columns may be renamed or regrouped; the numbers under the names both versions share may not move.
        assert len(actual["rows"]) == len(expected["rows"])
        expected = {"rows": [{k: v for k, v in row.items() if k in new} for row, new in zip(expected["rows"], actual["rows"])]}
    differences = _differences(expected, actual)
    assert not differences, "\n".join(differences[:20])


def test_the_comparison_can_fail():
    assert _differences({"a": [0.5, {"b": "0.25"}]}, {"a": [0.5, {"b": "0.2500001"}]}) == []
    assert _differences({"a": [0.5]}, {"a": [0.51]}) == ["['a'][0]: expected 0.5, got 0.51".replace("['a']", ".a")]
    assert _differences({"a": 1}, {}) == [".a: missing"]
    assert _differences({"a": None}, {"a": float("nan")}) == [] and _differences({"a": None}, {"a": 0.0})
