"""Faults that components outside the safety core detect (a CAN bus off, a failing telemetry store).

Each is held here by name with its detail and whether it stops the output, raised and cleared with one
event each, and handed to the controller, which passes them to the safety core as inputs: one fault list
with one latch/clear policy (they clear by themselves when the condition is gone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EventSink = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True)
class ExternalFault:
    detail: str
    stops_output: bool  # True: 0 A and contactor open while active (e.g. the module bus is off)


class ExternalFaults:
    def __init__(self, on_event: EventSink) -> None:
        self.on_event = on_event
        self.active: dict[str, ExternalFault] = {}

    def set(self, name: str, detail: str, stops_output: bool = False) -> None:
        """Raise ``name`` (one event) or update its detail while it stays raised (no event)."""
        new = name not in self.active
        self.active[name] = ExternalFault(detail, stops_output)
        if new:
            self.on_event("fault_raised", name, {"detail": detail})

    def clear(self, name: str, reason: str = "") -> None:
        if self.active.pop(name, None) is not None:
            self.on_event("fault_cleared", name, {"reason": reason} if reason else {})

    def details(self) -> dict[str, str]:
        return {name: f.detail for name, f in self.active.items()}

    def core_input(self) -> list[list[Any]]:
        """The safety core's ``external_faults`` snapshot entry: [name, detail, stops_output] sorted by name."""
        return [[name, f.detail, f.stops_output] for name, f in sorted(self.active.items())]
