"""The cabinet's Modbus side: one line poller per serial line or TCP connection, the meters on it, and
the per-meter status a technician sees (ok, errors, last error, next retry)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from drivers.meters.models import model_for
from drivers.meters.poller import LinePoller, MeterPoller, PollSettings
from drivers.meters.reader import ModbusLine
from drivers.readings import Reading
from edge.config import Config
from edge.config.devices import Meter
from hal.serial import SerialSettings

ReadingSink = Callable[[list[Reading]], None]
EventSink = Callable[[str, str, dict[str, Any]], None]


def poll_settings(m: Meter) -> PollSettings:
    return PollSettings(
        fast_period_s=m.poll_ms / 1000.0,
        slow_period_s=m.slow_poll_ms / 1000.0,
        timeout_min_s=m.timeout_min_ms / 1000.0,
        timeout_max_s=m.timeout_ms / 1000.0,
        stale_after_s=m.stale_after_ms / 1000.0,
        backoff_initial_s=m.backoff_initial_ms / 1000.0,
        backoff_max_s=m.backoff_max_ms / 1000.0,
        frozen_after_s=m.frozen_after_ms / 1000.0,
    )


class MeterLink:
    def __init__(
        self, config: Config, take: ReadingSink, on_event: EventSink, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.take = take
        self.on_event = on_event
        self.lines: dict[str, ModbusLine] = {}
        self.meters: list[tuple[MeterPoller, Meter]] = []
        self.pollers: list[LinePoller] = []
        self.status: dict[str, dict[str, Any]] = {}
        for line in config.serial:
            self.lines[line.name] = ModbusLine.serial(
                SerialSettings(line.port, line.baudrate, line.bytesize, line.parity, line.stopbits),
                name=line.name,
                clock=clock,
            )
        for tcp in config.modbus_tcp:
            self.lines[tcp.name] = ModbusLine.tcp(tcp.host, tcp.port, name=tcp.name, clock=clock)
        for m in config.meters:
            model = model_for(
                m.model, m.name, [r.model_dump() for r in m.registers], m.max_registers_per_request, m.rejects_gaps
            )
            self.meters.append((MeterPoller(m.name, model, m.device_id, poll_settings(m), clock=clock), m))
            self.status[m.name] = {"ok": False, "errors": 0, "last_error": None}
        for name, line_obj in self.lines.items():
            on_line = [p for p, c in self.meters if c.line == name]
            if on_line:
                self.pollers.append(LinePoller(line_obj, on_line, clock=clock))

    async def poll(self, line: LinePoller) -> None:
        def refresh() -> None:
            for m in line.meters:
                self.status[m.name] = m.status()

        def sink(readings: list[Reading]) -> None:
            self.take(readings)
            refresh()

        def on_event(kind: str, name: str, data: dict[str, Any]) -> None:
            self.on_event(kind, name, data)
            refresh()

        await line.run(sink, on_event)

    def live_status(self) -> dict[str, dict[str, Any]]:
        """Each meter's status now: asked of the poller at the moment of the question, so its ``retry_in_s``
        counts down to the next probe (a copy made at the last poll would show the same wait until then)."""
        return {m.name: m.status() if m.polls else self.status[m.name] for m, _cfg in self.meters}

    def tasks(self) -> dict[str, Any]:
        return {f"meters-{p.line.name}": self.poll(p) for p in self.pollers}

    def close(self) -> None:
        for line in self.lines.values():
            line.close()
