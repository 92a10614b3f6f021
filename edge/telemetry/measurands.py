"""Our signal names -> OCPP measurand, phase and location, as data.

Signal names stay the authoritative key (``grid.Voltage.L1``, ``cable.pin_dc_plus_c``); the OCPP fields are
added to a sample where a measurand exists, so a charging backend maps them without a table of its own.
A connector's signals are ``connector.<name>.<suffix>`` (:data:`CONNECTOR_SUFFIXES`; connector names never
hold a dot) and carry ``connector: <name>`` whether or not a measurand exists, so a backend groups them by
connector without parsing names (telemetry schema ``cabinet-edge/telemetry/2``, docs/TELEMETRY.md).
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


CONNECTOR_PREFIX = "connector"
# connector.<name>.<suffix> -> (OCPP measurand, location), or None where OCPP has no measurand (the sample
# still names its connector). OCPP's Import is seen from the EV: current and power flowing to the car.
CONNECTOR_SUFFIXES: dict[str, tuple[str, str] | None] = {
    "voltage_v": ("Voltage", "Outlet"),  # measured at the output (DC: no phase)
    "current_a": ("Current.Import", "Outlet"),  # measured at the output
    "limit_a": ("Current.Offered", "Outlet"),  # what the safety core allows this connector now
    "request_voltage_v": None,  # the charging controller's target voltage
    "request_current_a": None,  # ... and current limit
    "phase": None,  # PHASE_CODES
    # power sharing ([sharing] only): the module groups it has now and the power its vehicle is told
    "groups": None,
    "power_offered_kw": ("Power.Offered", "Outlet"),
}
# connector.<name>.phase as a number (unit ""): a code never changes meaning; new phases get new codes.
PHASE_CODES: dict[str, int] = {
    "Off": 0,  # no session: output off, contactor open
    "CableCheck": 1,  # insulation check at the check voltage, at most the pre-check current
    "PreCharge": 2,  # output brought to the battery voltage, at most the pre-check current
    "Charging": 3,  # current demand
    "Stopping": 4,  # session ended, waiting for the current to fall below the off current
    "Export": 5,  # exporting, the controller named no phase (EVerest "Other")
    "Import": 6,  # reserved: bidirectional (not supported)
    "Fault": 9,  # mode Fault: output off, the charging controller is told
}


def phase_code(mode: str, phase: str) -> int:
    """The code of ``connector.<name>.phase`` for a connector in ``mode`` and ``phase`` (EVerest names)."""
    if mode == "Fault" or phase == "Fault":
        return PHASE_CODES["Fault"]
    if phase in PHASE_CODES and phase not in ("Off", "Export", "Import"):
        return PHASE_CODES[phase]
    return PHASE_CODES.get(mode, PHASE_CODES["Off"])


def connector_signal(connector: str, suffix: str) -> str:
    """``connector.<name>.<suffix>``: the one place that spells a connector's signal names."""
    if suffix not in CONNECTOR_SUFFIXES:
        raise ValueError(f"unknown connector signal suffix {suffix!r} (known: {', '.join(CONNECTOR_SUFFIXES)})")
    return f"{CONNECTOR_PREFIX}.{connector}.{suffix}"


def _connector_fields(signal: str) -> tuple[tuple[str, Any], ...] | None:
    """OCPP fields of a connector signal; None when ``signal`` is not one (a meter named ``connector``
    keeps its meter names: only the suffixes above are connector signals)."""
    parts = signal.split(".")
    if len(parts) != 3 or parts[0] != CONNECTOR_PREFIX or not parts[1] or parts[2] not in CONNECTOR_SUFFIXES:
        return None
    ocpp = CONNECTOR_SUFFIXES[parts[2]]
    named = (("connector", parts[1]),)
    return named if ocpp is None else (("measurand", ocpp[0]), ("location", ocpp[1]), *named)


@lru_cache(maxsize=4096)
def ocpp_fields(signal: str) -> tuple[tuple[str, Any], ...]:
    """Extra sample fields for ``signal``: measurand, phase, location, point, connector (those that apply)."""
    conn = _connector_fields(signal)
    if conn is not None:
        return conn
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
