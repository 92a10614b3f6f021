"""The control loop: evaluate the safety core, apply its decision to modules, contactor, pump and fan.

- Evaluated at once on every safety-relevant frame (:meth:`Controller.evaluate_now`) and on a fixed
  tick (``control.tick_ms``) that catches silence: stale inputs and lost modules.
- The watchdog is fed from the tick loop only, so a stalled loop gets the service restarted.
- Any exception escapes :meth:`Controller.run` after :meth:`Controller.fail_safe` has switched the
  modules off and opened the contactor; the daemon then exits non-zero.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from drivers.digital_inputs import DigitalInputs
from drivers.power_modules.bank import ModuleBank
from edge.charging.demand import Capabilities, ConnectorReport
from edge.charging.demands import Demands
from edge.config import Config
from edge.config.digital_inputs import safety_inputs_config
from edge.isolation_link import IsolationLink
from edge.limits.connectors import evaluate_cabinet
from edge.operator import ExternalLimit, OperatorState, Source
from edge.state import CabinetState
from hal.clock import Clock
from hal.pin import Pin, SimBoard
from hal.watchdog import WDT

if TYPE_CHECKING:  # imported by build() only for a cabinet with [sharing]
    from edge.charging.sharing import Runner as SharingRunner

log = logging.getLogger(__name__)

EventSink = Callable[[str, str, dict[str, Any]], None]


TICK_PERIODS_KEPT = 10000  # ~17 minutes at the default 100 ms tick


class RecentPeriods:
    """The last TICK_PERIODS_KEPT tick periods (ms) in a ring allocated once, so the statistics cost the
    same memory from the first tick to the thousandth hour (a trimmed list made the soak's memory saw)."""

    def __init__(self, size: int = TICK_PERIODS_KEPT) -> None:
        self._buf = array("d", bytes(8 * size))
        self._next = 0
        self._count = 0

    def append(self, period_ms: float) -> None:
        self._buf[self._next] = period_ms
        self._next = (self._next + 1) % len(self._buf)
        self._count = min(self._count + 1, len(self._buf))

    def clear(self) -> None:
        self._next = self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[float]:
        start = (self._next - self._count) % len(self._buf)
        for i in range(self._count):
            yield self._buf[(start + i) % len(self._buf)]


@dataclass
class Outputs:
    contactor: Pin  # the first connector's output contactor
    pump: Pin
    fan: Pin
    contactors: dict[str, Pin] = field(default_factory=dict)  # by connector name; {"1": contactor} by default
    board: SimBoard | None = None  # the simulated board (sim backend): its input pins are read as well

    def __post_init__(self) -> None:
        if not self.contactors:
            self.contactors = {"1": self.contactor}

    def all_off(self) -> None:
        for pin in self.contactors.values():
            pin.off()
        self.pump.off()
        self.fan.off()


class Controller:
    def __init__(
        self,
        config: Config,
        state: CabinetState,
        bank: ModuleBank,
        outputs: Outputs,
        wdt: WDT,
        clock: Clock,
        on_event: EventSink,
        external_faults: Callable[[], list[list[Any]]] = list,
        demands: Demands | None = None,
        contactor_feedback: Callable[[], dict[str, int | None]] = dict,
        isolation: IsolationLink | None = None,
    ) -> None:
        self.config = config
        self.connectors = config.resolved_connectors()
        self.demands = demands or Demands({c.name: c.request for c in self.connectors})
        # faults detected outside the core (CAN bus off, telemetry store): [name, detail, stops_output]
        self.external_faults = external_faults
        # mirror contacts by connector name: 1 closed, 0 open, None / absent = no feedback wired
        self.contactor_feedback = contactor_feedback
        self.limits_cfg = {
            **config.limits.model_dump(),
            "session": config.session.model_dump(),
            "contactor": config.contactors.model_dump(include={"close_timeout_ms", "open_timeout_ms"}),
            "safety_inputs": safety_inputs_config(config.input),
            "isolation": config.isolation.model_dump(),
            "over_voltage_monitor": config.over_voltage_monitor.model_dump(),
        }
        self.isolation = isolation  # the insulation monitors: each connector's "imd" reading and commands
        self.state = state
        self.bank = bank
        self.outputs = outputs
        self.wdt = wdt
        self.clock = clock
        self.on_event = on_event
        self.core_state: dict[str, Any] | None = None
        self.decision: dict[str, Any] | None = None
        self.operator = OperatorState()
        self.requested_current_a = config.control.requested_current_a
        self._clear_requests: list[str] = []
        self._clear_results: list[tuple[list[str], list[list[str]]]] = []
        self.ticks = 0
        self.evaluations = 0
        self.tick_periods_ms = RecentPeriods()
        self.after_evaluate: list[Callable[[], None]] = []  # e.g. the EVerest adapter: derating goes out now
        self.on_tick: list[Callable[[], None]] = []  # once per tick after the evaluation (telemetry samples)
        # e-stop, door, water, tilt ([[input]]): read at every evaluation; an edge evaluates at once (build.py)
        self.digital: DigitalInputs | None = None
        self.input_functions: dict[str, str] = {i.name: i.function for i in config.input}
        self.input_values: dict[str, int] = {}  # by input name, as last evaluated (status, events)
        self._input_events: list[tuple[str, dict[str, Any]]] = []  # this evaluation's, emitted after the outputs
        # power sharing (issue 16): set by build() with [sharing]; None = each connector its static modules
        self.sharing: SharingRunner | None = None
        # the e-stop's direct path (estop_off) may run in another thread than the loop's _apply: one at a time;
        # re-entrant for a pin irq raised by an output write inside _apply
        self._outputs_lock = threading.RLock()
        self._estop_offs = 0  # counts estop_off calls: an evaluation snapshotted before one must not switch on

    def modules_of(self, c: Any) -> list[int]:
        """The modules feeding connector ``c`` now: the allocation's with [sharing], else its static list."""
        return self.sharing.modules_of(c.name) if self.sharing is not None else c.modules

    # -- operator requests (local socket / cloud, through edge.ops; never above the config) ------------
    # Who may lift what is decided in edge.operator; edge.ops evaluates at once after each change.
    @property
    def external_limit(self) -> ExternalLimit | None:
        """The effective (lowest) operator limit with its source and expiry; None when there is none."""
        return self.operator.effective_limit()

    @property
    def stopped_by(self) -> str | None:
        """Who holds the stop shown to users (a local holder first); None when not stopped."""
        return self.operator.stopped_by

    @property
    def test_outputs(self) -> dict[str, bool]:
        return self.operator.test_outputs

    @property
    def test_outputs_until(self) -> float:
        return self.operator.test_outputs_until

    def set_external_limit(self, amps: float, duration_s: float | None, source: Source | str) -> None:
        """Set the limit of ``source``'s authority; limits of the other authority stay (the lowest wins)."""
        expires_at = self.clock.monotonic() + duration_s if duration_s else None
        self.operator.set_limit(_source(source), amps, expires_at)

    def clear_external_limit(self, source: Source | str) -> ExternalLimit | None:
        """Lift ``source``'s own limit; raises :class:`edge.operator.Held` when only another holds one."""
        return self.operator.clear_limit(_source(source))

    def stop(self, source: Source | str) -> None:
        self.operator.stop(_source(source))

    def resume(self, source: Source | str) -> str | None:
        """Lift ``source``'s own stop; raises :class:`edge.operator.Held` when only another holds one."""
        return self.operator.resume(_source(source))

    def set_test_outputs(self, pump: bool | None, fan: bool | None, duration_s: float) -> None:
        """Run pump and/or fan for a self-test. Ignored while the output is enabled."""
        self.operator.set_test_outputs(pump, fan, self.clock.monotonic() + duration_s)

    def request_clear(self, fault: str) -> tuple[bool, str]:
        """Ask the core to clear a latched fault; answered by the very next evaluation. A module group's fault
        (power sharing) is the sharing runner's: the group back in service when its relays read open."""
        group = self.sharing.clear(fault) if self.sharing is not None else None
        if group is not None:
            self.evaluate_now()
            return group
        self._clear_requests.append(fault)
        self.evaluate_now()
        cleared, refused = self._clear_results[-1] if self._clear_results else ([], [])
        if fault in cleared:
            return True, "cleared"
        reason = next((r[1] for r in refused if r[0] == fault), "not latched")
        return False, reason

    # -- evaluation ---------------------------------------------------------------------------------
    def estop_off(self) -> None:
        """The e-stop's edge, before its evaluation: every module off (the priority off frames, as a trip
        would send) and every contactor open, in the thread that sees the edge, so the off does not wait for
        the loop and the GIL (docs/BENCHMARKS.md). It only switches off, so it is idempotent; each step is
        tried even if one fails. The evaluation that follows latches ``emergency_stop`` and reports; one
        already under way (its snapshot older than this call) cannot switch anything back on (``_apply``)."""
        with self._outputs_lock:
            self._estop_offs += 1
            self._all_outputs_off()

    def _all_outputs_off(self) -> None:
        # modules first (0 A / off), then the contactors: never open one before asking for 0 A
        for step in (self.bank.all_off, *(pin.off for pin in self.outputs.contactors.values())):
            try:
                step()
            except Exception:
                log.exception("e-stop off step %s failed", getattr(step, "__name__", step))

    def evaluate_now(self) -> dict[str, Any]:
        estop_offs = self._estop_offs  # before the snapshot: see _apply
        now = self.clock.monotonic()
        self.bank.check(now)
        for gone in self.operator.expire(now):
            self.on_event("limit_expired", "external_limit", {"amps": gone.amps, "source": gone.source})
        self.demands.check(now)
        snap = self._snapshot(now)
        self._clear_requests = []
        decision, self.core_state = evaluate_cabinet(snap, self.limits_cfg, self.core_state)
        self._clear_results = [(decision["cleared"], decision["clear_refused"])]
        self._apply(decision, estop_offs)
        # an input's event (log line, store append) only after the outputs: not on the e-stop's path to off
        for name, data in self._input_events:
            self.on_event("input", name, data)
        if self.sharing is not None:
            self.sharing.after_decision(self, decision, now)
        self._report_changes(self.decision, decision)
        self.decision = decision
        self.evaluations += 1
        for hook in self.after_evaluate:
            hook()
        return decision

    def _snapshot(self, now: float) -> dict[str, Any]:
        ext = self.external_limit
        stop = self.stopped_by is not None
        feedback = self.contactor_feedback()
        return self.state.cabinet_snapshot(
            now,
            external_limit_a=ext.amps if ext else None,
            stop=stop,
            grid_configured=self.state.inputs.grid_meter is not None,
            ambient_configured=self.state.inputs.ambient is not None,
            clear=self._clear_requests,
            external_faults=self.external_faults(),
            connectors={
                c.name: self._connector_snapshot(c, now, ext.amps if ext else None, stop)
                | {"contactor_fb": feedback.get(c.name)}
                for c in self.connectors
            },
            **self._digital_snapshot(),
        )

    def _digital_snapshot(self) -> dict[str, Any]:
        """``digital`` (by function, 1 = ACTIVE; several inputs of one function: any) and ``digital_names``
        (the ACTIVE inputs by function); an event for every debounced change."""
        self._input_events = []
        if self.digital is None:
            return {}
        values = self.digital.poll()
        by_function: dict[str, int] = {}
        names: dict[str, list[str]] = {}
        for name, function in self.input_functions.items():
            v = values[name]
            by_function[function] = max(by_function.get(function, 0), v)
            if v:
                names.setdefault(function, []).append(name)
            if self.input_values.get(name, 0) != v:  # at start-up: the ACTIVE ones
                self._input_events.append((name, {"function": function, "active": bool(v)}))
        self.input_values = values
        return {"digital": by_function, "digital_names": names}

    def _connector_snapshot(self, c: Any, now: float, external_limit_a: float | None, stop: bool) -> dict[str, Any]:
        if c.request == "fixed":  # a bench session at the configured set-points (old single-output config)
            self.demands.hold(c.name, self.config.control.output_voltage_v, self.requested_current_a, now)
        request = self.demands.core_request(c.name)
        volts = request["voltage_v"] if request else 0.0
        bank = self.bank
        imd = self.isolation.snapshot(c.name, now) if self.isolation is not None else None
        modules = self.modules_of(c)
        return {
            **({"imd": imd} if imd is not None else {}),
            **self.demands.voltage_limits(c.name),  # EVerest's over-voltage limits (over_voltage_monitor API)
            "inputs": self.state.connector_inputs(c.name, modules, now),
            "request": request,
            "hw_max_a": c.max_current_a,
            "hw_max_v": c.max_voltage_v,
            "hw_min_v": c.min_voltage_v,
            "hw_max_w": c.max_power_kw * 1000.0,
            "uncooled": c.uncooled,
            "modules_available": len(bank.available(modules)),
            "module_max_a": bank.module_max_a(modules, volts or None),
            "modules_configured": len(modules),
            "modules_lost": [a for a in modules if bank.modules[a].lost and not bank.awaited(a, now)],
            "modules_awaited": sum(1 for a in modules if bank.awaited(a, now)),
            "module_a": self.state.module_currents(modules),
            "modules_alarm": [
                [a, sorted(m.alarms & m.blocking_alarms)]
                for a in modules
                if not (m := bank.modules[a]).lost and m.alarms & m.blocking_alarms
            ],
            "external_limit_a": external_limit_a,
            "stop": stop,
            "external_faults": [],
        }

    def _apply(self, d: dict[str, Any], estop_offs: int | None = None) -> None:
        with self._outputs_lock:
            if estop_offs is not None and estop_offs != self._estop_offs:
                # an e-stop edge came after this decision's snapshot: keep everything off; the evaluation
                # queued by that edge (on_change) decides next
                self._all_outputs_off()
                return
            self._apply_outputs(d)

    def _apply_outputs(self, d: dict[str, Any]) -> None:
        # Per connector: its modules first (0 A / off), then its contactor: never open it before asking for 0 A.
        every = len(self.connectors) == 1
        for c in self.connectors:
            cd = d["connectors"][c.name]
            mods = self.modules_of(c)
            if not cd["enable"] and any(
                self.bank.modules[a].output_on or self.bank.modules[a].set_current_a > 0 for a in mods
            ):
                # stopping: with one connector one group command reaches every module with two frames
                if every:
                    self.bank.all_off()
                else:
                    self.bank.off(mods)
            self.bank.apply(cd["enable"], cd["voltage_v"], cd["limit_a"], addresses=mods)
            self.outputs.contactors[c.name].value(1 if cd["contactor"] else 0)
            if self.isolation is not None:
                self.isolation.command(c.name, cd.get("imd"))
        pump, fan = d["pump"], d["fan"] > 0
        if self.test_outputs and not d["enable"] and self.clock.monotonic() < self.test_outputs_until:
            pump = self.test_outputs.get("pump", pump)
            fan = self.test_outputs.get("fan", fan)
        self.outputs.pump.value(1 if pump else 0)
        self.outputs.fan.value(1 if fan else 0)

    def reports(self) -> dict[str, ConnectorReport]:
        """What each connector's request source publishes: measured V/I, the mode in force, what it can give."""
        d = self.decision
        now = self.clock.monotonic()
        out: dict[str, ConnectorReport] = {}
        for c in self.connectors:
            modules = self.modules_of(c)
            meas = self.state.output_measurements(now, modules)
            cd = d["connectors"][c.name] if d else {}
            caps = self.bank.capabilities(modules)
            max_a = min(c.max_current_a, float(cd.get("max_current_a", c.max_current_a)))
            max_w = min(c.max_power_kw * 1000.0, float(cd.get("max_power_w", c.max_power_kw * 1000.0)))
            shared_w = self.sharing.limit_w(c.name) if self.sharing is not None else None
            max_w = max_w if shared_w is None else min(max_w, shared_w)  # its share, told before a group moves
            out[c.name] = ConnectorReport(
                connector=c.name,
                voltage_v=meas["output_v"][0] if meas else 0.0,
                current_a=meas["output_a"][0] if meas else 0.0,
                mode=str(cd.get("mode", "Off")),
                capabilities=Capabilities(
                    # the modules' range once they report one (0 while none is available: the connector's)
                    max_export_voltage_v=min(c.max_voltage_v, caps.get("max_voltage_v") or c.max_voltage_v),
                    min_export_voltage_v=max(c.min_voltage_v, caps.get("min_voltage_v") or c.min_voltage_v),
                    max_export_current_a=max(0.0, max_a),
                    min_export_current_a=0.0,
                    max_export_power_w=max(0.0, max_w),
                ),
                faults=tuple(cd.get("faults", ())),
                modules_reachable=any(not self.bank.modules[a].lost for a in modules),
                phase=str(cd.get("phase", "Other")),
            )
        return out

    def _report_changes(self, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        before = set(old["faults"]) if old else set()
        after = set(new["faults"])
        for name in sorted(after - before):
            self.on_event("fault_raised", name, {"detail": new["fault_details"][name], "docs": new["fault_docs"][name]})
        for name in sorted(before - after):
            self.on_event("fault_cleared", name, {})
        for name in new["cleared"]:
            self.on_event("fault_cleared_by_request", name, {})
        if old is None or old["rule"] != new["rule"]:
            self.on_event("limit_rule", new["rule"], {"reason": new["reason"], "limit_a": round(new["target_a"], 1)})
        for text in new.get("events", ()):  # e.g. a session ended and why its contactor opened
            self.on_event("session_event", "connector", {"detail": text})
        for name, cd in new["connectors"].items():
            was = old["connectors"].get(name) if old else None
            if was is None or (was["mode"], was["phase"]) != (cd["mode"], cd["phase"]):
                self.on_event(
                    "connector_mode",
                    name,
                    {
                        "mode": cd["mode"],
                        "phase": cd["phase"],
                        "reason": cd["reason"],
                        "limit_a": round(cd["limit_a"], 1),
                    },
                )

    async def run(self, stopping: asyncio.Event) -> None:
        """Tick until ``stopping`` is set. Exceptions propagate after the fail-safe."""
        tick_s = self.config.control.tick_ms / 1000.0
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        last = None
        try:
            while not stopping.is_set():
                self.evaluate_now()
                self.wdt.feed()
                self.ticks += 1
                for hook in self.on_tick:
                    hook()
                now = loop.time()
                if last is not None:
                    self.tick_periods_ms.append((now - last) * 1000.0)
                last = now
                next_t += tick_s
                if next_t < now:  # overran: do not try to catch up with a burst
                    next_t = now + tick_s
                try:
                    await asyncio.wait_for(stopping.wait(), timeout=max(0.0, next_t - loop.time()))
                except TimeoutError:
                    pass
        except BaseException:
            self.fail_safe()
            raise

    def fail_safe(self) -> None:
        """Output off, contactor open. Each step is tried even if an earlier one fails."""
        steps = [self.bank.all_off, *(pin.off for pin in self.outputs.contactors.values()), self.outputs.fan.off]
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("fail-safe step %s failed", getattr(step, "__name__", step))
        # The pump keeps running if it can: hot pins cool faster with coolant moving.


def _source(source: Source | str) -> Source:
    return source if isinstance(source, Source) else Source.from_label(source)
