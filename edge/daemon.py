"""The daemon: wires config, hal, drivers, control, telemetry and the API on one asyncio loop.

Lifecycle guarantees:
- SIGTERM / SIGINT: modules off, contactor open, store flushed, exit 0 (well within 2 s).
- Any unhandled error in a daemon task: modules off, contactor open, traceback logged, exit 1, so
  systemd restarts us; power modules switch off on their own if we go silent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections import deque
from typing import Any

import can

from drivers.cable.monitor import CableMonitor
from drivers.meters.models import model_for
from drivers.meters.poller import LinePoller, MeterPoller, PollSettings
from drivers.meters.reader import ModbusLine
from drivers.power_modules.bank import ModuleBank
from drivers.power_modules.codec import Frame
from drivers.power_modules.registry import CODECS  # vendor name -> codec class (one entry per vendor)
from drivers.readings import OK, Reading
from edge import __version__
from edge.api.server import ApiServer
from edge.config import Config
from edge.control import Controller, Outputs
from edge.state import CabinetState, InputMap
from edge.telemetry.sampler import Sampler
from edge.telemetry.store import Store
from edge.telemetry.uplink import Uplink
from hal.can import ACTIVE, BUS_OFF, CanPort, CanSendError, CanSettings
from hal.clock import LinuxClock
from hal.pin import Pin, SimBoard, make_pin
from hal.serial import SerialSettings
from hal.watchdog import make_wdt

log = logging.getLogger("edge.daemon")
RECENT_EVENTS = 1000  # kept in memory for `edge events` (also the API's most per request)
TICK_STATS_EVERY_S = 1.0  # tick jitter percentiles are recomputed at most this often


class Daemon:
    def __init__(self, config: Config, board: SimBoard | None = None, status_line: bool = False) -> None:
        self.config = config
        self.status_line = status_line
        self.clock = LinuxClock()
        self.started = time.monotonic()
        self.stopping = asyncio.Event()
        self.ports: dict[str, CanPort] = {}
        self.lines: dict[str, ModbusLine] = {}
        self.meters: list[tuple[MeterPoller, Any]] = []
        self.meter_lines: list[LinePoller] = []
        self.send_errors = 0
        self.meter_status: dict[str, dict[str, Any]] = {}

        o = config.outputs
        pins: list[Pin]
        if o.backend == "sim":
            board = board or SimBoard()
            pins = [board.pin(o.contactor), board.pin(o.pump), board.pin(o.fan)]
        else:
            pins = [make_pin(o.backend, o.contactor), make_pin(o.backend, o.pump), make_pin(o.backend, o.fan)]
        self.outputs = Outputs(*pins)
        self.wdt = make_wdt(config.watchdog.backend, config.watchdog.timeout_ms)
        self.store = Store(
            config.storage.data_dir, config.telemetry.store_max_mb, config.telemetry.min_free_mb, background=True
        )  # the loop never waits for SQLite's write lock
        self.sampler = Sampler()

        # --- CAN (drivers/power_modules, drivers/cable, hal/can.py; docs/CAN.md) ---
        pm = config.power_modules
        codec = CODECS[pm.protocol]()
        self.cables = {
            c.name: CableMonitor(c.name, c.node_id, stale_after_s=c.stale_after_ms / 1000.0) for c in config.cable
        }
        self.can_faults: dict[str, str] = {}
        self.can_unknown_frames = 0
        self.can_decode_errors = 0
        for bus in config.can:
            self.ports[bus.name] = CanPort(
                CanSettings(
                    name=bus.name,
                    interface=bus.interface,
                    channel=bus.channel,
                    bitrate=bus.bitrate,
                    rx_queue=bus.rx_queue,
                    send_timeout_s=bus.send_timeout_ms / 1000.0,
                    filters=can_filters(config, bus.name, codec.reply_mask(), self.cables),
                ),
                on_health=self._can_health,
            )
        self.module_port = self.ports[pm.bus]
        self.bank = ModuleBank(
            codec,
            list(pm.addresses),
            pm.lost_after_ms / 1000.0,
            self._send_frame,
            pm.max_current_a,
            poll_period_s=pm.poll_ms / 1000.0,
            clock=self.clock.monotonic,
            on_event=self.event,
        )
        # --- end CAN ---
        self.cable_bus = {c.name: c.bus for c in config.cable}
        grid = next((m.name for m in config.meters if m.role == "grid"), None)
        self.state = CabinetState(
            InputMap(
                cable=config.cable[0].name if config.cable else None,
                grid_meter=grid,
                ambient=config.limits.ambient_signal,
            )
        )
        self.controller = Controller(config, self.state, self.bank, self.outputs, self.wdt, self.clock, self.event)

        # -- meters: one LinePoller per line (drivers/meters/poller.py) --------------------------------
        for line in config.serial:
            self.lines[line.name] = ModbusLine.serial(
                SerialSettings(line.port, line.baudrate, line.bytesize, line.parity, line.stopbits), name=line.name
            )
        for tcp in config.modbus_tcp:
            self.lines[tcp.name] = ModbusLine.tcp(tcp.host, tcp.port, name=tcp.name)
        for m in config.meters:
            model = model_for(
                m.model, m.name, [r.model_dump() for r in m.registers], m.max_registers_per_request, m.rejects_gaps
            )
            settings = PollSettings(
                fast_period_s=m.poll_ms / 1000.0,
                slow_period_s=m.slow_poll_ms / 1000.0,
                timeout_min_s=m.timeout_min_ms / 1000.0,
                timeout_max_s=m.timeout_ms / 1000.0,
                stale_after_s=m.stale_after_ms / 1000.0,
                backoff_initial_s=m.backoff_initial_ms / 1000.0,
                backoff_max_s=m.backoff_max_ms / 1000.0,
                frozen_after_s=m.frozen_after_ms / 1000.0,
            )
            self.meters.append((MeterPoller(m.name, model, m.device_id, settings), m))
            self.meter_status[m.name] = {"ok": False, "errors": 0, "last_error": None}
        for name, line_obj in self.lines.items():
            on_line = [p for p, c in self.meters if c.line == name]
            if on_line:
                self.meter_lines.append(LinePoller(line_obj, on_line))
        # -- api (CLI issue): recent events for `edge events`, kept beside the store because the
        # uplink deletes delivered records from it
        # the events since start as compact JSON (~200 B each instead of ~460 B as dicts), for `edge events`
        # after the uplink has delivered (and the store deleted) them
        self.recent_events: deque[str] = deque(maxlen=RECENT_EVENTS)
        self._tick_stats: tuple[float, dict[str, Any]] = (0.0, {})
        self.api = ApiServer(config.api, self)
        # -- telemetry uplink (edge/telemetry/uplink.py; docs/TELEMETRY.md) --------------------------
        mq = config.telemetry.mqtt
        self.uplink: Uplink | None = None
        if mq.enabled:
            self.uplink = Uplink(
                mq,
                config.cabinet.site_id,
                config.cabinet.cabinet_id,
                self.store,
                max_current_a=config.limits.max_output_current_a,
                remote_clear_allowed=config.limits.remote_clear_allowed,
                controller=self.controller,
                state_source=self.mqtt_state,
                on_event=self.event,
                interval_s=config.telemetry.interval_s,
                version=__version__,
            )
        self.store_fault: str | None = None
        # -- end telemetry uplink ---------------------------------------------------------------------

    # -- events --------------------------------------------------------------------------------------
    def event(self, kind: str, name: str, data: dict[str, Any]) -> None:
        level = logging.WARNING if kind == "fault_raised" else logging.INFO
        detail = data.get("detail") or data.get("reason") or ""
        log.log(level, "%s %s%s", kind, name, f": {detail}" if detail else "")
        t_ms = int(time.time() * 1000)
        payload = {"kind": kind, "name": name, **data}
        seq = self.store.append("event", t_ms, payload)
        self.recent_events.append(
            json.dumps(
                {"seq": seq if seq is not None else -len(self.recent_events) - 1, "t_ms": t_ms, **payload},
                separators=(",", ":"),
                default=str,
            )
        )

    def _send_frame(self, frame: Frame) -> None:
        try:
            self.module_port.send(
                can.Message(arbitration_id=frame.arbitration_id, data=frame.data, is_extended_id=frame.is_extended_id)
            )
        except CanSendError as exc:
            # Not fatal here: the modules fall back to off on their own when we cannot reach them.
            self.send_errors += 1
            if self.send_errors in (1, 10, 100) or self.send_errors % 1000 == 0:
                log.error("%s (%d send errors so far)", exc, self.send_errors)

    # -- CAN health (hal/can.py) -------------------------------------------------------------------
    def _can_health(self, port: CanPort, old: str, new: str, reason: str) -> None:
        name = f"can_bus_off.{port.settings.name}" if port is not self.module_port else "can_bus_off"
        if new == BUS_OFF:
            detail = f"CAN {port.settings.name} bus off: {reason}; re-opening with backoff (docs/CAN.md)"
            self.can_faults[name] = detail
            self.event("fault_raised", name, {"detail": detail})
            if port is self.module_port:
                # We cannot reach the modules: they are lost, so the limit goes to 0 A and the contactor
                # opens. Deferred to the next loop turn: this can be called from inside a send of an
                # evaluation in progress, which must not be re-entered.
                asyncio.get_running_loop().call_soon(self._module_bus_off, port.settings.name)
        elif old == BUS_OFF:
            self.can_faults.pop(name, None)
            self.event("fault_cleared", name, {"reason": reason})
        elif new != old:
            self.event("can_state", port.settings.name, {"state": new, "reason": reason})

    def _module_bus_off(self, bus: str) -> None:
        self.bank.force_lost(self.clock.monotonic(), f"CAN {bus} bus off")
        self.controller.evaluate_now()

    # -- tasks ---------------------------------------------------------------------------------------
    async def _can_rx(self, name: str, port: CanPort) -> None:
        cables = [mon for cname, mon in self.cables.items() if self.cable_bus[cname] == name]
        is_module_bus = port is self.module_port
        while True:
            msg: can.Message | None = await port.recv()
            safety = False
            while msg is not None:
                now = self.clock.monotonic()
                if msg.is_remote_frame or not msg.is_extended_id:
                    self.can_unknown_frames += 1  # none of our protocols uses them
                    msg = port.recv_nowait()
                    continue
                data = bytes(msg.data)
                known = False
                try:
                    if is_module_bus:
                        reply = self.bank.handle(msg.arbitration_id, data, now)
                        if reply is not None:
                            known = True
                            self._module_readings(reply.address, now)
                            safety = safety or reply.alarms is not None
                    for mon in cables:
                        readings = mon.decode(msg.arbitration_id, data, now)
                        if readings:
                            known = True
                            self._readings(readings)
                            safety = True
                except (ValueError, KeyError, IndexError, TypeError, ArithmeticError) as exc:
                    # a decoder bug or a frame nobody foresaw must not stop the safety path
                    self.can_decode_errors += 1
                    if self.can_decode_errors in (1, 10, 100) or self.can_decode_errors % 1000 == 0:
                        log.error("CAN %s: frame 0x%X %s not decoded: %r", name, msg.arbitration_id, data.hex(), exc)
                if not known:
                    self.can_unknown_frames += 1
                msg = port.recv_nowait()
            if safety:
                self.controller.evaluate_now()

    async def _can_watch(self) -> None:
        """Cable values go stale when their frames stop; module set-points wait for their spacing."""
        while True:
            now = self.clock.monotonic()
            for mon in self.cables.values():
                stale = mon.stale(now)
                if stale:
                    self._readings(stale)
            self.bank.flush(now)
            await asyncio.sleep(0.05)

    def _module_readings(self, address: int, now: float) -> None:
        self._readings(self.bank.module_readings("module", address, now))

    def _readings(self, readings: list[Reading]) -> None:
        self.state.update(readings)
        for r in readings:
            self.sampler.add(r)

    async def _module_poll(self) -> None:
        """Poll present modules every poll_ms, lost ones with backoff; requests spaced by the codec."""
        spacing = self.bank.codec.command_spacing_s
        while True:
            for addr in self.bank.polls_due(self.clock.monotonic()):
                for frame in self.bank.poll_frames(addr):
                    self._send_frame(frame)
                    await asyncio.sleep(spacing)
            self._module_readings_all()
            await asyncio.sleep(spacing)

    def _module_readings_all(self) -> None:
        now = self.clock.monotonic()
        for r in self.bank.readings("module", now):
            if r.quality != OK:
                self.state.update([r])

    async def _meter_poll(self, line: LinePoller) -> None:
        def refresh() -> None:
            for m in line.meters:
                self.meter_status[m.name] = m.status()

        def sink(readings: list[Reading]) -> None:
            self._readings(readings)
            refresh()

        def on_event(kind: str, name: str, data: dict[str, Any]) -> None:
            self.event(kind, name, data)
            refresh()

        await line.run(sink, on_event)

    async def _telemetry(self) -> None:
        interval = self.config.telemetry.interval_s
        while True:
            await asyncio.sleep(interval)
            self._flush_telemetry()
            d = self.controller.decision
            if d is not None:
                faults = ",".join(d["faults"]) or "none"
                self.wdt.status(f"limit {d['limit_a']:.0f} A <- {d['reason']}; faults {faults}")

    def _flush_telemetry(self) -> None:
        d = self.controller.decision
        now = self.clock.monotonic()
        if d is not None:
            self.sampler.add(Reading("control.limit_a", d["limit_a"], "A", now))
        samples = self.sampler.flush()
        if samples:
            self.store.append(
                "telemetry",
                int(time.time() * 1000),
                {"interval_s": self.config.telemetry.interval_s, "samples": samples},
            )
        self._check_store()

    # -- telemetry store health and MQTT state (edge/telemetry; docs/TELEMETRY.md) ----------------------
    STORE_FAULT = "telemetry_store_error"

    def _check_store(self) -> None:
        """A failing store is a fault of its own: reported, never a reason to stop control."""
        why = self.store.degraded
        if why and not self.store_fault:
            self.store_fault = (
                f"telemetry store write failed ({why}); {self.store.write_errors} "
                f"records lost so far; control unaffected"
            )
            self.event("fault_raised", self.STORE_FAULT, {"detail": self.store_fault})
        elif not why and self.store_fault:
            self.store_fault = None
            self.event("fault_cleared", self.STORE_FAULT, {})
        elif why:
            self.store_fault = (
                f"telemetry store write failed ({why}); {self.store.write_errors} "
                f"records lost so far; control unaffected"
            )

    def mqtt_state(self) -> dict[str, Any]:
        """The retained ``state`` message body (schema: edge/schemas/mqtt-v1.schema.json#state)."""
        d = self.controller.decision or {}
        ext = self.controller.external_limit
        ext_d = None
        if ext is not None:
            left = None if ext.expires_at is None else max(0.0, ext.expires_at - self.clock.monotonic())
            ext_d = {
                "amps": ext.amps,
                "source": ext.source,
                "expires_in_s": None if left is None else float(round(left)),
            }
        faults = {**d.get("fault_details", {}), **self.can_faults}
        if self.store_fault:
            faults[self.STORE_FAULT] = self.store_fault
        return {
            "limit_a": round(float(d.get("limit_a", 0.0)), 1),
            "rule": d.get("rule"),
            "reason": d.get("reason"),
            "enable": bool(d.get("enable", False)),
            "faults": faults,
            "latched": list(d.get("latched", [])),
            "external_limit": ext_d,
            "stopped_by": self.controller.stopped_by,
            "modules": {str(a): {"lost": m.lost, "on": m.output_on} for a, m in self.bank.modules.items()},
            "telemetry_store": {"degraded": self.store.degraded, "write_errors": self.store.write_errors},
        }

    async def _status_line(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            print(self.status_text(), flush=True)

    def status_text(self) -> str:
        def val(sig: str, fmt: str = "{:.1f}") -> str:
            r = self.state.get(sig)
            if r is None:
                return "--"
            return fmt.format(r.value) + ("" if r.quality == OK else f"({r.quality})")

        grid = next((m.name for m, _ in self.meters if m.name == self.state.inputs.grid_meter), None)
        cable = self.state.inputs.cable
        d = self.controller.decision or {}
        mods = " ".join(
            f"M{a}:{m.voltage_v:.0f}V/{m.current_a:.0f}A" + ("(lost)" if m.lost else "")
            for a, m in self.bank.modules.items()
        )
        parts = [
            f"grid {val(f'{grid}.Power.Active.Import', '{:.0f}')} W" if grid else "grid --",
            mods,
            f"pins {val(f'{cable}.pin_dc_plus_c')}/{val(f'{cable}.pin_dc_minus_c')} °C" if cable else "",
            f"flow {val(f'{cable}.coolant_flow_lpm')} l/min" if cable else "",
            f"limit {d.get('limit_a', 0.0):.0f} A <- {d.get('reason', 'starting')}",
            f"faults {','.join(d.get('faults', [])) or 'none'}",
            f"backlog {self.store.backlog()}",
        ]
        return " | ".join(p for p in parts if p)

    def status(self) -> dict[str, Any]:
        """Everything a technician or the API needs about the cabinet right now."""
        d = self.controller.decision or {}
        now = self.clock.monotonic()
        return {
            "cabinet_id": self.config.cabinet.cabinet_id,
            "site_id": self.config.cabinet.site_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "limit_a": round(d.get("limit_a", 0.0), 1),
            "target_a": round(d.get("target_a", 0.0), 1),
            "rule": d.get("rule"),
            "reason": d.get("reason"),
            "enable": d.get("enable", False),
            "faults": {
                **d.get("fault_details", {}),
                **self.can_faults,
                **({self.STORE_FAULT: self.store_fault} if self.store_fault else {}),
            },
            "latched": d.get("latched", []),
            "outputs": {
                "contactor": self.outputs.contactor.value(),
                "pump": self.outputs.pump.value(),
                "fan": self.outputs.fan.value(),
            },
            "modules": {
                str(a): {
                    "lost": m.lost,
                    "voltage_v": m.voltage_v,
                    "current_a": m.current_a,
                    "temperature_c": m.temperature_c,
                    "alarms": sorted(m.alarms),
                    "set_current_a": m.set_current_a,
                    "on": m.output_on,
                }
                for a, m in self.bank.modules.items()
            },
            "meters": self.meter_status,
            "readings": {
                s: {"value": r.value, "unit": r.unit, "quality": r.quality, "age_s": round(now - r.t, 3)}
                for s, r in sorted(self.state.readings.items())
            },
            "telemetry": {**self.store.stats(), "uplink": self.uplink.status() if self.uplink else {"enabled": False}},
            "can": {n: p.status() for n, p in self.ports.items()},
            "can_frames": {
                "unknown": self.can_unknown_frames,
                "decode_errors": self.can_decode_errors,
                **self.bank.status(),
            },
            "control": self._control_stats(),
        }

    def _control_stats(self) -> dict[str, Any]:
        now = time.monotonic()
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

    # -- run -----------------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        for port in self.ports.values():
            port.start(loop)
            if port.health == BUS_OFF:  # could not be opened at all: same fault as a bus-off
                self._can_health(port, ACTIVE, BUS_OFF, port.health_reason)
        self.bank.all_off()  # start from a known state whatever the modules did before us
        self.event("started", "daemon", {"version": __version__})
        tasks = [asyncio.create_task(self._can_rx(n, p), name=f"can-rx-{n}") for n, p in self.ports.items()]
        tasks.append(asyncio.create_task(self._module_poll(), name="module-poll"))
        tasks.append(asyncio.create_task(self._can_watch(), name="can-watch"))
        tasks += [asyncio.create_task(p.supervise(), name=f"can-supervise-{n}") for n, p in self.ports.items()]
        tasks += [asyncio.create_task(self._meter_poll(ln), name=f"meters-{ln.line.name}") for ln in self.meter_lines]
        tasks.append(asyncio.create_task(self._telemetry(), name="telemetry"))
        tasks.append(asyncio.create_task(self.api.serve(), name="api"))
        if self.uplink is not None:
            tasks.append(asyncio.create_task(self.uplink.run(), name="uplink"))
        if self.status_line:
            tasks.append(asyncio.create_task(self._status_line(), name="status-line"))
        control = asyncio.create_task(self.controller.run(self.stopping), name="control")
        self.controller.evaluate_now()
        self.wdt.ready()
        self.wdt.status("running")
        code = 0
        try:
            done, _ = await asyncio.wait([control, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception() if not t.cancelled() else None
                if exc is not None:
                    log.error(
                        "fatal error in %s; outputs off, contactor open",
                        t.get_name(),
                        exc_info=(type(exc), exc, exc.__traceback__),
                    )
                    code = 1
        finally:
            self.wdt.stopping()
            self.controller.fail_safe()
            self.outputs.all_off()
            for t in [control, *tasks]:
                t.cancel()
            await asyncio.gather(control, *tasks, return_exceptions=True)
            self._flush_telemetry()
            self.event("stopped", "daemon", {"exit_code": code})
            self._close()
        return code

    def _close(self) -> None:
        for closer in [
            *(p.close for p in self.ports.values()),
            *(ln.close for ln in self.lines.values()),
            self.api.close,
            self.store.close,
        ]:
            try:
                closer()
            except Exception:
                log.exception("while closing")


def can_filters(
    config: Config, bus: str, module_reply: tuple[int, int], cables: dict[str, CableMonitor]
) -> tuple[tuple[int, int, bool], ...]:
    """The ids this bus needs (module replies, cable frames): kernel/hardware filters where supported."""
    out: list[tuple[int, int, bool]] = []
    if config.power_modules.bus == bus:
        out.append((module_reply[0], module_reply[1], True))
    for c in config.cable:
        if c.bus == bus:
            out += [(fid, 0x1FFFFFFF, True) for fid in sorted(cables[c.name].frame_ids)]
    return tuple(out)


def run_daemon(config: Config, board: SimBoard | None = None, status_line: bool = False) -> int:
    async def main() -> int:
        # built inside the loop: pymodbus clients bind to the running loop when created
        return await Daemon(config, board, status_line).run()

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("daemon failed to start or stop cleanly")
        sys.stderr.flush()
        return 1
