"""Our signal names -> OCPP measurand, phase and location, as data.

Signal names stay the authoritative key (``grid.Voltage.L1``, ``cable.pin_dc_plus_c``); the OCPP fields are
added to a sample where a measurand exists, so a charging backend maps them without a table of its own.
OCPP 1.6 / 2.0.1: ``Current.Import`` is current flowing to the EV, ``Current.Offered`` the maximum offered
to the EV, locations ``Inlet`` (grid connection), ``Outlet`` (connector), ``Cable``, ``Body``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from edge.limits import inputs as table

# OCPP measurands a meter signal name may start with (longest match wins).
METER_MEASURANDS: tuple[str, ...] = (
    "Current.Export",
    "Current.Import",
    "Current.Offered",
    "Energy.Active.Export.Register",
    "Energy.Active.Import.Register",
    "Energy.Reactive.Export.Register",
    "Energy.Reactive.Import.Register",
    "Frequency",
    "Power.Active.Export",
    "Power.Active.Import",
    "Power.Factor",
    "Power.Offered",
    "Power.Reactive.Export",
    "Power.Reactive.Import",
    "Temperature",
    "Voltage",
)
PHASES = ("L1", "L2", "L3", "N")

# Where a sensor of the input table sits (its ``place``) -> OCPP location: the pins are in the outlet.
OCPP_LOCATIONS = {"connector": "Outlet", "cable": "Cable"}

# Fixed suffixes of cable and module readings: suffix -> (measurand, location, point). The cable's
# temperatures come from the input table (edge/limits/inputs.py), their sensor family is the point.
SUFFIXES: dict[str, tuple[str, str, str | None]] = {
    **{
        e["reading"]: ("Temperature", OCPP_LOCATIONS[e["place"]], e["sensor"])
        for e in table.INPUTS
        if e["source"] == "cable" and e["unit"] == "°C" and e["place"] in OCPP_LOCATIONS
    },
    "temperature_c": ("Temperature", "Body", None),  # module.<n>.temperature_c
    "voltage_v": ("Voltage", "Body", None),  # module.<n>.voltage_v (DC output)
    "current_a": ("Current.Import", "Body", None),  # module.<n>.current_a (DC output, to the EV)
    "limit_a": ("Current.Offered", "Outlet", None),  # control.limit_a
}


@lru_cache(maxsize=4096)
def ocpp_fields(signal: str) -> tuple[tuple[str, Any], ...]:
    """Extra sample fields for ``signal``: measurand, phase, location, point (only those that apply)."""
    _, _, rest = signal.partition(".")
    last = signal.rsplit(".", 1)[-1]
    if last in SUFFIXES:
        measurand, location, point = SUFFIXES[last]
        out: list[tuple[str, Any]] = [("measurand", measurand), ("location", location)]
        return tuple(out + ([("point", point)] if point else []))
    for m in sorted(METER_MEASURANDS, key=len, reverse=True):
        if rest == m or rest.startswith(m + "."):
            phase = rest[len(m) + 1 :] or None
            if phase is not None and phase not in PHASES:
                return ()
            if phase and m == "Voltage" and phase != "N":
                phase = f"{phase}-N"  # OCPP names line-to-neutral voltages L1-N
            return (("measurand", m),) + ((("phase", phase),) if phase else ())
    return ()
