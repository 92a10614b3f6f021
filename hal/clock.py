"""Monotonic clocks.

Control code never reads the wall clock to measure time: a step of NTP must not make a sensor look
fresh or stale. ``LinuxClock`` is ``time.monotonic``; ``SimClock`` only moves when told to, so tests
can walk a scenario through time without sleeping. Components take the clock as an argument (or its
``monotonic`` method as a ``Callable[[], float]``); nothing picks one by a configuration string.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod


class Clock(ABC):
    """Seconds from an arbitrary origin that never goes backwards."""

    @abstractmethod
    def monotonic(self) -> float: ...


class LinuxClock(Clock):
    def monotonic(self) -> float:
        return time.monotonic()


class SimClock(Clock):
    """A clock that advances only through :meth:`advance`."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._now = start_s

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go backwards")
        self._now += seconds
