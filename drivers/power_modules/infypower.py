"""InfyPower REG protocol (V1.13), as implemented by EVerest's InfyPower driver.

125 kbit/s, 29-bit ids, always 8 data bytes. Id layout:
bits 28-26 error code, 25-22 device number (0x0A single module, 0x0B group), 21-16 command,
15-8 destination, 7-0 source (controller 0xF0). Example: set V/I to module 1 -> 0x029C01F0.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from drivers.power_modules.codec import Frame, ModuleReply

CONTROLLER = 0xF0
DEVICE_SINGLE = 0x0A
DEVICE_GROUP = 0x0B
BROADCAST = 0x3F

CMD_MODULE_COUNT = 0x02
CMD_READ_OUTPUT = 0x03
CMD_STATUS = 0x04
CMD_CAPABILITIES = 0x0A
CMD_OUTPUT_AFTER_DIODE = 0x0C
CMD_ON_OFF = 0x1A
CMD_SET_OUTPUT = 0x1C

ZERO8 = bytes(8)

# status bits: (byte index, bit) -> alarm name
STATUS_BITS: dict[tuple[int, int], str] = {
    (7, 0): "output_short",
    (7, 4): "sleeping",
    (7, 5): "discharge_abnormal",
    (6, 0): "dc_side_off",
    (6, 1): "fault",
    (6, 2): "protection",
    (6, 3): "fan_fault",
    (6, 4): "over_temperature",
    (6, 5): "output_over_voltage",
    (6, 6): "walk_in",
    (6, 7): "comms_interrupted",
    (5, 0): "power_limit",
    (5, 1): "id_repeat",
    (5, 2): "load_sharing",
    (5, 3): "phase_lost",
    (5, 4): "input_unbalanced",
    (5, 5): "input_under_voltage",
    (5, 6): "input_over_voltage",
    (5, 7): "pfc_off",
}
# states that are information, not a fault of the module
INFORMATIONAL = frozenset({"sleeping", "dc_side_off", "walk_in", "power_limit", "load_sharing"})


def make_id(command: int, destination: int, source: int = CONTROLLER, device: int = DEVICE_SINGLE,
            error: int = 0) -> int:
    return ((error & 0x7) << 26) | ((device & 0xF) << 22) | ((command & 0x3F) << 16) | \
        ((destination & 0xFF) << 8) | (source & 0xFF)


@dataclass(frozen=True)
class InfyId:
    error: int
    device: int
    command: int
    destination: int
    source: int


def parse_id(arbitration_id: int) -> InfyId:
    return InfyId(
        error=(arbitration_id >> 26) & 0x7,
        device=(arbitration_id >> 22) & 0xF,
        command=(arbitration_id >> 16) & 0x3F,
        destination=(arbitration_id >> 8) & 0xFF,
        source=arbitration_id & 0xFF,
    )


def encode_set_output(voltage_v: float, current_a: float) -> bytes:
    """Two u32 big-endian: millivolts then milliamps. 500 V / 20 A -> 00 07 A1 20 00 00 4E 20."""
    if voltage_v < 0 or current_a < 0:
        raise ValueError("voltage and current set-points must be >= 0")
    return struct.pack(">II", int(round(voltage_v * 1000)), int(round(current_a * 1000)))


def decode_set_output(data: bytes) -> tuple[float, float]:
    mv, ma = struct.unpack(">II", data[:8])
    return mv / 1000.0, ma / 1000.0


def encode_on_off(on: bool) -> bytes:
    return bytes([0x00 if on else 0x01]) + bytes(7)


def decode_output(data: bytes) -> tuple[float, float]:
    """Read-output reply: two IEEE float32 big-endian, volts then amps."""
    v, a = struct.unpack(">ff", data[:8])
    return float(v), float(a)


def encode_output(voltage_v: float, current_a: float) -> bytes:
    return struct.pack(">ff", voltage_v, current_a)


def decode_status(data: bytes) -> frozenset[str]:
    return frozenset(name for (byte, bit), name in STATUS_BITS.items() if data[byte] >> bit & 1)


def encode_status(alarms: frozenset[str] | set[str], temperature_c: float | None = None) -> bytes:
    out = bytearray(8)
    for (byte, bit), name in STATUS_BITS.items():
        if name in alarms:
            out[byte] |= 1 << bit
    if temperature_c is not None:
        out[4] = max(0, min(255, int(round(temperature_c + 40))))
    return bytes(out)


def decode_status_temperature(data: bytes) -> float:
    """Byte 4 of the status reply: module temperature, offset -40 °C.

    ASSUMPTION: PROTOCOLS.md names no temperature field in the status reply; this layout is ours and
    must be checked against the module manual before field use (see docs/CAN.md).
    """
    return float(data[4]) - 40.0


class InfyPowerCodec:
    name = "infypower"
    module_comms_timeout_s = 10.0
    command_spacing_s = 0.05

    def __init__(self, controller_address: int = CONTROLLER) -> None:
        self.controller = controller_address

    def _frame(self, command: int, address: int | None, data: bytes) -> Frame:
        if address is None:
            return Frame(make_id(command, BROADCAST, self.controller, DEVICE_GROUP), data)
        return Frame(make_id(command, address, self.controller, DEVICE_SINGLE), data)

    def set_output(self, address: int | None, voltage_v: float, current_a: float) -> list[Frame]:
        return [self._frame(CMD_SET_OUTPUT, address, encode_set_output(voltage_v, current_a))]

    def output_on(self, address: int | None, on: bool) -> list[Frame]:
        return [self._frame(CMD_ON_OFF, address, encode_on_off(on))]

    def poll(self, address: int) -> list[Frame]:
        # read requests carry 8 zero bytes, otherwise the module answers with an error
        return [self._frame(CMD_READ_OUTPUT, address, ZERO8), self._frame(CMD_STATUS, address, ZERO8)]

    def reply_mask(self) -> tuple[int, int]:
        return (self.controller << 8, 0xFF << 8)

    def decode(self, arbitration_id: int, data: bytes) -> ModuleReply | None:
        fid = parse_id(arbitration_id)
        if fid.destination != self.controller or len(data) != 8 or fid.error != 0:
            return None
        addr = fid.source
        if fid.command == CMD_READ_OUTPUT:
            v, a = decode_output(data)
            return ModuleReply(addr, voltage_v=v, current_a=a)
        if fid.command == CMD_STATUS:
            return ModuleReply(addr, alarms=decode_status(data), temperature_c=decode_status_temperature(data))
        if fid.command == CMD_MODULE_COUNT:
            return ModuleReply(addr, module_count=data[2])
        return None
