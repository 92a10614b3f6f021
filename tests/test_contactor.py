"""Contactor feedback on the whole simulated cabinet (edge/sim/sim.toml: two connectors, each with a mirror
contact, driven by the built-in charging controller), stepped in simulated time; and a hypothesis property
of the pure rule (edge/limits/contactor.py): no input sequence closes a contactor reported welded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.cabinet import SIM_CHARGING_PERIOD_S
from edge.config import parse_config
from edge.config.limits import LimitsConfig
from edge.i18n import display_width
from edge.limits import connectors
from edge.render import status_text
from edge.sim.contactor import SimContactor
from edge.sim.control import apply
from edge.sim.stepper import SimStepper
from tests.conftest import REPO

SIM_TOML = (REPO / "edge" / "sim" / "sim.toml").read_text()


@pytest.fixture
def cabinet(tmp_path: Path) -> Iterator[SimStepper]:
    """The two-connector sim cabinet with its built-in sessions running; both connectors charging."""
    sim = SimStepper(parse_config(SIM_TOML), tmp_path / "data", step_s=0.01)
    ctl = sim.cabinet.controller

    def drive(now: float) -> None:
        sim.drive_charging(ctl.demands, now, {n: r.capabilities for n, r in ctl.reports().items()})

    sim.every("sim sessions", SIM_CHARGING_PERIOD_S, drive)
    try:
        sim.run_until(lambda: all(_conn(sim, n)["limit_a"] > 50 for n in ("1", "2")), 60.0, "both charging")
        yield sim
    finally:
        sim.close()


def _conn(sim: SimStepper, name: str) -> dict[str, Any]:
    return sim.decision()["connectors"][name]


def _closed(sim: SimStepper, name: str) -> bool:
    return sim.contactors[name].closed


def test_a_weld_on_connector_1_takes_it_out_of_service_while_connector_2_keeps_charging(cabinet: SimStepper):
    sim = cabinet
    apply(sim, {"knob": "contactor_weld", "connector": "1", "value": True})  # type: ignore[arg-type]
    apply(sim, {"knob": "plug", "connector": "1", "value": False})  # type: ignore[arg-type]  # ends its session
    t0 = sim.now
    sim.run_until(lambda: "contactor_welded" in sim.decision()["latched"], 10.0, "weld detected")
    assert _closed(sim, "1")  # welded: the contacts stayed closed after the open command
    assert sim.now - t0 < 3.0  # session end (off-current wait) + open_timeout_ms + a tick
    raised = sim.events("fault_raised", "contactor_welded")
    assert raised and "connector 1" in raised[-1].data["detail"] and "out of service" in raised[-1].data["detail"]
    sim.run(5.0)
    one, two = _conn(sim, "1"), _conn(sim, "2")
    assert one["out_of_service"] and not one["contactor"] and not one["enable"] and one["limit_a"] == 0.0
    assert not two["out_of_service"] and two["contactor"] and two["limit_a"] > 50 and two["faults"] == []
    assert sim.board.level("contactor1") == 0 and sim.board.level("contactor2") == 1
    report = sim.cabinet.controller.reports()["1"]
    assert report.mode == "Fault" and "contactor_welded" in report.faults  # EVerest: MREC17 on its module
    # the technician sees it: status JSON, the retained MQTT state, the `edge status` screen under its row
    st = sim.cabinet.status()
    assert [c["out_of_service"] for c in st["connectors"]] == [True, False]
    assert [c["out_of_service"] for c in sim.cabinet.mqtt_state()["connectors"]] == [True, False]
    lines = status_text(st).splitlines()
    (row,) = [i for i, ln in enumerate(lines) if ln.startswith("1 ")]
    assert lines[row + 1].strip() == "OUT OF SERVICE: contactor welded, clear on site after repair"
    assert not any("OUT OF SERVICE" in ln for ln in lines[row + 2 :]) and max(map(display_width, lines)) <= 80
    # plugged in again: connector 1 stays off; a clear is refused while the mirror contact reads closed
    apply(sim, {"knob": "plug", "connector": "1", "value": True})  # type: ignore[arg-type]
    sim.run(5.0)
    assert _conn(sim, "1")["contactor"] is False and sim.board.level("contactor1") == 0
    ok, why = sim.cabinet.controller.request_clear("contactor_welded")
    assert not ok and "mirror contact still reads closed" in why
    # repaired: reads open, cleared locally, charges again
    sim.weld_contactor("1", on=False)
    sim.run(0.5)
    assert not _closed(sim, "1")
    ok, why = sim.cabinet.controller.request_clear("contactor_welded")
    assert ok, why
    sim.run_until(lambda: _conn(sim, "1")["contactor"] and _closed(sim, "1"), 60.0, "connector 1 back")
    assert "OUT OF SERVICE" not in status_text(sim.cabinet.status())


def test_a_contactor_that_does_not_close_is_latched_and_the_other_connector_goes_on(tmp_path: Path):
    sim = SimStepper(parse_config(SIM_TOML), tmp_path / "data", step_s=0.01)
    try:
        ctl = sim.cabinet.controller
        sim.contactor_fails_to_close("2")
        sim.every(
            "sim sessions",
            SIM_CHARGING_PERIOD_S,
            lambda now: sim.drive_charging(ctl.demands, now, {n: r.capabilities for n, r in ctl.reports().items()}),
        )
        sim.run_until(lambda: "contactor_failed_to_close" in sim.decision()["latched"], 30.0, "failure to close")
        sim.run_until(lambda: _conn(sim, "1")["limit_a"] > 50, 60.0, "connector 1 charging")
        two = _conn(sim, "2")
        assert two["faults"] == ["contactor_failed_to_close"] and not two["contactor"] and two["limit_a"] == 0.0
        assert not two["out_of_service"]  # not a weld: a clear (also remote) lifts it once it reads open
        assert _conn(sim, "1")["faults"] == []
        sim.contactor_fails_to_close("2", on=False)
        ok, why = ctl.request_clear("contactor_failed_to_close")
        assert ok, why
        sim.run_until(lambda: _closed(sim, "2"), 60.0, "connector 2 closes")
    finally:
        sim.close()


def test_the_simulated_contactor_follows_its_coil_after_a_delay():
    c = SimContactor()
    assert [c.step(True, 0.01) for _ in range(3)] == [False, False, True]  # 30 ms to close
    assert [c.step(False, 0.01) for _ in range(2)] == [True, False]  # 15 ms to open
    c.weld()
    c.step(True, 0.05)
    assert c.step(False, 1.0) is True  # welded: stays closed
    c.weld(on=False)
    c.fail_to_close()
    c.step(False, 0.05)
    assert c.step(True, 1.0) is False


# -- property of the pure rule -------------------------------------------------------------------------------

CONFIG = {**LimitsConfig().model_dump(), "session": dict(connectors.SESSION_DEFAULTS)}
_REQ = {"mode": "Export", "phase": "Charging", "voltage_v": 400.0, "current_a": 100.0, "power_w": None}
_FRESH = {"pin_dc_plus_c": 40.0, "pin_dc_minus_c": 40.0, "coolant_out_c": 30.0, "coolant_flow_lpm": 5.0}

step_strategy = st.fixed_dictionaries(
    {
        "dt": st.sampled_from([0.01, 0.05, 0.1, 0.3, 1.0]),
        "fb": st.sampled_from([0, 1, None]),
        "live": st.booleans(),
        "phase": st.sampled_from(["Charging", "PreCharge", "CableCheck", "Other"]),
        "clear": st.booleans(),
        "out_v": st.sampled_from([0.0, 400.0]),
    }
)


def _snapshot(t: float, step: dict[str, Any]) -> dict[str, Any]:
    inputs = {k: [v, t, "ok"] for k, v in _FRESH.items()}
    inputs["output_v"] = [step["out_v"], t, "ok"]
    inputs["output_a"] = [0.0, t, "ok"]
    req = {**_REQ, "phase": step["phase"], "t_mode": t, "t_setpoint": t} if step["live"] else None
    conn = {
        "inputs": inputs,
        "request": req,
        "hw_max_a": 200.0,
        "hw_max_v": 1000.0,
        "modules_available": 4,
        "module_max_a": 50.0,
        "modules_configured": 4,
        "contactor_fb": step["fb"],
    }
    return {"t": t, "inputs": {}, "clear": ["contactor_welded"] if step["clear"] else [], "connectors": {"1": conn}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step_strategy, min_size=1, max_size=40))
def test_no_input_sequence_closes_a_contactor_reported_welded(steps: list[dict[str, Any]]):
    state = None
    t = 0.0
    for step in steps:
        t += step["dt"]
        d, state = connectors.evaluate_cabinet(_snapshot(t, step), CONFIG, state)
        one = d["connectors"]["1"]
        if "contactor_welded" in one["latched"]:
            assert one["out_of_service"] and not one["contactor"] and not one["enable"] and one["limit_a"] == 0.0
        if "contactor_welded" in d["cleared"]:
            assert step["fb"] == 0  # cleared only while the mirror contact reads open


def test_a_cloud_clear_of_a_weld_is_refused_even_with_remote_clears_allowed(tmp_path: Path):
    from edge.operator import Source
    from tests.test_ops import Cabinet

    cab = Cabinet(tmp_path, "[limits]\nremote_clear_allowed = true\n")
    err = cab.refused(cab.ops.clear_fault, Source.cloud("dr-9"), {"fault": "contactor_welded"})
    assert err.code == "forbidden" and "only on site" in err.message
    err = cab.refused(cab.ops.clear_fault, Source.cloud("dr-9"), {"fault": "coolant_flow_low"})
    assert err.code == "refused"  # another fault goes on to the core, which answers "not latched"
    err = cab.refused(cab.ops.clear_fault, Source.local("alice", 1000), {"fault": "contactor_welded"})
    assert err.code == "refused" and "not latched" in err.message  # locally it reaches the core


def test_the_mirror_contacts_are_read_through_the_configured_input_pins_with_their_active_level(tmp_path: Path):
    sim = SimStepper(parse_config(SIM_TOML + '\n[contactors]\nfeedback_active = "low"\n'), tmp_path / "d", step_s=0.01)
    try:
        ctl = sim.cabinet.controller
        sim.every(
            "sim sessions",
            SIM_CHARGING_PERIOD_S,
            lambda now: sim.drive_charging(ctl.demands, now, {n: r.capabilities for n, r in ctl.reports().items()}),
        )
        sim.run_until(lambda: all(_conn(sim, n)["limit_a"] > 50 for n in ("1", "2")), 60.0, "both charging")
        assert sim.decision()["faults"] == []
        assert sim.board.inputs["contactor1_fb"].value() == 0  # closed reads low on this wiring
        assert ctl.contactor_feedback() == {"1": 1, "2": 1}
        sim.contactor_fails_to_close("1")
        sim.weld_contactor("2")
        sim.unplug("2")
        sim.board.pin("contactor1", 0)  # the coil drops out for a moment (its supply): the contacts open
        sim.run_until(lambda: {"contactor_failed_to_close", "contactor_welded"} <= set(sim.decision()["latched"]), 10.0)
        assert ctl.contactor_feedback() == {"1": 0, "2": 1}
    finally:
        sim.close()
