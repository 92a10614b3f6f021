"""EVerest's ``isolation_monitor`` and ``over_voltage_monitor`` APIs, version 1: topics, e2m payload checks,
m2e payloads and which errors must be raised. Pure: no paho, no threads, no clock reads.

Topics as in everest-core's AsyncAPI files (``isolation_monitor_API.yaml``, ``over_voltage_monitor_API.yaml``)
and the API modules that follow them: ``<base>/<api>/<module_id>/e2m/<var>`` (EVerest to the cabinet) and
``.../m2e/<var>`` (the cabinet to EVerest), JSON payloads.

- isolation_monitor e2m: ``start``, ``stop`` (``{}``), ``start_self_test`` (a number: the test voltage, V),
  ``heartbeat``; m2e: ``isolation_measurement`` ``{"resistance_F_Ohm", "voltage_V"?}`` while started,
  ``self_test_result`` (``true``/``false``, once per test), ``raise_error``/``clear_error`` ``{"type",
  "sub_type", "message"}`` (DeviceFault, CommunicationFault: device problems only; a low resistance is a
  value, EVerest decides), ``communication_check`` (``true``).
- over_voltage_monitor e2m: ``set_limits`` ``{"emergency_limit_V", "error_limit_V"}``, ``start``, ``stop``,
  ``reset_over_voltage_error`` (``{}``), ``heartbeat``; m2e: ``voltage_measurement_V`` (a number),
  ``raise_error``/``clear_error`` (``MREC5OverVoltage`` with a ``severity``), ``communication_check``.

Every e2m payload is checked before it is applied (:func:`decode_e2m`); a refused one carries a reason from
:data:`everest_codec.REFUSALS` or :data:`REFUSALS`, which the adapter counts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.charging.everest_codec import Refusal, _heartbeat, _loads, _number, _object, _Refused

IMD_API = "isolation_monitor"
OVM_API = "over_voltage_monitor"
APIS = (IMD_API, OVM_API)
E2M_VARS = {
    IMD_API: ("start", "stop", "start_self_test", "heartbeat"),
    OVM_API: ("set_limits", "start", "stop", "reset_over_voltage_error", "heartbeat"),
}
REFUSALS = (
    "out_of_range",  # a limit or test voltage outside MAX_LIMIT_V, or zero
    "limits_order",  # error_limit_V above emergency_limit_V
)
MAX_LIMIT_V = 2000.0  # no DC charger output goes beyond this: a higher limit is garbage
COMMUNICATION_CHECK_PAYLOAD = b"true"

# our fault names that are an over-voltage shutdown (edge/limits/overvoltage.py), by severity for EVerest:
# both are the cabinet's SOFTWARE shutdown (an error shutdown for EVerest: Medium); "High" means the
# hardware's 9 ms emergency shutdown already happened, which this software does not see
OVER_VOLTAGE_FAULTS = {"over_voltage_error": "Medium", "over_voltage_emergency": "Medium"}
MREC5 = "MREC5OverVoltage"


# -- topics -------------------------------------------------------------------------------------------------


def m2e_topic(base: str, api: str, module_id: str, var: str) -> str:
    return f"{base}/{api}/{module_id}/m2e/{var}"


def e2m_topic(base: str, api: str, module_id: str, var: str) -> str:
    return f"{base}/{api}/{module_id}/e2m/{var}"


def e2m_filter(base: str, api: str) -> str:
    return f"{base}/{api}/+/e2m/+"


def parse_e2m_topic(base: str, topic: str) -> tuple[str, str, str] | None:
    """``(api, module_id, var)`` of an e2m topic of either API under ``base``, or None."""
    prefix = f"{base}/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 4 or parts[0] not in APIS or parts[2] != "e2m" or not parts[1] or not parts[3]:
        return None
    return parts[0], parts[1], parts[3]


# -- e2m ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    pass


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class SelfTest:
    voltage_v: float


@dataclass(frozen=True)
class Limits:
    emergency_v: float
    error_v: float


@dataclass(frozen=True)
class Reset:
    pass


@dataclass(frozen=True)
class Heartbeat:
    counter: int | None


Request = Start | Stop | SelfTest | Limits | Reset | Heartbeat
Decoded = Request | Refusal


def _empty(payload: bytes) -> None:
    """``{}`` as EVerest sends it (an empty payload and any object are taken too: nothing in them counts)."""
    if payload.strip():
        _object(_loads(payload))


def _volts(body: dict[str, Any], key: str) -> float:
    v = _number(body, key)
    if not 0.0 < v <= MAX_LIMIT_V:
        raise _Refused("out_of_range", f"{key} = {v:g} (allowed 0 < V <= {MAX_LIMIT_V:g})")
    return v


def _self_test(payload: bytes) -> SelfTest:
    body = _loads(payload)
    v = _number({"test_voltage_V": body}, "test_voltage_V")
    if v > MAX_LIMIT_V:
        raise _Refused("out_of_range", f"test voltage {v:g} V (max {MAX_LIMIT_V:g})")
    return SelfTest(v)


def _limits(payload: bytes) -> Limits:
    obj = _object(_loads(payload))
    emergency_v = _volts(obj, "emergency_limit_V")
    error_v = _volts(obj, "error_limit_V")
    if error_v > emergency_v:
        raise _Refused("limits_order", f"error_limit_V {error_v:g} above emergency_limit_V {emergency_v:g}")
    return Limits(emergency_v, error_v)


def decode_e2m(api: str, var: str, payload: bytes) -> Decoded:
    """Check one e2m message of ``api``; never raises."""
    if var not in E2M_VARS.get(api, ()):
        return Refusal("unknown_var", var[:40])
    try:
        if var == "heartbeat":
            hb = _heartbeat(_loads(payload))
            return Heartbeat(hb.counter)
        if var == "start_self_test":
            return _self_test(payload)
        if var == "set_limits":
            return _limits(payload)
        _empty(payload)
        if var == "start":
            return Start()
        return Stop() if var == "stop" else Reset()
    except _Refused as r:
        return Refusal(r.reason, r.detail)
    except OverflowError as exc:
        return Refusal("wrong_type", str(exc)[:80])


# -- m2e ----------------------------------------------------------------------------------------------------


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def isolation_measurement_payload(resistance_ohm: float | None, voltage_v: float | None) -> bytes | None:
    """None without a valid resistance (no value during a self-test, NaN, negative): EVerest's parser
    needs ``resistance_F_Ohm``; the voltage is left out when it is not a finite number."""
    if resistance_ohm is None or not math.isfinite(resistance_ohm) or resistance_ohm < 0.0:
        return None
    body: dict[str, float] = {"resistance_F_Ohm": round(resistance_ohm, 1)}
    if voltage_v is not None and math.isfinite(voltage_v):
        body["voltage_V"] = round(voltage_v, 2)
    return _dumps(body)


def self_test_result_payload(passed: bool) -> bytes:
    return b"true" if passed else b"false"


def voltage_measurement_payload(voltage_v: float | None) -> bytes | None:
    if voltage_v is None or not math.isfinite(voltage_v):
        return None
    return _dumps(round(voltage_v, 2))


@dataclass(frozen=True)
class MonitorError:
    type: str
    sub_type: str
    message: str
    severity: str | None = None  # over_voltage_monitor only

    @property
    def key(self) -> tuple[str, str]:
        return (self.type, self.sub_type)


def error_payload(err: MonitorError) -> bytes:
    body = {"type": err.type, "sub_type": err.sub_type, "message": err.message}
    if err.severity is not None:
        body["severity"] = err.severity
    return _dumps(body)


# -- isolation_monitor: errors and the self-test ------------------------------------------------------------

IMD_DEVICE_FAULT = MonitorError("DeviceFault", "isolation_monitor_fault", "the IMD reports a device fault")
IMD_COMMUNICATION_FAULT = MonitorError(
    "CommunicationFault", "isolation_monitor_lost", "the cabinet does not reach its IMD (Modbus)"
)
IMD_ERRORS = (IMD_DEVICE_FAULT, IMD_COMMUNICATION_FAULT)


IMD_FIRST_READING_S = 5.0  # after the start, an IMD not yet read is not yet a communication fault


def imd_wanted_errors(imd: Mapping[str, Any] | None, running_s: float) -> dict[tuple[str, str], MonitorError]:
    """The errors that must be active for the IMD's snapshot entry (edge/isolation_link.py): a device fault
    or a silent IMD; a reading (however low) is no error. ``running_s``: time since the adapter started (the
    first poll of the IMD may not have happened yet)."""
    status = None if imd is None else imd.get("status")
    if status == "fault":
        return {IMD_DEVICE_FAULT.key: IMD_DEVICE_FAULT}
    if imd is not None and imd.get("t") is None and running_s < IMD_FIRST_READING_S:
        return {}
    if imd is None or status == "stale":
        return {IMD_COMMUNICATION_FAULT.key: IMD_COMMUNICATION_FAULT}
    return {}


def self_test_outcome(self_test: str | None, seen_running: bool) -> bool | None:
    """True / False once a self-test asked by EVerest is done (the driver's ``self_test`` went through
    "running" to "passed" / "failed"), None while it is not."""
    if not seen_running or self_test not in ("passed", "failed"):
        return None
    return self_test == "passed"


# -- over_voltage_monitor: MREC5 ----------------------------------------------------------------------------


def mrec5_error(faults: Iterable[str], monitoring: bool) -> MonitorError | None:
    """The MREC5OverVoltage to raise for the connector's faults while monitoring (None: none). The adapter
    keeps one raised until EVerest's ``reset_over_voltage_error``, whatever the faults do meanwhile."""
    if not monitoring:
        return None
    for fault in sorted(faults):
        severity = OVER_VOLTAGE_FAULTS.get(fault)
        if severity is not None:
            what = "emergency limit" if fault == "over_voltage_emergency" else "error limit (negotiated maximum)"
            return MonitorError(MREC5, fault, f"output above the {what}: the cabinet switched it off", severity)
    return None


OVM_COMMUNICATION_FAULT = MonitorError(
    "CommunicationFault", "modules_unreachable", "the cabinet does not reach the power modules that measure the output"
)


def ovm_wanted_errors(modules_reachable: bool) -> dict[tuple[str, str], MonitorError]:
    """The OVM's errors besides MREC5: the output voltage cannot be measured while no module answers."""
    return {} if modules_reachable else {OVM_COMMUNICATION_FAULT.key: OVM_COMMUNICATION_FAULT}


def faults_to_clear_on_reset(connector: str, faults_by_connector: Mapping[str, Iterable[str]]) -> list[str]:
    """The over-voltage latches EVerest's reset may ask the core to clear for ``connector``: the core clears a
    fault name on every connector at once, so one another connector also holds stays for its own reset or
    an ``edge clear`` on site."""
    others = {f for name, faults in faults_by_connector.items() if name != connector for f in faults}
    return [f for f in sorted(OVER_VOLTAGE_FAULTS) if f not in others]


def error_changes(
    raised: Mapping[tuple[str, str], MonitorError], wanted: Mapping[tuple[str, str], MonitorError]
) -> tuple[list[MonitorError], list[MonitorError]]:
    """(to raise, to clear), each sorted."""
    return [wanted[k] for k in sorted(wanted) if k not in raised], [
        raised[k] for k in sorted(raised) if k not in wanted
    ]
