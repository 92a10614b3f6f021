"""Static checks that are part of `make test`: ruff, mypy, the import contracts (import-linter), and the
complexity of the safety core and the state (radon, when installed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed in this environment")
    return found


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_clean():
    res = _run([_tool("ruff"), "check", "edge", "drivers", "hal", "tests", "bench"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_clean():
    res = _run([_tool("mypy"), "edge", "drivers", "hal"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_import_contracts_kept():
    res = _run([_tool("lint-imports")])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("path", ["edge/limits/core.py", "edge/limits/inputs.py", "edge/state.py"])
def test_safety_core_and_state_have_no_function_above_complexity_b(path):
    # small named steps are what makes the core reviewable and each step testable (tests/test_limits_steps.py)
    radon = pytest.importorskip("radon.complexity", reason="radon is not installed (pip install radon)")
    blocks = radon.cc_visit((REPO / path).read_text())
    over = [f"{b.name} {b.complexity}" for b in blocks if b.complexity > 10]
    assert not over, f"{path}: above radon B (10): {over}"
