"""One round of the soak: the whole cabinet under every fault of the campaign (bench/soak.py), in `make test`.

Fails on any lost record, any fault not detected or not cleared, a schema violation, or memory growth
beyond a bound scaled to the run's length. A round runs every fault once (about a minute, whatever the
duration asks: the campaign never ends before each fault ran); the 2-minute and 1-hour runs are
`python -m bench.soak` (make bench), their figures in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil

import pytest

from bench.soak import duration_s, problems, run_soak, table

DURATION_S = 30.0


@pytest.mark.timeout(900)
def test_one_soak_round_loses_nothing_and_detects_and_clears_every_fault(tmp_path):
    if not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")):
        pytest.skip("mosquitto is not installed (make test installs it when run as root)")
    summary = run_soak(tmp_path / "soak", DURATION_S, log=lambda m: None)
    print(table(summary))
    injected = {name for name, r in summary["faults"].items() if r["injected"]}
    # every kind of fault of the campaign ran at least once (disk-full needs root for its tmpfs)
    assert {
        "meter silent",
        "power module silent and back",
        "module alarm",
        "coolant pump stop",
        "pin sensor frozen",
        "pin sensor silent",
        "CAN bus-off",
        "broker killed and restarted",
        "daemon SIGKILL + restart",
    } <= injected
    bound_mb = 5.0 + 1.0 * DURATION_S / 3600.0
    assert problems(summary, bound_mb) == []
    assert summary["records"]["last_seq"] > 100  # records really flowed


def test_duration_takes_seconds_or_a_unit():
    assert [duration_s(t) for t in ("3600", "90s", "5m", "1h", "1.5h")] == [3600.0, 90.0, 300.0, 3600.0, 5400.0]
    for bad in ("", "1d", "h", "-5m", "0", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration_s(bad)
