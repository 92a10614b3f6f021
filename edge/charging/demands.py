"""The store of every connector's demand: the :class:`~edge.charging.demand.DemandSink` all request sources
hand their requests to, on the event loop's thread.

A request is a reading: each carries the time it was received, and the safety core decides from those times
whether it is still fresh (``[session] request_stale_ms``). A source with a heartbeat (EVerest) is also watched
as a whole: when its heartbeat is older than its timeout, every connector it drives is treated as having no
request (0 A, contactor open once the current is below the off current) and an event names the cause.

Each change is handed to ``on_change`` at once (the controller evaluates the safety core there), so a
CurrentDemand reaches the modules without waiting for the next tick.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from edge.charging.demand import MODES, PHASES, Demand

EventSink = Callable[[str, str, dict[str, Any]], None]
# phases in which the controller repeats its set-point (every PreChargeReq / CurrentDemand): only their own
# refresh keeps the request fresh; in the others the controller's heartbeat does
REPEATING_PHASES = ("PreCharge", "Charging")


def _no_events(kind: str, name: str, data: dict[str, Any]) -> None:
    return None


class Demands:
    def __init__(
        self,
        sources: dict[str, str],
        heartbeat_timeout_s: dict[str, float] | None = None,
        on_change: Callable[[str], None] | None = None,
        on_event: EventSink = _no_events,
    ) -> None:
        """``sources``: connector name -> the name of its request source (``everest``, ``sim``, ``fixed``);
        ``heartbeat_timeout_s``: source -> how long its heartbeat may be silent (sources without one are not
        watched)."""
        self.sources = dict(sources)
        self.heartbeat_timeout_s = dict(heartbeat_timeout_s or {})
        self.on_change = on_change
        self.on_event = on_event
        self._demand: dict[str, Demand] = {c: Demand() for c in sources}
        self._heartbeat: dict[str, float] = {}
        self._silent: set[str] = set()
        self._voltage_limits: dict[str, tuple[float, float | None]] = {}
        self.rejected = 0  # requests for a connector this store does not know, or of a bad mode/phase/value

    # -- DemandSink --------------------------------------------------------------------------------------
    def set_mode(self, connector: str, mode: str, phase: str, now: float) -> None:
        if connector not in self._demand or mode not in MODES or phase not in PHASES:
            self.rejected += 1
            return
        old = self._demand[connector]
        self._demand[connector] = replace(old, mode=mode, phase=phase, t_mode=now)
        self._changed(connector)

    def set_target(
        self, connector: str, voltage_v: float, current_a: float, now: float, power_w: float | None = None
    ) -> None:
        values = (voltage_v, current_a) + ((power_w,) if power_w is not None else ())
        if connector not in self._demand or not all(math.isfinite(v) and v >= 0.0 for v in values):
            self.rejected += 1
            return
        old = self._demand[connector]
        self._demand[connector] = replace(
            old, voltage_v=float(voltage_v), current_a=float(current_a), power_w=power_w, t_setpoint=now
        )
        self._changed(connector)

    def heartbeat(self, source: str, now: float) -> None:
        self._heartbeat[source] = now
        if source in self._silent:
            self._silent.discard(source)
            self.on_event("controller_back", source, {"connectors": self.connectors_of(source)})
            for c in self.connectors_of(source):
                self._changed(c)

    # -- what the controller reads -------------------------------------------------------------------------
    def connectors_of(self, source: str) -> list[str]:
        return [c for c, s in self.sources.items() if s == source]

    def get(self, connector: str) -> Demand:
        return self._demand[connector]

    def check(self, now: float) -> None:
        """Notice sources whose heartbeat went silent (called on every evaluation)."""
        for source, timeout_s in self.heartbeat_timeout_s.items():
            if source in self._silent:
                continue
            last = self._heartbeat.get(source)
            if last is not None and now - last > timeout_s:
                self._silent.add(source)
                self.on_event(
                    "controller_lost",
                    source,
                    {"silent_ms": round((now - last) * 1000.0), "connectors": self.connectors_of(source)},
                )

    def silent(self, source: str) -> bool:
        """True when ``source`` has a heartbeat timeout and its heartbeat is overdue (or never came)."""
        if source not in self.heartbeat_timeout_s:
            return False
        return source in self._silent or source not in self._heartbeat

    def core_request(self, connector: str) -> dict[str, Any] | None:
        """The safety core's ``request`` input of ``connector``: None when there is none, or its controller is
        silent (then the core ends the session: 0 A, contactor open below the off current)."""
        d = self._demand[connector]
        source = self.sources[connector]
        if d.t_mode is None or self.silent(source):
            return None
        t_setpoint = d.t_setpoint
        hb = self._heartbeat.get(source)
        if d.phase not in REPEATING_PHASES and hb is not None:
            # EVerest sends the cable-check set-point once and may hold it through a ~20 s isolation
            # self-test: outside pre-charge and charging its heartbeat keeps the request fresh
            t_setpoint = hb if t_setpoint is None else max(t_setpoint, hb)
        return {
            "mode": d.mode,
            "phase": d.phase,
            "voltage_v": d.voltage_v,
            "current_a": d.current_a,
            "power_w": d.power_w,
            "t_mode": d.t_mode,
            "t_setpoint": t_setpoint,
        }

    def set_voltage_limits(self, connector: str, error_v: float | None, emergency_v: float | None) -> None:
        """The charging controller's over-voltage limits for the session (EVerest's over_voltage_monitor
        set_limits while monitoring): ``error_v`` is the negotiated maximum; None lifts them."""
        if connector not in self._demand:
            self.rejected += 1
            return
        if error_v is None:
            self._voltage_limits.pop(connector, None)
        else:
            self._voltage_limits[connector] = (float(error_v), None if emergency_v is None else float(emergency_v))
        self._changed(connector)

    def voltage_limits(self, connector: str) -> dict[str, float]:
        """The connector snapshot's ``ev_max_v`` (and ``ev_emergency_v``) for edge/limits/overvoltage.py; {}
        when the controller gave none."""
        lim = self._voltage_limits.get(connector)
        if lim is None:
            return {}
        return {"ev_max_v": lim[0], **({"ev_emergency_v": lim[1]} if lim[1] is not None else {})}

    def hold(self, connector: str, voltage_v: float, current_a: float, now: float) -> None:
        """A permanent Export/Charging request, refreshed by the controller on every evaluation: the
        ``fixed`` source of an old single-output config (a bench supply, no charging controller)."""
        self._demand[connector] = Demand("Export", "Charging", voltage_v, current_a, None, now, now)

    def _changed(self, connector: str) -> None:
        if self.on_change is not None:
            self.on_change(connector)
