"""One Modbus connection (RTU through pyserial, or TCP) shared by every meter on it.

Scheduling, decoding and reading quality live in drivers/meters/poller.py; this module only moves
blocks of registers, safely.

Guarantees:
- one transaction at a time on the line (an asyncio lock), with at least the RTU silent interval
  t3.5 between the end of one exchange and the next request; after a timeout on RTU the same device
  gets no request for as long again, so its late reply cannot pass for the answer to the next one;
- every read has its own timeout (the caller's, adaptive per device) enforced here, not by pymodbus;
- a reply whose CRC or header is wrong raises :class:`MeterCrcError` as soon as the frame is complete,
  instead of the silent discard-and-time-out of pymodbus' RTU framer (we watch the received bytes
  through pymodbus' public ``trace_packet`` hook and check the frame ourselves);
- an exception response raises :class:`MeterExceptionResponse` with its code.

Silent intervals, quiet times and round-trip times are measured with the injected ``clock`` (seconds,
monotonic; default ``time.monotonic``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerRTU

from drivers.meters.planner import Block
from hal.serial import SerialSettings, char_time_s, interframe_gap_s

# pymodbus' own timeout only backs up ours (which cancels the request first).
_LIBRARY_TIMEOUT_S = 10.0


class MeterCommError(RuntimeError):
    """No usable answer: timeout, exception response, or a broken frame."""


class MeterTimeout(MeterCommError):
    """No complete reply within the timeout."""


class MeterCrcError(MeterCommError):
    """A reply arrived but its CRC or header is wrong (noise, collision, wiring)."""


class MeterExceptionResponse(MeterCommError):
    def __init__(self, device_id: int, code: int) -> None:
        super().__init__(f"device {device_id}: exception response code {code}")
        self.code = code


@dataclass
class _Expect:
    device_id: int
    function_code: int
    count: int
    bad: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class LineStats:
    requests: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    exceptions: int = 0
    bytes_out: int = 0
    bytes_in: int = 0


class ModbusLine:
    """One Modbus connection shared by every meter on it: one transaction at a time."""

    def __init__(
        self,
        client: AsyncModbusSerialClient | AsyncModbusTcpClient,
        gap_s: float = 0.0,
        name: str = "line",
        char_time_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.clock = clock  # seconds, monotonic: silent intervals, quiet times, round-trip times
        self.gap_s = gap_s
        self.char_time_s = char_time_s  # wire time of one character; 0 on TCP
        self.name = name
        self.lock = asyncio.Lock()
        self.stats = LineStats()
        self._last_end = 0.0
        self._expect: _Expect | None = None
        self._quiet_until: dict[int, float] = {}

    @classmethod
    def serial(
        cls,
        settings: SerialSettings,
        timeout_s: float = _LIBRARY_TIMEOUT_S,
        name: str = "line",
        clock: Callable[[], float] = time.monotonic,
    ) -> ModbusLine:
        line: ModbusLine
        client = AsyncModbusSerialClient(
            settings.port,
            baudrate=settings.baudrate,
            bytesize=settings.bytesize,
            parity=settings.parity,
            stopbits=settings.stopbits,
            timeout=max(timeout_s, _LIBRARY_TIMEOUT_S),
            retries=0,
            reconnect_delay=0.1,
            reconnect_delay_max=2.0,
            # late binding on purpose: the line object exists only once its client does
            trace_packet=lambda sending, data: line._trace(sending, data),  # noqa: PLW0108
        )
        line = cls(client, interframe_gap_s(settings.baudrate), name, char_time_s(settings.baudrate), clock)
        return line

    @classmethod
    def tcp(
        cls,
        host: str,
        port: int,
        timeout_s: float = _LIBRARY_TIMEOUT_S,
        name: str = "tcp",
        clock: Callable[[], float] = time.monotonic,
    ) -> ModbusLine:
        line: ModbusLine
        client = AsyncModbusTcpClient(
            host,
            port=port,
            timeout=max(timeout_s, _LIBRARY_TIMEOUT_S),
            retries=0,
            reconnect_delay=0.1,
            reconnect_delay_max=2.0,
            trace_packet=lambda sending, data: line._trace(sending, data, crc=False),
        )
        line = cls(client, 0.0, name, clock=clock)
        return line

    def _trace(self, sending: bool, data: bytes, crc: bool = True) -> bytes:
        if sending:
            self.stats.bytes_out += len(data)
            return data
        exp = self._expect
        if exp is None or not crc or len(data) < 5 or data[0] != exp.device_id:
            # another id first: a late reply from another device, which the framer skips
            return data
        if data[1] == exp.function_code | 0x80:
            size = 5
        elif data[1] == exp.function_code and data[2] == 2 * exp.count:
            size = 5 + 2 * exp.count
        else:
            size = 0  # wrong header: garbled once we hold as many bytes as the real reply would have
            if len(data) >= 5 + 2 * exp.count:
                exp.bad.set()
            return data
        if len(data) >= size:
            crc_val = (data[size - 2] << 8) | data[size - 1]
            if not FramerRTU.check_CRC(data[: size - 2], crc_val):
                exp.bad.set()
        return data

    async def read(self, device_id: int, block: Block, timeout_s: float) -> list[int]:
        """Read one block from one device. Raises a :class:`MeterCommError` subclass on failure."""
        return (await self.read_timed(device_id, block, timeout_s))[0]

    async def read_timed(self, device_id: int, block: Block, timeout_s: float) -> tuple[list[int], float]:
        """Like :meth:`read`, also returning the time from request to complete reply, s."""
        quiet = self._quiet_until.get(device_id, 0.0) - self.clock()
        if quiet > 0:
            await asyncio.sleep(quiet)  # outside the lock: the other devices on the line go ahead
        async with self.lock:
            wait = self._last_end + self.gap_s - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            self.stats.requests += 1
            t0 = self.clock()
            try:
                words = await self._read_locked(device_id, block, timeout_s)
                return words, self.clock() - t0
            except MeterTimeout:
                # RTU has no transaction id: a late reply would be taken for the answer to the next
                # request to the same device (replies from other ids are skipped by the framer). So this
                # device gets no request for as long again; the others on the line are not held up.
                if self.char_time_s:
                    self._quiet_until[device_id] = self.clock() + timeout_s
                raise
            finally:
                self._expect = None
                self._last_end = self.clock()

    async def _read_locked(self, device_id: int, block: Block, timeout_s: float) -> list[int]:
        if not self.client.connected:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.client.connect(), timeout_s)
            if not self.client.connected:
                self.stats.timeouts += 1
                raise MeterTimeout(f"{self.name}: not connected")
        exp = self._expect = _Expect(device_id, block.function_code, block.count)
        if block.function_code == 4:
            call = self.client.read_input_registers(block.start, count=block.count, device_id=device_id)
        else:
            call = self.client.read_holding_registers(block.start, count=block.count, device_id=device_id)
        request = asyncio.ensure_future(call)
        bad = asyncio.ensure_future(exp.bad.wait())
        try:
            done, _ = await asyncio.wait({request, bad}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel_and_wait(request, bad)
        if request not in done:
            if bad in done:
                self.stats.crc_errors += 1
                raise MeterCrcError(f"device {device_id}: reply failed CRC/header check")
            self.stats.timeouts += 1
            raise MeterTimeout(f"device {device_id}: no reply within {timeout_s * 1000:.0f} ms")
        try:
            rr = request.result()
        except ModbusException as exc:
            self.stats.timeouts += 1
            raise MeterTimeout(f"device {device_id}: {exc}") from exc
        if rr.isError():
            self.stats.exceptions += 1
            raise MeterExceptionResponse(device_id, int(getattr(rr, "exception_code", 0)))
        if len(rr.registers) != block.count:
            self.stats.crc_errors += 1
            raise MeterCrcError(f"device {device_id}: {len(rr.registers)} registers, wanted {block.count}")
        self.stats.bytes_in += 5 + 2 * block.count
        return list(rr.registers)

    def close(self) -> None:
        self.client.close()


async def _cancel_and_wait(*futures: asyncio.Future[Any]) -> None:
    """Cancel what is still running and wait until it has ended.

    asyncio.wait() neither raises the futures' own CancelledError or exception nor swallows a cancel of
    the caller: suppressing CancelledError around ``await fut`` also ate the caller's cancel when it
    landed during that await, and the meter task then polled on after the daemon had cancelled it.
    """
    running = [f for f in futures if not f.done()]
    for fut in running:
        fut.cancel()
    if running:
        await asyncio.wait(running)
    for fut in futures:
        if not fut.cancelled():
            fut.exception()  # retrieved: a late ModbusException is not logged as "never retrieved"
