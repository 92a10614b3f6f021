"""Run an Uplink on its own asyncio loop in a thread, the way the daemon runs it, for tests and benches."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from drivers.readings import Reading
from edge.config.telemetry import Mqtt, Telemetry
from edge.telemetry.compact import Compactor, Deadbands
from edge.telemetry.sampler import Sampler
from edge.telemetry.store import SignalRow, Store
from edge.telemetry.uplink import Uplink

T = TypeVar("T")

# The simulated cabinet's signals (grid meter, 4 modules, cable monitor, control): what one interval holds.
CABINET_SIGNALS: list[tuple[str, str, float]] = [
    *[(f"grid.Voltage.L{p}", "V", 230.0) for p in (1, 2, 3)],
    *[(f"grid.Current.Import.L{p}", "A", 40.0) for p in (1, 2, 3)],
    *[(f"grid.Power.Active.Import.L{p}", "W", 9200.0) for p in (1, 2, 3)],
    *[(f"grid.Power.Factor.L{p}", "-", 0.98) for p in (1, 2, 3)],
    ("grid.Power.Active.Import", "W", 27600.0),
    ("grid.Frequency", "Hz", 50.0),
    ("grid.Energy.Active.Import.Register", "kWh", 1234.5),
    ("grid.Energy.Active.Export.Register", "kWh", 0.0),
    *[
        (f"module.{a}.{s}", u, v)
        for a in (1, 2, 3, 4)
        for s, u, v in (
            ("voltage_v", "V", 400.0),
            ("current_a", "A", 50.0),
            ("temperature_c", "°C", 45.0),
            ("present", "", 1.0),
        )
    ],
    ("cable.pin_dc_plus_c", "°C", 55.0),
    ("cable.pin_dc_minus_c", "°C", 54.0),
    ("cable.coolant_in_c", "°C", 30.0),
    ("cable.coolant_out_c", "°C", 35.0),
    ("cable.coolant_flow_lpm", "l/min", 4.0),
    ("cable.coolant_pressure_bar", "bar", 2.0),
    ("cable.leak", "", 0.0),
    ("control.limit_a", "A", 200.0),
]


# a few signals per interval, for tests that move thousands of records
FEW_SIGNALS = [CABINET_SIGNALS[0], CABINET_SIGNALS[3], CABINET_SIGNALS[14], CABINET_SIGNALS[-8], CABINET_SIGNALS[-1]]


def interval_payload(
    i: int, signals: list[tuple[str, str, float]] = CABINET_SIGNALS, readings_per_signal: int = 2
) -> dict[str, Any]:
    s = Sampler()
    for k in range(readings_per_signal):
        for name, unit, base in signals:
            s.add(Reading(name, base + 0.01 * ((i + k) % 100) + 0.1 * math.sin(i), unit, float(i)))
    return {"interval_s": 1.0, "samples": s.flush()}


def compact_records(
    n: int, signals: list[tuple[str, str, float]] = CABINET_SIGNALS, t0_ms: int = 0, cfg: Telemetry | None = None
) -> tuple[list[SignalRow], list[tuple[int, bytes]]]:
    """``n`` one-second intervals of :func:`interval_payload` as a v2 cabinet stores them: the recorder's
    report by exception (:class:`~edge.telemetry.compact.Compactor`, deadbands, ``record_s`` and keyframes
    of ``cfg``, default config) -> (the alias table to put in the store, (t_ms, compact record) per record)."""
    cfg = cfg or Telemetry()
    table: dict[str, SignalRow] = {}

    def alias(name: str, unit: str, exp: int) -> int:
        if name not in table:
            table[name] = SignalRow(len(table) + 1, name, unit, exp)
        return table[name].alias

    deadbands = Deadbands(cfg.deadband_by_unit, cfg.deadband, cfg.deadband_default)
    comp = Compactor(alias, deadbands, cfg.interval_s, cfg.record_s, cfg.keyframe_s)
    out: list[tuple[int, bytes]] = []
    for i in range(n):
        out += comp.add(t0_ms + i * 1000, interval_payload(i, signals)["samples"])
    if (rest := comp.flush()) is not None:
        out.append(rest)
    return list(table.values()), out


class UplinkHarness:
    def __init__(
        self,
        data_dir: Path,
        cfg: Mqtt,
        site: str = "site-1",
        cabinet: str = "cab-1",
        store_max_mb: float = 256.0,
        **kw: Any,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="uplink-harness", daemon=True)
        self.thread.start()
        self.store = self.call(lambda: Store(str(data_dir), store_max_mb))
        self.uplink = Uplink(
            cfg,
            site,
            cabinet,
            self.store,
            **kw,
        )
        self.task: asyncio.Task[None] | None = None

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run ``fn`` on the uplink's loop thread (the store belongs to that thread) and return its result."""

        async def wrap() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout)

    def start(self) -> None:
        self.task = self.call(lambda: self.loop.create_task(self.uplink.run()))

    def append_telemetry(
        self, n: int, start: int = 0, t0_ms: int | None = None, signals: list[tuple[str, str, float]] = CABINET_SIGNALS
    ) -> list[int]:
        t0 = t0_ms or int(time.time() * 1000) - n * 1000
        payloads = [interval_payload(start + i, signals) for i in range(n)]

        def go() -> list[int]:
            return [s for i, p in enumerate(payloads) if (s := self.store.append("telemetry", t0 + i * 1000, p))]

        return self.call(go)

    def append_event(self, kind: str, name: str, **data: Any) -> int:
        payload = {"kind": kind, "name": name, **data}
        seq = self.call(lambda: self.store.append("event", int(time.time() * 1000), payload))
        assert seq
        return seq

    def backlog(self) -> int:
        return self.call(self.store.backlog)

    def stop(self) -> None:
        task = self.task
        if task is not None:
            self.call(task.cancel)
            asyncio.run_coroutine_threadsafe(asyncio.wait([task]), self.loop).result(5)
        self.call(self.store.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
