"""The Makefile's install steps (issue 19 item 7: a quick first `make run`), run by real make against a stand-in
python that logs what it is asked to do: the venv is made without pip where the host's pip can install into
it (`pip --python`), else with its own pip; an edit of setup.cfg reinstalls, an unchanged tree does not."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# stands in for python3 and, copied into the venv, for the venv's python (and pip when ensurepip ran)
STUB = r"""#!/bin/sh
echo "$0 $*" >> "$STUB_LOG"
if [ "$1 $2" = "-m venv" ]; then
    for dir; do :; done
    mkdir -p "$dir/bin"
    cp "$0" "$dir/bin/python"
    [ "$3" = --without-pip ] || cp "$0" "$dir/bin/pip"
elif [ "$1 $2 $3" = "-m pip --help" ] && [ -n "$STUB_PIP_HAS_PYTHON" ]; then
    echo "  --python <python>           Run pip with the specified Python interpreter."
fi
exit 0
"""

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("Makefile", "setup.cfg", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    stub = tmp_path / "host-python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    return tmp_path


def make_venv(tree: Path, host_pip_has_python: bool) -> list[str]:
    """`make venv` with the stand-in; returns the calls it logged (host python and venv python alike)."""
    log = tree / "calls.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "STUB_LOG": str(log), "STUB_PIP_HAS_PYTHON": "1" if host_pip_has_python else ""}
    subprocess.run(
        ["make", "-s", "venv", f"PYTHON={tree / 'host-python'}"],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        timeout=30,
    )
    return [line.replace(str(tree) + "/", "") for line in log.read_text().splitlines()] if log.exists() else []


def installs(calls: list[str]) -> list[str]:
    return [c for c in calls if " install " in c]


def test_venv_without_pip_filled_by_the_host_pip(tree: Path) -> None:
    calls = make_venv(tree, host_pip_has_python=True)
    assert "host-python -m venv --without-pip .venv" in calls
    assert installs(calls) == [
        "host-python -m pip --python .venv/bin/python install -q -e .",
        "host-python -m pip --python .venv/bin/python install -q -e .[test]",
    ]
    assert not (tree / ".venv/bin/pip").exists()


def test_old_host_pip_gives_the_venv_its_own_pip(tree: Path) -> None:
    calls = make_venv(tree, host_pip_has_python=False)
    assert "host-python -m venv .venv" in calls
    assert installs(calls) == [
        ".venv/bin/python -m pip install -q -e .",
        ".venv/bin/python -m pip install -q -e .[test]",
    ]


def test_stamps_follow_the_setup_files(tree: Path) -> None:
    make_venv(tree, host_pip_has_python=True)
    stamps = sorted(p.name for p in (tree / ".venv").glob(".installed-*"))
    assert [s.split("-")[1] for s in stamps] == ["run", "test"]
    assert make_venv(tree, host_pip_has_python=True) == [], "installed already: nothing to do"

    with (tree / "setup.cfg").open("a") as cfg:
        cfg.write("# a changed dependency\n")
    calls = make_venv(tree, host_pip_has_python=True)
    assert not any(" venv " in c for c in calls), "the venv is kept"
    assert len(installs(calls)) == 2, "both installs rerun"
    new_stamps = sorted(p.name for p in (tree / ".venv").glob(".installed-*"))
    assert len(new_stamps) == 2 and not set(new_stamps) & set(stamps), "the old stamps are gone"
