"""UUGreen UR1000x0 charging modules (docs/CAN.md "UUGreen UR1000x0").

29-bit id: bits 28-25 protocol (1), bits 24-21 monitor (controller) address (1), bits 20-14 module
address (0 = broadcast), bits 13-0 zero. Module 1 -> 0x02204000. Replies carry the same id layout with
the answering module's address.

Data: byte 0 = (group << 4) | type (0 set, 1 set response, 2 read, 3 read response); byte 1 command;
bytes 2-3 zero; bytes 4-7 a u32 big-endian value. Commands used: 0 Vout, 1 Iout, 2 Vout reference (mV),
3 Iout limit (mA), 4 DCDC shutdown (0 on, 1 off), 8 module status, 30 input temperature.

ASSUMPTIONS (the public protocol does not say; check against the UR1000x0 manual before field use):
- read replies of Vout and Iout are in mV and mA like the set-points;
- the input temperature is a signed 32-bit value in milli-°C;
- the status word's bit names are not public: every set bit is reported as ``status_bit_<n>`` and
  takes the module out of the split (fail safe);
- the module's own comms watchdog is 10 s like InfyPower's, and commands are spaced 50 ms apart.
Capabilities: the public protocol has no command that reports a module's voltage range, current or
power, so :meth:`UUGreenCodec.identify` asks for nothing and the configured ``power_modules.max_current_a``
and ``max_voltage_v`` are the only per-module figures (set them to the module's rating).
The high/low voltage mode (command 95) needs "off, wait 2 s, switch, wait 2 s, on": it is not used by
the control path; the cabinet runs the modules in the mode they were commissioned in.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.power_modules.codec import Frame, ModuleReply, check_module_config

PROTOCOL = 1
MONITOR = 1
BROADCAST = 0
MAX_MODULE_ADDRESS = 0x7F

TYPE_SET, TYPE_SET_RESPONSE, TYPE_READ, TYPE_READ_RESPONSE = 0, 1, 2, 3

CMD_VOUT = 0
CMD_IOUT = 1
CMD_VREF = 2
CMD_ILIMIT = 3
CMD_SHUTDOWN = 4
CMD_STATUS = 8
CMD_INPUT_TEMPERATURE = 30

U32_MAX = 0xFFFFFFFF
STATUS_BIT_NAMES = tuple(f"status_bit_{n}" for n in range(32))
ALARM_NAMES = frozenset(STATUS_BIT_NAMES)


def make_id(module: int, protocol: int = PROTOCOL, monitor: int = MONITOR) -> int:
    return ((protocol & 0xF) << 25) | ((monitor & 0xF) << 21) | ((module & 0x7F) << 14)


@dataclass(frozen=True)
class UUId:
    protocol: int
    monitor: int
    module: int
    low: int  # bits 13-0, zero in every frame we know


def parse_id(arbitration_id: int) -> UUId:
    return UUId(
        protocol=(arbitration_id >> 25) & 0xF,
        monitor=(arbitration_id >> 21) & 0xF,
        module=(arbitration_id >> 14) & 0x7F,
        low=arbitration_id & 0x3FFF,
    )


def encode_data(kind: int, command: int, value: int = 0, group: int = 0) -> bytes:
    if not 0 <= value <= U32_MAX:
        raise ValueError(f"UUGreen value {value} outside u32")
    return bytes([((group & 0xF) << 4) | (kind & 0xF), command & 0xFF, 0, 0]) + struct.pack(">I", value)


def decode_data(data: bytes) -> tuple[int, int, int, int]:
    """(group, type, command, u32 value)."""
    return data[0] >> 4, data[0] & 0xF, data[1], struct.unpack(">I", data[4:8])[0]


def _milli(value: float, what: str) -> int:
    raw = int(round(value * 1000))
    if not 0 <= raw <= U32_MAX:
        raise ValueError(f"UUGreen {what} {value} outside 0..4294967")
    return raw


def decode_status_word(word: int) -> frozenset[str]:
    return frozenset(STATUS_BIT_NAMES[n] for n in range(32) if word >> n & 1)


class UUGreenCodec:
    name = "uugreen"
    module_comms_timeout_s = 10.0
    command_spacing_s = 0.05
    blocking_alarms = ALARM_NAMES
    alarm_names = ALARM_NAMES

    def __init__(self, monitor_address: int = MONITOR, group: int = 0) -> None:
        self.monitor = monitor_address
        self.group = group

    def _frame(self, address: int | None, kind: int, command: int, value: int = 0) -> Frame:
        if address is not None and not 1 <= address <= MAX_MODULE_ADDRESS:
            raise ValueError(f"UUGreen module address must be 1..{MAX_MODULE_ADDRESS}, got {address}")
        module = BROADCAST if address is None else address
        return Frame(make_id(module, monitor=self.monitor), encode_data(kind, command, value, self.group))

    def set_output(self, address: int | None, voltage_v: float, current_a: float) -> list[Frame]:
        # current first: when the set-point goes down, the lower current is in force before anything else
        return [
            self._frame(address, TYPE_SET, CMD_ILIMIT, _milli(current_a, "current")),
            self._frame(address, TYPE_SET, CMD_VREF, _milli(voltage_v, "voltage")),
        ]

    def output_on(self, address: int | None, on: bool) -> list[Frame]:
        return [self._frame(address, TYPE_SET, CMD_SHUTDOWN, 0 if on else 1)]

    def poll(self, address: int) -> list[Frame]:
        return [self._frame(address, TYPE_READ, cmd) for cmd in (CMD_VOUT, CMD_IOUT, CMD_STATUS, CMD_INPUT_TEMPERATURE)]

    def discover(self) -> list[Frame]:
        return [self._frame(None, TYPE_READ, CMD_STATUS)]

    def identify(self, address: int) -> list[Frame]:
        return []  # no capabilities command in the public protocol: the configured maxima stand alone

    def reply_mask(self) -> tuple[int, int]:
        return (make_id(0, monitor=self.monitor), (0xF << 25) | (0xF << 21))

    def check_config(
        self, addresses: Sequence[int], lost_after_s: float, poll_period_s: float
    ) -> list[tuple[str, str]]:
        # address 0 is the broadcast address
        return check_module_config(self, addresses, lost_after_s, poll_period_s, (1, MAX_MODULE_ADDRESS))

    def _is_module_frame(self, fid: UUId, data: bytes) -> bool:
        return (
            fid.protocol == PROTOCOL
            and fid.monitor == self.monitor
            and fid.low == 0
            and fid.module != BROADCAST
            and len(data) == 8
        )

    def decode(self, arbitration_id: int, data: bytes) -> ModuleReply | None:
        fid = parse_id(arbitration_id)
        if not self._is_module_frame(fid, data):
            return None
        _group, kind, command, value = decode_data(bytes(data))
        if kind == TYPE_SET_RESPONSE:
            return ModuleReply(fid.module, ack=True)
        if kind != TYPE_READ_RESPONSE:
            return None  # requests (ours or another monitor's) carry no state
        addr = fid.module
        if command == CMD_VOUT:
            return ModuleReply(addr, voltage_v=value / 1000.0)
        if command == CMD_IOUT:
            return ModuleReply(addr, current_a=value / 1000.0)
        if command == CMD_STATUS:
            return ModuleReply(addr, alarms=decode_status_word(value), extra={"status_word": float(value)})
        if command == CMD_INPUT_TEMPERATURE:
            signed = value - (1 << 32) if value & 0x80000000 else value
            return ModuleReply(addr, temperature_c=signed / 1000.0)
        return ModuleReply(addr)  # a read reply we do not use still proves the module is there
