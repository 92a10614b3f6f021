"""Issue 19 item 7: a first `make run` from a fresh clone, to the first status line (goal: under 10 s).

Each run clones this checkout's HEAD into a temporary directory, runs `make run` there with its output piped
(plain status lines, not a TTY) and stops it at the first status line (a line with ``limit``). The time is from
`make run` to that line: the venv, the install of the daemon's dependencies and the daemon's start.

Loopback only, like every bench: the clone gets this checkout's uv (``.venv/tools/bin/uv``, put there by
`make test`) and uv runs offline (``UV_OFFLINE=1``) from its cache, which that same install filled. So this is
the warm-cache figure; a cold uv cache adds the downloads (7.8 s in all here, docs/BENCHMARKS.md), and
`make run UV=no` (pip) needs the package index, so it is measured by hand, not here.

    python -m bench.quickstart [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import goal, goals, table

REPO = Path(__file__).resolve().parent.parent
GOAL_S = 10.0
TIMEOUT_S = 120.0


def one_run(work: Path) -> float:
    """Seconds from `make run` to its first status line in a fresh clone under ``work``."""
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=60)
    tools = clone / ".venv" / "tools" / "bin"
    tools.mkdir(parents=True)
    shutil.copy2(REPO / ".venv" / "tools" / "bin" / "uv", tools / "uv")
    env = {**os.environ, "UV_OFFLINE": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["make", "run"], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if b"limit" in raw:
                return time.monotonic() - t0
            if time.monotonic() - t0 > TIMEOUT_S:
                break
        raise RuntimeError(f"no status line within {TIMEOUT_S:.0f} s (exit {proc.poll()})")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(clone, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="fresh clones to time (default 3)")
    args = ap.parse_args(argv)
    if not (REPO / ".venv" / "tools" / "bin" / "uv").exists():
        # offline needs this checkout's uv; without it a measurement would need the package index
        print("no uv in .venv/tools (make test installs it when pip can fetch it): nothing measured")
        goal("quickstart", False, "not measured (no uv in .venv/tools)", f"{GOAL_S:g} s")
        return 1
    times = []
    with tempfile.TemporaryDirectory(prefix="quickstart-") as tmp:
        for _ in range(args.runs):
            times.append(one_run(Path(tmp)))
    median = statistics.median(times)
    load = os.getloadavg()[0]
    table(
        [
            [
                "first make run to the first status line, median",
                f"{median:.1f} s",
                f"{GOAL_S:g} s",
                f"{median / GOAL_S:.2f}",
            ],
            ["each run", ", ".join(f"{t:.1f}" for t in times) + " s", "", ""],
            ["load average (1 min) at the end", f"{load:.2f}", "2 cores", ""],
        ]
    )
    return 0 if goals([("quickstart", median < GOAL_S, f"{median:.1f} s", f"{GOAL_S:g} s")]) else 1


if __name__ == "__main__":
    sys.exit(main())
