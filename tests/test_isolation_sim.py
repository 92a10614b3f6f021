"""The cabinet's cable check and insulation watch end to end on the stepped simulator (edge/sim/sim.toml: two
connectors, one simulated IMD each on the meters' RS-485 line, the built-in charging controller). The real
IMD driver reads the simulated registers in process; everything runs in simulated time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import parse_config
from edge.sim.session import CHARGING, FAILED
from edge.sim.stepper import SimStepper
from tests.conftest import REPO

SIM_TOML = (REPO / "edge" / "sim" / "sim.toml").read_text()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimStepper]:
    text = SIM_TOML.replace('socket = ".edge-sim/edge.sock"', f'socket = "{tmp_path}/edge.sock"')
    text = text.replace('data_dir = ".edge-sim"', f'data_dir = "{tmp_path}/data"')
    text = text.replace('backend = "systemd"', 'backend = "sim"').replace(
        "[telemetry.mqtt]", "[telemetry.mqtt]\nenabled = false"
    )
    stepper = SimStepper(parse_config(text), tmp_path / "data", step_s=0.05)

    def drive(now: float) -> None:  # what Cabinet._sim_charging does in the daemon
        caps = {n: r.capabilities for n, r in stepper.cabinet.controller.reports().items()}
        stepper.drive_charging(stepper.cabinet.controller.demands, now, caps)

    stepper.every("sim sessions", 0.05, drive)
    yield stepper
    stepper.close()


def view(sim: SimStepper, name: str) -> dict:
    return sim.decision()["connectors"][name]


def test_both_sessions_pass_the_cabinets_cable_check_and_charge(sim: SimStepper) -> None:
    seen: set[str] = set()

    def both_charging() -> bool:
        for name in ("1", "2"):
            seen.add(view(sim, name)["imd"]["cable_check"])
        return sim.charging.states() == {"1": CHARGING, "2": CHARGING}

    sim.run_until(both_charging, 30.0, "both connectors charging")
    assert {"self_test", "sampling", "passed"} <= seen
    assert sim.imds["imd1"].self_tests == 1 and sim.imds["imd2"].self_tests == 1
    sim.run_until(lambda: view(sim, "1")["limit_a"] > 50.0, 20.0, "connector 1 above 50 A")
    assert view(sim, "1")["imd"]["measure"] and sim.decision()["faults"] == []
    assert any("cable check passed" in e.data.get("detail", "") for e in sim.events())


def test_an_insulation_below_the_threshold_in_cable_check_means_no_pre_charge(sim: SimStepper) -> None:
    sim.set_imd_resistance(60e3, "1")  # below the 100 kOhm default
    peak_a = [0.0]

    def watch() -> bool:
        peak_a[0] = max(peak_a[0], sim.physics.connectors["1"].output_a)
        return sim.charging.states()["1"] == FAILED and sim.charging.states()["2"] == CHARGING

    sim.run_until(watch, 30.0, "connector 1 failed, connector 2 charging")
    assert sim.charging.sessions["1"].history[-1][1] == FAILED
    assert "precharge" not in [s for _, s in sim.charging.sessions["1"].history]  # never got to pre-charge
    assert peak_a[0] <= 2.5  # only the cable check's 2 A ever flowed
    assert sim.charging.sessions["1"].reason == "cable check: the cabinet's isolation check failed"
    raised = [e for e in sim.events("fault_raised", "cable_check_failed")]
    assert raised and "insulation 60.0 kOhm below 100.0 kOhm" in str(raised[0].data)


def test_an_insulation_drop_while_charging_stops_the_session_and_latches(sim: SimStepper) -> None:
    sim.run_until(lambda: view(sim, "1")["limit_a"] > 50.0 and sim.charging.states()["1"] == CHARGING, 40.0, "charging")
    volts = sim.physics.connectors["1"].output_v
    sim.set_imd_resistance(80.0 * volts, "1")  # below 100 Ohm/V
    t0 = sim.now
    t_stop = sim.run_until(lambda: not view(sim, "1")["contactor"], 5.0, "connector 1 stopped")
    assert t_stop - t0 <= 2 * 0.25 + 0.2  # within a poll or two of the IMD and one tick
    assert "isolation_fault" in sim.decision()["latched"]
    assert view(sim, "2")["contactor"]  # the other connector carries on
    sim.set_imd_resistance(5e6, "1")
    sim.run(1.0)
    assert "isolation_fault" in sim.decision()["latched"]  # still latched until cleared


def test_edge_status_shows_each_imd(sim: SimStepper) -> None:
    from edge.render import status_text

    sim.run_until(lambda: sim.charging.states()["1"] == CHARGING, 30.0, "charging")
    st = sim.cabinet.view().as_dict()
    assert st["isolation"]["imd1"]["ok"] and st["isolation"]["imd1"]["self_test"] == "passed"
    text = status_text(st)
    assert "imd      imd1 ok  R 5000 kOhm  ok  self-test passed" in text
    sim.set_imd_silent(True, "2")
    sim.run(5.0)
    assert "imd      imd2 NO ANSWER" in status_text(sim.cabinet.view().as_dict())
    assert "isolation_monitor_lost" in sim.decision()["faults"]  # in a session: fail safe
    assert not view(sim, "2")["contactor"] and view(sim, "1")["contactor"]


def test_the_imd_knobs_of_the_sim_control_socket(sim: SimStepper) -> None:
    from edge.sim.control import apply

    assert apply(sim, {"knob": "imd_ohm", "connector": "2", "value": 1234.0}) == {"ok": True}  # type: ignore[arg-type]
    assert apply(sim, {"knob": "imd_self_test_fails", "value": True}) == {"ok": True}  # type: ignore[arg-type]
    assert apply(sim, {"knob": "imd_silent", "connector": "2", "value": True}) == {"ok": True}  # type: ignore[arg-type]
    assert sim.imds["imd2"].resistance_ohm == 1234.0 and sim.imds["imd2"].silent
    assert sim.imds["imd1"].self_test_fails and not sim.imds["imd1"].silent
    assert not apply(sim, {"knob": "imd_ohm", "connector": "9", "value": 1.0})["ok"]  # type: ignore[arg-type]
