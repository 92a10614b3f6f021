"""A simulated smart meter: a pymodbus server whose registers are refreshed from the physics model (or,
stepped in simulated time, :class:`InProcessLine`: the same registers without a server).

The register encoding comes from the same model table the daemon reads (so the simulator stays in
step with the tables); the golden-vector tests check the tables against datasheet values separately.

Only the addresses the table names (and the model's signature register) exist: a read that spans
anything else gets "illegal data address", as a meter that rejects gaps would answer. Models that
accept gaps get their registers grouped into padded blocks, so reading through small gaps works.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.meters.models import MeterModel
from drivers.meters.planner import Block
from drivers.meters.reader import MeterExceptionResponse, MeterTimeout
from drivers.meters.registers import encode_value

GAP_PAD = 32  # registers of padding a gap-tolerant simulated meter answers around its table


def _address_blocks(model: MeterModel) -> list[tuple[int, int]]:
    spans = sorted((r.address, r.end) for r in model.registers)
    if model.signature is not None:
        sig = model.signature.register
        spans = sorted([*spans, (sig.address, sig.end)])
    out: list[list[int]] = []
    pad = 0 if model.rejects_gaps else GAP_PAD
    for start, end in spans:
        if out and start <= out[-1][1] + pad:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    if pad:
        # pad the block ends too, but never into a neighbour or past the address space
        for i, blk in enumerate(out):
            nxt = out[i + 1][0] if i + 1 < len(out) else 0x10000
            blk[1] = min(blk[1] + pad, nxt)
    return [(s, e) for s, e in out]


class SimMeter:
    """Values by signal name; knobs for silence, exception replies, slow replies and raw word overrides."""

    def __init__(self, model: MeterModel, device_id: int, values: Callable[[], dict[str, float]]) -> None:
        self.model = model
        self.device_id = device_id
        self.values = values
        self.silent = False
        self.exception: ExcCodes | None = None
        self.delay_s = 0.0
        self.reads = 0
        self.raw: dict[str, list[int]] = {}  # signal -> words served instead of the encoded value
        self.device = SimDevice(
            id=device_id,
            simdata=[SimData(s, count=e - s, values=0, datatype=DataType.REGISTERS) for s, e in _address_blocks(model)],
            action=self._action,
        )

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.silent:
            raise _NoAnswer()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.exception is not None:
            return self.exception
        self.fill(registers, start_address)
        return None

    def fill(self, registers: list[int], start_address: int) -> None:
        """Write the table's registers that fall inside ``registers`` (starting at ``start_address``)."""
        self.reads += 1
        vals = self.values()
        sig = self.model.signature
        if sig is not None and sig.values:
            self._put(registers, start_address, sig.register.address, encode_value(sig.register, float(sig.values[0])))
        for reg in self.model.registers:
            words = self.raw.get(reg.signal)
            if words is None and reg.signal in vals:
                words = encode_value(reg, vals[reg.signal])
            if words is not None:
                self._put(registers, start_address, reg.address, words)

    @staticmethod
    def _put(registers: list[int], start_address: int, address: int, words: list[int]) -> None:
        off = address - start_address
        if 0 <= off and off + len(words) <= len(registers):
            registers[off : off + len(words)] = words


class _NoAnswer(NoSuchIdException):
    """Raised by a device's action to send nothing: the server runs with ``ignore_missing_devices`` and
    drops the request, so the client times out as on a real line. (Parking the request in a long sleep
    kept one coroutine per poll alive for an hour: 2 MB/h in the soak, docs/RELIABILITY.md.)"""


async def _never_answer(*_args: object) -> ExcCodes | None:
    raise _NoAnswer()


def _devices(meters: list[SimMeter]) -> list[SimDevice]:
    # Id 0 stands for every id not listed. Without it pymodbus' simulator answers unknown ids with an
    # exception; on a real line an absent device is silent, and scans and tests must see that.
    absent = SimDevice(
        id=0, simdata=[SimData(0, count=0x10000, values=0, datatype=DataType.REGISTERS)], action=_never_answer
    )
    return [m.device for m in meters] + [absent]


class InProcessLine:
    """A Modbus line without bytes: the meters on it answer a read at once from :meth:`SimMeter.fill`.

    Duck-types what :meth:`drivers.meters.poller.MeterPoller.poll` needs of a
    :class:`drivers.meters.reader.ModbusLine` (``char_time_s``, ``read_timed``), so the stepped simulator
    (edge/sim/stepper.py) polls through the real poller and decoder with no socket, pty or event loop:
    ``read_timed`` never suspends. A silent meter, or one slower than the timeout, times out; an exception
    knob gives an exception response.
    """

    char_time_s = 0.0  # no wire time

    def __init__(self, meters: list[SimMeter], name: str = "line") -> None:
        self.meters = {m.device_id: m for m in meters}
        self.name = name

    async def read_timed(self, device_id: int, block: Block, timeout_s: float) -> tuple[list[int], float]:
        m = self.meters.get(device_id)
        if m is None or m.silent or m.delay_s >= timeout_s:
            raise MeterTimeout(f"device {device_id}: no reply within {timeout_s * 1000:.0f} ms")
        if m.exception is not None:
            raise MeterExceptionResponse(device_id, int(m.exception))
        registers = [0] * block.count
        m.fill(registers, block.start)
        return registers, m.delay_s


def serial_server(meters: list[SimMeter], port: str, baudrate: int) -> ModbusSerialServer:
    return ModbusSerialServer(_devices(meters), port=port, baudrate=baudrate, ignore_missing_devices=True)


def tcp_server(meters: list[SimMeter], host: str, port: int) -> ModbusTcpServer:
    return ModbusTcpServer(_devices(meters), address=(host, port), ignore_missing_devices=True)
