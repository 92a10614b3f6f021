"""Per-line meter polling: what is due, how long to wait, when to give up on a device, reading quality.

:class:`MeterPoller` holds everything about one meter between polls (pure bookkeeping plus one
``await`` on the line per block); :class:`LinePoller` runs the meters of one line one transaction at a
time, always serving the meter that has been due longest.

Guarantees:
- Each register has a period (fast: power, current, voltage; slow: energy counters). A poll reads only
  the due registers, with the cheapest block plan for that set (plans are cached per set).
- The timeout of a read is the wire time of that block plus the device's smoothed turnaround time and
  four times its deviation (RFC 6298 style), clamped to [timeout_min, timeout_max].
- After ``absent_after`` consecutive timeouts a device is absent: it is re-probed with one small read
  after a back-off that doubles from ``backoff_initial`` to ``backoff_max``, with the timeout it had
  learnt before it went away (``timeout_max`` if it never answered). Meanwhile the others on the line
  keep their rate: an absent device costs one short timeout per back-off interval.
- A value not refreshed for ``stale_after`` (plus the extra period of slow registers) is re-published
  with quality ``stale`` (same value, same time stamp).
- CRC/header errors, NaN/inf or "not available", values outside the table's plausible range, a falling
  energy counter and (optional) a frozen meter give quality ``invalid`` and an event.

Every time (due times, back-off, staleness, the time stamps of readings) comes from the ``clock`` given to
:class:`MeterPoller` and :class:`LinePoller` (seconds, monotonic; default ``time.monotonic``), so a
simulated clock drives them; only the waits between polls are real ``asyncio.sleep`` calls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.meters.models import MeterModel
from drivers.meters.planner import REQUEST_OVERHEAD_BYTES, Block, plan_blocks
from drivers.meters.reader import (
    MeterCrcError,
    MeterExceptionResponse,
    MeterTimeout,
    ModbusLine,
)
from drivers.meters.registers import FAST, DecodeError, Register, check_range, decode_words
from drivers.readings import INVALID, OK, STALE, Reading

log = logging.getLogger(__name__)

Event = tuple[str, str, dict[str, Any]]  # (kind, meter name, data)
EVENT_REPEAT_S = 10.0  # the same kind of problem on the same meter is reported at most this often
TIMER_GRANULARITY_S = 0.02  # asyncio + OS scheduling jitter, added to every adaptive timeout


@dataclass(frozen=True)
class PollSettings:
    fast_period_s: float = 0.5
    slow_period_s: float = 5.0
    timeout_min_s: float = 0.1
    timeout_max_s: float = 0.5
    stale_after_s: float = 3.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    frozen_after_s: float = 0.0  # 0: off
    absent_after: int = 2  # consecutive timeouts before a device counts as absent

    def __post_init__(self) -> None:
        if not 0 < self.timeout_min_s <= self.timeout_max_s:
            raise ValueError(f"timeout bounds {self.timeout_min_s}..{self.timeout_max_s} s are not ordered")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError(f"backoff {self.backoff_initial_s}..{self.backoff_max_s} s is not ordered")


class AdaptiveTimeout:
    """Smoothed turnaround time of one device (RFC 6298 estimator), excluding the wire time."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s, self.max_s = min_s, max_s
        self.srtt: float | None = None
        self.rttvar = 0.0

    def observe(self, turnaround_s: float) -> None:
        t = max(0.0, turnaround_s)
        if self.srtt is None:
            self.srtt, self.rttvar = t, t / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - t)
            self.srtt = 0.875 * self.srtt + 0.125 * t

    def on_timeout(self, used_s: float) -> None:
        """No reply within ``used_s``: the device may just have become slower. Back off (RFC 6298): the
        next timeout is at least twice this one, so a slowed-down device is caught again."""
        if self.srtt is not None:
            self.srtt = min(self.max_s, max(2 * self.srtt, used_s))

    def timeout_s(self, wire_s: float) -> float:
        if self.srtt is None:
            return self.max_s  # nothing learnt yet: be patient
        want = wire_s + self.srtt + max(TIMER_GRANULARITY_S, 4 * self.rttvar)
        return min(self.max_s, max(self.min_s, want))


@dataclass
class _Signal:
    reg: Register
    next_read: float = 0.0
    last_ok_t: float | None = None
    value: float = math.nan
    words: tuple[int, ...] = ()
    stale: bool = False


class MeterPoller:
    """One meter: due registers, adaptive timeout, back-off, quality checks. Signals are ``<name>.<signal>``."""

    def __init__(
        self,
        name: str,
        model: MeterModel,
        device_id: int,
        settings: PollSettings,
        start_t: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.clock = clock  # seconds, monotonic: due times, back-off, staleness, time stamps of readings
        self.model = model
        self.device_id = device_id
        self.s = settings
        now = clock() if start_t is None else start_t
        self.signals = {r.signal: _Signal(r, next_read=now) for r in model.registers}
        self.timeout = AdaptiveTimeout(settings.timeout_min_s, settings.timeout_max_s)
        self.failures = 0
        self.absent = False
        self.backoff_s = settings.backoff_initial_s
        self.next_probe = now
        self.polls = 0
        self.good_polls = 0
        self.last_error: str | None = None
        self._plans: dict[frozenset[str], list[Block]] = {}
        self._defined = model.defined()
        self._last_event: dict[str, float] = {}
        self._changed_t = now
        self._frozen = False
        self._counter_base: dict[str, float] = {}

    # -- scheduling ------------------------------------------------------------------------------
    def period(self, reg: Register) -> float:
        return self.s.fast_period_s if reg.period == FAST else self.s.slow_period_s

    def next_due(self) -> float:
        if self.absent:
            return self.next_probe
        return min(sig.next_read for sig in self.signals.values())

    def stale_after(self, reg: Register) -> float:
        """Age at which a value is stale: ``stale_after`` for fast registers; slow ones get their
        longer period on top, so an energy counter read every 5 s is not stale between two reads."""
        return self.s.stale_after_s + self.period(reg) - self.s.fast_period_s

    def next_stale(self) -> float:
        ts = [
            sig.last_ok_t + self.stale_after(sig.reg)
            for sig in self.signals.values()
            if sig.last_ok_t is not None and not sig.stale
        ]
        return min(ts) if ts else math.inf

    def due(self, now: float) -> list[Register]:
        """Registers due now, plus those falling due within half a fast period (read them together)."""
        horizon = now + self.s.fast_period_s / 2
        return [sig.reg for sig in self.signals.values() if sig.next_read <= horizon]

    def plan(self, regs: list[Register]) -> list[Block]:
        key = frozenset(r.signal for r in regs)
        blocks = self._plans.get(key)
        if blocks is None:
            blocks = plan_blocks(
                regs,
                self.model.max_registers_per_request,
                allow_gaps=not self.model.rejects_gaps,
                defined=lambda fc, a: (fc, a) in self._defined,
            )
            self._plans[key] = blocks
        return blocks

    def status(self) -> dict[str, Any]:
        return {
            "ok": self.good_polls > 0 and not self.absent and self.failures == 0,
            "absent": self.absent,
            "errors": self.polls - self.good_polls,
            "last_error": self.last_error,
            "timeout_ms": round(self.timeout.timeout_s(0.0) * 1000, 1),
            "backoff_s": self.backoff_s if self.absent else 0.0,
            # from the deadline of the next probe, so it counts down (the back-off is already the next one)
            "retry_in_s": round(max(0.0, self.next_probe - self.clock()), 3) if self.absent else None,
        }

    # -- one poll ---------------------------------------------------------------------------------
    async def poll(self, line: ModbusLine, now: float | None = None) -> tuple[list[Reading], list[Event]]:
        """Read what is due (or one probe block when absent). Never raises for device faults."""
        start = self.clock() if now is None else now
        readings: list[Reading] = []
        events: list[Event] = []
        due = self.due(start)
        blocks = self.plan(due)
        if self.absent:
            blocks = [min(blocks or self.plan(list(self.model.registers)), key=lambda b: b.count)]
        self.polls += 1
        answered = failed = decoded = False
        for block in blocks:
            wire_s = (REQUEST_OVERHEAD_BYTES + 2 * block.count) * line.char_time_s
            timeout_s = self.timeout.timeout_s(wire_s)
            try:
                words, rtt = await line.read_timed(self.device_id, block, timeout_s)
            except MeterTimeout as exc:
                failed = True
                if not self.absent:
                    self.timeout.on_timeout(timeout_s)  # probes of an absent device keep its last good estimate
                self.last_error = str(exc)
                break  # a silent device: do not spend the line's time on its other blocks
            except MeterCrcError as exc:
                answered = failed = True
                self.last_error = str(exc)
                t = self.clock()
                readings += self._mark(block.registers, INVALID, t)
                self._event(events, "crc", t, str(exc))
                continue
            except MeterExceptionResponse as exc:
                answered = failed = True
                self.last_error = str(exc)
                self._event(events, "exception", self.clock(), str(exc))
                continue
            answered = True
            self.timeout.observe(rtt - wire_s)
            readings += self._decode(block, words, self.clock(), events)
            decoded = True
        for reg in due:
            sig = self.signals[reg.signal]
            sig.next_read = start + self.period(reg)
        if answered:
            if self.absent:
                events.append(("meter_recovered", self.name, {"device_id": self.device_id}))
                for sig in self.signals.values():
                    sig.next_read = self.clock()  # read everything right away
            self.absent = False
            self.failures = 0
            self.backoff_s = self.s.backoff_initial_s
        else:
            self.failures += 1
            if self.absent:
                self.backoff_s = min(self.s.backoff_max_s, self.backoff_s * 2)
            elif self.failures >= self.s.absent_after:
                self.absent = True
                events.append(("meter_lost", self.name, {"device_id": self.device_id, "detail": self.last_error}))
            self.next_probe = self.clock() + self.backoff_s
        if not failed:
            self.good_polls += 1
            self.last_error = None
        if decoded:
            readings += self._frozen_check(self.clock(), events)
        return readings, events

    def check_stale(self, now: float) -> tuple[list[Reading], list[Event]]:
        """Re-publish values older than ``stale_after`` once, as ``stale``."""
        out: list[Reading] = []
        for sig in self.signals.values():
            if sig.last_ok_t is not None and not sig.stale and now - sig.last_ok_t >= self.stale_after(sig.reg):
                sig.stale = True
                out.append(Reading(f"{self.name}.{sig.reg.signal}", sig.value, sig.reg.unit, sig.last_ok_t, STALE))
        events: list[Event] = []
        if out:
            events.append(("meter_stale", self.name, {"signals": len(out), "detail": self.last_error or ""}))
        return out, events

    # -- decoding and quality ---------------------------------------------------------------------
    def _decode(self, block: Block, words: list[int], t: float, events: list[Event]) -> list[Reading]:
        out: list[Reading] = []
        for reg in self.model.registers:
            if reg.function_code != block.function_code or reg.address < block.start or reg.end > block.end:
                continue
            off = reg.address - block.start
            raw = tuple(words[off : off + reg.words])
            sig = self.signals[reg.signal]
            problem: str | None
            try:
                value = decode_words(reg, raw)
                problem = check_range(reg, value)
            except DecodeError as exc:
                value, problem = math.nan, str(exc)
            if problem is None and reg.counter:
                base = self._counter_base.get(reg.signal)
                if base is not None and value < base:
                    problem = f"{reg.signal} fell from {base:g} to {value:g} {reg.unit}"
                self._counter_base[reg.signal] = value  # a replaced or reset meter recovers on the next read
            if reg.period == FAST and raw != sig.words:
                self._changed_t = t
            sig.words = raw
            name = f"{self.name}.{reg.signal}"
            if problem is not None:
                self._event(events, "invalid", t, problem)
                out.append(Reading(name, sig.value, reg.unit, t, INVALID))
                continue
            sig.value, sig.last_ok_t, sig.stale = value, t, False
            out.append(Reading(name, value, reg.unit, t, INVALID if self._frozen else OK))
        return out

    def _frozen_check(self, now: float, events: list[Event]) -> list[Reading]:
        """Every fast register bit-identical for ``frozen_after``: a meter (or gateway) republishing a cache.

        Real meters always show noise in the last digit of voltage or current; identical words over a
        minute mean the values are not measurements. All values are marked invalid until one changes.
        """
        if self.s.frozen_after_s <= 0:
            return []
        frozen = now - self._changed_t >= self.s.frozen_after_s
        if frozen and not self._frozen:
            self._event(events, "frozen", now, f"no register changed for {now - self._changed_t:.0f} s")
            self._frozen = True
            return self._mark([sig.reg for sig in self.signals.values()], INVALID, now)
        if not frozen and self._frozen:
            self._frozen = False
        return []

    def _mark(self, regs: tuple[Register, ...] | list[Register], quality: str, t: float) -> list[Reading]:
        return [
            Reading(
                f"{self.name}.{r.signal}",
                self.signals[r.signal].value,
                r.unit,
                self.signals[r.signal].last_ok_t or t,
                quality,
            )
            for r in regs
        ]

    def _event(self, events: list[Event], reason: str, t: float, detail: str) -> None:
        last = self._last_event.get(reason)
        if last is not None and t - last < EVENT_REPEAT_S:
            return
        self._last_event[reason] = t
        log.warning("meter %s: %s: %s", self.name, reason, detail)
        events.append(("meter_invalid", self.name, {"reason": reason, "detail": detail, "device_id": self.device_id}))


@dataclass
class LinePoller:
    """The meters of one line, one transaction at a time, the longest-due meter first."""

    line: ModbusLine
    meters: list[MeterPoller]
    max_sleep_s: float = 0.5
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    clock: Callable[[], float] = time.monotonic  # the meters' clock: due and stale times are compared with it

    async def run(
        self,
        sink: Callable[[list[Reading]], None],
        on_event: Callable[[str, str, dict[str, Any]], None],
    ) -> None:
        while not self.stopping.is_set():
            now = self.clock()
            for m in self.meters:
                readings, events = m.check_stale(now)
                self._emit(sink, on_event, readings, events)
            meter = min(self.meters, key=lambda m: m.next_due(), default=None)
            if meter is None:
                return
            if meter.next_due() <= now:
                readings, events = await meter.poll(self.line)
                self._emit(sink, on_event, readings, events)
                await asyncio.sleep(0)  # let the rest of the daemon run between two polls, whatever happened
                continue
            wake = min([meter.next_due(), *(m.next_stale() for m in self.meters), now + self.max_sleep_s])
            await asyncio.sleep(max(0.0, wake - now))

    @staticmethod
    def _emit(
        sink: Callable[[list[Reading]], None],
        on_event: Callable[[str, str, dict[str, Any]], None],
        readings: list[Reading],
        events: list[Event],
    ) -> None:
        if readings:
            sink(readings)
        for kind, name, data in events:
            on_event(kind, name, data)
