"""Bytes on the wire: today, this month (UTC calendar) and an estimate per day, for ``edge status``.

Counted in memory since the daemon started (a restart starts today's and this month's count again; the
estimate needs only the last hours). Payload bytes of every message published, births included; MQTT and
TCP/TLS headers add about 2 % (one ~40-byte header per message) plus TLS framing.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MIN_SPAN_MS = 60_000  # no estimate before a minute of traffic


def _utc(t_ms: int) -> time.struct_time:
    return time.gmtime(t_ms / 1000.0)


@dataclass
class Traffic:
    today: int = 0
    month: int = 0
    _day_key: tuple[int, int] = (0, 0)
    _month_key: tuple[int, int] = (0, 0)
    _first_ms: int | None = None
    _hours: deque[tuple[int, int]] = field(default_factory=deque)  # (hour start ms, bytes), last 24 h

    def add(self, nbytes: int, t_ms: int) -> None:
        self._roll(t_ms)
        self.today += nbytes
        self.month += nbytes
        if self._first_ms is None:
            self._first_ms = t_ms
        hour = t_ms - t_ms % HOUR_MS
        if self._hours and self._hours[-1][0] == hour:
            self._hours[-1] = (hour, self._hours[-1][1] + nbytes)
        else:
            self._hours.append((hour, nbytes))
        while self._hours and self._hours[0][0] <= t_ms - DAY_MS:
            self._hours.popleft()

    def _roll(self, t_ms: int) -> None:
        u = _utc(t_ms)
        day, month = (u.tm_year, u.tm_yday), (u.tm_year, u.tm_mon)
        if day != self._day_key:
            self._day_key, self.today = day, 0
        if month != self._month_key:
            self._month_key, self.month = month, 0

    def per_day(self, t_ms: int) -> int | None:
        """Bytes per day at the rate of the last 24 h (or since the first byte, when that is shorter)."""
        if self._first_ms is None:
            return None
        span = min(DAY_MS, t_ms - max(self._first_ms, t_ms - DAY_MS))
        if span < MIN_SPAN_MS:
            return None
        recent = sum(b for h, b in self._hours if h > t_ms - DAY_MS - HOUR_MS)
        return round(recent * DAY_MS / max(span, MIN_SPAN_MS))

    def figures(self, t_ms: int) -> dict[str, Any]:
        self._roll(t_ms)
        return {"bytes_today": self.today, "bytes_month": self.month, "bytes_per_day_est": self.per_day(t_ms)}
