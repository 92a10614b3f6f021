"""Digital outputs (contactor, coolant pump, fan) with MicroPython ``machine.Pin`` semantics.

``Pin(id, Pin.OUT, value=0)``, ``pin.value()`` reads, ``pin.value(1)`` writes, ``on()`` / ``off()``.
A pin is created in its safe state (off) unless told otherwise: a contactor that is not explicitly
closed is open.

Backends:
- ``linux``: a GPIO line through the kernel character device (``gpiod``, libgpiod v2 bindings);
  ``id`` is ``"gpiochip0:17"``. The import happens only when a linux pin is made, so the sim and
  tests never need the library.
- ``sim``: keeps the level in memory and records every change with its time, for tests and the
  simulated cabinet.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any


class Pin(ABC):
    IN = 0
    OUT = 1

    def __init__(self, id: str, mode: int = OUT, value: int | None = 0) -> None:  # noqa: A002
        if mode != Pin.OUT:
            raise ValueError("only outputs (Pin.OUT) are supported by cabinet-edge")
        self.id = id
        self.mode = mode
        if value is not None:
            self._write(1 if value else 0)

    def value(self, x: int | bool | None = None) -> int:
        """Read the level, or set it when ``x`` is given (MicroPython style). Returns the level."""
        if x is not None:
            self._write(1 if x else 0)
        return self._read()

    def on(self) -> None:
        self._write(1)

    def off(self) -> None:
        self._write(0)

    @abstractmethod
    def _write(self, level: int) -> None: ...

    @abstractmethod
    def _read(self) -> int: ...

    def close(self) -> None:
        """Leave the output in its safe state and release it."""
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


class LinuxPin(Pin):
    """One GPIO output line through libgpiod (v2 Python bindings)."""

    def __init__(self, id: str, mode: int = Pin.OUT, value: int | None = 0) -> None:  # noqa: A002
        try:
            import gpiod
            from gpiod.line import Direction, Value
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
        self._req: Any = gpiod.request_lines(  # pragma: no cover - only on the board
            f"/dev/{chip}",
            consumer="cabinet-edge",
            config={self._offset: gpiod.LineSettings(direction=Direction.OUTPUT, output_value=Value.INACTIVE)},
        )
        super().__init__(id, mode, value)  # pragma: no cover

    def _write(self, level: int) -> None:  # pragma: no cover - only on the board
        self._req.set_value(self._offset, self._values.ACTIVE if level else self._values.INACTIVE)

    def _read(self) -> int:  # pragma: no cover - only on the board
        return 1 if self._req.get_value(self._offset) == self._values.ACTIVE else 0

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


class SimBoard:
    """The simulated board's outputs by id, so the simulator can see what the daemon switched."""

    def __init__(self) -> None:
        self.pins: dict[str, SimPin] = {}

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
