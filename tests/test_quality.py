"""Static checks that are part of `make test`: ruff, mypy, and the import contracts (import-linter)."""

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
