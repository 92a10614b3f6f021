"""The pure codec of EVerest's isolation_monitor and over_voltage_monitor APIs: topics, every e2m payload
(valid and malformed: a refusal with a reason, never an exception), m2e payloads and the error rules."""

from __future__ import annotations

import json

import pytest

from edge.charging import everest_codec
from edge.charging import everest_monitors_codec as codec
from edge.charging.everest_codec import Refusal

BASE = "everest_api/1"


def test_topics_follow_the_api_files() -> None:
    assert codec.m2e_topic(BASE, "isolation_monitor", "imd_1", "isolation_measurement") == (
        "everest_api/1/isolation_monitor/imd_1/m2e/isolation_measurement"
    )
    assert codec.e2m_filter(BASE, "over_voltage_monitor") == "everest_api/1/over_voltage_monitor/+/e2m/+"
    assert codec.parse_e2m_topic(BASE, "everest_api/1/over_voltage_monitor/ovm_1/e2m/set_limits") == (
        "over_voltage_monitor",
        "ovm_1",
        "set_limits",
    )
    for bad in (
        "everest_api/1/isolation_monitor/imd_1/m2e/start",  # our own direction
        "everest_api/1/power_supply_DC/dc_1/e2m/mode",  # another API
        "everest_api/1/isolation_monitor//e2m/start",
        "everest_api/1/isolation_monitor/imd_1/e2m/start/x",
        "everest_api/1.0/isolation_monitor/imd_1/e2m/start",
    ):
        assert codec.parse_e2m_topic(BASE, bad) is None, bad


@pytest.mark.parametrize(
    ("api", "var", "payload", "expected"),
    [
        ("isolation_monitor", "start", b"{}", codec.Start()),
        ("isolation_monitor", "start", b"", codec.Start()),
        ("isolation_monitor", "stop", b"{}", codec.Stop()),
        ("isolation_monitor", "start_self_test", b"500", codec.SelfTest(500.0)),
        ("isolation_monitor", "start_self_test", b"499.5", codec.SelfTest(499.5)),
        ("isolation_monitor", "heartbeat", b"42", codec.Heartbeat(42)),
        ("over_voltage_monitor", "heartbeat", b"{}", codec.Heartbeat(None)),
        ("over_voltage_monitor", "start", b"{}", codec.Start()),
        ("over_voltage_monitor", "stop", b"{}", codec.Stop()),
        ("over_voltage_monitor", "reset_over_voltage_error", b"{}", codec.Reset()),
        (
            "over_voltage_monitor",
            "set_limits",
            b'{"emergency_limit_V": 550, "error_limit_V": 500.0, "extra": 1}',
            codec.Limits(550.0, 500.0),
        ),
    ],
)
def test_valid_requests(api: str, var: str, payload: bytes, expected: object) -> None:
    assert codec.decode_e2m(api, var, payload) == expected


@pytest.mark.parametrize(
    ("api", "var", "payload", "reason"),
    [
        ("isolation_monitor", "set_limits", b"{}", "unknown_var"),  # an OVM variable on the IMD API
        ("over_voltage_monitor", "start_self_test", b"500", "unknown_var"),
        ("isolation_monitor", "start", b"[1]", "wrong_type"),
        ("isolation_monitor", "start", b"{", "not_json"),
        ("isolation_monitor", "stop", b"\xff\xfe", "not_json"),
        ("isolation_monitor", "start", b"{}" + b" " * 2000, "oversize"),
        ("isolation_monitor", "start_self_test", b'"500"', "wrong_type"),
        ("isolation_monitor", "start_self_test", b"true", "wrong_type"),
        ("isolation_monitor", "start_self_test", b"-5", "negative"),
        ("isolation_monitor", "start_self_test", b"NaN", "not_finite"),
        ("isolation_monitor", "start_self_test", b"1e999", "not_finite"),
        ("isolation_monitor", "start_self_test", b"9" * 400, "wrong_type"),  # an integer too big for a float
        ("isolation_monitor", "start_self_test", b"5000", "out_of_range"),
        ("isolation_monitor", "heartbeat", b'"x"', "wrong_type"),
        ("isolation_monitor", "heartbeat", b"-1", "negative"),
        ("over_voltage_monitor", "set_limits", b'{"error_limit_V": 500}', "missing_field"),
        ("over_voltage_monitor", "set_limits", b'{"emergency_limit_V": 550}', "missing_field"),
        ("over_voltage_monitor", "set_limits", b'{"emergency_limit_V": "550", "error_limit_V": 500}', "wrong_type"),
        ("over_voltage_monitor", "set_limits", b'{"emergency_limit_V": 550, "error_limit_V": 0}', "out_of_range"),
        ("over_voltage_monitor", "set_limits", b'{"emergency_limit_V": 5500, "error_limit_V": 500}', "out_of_range"),
        ("over_voltage_monitor", "set_limits", b'{"emergency_limit_V": 550, "error_limit_V": -1}', "negative"),
        ("over_voltage_monitor", "set_limits", b'{"emergency_limit_V": 500, "error_limit_V": 550}', "limits_order"),
        ("over_voltage_monitor", "set_limits", b'{"emergency_limit_V": Infinity, "error_limit_V": 5}', "not_finite"),
        ("over_voltage_monitor", "set_limits", b"[550, 500]", "wrong_type"),
        ("over_voltage_monitor", "reset_over_voltage_error", b"3", "wrong_type"),
    ],
)
def test_malformed_requests_are_refused_with_a_reason(api: str, var: str, payload: bytes, reason: str) -> None:
    out = codec.decode_e2m(api, var, payload)
    assert isinstance(out, Refusal), out
    assert out.reason == reason, out
    assert reason in everest_codec.REFUSALS + codec.REFUSALS


def test_deeply_nested_json_is_a_refusal_not_a_crash() -> None:
    out = codec.decode_e2m("over_voltage_monitor", "set_limits", b"[" * 500 + b"]" * 500)
    assert isinstance(out, Refusal) and out.reason in ("not_json", "wrong_type")


def test_isolation_measurement_payload() -> None:
    assert json.loads(codec.isolation_measurement_payload(5e6, 512.345) or b"") == {
        "resistance_F_Ohm": 5000000.0,
        "voltage_V": 512.35,
    }
    # the voltage is optional in the API: left out when not a number
    assert json.loads(codec.isolation_measurement_payload(80000.0, float("nan")) or b"") == {
        "resistance_F_Ohm": 80000.0
    }
    for bad in (None, float("nan"), float("inf"), -1.0):
        assert codec.isolation_measurement_payload(bad, 400.0) is None


def test_scalar_payloads() -> None:
    assert codec.self_test_result_payload(True) == b"true"
    assert codec.self_test_result_payload(False) == b"false"
    assert codec.voltage_measurement_payload(401.234) == b"401.23"
    assert codec.voltage_measurement_payload(float("nan")) is None
    assert codec.voltage_measurement_payload(None) is None
    assert codec.COMMUNICATION_CHECK_PAYLOAD == b"true"


def test_imd_errors_report_device_problems_never_a_low_resistance() -> None:
    assert codec.imd_wanted_errors({"status": "ok", "ohm": 10.0, "t": 1.0}, 60.0) == {}
    assert codec.imd_wanted_errors({"status": "self_test", "ohm": None, "t": 1.0}, 60.0) == {}
    fault = {"status": "fault", "t": 1.0}
    assert list(codec.imd_wanted_errors(fault, 60.0)) == [("DeviceFault", "isolation_monitor_fault")]
    lost = [("CommunicationFault", "isolation_monitor_lost")]
    assert list(codec.imd_wanted_errors({"status": "stale", "t": 1.0}, 60.0)) == lost
    assert list(codec.imd_wanted_errors(None, 60.0)) == lost
    # just started: the first poll may not have happened yet; still never read after that: lost
    assert codec.imd_wanted_errors({"status": "stale", "t": None}, 1.0) == {}
    assert list(codec.imd_wanted_errors({"status": "stale", "t": None}, codec.IMD_FIRST_READING_S)) == lost
    body = json.loads(codec.error_payload(codec.IMD_DEVICE_FAULT))
    assert body == {"type": "DeviceFault", "sub_type": "isolation_monitor_fault", "message": body["message"]}
    assert "severity" not in body


def test_self_test_outcome_needs_a_running_test_first() -> None:
    assert codec.self_test_outcome("passed", seen_running=False) is None  # last session's result
    assert codec.self_test_outcome("running", seen_running=True) is None
    assert codec.self_test_outcome("passed", seen_running=True) is True
    assert codec.self_test_outcome("failed", seen_running=True) is False


def test_mrec5_only_while_monitoring_with_a_software_severity() -> None:
    assert codec.mrec5_error(["over_voltage_error"], monitoring=False) is None
    assert codec.mrec5_error(["coolant_flow_low"], monitoring=True) is None
    err = codec.mrec5_error(["coolant_flow_low", "over_voltage_error"], monitoring=True)
    assert err is not None
    body = json.loads(codec.error_payload(err))
    assert body["type"] == "MREC5OverVoltage" and body["sub_type"] == "over_voltage_error"
    assert body["severity"] in ("Medium", "Low")  # High means the hardware already did an emergency shutdown
    emergency = codec.mrec5_error(["over_voltage_emergency"], monitoring=True)
    assert emergency is not None and emergency.severity == "Medium"


def test_error_changes() -> None:
    a, b = codec.IMD_DEVICE_FAULT, codec.IMD_COMMUNICATION_FAULT
    assert codec.error_changes({}, {a.key: a}) == ([a], [])
    assert codec.error_changes({a.key: a}, {b.key: b}) == ([b], [a])
    assert codec.error_changes({a.key: a}, {a.key: a}) == ([], [])


def test_a_reset_never_clears_the_same_latch_of_another_connector() -> None:
    assert codec.faults_to_clear_on_reset("1", {"1": ["over_voltage_error"], "2": []}) == [
        "over_voltage_emergency",
        "over_voltage_error",
    ]
    assert codec.faults_to_clear_on_reset("1", {"1": ["over_voltage_error"], "2": ["over_voltage_error"]}) == [
        "over_voltage_emergency"
    ]


def test_the_ovm_reports_a_communication_fault_while_nothing_measures_the_output() -> None:
    assert codec.ovm_wanted_errors(True) == {}
    (err,) = codec.ovm_wanted_errors(False).values()
    body = json.loads(codec.error_payload(err))
    assert body["type"] == "CommunicationFault" and "severity" not in body
