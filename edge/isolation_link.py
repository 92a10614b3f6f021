"""The cabinet's insulation monitors: one driver per ``[[isolation_monitor]]`` on the meters' Modbus lines,
the latest reading per connector for the safety core's snapshot, and the core's commands back to the IMD.

The core decides (edge/limits/isolation.py); this only moves data: :meth:`IsolationLink.snapshot` gives the
connector's ``"imd"`` entry, :meth:`IsolationLink.command` takes the connector's decision ``imd`` view
(``measure``: switch measuring on for a session; ``self_test``: start one, on its rising edge).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.isolation.imd import ImdDriver, ImdLine, ImdReading
from drivers.meters.reader import MeterCommError
from edge.config import Config
from edge.config.isolation import IsolationMonitor

EventSink = Callable[[str, str, dict[str, Any]], None]


@dataclass
class _Monitor:
    config: IsolationMonitor
    driver: ImdDriver
    reading: ImdReading | None = None
    measuring: bool | None = None  # as last written to the device; None: not yet
    want_measure: dict[str, bool] = field(default_factory=dict)  # connector -> its session wants it
    want_test: dict[str, bool] = field(default_factory=dict)  # connector -> asked last evaluation
    test_pending: bool = False
    ok: bool = False
    errors: int = 0
    last_error: str | None = None


class IsolationLink:
    def __init__(
        self,
        config: Config,
        lines: Mapping[str, ImdLine],
        on_event: EventSink,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_event = on_event
        self.clock = clock
        self.monitors: list[_Monitor] = []
        self.by_connector: dict[str, _Monitor] = {}
        self.stale_s = config.isolation.stale_ms / 1000.0
        # connectors whose IMD is served to EVerest (isolation_monitor API): EVerest gives the cable-check verdict
        self.everest_served = {n for m in config.isolation_monitor if m.everest_module_id for n in m.connectors}
        for m in config.isolation_monitor:
            driver = ImdDriver(lines[m.line], m.device_id, m.timeout_ms / 1000.0, clock=clock)
            mon = _Monitor(m, driver)
            self.monitors.append(mon)
            for name in m.connectors:
                self.by_connector[name] = mon

    # -- the controller's side ------------------------------------------------------------------------
    def snapshot(self, connector: str, now: float) -> dict[str, Any] | None:
        """The connector's ``"imd"`` snapshot entry; None when no IMD watches it."""
        mon = self.by_connector.get(connector)
        if mon is None:
            return None
        r = mon.reading
        served = {"everest": True} if connector in self.everest_served else {}
        if r is None:
            return {
                "ohm": None,
                "t": None,
                "status": "stale",
                "self_test": mon.driver.self_test,
                "voltage_v": None,
                **served,
            }
        status = r.status if mon.ok else "stale"
        return {
            "ohm": r.resistance_ohm,
            "t": r.t,
            "status": status,
            "self_test": mon.driver.self_test,
            "voltage_v": r.voltage_v,
            **served,
        }

    def command(self, connector: str, view: dict[str, Any] | None) -> None:
        """The core's wishes for the connector's IMD (its decision's ``imd``), applied by the poll loop."""
        mon = self.by_connector.get(connector)
        if mon is None or view is None:
            return
        mon.want_measure[connector] = bool(view.get("measure"))
        asked = bool(view.get("self_test"))
        if asked and not mon.want_test.get(connector):
            mon.test_pending = True
            mon.driver.self_test = None  # the last session's result is not this one's
        mon.want_test[connector] = asked

    # -- EVerest's side (isolation_monitor API, edge/charging/everest_monitors.py) -----------------------
    def everest_measure(self, connector: str, on: bool) -> None:
        """EVerest's start / stop: measuring on while either EVerest or the core's session wants it."""
        mon = self.by_connector.get(connector)
        if mon is not None:
            mon.want_measure["everest:" + connector] = on

    def everest_self_test(self, connector: str) -> None:
        """EVerest's start_self_test: one self-test now (its result in the snapshot's ``self_test``)."""
        mon = self.by_connector.get(connector)
        if mon is not None:
            mon.test_pending = True
            mon.driver.self_test = None

    @property
    def status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for mon in self.monitors:
            r = mon.reading
            out[mon.config.name] = {
                "ok": mon.ok,
                "errors": mon.errors,
                "last_error": mon.last_error,
                "ohm": r.resistance_ohm if r else None,
                "status": r.status if r else None,
                "self_test": mon.driver.self_test,
            }
        return out

    # -- the device's side ----------------------------------------------------------------------------
    async def poll_once(self, mon: _Monitor) -> None:
        """One turn: a pending self-test, the measuring switch, one reading. Never raises a line error."""
        try:
            want = any(mon.want_measure.values()) or mon.test_pending
            if want != mon.measuring and (want or mon.measuring is not None):
                await mon.driver.set_measuring(want)
                mon.measuring = want
            if mon.test_pending:
                mon.test_pending = False
                await mon.driver.start_self_test()
            mon.reading = await mon.driver.read()
            if not mon.ok:
                self.on_event("isolation_monitor_ok", mon.config.name, {})
            mon.ok = True
        except MeterCommError as exc:
            mon.errors += 1
            mon.last_error = str(exc)
            if mon.ok:
                self.on_event("isolation_monitor_lost", mon.config.name, {"error": str(exc)})
            mon.ok = False

    async def run(self, mon: _Monitor) -> None:
        period_s = mon.config.poll_ms / 1000.0
        while True:
            await self.poll_once(mon)
            await asyncio.sleep(period_s)

    def tasks(self) -> dict[str, Any]:
        return {f"imd-{m.config.name}": self.run(m) for m in self.monitors}
