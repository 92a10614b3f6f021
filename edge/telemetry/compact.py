"""Report by exception into compact records (telemetry schema v2; format in docs/TELEMETRY.md).

The recorder hands every finished interval (the sampler's samples) to :class:`Compactor`. Per signal it
keeps the value a consumer holds (the last one reported, as an integer of the signal's resolution) and
reports a new value only when the interval's ``last`` is more than the signal's deadband away from it, so
a consumer that holds the last reported value is within the deadband at every interval. A quality change
is always reported. For the safety signals (the cable's inputs in edge/limits/inputs.py: pins, coolant)
the interval's min and max are reported whenever they differ from the held value: never lost.

Intervals are collected into one record of up to ``record_s`` seconds (fewer rows in the store, fewer
and better compressed messages). A record starting with a *keyframe* reports every signal: the first
record, every ``keyframe_s``, and after :meth:`Compactor.request_keyframe` (the uplink asks on every
(re)connect). Events do not wait for this: they are records of their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from edge.limits import inputs as table
from edge.telemetry.v2decode import QUALITIES

# Resolution of the transmitted integers per unit, as a power of ten (finer than every sensor we read).
EXP_BY_UNIT: dict[str, int] = {"°C": -2, "V": -2, "A": -2, "W": 0, "kWh": -3, "l/min": -3, "bar": -3, "Hz": -3}
DEFAULT_EXP = -3
# The cable's inputs: their min and max per interval are never lost.
SAFETY_READINGS = frozenset(e["reading"] for e in table.INPUTS if e["source"] == "cable")
QUALITY_CODE = {q: i for i, q in enumerate(QUALITIES)}

AliasFn = Callable[[str, str, int], int]  # (signal, unit, exp) -> alias, persistent (Store.alias)


def is_safety(signal: str) -> bool:
    return signal.rsplit(".", 1)[-1] in SAFETY_READINGS


def exp_for(unit: str) -> int:
    return EXP_BY_UNIT.get(unit, DEFAULT_EXP)


@dataclass
class Deadbands:
    by_unit: Mapping[str, float]
    by_signal: Mapping[str, float] = field(default_factory=dict)
    default: float = 0.0

    def of(self, signal: str, unit: str) -> float:
        if signal in self.by_signal:
            return float(self.by_signal[signal])
        return float(self.by_unit.get(unit, self.default))


@dataclass
class _Signal:
    alias: int
    exp: int
    deadband: float
    safety: bool
    held: int | None = None  # what a consumer holds (after the last report)
    known: bool = False  # reported at least once since the last keyframe
    quality: str | None = None
    # this record's entries: interval indexes and values
    v_idx: list[int] = field(default_factory=list)
    v_val: list[int | None] = field(default_factory=list)
    q_idx: list[int] = field(default_factory=list)
    q_val: list[int] = field(default_factory=list)
    x_idx: list[int] = field(default_factory=list)
    x_lo: list[int] = field(default_factory=list)
    x_hi: list[int] = field(default_factory=list)


def _q(v: float | None, exp: int) -> int | None:
    if v is None or not math.isfinite(v):
        return None
    return round(v * 10.0 ** (-exp))


def _deltas(idx: list[int]) -> list[int]:
    return [b - a for a, b in zip([0, *idx], idx, strict=False)]


def _value_deltas(vals: list[int | None]) -> list[int | None]:
    out: list[int | None] = []
    prev: int | None = None
    for v in vals:
        out.append(v if v is None or prev is None else v - prev)
        prev = v
    return out


class Compactor:
    def __init__(
        self, alias: AliasFn, deadbands: Deadbands, interval_s: float, record_s: float, keyframe_s: float
    ) -> None:
        self.alias = alias
        self.deadbands = deadbands
        self.interval_ms = round(interval_s * 1000)
        self.per_record = max(1, round(record_s / interval_s))
        self.keyframe_every = max(1, round(keyframe_s / interval_s))
        self._signals: dict[str, _Signal] = {}
        self._times: list[int] = []
        self._keyframe = True  # the first record of a run is a keyframe
        self._since_keyframe = 0
        self._keyframe_requested = False

    def request_keyframe(self) -> None:
        """From any thread: the next interval starts a new record with a keyframe."""
        self._keyframe_requested = True

    def add(self, t_ms: int, samples: list[dict[str, Any]]) -> list[tuple[int, bytes]]:
        """One finished interval; returns the records completed by it: (t_ms of their first interval, payload)."""
        out: list[tuple[int, bytes]] = []
        due = self._keyframe_requested or self._since_keyframe >= self.keyframe_every
        if due and self._times:
            out.append(self._finish())
        if due or (not self._times and self._keyframe):
            self._start_keyframe()
        i = len(self._times)
        self._times.append(t_ms)
        self._since_keyframe += 1
        for s in samples:
            self._sample(i, s)
        if len(self._times) >= self.per_record:
            out.append(self._finish())
        return out

    def flush(self) -> tuple[int, bytes] | None:
        """The record in progress, if any (at close)."""
        return self._finish() if self._times else None

    def _start_keyframe(self) -> None:
        self._keyframe_requested = False
        self._keyframe = True
        self._since_keyframe = 0
        for sig in self._signals.values():
            sig.known = False
            sig.quality = None

    def _signal(self, name: str, unit: str) -> _Signal:
        sig = self._signals.get(name)
        if sig is None:
            exp = exp_for(unit)
            sig = _Signal(self.alias(name, unit, exp), exp, self.deadbands.of(name, unit), is_safety(name))
            self._signals[name] = sig
        return sig

    def _sample(self, i: int, s: dict[str, Any]) -> None:
        sig = self._signal(s["signal"], s["unit"])
        if s["quality"] != sig.quality:
            sig.quality = s["quality"]
            sig.q_idx.append(i)
            sig.q_val.append(QUALITY_CODE.get(s["quality"], QUALITY_CODE["invalid"]))
        last = s["last"]
        if not sig.known or _moved(sig, last):
            sig.known = True
            sig.held = _q(last, sig.exp)
            sig.v_idx.append(i)
            sig.v_val.append(sig.held)
        if sig.safety and sig.held is not None and s["min"] is not None:
            lo, hi = _q(s["min"], sig.exp), _q(s["max"], sig.exp)
            if lo is not None and hi is not None and (lo != sig.held or hi != sig.held):
                sig.x_idx.append(i)
                sig.x_lo.append(lo - sig.held)
                sig.x_hi.append(hi - sig.held)

    def _finish(self) -> tuple[int, bytes]:
        rec: dict[str, Any] = {"i": self.interval_ms}
        gaps = [b - a for a, b in zip(self._times, self._times[1:], strict=False)]
        if len(self._times) > 1:
            rec["n"] = len(self._times)
        if any(g != self.interval_ms for g in gaps):
            rec["d"] = gaps  # only when an interval was late or early
        if self._keyframe:
            rec["k"] = True
        v, q, x = [], [], []
        for sig in sorted(self._signals.values(), key=lambda s: s.alias):
            if sig.v_idx:
                v.append([sig.alias, _deltas(sig.v_idx), _value_deltas(sig.v_val)])
            if sig.q_idx:
                q.append([sig.alias, _deltas(sig.q_idx), list(sig.q_val)])
            if sig.x_idx:
                x.append([sig.alias, _deltas(sig.x_idx), list(sig.x_lo), list(sig.x_hi)])
            for lst in (sig.v_idx, sig.v_val, sig.q_idx, sig.q_val, sig.x_idx, sig.x_lo, sig.x_hi):
                lst.clear()
        for key, entries in (("v", v), ("q", q), ("x", x)):
            if entries:
                rec[key] = entries
        t0 = self._times[0]
        self._times = []
        self._keyframe = False
        return t0, msgpack.packb(rec)


def _moved(sig: _Signal, last: float | None) -> bool:
    """The value a consumer holds is no longer within the deadband of ``last`` (or one of them is None)."""
    if last is None or sig.held is None:
        return (last is None) != (sig.held is None)
    if sig.deadband <= 0:
        return _q(last, sig.exp) != sig.held
    return abs(last - sig.held * 10.0**sig.exp) > sig.deadband
