"""The simulator's charging controller (edge/sim/session.py) in simulated time, against a perfect supply.

The supply is the simulator's own physics (edge/sim/physics.py: output slew, the vehicle's contactors,
the battery) with modules that do exactly what they are asked: Export switches them on at the requested
voltage and current with the contactor closed, Off switches them off and opens the contactor once the
current is below 1 A. No cabinet, no safety core: this is the controller's side of the interface alone.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

import pytest

from edge.charging.demand import Capabilities
from edge.sim import session as s
from edge.sim.physics import ConnectorPhysics, Physics
from edge.sim.session import SimSessions, cable_check_voltage
from edge.sim.vehicle import Vehicle

DT_S = 0.01
CAPS = Capabilities(
    max_export_voltage_v=1000.0,
    min_export_voltage_v=150.0,
    max_export_current_a=400.0,
    min_export_current_a=0.0,
    max_export_power_w=400_000.0,
)


@dataclass
class Supply:
    """A DemandSink that is a perfect DC supply: the physics' modules follow every request at once."""

    physics: Physics
    log: list[tuple[float, str, str, tuple]] = field(default_factory=list)
    modes: dict[str, tuple[str, str]] = field(default_factory=dict)
    heartbeats: list[float] = field(default_factory=list)

    def set_mode(self, connector: str, mode: str, phase: str, now: float) -> None:
        self.log.append((now, "set_mode", connector, (mode, phase)))
        self.modes[connector] = (mode, phase)
        conn = self.physics.connectors[connector]
        for a in conn.modules:
            self.physics.modules[a].on = mode == "Export"
        if mode == "Export":
            conn.contactor = True

    def set_target(
        self, connector: str, voltage_v: float, current_a: float, now: float, power_w: float | None = None
    ) -> None:
        self.log.append((now, "set_target", connector, (voltage_v, current_a)))
        conn = self.physics.connectors[connector]
        for a in conn.modules:
            self.physics.modules[a].set_v = voltage_v
            self.physics.modules[a].set_a = current_a / len(conn.modules)

    def heartbeat(self, source: str, now: float) -> None:
        self.heartbeats.append(now)

    def after_step(self) -> None:
        for name, conn in self.physics.connectors.items():
            if self.modes.get(name, ("Off", ""))[0] != "Export" and conn.output_a < 1.0:
                conn.contactor = False

    def requests(self, connector: str, kind: str) -> list[tuple[float, tuple]]:
        return [(t, args) for t, k, c, args in self.log if k == kind and c == connector]


@dataclass
class Bench:
    physics: Physics
    vehicles: dict[str, Vehicle]
    sessions: SimSessions
    supply: Supply
    caps: dict[str, Capabilities | None]
    now: float = 0.0

    def step(self) -> None:
        measured = {n: (c.output_v, c.output_a) for n, c in self.physics.connectors.items()}
        self.sessions.drive(self.supply, self.now, measured, self.caps)
        self.physics.step(DT_S)
        self.supply.after_step()
        self.now += DT_S

    def run_until(self, condition, timeout_s: float, what: str = "") -> float:
        end = self.now + timeout_s
        while not condition():
            assert self.now < end, f"not within {timeout_s} s: {what} (states {self.sessions.states()})"
            self.step()
        return self.now

    def run(self, duration_s: float) -> None:
        end = self.now + duration_s
        while self.now < end - 1e-9:
            self.step()

    def state(self, connector: str = "1") -> str:
        return self.sessions.sessions[connector].state


def bench(*cars: str, caps: Capabilities | None = CAPS) -> Bench:
    vehicles = {str(i + 1): Vehicle.of_type(car, plugged=True) for i, car in enumerate(cars)}
    connectors = [
        ConnectorPhysics(name, (2 * i + 1, 2 * i + 2), vehicle=v) for i, (name, v) in enumerate(vehicles.items())
    ]
    physics = Physics.with_connectors(range(1, 2 * len(cars) + 1), connectors)
    physics.pump_on = True
    return Bench(physics, vehicles, SimSessions(vehicles), Supply(physics), {n: caps for n in vehicles})


@pytest.mark.parametrize(
    ("ev_max_v", "supply_max_v", "check_v"),
    [
        (400.0, 1000.0, 450.0),
        (450.0, 1000.0, 500.0),
        (500.0, 1000.0, 500.0),
        (836.0, 1000.0, 919.6),
        (836.0, 900.0, 900.0),
    ],
)
def test_the_cable_check_voltage_follows_iec_61851_23(ev_max_v, supply_max_v, check_v):
    assert cable_check_voltage(ev_max_v, supply_max_v) == pytest.approx(check_v)


@pytest.mark.parametrize(("car", "check_v", "amps"), [("400v", 470.0, 200.0), ("800v", 919.6, 300.0)])
def test_a_session_runs_cable_check_precharge_and_charging(car, check_v, amps):
    b = bench(car)
    v = b.vehicles["1"]
    ocv_at_plug_in = v.ocv_v
    t_charging = b.run_until(lambda: b.state() == s.CHARGING, timeout_s=30.0, what="charging")
    b.run(1.0)
    modes = [args for _t, args in b.supply.requests("1", "set_mode")]
    assert modes == [("Export", "CableCheck"), ("Off", "CableCheck"), ("Export", "PreCharge"), ("Export", "Charging")]
    targets = b.supply.requests("1", "set_target")
    mode_times = [t for t, _args in b.supply.requests("1", "set_mode")]
    # cable check at the IEC voltage and 2 A, until the output was there; then Off to below 60 V
    check = [args for t, args in targets if t < mode_times[1]]
    assert check and all(args == pytest.approx((check_v, 2.0)) for args in check)
    assert b.sessions.sessions["1"].check_v == pytest.approx(check_v)
    # pre-charge at the battery voltage, 2 A; the vehicle closed within 20 V, well inside 5 s
    pre = [args for t, args in targets if mode_times[2] <= t < mode_times[3]]
    assert pre and all(args == pytest.approx((ocv_at_plug_in, 2.0)) for args in pre)
    assert b.sessions.sessions["1"].precharge_s is not None and b.sessions.sessions["1"].precharge_s < 5.0
    assert v.contactors_closed
    # charging: the vehicle's CC current at its CV voltage, one CurrentDemand every 250 ms
    demand = [(t, args) for t, args in targets if t >= t_charging]
    assert all(args[0] == v.spec.charge_voltage_v for _t, args in demand)
    assert demand[-1][1][1] == pytest.approx(amps)
    gaps = [b_ - a_ for (a_, _), (b_, _) in itertools.pairwise(demand)]
    assert gaps and all(g == pytest.approx(0.25, abs=1e-6) for g in gaps)
    conn = b.physics.connectors["1"]
    assert conn.output_a == pytest.approx(amps)
    assert conn.output_v == pytest.approx(v.ocv_v + amps * v.spec.resistance_ohm)
    states = [state for _t, state in b.sessions.sessions["1"].history]
    assert states == [s.CABLE_CHECK, s.DISCHARGE, s.PRECHARGE, s.CHARGING]


def test_the_800v_car_precharges_to_752_v_after_a_920_v_cable_check_below_60_v_between():
    b = bench("800v")
    seen_v: list[tuple[float, float]] = []
    while b.state() != s.CHARGING:
        assert b.now < 30.0
        b.step()
        seen_v.append((b.now, b.physics.connectors["1"].output_v))
    (t_off, _), (t_pre, pre) = b.supply.requests("1", "set_mode")[1:3]
    assert pre == ("Export", "PreCharge")
    assert max(v for _t, v in seen_v) <= 920.0 + 1e-6
    # Off only once the output had been within 10 V of the check voltage for the isolation measurement (1 s)
    t_within = next(t for t, v in seen_v if abs(v - 919.6) <= 10.0)
    assert t_off - t_within == pytest.approx(1.0, abs=DT_S + 1e-9)
    assert min(v for t, v in seen_v if t_off < t <= t_pre) < 60.0  # back below 60 V before pre-charge
    pre = [args for t, args in b.supply.requests("1", "set_target") if t_pre <= t < b.now - DT_S]
    assert pre and all(args == pytest.approx((752.0, 2.0)) for args in pre)


def test_nothing_starts_before_the_connector_reported_capabilities():
    b = bench("400v", caps=None)
    for _ in range(300):
        b.step()
    assert b.supply.log == [] and b.state() == s.IDLE
    assert b.supply.heartbeats == pytest.approx([0.0, 1.0, 2.0], abs=DT_S)
    b.caps["1"] = CAPS
    b.step()
    assert b.state() == s.CABLE_CHECK


def test_the_requested_current_follows_lower_capabilities_within_one_demand_period():
    b = bench("800v")
    b.run_until(lambda: b.physics.connectors["1"].output_a > 299.0, timeout_s=30.0, what="300 A")
    b.caps["1"] = dataclasses.replace(CAPS, max_export_current_a=120.0)  # a hot pin: the cabinet derates
    t_derate = b.now
    b.run_until(lambda: b.physics.connectors["1"].output_a <= 120.0 + 1e-9, timeout_s=1.0, what="120 A")
    assert b.now - t_derate <= 0.25 + 2 * DT_S
    b.caps["1"] = dataclasses.replace(CAPS, max_export_power_w=60_000.0)
    b.run_until(lambda: b.physics.connectors["1"].output_a < 90.0, timeout_s=1.0, what="60 kW")
    conn = b.physics.connectors["1"]
    assert conn.output_v * conn.output_a <= 60_000.0 + 1e-6


def test_the_session_ends_at_the_target_soc_current_first_then_off():
    b = bench("400v")
    v = b.vehicles["1"]
    b.run_until(lambda: b.state() == s.CHARGING, timeout_s=30.0)
    v.soc = v.spec.target_soc - 0.0005  # a few seconds from the end
    t_end = b.run_until(lambda: b.state() == s.ENDED, timeout_s=60.0, what="ended")
    t_zero = next(t for t, a in b.supply.requests("1", "set_target") if a[1] == 0.0)
    t_off, off = b.supply.requests("1", "set_mode")[-1]
    assert off == ("Off", "Other") and t_off == pytest.approx(t_end - DT_S, abs=1e-9)
    assert t_zero < t_off
    # the mode went Off only once the current was below 1 A, and the vehicle opened after
    assert b.physics.connectors["1"].output_a < 1.0 and not v.contactors_closed
    for _ in range(200):
        b.step()
    assert b.state() == s.ENDED and len(b.supply.requests("1", "set_mode")) == 5


def test_unplugged_mid_charge_the_current_goes_to_0_and_the_mode_off_at_once():
    b = bench("800v")
    b.run_until(lambda: b.physics.connectors["1"].output_a > 250.0, timeout_s=30.0)
    b.vehicles["1"].unplug()
    n = len(b.supply.log)
    b.step()
    last = [(k, a) for _t, k, _c, a in b.supply.log[n:]]
    assert last == [("set_target", (816.0, 0.0)), ("set_mode", ("Off", "Other"))]
    assert b.state() == s.IDLE
    b.step()
    assert b.physics.connectors["1"].output_a == 0.0
    # plugged in again: a new session from the cable check
    b.vehicles["1"].plug_in()
    b.run_until(lambda: b.state() == s.CHARGING, timeout_s=30.0)
    assert b.sessions.sessions["1"].sessions == 2


def test_precharge_gives_up_after_7_s_when_the_output_never_gets_there():
    b = bench("400v")
    b.run_until(lambda: b.state() == s.PRECHARGE, timeout_s=30.0)
    t_pre = b.now
    b.physics.modules[1].silent = b.physics.modules[2].silent = True  # the modules stop delivering
    b.run_until(lambda: b.state() == s.FAILED, timeout_s=10.0)
    assert 7.0 <= b.now - t_pre <= 7.0 + 2 * DT_S
    assert "pre-charge" in b.sessions.sessions["1"].reason
    assert b.supply.requests("1", "set_mode")[-1][1] == ("Off", "Other")
    assert not b.vehicles["1"].contactors_closed


def test_two_connectors_run_their_sessions_independently():
    b = bench("400v", "800v")
    b.vehicles["2"].unplug()
    b.run_until(lambda: b.state("1") == s.CHARGING, timeout_s=30.0)
    assert b.state("2") == s.IDLE and b.supply.requests("2", "set_mode") == []
    b.vehicles["2"].plug_in()
    b.run_until(lambda: b.state("2") == s.CHARGING, timeout_s=30.0)
    b.run_until(lambda: b.physics.connectors["2"].output_a > 299.0, timeout_s=1.0)
    assert b.physics.connectors["1"].output_a == pytest.approx(200.0)
    assert b.sessions.sessions["1"].check_v == pytest.approx(470.0)
    assert b.sessions.sessions["2"].check_v == pytest.approx(919.6)
    assert len(b.supply.requests("1", "set_mode")) == 4 and len(b.supply.requests("2", "set_mode")) == 4


def test_heartbeat_every_second_whatever_the_sessions_do():
    b = bench("400v")
    b.run(10.5)
    assert b.supply.heartbeats == pytest.approx([float(i) for i in range(11)], abs=1e-6)


def test_the_cabinet_opening_the_contactor_mid_charge_ends_the_session_until_the_next_plug_in():
    b = bench("400v")
    b.run_until(lambda: b.physics.connectors["1"].output_a > 199.0, timeout_s=30.0)
    b.physics.connectors["1"].contactor = False  # the cabinet stopped the output (a fault, a stale request)
    b.step()
    assert not b.vehicles["1"].contactors_closed
    b.run_until(lambda: b.state() == s.ENDED, timeout_s=1.0)
    assert b.supply.requests("1", "set_mode")[-1][1] == ("Off", "Other")
    b.run(5.0)
    assert b.state() == s.ENDED and b.physics.connectors["1"].output_a == 0.0
    b.vehicles["1"].unplug()
    b.step()
    b.vehicles["1"].plug_in()
    b.run_until(lambda: b.state() == s.CHARGING, timeout_s=30.0)
