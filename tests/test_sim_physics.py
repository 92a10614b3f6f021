"""The simulator's physics per connector (edge/sim/physics.py) and the simulated hardware around it
(edge/sim/hardware.py: contactor pins, cable monitors per connector, knobs, the built-in controller)."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterator
from pathlib import Path

import can
import pytest

import edge.sim as sim_pkg
from drivers.cable.monitor import CableMonitor
from edge.charging.demand import Capabilities
from edge.config import Config, parse_config
from edge.sim import control
from edge.sim import physics as ph
from edge.sim.hardware import SimHardware
from edge.sim.layout import SimConnectorSpec, connector_layout
from edge.sim.physics import ConnectorPhysics, ModuleModel, Physics
from edge.sim.session import CABLE_CHECK
from edge.sim.vehicle import CAR_400V, CAR_800V, Vehicle
from tests.conftest import sim_config_text

DT_S = 0.01


def two_connectors(plugged: bool = True) -> Physics:
    p = Physics.with_connectors(
        (1, 2, 3, 4),
        [
            ConnectorPhysics("1", (1, 2), vehicle=Vehicle(CAR_400V, 0.3, plugged)),
            ConnectorPhysics("2", (3, 4), vehicle=Vehicle(CAR_800V, 0.2, plugged)),
        ],
    )
    p.pump_on = True
    return p


def supply(p: Physics, name: str, volts: float, amps: float, on: bool = True) -> None:
    conn = p.connectors[name]
    for a in conn.modules:
        m = p.modules[a]
        m.on, m.set_v, m.set_a = on, volts, amps / len(conn.modules)


def close_vehicle(p: Physics, name: str) -> Vehicle:
    conn = p.connectors[name]
    v = conn.vehicle
    assert v is not None
    v.precharging = True
    assert v.try_close(v.ocv_v)
    conn.contactor = True
    return v


def test_the_output_voltage_ramps_at_the_slew_rate_without_a_load_and_discharges_when_off():
    p = two_connectors(plugged=False)
    conn = p.connectors["1"]
    conn.contactor = True
    supply(p, "1", 500.0, 2.0)
    trace = []
    for _ in range(150):
        p.step(DT_S)
        trace.append(conn.output_v)
    steps = [b - a for a, b in zip([0.0, *trace], trace, strict=False)]
    assert max(steps) <= ph.SLEW_V_PER_S * DT_S + 1e-9
    assert trace[48] == pytest.approx(245.0)  # 0.49 s at 500 V/s
    assert trace[98] < 500.0 and trace[99] == pytest.approx(500.0)  # there after 1 s, not before
    assert trace[-1] == 500.0 and conn.output_a == 0.0
    assert all(p.modules[a].out_v == 500.0 for a in (1, 2))  # each module measures the output
    supply(p, "1", 500.0, 2.0, on=False)
    for _ in range(50):
        p.step(DT_S)
    assert conn.output_v == pytest.approx(250.0)
    for _ in range(60):
        p.step(DT_S)
    assert conn.output_v == 0.0


def test_current_flows_only_with_the_connector_and_the_vehicle_contactors_closed():
    p = two_connectors()
    conn = p.connectors["1"]
    v = conn.vehicle
    assert v is not None
    supply(p, "1", 408.0, 100.0)
    conn.contactor = True
    p.step(DT_S)
    assert conn.output_a == 0.0  # the vehicle's contactors are open
    close_vehicle(p, "1")
    conn.contactor = False
    p.step(DT_S)
    assert conn.output_a == 0.0 and p.output_a == 0.0  # the connector's contactor is open
    assert not v.contactors_closed  # ... under the vehicle: it opened too
    close_vehicle(p, "1")
    p.step(DT_S)
    assert conn.output_a == pytest.approx(100.0)
    v.unplug()
    p.step(DT_S)
    assert conn.output_a == 0.0


def test_with_both_closed_the_output_is_the_battery_and_the_current_the_least_of_three_limits():
    p = two_connectors()
    conn = p.connectors["2"]
    v = close_vehicle(p, "2")
    ocv = v.ocv_v
    supply(p, "2", CAR_800V.charge_voltage_v, 200.0)  # the modules' current limit
    p.step(DT_S)
    assert conn.output_a == pytest.approx(200.0)
    assert conn.output_v == pytest.approx(ocv + 200.0 * CAR_800V.resistance_ohm, rel=1e-6)
    assert p.modules[3].out_a == pytest.approx(100.0) and p.modules[4].out_a == pytest.approx(100.0)
    supply(p, "2", CAR_800V.charge_voltage_v, 1000.0)  # the vehicle's acceptance
    p.step(DT_S)
    assert conn.output_a == pytest.approx(v.acceptance_a(), rel=1e-3) and conn.output_a <= 300.0
    supply(p, "2", v.ocv_v + 2.7, 1000.0)  # constant voltage: (V - OCV) / R
    p.step(DT_S)
    assert conn.output_a == pytest.approx(100.0, rel=1e-3)
    assert conn.output_v == pytest.approx(v.ocv_v + 2.7, abs=0.01)
    supply(p, "2", v.ocv_v - 30.0, 1000.0)  # below the battery: nothing flows back
    p.step(DT_S)
    assert conn.output_a == 0.0 and conn.output_v == pytest.approx(v.ocv_v)


def test_the_vehicle_closes_during_precharge_only_with_the_connector_contactor_closed():
    p = two_connectors()
    conn = p.connectors["2"]
    v = conn.vehicle
    assert v is not None
    v.precharging = True
    supply(p, "2", v.ocv_v, 2.0)
    for _ in range(300):  # the modules are at the battery voltage, but behind an open contactor
        p.step(DT_S)
    assert conn.output_v == pytest.approx(v.ocv_v) and not v.contactors_closed
    conn.contactor = True
    p.step(DT_S)
    assert v.contactors_closed


def test_two_connectors_are_independent_and_the_grid_draws_for_both():
    p = two_connectors()
    v1 = close_vehicle(p, "1")
    supply(p, "1", CAR_400V.charge_voltage_v, 200.0)
    p.connectors["2"].contactor = True
    supply(p, "2", 900.0, 2.0)  # connector 2 in its cable check: no vehicle contactors, no current
    soc2 = p.connectors["2"].vehicle.soc  # type: ignore[union-attr]
    for _ in range(int(30 / DT_S)):
        p.step(DT_S)
    c1, c2 = p.connectors["1"], p.connectors["2"]
    assert c1.output_a == pytest.approx(200.0) and c2.output_a == 0.0
    assert c2.output_v == pytest.approx(900.0)
    assert p.modules[3].out_a == 0.0 and p.modules[4].out_a == 0.0
    assert c1.pin_plus_c > 40.0 and c2.pin_plus_c == pytest.approx(p.coolant_in_c, abs=0.01)
    assert v1.soc > 0.3 and p.connectors["2"].vehicle.soc == soc2  # type: ignore[union-attr]
    base = [p.grid_a[i] - c1.power_w / ph.CHARGER_EFFICIENCY / (3 * 230.0) for i in range(3)]
    assert all(0.6 * p.grid_base_a <= b <= 1.4 * p.grid_base_a for b in base)
    # both charging: the grid carries the sum of the two outputs' power
    close_vehicle(p, "2")
    supply(p, "2", CAR_800V.charge_voltage_v, 300.0)
    p.step(DT_S)
    charger_ac = (c1.power_w + c2.power_w) / ph.CHARGER_EFFICIENCY / (3 * 230.0)
    base_now = p.grid_base_a * (1.0 + 0.3 * math.sin(p.t / 30.0))
    assert p.grid_a[0] == pytest.approx(base_now + charger_ac)
    assert p.output_a == pytest.approx(500.0) and p.output_w == pytest.approx(c1.power_w + c2.power_w)


def test_a_hot_pin_heats_only_its_own_connector():
    p = two_connectors()
    p.connectors["2"].hot_pin_c = 40.0
    for _ in range(int(40 / DT_S)):  # five time constants
        p.step(DT_S)
    assert p.connectors["2"].pin_plus_c == pytest.approx(p.coolant_in_c + 40.0, abs=0.5)
    assert p.connectors["2"].pin_minus_c == pytest.approx(p.coolant_in_c, abs=0.01)
    assert p.connectors["1"].pin_plus_c == pytest.approx(p.coolant_in_c, abs=0.01)


def test_the_single_output_attributes_are_those_of_the_first_connector_with_its_fixed_load():
    p = Physics(modules={a: ModuleModel(a) for a in (1, 2)})
    assert list(p.connectors) == ["1"] and p.primary.vehicle is None
    p.contactor = True
    p.vehicle_demand_a = 70.0
    for a in (1, 2):
        p.modules[a].on, p.modules[a].set_v, p.modules[a].set_a = True, 400.0, 50.0
    p.step(0.1)
    assert p.primary.contactor and p.output_a == pytest.approx(70.0)
    assert p.modules[1].out_v == p.battery_v == 380.0
    p.pin_plus_c = 50.0
    assert p.primary.pin_plus_c == 50.0
    assert p.flow_lpm == p.primary.flow_lpm and p.coolant_out_c == p.primary.coolant_out_c


# -- the simulated hardware with two connectors ------------------------------------------------------
LAYOUT = [
    SimConnectorSpec("1", ("cable",), "contactor", (1, 2), request="sim"),
    SimConnectorSpec("2", ("gun2",), "contactor2", (3, 4), request="sim"),
]
GUN2 = '\n[[cable]]\nname = "gun2"\nbus = "can0"\nnode_id = 2\n'


@pytest.fixture
def hardware(tmp_path) -> Iterator[SimHardware]:
    hw = SimHardware(parse_config(sim_config_text(tmp_path, GUN2)), layout=LAYOUT)
    yield hw
    hw.close_devices()


def cable_readings(hw: SimHardware) -> dict[str, float]:
    """One tick of the cable monitors, decoded as the cabinet decodes them."""
    listener = can.Bus(interface="virtual", channel=hw.can_channels["can0"], receive_own_messages=False)
    monitors = [CableMonitor("cable", 1), CableMonitor("gun2", 2)]
    try:
        hw.can.tick()
        out: dict[str, float] = {}
        while (msg := listener.recv(timeout=0)) is not None:
            for mon in monitors:
                if msg.arbitration_id in mon.frame_ids:
                    out.update({r.signal: r.value for r in mon.decode(msg.arbitration_id, bytes(msg.data), 0.0)})
        return out
    finally:
        listener.shutdown()


def test_the_old_config_gives_one_connector_with_every_cable_and_module_and_a_fixed_load(tmp_path):
    cfg = parse_config(sim_config_text(tmp_path, GUN2))
    (only,) = connector_layout(cfg)
    assert only == SimConnectorSpec(
        "1", ("cable", "gun2"), "contactor", (1, 2, 3, 4), "fixed", 200.0, 1000.0, 150.0, 200.0
    )
    hw = SimHardware(cfg)
    try:
        assert hw.physics.primary.vehicle is None and hw.charging.sessions == {}
    finally:
        hw.close_devices()


def test_each_connector_follows_its_own_contactor_pin(hardware):
    hardware.board.pin("contactor2", 1)
    hardware.step_physics(DT_S)
    assert not hardware.physics.connectors["2"].contactor  # a real contactor takes its closing time
    for _ in range(3):
        hardware.step_physics(DT_S)
    assert not hardware.physics.connectors["1"].contactor and hardware.physics.connectors["2"].contactor
    assert not hardware.physics.contactor


def test_each_cable_monitor_reports_its_own_connector(hardware):
    hardware.set_hot_pin(30.0, "2")
    for _ in range(int(40 / 0.1)):
        hardware.step_physics(0.1)
    seen = cable_readings(hardware)
    assert seen["gun2.pin_dc_plus_c"] == pytest.approx(25.0 + 30.0, abs=0.5)
    assert seen["cable.pin_dc_plus_c"] == pytest.approx(25.0, abs=0.5)
    hardware.set_cable_silent(True, "gun2")
    seen = cable_readings(hardware)
    assert "cable.pin_dc_plus_c" in seen and not any(k.startswith("gun2.") for k in seen)
    hardware.set_cable_silent(False, "gun2")
    hardware.set_cable_silent(True)  # the old knob: the first cable
    seen = cable_readings(hardware)
    assert "gun2.pin_dc_plus_c" in seen and not any(k.startswith("cable.") for k in seen)


def test_the_vehicle_knobs_act_per_connector(hardware):
    assert control.apply(hardware, {"knob": "plug", "connector": "2", "value": False}) == {"ok": True}  # type: ignore[arg-type]
    assert not hardware.vehicle("2").plugged and hardware.vehicle("1").plugged
    answer = control.apply(hardware, {"knob": "plug", "connector": "2", "car": "400v", "soc": 0.5})  # type: ignore[arg-type]
    assert answer == {"ok": True}
    assert hardware.vehicle("2").plugged and hardware.vehicle("2").spec is CAR_400V and hardware.vehicle("2").soc == 0.5
    control.apply(hardware, {"knob": "soc", "value": 0.79})  # type: ignore[arg-type]
    assert hardware.vehicle("1").soc == 0.79
    control.apply(hardware, {"knob": "hot_pin_c", "connector": "2", "value": 12.5})  # type: ignore[arg-type]
    assert hardware.physics.connectors["2"].hot_pin_c == 12.5
    bad = control.apply(hardware, {"knob": "plug", "connector": "3", "value": True})  # type: ignore[arg-type]
    assert not bad["ok"] and "no connector '3'" in bad["error"] and "['1', '2']" in bad["error"]
    bad = control.apply(hardware, {"knob": "soc", "connector": "1", "value": 1.5})  # type: ignore[arg-type]
    assert not bad["ok"] and "outside 0..1" in bad["error"]
    bad = control.apply(hardware, {"knob": "plug", "car": "tractor"})  # type: ignore[arg-type]
    assert not bad["ok"] and "unknown car" in bad["error"]
    view = control.apply(hardware, {"get": "physics"})["physics"]  # type: ignore[arg-type]
    assert view["connectors"]["2"]["vehicle"]["car"] == "400v" and view["connectors"]["2"]["hot_pin_c"] == 12.5
    assert view["sessions"] == {
        "1": {"state": "idle", "reason": "", "precharge_s": None},
        "2": {"state": "idle", "reason": "", "precharge_s": None},
    }


def test_the_vehicle_knobs_refuse_a_connector_with_a_fixed_load(tmp_path):
    hw = SimHardware(parse_config(sim_config_text(tmp_path)))
    try:
        bad = control.apply(hw, {"knob": "plug", "value": False})  # type: ignore[arg-type]
        assert not bad["ok"] and "fixed load" in bad["error"]
    finally:
        hw.close_devices()


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def set_mode(self, connector: str, mode: str, phase: str, now: float) -> None:
        self.calls.append(("set_mode", connector, mode, phase, now))

    def set_target(
        self, connector: str, voltage_v: float, current_a: float, now: float, power_w: float | None = None
    ) -> None:
        self.calls.append(("set_target", connector, voltage_v, current_a, now))

    def heartbeat(self, source: str, now: float) -> None:
        self.calls.append(("heartbeat", source, now))


def test_the_built_in_controller_starts_a_session_on_every_sim_connector(hardware):
    caps = Capabilities(1000.0, 150.0, 200.0, 0.0, 150_000.0)
    sink = Sink()
    hardware.drive_charging(sink, 5.0, {"1": caps, "2": None})  # connector 2 has not reported yet
    assert sink.calls == [
        ("heartbeat", "sim", 5.0),
        ("set_target", "1", 470.0, 2.0, 5.0),
        ("set_mode", "1", "Export", "CableCheck", 5.0),
    ]
    requests = hardware.step_charging(5.1, {"1": caps, "2": caps}, measured={"1": (120.0, 0.0)})
    assert [r[0] for r in requests] == ["set_target", "set_mode"] and requests[0][1] == "2"
    assert requests[0][2] == pytest.approx((919.6, 2.0)) and requests[1][2] == ("Export", "CableCheck")
    assert hardware.charging.states() == {"1": CABLE_CHECK, "2": CABLE_CHECK}


def test_the_two_connector_sim_config_gives_each_connector_its_cable_modules_and_contactor():
    text = (Path(sim_pkg.__file__).parent / "sim.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    connectors = data["connector"]
    assert [c["name"] for c in connectors] == ["1", "2"]
    assert all(c["request"] == "sim" for c in connectors)
    cables = [name for c in connectors for name in c["cables"]]
    assert sorted(cables) == sorted(c["name"] for c in data["cable"])  # every cable in exactly one connector
    assert len({c["node_id"] for c in data["cable"]}) == len(data["cable"])
    modules = [a for c in connectors for a in c["modules"]]
    assert sorted(modules) == data["power_modules"]["addresses"] and all(len(c["modules"]) == 2 for c in connectors)
    pins = [c["contactor"] for c in connectors] + [data["outputs"]["pump"], data["outputs"]["fan"]]
    assert len(set(pins)) == len(pins)
    if not hasattr(Config, "resolved_connectors"):
        return  # the config schema on this branch has no [[connector]] yet
    layout = connector_layout(parse_config(text))
    assert [(c.name, c.cables, c.contactor_pin, c.modules, c.request) for c in layout] == [
        ("1", ("gun1",), "contactor1", (1, 2), "sim"),
        ("2", ("gun2",), "contactor2", (3, 4), "sim"),
    ]


def test_an_autonomous_vehicle_closes_at_precharge_and_opens_with_the_connector_contactor():
    p = two_connectors()
    conn = p.connectors["2"]
    v = conn.vehicle
    assert v is not None
    v.autonomous = True
    conn.contactor = True
    supply(p, "2", 920.0, 2.0)  # cable check: the output passes the battery voltage on its way up
    for _ in range(250):
        p.step(DT_S)
    assert conn.output_v == pytest.approx(920.0) and not v.contactors_closed
    supply(p, "2", 0.0, 0.0, on=False)  # ... and on its way down
    for _ in range(200):
        p.step(DT_S)
    assert not v.contactors_closed
    supply(p, "2", v.ocv_v, 2.0)  # pre-charge
    t = 0.0
    while not v.contactors_closed:
        assert t < 5.0
        p.step(DT_S)
        t += DT_S
    assert abs(conn.output_v - v.ocv_v) <= 20.0
    assert 1.5 + 0.5 - 0.1 <= t <= 1.5 + 0.5 + 2 * DT_S  # 752 V at 500 V/s, then settled for 0.5 s
    supply(p, "2", CAR_800V.charge_voltage_v, 100.0)
    p.step(DT_S)
    assert conn.output_a == pytest.approx(100.0)
    conn.contactor = False
    p.step(DT_S)
    assert conn.output_a == 0.0 and not v.contactors_closed


def test_a_connector_an_external_controller_drives_gets_an_autonomous_vehicle_and_no_session(tmp_path):
    layout = [LAYOUT[0], dataclasses.replace(LAYOUT[1], request="everest")]
    hw = SimHardware(parse_config(sim_config_text(tmp_path, GUN2)), layout=layout)
    try:
        assert list(hw.charging.sessions) == ["1"]
        assert not hw.vehicle("1").autonomous and hw.vehicle("2").autonomous
        assert hw.vehicle("2").spec is CAR_800V and hw.vehicle("2").plugged
        view = hw.snapshot()["connectors"]["2"]["vehicle"]
        assert view["autonomous"] and view["max_voltage_v"] == 836.0 and view["ocv_v"] == pytest.approx(752.0)
    finally:
        hw.close_devices()
