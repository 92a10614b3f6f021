"""Register table of the Bender isoCHA425HV / iso175 family (Modbus RTU, holding registers), as data.

Sources: Bender's public Modbus description of the isoCHA425HV, as EVerest's Bender driver uses it.

Every measurement channel is four holding registers (function code 3):

====  ===========================================================================================
word  meaning
====  ===========================================================================================
0, 1  value, IEEE 754 float32, high word first
2     high byte: alarm (bits 0-2: 0 none, 1 pre-warning, 2 device error, 4 warning, 5 alarm) and
      test (bits 6-7: 0 none, 1 internal self-test, 2 external self-test running);
      low byte: unit (bits 0-4: 2 = Ohm, 4 = V) and range (bits 6-7: 0 exact, 1 true value smaller,
      2 true value bigger, 3 invalid)
3     channel description code (71 = insulation fault R_F, 76 = voltage, 115 = device error)
====  ===========================================================================================

Commands are single-register writes (function code 16). Defaults of the device: 19200 baud, 8E1, id 3.
Pure: encode and decode only; the driver (drivers/isolation/imd.py) moves the words.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CHANNEL_WORDS = 4
FUNCTION_CODE_READ = 3  # holding registers
FUNCTION_CODE_WRITE = 16  # write multiple registers (one word at a time)

# measurement channels: name -> first register
CHANNELS: dict[str, int] = {
    "resistance_ohm": 1000,  # R_F, insulation resistance
    "voltage_v": 1008,  # U_n, DC+ to DC- voltage the IMD sees
    "voltage_l1e_v": 1016,  # DC+ to earth
    "voltage_l2e_v": 1020,  # DC- to earth
}
DEVICE_NAME = (9800, 10)  # ASCII, two characters per word
FIRMWARE = (9820, 6)  # ident, version (e.g. 500 = 5.00), date, Modbus driver version

# commands: name -> (register, value written)
SELF_TEST_REGISTER = 8005
SELF_TEST_VALUE = 0x5445  # "TE"
DEVICE_ON_REGISTER = 3026  # 1 = measuring, 0 = off (the output relays of the cabinet open)
PREALARM_KOHM_REGISTER = 3005  # R1 response value, kOhm
ALARM_KOHM_REGISTER = 3007  # R2 response value, kOhm

ALARMS = {0: "none", 1: "prewarning", 2: "device_error", 4: "warning", 5: "alarm"}
TESTS = {0: "none", 1: "internal", 2: "external"}
RANGES = {0: "exact", 1: "smaller", 2: "bigger", 3: "invalid"}
UNIT_OHM = 2
UNIT_VOLT = 4


@dataclass(frozen=True)
class Channel:
    """One decoded measurement channel."""

    value: float
    alarm: str  # one of ALARMS' values ("reserved" for any other code)
    test: str  # one of TESTS' values
    unit: int
    range: str  # one of RANGES' values
    description: int

    @property
    def valid(self) -> bool:
        return self.range != "invalid" and self.value == self.value


def decode_channel(words: list[int] | tuple[int, ...]) -> Channel:
    """Four registers of one channel -> :class:`Channel`. Raises ValueError on a wrong length."""
    if len(words) != CHANNEL_WORDS:
        raise ValueError(f"a channel is {CHANNEL_WORDS} words, got {len(words)}")
    (value,) = struct.unpack(">f", struct.pack(">HH", words[0], words[1]))
    flags, unit_byte = words[2] >> 8, words[2] & 0xFF
    # a device error shares code 2 with test bits set; only without a test running is it an error
    alarm_code = flags & 0x07
    alarm = ALARMS.get(alarm_code, "reserved")
    if alarm_code == 2 and flags & 0xC0:
        alarm = "reserved"
    return Channel(
        value=float(value),
        alarm=alarm,
        test=TESTS.get(flags >> 6, "none"),
        unit=unit_byte & 0x1F,
        range=RANGES[unit_byte >> 6],
        description=words[3],
    )


def encode_channel(
    value: float, unit: int, alarm: str = "none", test: str = "none", rng: str = "exact", description: int = 0
) -> list[int]:
    """Inverse of :func:`decode_channel` (the simulated IMD and tests)."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    alarm_code = {v: k for k, v in ALARMS.items()}[alarm]
    test_code = {v: k for k, v in TESTS.items()}[test]
    range_code = {v: k for k, v in RANGES.items()}[rng]
    flags = alarm_code | (test_code << 6)
    return [hi, lo, (flags << 8) | (range_code << 6) | (unit & 0x1F), description]


def decode_ascii(words: list[int] | tuple[int, ...]) -> str:
    return "".join(chr(w >> 8) + chr(w & 0xFF) for w in words).replace("\x00", "").strip()


def encode_ascii(text: str, words: int) -> list[int]:
    raw = text.encode("ascii")[: 2 * words].ljust(2 * words, b"\x00")
    return [(raw[i] << 8) | raw[i + 1] for i in range(0, 2 * words, 2)]
