"""Three defects seen on the default simulated cabinet (edge/sim/sim.toml), each on the stepped simulator:
a silent module after a coolant trip, an IMD self-test failure set mid-session, and the door stopping the
sessions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import parse_config
from edge.config.limits import LimitsConfig
from edge.limits import core
from edge.render import status_text
from edge.sim.session import CHARGING, FAILED
from edge.sim.stepper import SimStepper
from tests.conftest import REPO

SIM_TOML = (REPO / "edge" / "sim" / "sim.toml").read_text()


def _stepper(tmp_path: Path, text: str = SIM_TOML) -> SimStepper:
    text = text.replace('socket = ".edge-sim/edge.sock"', f'socket = "{tmp_path}/edge.sock"')
    text = text.replace('data_dir = ".edge-sim"', f'data_dir = "{tmp_path}/data"')
    text = text.replace('backend = "systemd"', 'backend = "sim"')
    made = SimStepper(parse_config(text), tmp_path / "data", step_s=0.02)
    cab = made.cabinet

    def sessions(now: float) -> None:  # what Cabinet._sim_charging does in the daemon
        caps = {n: r.capabilities for n, r in cab.controller.reports().items()}
        made.drive_charging(cab.controller.demands, now, caps)

    made.every("sim sessions", 0.05, sessions)
    return made


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimStepper]:
    made = _stepper(tmp_path)
    yield made
    made.close()


def _both_charging(sim: SimStepper) -> None:
    sim.run_until(
        lambda: all(c.output_a > 20.0 for c in sim.physics.connectors.values()), timeout_s=60.0, what="both charging"
    )


def test_a_silent_module_after_a_coolant_trip_raises_no_spurious_over_current(sim: SimStepper) -> None:
    _both_charging(sim)
    sim.set_pump_failed(True)
    sim.set_module_silent(2, True)
    t_lost = sim.run_until(lambda: "module_lost_2" in sim.decision()["faults"], 20.0, "module 2 lost")
    sim.run_until(lambda: "coolant_flow_low" in sim.decision()["latched"], 20.0, "coolant trip")
    sim.run(10.0)
    d = sim.decision()
    # the physics: the silent module stopped delivering at once; only its last reading stayed in the sum
    assert sim.physics.connectors["1"].output_a == 0.0 and not d["connectors"]["1"]["contactor"]
    assert "over_current" not in d["faults"], d["fault_details"]
    assert sorted(d["latched"]) == ["coolant_flow_low"]
    assert "power module 2 not answering" in d["fault_details"]["module_lost_2"]
    assert sim.events("fault_raised", "over_current") == []
    assert t_lost - sim.cabinet.bank.modules[2].last_seen <= sim.cabinet.config.power_modules.lost_after_ms / 1000 + 0.1


CFG = LimitsConfig().model_dump()


def _oc(state: dict, t: float, applied_a: float, sample_a: float, sample_t: float, modules: list) -> dict:
    """One evaluation of the over-current rule with the limit ``applied_a`` commanded last time."""
    state["applied_a"] = applied_a
    c = core._Ctx({"t": t, "inputs": {"output_a": [sample_a, sample_t, "ok"]}, "module_a": modules}, CFG, state)
    core._rule_over_current(c)
    return c.trips


def test_a_reading_taken_before_a_reduction_settled_is_judged_against_the_limit_before_it() -> None:
    """The frozen last answer of a silent module (35 A, measured at t = 8 s while 100 A was allowed) must not
    count as an over-current against the 0 A of a later reduction: it is no measurement of the present."""
    state = core.initial_state()
    state["oc_hold"] = [100.0, 10.0 + CFG["over_current"]["settle_ms"] / 1000.0]  # reduced to 0 A at t = 10 s
    frozen = [[1, 0.0, 13.0], [2, 35.0, 8.0]]
    for t in (11.0, 12.0, 13.0):
        assert _oc(state, t, 0.0, 35.0, 8.0, frozen) == {}
    assert "over_current" not in state["timers"]


def test_a_silent_module_does_not_hide_another_that_answers_it_still_delivers() -> None:
    """Two faults at once: module 2 silent (its frozen 35 A from before the reduction), module 1 answering 40 A
    after the reduction settled: module 1 alone is over the new limit and trips, named."""
    state = core.initial_state()
    state["oc_hold"] = [100.0, 11.0]  # reduced to 0 A at t = 10 s, settled at 11 s
    assert _oc(state, 12.0, 0.0, 75.0, 8.0, [[1, 40.0, 12.0], [2, 35.0, 8.0]]) == {}  # counting
    trips = _oc(state, 12.5, 0.0, 75.0, 8.0, [[1, 40.0, 12.5], [2, 35.0, 8.0]])
    detail = (
        "output 40.0 A above limit 0.0 A + 10.0 A for 500 ms: module 1 40.0 A, module 2 35.0 A (silent for 4500 ms)"
    )
    assert trips["over_current"][0] == detail


def test_a_module_answering_that_it_delivers_with_the_output_off_trips_and_is_named() -> None:
    state = core.initial_state()
    state["oc_hold"] = [100.0, 11.0]  # the reduction to 0 A has settled at t = 11 s
    modules = [[1, 0.0, 12.0], [2, 35.0, 12.0]]
    assert _oc(state, 12.0, 0.0, 35.0, 12.0, modules) == {}  # counting
    trips = _oc(state, 12.5, 0.0, 35.0, 12.5, [[1, 0.0, 12.5], [2, 35.0, 12.5]])
    assert (
        trips["over_current"][0]
        == "output 35.0 A above limit 0.0 A + 10.0 A for 500 ms: module 2 35.0 A, module 1 0.0 A"
    )
    # a module that stopped answering after its last (over-limit) answer is named as silent
    state = core.initial_state()
    _oc(state, 20.0, 0.0, 35.0, 20.0, [[3, 35.0, 20.0]])
    trips = _oc(state, 21.0, 0.0, 35.0, 20.0, [[3, 35.0, 20.0]])
    assert trips["over_current"][0].endswith(": module 3 35.0 A (silent for 1000 ms)")


def test_imd_self_test_failure_set_mid_session_fails_the_next_sessions_cable_check(sim: SimStepper) -> None:
    """The knob fails the IMD's NEXT self-test: the running session goes on; after a re-plug the new session's
    check fails at once (no pre-charge), the simulated session follows the cabinet's verdict as under
    ``edge run --sim`` (it used to wait 10 s for a check voltage the cabinet no longer gave, then blamed it)."""
    _both_charging(sim)
    sim.set_imd_self_test_fails(True, "1")
    sim.run(2.0)
    assert sim.charging.states()["1"] == CHARGING and sim.decision()["faults"] == []
    sim.unplug("1")
    sim.run(2.0)
    sim.plug_in("1")
    t0 = sim.now
    peak_a = [0.0]

    def watch() -> bool:
        peak_a[0] = max(peak_a[0], sim.physics.connectors["1"].output_a)
        return sim.charging.states()["1"] == FAILED

    t_failed = sim.run_until(watch, 10.0, "connector 1's session failed")
    assert t_failed - t0 <= sim.imds["imd1"].self_test_s + 1.0  # the test's time and a poll or two, not 10 s
    assert sim.charging.sessions["1"].reason == "cable check: the cabinet's isolation check failed"
    assert "precharge" not in [s for t, s in sim.charging.sessions["1"].history if t >= t0]
    assert peak_a[0] <= 2.5
    raised = [e for e in sim.events("fault_raised", "cable_check_failed") if e.t_s >= t0]
    assert raised and raised[0].data["detail"] == "connector 1: isolation monitor self-test failed"
    ended = [e.data["detail"] for e in sim.events("session_event") if e.t_s >= t0]
    assert "connector 1: cable check failed: isolation monitor self-test failed" in ended
    assert sim.charging.states()["2"] == CHARGING
    # not latched (docs/SAFETY.md): the fault holds for the rest of that session, which the controller ended
    assert "cable_check_failed" not in sim.decision()["latched"]


def test_edge_run_sim_hands_the_cabinets_verdict_to_the_simulated_sessions(sim: SimStepper) -> None:
    """The same wiring as edge/cli.py (Backends.sim_verdict): each watched connector's session asks the core."""
    for name, session in sim.charging.sessions.items():
        assert session.verdict == sim.cabinet.cable_check_verdict  # Backends.sim_verdict, called by build()
        assert session.verdict(name) == "idle"
    sim.run_until(lambda: sim.charging.sessions["1"].verdict("1") == "self_test", 10.0, "self-test")


def test_door_open_stops_both_sessions_says_so_per_connector_and_no_session_restarts_while_it_stays_open(
    sim: SimStepper,
) -> None:
    """door_action = "stop" (sim.toml's default): not latched by design, so door_open goes with the sessions;
    what stays is the event of each connector with the reason, and the door input on the status."""
    _both_charging(sim)
    t0 = sim.now
    sim.set_input("door", True)
    sim.deliver()
    d = sim.decision()
    assert "door_open" in d["faults"] and all(not c["contactor"] for c in d["connectors"].values())
    sim.run(2.0)
    assert sim.decision()["faults"] == [] and sim.decision()["latched"] == []  # the sessions ended: no fault
    stopped = {
        e.name: e.data["reason"]
        for e in sim.events("connector_mode")
        if e.t_s >= t0 and e.data["mode"] == "Fault" and "door_open" in e.data["reason"]
    }
    reason = "tripped: door_open: cabinet door open during a session (input door): stopped until it is closed"
    assert stopped == {"1": reason, "2": reason}
    assert [e.t_s for e in sim.events("fault_raised", "door_open")] == [pytest.approx(t0, abs=1e-3)]
    assert sim.cabinet.status()["inputs"]["door"]["active"]
    screen = status_text(sim.cabinet.status()).splitlines()
    assert screen[1].startswith("state    OFF")
    assert screen[2] == "DOOR     open (door): charging is stopped or derated until it is closed"

    # a new session while the door stays open: its cable check never gets current nor a closed contactor
    sim.unplug("1")
    sim.run(1.0)
    sim.plug_in("1")
    t_plug = sim.now
    seen = {"contactor": False, "amps": 0.0, "door": False}

    def watch() -> bool:
        d = sim.decision()
        seen["contactor"] |= bool(sim.board.level(sim.layout[0].contactor_pin)) or d["connectors"]["1"]["contactor"]
        seen["amps"] = max(seen["amps"], sim.physics.connectors["1"].output_a)
        seen["door"] |= "door_open" in d["faults"]
        return sim.charging.states()["1"] == FAILED

    sim.run_until(watch, 20.0, "the new session gave up")
    assert not seen["contactor"] and seen["amps"] == 0.0 and seen["door"]
    assert sim.charging.states()["2"] != CHARGING
    assert len([e for e in sim.events("fault_raised", "door_open") if e.t_s >= t_plug]) == 1

    # closed: the next session charges
    sim.set_input("door", False)
    sim.unplug("1")
    sim.run(1.0)
    sim.plug_in("1")
    sim.run_until(lambda: sim.charging.states()["1"] == CHARGING, 30.0, "charging after the door closed")
    assert not any(line.startswith("DOOR") for line in status_text(sim.cabinet.status()).splitlines())
