"""Register descriptions and the pure codec from raw 16-bit words to engineering values.

A meter model is a tuple of :class:`Register`; nothing about a model lives in code branches.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

# words per type, struct code
TYPES: dict[str, tuple[int, str]] = {
    "u16": (1, ">H"),
    "s16": (1, ">h"),
    "u32": (2, ">I"),
    "s32": (2, ">i"),
    "u64": (4, ">Q"),
    "s64": (4, ">q"),
    "float32": (2, ">f"),
}

# Device "not available" markers (ABB and others): a register holding one is no reading at all.
NOT_AVAILABLE: dict[str, int] = {
    "u16": 0xFFFF,
    "s16": 0x7FFF,
    "u32": 0xFFFFFFFF,
    "s32": 0x7FFFFFFF,
    "u64": 0xFFFFFFFFFFFFFFFF,
}

FAST = "fast"  # instantaneous values: polled every poll period
SLOW = "slow"  # energy counters: change slowly, polled every slow period
PERIODS = (FAST, SLOW)
WORD_ORDERS = ("big", "little")  # big: high word first; little: low word first (Carlo Gavazzi)
FUNCTION_CODES = (3, 4)  # read holding registers, read input registers: the reads the planner plans


class DecodeError(ValueError):
    """The words cannot be a valid value (NaN/inf float, a not-available marker, wrong length)."""


@dataclass(frozen=True)
class Register:
    signal: str  # OCPP measurand (+ phase), e.g. "Voltage.L1"
    address: int  # 0-based protocol address
    type: str  # key of TYPES
    unit: str
    scale: float = 1.0
    function_code: int = 4  # one of FUNCTION_CODES: 3 = holding, 4 = input registers
    word_order: str = "big"  # one of WORD_ORDERS
    period: str = FAST  # one of PERIODS: which poll period keeps it fresh
    valid_min: float | None = None  # a decoded value outside [valid_min, valid_max] is invalid
    valid_max: float | None = None
    counter: bool = False  # a cumulative counter: it never falls (a fall is invalid)

    @property
    def words(self) -> int:
        return TYPES[self.type][0]

    @property
    def end(self) -> int:
        """One past the last address this register occupies."""
        return self.address + self.words


def decode_words(reg: Register, words: list[int] | tuple[int, ...]) -> float:
    """Decode the raw words of one register to its value in ``reg.unit``."""
    nwords, fmt = TYPES[reg.type]
    if len(words) != nwords:
        raise DecodeError(f"{reg.signal}: expected {nwords} words, got {len(words)}")
    ordered = list(words) if reg.word_order == "big" else list(reversed(words))
    raw = struct.pack(">" + "H" * nwords, *ordered)
    (value,) = struct.unpack(fmt, raw)
    if reg.type == "float32":
        if not math.isfinite(value):
            raise DecodeError(f"{reg.signal}: not a finite number ({value})")
    else:
        marker = NOT_AVAILABLE.get(reg.type)
        if marker is not None and struct.unpack(">" + fmt[1].upper(), raw)[0] == marker:
            raise DecodeError(f"{reg.signal}: device reports 'not available'")
    return float(value) * reg.scale


def check_range(reg: Register, value: float) -> str | None:
    """Why ``value`` cannot be a real measurement of ``reg``, or None when it is plausible."""
    if reg.valid_min is not None and value < reg.valid_min:
        return f"{reg.signal} = {value:g} {reg.unit} below {reg.valid_min:g}"
    if reg.valid_max is not None and value > reg.valid_max:
        return f"{reg.signal} = {value:g} {reg.unit} above {reg.valid_max:g}"
    return None


def encode_value(reg: Register, value: float) -> list[int]:
    """Inverse of :func:`decode_words` (used by the simulator and tests)."""
    nwords, fmt = TYPES[reg.type]
    raw_value: float | int = value / reg.scale
    if reg.type != "float32":
        raw_value = int(round(raw_value))
    raw = struct.pack(fmt, raw_value)
    words = list(struct.unpack(">" + "H" * nwords, raw))
    return words if reg.word_order == "big" else list(reversed(words))
