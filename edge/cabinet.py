"""The cabinet as one object: the parts :func:`edge.build.build` wired, the tasks that keep them running,
the fail-safe, and the one status view. No wiring and no process lifecycle here (edge/build.py and
edge/daemon.py do those)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drivers.power_modules.bank import ModuleBank
from drivers.readings import Reading
from edge import __version__
from edge.api.server import ApiServer
from edge.can_link import CanLink
from edge.charging.demand import Capabilities, DemandSink
from edge.config import Config
from edge.control import Controller, Outputs
from edge.events import EventLog
from edge.faults import ExternalFaults
from edge.isolation_link import IsolationLink
from edge.meter_link import MeterLink
from edge.ops import Operations
from edge.remote.commands import RemoteCommands
from edge.render import LiveLine
from edge.state import CabinetState
from edge.status import ConnectorView, ModuleView, OperatorLimitView, ReadingView, StatusView, estop_text
from edge.telemetry.measurands import connector_signal
from edge.telemetry.recorder import Recorder
from edge.telemetry.sampler import Sampler
from edge.telemetry.store import Store
from edge.telemetry.uplink import Uplink
from hal.clock import Clock
from hal.watchdog import WDT

if TYPE_CHECKING:  # imported by build only when a connector uses EVerest
    from edge.charging.everest import EverestAdapter
    from edge.charging.everest_monitors import EverestMonitors

log = logging.getLogger("edge.cabinet")
TICK_STATS_EVERY_S = 1.0  # tick jitter percentiles are recomputed at most this often
STATUS_LINE_EVERY_S = 1.0
SIM_CHARGING_PERIOD_S = 0.05  # the simulated charging controller's step (its CurrentDemand is every 250 ms)


@dataclass
class Cabinet:
    config: Config
    clock: Clock
    wall_ms: Callable[[], int]
    store: Store
    events: EventLog
    faults: ExternalFaults
    sampler: Sampler
    state: CabinetState
    can: CanLink
    meters: MeterLink
    outputs: Outputs
    wdt: WDT
    controller: Controller
    recorder: Recorder
    started: float
    operations: Operations | None = None  # stop, resume, limits, clears, self-test: the one way in (edge/ops.py)
    api: ApiServer | None = None
    uplink: Uplink | None = None
    everest: EverestAdapter | None = None  # the EVerest power_supply_DC adapter, when a connector uses it
    everest_monitors: EverestMonitors | None = None  # EVerest's isolation / over-voltage monitor APIs, if served
    remote: RemoteCommands | None = None  # update, config-apply, diag, ... over MQTT (edge/remote)
    sim_charging: Callable[[DemandSink, float, dict[str, Capabilities | None]], Any] | None = None
    isolation: IsolationLink | None = None  # the insulation monitors, when [[isolation_monitor]] names any

    # -- what the API, the uplink and the tests use --------------------------------------------------
    @property
    def bank(self) -> ModuleBank:
        return self.can.bank

    def __post_init__(self) -> None:
        self.recent_events: deque[str] = self.events.recent  # `edge events` reads it (edge/api)

    def event(self, kind: str, name: str, data: dict[str, Any]) -> None:
        self.events.emit(kind, name, data)

    # -- status --------------------------------------------------------------------------------------
    def view(self) -> StatusView:
        d = self.controller.decision or {}
        now = self.clock.monotonic()
        ext = self.controller.external_limit
        store = self.store.stats()
        return StatusView(
            cabinet_id=self.config.cabinet.cabinet_id,
            site_id=self.config.cabinet.site_id,
            version=__version__,
            uptime_s=now - self.started,
            limit_a=float(d.get("limit_a", 0.0)),
            target_a=float(d.get("target_a", 0.0)),
            rule=d.get("rule"),
            reason=d.get("reason"),
            enable=bool(d.get("enable", False)),
            faults=dict(d.get("fault_details", {})),
            # a module group's fault (power sharing) is held like a latch: only an on-site clear ends it
            latched=tuple(sorted({*d.get("latched", []), *self._held_by_sharing(d)})),
            outputs={
                "contactor": self.outputs.contactor.value(),
                "pump": self.outputs.pump.value(),
                "fan": self.outputs.fan.value(),
            },
            modules={
                str(a): ModuleView(
                    m.lost,
                    m.output_on,
                    m.voltage_v,
                    m.current_a,
                    m.temperature_c,
                    tuple(sorted(m.alarms)),
                    m.set_current_a,
                    max(0.0, m.next_poll_t - now) if m.lost else None,
                )
                for a, m in self.bank.modules.items()
            },
            readings={s: ReadingView(r.value, r.unit, r.quality, now - r.t) for s, r in self.state.readings.items()},
            operator_limit=None
            if ext is None
            else OperatorLimitView(
                ext.amps, ext.source, None if ext.expires_at is None else max(0.0, ext.expires_at - now)
            ),
            stopped_by=self.controller.stopped_by,
            grid_meter=self.state.inputs.grid_meter,
            cable=self.state.inputs.cable,
            backlog=int(store["backlog"]),
            meters=self.meters.live_status(),
            telemetry={**store, "uplink": self.uplink.status() if self.uplink else {"enabled": False}},
            can=self.can.status(),
            can_frames=self.can.frame_counts(),
            control=self._control_stats(),
            connectors=self.connector_views(),
            estop=estop_text(d.get("latched", ()), self.controller.input_values, self.controller.input_functions),
            inputs={
                n: {"function": f, "active": bool(self.controller.input_values.get(n))}
                for n, f in self.controller.input_functions.items()
            },
            everest=self.everest.stats() if self.everest is not None else {},
            isolation=self.isolation.status if self.isolation is not None else {},
            sharing=self.controller.sharing.status() if self.controller.sharing is not None else {},
            cables=tuple(c.name for c in self.config.cable),
            cable_status=self.can.cable_status(),
        )

    def connector_views(self) -> tuple[ConnectorView, ...]:
        """Each connector as the last evaluation decided it, with its demand and its measured output."""
        ctl = self.controller
        d = (ctl.decision or {}).get("connectors", {})
        now = self.clock.monotonic()
        reports = ctl.reports() if ctl.decision else {}
        out = []
        for c in ctl.connectors:
            cd = d.get(c.name, {})
            demand = ctl.demands.get(c.name)
            asked = [t for t in (demand.t_mode, demand.t_setpoint) if t is not None]
            rep = reports.get(c.name)
            caps = rep.capabilities if rep else None
            out.append(
                ConnectorView(
                    name=c.name,
                    phase="Stopping" if cd.get("ending") else str(cd.get("phase", "Off")),
                    mode=str(cd.get("mode", "Off")),
                    request_v=demand.voltage_v,
                    request_a=demand.current_a,
                    request_age_s=now - max(asked) if asked else None,
                    output_v=rep.voltage_v if rep else 0.0,
                    output_a=rep.current_a if rep else 0.0,
                    limit_a=float(cd.get("limit_a", 0.0)),
                    rule=cd.get("rule"),
                    reason=cd.get("reason"),
                    contactor=bool(self.outputs.contactors[c.name].value()),
                    enable=bool(cd.get("enable", False)),
                    modules=tuple(ctl.modules_of(c)),
                    capabilities={}
                    if caps is None
                    else {
                        "max_export_current_a": round(caps.max_export_current_a, 1),
                        "max_export_power_w": round(caps.max_export_power_w),
                        "max_export_voltage_v": caps.max_export_voltage_v,
                        "min_export_voltage_v": caps.min_export_voltage_v,
                    },
                    faults=tuple(cd.get("faults", ())),
                    out_of_service=bool(cd.get("out_of_service", False)),
                )
            )
        return tuple(out)

    def sample_connectors(self) -> None:
        """Each connector's telemetry signals, once per tick (``connector.<name>.*``, docs/TELEMETRY.md)."""
        now = self.clock.monotonic()
        for view in self.connector_views():
            for r in view.readings(now):
                self.sampler.add(r)
        sharing = self.controller.sharing
        if sharing is not None:  # the allocation: each connector's groups and the power it is told
            for c in self.controller.connectors:
                offered_w = sharing.limit_w(c.name) or 0.0
                self.sampler.add(
                    Reading(connector_signal(c.name, "groups"), float(len(sharing.groups_of(c.name))), "", now)
                )
                self.sampler.add(Reading(connector_signal(c.name, "power_offered_kw"), offered_w / 1000.0, "kW", now))

    def status(self) -> dict[str, Any]:
        """Everything a technician or the API needs about the cabinet right now."""
        return self.view().as_dict()

    def mqtt_state(self) -> dict[str, Any]:
        return self.view().mqtt_state()

    _tick_stats: tuple[float, dict[str, Any]] = (-1e9, {})

    def _control_stats(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        t, jitter = self._tick_stats
        if now - t >= TICK_STATS_EVERY_S or not jitter:
            # sorting 10,000 periods makes 10,000 float objects: at most once a second, however often
            # `edge status` / `edge watch` ask (the soak asks 20 times a second)
            periods = sorted(self.controller.tick_periods_ms)

            def pct(q: float) -> float | None:
                return round(periods[min(len(periods) - 1, int(q * len(periods)))], 2) if periods else None

            jitter = {
                "tick_p50_ms": pct(0.5),
                "tick_p99_ms": pct(0.99),
                "tick_max_ms": round(periods[-1], 2) if periods else None,
            }
            self._tick_stats = (now, jitter)
        return {
            "ticks": self.controller.ticks,
            "evaluations": self.controller.evaluations,
            "tick_ms": self.config.control.tick_ms,
            **jitter,
        }

    # -- running -------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the buses and start from a known state whatever the modules did before us."""
        self.can.start(loop)
        self.bank.all_off()
        if self.everest is not None:
            self.everest.start(loop)
        if self.everest_monitors is not None:
            self.everest_monitors.start(loop)
        if self.remote is not None and self.remote.update is not None:
            self.remote.update.resume()  # the retained update status; an update a restart interrupted goes on

    def tasks(self, status_line: bool = False) -> dict[str, Coroutine[Any, Any, None]]:
        """Every long-running task but the control loop, by name."""
        out: dict[str, Coroutine[Any, Any, None]] = {**self.can.tasks(), **self.meters.tasks()}
        if self.isolation is not None:
            out.update(self.isolation.tasks())
        out["telemetry"] = self.recorder.run(self._limit_a, self._watchdog_status)
        if self.api is not None:
            out["api"] = self.api.serve()
        if self.uplink is not None:
            out["uplink"] = self.uplink.run()
        if self.everest is not None:
            out["everest"] = self.everest.run(asyncio.Event())  # runs until cancelled with the other tasks
        if self.everest_monitors is not None:
            out["everest-monitors"] = self.everest_monitors.run(asyncio.Event())
        if self.sim_charging is not None:
            out["sim-charging"] = self._sim_charging(self.sim_charging)
        if status_line:
            out["status-line"] = self._print_status_line()
        return out

    def _limit_a(self) -> float | None:
        d = self.controller.decision
        return None if d is None else float(d["limit_a"])

    def _watchdog_status(self) -> None:
        d = self.controller.decision
        if d is not None:
            faults = ",".join(d["faults"]) or "none"
            self.wdt.status(f"limit {d['limit_a']:.0f} A <- {d['reason']}; faults {faults}")

    def cable_check_verdict(self, connector: str) -> str | None:
        """The connector's cable check as the core decided it last (``idle``, ``self_test``, ``sampling``,
        ``passed``, ``failed``); None without an IMD watching it."""
        d = self.controller.decision or {}
        imd = ((d.get("connectors") or {}).get(connector) or {}).get("imd")
        return None if imd is None else str(imd["cable_check"])

    async def _sim_charging(self, drive: Callable[[DemandSink, float, dict[str, Capabilities | None]], Any]) -> None:
        """The simulator's charging controller, through the same demand sink as EVerest."""
        while True:
            caps: dict[str, Capabilities | None] = {n: r.capabilities for n, r in self.controller.reports().items()}
            drive(self.controller.demands, self.clock.monotonic(), caps)
            await asyncio.sleep(SIM_CHARGING_PERIOD_S)

    async def _print_status_line(self) -> None:
        out = LiveLine()  # in place on a terminal, plain lines into a pipe or the journal
        out.attach_logging()
        try:
            while True:
                await asyncio.sleep(STATUS_LINE_EVERY_S)
                out.show(self.view().line(out.width()))
        finally:
            out.close()

    def _held_by_sharing(self, d: dict[str, Any]) -> list[str]:
        sharing = self.controller.sharing
        return [f for f in d.get("faults", []) if sharing is not None and sharing.holds(f)]

    def fail_safe(self) -> None:
        """Output off, contactor open, pump and fan off (the controller tries each step even if one fails)."""
        self.controller.fail_safe()
        self.outputs.all_off()

    def flush_telemetry(self) -> None:
        self.recorder.flush(self._limit_a())

    def close(self) -> None:
        closers: list[Callable[[], None]] = [p.close for p in self.can.ports.values()]
        closers.append(self.meters.close)
        if self.everest is not None:
            closers.append(self.everest.close)
        if self.everest_monitors is not None:
            closers.append(self.everest_monitors.close)
        if self.remote is not None and self.remote.update is not None:
            closers.append(self.remote.update.close)
        if self.api is not None:
            closers.append(self.api.close)
        closers.append(self.store.close)
        for closer in closers:
            try:
                closer()
            except Exception:
                log.exception("while closing")
