"""Every rendering shows the connectors (issue 14 item 8): ``edge status``/``watch`` at 80 display columns,
``--json``, the retained MQTT state (schema ``cabinet-edge/state/2``), the status line and the telemetry
signal names (``connector.<name>.<suffix>``, schema ``cabinet-edge/telemetry/2``). Pure: the views are
built here the way the cabinet builds them from the controller's decision."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import replace
from typing import Any

import jsonschema
import pytest

from drivers.readings import OK, STALE, Reading
from edge.render import WIDTH, clip, display_width, status_text
from edge.status import ConnectorView, ModuleView, ReadingView, StatusView
from edge.telemetry import schema, v2decode
from edge.telemetry.compact import Compactor, Deadbands
from edge.telemetry.formats import SCHEMA_TELEMETRY, EncoderContext, V1Json, V2Compact
from edge.telemetry.measurands import PHASE_CODES, connector_signal, phase_code
from edge.telemetry.sampler import Sampler
from edge.telemetry.store import RawRecord, SignalRow
from edge.telemetry.topics import Topics
from edge.telemetry.uplink import SCHEMA_STATE

STATE = jsonschema.Draft202012Validator(schema.for_topic_leaf("state"))
TELEMETRY = jsonschema.Draft202012Validator(schema.for_topic_leaf("telemetry"))

# (mode, phase) of every session phase the screen can meet, EVerest's "Other" included
PHASES = [
    ("Off", "Other"),
    ("Export", "CableCheck"),
    ("Export", "PreCharge"),
    ("Export", "Charging"),
    ("Off", "Stopping"),
    ("Fault", "Other"),
    ("Export", "Other"),
]
LONG_REASON = "site fuse: L2 at 158 A of 160 A (margin 3 A); shared by 2 connectors in session"


def connector(name: str, mode: str = "Export", phase: str = "Charging", **over: Any) -> ConnectorView:
    c = ConnectorView(
        name=name,
        phase=phase,
        mode=mode,
        request_v=1000.0,
        request_a=500.0,
        request_age_s=0.2,
        output_v=999.9,
        output_a=499.9,
        limit_a=500.0,
        rule="grid",
        reason=LONG_REASON,
        contactor=True,
        enable=True,
        modules=(1, 2),
        capabilities={"max_export_current_a": 500.0, "max_export_power_w": 150000.0},
        faults=(),
    )
    return replace(c, **over)


FAULTS = {
    "pin_dc_plus_hot": "connector 2: cable DC+ pin 95.1 °C above 90.0 °C for 500 ms; output off until cleared",
    "coolant_flow_low": "connector 1: coolant flow 0.00 l/min below 1.00 l/min for 2000 ms " * 2,
    "module_lost_3": "power module 3: no answer for 1500 ms (power_modules.lost_after_ms)",
}


def view(*conns: ConnectorView, faults: dict[str, str] | None = None) -> StatusView:
    return StatusView(
        cabinet_id="cabinet-0123456789-north-hall",
        site_id="site-0123456789-motorway-services",
        version="0.1.0",
        uptime_s=90061.0,
        limit_a=sum(c.limit_a for c in conns),
        target_a=sum(c.limit_a for c in conns),
        rule="grid",
        reason=LONG_REASON,
        enable=any(c.enable for c in conns),
        faults=dict(faults or {}),
        latched=("coolant_flow_low",) if faults else (),
        outputs={"contactor": 1, "pump": 1, "fan": 1},
        modules={str(a): ModuleView(False, True, 999.9, 249.9, 41.0, (), 250.0) for a in (1, 2, 3, 4)},
        readings={
            "gun1.pin_dc_plus_c": ReadingView(55.1, "°C", OK, 0.1),
            "gun1.pin_dc_minus_c": ReadingView(54.0, "°C", STALE, 3.0),
        },
        operator_limit=None,
        stopped_by=None,
        grid_meter="grid",
        cable="gun1",
        backlog=3,
        connectors=conns,
    )


def _index(lines: list[str], pattern: str) -> int:
    return next(i for i, ln in enumerate(lines) if re.match(pattern, ln))


@pytest.mark.parametrize(("first", "second"), list(itertools.product(PHASES, PHASES)))
def test_two_connectors_in_every_phase_with_three_faults_fit_80_columns_and_come_before_devices(first, second):
    a = connector("1", *first, request_age_s=None if first[0] == "Off" else 0.2)
    b = connector("left-gun_number2", *second, output_v=0.0, output_a=0.0, faults=("pin_dc_plus_hot",))
    text = status_text(view(a, b, faults=FAULTS).as_dict())
    lines = text.splitlines()
    wide = [ln for ln in lines if display_width(ln) > WIDTH]
    assert not wide, text
    state, head = _index(lines, r"state +"), _index(lines, r"connector +phase")
    one, two = _index(lines, r"1 +"), _index(lines, r"left-gun… ")
    faults, devices = _index(lines, r"faults +"), _index(lines, r"modules +#")
    assert state < head < one < two < faults < devices, text
    assert min(_index(lines, r"cable +"), _index(lines, r"meter +")) > devices
    # the row says the phase, the request (or -- without one), what flows, the limit and why
    row_one = lines[one].split()
    shown = {"Other": first[0], "Stopping": "Stopping"}.get(first[1], first[1])
    assert row_one[1] == ("FAULT" if first[0] == "Fault" else shown), lines[one]
    assert row_one[2:4] == (["--", "--"] if first[0] == "Off" else ["1000", "500"]), lines[one]
    assert row_one[4:7] == ["999.9", "499.9", "500"], lines[one]
    assert lines[one].endswith("…") and lines[one].split("500 ", 3)[-1].startswith("site fuse: L2"), lines[one]
    assert all(f in text for f in FAULTS)


@pytest.mark.parametrize("lang", ["en", "es", "pt_BR", "th", "zh_CN"])
def test_an_out_of_service_connector_says_so_under_its_row_within_80_columns_in_every_language(lang):
    from edge import i18n

    welded = connector("1", "Fault", "Fault", faults=("contactor_welded",), out_of_service=True)
    try:
        i18n.use(lang)
        lines = status_text(view(welded, connector("2")).as_dict()).splitlines()
        said = i18n._("OUT OF SERVICE: contactor welded, clear on site after repair")
    finally:
        i18n.use("en")
    one = _index(lines, r"1 +")
    assert lines[one + 1].split()[0] == said.split()[0] and lines[one + 1].startswith(" " * 10)
    assert (lang == "en") == (said == "OUT OF SERVICE: contactor welded, clear on site after repair")
    assert re.match(r"2 +", lines[one + 2 + (display_width(said) > WIDTH - 10)])  # connector 2's row follows
    assert all(display_width(ln) <= WIDTH for ln in lines), "\n".join(lines)


def test_the_reason_is_cut_by_display_width_so_a_chinese_reason_still_fits():
    chinese = connector("1", reason="站点保险丝：L2 在 160 A 中已用 158 A（余量 3 A），两个充电枪共享")
    lines = status_text(view(chinese).as_dict()).splitlines()
    line = lines[_index(lines, r"1 +Charging")]
    assert line.endswith("…")
    assert display_width(line) <= WIDTH < display_width(line) + 2  # the cut is tight, not by len()
    assert len(line) < WIDTH - 5  # counting characters would have let it run past the screen edge
    assert display_width("充电") == 4 and display_width("กี่") == 1  # CJK two columns, Thai marks none
    assert clip("abcdef", 4) == "abc…" and clip("abcd", 4) == "abcd"


def test_without_connectors_the_screen_is_what_it_was():
    lines = status_text(view().as_dict()).splitlines()
    assert not any(ln.startswith("connector") for ln in lines)
    assert _index(lines, r"faults ") == _index(lines, r"limit ") + 2  # the limit's reason takes two lines


def test_the_state_line_sums_the_connectors_output():
    a, b = connector("1", output_v=800.0, output_a=100.0), connector("2", output_v=400.0, output_a=50.0)
    line = status_text(view(a, b).as_dict()).splitlines()[1]
    assert line == "state    CHARGING    output 800 V  150.0 A  100.0 kW"


def test_json_status_has_every_connector_field_in_config_order():
    st = view(connector("2", request_age_s=None), connector("1", faults=("pin_dc_plus_hot",))).as_dict()
    st = json.loads(json.dumps(st))  # what `edge status --json` prints
    assert [c["name"] for c in st["connectors"]] == ["2", "1"]
    c = st["connectors"][1]
    assert c == {
        "name": "1",
        "phase": "Charging",
        "mode": "Export",
        "request_v": 1000.0,
        "request_a": 500.0,
        "request_age_s": 0.2,
        "output_v": 999.9,
        "output_a": 499.9,
        "limit_a": 500.0,
        "rule": "grid",
        "reason": LONG_REASON,
        "contactor": True,
        "enable": True,
        "modules": [1, 2],
        "capabilities": {"max_export_current_a": 500.0, "max_export_power_w": 150000.0},
        "faults": ["pin_dc_plus_hot"],
        "out_of_service": False,
    }
    assert st["connectors"][0]["request_age_s"] is None


def _state_message(v: StatusView, schema_id: str = SCHEMA_STATE) -> dict[str, Any]:
    """As the uplink publishes it (edge/telemetry/uplink.py, _publish_state_if_changed)."""
    return {
        "schema": schema_id,
        "cabinet_id": "cab-017",
        "site_id": "site-001",
        "t_ms": 1_764_160_000_000,
        "seq_last": 12,
        **v.mqtt_state(),
    }


def test_mqtt_state_carries_the_connectors_and_validates_against_state_2():
    assert SCHEMA_STATE == "cabinet-edge/state/2"
    v = view(*(connector(str(i), *p) for i, p in enumerate(PHASES, 1)), faults=FAULTS)
    msg = json.loads(json.dumps(_state_message(v)))
    STATE.validate(msg)
    assert [c["name"] for c in msg["connectors"]] == [str(i) for i in range(1, len(PHASES) + 1)]
    assert set(msg["connectors"][0]) == {
        "name",
        "phase",
        "mode",
        "limit_a",
        "rule",
        "reason",
        "contactor",
        "enable",
        "faults",
        "out_of_service",
    }
    STATE.validate(_state_message(view()))  # no connector yet: an empty list, still state/2


def test_state_versions_are_told_apart_by_the_schema_field():
    msg = _state_message(view(connector("1")))
    without = {k: v for k, v in msg.items() if k != "connectors"}
    with pytest.raises(jsonschema.ValidationError):
        STATE.validate(without)  # state/2 must say its connectors
    STATE.validate({**without, "schema": "cabinet-edge/state/1"})  # a cabinet not yet updated
    with pytest.raises(jsonschema.ValidationError):
        STATE.validate({**msg, "schema": "cabinet-edge/state/1"})  # state/1 never had connectors
    bad = json.loads(json.dumps(msg))
    bad["connectors"][0]["name"] = "1.2"  # a dot would make connector.<name>.<suffix> ambiguous
    with pytest.raises(jsonschema.ValidationError):
        STATE.validate(bad)


def test_mqtt_state_does_not_change_with_measured_or_requested_values():
    """The retained state is republished on every change: values that move every tick stay in telemetry."""
    a = view(connector("1"))
    b = view(connector("1", output_v=512.3, output_a=77.7, request_v=520.0, request_a=80.0, request_age_s=1.5))
    assert a.mqtt_state() == b.mqtt_state()
    assert a.mqtt_state() != view(connector("1", phase="PreCharge")).mqtt_state()


def test_status_line_starts_with_the_state_each_connectors_phase_and_current_then_the_limit():
    v = view(connector("1", output_a=199.54), connector("2", "Off", "Other", output_a=0.0))
    line = v.line()
    assert line.startswith("CHARGING | 1 Charging 200 A | 2 Off 0.0 A | limit 1000 A <- site fuse: L2"), line
    assert display_width(line) == WIDTH and line.endswith("…")  # the long reason is cut, not the line wrapped


# -- telemetry ----------------------------------------------------------------------------------------
def _connector_readings(name: str, mode: str, phase: str, t: float) -> list[Reading]:
    c = connector(name, mode, phase, output_v=799.5, output_a=199.8, limit_a=200.0, request_v=800.0, request_a=200.0)
    return c.readings(t)


def test_a_connector_gives_its_six_signals_with_units_and_no_request_as_zero():
    got = {r.signal: (r.value, r.unit) for r in connector("2", "Off", "Stopping", request_age_s=None).readings(5.0)}
    assert got == {
        "connector.2.voltage_v": (999.9, "V"),
        "connector.2.current_a": (499.9, "A"),
        "connector.2.limit_a": (500.0, "A"),
        "connector.2.request_voltage_v": (0.0, "V"),
        "connector.2.request_current_a": (0.0, "A"),
        "connector.2.phase": (4.0, ""),
    }


def test_phase_codes_are_fixed_numbers():
    assert [phase_code(m, p) for m, p in PHASES] == [0, 1, 2, 3, 4, 9, 5]
    assert PHASE_CODES == {
        "Off": 0,
        "CableCheck": 1,
        "PreCharge": 2,
        "Charging": 3,
        "Stopping": 4,
        "Export": 5,
        "Import": 6,
        "Fault": 9,
    }
    assert phase_code("Fault", "Charging") == 9 and phase_code("Off", "Off") == 0
    with pytest.raises(ValueError, match="unknown connector signal suffix"):
        connector_signal("1", "amps")


def test_connector_samples_name_their_connector_and_validate_as_telemetry_2():
    s = Sampler()
    for r in _connector_readings("1", "Export", "Charging", 1.0) + _connector_readings("left-2", "Off", "Other", 1.0):
        s.add(r)
    samples = {x["signal"]: x for x in s.flush()}
    assert samples["connector.1.current_a"]["measurand"] == "Current.Import"
    assert samples["connector.1.current_a"]["location"] == "Outlet"
    assert samples["connector.1.limit_a"]["measurand"] == "Current.Offered"
    assert samples["connector.left-2.voltage_v"]["measurand"] == "Voltage"
    assert "measurand" not in samples["connector.1.request_current_a"]
    assert {x["connector"] for x in samples.values()} == {"1", "left-2"}
    assert samples["connector.1.phase"]["last"] == 3 and samples["connector.left-2.phase"]["last"] == 0
    ctx = EncoderContext(Topics("cabinet", "site-001", "cab-017"), "site-001", "cab-017", list, lambda: 0, _deadband)
    payload = json.dumps({"interval_s": 1.0, "samples": list(samples.values())})
    msg = json.loads(V1Json(ctx).encode([RawRecord(7, "telemetry", 1_764_160_000_000, payload)], False)[0].payload)
    assert msg["schema"] == SCHEMA_TELEMETRY == "cabinet-edge/telemetry/2"
    TELEMETRY.validate(msg)
    msg["records"][0]["samples"][0]["connector"] = "a.b"
    with pytest.raises(jsonschema.ValidationError):
        TELEMETRY.validate(msg)


def _deadband(signal: str, unit: str) -> float:
    return Deadbands({"V": 1.0, "A": 0.5}).of(signal, unit)


def test_v2_birth_and_decoder_keep_the_connector():
    table: dict[str, SignalRow] = {}

    def alias(name: str, unit: str, exp: int) -> int:
        if name not in table:
            table[name] = SignalRow(len(table) + 1, name, unit, exp)
        return table[name].alias

    comp = Compactor(alias, Deadbands({"V": 1.0, "A": 0.5}), 1.0, 10.0, 300.0)
    s = Sampler()
    for r in _connector_readings("2", "Export", "PreCharge", 1.0):
        s.add(r)
    comp.add(1_764_160_000_000, s.flush())
    t_ms, rec = comp.flush() or (0, b"")
    ctx = EncoderContext(
        Topics("cabinet", "site-001", "cab-017"),
        "site-001",
        "cab-017",
        lambda: list(table.values()),
        lambda: 6,
        _deadband,
    )
    enc = V2Compact(ctx)
    birth = enc.birth()[0].payload
    assert all(x["connector"] == "2" for x in json.loads(birth)["signals"])
    dec = v2decode.Decoder()
    dec.feed(birth)
    out = dec.feed(enc.encode([RawRecord(1, "telemetry", t_ms, rec)], False)[-1].payload) + dec.finish()
    samples = {x["signal"]: x for x in out[0]["samples"]}
    assert samples["connector.2.phase"]["last"] == 2 and samples["connector.2.phase"]["connector"] == "2"
    assert samples["connector.2.current_a"]["measurand"] == "Current.Import"
