"""InfyPower REG protocol (V1.13), as implemented by EVerest's InfyPower driver.

125 kbit/s, 29-bit ids, always 8 data bytes. Id layout:
bits 28-26 error code, 25-22 device number (0x0A single module, 0x0B group), 21-16 command,
15-8 destination, 7-0 source (controller 0xF0). Example: set V/I to module 1 -> 0x029C01F0.

Replies come from the module (source = module address) to the controller (destination = 0xF0) with
the command of the request; the module answers our set-output and on/off commands the same way, which
is decoded as an acknowledgement (``ModuleReply.ack``). A reply with a non-zero error code (bits 28-26:
2 command invalid, 3 data invalid, 7 in start processing) carries no values: to a set command it is a
refusal (``ack`` with ``error``: the module heard us and kept its previous set-point), to a read it is
ignored (None).

Capabilities (command 0x0A, asked once after a module appears): four u16 big-endian, maximum output voltage
x1 V, minimum output voltage x1 V, maximum output current x0.1 A, rated power x10 W.

Module temperature: neither the public protocol nor EVerest's V1.13 driver (which reads only bytes 5-7 of the
status reply) defines one. ASSUMPTION, to be checked against the module manual before field use: byte 4
of the status reply is the module temperature in whole °C, unsigned, without offset. If the real field
carried a +40 °C offset we would read 40 °C too hot and derate early: the error is on the safe side,
which is why we do not assume an offset (see docs/CAN.md, "Assumptions").
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.power_modules.codec import Frame, ModuleReply, check_module_config

CONTROLLER = 0xF0
DEVICE_SINGLE = 0x0A
DEVICE_GROUP = 0x0B
BROADCAST = 0x3F
MAX_MODULE_ADDRESS = 0x3E

CMD_MODULE_COUNT = 0x02
CMD_READ_OUTPUT = 0x03
CMD_STATUS = 0x04
CMD_CAPABILITIES = 0x0A
CMD_BARCODE = 0x0B
CMD_OUTPUT_AFTER_DIODE = 0x0C
CMD_ON_OFF = 0x1A
CMD_SET_OUTPUT = 0x1C
SET_COMMANDS = frozenset({CMD_SET_OUTPUT, CMD_ON_OFF})
READ_COMMANDS = frozenset(
    {CMD_MODULE_COUNT, CMD_READ_OUTPUT, CMD_STATUS, CMD_CAPABILITIES, CMD_BARCODE, CMD_OUTPUT_AFTER_DIODE}
)

ZERO8 = bytes(8)
U32_MAX = 0xFFFFFFFF

# status bits: (byte index, bit) -> alarm name (docs/CAN.md; EVerest CanPackets.cpp reads the same bits)
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
ALARM_NAMES = frozenset(STATUS_BITS.values())
# states that are information, not a fault of the module
INFORMATIONAL = frozenset({"sleeping", "dc_side_off", "walk_in", "power_limit", "load_sharing"})
# the module cannot deliver its share: take it out of the split
BLOCKING = ALARM_NAMES - INFORMATIONAL - {"id_repeat", "input_unbalanced"}
TEMPERATURE_BYTE = 4


def make_id(
    command: int, destination: int, source: int = CONTROLLER, device: int = DEVICE_SINGLE, error: int = 0
) -> int:
    return (
        ((error & 0x7) << 26)
        | ((device & 0xF) << 22)
        | ((command & 0x3F) << 16)
        | ((destination & 0xFF) << 8)
        | (source & 0xFF)
    )


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
    mv, ma = int(round(voltage_v * 1000)), int(round(current_a * 1000))
    if not (0 <= mv <= U32_MAX and 0 <= ma <= U32_MAX):
        raise ValueError(f"set-point {voltage_v} V / {current_a} A outside 0..4294967 V/A")
    return struct.pack(">II", mv, ma)


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
        out[TEMPERATURE_BYTE] = max(0, min(255, int(round(temperature_c))))
    return bytes(out)


def decode_status_temperature(data: bytes) -> float:
    """Byte 4 of the status reply, whole °C (ASSUMPTION, see the module docstring)."""
    return float(data[TEMPERATURE_BYTE])


def encode_module_count(count: int) -> bytes:
    return bytes([0, 0, count & 0xFF, 0, 0, 0, 0, 0])


def encode_capabilities(
    max_voltage_v: float, min_voltage_v: float, max_current_a: float, rated_power_w: float
) -> bytes:
    """Four u16 BE: Vmax x1 V, Vmin x1 V, Imax x0.1 A, rated power x10 W."""
    return struct.pack(
        ">HHHH",
        int(round(max_voltage_v)),
        int(round(min_voltage_v)),
        int(round(max_current_a * 10)),
        int(round(rated_power_w / 10)),
    )


def decode_capabilities(data: bytes) -> dict[str, float]:
    """Four u16 BE: Vmax x1 V, Vmin x1 V, Imax x0.1 A, rated power x10 W (keys of ``CAPABILITY_KEYS``)."""
    vmax, vmin, imax, power = struct.unpack(">HHHH", data[:8])
    return {
        "max_voltage_v": float(vmax),
        "min_voltage_v": float(vmin),
        "max_current_a": imax / 10.0,
        "rated_power_w": power * 10.0,
    }


def decode_after_diode(data: bytes) -> dict[str, float]:
    """u16 BE x0.1: voltage outside the output diode, then the current the module can deliver."""
    v, a = struct.unpack(">HH", data[:4])
    return {"voltage_after_diode_v": v / 10.0, "available_current_a": a / 10.0}


class InfyPowerCodec:
    name = "infypower"
    module_comms_timeout_s = 10.0
    # EVerest spaces controller commands 50-200 ms apart; we use the lower bound per module
    command_spacing_s = 0.05
    blocking_alarms = BLOCKING
    alarm_names = ALARM_NAMES

    def __init__(self, controller_address: int = CONTROLLER) -> None:
        self.controller = controller_address

    def _frame(self, command: int, address: int | None, data: bytes) -> Frame:
        if address is None:
            return Frame(make_id(command, BROADCAST, self.controller, DEVICE_GROUP), data)
        if not 0 <= address <= MAX_MODULE_ADDRESS:
            raise ValueError(f"InfyPower module address must be 0..{MAX_MODULE_ADDRESS}, got {address}")
        return Frame(make_id(command, address, self.controller, DEVICE_SINGLE), data)

    def set_output(self, address: int | None, voltage_v: float, current_a: float) -> list[Frame]:
        return [self._frame(CMD_SET_OUTPUT, address, encode_set_output(voltage_v, current_a))]

    def output_on(self, address: int | None, on: bool) -> list[Frame]:
        return [self._frame(CMD_ON_OFF, address, encode_on_off(on))]

    def poll(self, address: int) -> list[Frame]:
        # read requests carry 8 zero bytes, otherwise the module answers with an error
        return [self._frame(CMD_READ_OUTPUT, address, ZERO8), self._frame(CMD_STATUS, address, ZERO8)]

    def discover(self) -> list[Frame]:
        return [self._frame(CMD_MODULE_COUNT, None, ZERO8), self._frame(CMD_STATUS, None, ZERO8)]

    def identify(self, address: int) -> list[Frame]:
        return [self._frame(CMD_CAPABILITIES, address, ZERO8)]

    def reply_mask(self) -> tuple[int, int]:
        return (self.controller << 8, 0xFF << 8)

    def check_config(
        self, addresses: Sequence[int], lost_after_s: float, poll_period_s: float
    ) -> list[tuple[str, str]]:
        return check_module_config(self, addresses, lost_after_s, poll_period_s, (0, MAX_MODULE_ADDRESS))

    def _is_reply(self, fid: InfyId, data: bytes) -> bool:
        return (
            fid.destination == self.controller
            and len(data) == 8
            and fid.device in (DEVICE_SINGLE, DEVICE_GROUP)
            and fid.source <= MAX_MODULE_ADDRESS
        )

    def decode(self, arbitration_id: int, data: bytes) -> ModuleReply | None:
        fid = parse_id(arbitration_id)
        if not self._is_reply(fid, data):
            return None
        addr = fid.source
        data = bytes(data)
        if fid.command in SET_COMMANDS:
            # the module's answer to our command, taken (error 0) or refused: never an unknown frame
            return ModuleReply(addr, ack=True, error=fid.error)
        if fid.error != 0:
            return None  # a read the module refused carries no values
        if fid.command == CMD_READ_OUTPUT:
            v, a = decode_output(data)
            if not (math.isfinite(v) and math.isfinite(a)):  # NaN/inf: a reply we cannot use
                return None
            return ModuleReply(addr, voltage_v=v, current_a=a)
        if fid.command == CMD_STATUS:
            return ModuleReply(addr, alarms=decode_status(data), temperature_c=decode_status_temperature(data))
        if fid.command == CMD_MODULE_COUNT:
            return ModuleReply(addr, module_count=data[2])
        if fid.command == CMD_CAPABILITIES:
            return ModuleReply(addr, capabilities=decode_capabilities(data))
        if fid.command == CMD_OUTPUT_AFTER_DIODE:
            return ModuleReply(addr, extra=decode_after_diode(data))
        return None
