"""Test harness: simulated meters behind a pymodbus server on a pty (RTU through pyserial) or loopback TCP.

Not a test module; imported by tests/test_meter_*.py and bench/modbus.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from drivers.meters.models import MeterModel, generic_model
from drivers.meters.planner import Block
from drivers.meters.reader import MeterCommError, ModbusLine
from edge.sim.meter import SimMeter, serial_server, tcp_server
from edge.sim.serial_link import SerialLink
from hal.serial import SerialSettings
from tests.conftest import free_port, until, wait_for

VALUES: dict[str, float] = {
    "Voltage.L1": 230.1,
    "Voltage.L2": 231.4,
    "Voltage.L3": 229.8,
    "Current.Import.L1": 10.5,
    "Current.Import.L2": 11.25,
    "Current.Import.L3": 9.0,
    "Power.Active.Import.L1": 2400.0,
    "Power.Active.Import.L2": 2550.5,
    "Power.Active.Import.L3": -1500.0,
    "Power.Active.Import": 3450.5,
    "Power.Factor.L1": 0.98,
    "Power.Factor.L2": -0.5,
    "Power.Factor.L3": 1.0,
    "Frequency": 50.0,
    "Energy.Active.Import.Register": 1234.5,
    "Energy.Active.Export.Register": 12.5,
}

GENERIC = generic_model(
    "generic:sub",
    [
        {"signal": "Voltage.L1", "address": 0x100, "type": "u32", "scale": 0.1, "unit": "V", "function_code": 3},
        {
            "signal": "Current.Import.L1",
            "address": 0x104,
            "type": "s32",
            "scale": 0.001,
            "unit": "A",
            "function_code": 3,
            "word_order": "little",
        },
        {"signal": "Power.Active.Import", "address": 0x110, "type": "float32", "unit": "W", "function_code": 3},
        {
            "signal": "Energy.Active.Import.Register",
            "address": 0x200,
            "type": "u64",
            "scale": 0.01,
            "unit": "kWh",
            "function_code": 3,
        },
    ],
    rejects_gaps=True,
)


class MeterBench:
    """``async with MeterBench([(model, id), ...]) as b:`` -> b.line, b.sims[id], b.link (RTU only)."""

    def __init__(
        self,
        meters: list[tuple[MeterModel, int]],
        tcp: bool = False,
        baudrate: int = 115200,
        pace: bool = False,
        values: dict[str, float] | None = None,
    ) -> None:
        self.values = dict(VALUES if values is None else values)
        self.sims = {dev: SimMeter(model, dev, lambda: self.values) for model, dev in meters}
        self.tcp = tcp
        self.baudrate = baudrate
        self.link: SerialLink | None = None if tcp else SerialLink(baudrate if pace else None)
        self.server: Any = None
        self._task: asyncio.Future[Any] | None = None
        self.line: ModbusLine

    async def __aenter__(self) -> MeterBench:
        if self.link is not None:
            self.link.start()
            self.server = serial_server(list(self.sims.values()), self.link.device_path, self.baudrate)
            self.line = ModbusLine.serial(SerialSettings(self.link.host_path, self.baudrate), name="rs485")
        else:
            port = free_port()
            self.server = tcp_server(list(self.sims.values()), "127.0.0.1", port)
            self.line = ModbusLine.tcp("127.0.0.1", port, name="tcp")
        self._task = asyncio.ensure_future(self.server.serve_forever())
        first = next(iter(self.sims.values()))
        reg = first.model.registers[0]
        probe = Block(reg.function_code, reg.address, reg.words, (reg,))

        async def answers() -> bool:
            with contextlib.suppress(MeterCommError):
                await self.line.read(first.device_id, probe, 0.2)
                return True
            return False

        await until(answers, 5.0, "the simulated meter server to answer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.line.close()
        await self.server.shutdown()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.link is not None:
            self.link.close()


class ServerThread:
    """A pymodbus server on its own loop in a thread (the scan command runs its own asyncio.run)."""

    def __init__(
        self, meters: list[tuple[MeterModel, int]], tcp: bool, baudrate: int = 9600, pace: bool = False
    ) -> None:
        self.sims = [SimMeter(m, dev, lambda: VALUES) for m, dev in meters]
        self.tcp = tcp
        self.baudrate = baudrate
        self.link = None if tcp else SerialLink(baudrate if pace else None)
        self.port = free_port() if tcp else 0
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.server: Any = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        if self.link is not None:
            self.server = serial_server(self.sims, self.link.device_path, self.baudrate)
        else:
            self.server = tcp_server(self.sims, "127.0.0.1", self.port)
        task = asyncio.ensure_future(self.server.serve_forever())
        self.started.set()
        await task

    def __enter__(self) -> ServerThread:
        if self.link is not None:
            self.link.start()
        self.thread.start()
        assert self.started.wait(5)
        wait_for(self._answers, 5, what="simulated meters answering")
        return self

    def _answers(self) -> bool:
        async def probe() -> bool:
            if self.link is not None:
                line = ModbusLine.serial(SerialSettings(self.link.host_path, self.baudrate), name="probe")
            else:
                line = ModbusLine.tcp("127.0.0.1", self.port, name="probe")
            sim = self.sims[0]
            reg = sim.model.registers[0]
            try:
                await line.read(sim.device_id, Block(reg.function_code, reg.address, reg.words, (reg,)), 0.5)
                return True
            except MeterCommError:
                return False
            finally:
                line.close()

        return asyncio.run(probe())

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(5)
        self.thread.join(5)
        if self.link is not None:
            self.link.close()
