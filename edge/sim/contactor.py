"""A simulated DC output contactor with its mirror contact, for the contactor feedback rules.

The main contacts follow the coil (the board's contactor pin) after a delay, like a real contactor (closing
takes longer than opening); the mirror contact shows what the main contacts do. Fault knobs:

- :meth:`SimContactor.weld`: the main contacts weld: once closed they stay closed whatever the coil does
  (``closed_now=True`` welds them closed at once, e.g. a contactor welded before the daemon started);
- :meth:`SimContactor.fail_to_close`: the coil no longer pulls in (broken coil, driver or supply): the
  contacts stay open.
"""

from __future__ import annotations

from dataclasses import dataclass

CLOSE_DELAY_S = 0.03  # DC contactors of this class close in about 20-50 ms
OPEN_DELAY_S = 0.015  # ... and open in under 20 ms with an economizer


@dataclass
class SimContactor:
    close_delay_s: float = CLOSE_DELAY_S
    open_delay_s: float = OPEN_DELAY_S
    closed: bool = False  # the main contacts (the mirror contact reads the same)
    welded: bool = False
    coil_broken: bool = False
    _moving_s: float = 0.0  # how long the coil has disagreed with the contacts

    def step(self, coil: bool, dt_s: float) -> bool:
        """Advance by ``dt_s`` with the coil energised (``coil``) or not; the contacts' state after."""
        pulled = coil and not self.coil_broken
        if pulled == self.closed or (self.welded and self.closed):
            self._moving_s = 0.0
            return self.closed
        self._moving_s += dt_s
        if self._moving_s >= (self.close_delay_s if pulled else self.open_delay_s) - 1e-9:
            self.closed = pulled
            self._moving_s = 0.0
        return self.closed

    def weld(self, on: bool = True, closed_now: bool = False) -> None:
        self.welded = on
        if on and closed_now:
            self.closed = True

    def fail_to_close(self, on: bool = True) -> None:
        self.coil_broken = on
