"""The one reading type every driver returns: value, unit, time and quality."""

from __future__ import annotations

from dataclasses import dataclass

OK = "ok"
STALE = "stale"  # no fresh value within the configured age
INVALID = "invalid"  # a value arrived but cannot be trusted (out of range, CRC, counter, status bit)
QUALITIES = (OK, STALE, INVALID)


@dataclass(frozen=True, slots=True)
class Reading:
    """One measured value.

    ``signal`` is a stable dotted name (OCPP measurand where one exists, e.g. ``Current.Import.L1``);
    ``t`` is the monotonic time (s) the value was received; ``quality`` is one of :data:`QUALITIES`;
    ``urgent``: the controller evaluates at once when it arrives instead of at its next tick (safety
    inputs: cable temperatures and coolant, module alarms; a GPIO or Modbus input may set it too).
    """

    signal: str
    value: float
    unit: str
    t: float
    quality: str = OK
    urgent: bool = False
