"""The pure side of the EVerest adapter: topics, e2m checks, m2e payloads, error mapping, capabilities timing."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from edge.charging import everest_codec as codec
from edge.charging.demand import Capabilities
from edge.limits import inputs
from tests.everest_controller import MALFORMED, m2e_violation

CAPS = Capabilities(
    max_export_voltage_v=1000.0,
    min_export_voltage_v=150.0,
    max_export_current_a=200.0,
    min_export_current_a=0.0,
    max_export_power_w=150_000.0,
)
BASE = "everest_api/1"


def test_topics_follow_the_api_and_parse_back() -> None:
    assert (
        codec.m2e_topic(BASE, "cabinet_dc_1", "capabilities")
        == "everest_api/1/power_supply_DC/cabinet_dc_1/m2e/capabilities"
    )
    t = codec.e2m_topic("everest_api/1.0", "dc2", "mode")
    assert t == "everest_api/1.0/power_supply_DC/dc2/e2m/mode"
    assert codec.parse_e2m_topic("everest_api/1.0", t) == ("dc2", "mode")
    assert codec.e2m_filter(BASE) == "everest_api/1/power_supply_DC/+/e2m/+"
    for bad in (
        "everest_api/1/power_supply_DC/dc2/m2e/mode",  # our own direction
        "everest_api/2/power_supply_DC/dc2/e2m/mode",  # another base
        "everest_api/1/isolation_monitor/dc2/e2m/mode",
        "everest_api/1/power_supply_DC/dc2/e2m/mode/extra",
        "everest_api/1/power_supply_DC//e2m/mode",
    ):
        assert codec.parse_e2m_topic(BASE, bad) is None, bad


def test_valid_requests_decode() -> None:
    assert codec.decode_e2m("mode", b'{"mode": "Export", "charging_phase": "CableCheck"}', None) == codec.ModeRequest(
        "Export", "CableCheck"
    )
    assert codec.decode_e2m("export_voltage_current", b'{"voltage_V": 812.5, "current_A": 200}', CAPS) == (
        codec.TargetRequest(812.5, 200.0)
    )
    # EVerest sends float32: exactly at the published limit, plus its rounding, is allowed
    assert isinstance(
        codec.decode_e2m("export_voltage_current", b'{"voltage_V": 1000.00003, "current_A": 200.0001}', CAPS),
        codec.TargetRequest,
    )
    assert codec.decode_e2m("heartbeat", b"17", None) == codec.HeartbeatRequest(17)
    assert codec.decode_e2m("heartbeat", b"{}", None) == codec.HeartbeatRequest(None)
    assert codec.decode_e2m(
        "mode", b'{"mode": "Off", "charging_phase": "Other", "extra": 1}', None
    ) == codec.ModeRequest("Off", "Other")


def test_at_least_30_malformed_payloads_each_refused_for_its_reason() -> None:
    assert len(MALFORMED) >= 30
    assert {why for _v, _p, why in MALFORMED} <= set(codec.REFUSALS)
    for var, payload, why in MALFORMED:
        got = codec.decode_e2m(var, payload, CAPS)
        assert isinstance(got, codec.Refusal), (var, payload)
        assert got.reason == why, (var, payload, got)


def test_a_set_point_before_capabilities_is_refused() -> None:
    got = codec.decode_e2m("export_voltage_current", b'{"voltage_V": 400, "current_A": 10}', None)
    assert got == codec.Refusal("no_capabilities", "set-point before capabilities were published")


def test_m2e_payloads_follow_the_api() -> None:
    body = json.loads(codec.capabilities_payload(CAPS))
    assert m2e_violation("capabilities", body) is None
    assert body["bidirectional"] is False and body["max_export_current_A"] == 200.0
    derated = json.loads(codec.capabilities_payload(replace(CAPS, max_export_current_a=0.0, min_export_current_a=1.0)))
    assert derated["max_export_current_A"] == 0.0 and derated["min_export_current_A"] == 0.0
    assert json.loads(codec.voltage_current_payload(401.234, -0.02) or b"") == {"voltage_V": 401.23, "current_A": -0.02}
    assert codec.voltage_current_payload(float("nan"), 1.0) is None
    assert json.loads(codec.mode_payload("Export")) == "Export"
    assert m2e_violation("communication_check", json.loads(codec.COMMUNICATION_CHECK_PAYLOAD)) is None
    err = codec.everest_error("over_voltage")
    assert err is not None
    assert json.loads(codec.error_payload(err)) == {
        "type": "OverVoltageDC",
        "sub_type": "over_voltage",
        "message": "DC output over-voltage",
    }


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("pin_over_temperature", "OverTemperature"),
        ("coolant_over_temperature", "OverTemperature"),
        ("over_current", "OverCurrentDC"),
        ("over_voltage", "OverVoltageDC"),
        ("all_modules_lost", "CommunicationFault"),
        ("can_bus_off", "CommunicationFault"),
        ("can_bus_off.can1", "CommunicationFault"),
        ("pin_dc_plus_stale", "HardwareFault"),
        ("coolant_flow_missing", "HardwareFault"),
        ("coolant_leak", "HardwareFault"),
        ("module_lost_3", None),  # derating: the capabilities drop, the session goes on
        ("module_alarm_2", None),
        ("grid_meter_lost", None),
        ("telemetry_store_error", None),
        ("contactor_welded", "HardwareFault"),
        ("contactor_failed_to_close", "HardwareFault"),
        ("precharge_timeout", "HardwareFault"),
        ("some_future_fault", "VendorError"),  # not in the table: stops the session rather than being ignored
    ],
)
def test_error_mapping(fault: str, kind: str | None) -> None:
    err = codec.everest_error(fault)
    assert (err.type if err else None) == kind
    if err is not None:
        assert err.sub_type == fault and err.type in codec.ERROR_TYPES


def test_contactor_faults_are_raised_as_mrec17_on_that_connectors_module_only() -> None:
    """A weld or a failure to close is the ChargeX MREC17EVSEContactorFault of that connector: raised on its
    own power_supply_DC module (its report's faults), none on a connector without the fault."""
    for fault in ("contactor_welded", "contactor_failed_to_close"):
        err = codec.everest_error(fault)
        assert err is not None and err.type == "HardwareFault" and err.sub_type == fault
        assert err.message.startswith("MREC17EVSEContactorFault")
    one = codec.wanted_errors(["contactor_welded"], modules_reachable=True)
    assert list(one) == [("HardwareFault", "contactor_welded")]
    assert codec.wanted_errors([], modules_reachable=True) == {}


def test_every_fault_the_core_documents_has_a_conscious_mapping() -> None:
    """A new fault in the safety core must be added to the table (else it would be a VendorError by default)."""
    table = {name for name, _k, _m in codec.ERROR_TABLE}
    assert set(inputs.FAULT_DOCS) <= table, set(inputs.FAULT_DOCS) - table


def test_errors_raise_once_clear_once_and_communication_fault_waits_a_cycle() -> None:
    raised: dict = {}
    wanted = codec.wanted_errors(["pin_over_temperature", "module_lost_2"], modules_reachable=False)
    assert sorted(wanted) == [
        ("CommunicationFault", "modules_unreachable"),
        ("OverTemperature", "pin_over_temperature"),
    ]
    up, down = codec.error_changes(raised, wanted, hold_communication=True)
    assert [e.key for e in up] == sorted(wanted) and down == []
    raised = {e.key: e for e in up}
    assert codec.error_changes(raised, wanted, hold_communication=True) == ([], [])  # nothing twice
    back = codec.wanted_errors([], modules_reachable=True)
    up, down = codec.error_changes(raised, back, hold_communication=True)  # first cycle with modules back
    assert up == [] and [e.key for e in down] == [("OverTemperature", "pin_over_temperature")]
    up, down = codec.error_changes(
        {("CommunicationFault", "modules_unreachable"): raised[("CommunicationFault", "modules_unreachable")]},
        back,
        False,
    )
    assert up == [] and [e.type for e in down] == ["CommunicationFault"]


def test_capabilities_first_drop_at_once_rise_after_interval_with_hysteresis() -> None:
    due = codec.capabilities_due
    assert due(None, None, CAPS, 0.0, 1.0, 5.0) == "first"
    # a drop goes out at once, even 10 ms after the last publish
    assert due(CAPS, 10.0, replace(CAPS, max_export_current_a=150.0), 10.01, 1.0, 5.0) == "drop"
    assert due(CAPS, 10.0, replace(CAPS, max_export_power_w=140_000.0), 10.01, 1.0, 5.0) == "drop"
    # noise below the dead-band does not
    assert due(CAPS, 10.0, replace(CAPS, max_export_current_a=199.8), 10.01, 1.0, 5.0) is None
    # a rise waits for the interval and must pass the hysteresis
    low = replace(CAPS, max_export_current_a=150.0)
    assert due(low, 10.0, CAPS, 10.5, 1.0, 5.0) is None
    assert due(low, 10.0, CAPS, 11.0, 1.0, 5.0) == "rise"
    assert due(low, 10.0, replace(CAPS, max_export_current_a=154.0), 20.0, 1.0, 5.0) is None
    assert due(CAPS, 10.0, replace(CAPS, max_export_power_w=160_000.0), 20.0, 1.0, 5.0) == "rise"
    assert due(CAPS, 10.0, replace(CAPS, max_export_power_w=155_000.0), 20.0, 1.0, 5.0) is None
    # other fields only take effect at the next session: rate-limited like a rise
    assert due(CAPS, 10.0, replace(CAPS, max_export_voltage_v=920.0), 10.5, 1.0, 5.0) is None
    assert due(CAPS, 10.0, replace(CAPS, max_export_voltage_v=920.0), 11.0, 1.0, 5.0) == "changed"
    assert due(CAPS, 10.0, CAPS, 100.0, 1.0, 5.0) is None


def test_possible_errors_cover_the_table_and_every_sensor_family() -> None:
    keys = {e.key for e in codec.possible_errors()}
    assert ("OverTemperature", "pin_over_temperature") in keys
    assert ("HardwareFault", "pin_dc_plus_stale") in keys and ("HardwareFault", "coolant_flow_missing") in keys
    assert ("CommunicationFault", "modules_unreachable") in keys
    assert not any(sub.startswith("module_lost") or sub == "grid_meter_lost" for _t, sub in keys)
    assert len(keys) == len(codec.possible_errors())
