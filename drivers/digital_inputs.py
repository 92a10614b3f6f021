"""Debounced digital inputs: ``DigitalInputs(specs, pins, clock).poll() -> {name: 1|0}`` (1 = ACTIVE).

What each input's raw level means is configuration, applied here once for every user (e-stop, door,
water, tilt, the contactors' mirror contacts):

- ``active`` ("low" | "high"): the electrical level the pin reads while the contact CONDUCTS (closed). An
  input with a pull-up and the contact to ground reads "low" when closed; most opto-isolated input boards
  invert as well. Check it with the contact closed by hand.
- ``wiring`` ("nc" | "no"): "nc" (normally closed, the default for safety loops): the function is ACTIVE
  when the contact does NOT conduct, so a pressed button, an opened loop, a cut wire or a pulled connector
  all read ACTIVE (fail safe). "no" (normally open): ACTIVE when the contact conducts; a cut wire then reads
  inactive, so use it only where a missed signal is not a safety problem (a mirror contact is wired as the
  contactor's own auxiliary contact: "no" = closed with the contactor).
- ``debounce_ms``: a change is taken only once the new value has been seen continuously for this long
  (0 = at once). Each edge restarts the wait, so a bouncing contact changes the value once.

The first read (at construction) is taken as it is, without waiting: an e-stop pressed when the daemon
starts reads ACTIVE from the first evaluation.

Reaction at once: each pin's irq (hal/pin.py: a GPIO edge on the board, ``SimPin.drive`` in the simulator)
calls :meth:`DigitalInputs.edge`, which calls ``on_change`` at once when ``debounce_ms`` is 0, otherwise
through ``call_later`` when the debounce time is over (``loop.call_later`` in the daemon). Without
``call_later`` a pending change is taken by the next :meth:`poll` after its debounce time (the tick).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hal.pin import Pin

log = logging.getLogger("drivers.digital_inputs")

ACTIVE_LEVELS = ("low", "high")
WIRINGS = ("nc", "no")
# asyncio may run a timer a little before its time (clock resolution): a change whose debounce time is
# over within this margin is taken, so the timer's evaluation is not wasted
_EARLY_S = 0.0005


@dataclass(frozen=True)
class InputSpec:
    name: str  # the input's name in events, status and the snapshot
    pin: str  # the hal pin id ("gpiochip0:17" on the board, any unique name in the simulator)
    active: str = "low"  # the level the pin reads while the contact conducts: "low" | "high"
    wiring: str = "nc"  # "nc": ACTIVE when the contact does not conduct (safety loops); "no": when it does
    debounce_ms: float = 10.0

    def __post_init__(self) -> None:
        if self.active not in ACTIVE_LEVELS:
            raise ValueError(f"input {self.name!r}: active must be one of {ACTIVE_LEVELS}, got {self.active!r}")
        if self.wiring not in WIRINGS:
            raise ValueError(f"input {self.name!r}: wiring must be one of {WIRINGS}, got {self.wiring!r}")
        if self.debounce_ms < 0:
            raise ValueError(f"input {self.name!r}: debounce_ms must be >= 0, got {self.debounce_ms}")


def is_active(level: int, active: str, wiring: str) -> int:
    """1 when the function is ACTIVE for this raw level: the contact conducts iff the level is ``active``;
    an "nc" input is ACTIVE when it does not conduct, an "no" input when it does."""
    conducts = (1 if level else 0) == (1 if active == "high" else 0)
    return int(conducts) if wiring == "no" else int(not conducts)


class _Debounced:
    __slots__ = ("debounce_s", "pending", "pin", "since", "spec", "value")

    def __init__(self, spec: InputSpec, pin: Pin, now: float) -> None:
        self.spec = spec
        self.pin = pin
        self.debounce_s = spec.debounce_ms / 1000.0
        self.value = self.raw()
        self.pending: int | None = None  # a different value seen since ``since``, not yet taken
        self.since = now

    def raw(self) -> int:
        return is_active(self.pin.value(), self.spec.active, self.spec.wiring)

    def sample(self, now: float) -> bool:
        """Look at the pin; True when the debounced value changed."""
        raw = self.raw()
        if raw == self.value:
            self.pending = None
            return False
        if raw != self.pending:
            self.pending, self.since = raw, now
        if now - self.since >= self.debounce_s - _EARLY_S:
            self.value, self.pending = raw, None
            return True
        return False


class DigitalInputs:
    """The debounced ACTIVE value of each input, by name."""

    def __init__(
        self,
        specs: Sequence[InputSpec],
        pins: Mapping[str, Pin],
        clock: Callable[[], float],
        on_change: Callable[[], Any] | None = None,
        call_later: Callable[[float, Callable[[], None]], Any] | None = None,
    ) -> None:
        """``pins``: the input pin of each spec, by pin id (``Pin(id, Pin.IN)``). ``on_change``: called on an
        edge (at once, or once its debounce time is over when ``call_later`` is given), e.g. the controller's
        ``evaluate_now``. ``call_later(delay_s, fn)``: a timer, e.g. ``loop.call_later``."""
        self.clock = clock
        self.on_change = on_change
        self.call_later = call_later
        # called with an input's name when its debounced value turns ACTIVE, in the thread that sees the edge
        # and before ``on_change`` (the e-stop's direct path to off, edge/build.py); its errors are logged
        self.on_active: Callable[[str], None] | None = None
        # inputs an edge or a debounce timer saw turn ACTIVE since the last poll: that poll reports them ACTIVE
        # even if the contact is back by then, so an evaluation behind the direct path still sees the press
        self._held: set[str] = set()
        now = clock()
        self._inputs = {s.name: _Debounced(s, pins[s.pin], now) for s in specs}
        if len(self._inputs) != len(specs):
            raise ValueError("input names must be unique")
        for d in self._inputs.values():
            d.pin.irq(self._edge_handler(d))

    @property
    def pins(self) -> list[Pin]:
        return [d.pin for d in self._inputs.values()]

    @property
    def specs(self) -> list[InputSpec]:
        return [d.spec for d in self._inputs.values()]

    def poll(self) -> dict[str, int]:
        """Sample every pin now and return the debounced values (1 = ACTIVE), by name."""
        now = self.clock()
        for d in self._inputs.values():
            d.sample(now)
        held, self._held = self._held, set()
        return {name: d.value or int(name in held) for name, d in self._inputs.items()}

    def values(self) -> dict[str, int]:
        """The debounced values as last sampled (no pin read)."""
        return {name: d.value for name, d in self._inputs.items()}

    def raw(self) -> dict[str, int]:
        """The undebounced ACTIVE values now (for diagnostics)."""
        return {name: d.raw() for name, d in self._inputs.items()}

    def _edge_handler(self, d: _Debounced) -> Callable[[Pin], None]:
        def handler(_pin: Pin) -> None:
            self.edge(d.spec.name)

        return handler

    def edge(self, name: str) -> None:
        """An edge on input ``name``: evaluate at once, or when its debounce time is over."""
        d = self._inputs[name]
        changed = d.sample(self.clock())
        if changed and d.value:
            self._activated(name)
        if self.on_change is None:
            return
        if changed or d.debounce_s <= 0:
            self.on_change()
        elif d.pending is not None and self.call_later is not None:
            self.call_later(d.debounce_s, self._settle)

    def _settle(self) -> None:
        now = self.clock()
        for name, d in self._inputs.items():
            if d.sample(now) and d.value:
                self._activated(name)
        if self.on_change is not None:
            self.on_change()

    def _activated(self, name: str) -> None:
        self._held.add(name)
        if self.on_active is None:
            return
        try:
            self.on_active(name)
        except Exception:  # the evaluation that follows still sees the input: it must not be kept from running
            log.exception("input %s: on_active failed", name)


def build_inputs(
    specs: Sequence[InputSpec],
    make_pin: Callable[[str], Pin],
    clock: Callable[[], float],
    on_change: Callable[[], Any] | None = None,
    call_later: Callable[[float, Callable[[], None]], Any] | None = None,
) -> DigitalInputs:
    """A reader whose pins come from ``make_pin(pin_id)`` (e.g. ``lambda i: Pin(i, Pin.IN)`` on a backend,
    or ``board.input`` in the simulator). Pin ids must be distinct (the config checks it): a pin has one irq."""
    pins = {s.pin: make_pin(s.pin) for s in specs}
    if len(pins) != len(specs):
        raise ValueError("two inputs share a pin")
    return DigitalInputs(specs, pins, clock, on_change, call_later)
