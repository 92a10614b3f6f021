"""Read one meter over a shared Modbus line (RTU through pyserial, or TCP) and decode its table."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.meters.models import MeterModel
from drivers.meters.planner import Block, plan_blocks
from drivers.meters.registers import DecodeError, decode_words
from drivers.readings import INVALID, OK, Reading
from hal.serial import SerialSettings, interframe_gap_s

log = logging.getLogger(__name__)


class MeterCommError(RuntimeError):
    """No usable answer: timeout, exception response, or a broken frame."""


class ModbusLine:
    """One Modbus connection shared by every meter on it: one transaction at a time."""

    def __init__(self, client: AsyncModbusSerialClient | AsyncModbusTcpClient, gap_s: float = 0.0) -> None:
        self.client = client
        self.gap_s = gap_s
        self.lock = asyncio.Lock()
        self._last_end = 0.0

    @classmethod
    def serial(cls, settings: SerialSettings, timeout_s: float) -> ModbusLine:
        client = AsyncModbusSerialClient(
            settings.port,
            baudrate=settings.baudrate,
            bytesize=settings.bytesize,
            parity=settings.parity,
            stopbits=settings.stopbits,
            timeout=timeout_s,
            retries=0,
            reconnect_delay=0.1,
            reconnect_delay_max=2.0,
        )
        return cls(client, interframe_gap_s(settings.baudrate))

    @classmethod
    def tcp(cls, host: str, port: int, timeout_s: float) -> ModbusLine:
        return cls(AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0))

    async def read(self, device_id: int, block: Block) -> list[int]:
        async with self.lock:
            wait = self._last_end + self.gap_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                if not self.client.connected:
                    await self.client.connect()
                    if not self.client.connected:
                        raise MeterCommError("line not connected")
                if block.function_code == 4:
                    rr = await self.client.read_input_registers(block.start, count=block.count, device_id=device_id)
                else:
                    rr = await self.client.read_holding_registers(block.start, count=block.count, device_id=device_id)
            except ModbusException as exc:
                raise MeterCommError(f"device {device_id}: {exc}") from exc
            finally:
                self._last_end = time.monotonic()
            if rr.isError():
                raise MeterCommError(f"device {device_id}: exception response {rr}")
            if len(rr.registers) != block.count:
                raise MeterCommError(f"device {device_id}: {len(rr.registers)} registers, wanted {block.count}")
            return list(rr.registers)

    def close(self) -> None:
        self.client.close()


@dataclass
class MeterReader:
    name: str
    model: MeterModel
    line: ModbusLine
    device_id: int
    blocks: list[Block] = field(init=False)

    def __post_init__(self) -> None:
        self.blocks = plan_blocks(
            self.model.registers, self.model.max_registers_per_request, allow_gaps=not self.model.rejects_gaps
        )

    async def poll(self) -> list[Reading]:
        """Read every register of the model once. Raises :class:`MeterCommError` when the meter fails."""
        readings: list[Reading] = []
        for block in self.blocks:
            words = await self.line.read(self.device_id, block)
            now = time.monotonic()
            for reg in block.registers:
                off = reg.address - block.start
                try:
                    value = decode_words(reg, words[off : off + reg.words])
                    quality = OK
                except DecodeError as exc:
                    log.warning("meter %s: %s", self.name, exc)
                    value, quality = float("nan"), INVALID
                readings.append(Reading(f"{self.name}.{reg.signal}", value, reg.unit, now, quality))
        return readings
