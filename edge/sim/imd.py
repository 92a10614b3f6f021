"""A simulated insulation monitor (Bender isoCHA register table): a pymodbus server, or read in process.

Knobs (plain attributes, reachable from tests and the simulator): ``resistance_ohm`` (the insulation the
device measures), ``self_test_fails`` (the next self-test ends in a device error), ``device_error``
(a device error now), ``silent`` (no answer), ``self_test_s`` (how long a test runs; the real device
takes up to ~20 s, firmware 5.00 and later a few seconds). The voltage channel follows ``voltage_v()``
(the simulated output voltage).

The register encoding is the driver's table (drivers/isolation/registers.py), so simulator and driver stay
in step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.isolation import registers as regs
from drivers.meters.planner import Block
from drivers.meters.reader import MeterTimeout
from edge.sim.meter import _never_answer, _NoAnswer

# address ranges the device answers (holding registers): channels, settings, self-test, identity
_BLOCKS = ((1000, 1032), (3000, 3032), (8000, 8010), (9800, 9830))
DESC_RF = 71
DESC_VOLTAGE = 76


class SimImd:
    def __init__(
        self,
        device_id: int = 3,
        resistance_ohm: float = 5e6,
        voltage_v: Callable[[], float] = lambda: 0.0,
        clock: Callable[[], float] = time.monotonic,
        self_test_s: float = 0.5,
        name: str = "isoCHA425HV",
        firmware: int = 510,
    ) -> None:
        self.device_id = device_id
        self.resistance_ohm = resistance_ohm
        self.voltage_v = voltage_v
        self.clock = clock
        self.self_test_s = self_test_s
        self.self_test_fails = False
        self.device_error = False
        self.silent = False
        self.measuring = True  # register 3026
        self.name = name
        self.firmware = firmware
        self.self_tests = 0  # started since construction
        self.writes: list[tuple[int, int]] = []
        self._test_until: float | None = None
        self._test_failed = False
        self.device = SimDevice(
            id=device_id,
            simdata=[SimData(s, count=e - s, values=0, datatype=DataType.REGISTERS) for s, e in _BLOCKS],
            action=self._action,
        )

    # -- the device's behaviour ------------------------------------------------------------------------
    def write(self, address: int, value: int) -> None:
        self.writes.append((address, value))
        if address == regs.SELF_TEST_REGISTER and value == regs.SELF_TEST_VALUE:
            self.self_tests += 1
            self._test_until = self.clock() + self.self_test_s
            self._test_failed = self.self_test_fails
        elif address == regs.DEVICE_ON_REGISTER:
            self.measuring = bool(value)

    def _testing(self) -> bool:
        return self._test_until is not None and self.clock() < self._test_until

    def _alarm(self) -> str:
        if self._testing():
            return "none"
        if self.device_error or (self._test_until is not None and self._test_failed):
            return "device_error"
        return "none"

    def words(self, address: int, count: int) -> list[int]:
        """The registers ``address .. address + count - 1`` as the device would answer them now."""
        out = [0] * count
        test = "external" if self._testing() else "none"
        alarm = self._alarm()
        rng = "exact" if self.measuring and test == "none" else "invalid"
        table = {
            regs.CHANNELS["resistance_ohm"]: regs.encode_channel(
                self.resistance_ohm, regs.UNIT_OHM, alarm, test, rng, DESC_RF
            ),
            regs.CHANNELS["voltage_v"]: regs.encode_channel(
                self.voltage_v(), regs.UNIT_VOLT, alarm, test, "exact", DESC_VOLTAGE
            ),
            regs.DEVICE_NAME[0]: regs.encode_ascii(self.name, regs.DEVICE_NAME[1]),
            regs.FIRMWARE[0]: [1, self.firmware, 2024, 1, 1, 1],
            regs.DEVICE_ON_REGISTER: [1 if self.measuring else 0],
        }
        for start, words in table.items():
            for i, w in enumerate(words):
                off = start + i - address
                if 0 <= off < count:
                    out[off] = w
        return out

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
        if set_values:
            for i, v in enumerate(set_values):
                self.write(address + i, int(v))
            return None
        registers[:] = self.words(start_address, len(registers))
        return None


class InProcessImdLine:
    """The IMDs of one line without bytes (the stepped simulator): answers at once, never suspends."""

    def __init__(self, imds: list[SimImd]) -> None:
        self.imds = {m.device_id: m for m in imds}

    def _imd(self, device_id: int, timeout_s: float) -> SimImd:
        m = self.imds.get(device_id)
        if m is None or m.silent:
            raise MeterTimeout(f"device {device_id}: no reply within {timeout_s * 1000:.0f} ms")
        return m

    async def read(self, device_id: int, block: Block, timeout_s: float) -> list[int]:
        return self._imd(device_id, timeout_s).words(block.start, block.count)

    async def write_register(self, device_id: int, address: int, value: int, timeout_s: float) -> None:
        self._imd(device_id, timeout_s).write(address, value)


def _devices(imds: list[SimImd]) -> list[SimDevice]:
    absent = SimDevice(
        id=0, simdata=[SimData(0, count=0x10000, values=0, datatype=DataType.REGISTERS)], action=_never_answer
    )
    return [m.device for m in imds] + [absent]


def serial_server(imds: list[SimImd], port: str, baudrate: int) -> ModbusSerialServer:
    return ModbusSerialServer(_devices(imds), port=port, baudrate=baudrate, ignore_missing_devices=True)


def tcp_server(imds: list[SimImd], host: str, port: int) -> ModbusTcpServer:
    return ModbusTcpServer(_devices(imds), address=(host, port), ignore_missing_devices=True)
