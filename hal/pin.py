"""Digital outputs (contactor, coolant pump, fan) and inputs (e-stop, door, mirror contacts) with
MicroPython ``machine.Pin`` semantics.

Outputs: ``Pin(id, Pin.OUT, value=0)``, ``pin.value()`` reads, ``pin.value(1)`` writes, ``on()`` /
``off()``. A pin is created in its safe state (off) unless told otherwise: a contactor that is not
explicitly closed is open.

Inputs: ``Pin(id, Pin.IN)``, ``pin.value()`` reads the raw electrical level (0/1; no active level, no
wiring, no debounce here: drivers/digital_inputs.py applies those). Writing an input raises: software
never drives a safety input. ``pin.irq(handler)`` (MicroPython style, both edges) calls ``handler(pin)``
on a level change, so a reader can evaluate at once instead of waiting for the next tick.

Backends:
- ``linux``: a GPIO line through the kernel character device (``gpiod``, libgpiod v2 bindings);
  ``id`` is ``"gpiochip0:17"``. The import happens only when a linux pin is made, so the sim and
  tests never need the library.
  An input line is requested with both-edge detection; :meth:`LinuxPin.fileno` is the request's file
  descriptor for the event loop and :meth:`LinuxPin.handle_events` drains it and calls the irq handler.
- ``sim``: keeps the level in memory and records every change with its time, for tests and the
  simulated cabinet; :meth:`SimPin.drive` sets an input's level as the wiring outside would.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

IrqHandler = Callable[["Pin"], None]


class Pin(ABC):
    IN = 0
    OUT = 1

    def __init__(self, id: str, mode: int = OUT, value: int | None = 0) -> None:  # noqa: A002
        if mode not in (Pin.IN, Pin.OUT):
            raise ValueError(f"pin {id!r}: mode must be Pin.IN or Pin.OUT, got {mode!r}")
        self.id = id
        self.mode = mode
        self._irq: IrqHandler | None = None
        if value is not None and mode == Pin.OUT:
            self._write(1 if value else 0)

    def value(self, x: int | bool | None = None) -> int:
        """Read the level, or set it when ``x`` is given (MicroPython style). Returns the level."""
        if x is not None:
            if self.mode == Pin.IN:
                raise ValueError(f"pin {self.id!r} is an input: software does not drive it")
            self._write(1 if x else 0)
        return self._read()

    def irq(self, handler: IrqHandler | None) -> None:
        """Call ``handler(pin)`` on every level change of an input (both edges); None removes it."""
        self._irq = handler

    def on(self) -> None:
        self._write(1)

    def off(self) -> None:
        self._write(0)

    @abstractmethod
    def _write(self, level: int) -> None: ...

    @abstractmethod
    def _read(self) -> int: ...

    def close(self) -> None:
        """Leave an output in its safe state and release it (an input is only released)."""
        if self.mode == Pin.OUT:
            self._write(0)


class SimPin(Pin):
    def __init__(self, id: str, mode: int = Pin.OUT, value: int | None = 0) -> None:  # noqa: A002
        self._level = 0
        self.history: list[tuple[float, int]] = []
        super().__init__(id, mode, value)

    def _write(self, level: int) -> None:
        if level != self._level or not self.history:
            self.history.append((time.monotonic(), level))
        self._level = level

    def _read(self) -> int:
        return self._level

    def drive(self, level: int | bool) -> None:
        """Set an input's electrical level from outside (the simulated wiring, a test); a change calls the
        irq handler at once, as a GPIO edge would."""
        if self.mode != Pin.IN:
            raise ValueError(f"pin {self.id!r} is an output: drive() sets inputs only")
        new = 1 if level else 0
        changed = new != self._level
        self._write(new)
        if changed and self._irq is not None:
            self._irq(self)


class LinuxPin(Pin):
    """One GPIO line through libgpiod (v2 Python bindings): an output, or an input with edge events."""

    def __init__(self, id: str, mode: int = Pin.OUT, value: int | None = 0) -> None:  # noqa: A002
        try:
            import gpiod
            from gpiod.line import Direction, Edge, Value
        except ImportError as exc:  # pragma: no cover - only on the board
            raise RuntimeError(
                f"GPIO pin {id!r}: the 'gpiod' Python package (libgpiod v2) is not installed; "
                "install it with 'pip install gpiod' or use outputs.backend = \"sim\""
            ) from exc
        chip, _, line = id.partition(":")
        if not line.isdigit():
            raise ValueError(f"GPIO pin id must look like 'gpiochip0:17', got {id!r}")
        self._values = Value
        self._offset = int(line)
        settings = (  # pragma: no cover - only on the board
            gpiod.LineSettings(direction=Direction.INPUT, edge_detection=Edge.BOTH)
            if mode == Pin.IN
            else gpiod.LineSettings(direction=Direction.OUTPUT, output_value=Value.INACTIVE)
        )
        self._req: Any = gpiod.request_lines(  # pragma: no cover - only on the board
            f"/dev/{chip}", consumer="cabinet-edge", config={self._offset: settings}
        )
        super().__init__(id, mode, value)  # pragma: no cover

    def _write(self, level: int) -> None:  # pragma: no cover - only on the board
        self._req.set_value(self._offset, self._values.ACTIVE if level else self._values.INACTIVE)

    def _read(self) -> int:  # pragma: no cover - only on the board
        return 1 if self._req.get_value(self._offset) == self._values.ACTIVE else 0

    def fileno(self) -> int:  # pragma: no cover - only on the board
        """The line request's descriptor: readable when an input's edge events are waiting."""
        return int(self._req.fd)

    def handle_events(self) -> None:  # pragma: no cover - only on the board
        """Drain the waiting edge events and call the irq handler once (it reads the level itself)."""
        if self._req.read_edge_events() and self._irq is not None:
            self._irq(self)

    def close(self) -> None:  # pragma: no cover - only on the board
        super().close()
        self._req.release()


PIN_BACKENDS: dict[str, type[Pin]] = {"sim": SimPin, "linux": LinuxPin}


def make_pin(backend: str, id: str, value: int = 0) -> Pin:  # noqa: A002
    try:
        cls = PIN_BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown output backend {backend!r}; allowed: {sorted(PIN_BACKENDS)}") from None
    return cls(id, Pin.OUT, value)


def make_input(backend: str, id: str) -> Pin:  # noqa: A002
    """An input line of ``backend`` ("sim" makes a free-standing SimPin; use SimBoard.input to share it)."""
    try:
        cls = PIN_BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown input backend {backend!r}; allowed: {sorted(PIN_BACKENDS)}") from None
    return cls(id, Pin.IN)


class SimBoard:
    """The simulated board's pins by id, so the simulator can see what the daemon switched and drive what
    the daemon reads."""

    def __init__(self) -> None:
        self.pins: dict[str, SimPin] = {}
        self.inputs: dict[str, SimPin] = {}

    def input(self, id: str, level: int = 0) -> SimPin:  # noqa: A002
        """The input ``id`` (made at ``level`` the first time; an existing one keeps its level)."""
        pin = self.inputs.get(id)
        if pin is None:
            pin = self.inputs[id] = SimPin(id, Pin.IN)
            pin._write(1 if level else 0)
        return pin

    def drive(self, id: str, level: int | bool) -> None:  # noqa: A002
        """Set input ``id``'s electrical level as the wiring outside would."""
        self.input(id).drive(level)

    def pin(self, id: str, value: int = 0) -> SimPin:  # noqa: A002
        pin = self.pins.get(id)
        if pin is None:
            pin = self.pins[id] = SimPin(id, Pin.OUT, value)
        else:
            pin.value(value)
        return pin

    def level(self, id: str) -> int:  # noqa: A002
        pin = self.pins.get(id)
        return pin.value() if pin is not None else 0
