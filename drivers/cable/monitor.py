"""Decode cable-monitor frames (``cable_monitor.dbc``) into readings with quality.

Quality rules:
- a message not received for ``stale_after_s`` makes its values ``stale`` (:meth:`CableMonitor.stale`,
  called from the control tick: silence produces no frame, so it must be asked for);
- a frame with the wrong length is ``invalid`` (every value of that message, as NaN);
- a value outside the DBC signal's [min, max] is ``invalid``;
- a sensor-fault status bit marks the values it covers ``invalid``;
- the 4-bit rolling counter must advance by exactly 1 per frame; a repeat (frozen sender) or a jump
  (lost frames, a second sender on the same id) marks the whole frame ``invalid``.
The first frame after start-up (or after a silence longer than ``stale_after_s``) is accepted: there is
no previous counter to compare.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import cantools
import cantools.database

from drivers.readings import INVALID, OK, STALE, Reading

DBC_PATH = os.path.join(os.path.dirname(__file__), "cable_monitor.dbc")
NODE_MASK = 0xFF
DEFAULT_NODE = 0x01


@dataclass(frozen=True)
class SignalSpec:
    dbc_name: str
    reading: str  # suffix of the reading's signal name
    unit: str
    fault_bit: str | None  # DBC status signal that invalidates this value


# DBC signal -> reading. Units are written the way a technician reads them.
SIGNALS: tuple[SignalSpec, ...] = (
    SignalSpec("PinTempDcPlus", "pin_dc_plus_c", "°C", "PinDcPlusSensorFault"),
    SignalSpec("PinTempDcMinus", "pin_dc_minus_c", "°C", "PinDcMinusSensorFault"),
    SignalSpec("CoolantInletTemp", "coolant_in_c", "°C", "CoolantTempSensorFault"),
    SignalSpec("CoolantOutletTemp", "coolant_out_c", "°C", "CoolantTempSensorFault"),
    SignalSpec("CoolantFlow", "coolant_flow_lpm", "l/min", "FlowSensorFault"),
    SignalSpec("CoolantPressure", "coolant_pressure_bar", "bar", "PressureSensorFault"),
)
_BY_DBC = {s.dbc_name: s for s in SIGNALS}
# flags carried as readings of their own (1 = set)
FLAGS: tuple[tuple[str, str], ...] = (("LeakDetected", "leak"),)


def load_database(path: str = DBC_PATH) -> cantools.database.can.Database:
    db = cantools.database.load_file(path)
    assert isinstance(db, cantools.database.can.Database)
    return db


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
        self._messages = {(m.frame_id & ~NODE_MASK) | node_id: m for m in self.db.messages}
        self._last_counter: dict[int, int] = {}
        self._last_rx: dict[int, float] = {}
        self._last: dict[int, list[Reading]] = {}  # last readings per message, for the stale copies
        self._stale_reported: set[int] = set()
        self.stale_after_s = stale_after_s
        self.frames_invalid = 0
        self.frames_ok = 0

    @property
    def frame_ids(self) -> frozenset[int]:
        return frozenset(self._messages)

    def message_name(self, arbitration_id: int) -> str | None:
        msg = self._messages.get(arbitration_id)
        return msg.name if msg is not None else None

    def reset_counters(self) -> None:
        """Forget counters (after a silence the next frame starts a new sequence)."""
        self._last_counter.clear()

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

    def _decode(self, msg: Any, arbitration_id: int, data: bytes, t: float) -> list[Reading]:
        if len(data) != msg.length:
            self.frames_invalid += 1
            return [
                Reading(f"{self.name}.{_BY_DBC[s.name].reading}", float("nan"), _BY_DBC[s.name].unit, t, INVALID)
                for s in msg.signals
                if s.name in _BY_DBC
            ]
        decoded = msg.decode(bytes(data), decode_choices=False, scaling=True)
        assert isinstance(decoded, dict)
        values: dict[str, Any] = dict(decoded)
        counter = int(values.get("RollingCounter", 0))
        last_rx = self._last_rx.get(arbitration_id)
        if last_rx is not None and t - last_rx > self.stale_after_s:
            self._last_counter.pop(arbitration_id, None)  # after a silence a new sequence starts
        prev = self._last_counter.get(arbitration_id)
        self._last_counter[arbitration_id] = counter
        counter_ok = prev is None or counter == (prev + 1) % 16
        if not counter_ok:
            self.frames_invalid += 1
        else:
            self.frames_ok += 1
        out: list[Reading] = []
        for sig in msg.signals:
            spec = _BY_DBC.get(sig.name)
            if spec is None:
                continue
            value = float(values[sig.name])
            in_range = (sig.minimum is None or value >= sig.minimum) and (sig.maximum is None or value <= sig.maximum)
            faulted = spec.fault_bit is not None and bool(values.get(spec.fault_bit, 0))
            quality = OK if (counter_ok and in_range and not faulted) else INVALID
            out.append(Reading(f"{self.name}.{spec.reading}", value, spec.unit, t, quality))
        for dbc_flag, suffix in FLAGS:
            if dbc_flag in values:
                out.append(
                    Reading(f"{self.name}.{suffix}", float(values[dbc_flag]), "", t, OK if counter_ok else INVALID)
                )
        return out

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
