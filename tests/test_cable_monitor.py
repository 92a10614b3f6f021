"""Cable monitor frames (cable_monitor.dbc) -> readings with quality: ok, stale, invalid."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from drivers.cable.monitor import DBC_PATH, CableMonitor, load_database, signal_specs
from drivers.readings import INVALID, OK, STALE

TEMPS = {"PinTempDcPlus": 45.0, "PinTempDcMinus": 44.0, "CoolantInletTemp": 25.0, "CoolantOutletTemp": 30.0}
COOL = {"CoolantFlow": 5.0, "CoolantPressure": 1.7}


def frame(mon: CableMonitor, message: str, counter: int, **values: float) -> tuple[int, bytes]:
    base = dict(TEMPS if message == "CABLE_TEMPS" else COOL)
    base.update(values)
    base["RollingCounter"] = counter
    return mon.encode(message, base)


def by_signal(readings):
    return {r.signal: r for r in readings}


def test_dbc_defines_every_signal_the_safety_core_needs_with_units_and_ranges():
    db = load_database()
    temps = db.get_message_by_name("CABLE_TEMPS")
    cool = db.get_message_by_name("CABLE_COOLANT")
    assert temps.frame_id == 0x18FF5101 and cool.frame_id == 0x18FF5201
    assert temps.is_extended_frame and temps.length == 8
    for msg, sig, unit in (
        (temps, "PinTempDcPlus", "degC"),
        (temps, "PinTempDcMinus", "degC"),
        (temps, "CoolantInletTemp", "degC"),
        (temps, "CoolantOutletTemp", "degC"),
        (cool, "CoolantFlow", "l/min"),
        (cool, "CoolantPressure", "bar"),
    ):
        s = msg.get_signal_by_name(sig)
        assert s.unit == unit and s.minimum is not None and s.maximum is not None
    for msg in (temps, cool):
        assert msg.get_signal_by_name("RollingCounter").length == 4


def test_golden_frame_decodes_to_pin_temperatures():
    # raw = (value + 50) / 0.1, little-endian: DC+ 45.0 -> 950 = 0x3B6 at bit 0, DC- 44.0 -> 0x3AC at 16,
    # inlet 25.0 -> 0x2EE (12 bits at 32), outlet 30.0 -> 0x320 (12 bits at 44), counter 1 at bit 60
    mon = CableMonitor("cable")
    data = bytes([0xB6, 0x03, 0xAC, 0x03, 0xEE, 0x02, 0x32, 0x10])
    r = by_signal(mon.decode(0x18FF5101, data, 1.0))
    assert r["cable.pin_dc_plus_c"].value == pytest.approx(45.0)
    assert r["cable.pin_dc_minus_c"].value == pytest.approx(44.0)
    assert r["cable.coolant_in_c"].value == pytest.approx(25.0)
    assert r["cable.coolant_out_c"].value == pytest.approx(30.0)
    assert {x.quality for x in r.values()} == {OK}


def test_node_id_selects_the_frame_ids():
    mon = CableMonitor("c2", node_id=0x07)
    assert mon.frame_ids == {0x18FF5107, 0x18FF5207}
    assert mon.decode(0x18FF5101, bytes(8), 1.0) == []


def test_counter_advancing_by_one_is_ok_and_wraps_at_16():
    mon = CableMonitor("cable")
    qualities = []
    for i, c in enumerate([14, 15, 0, 1]):
        fid, data = frame(mon, "CABLE_TEMPS", c)
        qualities += [r.quality for r in mon.decode(fid, data, 1.0 + i * 0.1)]
    assert set(qualities) == {OK}


@pytest.mark.parametrize(("second", "why"), [(3, "repeat"), (5, "jump")])
def test_counter_repeat_or_jump_marks_the_whole_frame_invalid(second, why):
    mon = CableMonitor("cable")
    fid, data = frame(mon, "CABLE_TEMPS", 3)
    mon.decode(fid, data, 1.0)
    fid, data = frame(mon, "CABLE_TEMPS", second)
    r = mon.decode(fid, data, 1.1)
    assert {x.quality for x in r} == {INVALID}, why
    assert mon.frames_invalid == 1


def test_value_outside_the_dbc_range_is_invalid_and_others_stay_ok():
    mon = CableMonitor("cable")
    # CoolantFlow raw 0xFFFF * 0.01 = 655.35 l/min > 100 (DBC max)
    fid, data = mon.encode("CABLE_COOLANT", {"CoolantPressure": 1.0, "RollingCounter": 0})
    data = b"\xff\xff" + data[2:]
    r = by_signal(mon.decode(fid, data, 1.0))
    assert r["cable.coolant_flow_lpm"].quality == INVALID
    assert r["cable.coolant_pressure_bar"].quality == OK


@pytest.mark.parametrize(
    ("bit", "signal"),
    [
        ("PinDcPlusSensorFault", "cable.pin_dc_plus_c"),
        ("PinDcMinusSensorFault", "cable.pin_dc_minus_c"),
        ("CoolantTempSensorFault", "cable.coolant_out_c"),
    ],
)
def test_sensor_fault_status_bit_marks_its_value_invalid(bit, signal):
    mon = CableMonitor("cable")
    fid, data = frame(mon, "CABLE_TEMPS", 0, **{bit: 1})
    r = by_signal(mon.decode(fid, data, 1.0))
    assert r[signal].quality == INVALID
    others = {
        s: x.quality
        for s, x in r.items()
        if s != signal and not (bit == "CoolantTempSensorFault" and s in ("cable.coolant_in_c", "cable.coolant_out_c"))
    }
    assert set(others.values()) == {OK}


def test_flow_sensor_fault_and_leak_flag():
    mon = CableMonitor("cable")
    fid, data = frame(mon, "CABLE_COOLANT", 0, FlowSensorFault=1, LeakDetected=1)
    r = by_signal(mon.decode(fid, data, 1.0))
    assert r["cable.coolant_flow_lpm"].quality == INVALID
    assert r["cable.leak"].value == 1.0 and r["cable.leak"].quality == OK


@pytest.mark.parametrize("length", [0, 7, 9])
def test_wrong_length_gives_invalid_nan_readings_and_does_not_raise(length):
    mon = CableMonitor("cable")
    r = mon.decode(0x18FF5101, bytes(length), 1.0)
    assert r and all(x.quality == INVALID and math.isnan(x.value) for x in r)


def test_values_go_stale_after_the_configured_age_once_per_silence():
    mon = CableMonitor("cable", stale_after_s=0.3)
    fid, data = frame(mon, "CABLE_TEMPS", 0)
    mon.decode(fid, data, 10.0)
    fid2, data2 = frame(mon, "CABLE_COOLANT", 0)
    mon.decode(fid2, data2, 10.0)
    assert mon.stale(10.29) == []
    stale = by_signal(mon.stale(10.31))
    assert stale["cable.pin_dc_plus_c"].quality == STALE
    assert stale["cable.pin_dc_plus_c"].t == 10.0  # keeps its receive time: its age keeps growing
    assert stale["cable.pin_dc_plus_c"].value == pytest.approx(45.0)
    assert "cable.coolant_flow_lpm" in stale
    assert mon.stale(10.5) == []  # reported once per silence


def test_a_message_never_received_is_left_missing_for_the_safety_core_to_name():
    mon = CableMonitor("cable", stale_after_s=0.3)
    assert mon.stale(100.0) == []


def test_first_frame_after_a_silence_starts_a_new_counter_sequence():
    mon = CableMonitor("cable", stale_after_s=0.3)
    fid, data = frame(mon, "CABLE_TEMPS", 3)
    mon.decode(fid, data, 1.0)
    fid, data = frame(mon, "CABLE_TEMPS", 9)  # after 2 s of silence: a jump is expected
    assert {x.quality for x in mon.decode(fid, data, 3.0)} == {OK}
    assert mon.stale(3.1) == []  # fresh again


def test_reading_names_and_fault_bits_come_from_the_dbc_attributes():
    # telemetry names must not change: these are the names the uplink and the safety core have always seen
    mon = CableMonitor("cable")
    assert mon.reading_names == (
        "cable.pin_dc_plus_c",
        "cable.pin_dc_minus_c",
        "cable.coolant_in_c",
        "cable.coolant_out_c",
        "cable.coolant_flow_lpm",
        "cable.coolant_pressure_bar",
        "cable.leak",
    )
    specs = {s.reading: s for s in signal_specs(load_database().get_message_by_name("CABLE_TEMPS"))}
    assert specs["pin_dc_plus_c"].fault_bit == "PinDcPlusSensorFault" and specs["pin_dc_plus_c"].unit == "°C"
    assert specs["coolant_in_c"].fault_bit == specs["coolant_out_c"].fault_bit == "CoolantTempSensorFault"


def test_decoded_cable_readings_are_urgent_and_stale_copies_are_not():
    mon = CableMonitor("cable", stale_after_s=0.3)
    fid, data = frame(mon, "CABLE_TEMPS", 0)
    assert all(r.urgent for r in mon.decode(fid, data, 1.0))
    assert not any(r.urgent for r in mon.stale(2.0))


def test_a_fault_bit_that_names_no_signal_of_its_message_is_refused_at_load(tmp_path):
    text = Path(DBC_PATH).read_text(encoding="cp1252")
    bad = text.replace('PinTempDcPlus "PinDcPlusSensorFault"', 'PinTempDcPlus "NoSuchBit"')
    path = tmp_path / "bad.dbc"
    path.write_text(bad, encoding="cp1252")
    with pytest.raises(ValueError, match="NoSuchBit"):
        CableMonitor("cable", db=load_database(str(path)))
