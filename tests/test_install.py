"""The install a new user runs first (`make run`: `pip install -e .`) prints no setuptools warning (issue 19
item 7). setuptools' editable build, which `pip install -e .` runs in its build environment, is run here in a
subprocess the same way (PEP 660 hook of setuptools.build_meta) and its whole output is searched."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_BUILD = """
import sys
from setuptools import build_meta
print("WHEEL", build_meta.build_editable(sys.argv[1]))
"""


def test_the_editable_install_prints_no_setuptools_warning(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", _BUILD, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "default"},  # every warning shown, none filtered
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    # "!!" frames setuptools' warning blocks (e.g. "InformationOnly: Editable installation. !! ... !!")
    assert "!!" not in out and "Warning" not in out, out
    wheel = tmp_path / out.split("WHEEL ")[1].split()[0]
    with zipfile.ZipFile(wheel) as zf:
        pth = [n for n in zf.namelist() if n.endswith(".pth")]
        assert len(pth) == 1 and zf.read(pth[0]).decode().strip() == str(REPO), pth
