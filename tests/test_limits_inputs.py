"""The safety-input table (edge/limits/inputs.py) is the one place each input is named, and what reads it
(the core, the state binding, the status text, the telemetry measurands) follows it.

The cross-checks against the drivers are not copies kept in sync: the driver names what it produces, the
table says which of those readings feeds which core input, and a rename on one side must fail here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from drivers.cable import monitor
from drivers.meters.models import MODELS
from drivers.readings import OK, STALE, Reading
from edge.limits import core, inputs
from edge.render import cable_lines
from edge.state import CabinetState, InputMap, bind_inputs
from edge.telemetry.measurands import ocpp_fields

REPO = Path(__file__).resolve().parent.parent
SAFETY_MD = (REPO / "docs" / "SAFETY.md").read_text()
# one-word headings: their anchor is the word in lower case (`## Inputs` -> #inputs)
HEADINGS = {h.lower() for h in re.findall(r"^#{2,4} (\S+)\s*$", SAFETY_MD, flags=re.MULTILINE)}


def test_every_entry_has_every_field_with_a_known_value():
    keys = set(inputs.INPUTS[0])
    for e in inputs.INPUTS:
        assert set(e) == keys, e["name"]
        assert e["source"] in {"cable", "module", "ambient", "grid", "output"}, e
        assert e["stale"] in {"fast", "slow", "grid"}, e
        assert e["required"] in {inputs.ALWAYS, inputs.CONFIGURED, inputs.OPTIONAL, inputs.MONITOR}, e
        assert e["unit"] in {"°C", "l/min", "A", "V", "bar", ""}, e
    names = [e["name"] for e in inputs.INPUTS]
    assert len(names) == len(set(names))
    # a sensor family names the faults of exactly one input where faults are raised per input
    fast = [e["sensor"] for e in inputs.INPUTS if e["stale"] == "fast"]
    assert len(fast) == len(set(fast))


def test_the_core_derives_its_input_lists_from_the_table():
    assert core.SAFETY_INPUTS == ("pin_dc_plus_c", "pin_dc_minus_c", "coolant_out_c", "coolant_flow_lpm")
    assert core.TEMP_RATE_INPUTS == ("pin_dc_plus_c", "pin_dc_minus_c", "coolant_out_c")
    assert core.GRID_INPUTS == ("grid_l1_a", "grid_l2_a", "grid_l3_a")
    assert inputs.reading("coolant_leak") == "leak"
    assert inputs.sensor("coolant_flow_lpm") == "coolant_flow"
    assert inputs.label("pin_dc_minus_c") == "cable DC- pin"
    with pytest.raises(KeyError):
        inputs.entry("coolant_level")


def test_every_input_and_every_docs_anchor_is_in_docs_safety():
    for e in inputs.INPUTS:
        assert f"`{e['name']}`" in SAFETY_MD, f"{e['name']} is not described in docs/SAFETY.md"
        assert e["docs"] in HEADINGS, f"{e['name']}: no section #{e['docs']} in docs/SAFETY.md"
    for key, anchor in inputs.FAULT_DOCS.items():
        assert anchor in HEADINGS, f"fault {key}: no section #{anchor} in docs/SAFETY.md"


@pytest.mark.parametrize(
    "fault, anchor",
    [
        ("pin_dc_plus_stale", "sensor_stale"),
        ("module_lost_12", "module_lost"),
        ("can_bus_off", "can_bus_off"),
        ("can_bus_off.can1", "can_bus_off"),
        ("telemetry_store_error", "telemetry_store_error"),
        ("no_module_available", "all_modules_lost"),
        ("something_new", "faults"),
    ],
)
def test_fault_names_map_to_their_section(fault, anchor):
    assert inputs.fault_doc(fault) == "docs/SAFETY.md#" + anchor


def test_the_cable_driver_produces_every_cable_reading_the_table_names_with_its_unit():
    produced = {s.reading: s.unit for m in monitor.load_database().messages for s in monitor.signal_specs(m)}
    for e in inputs.INPUTS:
        if e["source"] == "cable":
            assert e["reading"] in produced, f"the cable monitor has no reading {e['reading']}"
            assert produced[e["reading"]] == e["unit"], e["name"]


def test_every_built_in_meter_model_produces_the_grid_phase_currents():
    for name, model in MODELS.items():
        signals = {r.signal for r in model.registers}
        for e in inputs.INPUTS:
            if e["source"] == "grid":
                assert e["reading"] in signals, f"meter model {name} has no {e['reading']}"


def test_binding_is_per_connector_and_leaves_out_what_is_not_configured():
    left = bind_inputs("cable_left", "grid", "cabinet.ambient_c")
    right = bind_inputs("cable_right", None, None)
    assert left["pin_dc_plus_c"] == "cable_left.pin_dc_plus_c"
    assert left["coolant_leak"] == "cable_left.leak"
    assert left["ambient_c"] == "cabinet.ambient_c"
    assert [left[f"grid_l{i}_a"] for i in (1, 2, 3)] == [f"grid.Current.Import.L{i}" for i in (1, 2, 3)]
    assert right == {k: v.replace("cable_left", "cable_right") for k, v in left.items() if v.startswith("cable_left.")}
    # readings no rule reads are not bound (they are still shown by status and the self-test)
    assert "coolant_in_c" not in left and "coolant_pressure_bar" not in left
    assert bind_inputs(None, None, None) == {}
    assert InputMap(cable="c", grid_meter="g", ambient="a.t").core_inputs() == bind_inputs("c", "g", "a.t")


def test_snapshot_carries_the_bound_readings_and_the_hottest_answering_module():
    state = CabinetState(InputMap(cable="cable", grid_meter=None))
    state.update(
        [
            Reading("cable.leak", 0.0, "", 1.0, OK),
            Reading("cable.coolant_in_c", 25.0, "°C", 1.0, OK),  # monitored only: not a core input
            Reading("module.1.temperature_c", 80.0, "°C", 1.0, STALE),
            Reading("module.2.temperature_c", 41.0, "°C", 1.5, OK),
            Reading("module.3.temperature_c", 45.0, "°C", 1.2, OK),
        ]
    )
    snap = state.limits_snapshot(2.0, request_a=10.0)
    assert snap["inputs"] == {"coolant_leak": [0.0, 1.0, OK], "module_temp_c": [45.0, 1.2, OK]}
    assert snap["t"] == 2.0 and snap["request_a"] == 10.0
    # every module temperature stale: the newest goes in as it is, so the core sees a stale input
    only_stale = CabinetState(InputMap(cable=None, grid_meter=None))
    only_stale.update(
        [
            Reading("module.1.temperature_c", 50.0, "°C", 1.0, STALE),
            Reading("module.2.temperature_c", 60.0, "°C", 0.5, STALE),
        ]
    )
    assert only_stale.limits_snapshot(2.0)["inputs"] == {"module_temp_c": [50.0, 1.0, STALE]}


def test_cable_status_lines_follow_the_binding_of_any_cable_name():
    st = {
        "readings": {
            "cable_right.pin_dc_minus_c": {"value": 51.26, "quality": "ok"},
            "cable_right.coolant_flow_lpm": {"value": 4.5, "quality": "stale"},
            "cable_right.leak": {"value": 1.0, "quality": "ok"},
        }
    }
    lines = cable_lines(st, "cable_right")
    assert lines[0] == "cable    pin DC+ -- °C   pin DC- 51.3 °C  LEAK DETECTED"
    assert lines[1] == "coolant  in -- °C  out -- °C  flow 4.50 STALE l/min  -- bar"


def test_telemetry_measurands_of_the_cable_temperatures_come_from_the_table():
    for e in inputs.INPUTS:
        fields = dict(ocpp_fields(f"cable_left.{e['reading']}"))
        if e["source"] == "cable" and e["unit"] == "°C":
            location = "Outlet" if e["place"] == "connector" else "Cable"
            assert fields == {"measurand": "Temperature", "location": location, "point": e["sensor"]}, e["name"]
        elif e["source"] == "cable":
            assert fields == {}, e["name"]
