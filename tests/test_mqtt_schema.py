"""The shipped JSON Schema and the OCPP measurand table, checked against what the code produces."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import jsonschema
import pytest

from edge.config.telemetry import Mqtt
from edge.telemetry import schema
from edge.telemetry.measurands import ocpp_fields
from edge.telemetry.store import RawRecord, Store
from edge.telemetry.uplink import Uplink
from tests.uplink_harness import CABINET_SIGNALS, interval_payload

ROOT = jsonschema.Draft202012Validator(schema.load())


def _uplink(tmp_path: Path) -> Uplink:
    return Uplink(Mqtt(), "site-001", "cab-017", Store(str(tmp_path)))


def test_schema_file_is_shipped_as_package_data_and_is_a_valid_schema():
    jsonschema.Draft202012Validator.check_schema(schema.load())
    setup_cfg = configparser.ConfigParser()
    setup_cfg.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    data = setup_cfg["options.package_data"]
    # either form ships it: the edge package's schemas/ folder, or edge.schemas as its own (namespace) package
    assert "schemas/*.json" in data.get("edge", "") or "*.json" in data.get("edge.schemas", "")


@pytest.mark.parametrize("replayed", [True, False])
def test_encoded_batches_validate_and_carry_ids_seq_range_and_units(tmp_path: Path, replayed: bool):
    up = _uplink(tmp_path)
    recs = [
        RawRecord(10 + i, "telemetry", 1_764_160_000_000 + i * 1000, json.dumps(interval_payload(i))) for i in range(3)
    ]
    msg = json.loads(up.encode(recs, replayed))
    ROOT.validate(msg)
    assert (msg["cabinet_id"], msg["site_id"], msg["seq_first"], msg["seq_last"]) == ("cab-017", "site-001", 10, 12)
    assert msg["replayed"] is replayed
    assert all(s["unit"] is not None for r in msg["records"] for s in r["samples"])
    ev = RawRecord(13, "event", 1_764_160_003_000, json.dumps({"kind": "fault_raised", "name": "x", "detail": "d"}))
    ROOT.validate(json.loads(up.encode([ev], replayed)))


def test_a_message_without_cabinet_id_or_with_a_wrong_unit_type_is_rejected_by_the_schema(tmp_path: Path):
    up = _uplink(tmp_path)
    good = json.loads(up.encode([RawRecord(1, "telemetry", 1_764_160_000_000, json.dumps(interval_payload(0)))], False))
    bad = dict(good)
    del bad["cabinet_id"]
    with pytest.raises(jsonschema.ValidationError):
        ROOT.validate(bad)
    bad = json.loads(json.dumps(good))
    bad["records"][0]["samples"][0]["unit"] = 5
    with pytest.raises(jsonschema.ValidationError):
        ROOT.validate(bad)


@pytest.mark.parametrize(
    "signal, expected",
    [
        ("grid.Voltage.L1", {"measurand": "Voltage", "phase": "L1-N"}),
        ("grid.Current.Import.L3", {"measurand": "Current.Import", "phase": "L3"}),
        ("grid.Power.Active.Import", {"measurand": "Power.Active.Import"}),
        ("grid.Power.Active.Import.L2", {"measurand": "Power.Active.Import", "phase": "L2"}),
        ("grid.Energy.Active.Import.Register", {"measurand": "Energy.Active.Import.Register"}),
        ("cable.pin_dc_plus_c", {"measurand": "Temperature", "location": "Outlet", "point": "pin_dc_plus"}),
        ("cable.coolant_out_c", {"measurand": "Temperature", "location": "Cable", "point": "coolant_out"}),
        ("module.3.temperature_c", {"measurand": "Temperature", "location": "Body"}),
        ("control.limit_a", {"measurand": "Current.Offered", "location": "Outlet"}),
        ("cable.coolant_flow_lpm", {}),
        ("grid.Voltage.L9", {}),
        ("connector.1.current_a", {"measurand": "Current.Import", "location": "Outlet", "connector": "1"}),
        ("connector.left.voltage_v", {"measurand": "Voltage", "location": "Outlet", "connector": "left"}),
        ("connector.2.limit_a", {"measurand": "Current.Offered", "location": "Outlet", "connector": "2"}),
        ("connector.2.request_current_a", {"connector": "2"}),
        ("connector.2.phase", {"connector": "2"}),
        ("connector.Voltage.L1", {"measurand": "Voltage", "phase": "L1-N"}),  # a meter named "connector"
    ],
)
def test_signals_map_to_ocpp_measurands_where_one_exists(signal: str, expected: dict):
    assert dict(ocpp_fields(signal)) == expected


def test_every_cabinet_signal_sample_is_valid_against_the_schema():
    sample_schema = {"$defs": schema.load()["$defs"], "$ref": "#/$defs/sample"}
    v = jsonschema.Draft202012Validator(sample_schema)
    samples = interval_payload(0)["samples"]
    assert len(samples) == len(CABINET_SIGNALS)
    for s in samples:
        v.validate(s)
