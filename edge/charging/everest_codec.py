"""EVerest ``power_supply_DC`` API, version 1: topics, payload checks and payloads, error mapping, and when to
republish capabilities. Pure: no paho, no threads, no clock reads (times are passed in, seconds).

Topics are ``<base>/power_supply_DC/<module_id>/e2m/<var>`` (EVerest to the supply: ``mode``,
``export_voltage_current``, ``import_voltage_current``, ``heartbeat``) and ``.../m2e/<var>`` (the supply to
EVerest: ``capabilities``, ``voltage_current``, ``mode``, ``raise_error``, ``clear_error``,
``communication_check``). Field names and enumerations as in everest-core's power_supply_DC API codec
(``lib/everest/everest_api_types/.../power_supply_DC/json_codec.cpp``) and its AsyncAPI file.

Every e2m payload is checked here before anything is applied (:func:`decode_e2m`); a refused one carries a
reason from :data:`REFUSALS`, which the adapter counts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.charging.demand import MODES, PHASES, Capabilities
from edge.limits import inputs

API = "power_supply_DC"
MAX_PAYLOAD_BYTES = 1024  # the largest e2m payload is ~60 bytes; anything bigger is garbage or abuse
E2M_VARS = ("mode", "export_voltage_current", "import_voltage_current", "heartbeat")
M2E_VARS = ("capabilities", "voltage_current", "mode", "raise_error", "clear_error", "communication_check")

# Why an e2m message was not applied (the adapter's stats count each)
REFUSALS = (
    "bad_topic",  # not <base>/power_supply_DC/<module_id>/e2m/<var>
    "retained",  # a retained message is old by definition (left on the broker by some earlier client)
    "unknown_module",  # a module id no connector is bound to
    "unknown_var",  # an e2m variable the API does not define
    "oversize",  # payload above MAX_PAYLOAD_BYTES
    "not_json",  # not UTF-8 JSON
    "wrong_type",  # JSON of the wrong shape (a string for a number, a bool, an array ...)
    "missing_field",  # a required field is absent
    "not_finite",  # NaN or +-Infinity (Python's json accepts the literals; EVerest never sends them)
    "negative",  # a negative voltage, current or heartbeat counter
    "above_capabilities",  # above the voltage or current last published in capabilities
    "no_capabilities",  # a set-point before any capabilities were published for the connector
    "unknown_mode",  # mode not one of Off, Export, Import, Fault
    "unknown_phase",  # charging_phase not one of Other, CableCheck, PreCharge, Charging
    "import_refused",  # Import mode or import_voltage_current: this cabinet cannot take power back
)

# EVerest converts set-points to float32 before publishing: 150.3 arrives as 150.300003
_FLOAT32_REL = 1e-5
_FLOAT32_ABS = 1e-3


# -- topics -------------------------------------------------------------------------------------------------


def e2m_topic(base: str, module_id: str, var: str) -> str:
    return f"{base}/{API}/{module_id}/e2m/{var}"


def m2e_topic(base: str, module_id: str, var: str) -> str:
    return f"{base}/{API}/{module_id}/m2e/{var}"


def e2m_filter(base: str) -> str:
    """One subscription for every bound module id (others are refused as ``unknown_module``)."""
    return f"{base}/{API}/+/e2m/+"


def parse_e2m_topic(base: str, topic: str) -> tuple[str, str] | None:
    """``(module_id, var)`` of an e2m topic under ``base``, or None."""
    prefix = f"{base}/{API}/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 3 or parts[1] != "e2m" or not parts[0] or not parts[2]:
        return None
    return parts[0], parts[2]


# -- e2m: what EVerest asks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeRequest:
    mode: str
    phase: str


@dataclass(frozen=True)
class TargetRequest:
    voltage_v: float
    current_a: float


@dataclass(frozen=True)
class HeartbeatRequest:
    counter: int | None  # None: EVerest sent ``{}``


@dataclass(frozen=True)
class Refusal:
    reason: str  # one of REFUSALS
    detail: str


Decoded = ModeRequest | TargetRequest | HeartbeatRequest | Refusal


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _reject_constant(name: str) -> Any:
    raise _Refused("not_finite", f"JSON literal {name}")


def _loads(payload: bytes) -> Any:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _Refused("oversize", f"{len(payload)} bytes (max {MAX_PAYLOAD_BYTES})")
    try:
        return json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except _Refused:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Refused("not_json", str(exc)[:80]) from None


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _Refused("wrong_type", f"expected an object, got {type(body).__name__}")
    return body


def _number(body: dict[str, Any], key: str) -> float:
    if key not in body:
        raise _Refused("missing_field", f"{key} missing")
    v = body[key]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _Refused("wrong_type", f"{key} is {type(v).__name__}, expected a number")
    f = float(v)  # a huge integer literal raises OverflowError: caught by the caller as wrong_type
    if not math.isfinite(f):  # 1e999 parses to inf
        raise _Refused("not_finite", f"{key} = {v}")
    if f < 0.0:
        raise _Refused("negative", f"{key} = {f:g}")
    return f


def _enum(body: dict[str, Any], key: str, allowed: tuple[str, ...], reason: str) -> str:
    if key not in body:
        raise _Refused("missing_field", f"{key} missing")
    v = body[key]
    if not isinstance(v, str):
        raise _Refused("wrong_type", f"{key} is {type(v).__name__}, expected a string")
    if v not in allowed:
        raise _Refused(reason, f"{key} = {v[:40]!r}")
    return v


def _above(value: float, limit: float) -> bool:
    return value > limit * (1.0 + _FLOAT32_REL) + _FLOAT32_ABS


def _mode(body: Any) -> ModeRequest:
    obj = _object(body)
    mode = _enum(obj, "mode", MODES, "unknown_mode")
    phase = _enum(obj, "charging_phase", PHASES, "unknown_phase")
    if mode == "Import":
        raise _Refused("import_refused", "Import mode: not bidirectional")
    return ModeRequest(mode, phase)


def _target(body: Any, caps: Capabilities | None) -> TargetRequest:
    obj = _object(body)
    voltage_v = _number(obj, "voltage_V")
    current_a = _number(obj, "current_A")
    if caps is None:
        raise _Refused("no_capabilities", "set-point before capabilities were published")
    if _above(voltage_v, caps.max_export_voltage_v):
        raise _Refused("above_capabilities", f"voltage_V {voltage_v:g} > {caps.max_export_voltage_v:g}")
    if _above(current_a, caps.max_export_current_a):
        raise _Refused("above_capabilities", f"current_A {current_a:g} > {caps.max_export_current_a:g}")
    return TargetRequest(voltage_v, current_a)


def _heartbeat(body: Any) -> HeartbeatRequest:
    if isinstance(body, dict):  # EVerest versions differ: an empty object or an increasing integer
        return HeartbeatRequest(None)
    if isinstance(body, bool) or not isinstance(body, int):
        raise _Refused("wrong_type", f"heartbeat is {type(body).__name__}, expected an integer or {{}}")
    if body < 0:
        raise _Refused("negative", f"heartbeat {body}")
    return HeartbeatRequest(body)


def decode_e2m(var: str, payload: bytes, caps: Capabilities | None) -> Decoded:
    """Check one e2m message; ``caps`` are the connector's capabilities as last published to EVerest."""
    if var not in E2M_VARS:
        return Refusal("unknown_var", var[:40])
    try:
        if var == "import_voltage_current":
            raise _Refused("import_refused", "import_voltage_current: not bidirectional")
        body = _loads(payload)
        if var == "mode":
            return _mode(body)
        if var == "export_voltage_current":
            return _target(body, caps)
        return _heartbeat(body)
    except _Refused as r:
        return Refusal(r.reason, r.detail)
    except OverflowError as exc:
        return Refusal("wrong_type", str(exc)[:80])


# -- m2e: what the cabinet reports --------------------------------------------------------------------------


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def capabilities_payload(c: Capabilities) -> bytes:
    """The required fields (``bidirectional`` false); ``min_export_current_A`` never above the maximum, so a
    connector derated to 0 A stays a valid message."""
    max_a = max(0.0, c.max_export_current_a)
    return _dumps(
        {
            "bidirectional": False,
            "current_regulation_tolerance_A": round(c.current_regulation_tolerance_a, 3),
            "peak_current_ripple_A": round(c.peak_current_ripple_a, 3),
            "max_export_voltage_V": round(c.max_export_voltage_v, 3),
            "min_export_voltage_V": round(min(c.min_export_voltage_v, c.max_export_voltage_v), 3),
            "max_export_current_A": round(max_a, 3),
            "min_export_current_A": round(min(c.min_export_current_a, max_a), 3),
            "max_export_power_W": round(max(0.0, c.max_export_power_w), 1),
        }
    )


def voltage_current_payload(voltage_v: float, current_a: float) -> bytes | None:
    """None when a measurement is not a finite number (EVerest's parser refuses NaN); small negative
    readings (sensor offset at 0 A) are sent as they are."""
    if not (math.isfinite(voltage_v) and math.isfinite(current_a)):
        return None
    return _dumps({"voltage_V": round(voltage_v, 2), "current_A": round(current_a, 2)})


def mode_payload(mode: str) -> bytes:
    return _dumps(mode)


COMMUNICATION_CHECK_PAYLOAD = b"true"


# -- errors: our faults as EVerest errors -------------------------------------------------------------------

ERROR_TYPES = (
    "CommunicationFault",
    "HardwareFault",
    "OverTemperature",
    "UnderTemperature",
    "UnderVoltageAC",
    "OverVoltageAC",
    "UnderVoltageDC",
    "OverVoltageDC",
    "OverCurrentAC",
    "OverCurrentDC",
    "VendorError",
    "VendorWarning",
)

# Our fault name -> EVerest error type (None: not an error, the connector's capabilities carry it), and the
# message sent. The sub_type is always our fault name, so two faults of one type are raised and cleared one
# by one. A key starting with "_" is a suffix family (pin_dc_plus_stale), one ending in "_" or "." a prefix
# family (module_lost_2, can_bus_off.can1); exact names win over families. A fault name not in the table is
# a VendorError (it stops the session: a new stopping fault is never silently ignored).
ERROR_TABLE: tuple[tuple[str, str | None, str], ...] = (
    ("pin_over_temperature", "OverTemperature", "cable pin over-temperature trip"),
    ("coolant_over_temperature", "OverTemperature", "coolant over-temperature trip"),
    ("module_over_temperature", "OverTemperature", "power module over-temperature trip"),
    ("ambient_over_temperature", "OverTemperature", "cabinet ambient over-temperature trip"),
    ("over_current", "OverCurrentDC", "DC output over-current"),
    ("over_voltage", "OverVoltageDC", "DC output over-voltage"),
    ("over_voltage_error", "OverVoltageDC", "DC output above the negotiated maximum (IEC 61851-23 Table 104)"),
    ("over_voltage_emergency", "OverVoltageDC", "DC output above the emergency limit (IEC 61851-23 Table 103)"),
    ("cable_check_failed", "VendorError", "cable check failed: insulation below the threshold"),
    ("isolation_fault", "VendorError", "insulation fault while charging"),
    ("isolation_warning", "VendorWarning", "insulation low while charging (warning)"),
    ("isolation_monitor_lost", "HardwareFault", "the cabinet's insulation monitor is not answering"),
    ("isolation_monitor_fault", "HardwareFault", "the cabinet's insulation monitor reports a device fault"),
    ("coolant_flow_low", "HardwareFault", "coolant flow too low"),
    ("coolant_leak", "HardwareFault", "coolant leak"),
    ("pins_disagree", "HardwareFault", "cable pin sensors disagree"),
    ("_missing", "HardwareFault", "safety sensor missing"),
    ("_stale", "HardwareFault", "safety sensor stale"),
    ("_invalid", "HardwareFault", "safety sensor invalid"),
    ("_implausible", "HardwareFault", "safety sensor implausible"),
    ("no_module_available", "HardwareFault", "no power module available"),
    ("all_modules_lost", "CommunicationFault", "all power modules lost"),
    ("can_bus_off", "CommunicationFault", "power module bus off"),
    ("can_bus_off.", "CommunicationFault", "power module bus off"),
    ("module_lost_", None, "one power module lost: its share leaves the capabilities"),
    ("module_alarm_", None, "one power module in alarm: its share leaves the capabilities"),
    ("grid_meter_lost", None, "grid fallback limit: capabilities"),
    ("telemetry_store_error", None, "telemetry only: charging unaffected"),
    ("group_not_off_", None, "a module group out of service: its share leaves the capabilities"),
    ("relay_stuck_", None, "a module group out of service: its share leaves the capabilities"),
    ("relay_failed_to_close_", None, "a module group out of service: its share leaves the capabilities"),
    ("relay_not_open_", None, "a module group out of service: its share leaves the capabilities"),
    ("request_stale", None, "the controller's own requests stopped: reported as mode Off, not as a fault"),
    # ChargeX MREC17EVSEContactorFault, on that connector's power_supply_DC module
    ("contactor_welded", "HardwareFault", "MREC17EVSEContactorFault: contactor welded, connector out of service"),
    ("contactor_failed_to_close", "HardwareFault", "MREC17EVSEContactorFault: contactor failed to close"),
    ("precharge_timeout", "HardwareFault", "pre-charge voltage not reached in time"),
    # the cabinet's digital safety inputs; the MREC / board-support name in the message for the operator
    ("emergency_stop", "HardwareFault", "emergency stop pressed or latched (MREC8EmergencyStop)"),
    ("water_ingress", "HardwareFault", "water in the cabinet (WaterIngressDetected)"),
    ("tilt", "HardwareFault", "cabinet tilted (TiltDetected)"),
    # stop or derate per door_action: the cabinet's mode and capabilities carry it, the warning says why
    ("door_open", "VendorWarning", "cabinet door open during a session (EnclosureOpen)"),
)
UNKNOWN_FAULT_TYPE = "VendorError"
MODULES_UNREACHABLE = "modules_unreachable"  # sub_type of the CommunicationFault from modules_reachable False
_EXACT = {name: (kind, msg) for name, kind, msg in ERROR_TABLE if not (name[0] == "_" or name[-1] in "_.")}
_FAMILIES = tuple((name, kind, msg) for name, kind, msg in ERROR_TABLE if name[0] == "_" or name[-1] in "_.")


@dataclass(frozen=True)
class EverestError:
    type: str  # one of ERROR_TYPES
    sub_type: str  # our fault name
    message: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.type, self.sub_type)


def everest_error(fault: str) -> EverestError | None:
    """The EVerest error for one of our fault names, None when it is not an error for EVerest."""
    hit = _EXACT.get(fault)
    if hit is None:
        for name, kind, msg in _FAMILIES:
            if (name[0] == "_" and fault.endswith(name)) or (name[0] != "_" and fault.startswith(name)):
                hit = (kind, msg)
                break
    if hit is None:
        return EverestError(UNKNOWN_FAULT_TYPE, fault, f"cabinet fault {fault}")
    kind, msg = hit
    return None if kind is None else EverestError(kind, fault, msg)


def wanted_errors(faults: Iterable[str], modules_reachable: bool) -> dict[tuple[str, str], EverestError]:
    """Every EVerest error that should be active for a connector's faults and module reachability."""
    out = {}
    for fault in faults:
        err = everest_error(fault)
        if err is not None:
            out[err.key] = err
    if not modules_reachable:
        err = EverestError("CommunicationFault", MODULES_UNREACHABLE, "power modules of this connector unreachable")
        out[err.key] = err
    return out


def possible_errors() -> list[EverestError]:
    """Every error this table can raise whose sub_type can be listed: the exact names, the sensor families
    over every safety input's sensor, the unreachable modules. On its first connect the adapter clears
    those it does not want: a previous run of the daemon may have left them raised in EVerest, where
    they would block charging until EVerest restarts (clearing an error that is not active is a no-op)."""
    names = set(_EXACT)
    sensors = {inputs.sensor(n) for n in inputs.BY_NAME}
    names |= {s + fam for s in sensors for fam, _k, _m in _FAMILIES if fam[0] == "_"}
    out = {e.key: e for e in (everest_error(n) for n in sorted(names)) if e is not None}
    comm = wanted_errors((), modules_reachable=False)
    return [*(out[k] for k in sorted(out)), *comm.values()]


def error_changes(
    raised: Mapping[tuple[str, str], EverestError],
    wanted: Mapping[tuple[str, str], EverestError],
    hold_communication: bool,
) -> tuple[list[EverestError], list[EverestError]]:
    """(to raise, to clear), each sorted. ``hold_communication`` keeps CommunicationFault errors raised one
    more cycle: the interface wants the cached mode and set-point applied before the fault clears."""
    to_raise = [wanted[k] for k in sorted(wanted) if k not in raised]
    to_clear = [
        raised[k]
        for k in sorted(raised)
        if k not in wanted and not (hold_communication and raised[k].type == "CommunicationFault")
    ]
    return to_raise, to_clear


def error_payload(err: EverestError) -> bytes:
    return _dumps({"type": err.type, "sub_type": err.sub_type, "message": err.message})


# -- capabilities: when to republish ------------------------------------------------------------------------

DROP_DEADBAND_A = 0.5  # a fall of the current limit smaller than this waits like a rise (sensor noise)
DROP_DEADBAND_POWER = 0.005  # the same for power, as a fraction
RISE_POWER_FRACTION = 0.05  # a rise of power by more than this fraction is worth a republish


def capabilities_due(
    published: Capabilities | None,
    published_t: float | None,
    now_caps: Capabilities,
    now: float,
    min_interval_s: float,
    hysteresis_a: float,
) -> str | None:
    """Why ``now_caps`` must be published now ("first", "drop", "rise", "changed"), or None.

    A drop of the current or power limit below what was last published goes out at once, whatever the
    interval: the vehicle must learn a derating before the cabinet limits it. Rises (by more than
    ``hysteresis_a`` or 5 % power) and changes of the other fields wait for ``min_interval_s`` since the
    last publish. A drop always lowers the published value, and small rises are never published, so a
    noisy limit ratchets down once instead of flapping; a steady fall goes out at most once per check of
    the caller (its tick bounds the rate).
    """
    if published is None or published_t is None:
        return "first"
    if now_caps.max_export_current_a < published.max_export_current_a - DROP_DEADBAND_A:
        return "drop"
    if now_caps.max_export_power_w < published.max_export_power_w * (1.0 - DROP_DEADBAND_POWER):
        return "drop"
    if now - published_t < min_interval_s:
        return None
    if now_caps.max_export_current_a > published.max_export_current_a + hysteresis_a:
        return "rise"
    if now_caps.max_export_power_w > published.max_export_power_w * (1.0 + RISE_POWER_FRACTION):
        return "rise"
    if (
        now_caps.max_export_voltage_v != published.max_export_voltage_v
        or now_caps.min_export_voltage_v != published.min_export_voltage_v
        or now_caps.min_export_current_a != published.min_export_current_a
        or now_caps.current_regulation_tolerance_a != published.current_regulation_tolerance_a
        or now_caps.peak_current_ripple_a != published.peak_current_ripple_a
    ):
        return "changed"
    return None
