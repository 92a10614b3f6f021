"""The one table of the safety inputs, and the one table of where each fault is documented.

Everything that names a safety input reads it here: the core (which inputs are required, how old they may
be, their sensor family in fault names, their label in texts, which get the rate-of-change check),
``edge/state.py`` (which driver reading feeds which core input), the status text, the telemetry measurands
and the self-test. Pure data plus small lookups, written like core.py so it runs unchanged under MicroPython
(the core imports it there too): no imports, plain tuples and dicts, builtin types in annotations only.

One entry per input (a dict with every key below):

- ``name``: the core input name, the key in ``snapshot["inputs"]`` (unit in the name: ``_c``, ``_lpm``, ``_a``);
- ``reading``: the suffix of the driver's reading (``<device>.<reading>``), the name unless the driver
  spells it differently (the cable monitor's leak bit is ``<cable>.leak``); for ``ambient`` the whole
  reading name comes from the config (``limits.ambient_signal``) and this is unused;
- ``label`` (in fault and limit texts: ``cable DC+ pin``), ``short`` (status and self-test: ``pin DC+``),
  ``unit``, ``digits`` (decimals shown);
- ``sensor``: the sensor family in fault names (``pin_dc_plus`` -> ``pin_dc_plus_stale``);
- ``source``: ``cable`` | ``module`` | ``ambient`` | ``grid`` | ``output`` (which device produces it);
  ``place``: where the sensor sits (``connector`` for the pins, else the source; telemetry maps it to the
  OCPP location);
- ``stale``: ``fast`` (``sensor_stale_ms``), ``slow`` (``slow_input_stale_ms``), ``grid``
  (``grid.meter_loss_ms``): how old a sample may be;
- ``required``: ``always`` (missing, stale or invalid -> 0 A and a fault), ``configured`` (the same once
  the snapshot says ``<source>_configured``), ``optional`` (its rule acts only while it reports),
  ``monitor`` (no rule reads it: shown and recorded only, so those places name it from here too);
- ``rate_check``: the temperature rate-of-change plausibility applies;
- ``docs``: section of docs/SAFETY.md about it; ``selftest``: the technician self-test shows it.
"""

ALWAYS = "always"
CONFIGURED = "configured"
OPTIONAL = "optional"
MONITOR = "monitor"


def _input(
    name: str,
    label: str,
    unit: str,
    sensor: str,
    source: str,
    stale: str,
    required: str,
    docs: str,
    reading: str | None = None,
    short: str | None = None,
    digits: int = 1,
    rate_check: bool = False,
    selftest: bool = False,
    place: str | None = None,
) -> dict:
    return {
        "name": name,
        "reading": reading if reading is not None else name,
        "label": label,
        "short": short if short is not None else label,
        "unit": unit,
        "digits": digits,
        "sensor": sensor,
        "source": source,
        "place": place if place is not None else source,
        "stale": stale,
        "required": required,
        "rate_check": rate_check,
        "docs": docs,
        "selftest": selftest,
    }


# The order matters to the core: required inputs are checked in this order, and among equal limits the
# first one names the rule (so with two sensors lost at once the reason names the first of them).
INPUTS = (
    _input(
        "pin_dc_plus_c",
        "cable DC+ pin",
        "°C",
        "pin_dc_plus",
        "cable",
        "fast",
        ALWAYS,
        "pin_over_temperature",
        short="pin DC+",
        place="connector",
        rate_check=True,
        selftest=True,
    ),
    _input(
        "pin_dc_minus_c",
        "cable DC- pin",
        "°C",
        "pin_dc_minus",
        "cable",
        "fast",
        ALWAYS,
        "pin_over_temperature",
        short="pin DC-",
        place="connector",
        rate_check=True,
        selftest=True,
    ),
    _input(
        "coolant_out_c",
        "coolant outlet",
        "°C",
        "coolant_out",
        "cable",
        "fast",
        ALWAYS,
        "coolant_over_temperature",
        short="coolant out",
        rate_check=True,
        selftest=True,
    ),
    _input(
        "coolant_flow_lpm",
        "coolant flow",
        "l/min",
        "coolant_flow",
        "cable",
        "fast",
        ALWAYS,
        "coolant_flow_low",
        digits=2,
        selftest=True,
    ),
    _input(
        "coolant_leak", "coolant leak sensor", "", "coolant_leak", "cable", "fast", OPTIONAL, "coolant_leak", "leak"
    ),
    _input(
        "coolant_in_c",
        "coolant inlet",
        "°C",
        "coolant_in",
        "cable",
        "fast",
        MONITOR,
        "inputs",
        short="coolant in",
        selftest=True,
    ),
    _input(
        "coolant_pressure_bar",
        "coolant pressure",
        "bar",
        "coolant_pressure",
        "cable",
        "fast",
        MONITOR,
        "inputs",
        digits=2,
        selftest=True,
    ),
    _input("module_temp_c", "power module", "°C", "module_temp", "module", "slow", OPTIONAL, "module_over_temperature"),
    _input(
        "ambient_c",
        "cabinet ambient",
        "°C",
        "ambient",
        "ambient",
        "slow",
        CONFIGURED,
        "ambient_over_temperature",
        place="cabinet",
    ),
    _input("output_a", "output current", "A", "output", "output", "slow", OPTIONAL, "over_current"),
    _input("output_v", "output voltage", "V", "output", "output", "slow", OPTIONAL, "over_voltage"),
    _input(
        "grid_l1_a", "grid L1", "A", "grid_meter", "grid", "grid", CONFIGURED, "grid_meter_lost", "Current.Import.L1"
    ),
    _input(
        "grid_l2_a", "grid L2", "A", "grid_meter", "grid", "grid", CONFIGURED, "grid_meter_lost", "Current.Import.L2"
    ),
    _input(
        "grid_l3_a", "grid L3", "A", "grid_meter", "grid", "grid", CONFIGURED, "grid_meter_lost", "Current.Import.L3"
    ),
)

BY_NAME = {}  # type: dict  # name -> entry
for _e in INPUTS:
    BY_NAME[_e["name"]] = _e


def names_where(key: str, value: object) -> tuple:
    """Names of the inputs whose ``key`` equals ``value``, in table order (``names_where("source", "cable")``)."""
    return tuple([e["name"] for e in INPUTS if e[key] == value])


def _family(sensor_family: str) -> str:
    return names_where("sensor", sensor_family)[0]


# The inputs code must name (a rule, a status line), by their table entry: each name is spelled once, above.
PIN_DC_PLUS = _family("pin_dc_plus")
PIN_DC_MINUS = _family("pin_dc_minus")
COOLANT_OUT = _family("coolant_out")
COOLANT_IN = _family("coolant_in")
COOLANT_FLOW = _family("coolant_flow")
COOLANT_PRESSURE = _family("coolant_pressure")
COOLANT_LEAK = _family("coolant_leak")
SELFTEST = names_where("selftest", True)  # the technician self-test's rows, in table order


def entry(name: str) -> dict:
    """The table entry of a core input (KeyError for a name that is not in the table)."""
    return BY_NAME[name]


def label(name: str) -> str:
    return BY_NAME[name]["label"]


def sensor(name: str) -> str:
    return BY_NAME[name]["sensor"]


def reading(name: str) -> str:
    """Suffix of the driver reading that feeds ``name`` (``coolant_leak`` -> ``leak``)."""
    return BY_NAME[name]["reading"]


# Fault name (or its family) -> section of docs/SAFETY.md. Every fault the core can raise is here, and the
# faults raised outside the core that enter it as ``external_faults``; the vector test checks each is raised.
# A key starting with "_" is a suffix family (pin_dc_plus_stale), one ending in "_" or "." a prefix family
# (module_lost_2, can_bus_off.can1).
DOCS = "docs/SAFETY.md#"
FAULT_DOCS = {
    "pin_over_temperature": "pin_over_temperature",
    "coolant_over_temperature": "coolant_over_temperature",
    "module_over_temperature": "module_over_temperature",
    "ambient_over_temperature": "ambient_over_temperature",
    "coolant_flow_low": "coolant_flow_low",
    "coolant_leak": "coolant_leak",
    "over_current": "over_current",
    "over_voltage": "over_voltage",
    "grid_meter_lost": "grid_meter_lost",
    "pins_disagree": "pins_disagree",
    "_missing": "sensor_missing",
    "_stale": "sensor_stale",
    "_invalid": "sensor_invalid",
    "_implausible": "sensor_implausible",
    "module_lost_": "module_lost",
    "module_alarm_": "module_alarm",
    "all_modules_lost": "all_modules_lost",
    "no_module_available": "all_modules_lost",
    "can_bus_off": "can_bus_off",
    "can_bus_off.": "can_bus_off",
    "telemetry_store_error": "telemetry_store_error",
    "request_stale": "request_stale",
    "contactor_welded": "contactor_welded",
    "contactor_failed_to_close": "contactor_failed_to_close",
    "precharge_timeout": "precharge_timeout",
    # the cabinet's digital safety inputs (safety_inputs.py)
    "emergency_stop": "emergency_stop",
    "door_open": "door_open",
    "water_ingress": "water_ingress",
    "tilt": "tilt",
    # isolation monitor and cable check (isolation.py), over-voltage by IEC 61851-23 (overvoltage.py)
    "cable_check_failed": "cable_check_failed",
    "isolation_fault": "isolation_fault",
    "isolation_warning": "isolation_warning",
    "isolation_monitor_lost": "isolation_monitor_lost",
    "isolation_monitor_fault": "isolation_monitor_lost",
    "over_voltage_error": "over_voltage_error",
    "over_voltage_emergency": "over_voltage_emergency",
    # power sharing (edge/charging/sharing.py): a module group out of service, named by its group (relay_stuck_C)
    "group_not_off_": "module_group_out_of_service",
    "relay_stuck_": "module_group_out_of_service",
    "relay_failed_to_close_": "module_group_out_of_service",
    "relay_not_open_": "module_group_out_of_service",
}
_FAMILIES = tuple(sorted([k for k in FAULT_DOCS if k[0] == "_" or k[-1] in "_."]))


def _in_family(name: str, key: str) -> bool:
    if key[0] == "_":
        return name.endswith(key)
    return name.startswith(key)


def fault_doc(name: str) -> str:
    """docs/SAFETY.md section of a fault name (``pin_dc_plus_stale`` -> ``...#sensor_stale``)."""
    if name in FAULT_DOCS:
        return DOCS + FAULT_DOCS[name]
    for key in _FAMILIES:
        if _in_family(name, key):
            return DOCS + FAULT_DOCS[key]
    return DOCS + "faults"
