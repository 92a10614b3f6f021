"""Driver of a Bender isoCHA-family insulation monitor on a Modbus line (RTU or TCP).

Reads the insulation resistance and the voltage the device sees, its alarm and test state; starts the
self-test; switches measuring on and off. The register table is data (drivers/isolation/registers.py);
the transport is the meters' :class:`drivers.meters.reader.ModbusLine` (one transaction at a time, the
RTU silent interval, CRC and timeouts), so an IMD can share the meters' RS-485 line.

Self-test (as the device reports it): after the start command the test bits read "external" while the
test runs; once they read "none" again the test passed unless the device reports a device error. No
change within ``self_test_timeout_s``: failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from drivers.isolation import registers as regs
from drivers.meters.planner import Block
from drivers.meters.reader import MeterCommError, MeterTimeout, ModbusLine

OK, FAULT, SELF_TEST = "ok", "fault", "self_test"  # ImdReading.status


class ImdLine(Protocol):
    """What the driver needs of a line: :class:`ModbusLine`, or an in-process simulated line that also has
    ``write_register(device_id, address, value, timeout_s)``."""

    async def read(self, device_id: int, block: Block, timeout_s: float) -> list[int]: ...


@dataclass(frozen=True)
class ImdReading:
    t: float  # monotonic s at the reply
    resistance_ohm: float | None  # None: the device marks the value invalid (or a test runs)
    voltage_v: float | None
    status: str  # OK, FAULT (device error) or SELF_TEST (a test runs: no insulation value)
    alarm: str  # registers.ALARMS value of the resistance channel
    self_test: str | None  # None (none asked), "running", "passed", "failed"


class ImdDriver:
    """One IMD at ``device_id`` on ``line``. Every method raises :class:`MeterCommError` on no answer."""

    def __init__(
        self,
        line: ImdLine,
        device_id: int,
        timeout_s: float = 0.5,
        self_test_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.line = line
        self.device_id = device_id
        self.timeout_s = timeout_s
        self.self_test_timeout_s = self_test_timeout_s
        self.clock = clock
        self.self_test: str | None = None
        self._test_t0 = 0.0
        self._test_seen = False  # the device has reported the test running at least once

    async def _channel(self, name: str) -> regs.Channel:
        block = Block(regs.FUNCTION_CODE_READ, regs.CHANNELS[name], regs.CHANNEL_WORDS, ())
        return regs.decode_channel(await self.line.read(self.device_id, block, self.timeout_s))

    async def read(self) -> ImdReading:
        """One reading: resistance channel, then voltage channel."""
        rf = await self._channel("resistance_ohm")
        un = await self._channel("voltage_v")
        now = self.clock()
        testing = rf.test != "none"
        fault = rf.alarm == "device_error"
        self._follow_self_test(testing, fault, now)
        status = FAULT if fault else (SELF_TEST if testing else OK)
        return ImdReading(
            t=now,
            resistance_ohm=rf.value if rf.valid and not testing else None,
            voltage_v=un.value if un.valid else None,
            status=status,
            alarm=rf.alarm,
            self_test=self.self_test,
        )

    def _follow_self_test(self, testing: bool, fault: bool, now: float) -> None:
        if self.self_test != "running":
            return
        if testing:
            self._test_seen = True
        elif self._test_seen:
            self.self_test = "failed" if fault else "passed"
            return
        if now - self._test_t0 > self.self_test_timeout_s:
            self.self_test = "failed"

    async def start_self_test(self) -> None:
        await self._write(regs.SELF_TEST_REGISTER, regs.SELF_TEST_VALUE)
        self.self_test = "running"
        self._test_seen = False
        self._test_t0 = self.clock()

    async def set_measuring(self, on: bool) -> None:
        await self._write(regs.DEVICE_ON_REGISTER, 1 if on else 0)

    async def identify(self) -> tuple[str, int]:
        """(device name, firmware version, e.g. 500 for 5.00)."""
        start, count = regs.DEVICE_NAME
        name = await self.line.read(self.device_id, Block(regs.FUNCTION_CODE_READ, start, count, ()), self.timeout_s)
        start, count = regs.FIRMWARE
        fw = await self.line.read(self.device_id, Block(regs.FUNCTION_CODE_READ, start, count, ()), self.timeout_s)
        return regs.decode_ascii(name), fw[1]

    async def _write(self, address: int, value: int) -> None:
        write = getattr(self.line, "write_register", None)  # an in-process line (the stepped simulator)
        if write is not None:
            await write(self.device_id, address, value, self.timeout_s)
        elif isinstance(self.line, ModbusLine):
            await write_register(self.line, self.device_id, address, value, self.timeout_s)
        else:
            raise TypeError(f"cannot write registers through {self.line!r}")


async def write_register(line: ModbusLine, device_id: int, address: int, value: int, timeout_s: float) -> None:
    """One register, function code 16, under the line's lock (one transaction at a time, the RTU gap)."""
    async with line.lock:
        wait = line._last_end + line.gap_s - line.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            if not line.client.connected:
                await asyncio.wait_for(line.client.connect(), timeout_s)
            rr = await asyncio.wait_for(line.client.write_registers(address, [value], device_id=device_id), timeout_s)
        except (TimeoutError, OSError) as exc:
            raise MeterTimeout(f"device {device_id}: write {address} timed out") from exc
        except Exception as exc:  # pymodbus' ModbusException and friends
            raise MeterCommError(f"device {device_id}: write {address}: {exc}") from exc
        finally:
            line._last_end = line.clock()
    if rr.isError():
        raise MeterCommError(f"device {device_id}: write {address} refused")
