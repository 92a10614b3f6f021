"""A simulated smart meter: a pymodbus server whose registers are refreshed from the physics model.

The register encoding comes from the same model table the daemon reads (so the simulator stays in
step with the tables); the golden-vector tests check the tables against datasheet values separately.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.meters.models import MeterModel
from drivers.meters.registers import encode_value


class SimMeter:
    """Values by signal name; knobs for silence, exception replies and slow replies."""

    def __init__(self, model: MeterModel, device_id: int, values: Callable[[], dict[str, float]]) -> None:
        self.model = model
        self.device_id = device_id
        self.values = values
        self.silent = False
        self.exception: ExcCodes | None = None
        self.delay_s = 0.0
        self.reads = 0
        size = max(r.end for r in model.registers) + 8
        self.device = SimDevice(
            id=device_id,
            simdata=[SimData(0, count=size, values=0, datatype=DataType.REGISTERS)],
            action=self._action,
        )

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        if self.silent:
            await asyncio.sleep(3600)  # never answers; the client times out
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.exception is not None:
            return self.exception
        self.reads += 1
        vals = self.values()
        for reg in self.model.registers:
            if reg.signal in vals:
                words = encode_value(reg, vals[reg.signal])
                off = reg.address - start_address
                registers[off : off + len(words)] = words
        return None


def serial_server(meters: list[SimMeter], port: str, baudrate: int) -> ModbusSerialServer:
    return ModbusSerialServer([m.device for m in meters], port=port, baudrate=baudrate)


def tcp_server(meters: list[SimMeter], host: str, port: int) -> ModbusTcpServer:
    return ModbusTcpServer([m.device for m in meters], address=(host, port))
