"""Regenerate the golden outputs that test_golden_outputs.py compares against.

Run only when a change is *meant* to move numbers, and say so in the commit:
    python tests/golden/make_golden.py
"""

import json
import math
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import conftest  # noqa: E402,F401  (offline settings and local data)
from golden_runs import GOLDEN_SECTIONS, run_all  # noqa: E402


def _strict(value):
    """NaN (an undefined statistic) becomes null, so the goldens are strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strict(item) for item in value]
    return value


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        outputs = run_all(Path(scratch))
        for name, payload in outputs.items():
            kept = {key: payload[key] for key in GOLDEN_SECTIONS[name] if key in payload}
            text = json.dumps(_strict(kept), indent=1, sort_keys=True, allow_nan=False)
            (HERE / f"{name}.json").write_text(text + "\n")
    print("wrote", ", ".join(sorted(outputs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
