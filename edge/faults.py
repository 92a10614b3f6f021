"""Faults that components outside the safety core detect (a CAN bus off, a failing telemetry store).

Each is held here by name with its detail and whether it stops the output, and handed to the controller,
which passes them to the safety core as inputs (snapshot ``external_faults``): one fault list, one
latch/clear policy (they clear by themselves when the condition is gone), and the controller's one
``fault_raised`` / ``fault_cleared`` event per change, as for every other fault.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("edge.faults")
EventSink = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True)
class ExternalFault:
    detail: str
    stops_output: bool  # True: 0 A and contactor open while active (e.g. the module bus is off)


class ExternalFaults:
    def __init__(self, on_event: EventSink) -> None:
        self.on_event = on_event  # for state changes that are not faults (e.g. a bus going error-passive)
        self.active: dict[str, ExternalFault] = {}

    def set(self, name: str, detail: str, stops_output: bool = False) -> None:
        """Raise ``name``, or update its detail while it stays raised."""
        self.active[name] = ExternalFault(detail, stops_output)

    def clear(self, name: str, reason: str = "") -> None:
        """Gone (``reason`` goes to the journal; the fault_cleared event follows the next evaluation)."""
        if self.active.pop(name, None) is not None and reason:
            log.info("%s cleared: %s", name, reason)

    def core_input(self) -> list[list[Any]]:
        """The safety core's ``external_faults`` snapshot entry: [name, detail, stops_output] sorted by name."""
        return [[name, f.detail, f.stops_output] for name, f in sorted(self.active.items())]
