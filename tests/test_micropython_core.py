"""The safety core is checked as MicroPython code: against MicroPython's own stdlib stubs with mypy, and
by importing and running it (and the input table it imports) in the ``micropython`` interpreter (the
vector comparison is in tests/test_limits_vectors.py).

What the stub check can and cannot show: ``micropython-stdlib-stubs`` is typeshed's stdlib cut down to the
modules MicroPython ships, so an import MicroPython lacks (``dataclasses``, ``typing`` features,
``math`` on ports built without it) fails the check. Its ``builtins`` are still CPython's, so a str or
dict method MicroPython lacks is NOT caught here; the interpreter run in the vector test catches those.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_limits_vectors import micropython_binary

REPO = Path(__file__).resolve().parent.parent
LIMITS = REPO / "edge" / "limits"
CORE = LIMITS / "core.py"
INPUTS = LIMITS / "inputs.py"
CONNECTORS = LIMITS / "connectors.py"
CONTACTOR = LIMITS / "contactor.py"
SAFETY_INPUTS = LIMITS / "safety_inputs.py"


def _stubs_dir() -> Path:
    try:
        dist = importlib.metadata.distribution("micropython-stdlib-stubs")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("micropython-stdlib-stubs not installed (pip install -e '.[test]')")
    return Path(str(dist.locate_file("stdlib"))).parent


def _mypy_with_micropython_stubs(*paths: Path) -> subprocess.CompletedProcess[str]:
    # no site-packages and no project config: only MicroPython's stdlib is visible to the checked files.
    # Run from the repository root, as `mypy edge` does, so the core's fallback import of its table as a
    # plain module ("import inputs", for the MCU) is unresolved here exactly as it is there.
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--custom-typeshed-dir",
            str(_stubs_dir()),
            "--no-site-packages",
            "--config-file",
            "/dev/null",
            "--python-version",
            "3.11",
            "--check-untyped-defs",
            "--warn-unused-ignores",
            "--no-incremental",
            *(str(p) for p in paths),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_safety_core_and_its_input_table_type_check_against_micropython_stdlib_stubs():
    res = _mypy_with_micropython_stubs(CORE, INPUTS, CONNECTORS, CONTACTOR, SAFETY_INPUTS)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_stub_check_rejects_a_module_micropython_does_not_have(tmp_path):
    bad = tmp_path / "uses_dataclasses.py"
    bad.write_text("import dataclasses\n")
    res = _mypy_with_micropython_stubs(bad)
    assert res.returncode != 0 and "dataclasses" in res.stdout


def test_safety_core_imports_nothing_but_its_input_table_under_micropython(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(LIMITS)!r})\nbefore = set(sys.modules)\nimport core\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    res = subprocess.run([micropython_binary(), str(script)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['core', 'inputs']"


def test_the_cabinet_core_imports_nothing_but_the_core_and_its_table_under_micropython(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(LIMITS)!r})\nbefore = set(sys.modules)\nimport connectors\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    res = subprocess.run([micropython_binary(), str(script)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert (
        res.stdout.strip()
        == "['connectors', 'contactor', 'core', 'inputs', 'isolation', 'overvoltage', 'safety_inputs']"
    )
