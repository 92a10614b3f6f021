"""Messages that send the technician to the right part: a silent cable monitor, a stuck sender, lost
frames, a sensor the monitor flags faulty and an out-of-range value each say a different thing and name
what to check; configured but silent devices are shown as such, never as "none configured"."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.cable.monitor import BAD_LENGTH, COUNTER_JUMP, FAULT_BIT, FROZEN, OUT_OF_RANGE, CableMonitor
from edge.config import parse_config
from edge.render import check_lines, status_text
from edge.sim.stepper import SimStepper
from tests.test_cable_monitor import frame
from tests.test_screen import sim_toml


def _decode_two(second_counter: int, **values: float) -> CableMonitor:
    mon = CableMonitor("gun1")
    mon.decode(*frame(mon, "CABLE_TEMPS", 3), 1.0)
    mon.decode(*frame(mon, "CABLE_TEMPS", second_counter, **values), 1.1)
    return mon


@pytest.mark.parametrize(
    ("second", "values", "cause", "part"),
    [
        (3, {}, FROZEN, "cable monitor unit"),
        (6, {}, COUNTER_JUMP, "CAN bus"),
        (4, {"PinDcPlusSensorFault": 1}, FAULT_BIT, "sensor and its plug"),
        (4, {"PinTempDcPlus": 260.0}, OUT_OF_RANGE, "sensor and its wiring"),
    ],
)
def test_each_cause_of_an_invalid_value_names_a_different_part(second, values, cause, part):
    mon = _decode_two(second, **values)
    diag = mon.diagnosis(1.15)
    assert not diag["silent"] and cause in diag["invalid"].values(), diag
    lines = check_lines({"cable_status": {"gun1": diag}})
    text = " ".join(ln.removeprefix("check").strip() for ln in lines)
    assert lines[0].startswith("check    gun1: ") and part in text, text
    if cause in (FAULT_BIT, OUT_OF_RANGE):
        assert "pin DC+" in text and "pin DC-" not in text  # the one sensor, by the name on the screen
    # the next good frame clears the cause
    mon.decode(*frame(mon, "CABLE_TEMPS", (second + 1) % 16), 1.2)
    assert mon.diagnosis(1.25)["invalid"] == {}


def test_a_frame_of_the_wrong_length_and_a_silent_or_never_heard_monitor():
    mon = CableMonitor("gun1")
    fid, data = frame(mon, "CABLE_TEMPS", 0)
    mon.decode(fid, data[:4], 1.0)
    assert set(mon.diagnosis(1.0)["invalid"].values()) == {BAD_LENGTH}
    silent = check_lines({"cable_status": {"gun1": mon.diagnosis(13.0)}})
    assert "silent for 12 s" in silent[0] and "CAN cable" in silent[0]
    never = check_lines({"cable_status": {"gun2": CableMonitor("gun2", node_id=2).diagnosis(5.0)}})
    assert "no frame from its cable monitor (node 2) since start" in " ".join(never)


@pytest.fixture
def sim(tmp_path: Path):
    s = SimStepper(parse_config(sim_toml(tmp_path)), tmp_path / "data", step_s=0.05)
    s.run(3.0)
    yield s
    s.close()


def test_on_the_simulator_a_silent_and_a_frozen_monitor_say_different_things(sim):
    assert check_lines(sim.cabinet.status()) == []  # healthy: nothing to check
    sim.set_cable_silent(True, "gun1")
    sim.set_cable_frozen(True, "gun2")
    sim.run(2.0)
    st = sim.cabinet.status()
    text = "\n".join(check_lines(st))
    assert "gun1: cable monitor silent for 2 s" in text, text
    assert "gun2: the cable monitor repeats the same frame (counter stuck)" in text, text
    assert {f for f in st["faults"] if f.endswith(("_stale", "_invalid"))}  # the core's faults, unchanged


def test_a_configured_but_silent_cable_is_shown_with_dashes_not_as_none_configured(sim):
    st = sim.cabinet.status()
    assert st["cables"] == ["gun1", "gun2"]
    st["readings"] = {k: v for k, v in st["readings"].items() if not k.startswith("gun")}  # never heard
    screen = status_text(st)
    assert "none configured" not in screen.split("modules")[1].split("meter")[0]
    assert "gun1: pin DC+ -- °C" in screen and "gun2: pin DC+ -- °C" in screen


def test_a_healthy_grid_meter_raises_no_grid_meter_lost_at_start_up(sim):
    # the core gives a meter never read its meter_loss_ms from the first evaluation (start-up grace)
    assert any(k.startswith("grid.") for k in sim.cabinet.status()["readings"]), "the meter answered"
    assert not sim.events("fault_raised", "grid_meter_lost")
