"""The Makefile's install steps (issue 19 item 7: a quick first `make run`), run by real make against a stand-in
python that logs what it is asked to do: the venv is made without pip where the host's pip can install into
it (`pip --python`), else with its own pip; uv installs where pip can fetch it (once per venv), pip where not,
where uv fails, or with UV=no; an edit of setup.cfg reinstalls, an unchanged tree does not."""

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
elif [ "$1 $2 $3 $4 $5" = "-m pip install -q --target" ]; then
    [ -n "$STUB_UV" ] || exit 1
    mkdir -p "$6/bin" && cp "$0" "$6/bin/uv"
elif [ "${0##*/}" = uv ] && [ -n "$STUB_UV_FAILS" ]; then
    exit 1
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


def make_venv(tree: Path, host_pip_has_python: bool, uv: str = "", *args: str) -> list[str]:
    """`make venv` with the stand-in; returns the calls it logged (host python, venv python and uv alike).
    ``uv``: "" (pip cannot fetch uv), "yes" (it can), "fails" (it can, and uv then fails)."""
    log = tree / "calls.log"
    log.unlink(missing_ok=True)
    env = {
        **os.environ,
        "STUB_LOG": str(log),
        "STUB_PIP_HAS_PYTHON": "1" if host_pip_has_python else "",
        "STUB_UV": "1" if uv else "",
        "STUB_UV_FAILS": "1" if uv == "fails" else "",
    }
    subprocess.run(
        ["make", "-s", "venv", f"PYTHON={tree / 'host-python'}", *args],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        timeout=30,
    )
    return [line.replace(str(tree) + "/", "") for line in log.read_text().splitlines()] if log.exists() else []


FETCH_UV = "host-python -m pip install -q --target .venv/tools uv>=0.4,<1"
UV_INSTALL = ".venv/tools/bin/uv pip install -q --compile-bytecode --python .venv/bin/python"
PIP_INSTALL = "host-python -m pip --python .venv/bin/python install -q"


def installs(calls: list[str]) -> list[str]:
    return [c for c in calls if " install " in c]


def test_venv_without_pip_filled_by_the_host_pip(tree: Path) -> None:
    calls = make_venv(tree, host_pip_has_python=True)
    assert "host-python -m venv --without-pip .venv" in calls
    assert installs(calls) == [
        FETCH_UV,  # tried once: it failed, so not again for the test extra
        "host-python -m pip --python .venv/bin/python install -q -e .",
        "host-python -m pip --python .venv/bin/python install -q -e .[test]",
    ]
    assert not (tree / ".venv/bin/pip").exists()


def test_old_host_pip_gives_the_venv_its_own_pip(tree: Path) -> None:
    calls = make_venv(tree, host_pip_has_python=False)
    assert "host-python -m venv .venv" in calls
    assert installs(calls) == [
        ".venv/bin/python -m pip install -q --target .venv/tools uv>=0.4,<1",
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
    assert len(installs(calls)) == 2, "both installs rerun (pip: uv was tried once for this venv)"
    new_stamps = sorted(p.name for p in (tree / ".venv").glob(".installed-*"))
    assert len(new_stamps) == 2 and not set(new_stamps) & set(stamps), "the old stamps are gone"


def test_uv_installs_both_when_pip_can_fetch_it(tree: Path) -> None:
    calls = make_venv(tree, True, "yes")
    assert installs(calls) == [FETCH_UV, f"{UV_INSTALL} -e .", f"{UV_INSTALL} -e .[test]"]


def test_pip_takes_over_where_uv_fails(tree: Path) -> None:
    calls = make_venv(tree, True, "fails")
    assert installs(calls) == [
        FETCH_UV,
        f"{UV_INSTALL} -e .",
        f"{PIP_INSTALL} -e .",
        f"{UV_INSTALL} -e .[test]",
        f"{PIP_INSTALL} -e .[test]",
    ]


def test_uv_no_is_pip_only(tree: Path) -> None:
    calls = make_venv(tree, True, "yes", "UV=no")
    assert installs(calls) == [f"{PIP_INSTALL} -e .", f"{PIP_INSTALL} -e .[test]"]
