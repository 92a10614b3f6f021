"""The simulator's built-in charging controller: one DC charging session per connector, as EVerest runs it.

Pure: no thread, no clock, no I/O. Stepped with the time, the vehicle on the connector, the measured
output voltage and current, and the connector's capabilities as last reported; it answers with the
requests a charging controller makes of a DC supply through EVerest's ``power_supply_DC`` interface,
which the caller hands to the cabinet's :class:`edge.charging.demand.DemandSink`:

    ("set_mode", connector, (mode, phase))
    ("set_target", connector, (voltage_v, current_a))
    ("heartbeat", source, ())                           # every heartbeat_period_s, whatever runs

A session (numbers from IEC 61851-23 / DIN 70121 as EVerest applies them; all in :class:`SessionSettings`):

1. Plug-in, once the connector has reported capabilities: Export/CableCheck at the cable-check voltage
   (EV max <= 500 V: min(EV max + 50 V, 500 V); else 1.1 x EV max; never above the supply's maximum;
   edge/limits/isolation.py) and 2 A, until the output is within 10 V of it; the isolation monitor
   measures for a moment (with ``verdict``: until the cabinet's own cable check passed; failed ends the
   session); then mode Off (phase CableCheck) until the output is below 60 V.
2. Export/PreCharge at the battery voltage and 2 A; the vehicle closes its contactors when its inlet is
   within 20 V (edge/sim/vehicle.py), which ends pre-charge.
3. Export/Charging: a CurrentDemand every 250 ms, the vehicle's CC/CV target voltage and the current it
   accepts, within the capabilities (current, and power at the present voltage).
4. The vehicle reached its target state of charge: current 0 A until the output is below 1 A, then the
   vehicle opens its contactors and the mode goes Off. Unplugged mid-session: 0 A and Off at once.

Set-points are repeated every ``demand_period_s`` in every Export phase, as the vehicle's cyclic
requests (PreChargeReq, CurrentDemandReq) make EVerest repeat them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.charging.demand import Capabilities, DemandSink
from edge.limits.isolation import cable_check_voltage
from edge.sim.vehicle import Vehicle

Request = tuple[str, str, tuple[Any, ...]]
EPS_S = 1e-9  # float time steps: 0.25 s after 25 steps of 0.01 s is due

IDLE = "idle"  # nothing plugged, or waiting for the connector's capabilities
CABLE_CHECK = "cable_check"
DISCHARGE = "discharge"  # after the cable check: Off until the output is below the safe voltage
PRECHARGE = "precharge"
CHARGING = "charging"
STOPPING = "stopping"  # target reached: 0 A until below the off current
ENDED = "ended"  # Off; waits for the unplug
FAILED = "failed"  # a step timed out; Off; waits for the unplug


@dataclass(frozen=True)
class SessionSettings:
    precheck_current_a: float = 2.0  # CableCheck and PreCharge current
    cable_check_tolerance_v: float = 10.0
    cable_check_reach_s: float = 10.0  # the check voltage must be reached within this
    isolation_measure_s: float = 1.0  # the isolation monitor measures at the check voltage
    cable_check_timeout_s: float = 38.0  # DIN 70121: the station's CableCheck limit (with a cabinet's verdict)
    safe_voltage_v: float = 60.0
    discharge_timeout_s: float = 10.0
    precharge_timeout_s: float = 7.0  # DIN 70121: the vehicle gives up pre-charge after 7 s
    demand_period_s: float = 0.25  # CurrentDemand (and set-point refresh) period
    heartbeat_period_s: float = 1.0  # EVerest's default heartbeat interval
    off_current_a: float = 1.0  # the vehicle opens its contactors below this
    stop_timeout_s: float = 5.0  # ... or after this long anyway


@dataclass
class SimSession:
    """The charging controller of one connector."""

    connector: str
    settings: SessionSettings = field(default_factory=SessionSettings)
    state: str = IDLE
    reason: str = ""  # why the last session failed
    check_v: float = 0.0
    t_state: float = 0.0  # when the state was entered
    t_reached: float | None = None  # cable check: when the output first reached the check voltage
    t_precharge: float | None = None  # pre-charge of the current session: start
    precharge_s: float | None = None  # ... and how long it took to the vehicle's contactors closing
    sessions: int = 0  # sessions started since construction
    history: list[tuple[float, str]] = field(default_factory=list)  # (time, state) on every change
    # the cabinet's own cable check of this connector ("passed", "failed", else running), None without one
    # (then the check is this controller's timer, as with EVerest's own IMD)
    verdict: Callable[[str], str | None] | None = None
    _next_demand: float = 0.0
    _target: tuple[float, float] = (0.0, 0.0)

    def step(
        self, now: float, vehicle: Vehicle | None, measured_v: float, measured_a: float, caps: Capabilities | None
    ) -> list[Request]:
        if vehicle is None or not vehicle.plugged:
            return self._unplugged(now)
        if self.state == IDLE:
            return self._start(now, vehicle, caps) if caps is not None else []
        if self.state == CABLE_CHECK:
            return self._cable_check(now, measured_v)
        if self.state == DISCHARGE:
            return self._discharge(now, vehicle, measured_v, caps)
        if self.state == PRECHARGE:
            return self._precharge(now, vehicle, measured_v, caps)
        if self.state == CHARGING:
            return self._charging(now, vehicle, measured_v, caps)
        if self.state == STOPPING:
            return self._stopping(now, vehicle, measured_a)
        return []  # ENDED, FAILED: until the unplug

    # -- phases --------------------------------------------------------------------------------------
    def _unplugged(self, now: float) -> list[Request]:
        if self.state in (IDLE, ENDED, FAILED, DISCHARGE):
            self._enter(now, IDLE)
            return []
        # the vehicle is gone mid-session: no current, supply off at once
        out = [self._set_target(self._target[0], 0.0), self._set_mode("Off", "Other")]
        self._enter(now, IDLE)
        return out

    def _start(self, now: float, vehicle: Vehicle, caps: Capabilities) -> list[Request]:
        self.sessions += 1
        self.reason = ""
        self.t_precharge = self.precharge_s = None
        self.check_v = cable_check_voltage(vehicle.spec.max_voltage_v, caps.max_export_voltage_v)
        self._enter(now, CABLE_CHECK)
        self.t_reached = None
        # EVerest sets the voltage and current first, then switches the supply on
        first = self._set_target(self.check_v, self.settings.precheck_current_a)
        return [first, self._set_mode("Export", "CableCheck")]

    def _cable_check(self, now: float, measured_v: float) -> list[Request]:
        s = self.settings
        if abs(measured_v - self.check_v) <= s.cable_check_tolerance_v and self.t_reached is None:
            self.t_reached = now
        verdict = self.verdict(self.connector) if self.verdict is not None else None
        if verdict == "failed":
            return self._fail(now, None, "cable check: the cabinet's isolation check failed")
        if verdict is not None and verdict != "passed" and now - self.t_state > s.cable_check_timeout_s:
            return self._fail(now, None, f"cable check: no result in {s.cable_check_timeout_s} s")
        measured = self.t_reached is not None and now - self.t_reached >= s.isolation_measure_s
        if verdict == "passed" or (verdict is None and measured):
            self._enter(now, DISCHARGE)
            return [self._set_mode("Off", "CableCheck")]
        if self.t_reached is None and now - self.t_state > s.cable_check_reach_s:
            return self._fail(now, None, f"cable check: {self.check_v:.0f} V not reached in {s.cable_check_reach_s} s")
        return self._refresh(now)

    def _discharge(self, now: float, vehicle: Vehicle, measured_v: float, caps: Capabilities | None) -> list[Request]:
        s = self.settings
        if measured_v < s.safe_voltage_v:
            self._enter(now, PRECHARGE)
            self.t_precharge = now
            vehicle.precharging = True
            target = _within(vehicle.ocv_v, caps)
            return [self._set_target(target, s.precheck_current_a), self._set_mode("Export", "PreCharge")]
        if now - self.t_state > s.discharge_timeout_s:
            return self._fail(now, vehicle, f"cable check: output not below {s.safe_voltage_v} V")
        return []

    def _precharge(self, now: float, vehicle: Vehicle, measured_v: float, caps: Capabilities | None) -> list[Request]:
        s = self.settings
        if vehicle.contactors_closed:
            self.precharge_s = now - (self.t_precharge if self.t_precharge is not None else now)
            self._enter(now, CHARGING)
            self._next_demand = now
            return [self._set_mode("Export", "Charging"), *self._charging(now, vehicle, measured_v, caps)]
        if now - self.t_state > s.precharge_timeout_s:
            return self._fail(now, vehicle, f"pre-charge: not within 20 V of {vehicle.ocv_v:.0f} V in time")
        if self._due(now):
            return [self._set_target(_within(vehicle.ocv_v, caps), s.precheck_current_a)]
        return []

    def _charging(self, now: float, vehicle: Vehicle, measured_v: float, caps: Capabilities | None) -> list[Request]:
        if vehicle.full or not vehicle.contactors_closed:
            self._enter(now, STOPPING)
            self._next_demand = now + self.settings.demand_period_s
            return [self._set_target(self._target[0], 0.0)]
        if not self._due(now):
            return []
        volts = _within(vehicle.spec.charge_voltage_v, caps)
        amps = vehicle.acceptance_a()
        if caps is not None:
            present_v = max(measured_v, vehicle.ocv_v, 1.0)
            amps = min(amps, caps.max_export_current_a, caps.max_export_power_w / present_v)
        return [self._set_target(volts, max(0.0, amps))]

    def _stopping(self, now: float, vehicle: Vehicle, measured_a: float) -> list[Request]:
        if measured_a < self.settings.off_current_a or now - self.t_state > self.settings.stop_timeout_s:
            vehicle.open_contactors()
            self._enter(now, ENDED)
            return [self._set_mode("Off", "Other")]
        return self._refresh(now)

    def _fail(self, now: float, vehicle: Vehicle | None, reason: str) -> list[Request]:
        if vehicle is not None:
            vehicle.open_contactors()
        self.reason = reason
        self._enter(now, FAILED)
        return [self._set_target(self._target[0], 0.0), self._set_mode("Off", "Other")]

    # -- requests ------------------------------------------------------------------------------------
    def _refresh(self, now: float) -> list[Request]:
        return [self._set_target(*self._target)] if self._due(now) else []

    def _due(self, now: float) -> bool:
        """A cyclic request is due: on the period's grid, never catching up with a burst after a gap."""
        if now < self._next_demand - EPS_S:
            return False
        self._next_demand += self.settings.demand_period_s
        if self._next_demand <= now + EPS_S:
            self._next_demand = now + self.settings.demand_period_s
        return True

    def _set_target(self, voltage_v: float, current_a: float) -> Request:
        self._target = (voltage_v, current_a)
        return ("set_target", self.connector, (voltage_v, current_a))

    def _set_mode(self, mode: str, phase: str) -> Request:
        return ("set_mode", self.connector, (mode, phase))

    def _enter(self, now: float, state: str) -> None:
        if state != self.state:
            self.history.append((now, state))
        self.state = state
        self.t_state = now
        self._next_demand = now + self.settings.demand_period_s


def _within(volts: float, caps: Capabilities | None) -> float:
    if caps is None:
        return volts
    return min(max(volts, caps.min_export_voltage_v), caps.max_export_voltage_v)


class SimSessions:
    """The built-in charging controller of every connector it is given, with one heartbeat (``source``).

    ``vehicles``: connector name -> its vehicle (the same objects the physics steps; plug-in and unplug
    change them in place). The caller applies the requests to the cabinet's DemandSink, or calls
    :meth:`drive` to step and apply in one.
    """

    def __init__(
        self, vehicles: Mapping[str, Vehicle], settings: SessionSettings | None = None, source: str = "sim"
    ) -> None:
        self.vehicles = vehicles
        self.settings = settings or SessionSettings()
        self.source = source
        self.sessions = {name: SimSession(name, self.settings) for name in vehicles}
        self._next_heartbeat: float | None = None

    def step(
        self,
        now: float,
        measured: Mapping[str, tuple[float, float]],
        capabilities: Mapping[str, Capabilities | None],
    ) -> list[Request]:
        """``measured``: connector -> (output V, output A); a connector missing there reads 0 V, 0 A."""
        out: list[Request] = []
        period = self.settings.heartbeat_period_s
        due = self._next_heartbeat if self._next_heartbeat is not None else now
        if now >= due - EPS_S:
            self._next_heartbeat = due + period if due + period > now + EPS_S else now + period
            out.append(("heartbeat", self.source, ()))
        for name, session in self.sessions.items():
            volts, amps = measured.get(name, (0.0, 0.0))
            out += session.step(now, self.vehicles.get(name), volts, amps, capabilities.get(name))
        return out

    def drive(
        self,
        sink: DemandSink,
        now: float,
        measured: Mapping[str, tuple[float, float]],
        capabilities: Mapping[str, Capabilities | None],
    ) -> list[Request]:
        requests = self.step(now, measured, capabilities)
        apply(sink, requests, now)
        return requests

    def states(self) -> dict[str, str]:
        return {name: s.state for name, s in self.sessions.items()}


def apply(sink: DemandSink, requests: list[Request], now: float) -> None:
    """Hand requests to a DemandSink, in order."""
    for kind, who, args in requests:
        if kind == "set_mode":
            sink.set_mode(who, args[0], args[1], now)
        elif kind == "set_target":
            sink.set_target(who, args[0], args[1], now)
        elif kind == "heartbeat":
            sink.heartbeat(who, now)
        else:
            raise ValueError(f"unknown request {kind!r}")
