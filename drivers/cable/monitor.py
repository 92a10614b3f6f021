"""Decode cable-monitor frames (``cable_monitor.dbc``) into readings with quality.

The DBC is the one place the device's signals are named: each published signal carries the attributes
``ReadingName`` (the reading is ``<cable name>.<ReadingName>``) and, where a status bit covers it,
``FaultBit``. Signals without a ``ReadingName`` (status bits, the rolling counter) are not published.

Quality rules:
- a message not received for ``stale_after_s`` makes its values ``stale`` (:meth:`CableMonitor.stale`,
  asked periodically through the CAN dispatcher's periodic hook: silence produces no frame, so it must
  be asked for);
- a frame with the wrong length is ``invalid`` (every value of that message, as NaN);
- a value outside the DBC signal's [min, max] is ``invalid``;
- a sensor-fault status bit marks the values it covers ``invalid``;
- the 4-bit rolling counter must advance by exactly 1 per frame; a repeat (frozen sender) or a jump
  (lost frames, a second sender on the same id) marks the whole frame ``invalid``.
The first frame after start-up (or after a silence longer than ``stale_after_s``) is accepted: there is
no previous counter to compare.

Every decoded reading is ``urgent``: each cable value feeds a safety rule, so the controller evaluates
as soon as a frame arrives. The stale copies are not: the control tick evaluates them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cantools
import cantools.database

from drivers.readings import INVALID, OK, STALE, Reading

if TYPE_CHECKING:
    from drivers.can_dispatch import CanDispatcher

DBC_PATH = os.path.join(os.path.dirname(__file__), "cable_monitor.dbc")
NODE_MASK = 0xFF
DEFAULT_NODE = 0x01
COUNTER = "RollingCounter"
# why a value is invalid (CableMonitor.causes): each points to a different part
FROZEN = "frozen"  # the rolling counter repeated: the monitor's sender is stuck (the monitor unit)
COUNTER_JUMP = "counter_jump"  # the counter skipped: frames were lost (the CAN bus: errors, bus-off)
FAULT_BIT = "fault_bit"  # the monitor flags the sensor faulty (the sensor or its wiring, open or short)
OUT_OF_RANGE = "out_of_range"  # outside the DBC range (the sensor or its wiring)
BAD_LENGTH = "bad_length"  # a frame of the wrong length (firmware / DBC version of the monitor)
# DBC units are ASCII; readings carry them the way a technician reads them
UNITS = {"degC": "°C"}


@dataclass(frozen=True)
class SignalSpec:
    dbc_name: str
    reading: str  # suffix of the reading's signal name (DBC attribute ReadingName)
    unit: str
    fault_bit: str | None  # DBC status signal that invalidates this value (DBC attribute FaultBit)
    minimum: float | None
    maximum: float | None

    def in_range(self, value: float) -> bool:
        return (self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)


def _attribute(signal: Any, name: str) -> str:
    attrs = signal.dbc.attributes if signal.dbc is not None else {}
    attr = attrs.get(name)
    return str(attr.value) if attr is not None else ""


def signal_specs(message: Any) -> tuple[SignalSpec, ...]:
    """The published signals of one DBC message, in DBC order, from their ReadingName/FaultBit attributes."""
    names = {s.name for s in message.signals}
    out = []
    for sig in message.signals:
        reading = _attribute(sig, "ReadingName")
        if not reading:
            continue
        fault_bit = _attribute(sig, "FaultBit") or None
        if fault_bit is not None and fault_bit not in names:
            raise ValueError(f"{message.name}.{sig.name}: FaultBit {fault_bit!r} is not a signal of the message")
        unit = sig.unit or ""
        out.append(SignalSpec(sig.name, reading, UNITS.get(unit, unit), fault_bit, sig.minimum, sig.maximum))
    return tuple(out)


def load_database(path: str = DBC_PATH) -> cantools.database.can.Database:
    db = cantools.database.load_file(path)
    assert isinstance(db, cantools.database.can.Database)
    return db


@dataclass(frozen=True)
class _Message:
    dbc: Any  # cantools Message
    specs: tuple[SignalSpec, ...]


class CableMonitor:
    """Stateful decoder for one monitor (one node id): keeps the last rolling counter per message."""

    def __init__(
        self,
        name: str,
        node_id: int = DEFAULT_NODE,
        db: cantools.database.can.Database | None = None,
        stale_after_s: float = 0.3,
    ) -> None:
        if not 0 < node_id < 0xFF:
            raise ValueError(f"cable monitor node id must be 1..254, got {node_id}")
        self.name = name
        self.node_id = node_id
        self.db = db or load_database()
        self._messages = {(m.frame_id & ~NODE_MASK) | node_id: _Message(m, signal_specs(m)) for m in self.db.messages}
        self._last_counter: dict[int, int] = {}
        self._last_rx: dict[int, float] = {}
        self._last: dict[int, list[Reading]] = {}  # last readings per message, for the stale copies
        self._stale_reported: set[int] = set()
        self.stale_after_s = stale_after_s
        self.frames_invalid = 0
        self.frames_ok = 0
        # why each reading is invalid now (absent: it is not), so a technician is sent to the right part
        self.causes: dict[str, str] = {}

    @property
    def frame_ids(self) -> frozenset[int]:
        return frozenset(self._messages)

    @property
    def reading_names(self) -> tuple[str, ...]:
        """Every reading this monitor publishes (``<name>.<ReadingName>``), in DBC order."""
        return tuple(f"{self.name}.{s.reading}" for m in self._messages.values() for s in m.specs)

    def message_name(self, arbitration_id: int) -> str | None:
        msg = self._messages.get(arbitration_id)
        return msg.dbc.name if msg is not None else None

    def register(self, dispatcher: CanDispatcher) -> None:
        """Receive this monitor's frames (urgent: safety inputs) and report staleness through ``dispatcher``."""
        dispatcher.register(f"cable {self.name}", self.decode, ids=self.frame_ids, urgent=True, periodic=self.stale)

    def decode(self, arbitration_id: int, data: bytes, t: float) -> list[Reading]:
        """Readings from one frame; empty for frames that are not ours. Never raises on bad data."""
        msg = self._messages.get(arbitration_id)
        if msg is None:
            return []
        out = self._decode(msg, arbitration_id, data, t)
        self._last_rx[arbitration_id] = t
        self._last[arbitration_id] = out
        self._stale_reported.discard(arbitration_id)
        return out

    def _decode(self, msg: _Message, arbitration_id: int, data: bytes, t: float) -> list[Reading]:
        if len(data) != msg.dbc.length:
            self.frames_invalid += 1
            self._set_causes(msg, dict.fromkeys((s.reading for s in msg.specs), BAD_LENGTH))
            return [self._reading(s, float("nan"), t, INVALID) for s in msg.specs]
        values: dict[str, Any] = dict(msg.dbc.decode(bytes(data), decode_choices=False, scaling=True))
        counter = self._counter_cause(arbitration_id, int(values.get(COUNTER, 0)), t)
        if counter is None:
            self.frames_ok += 1
        else:
            self.frames_invalid += 1
        causes = {s.reading: _cause(s, values, counter) for s in msg.specs}
        self._set_causes(msg, causes)
        return [
            self._reading(s, float(values[s.dbc_name]), t, OK if causes[s.reading] is None else INVALID)
            for s in msg.specs
        ]

    def _set_causes(self, msg: _Message, causes: dict[str, str | None]) -> None:
        for reading, cause in causes.items():
            if cause is None:
                self.causes.pop(reading, None)
            else:
                self.causes[reading] = cause

    def _counter_cause(self, arbitration_id: int, counter: int, t: float) -> str | None:
        """None when the rolling counter advanced by one; FROZEN when it repeated (the sender is stuck),
        COUNTER_JUMP when it skipped (frames were lost on the way)."""
        last_rx = self._last_rx.get(arbitration_id)
        if last_rx is not None and t - last_rx > self.stale_after_s:
            self._last_counter.pop(arbitration_id, None)  # after a silence a new sequence starts
        prev = self._last_counter.get(arbitration_id)
        self._last_counter[arbitration_id] = counter
        if prev is None or counter == (prev + 1) % 16:
            return None
        return FROZEN if counter == prev else COUNTER_JUMP

    def diagnosis(self, now: float) -> dict[str, Any]:
        """What a technician needs to find the faulty part: seconds since the last frame (None: never one),
        whether it is silent (no frame within ``stale_after_s``), and why each invalid reading is invalid."""
        last = max(self._last_rx.values(), default=None)
        age = None if last is None else round(now - last, 3)
        return {
            "node_id": self.node_id,
            "last_frame_s": age,
            "silent": age is None or age > self.stale_after_s,
            "invalid": dict(sorted(self.causes.items())),
        }

    def _reading(self, spec: SignalSpec, value: float, t: float, quality: str) -> Reading:
        return Reading(f"{self.name}.{spec.reading}", value, spec.unit, t, quality, True)

    def stale(self, now: float) -> list[Reading]:
        """Stale copies of the values of every message silent for longer than ``stale_after_s``.

        Reported once per silence (the copies keep their receive time, so their age keeps growing).
        A message never received yields nothing: the safety core names such an input "missing".
        """
        out: list[Reading] = []
        for fid, last in self._last_rx.items():
            if now - last <= self.stale_after_s or fid in self._stale_reported:
                continue
            self._stale_reported.add(fid)
            out += [Reading(r.signal, r.value, r.unit, r.t, STALE) for r in self._last.get(fid, [])]
        return out

    def encode(self, message: str, values: dict[str, float]) -> tuple[int, bytes]:
        """Build a frame (used by the simulator and tests)."""
        msg = self.db.get_message_by_name(message)
        full: dict[str, float] = {s.name: 0.0 for s in msg.signals}
        full.update(values)
        return (msg.frame_id & ~NODE_MASK) | self.node_id, bytes(msg.encode(full, strict=False))


def _cause(spec: SignalSpec, values: dict[str, Any], counter: str | None) -> str | None:
    """Why one value of a frame cannot be trusted, the most specific first; None: it can."""
    if counter is not None:
        return counter
    if spec.fault_bit is not None and bool(values.get(spec.fault_bit, 0)):
        return FAULT_BIT
    if not spec.in_range(float(values[spec.dbc_name])):
        return OUT_OF_RANGE
    return None
