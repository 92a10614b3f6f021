"""Issue 16: the allocator runs under MicroPython (like the safety core) and gives there exactly what it gives
under CPython, on a set of cabinets drawn once per policy (one interpreter run for all)."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

from edge.limits import allocation as al
from tests.test_limits_vectors import micropython_binary

LIMITS = Path(al.__file__).resolve().parent


def _cases(n: int) -> list[list]:
    rnd = random.Random(16)
    cases = []
    for i in range(n):
        names = ["1", "2", "3"][: rnd.randint(1, 3)]
        groups = {}
        for g in "ABCDEF"[: rnd.randint(1, 6)]:
            groups[g] = {
                "available": rnd.random() > 0.2,
                "max_a": rnd.choice([100.0, 200.0]),
                "max_kw": rnd.choice([60.0, 120.0]),
                "at": rnd.choice([None, *names]),
                "live": rnd.random() > 0.5,
            }
        connectors = [
            {
                "name": n,
                "phase": rnd.choice(["Charging", "PreCharge", "Other"]),
                "request_kw": rnd.choice([30.0, 150.0, 400.0]),
                "request_v": rnd.choice([400.0, 800.0]),
                "max_a": 500.0,
                "max_kw": rnd.choice([150.0, 400.0]),
                "priority": rnd.randint(0, 2),
                "arrival": rnd.randint(0, 9),
                "min_groups": rnd.randint(0, 1),
                "max_groups": rnd.randint(1, 6),
                "reach": sorted(groups),
                "home": [],
                "changed_s": rnd.choice([None, 95.0]),
            }
            for n in names
        ]
        cases.append([connectors, groups, al.POLICIES[i % len(al.POLICIES)], rnd.choice([80.0, 1000.0]), 100.0, 10.0])
    return cases


def test_micropython_gives_the_same_allocations(tmp_path: Path) -> None:
    cases = _cases(40)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = tmp_path / "probe.py"
    script.write_text(
        f"import sys, json\nsys.path.insert(0, {str(LIMITS)!r})\nbefore = set(sys.modules)\nimport allocation\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
        f"cases = json.load(open({str(tmp_path / 'cases.json')!r}))\n"
        "print(json.dumps([allocation.allocate(*c) for c in cases]))\n"
    )
    res = subprocess.run([micropython_binary(), str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    imported, results = res.stdout.strip().splitlines()
    assert json.loads(imported) == ["allocation"]
    assert json.loads(results) == [json.loads(json.dumps(al.allocate(*c))) for c in cases]
