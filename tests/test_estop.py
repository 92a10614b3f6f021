"""Emergency stop on the whole simulated cabinet in simulated time (edge/sim/stepper.py): the default two-
connector cabinet of ``edge run --sim`` (edge/sim/sim.toml: an e-stop and a door on NC loops), both
vehicles charging, then the e-stop pressed mid-session. Everything goes off in the same instant (no step,
no tick: the pin's edge evaluates at once), stays latched, and the clear is refused while pressed and from
the cloud; a local clear after the release lifts it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import parse_config
from edge.operator import Source
from edge.ops import FORBIDDEN, REFUSED, OpError
from edge.render import status_text
from edge.sim import control as sim_control
from edge.sim.stepper import SimStepper
from tests.conftest import REPO

SIM_TOML = REPO / "edge" / "sim" / "sim.toml"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimStepper]:
    # remote clears allowed: the cloud is still refused for emergency_stop (LOCAL_CLEAR_ONLY)
    text = SIM_TOML.read_text() + "\n[limits]\nremote_clear_allowed = true\n"
    made = SimStepper(parse_config(text), tmp_path / "data", step_s=0.01)
    cab = made.cabinet

    def sessions(now: float) -> None:
        caps = {n: r.capabilities for n, r in cab.controller.reports().items()}
        made.drive_charging(cab.controller.demands, now, caps)

    made.every("sim sessions", 0.05, sessions)
    yield made
    made.close()


def _energised(sim: SimStepper) -> list[str]:
    """What still carries or may carry current: a module on, a contactor pin closed, a connector enabled."""
    out = [f"module {a} on" for a, m in sim.physics.modules.items() if m.on]
    out += [f"contactor {spec.name} closed" for spec in sim.layout if sim.board.level(spec.contactor_pin)]
    d = sim.decision()
    out += [f"connector {n} enabled" for n, c in d["connectors"].items() if c["enable"] or c["limit_a"] > 0]
    return out


def test_estop_mid_session_switches_everything_off_at_once_latched_until_released_and_cleared_on_site(sim):
    sim.run_until(
        lambda: all(c.output_a > 20.0 for c in sim.physics.connectors.values()), timeout_s=60.0, what="both charging"
    )
    ops = sim.cabinet.operations
    assert ops is not None
    local, cloud = Source.local("tech"), Source.cloud("cmd-1")

    sim.set_estop(True)  # the edge alone: no step, no tick
    sim.deliver()  # the module-off frames reach the simulated modules
    d = sim.decision()
    assert d["estop"] is True and "emergency_stop" in d["faults"] and "emergency_stop" in d["latched"]
    assert "emergency stop pressed (input estop)" in d["fault_details"]["emergency_stop"]
    assert _energised(sim) == []
    assert all(c["mode"] == "Fault" for c in d["connectors"].values())
    assert [e.name for e in sim.events("fault_raised")][-1:] == ["emergency_stop"]
    assert any(e.name == "estop" and e.data["active"] for e in sim.events("input"))

    with pytest.raises(OpError) as refused:
        ops.clear_fault(local, {"fault": "emergency_stop"})
    assert refused.value.code == REFUSED and "release it first" in refused.value.message
    sim.run(1.0)
    assert _energised(sim) == [] and sim.decision()["estop"]
    # the first thing `edge status` says
    assert status_text(sim.cabinet.status()).splitlines()[1].startswith("E-STOP   PRESSED (estop): every output off")

    sim.set_estop(False)
    sim.run(1.0)
    d = sim.decision()
    assert d["estop"] and "latched until cleared on site" in d["fault_details"]["emergency_stop"]
    assert _energised(sim) == []
    with pytest.raises(OpError) as forbidden:
        ops.clear_fault(cloud, {"fault": "emergency_stop"})
    assert forbidden.value.code == FORBIDDEN and "only on site" in forbidden.value.message
    assert sim.decision()["estop"]

    done = ops.clear_fault(local, {"fault": "emergency_stop"})
    assert done.ok and done.result == "cleared"
    d = sim.decision()
    assert not d["estop"] and "emergency_stop" not in d["faults"] and d["latched"] == []
    st = sim.cabinet.status()
    assert st["estop"] == "ok" and st["inputs"]["estop"] == {"function": "estop", "active": False}


def test_door_knob_stops_the_sessions_while_open_not_latched_and_an_unknown_function_is_refused(sim):
    sim.run_until(
        lambda: all(c.output_a > 20.0 for c in sim.physics.connectors.values()), timeout_s=60.0, what="both charging"
    )
    assert sim_control.apply(sim, {"knob": "input", "function": "door", "value": True}) == {"ok": True}
    sim.deliver()
    d = sim.decision()
    assert "door_open" in d["faults"] and d["latched"] == [] and not d["estop"]
    assert _energised(sim) == []
    assert sim.cabinet.status()["inputs"]["door"]["active"]
    sim_control.apply(sim, {"knob": "input", "function": "door", "value": False})
    sim.run(0.5)
    assert "door_open" not in sim.decision()["faults"]
    answer = sim_control.apply(sim, {"knob": "input", "function": "tilt", "value": True})
    assert not answer["ok"] and "no [[input]] with function 'tilt'" in answer["error"]


def test_door_open_with_door_action_derate_holds_each_connector_at_door_derate_a_without_stopping(tmp_path: Path):
    """The other choice of docs/SAFETY.md: ``door_action = "derate"``: the sessions go on at most
    ``door_derate_a`` each while the door is open, contactors closed, nothing latched; back to full on closing."""
    door = 'function = "door"\ndebounce_ms = 0\n'
    text = SIM_TOML.read_text().replace(door, door + 'door_action = "derate"\ndoor_derate_a = 30.0\n')
    assert 'door_action = "derate"' in text
    sim = SimStepper(parse_config(text), tmp_path / "data", step_s=0.01)
    try:
        cab = sim.cabinet
        sim.every(
            "sim sessions",
            0.05,
            lambda now: sim.drive_charging(
                cab.controller.demands, now, {n: r.capabilities for n, r in cab.controller.reports().items()}
            ),
        )
        sim.run_until(lambda: all(c["limit_a"] > 50.0 for c in sim.decision()["connectors"].values()), 60.0, "both")
        sim.set_input("door", True)
        sim.deliver()
        d = sim.decision()
        assert "door_open" in d["faults"] and d["latched"] == [] and not d["estop"]
        assert "derated to 30 A" in d["fault_details"]["door_open"]
        for c in d["connectors"].values():
            assert c["limit_a"] <= 30.0 and c["enable"] and c["contactor"]  # still in session, not stopped
        sim.run(2.0)
        for name, c in sim.decision()["connectors"].items():
            assert c["contactor"] and 0.0 < sim.physics.connectors[name].output_a <= 31.0, name
        sim.set_input("door", False)
        sim.run_until(lambda: all(c["limit_a"] > 50.0 for c in sim.decision()["connectors"].values()), 10.0, "back")
        assert "door_open" not in sim.decision()["faults"]
    finally:
        sim.close()
