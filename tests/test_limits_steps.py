"""Each step of the safety core's pipeline (edge.limits.core.STEPS) on its own: a context is built from a
snapshot, the step runs, and what it wrote is checked. The scenario vectors check the steps together."""

from __future__ import annotations

from typing import Any

import pytest

from edge.config.limits import LimitsConfig
from edge.limits import core

CFG = LimitsConfig().model_dump()
T = 10.0


def ctx(state: dict[str, Any] | None = None, **snap: Any) -> Any:
    return core._Ctx({"t": T, "inputs": {}, **snap}, CFG, state if state is not None else core.initial_state())


def test_the_pipeline_runs_the_steps_in_the_documented_order():
    assert [s.__name__ for s in core.STEPS] == [
        "_base_limits",
        "_apply_rules",
        "_lowest_limit",
        "_latch_trips",
        "_answer_clears",
        "_list_latched",
        "_trip_or_stop",
        "_ramp_limit",
        "_contactor",
        "_pump",
        "_fan",
        "_voltage_setpoint",
    ]
    assert core.RULES[-1] is core._rule_external_faults


@pytest.mark.parametrize("request_a, expected", [(120.0, 120.0), (-5.0, 0.0), (float("nan"), 0.0), (None, 0.0)])
def test_base_limits_are_hardware_request_and_operator(request_a, expected):
    c = ctx(request_a=request_a, external_limit_a=-3.0)
    core._base_limits(c)
    assert c.limits == [
        [200.0, "hardware", "hardware limit 200 A"],
        [expected, "request", f"vehicle request {expected:.0f} A"],
        [0.0, "external", "external limit -3 A (CLI/cloud)"],
    ]


def test_apply_rules_runs_every_registered_rule_in_order(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(core, "RULES", (lambda c: seen.append("a"), lambda c: seen.append("b")))
    core._apply_rules(ctx())
    assert seen == ["a", "b"]


def test_lowest_limit_wins_the_first_of_equals_names_it_and_the_hardware_caps_it():
    c = ctx()
    c.hw_max = 150.0
    c.limit(300.0, "request", "r")
    c.limit(80.0, "grid", "g")
    c.limit(80.0, "coolant_flow", "f")
    core._lowest_limit(c)
    assert (c.target, c.rule, c.reason) == (80.0, "grid", "g")
    c = ctx()
    c.hw_max = 150.0
    c.limit(300.0, "request", "r")
    core._lowest_limit(c)
    assert (c.target, c.rule) == (150.0, "request")
    c.limit(-1.0, "odd", "negative")
    c.limit(float("nan"), "nan", "not a number")  # limit() turns NaN into 0 A
    core._lowest_limit(c)
    assert (c.target, c.rule) == (0.0, "odd")


def test_latch_trips_keeps_latching_trips_in_the_state_only():
    c = ctx()
    c.trip("over_voltage", "ov detail", True)
    c.trip("pins_disagree", "pd detail", False)
    core._latch_trips(c)
    assert c.faults == {"over_voltage": "ov detail", "pins_disagree": "pd detail"}
    assert c.state["latched"] == {"over_voltage": "ov detail"}


def test_answer_clears_grants_only_latched_faults_whose_condition_is_gone():
    state = core.initial_state()
    state["latched"] = {"coolant_leak": "leak", "over_current": "oc"}
    c = ctx(state, clear=["coolant_leak", "over_current", "can_bus_off"])
    c.block("coolant_leak", "leak sensor not valid: cannot confirm the leak is gone")
    core._answer_clears(c)
    assert c.cleared == ["over_current"]
    assert c.refused == [
        ["coolant_leak", "leak sensor not valid: cannot confirm the leak is gone"],
        ["can_bus_off", "not latched"],
    ]
    assert state["latched"] == {"coolant_leak": "leak"}


def test_list_latched_shows_a_latched_fault_whose_condition_is_gone():
    state = core.initial_state()
    state["latched"] = {"over_current": "output 250 A above limit", "pins_disagree": "old"}
    c = ctx(state)
    c.faults["pins_disagree"] = "now"
    core._list_latched(c)
    assert c.faults == {"over_current": "output 250 A above limit (latched)", "pins_disagree": "now"}


def test_trip_or_stop_overrides_the_limit_and_names_the_first_fault():
    state = core.initial_state()
    state["latched"] = {"over_voltage": "ov"}
    c = ctx(state, stop=True)
    c.trip("coolant_leak", "leak now", True)
    c.faults = {"over_voltage": "ov (latched)", "coolant_leak": "leak now"}
    c.target, c.rule, c.reason = 120.0, "request", "vehicle request 120 A"
    core._trip_or_stop(c)
    assert c.tripped and (c.target, c.rule) == (0.0, "trip")
    assert c.reason == "tripped: coolant_leak: leak now (+1 more)"
    c = ctx(stop=True)
    c.target, c.rule = 120.0, "request"
    core._trip_or_stop(c)
    assert not c.tripped and (c.target, c.rule, c.reason) == (0.0, "stop", "stopped by operator")


def test_ramp_limit_holds_after_a_reduction_then_rises_at_the_rate_and_says_so():
    state = core.initial_state()
    c = ctx(state)
    c.target, c.reason = 100.0, "vehicle request 100 A"
    core._ramp_limit(c)  # start-up counts as a reduction: held
    assert c.applied == 0.0 and c.reason == "vehicle request 100 A; held 2.0 s after a reduction"
    state["t_prev"] = T
    c = core._Ctx({"t": T + 2.5, "inputs": {}}, CFG, state)
    c.target, c.reason = 100.0, "r"
    core._ramp_limit(c)
    assert c.applied == pytest.approx(CFG["ramp_up_a_per_s"] * 2.5)
    assert c.reason == "r; rising 25 A/s"
    c = core._Ctx({"t": T + 3.0, "inputs": {}}, CFG, state)
    c.target, c.reason = 10.0, "r"
    core._ramp_limit(c)  # reductions at once, no text
    assert (c.applied, c.reason) == (10.0, "r")


@pytest.mark.parametrize(
    "change, contactor",
    [
        ({}, True),
        ({"request": 0.0}, False),
        ({"tripped": True}, False),
        ({"stop": True}, False),
        ({"sensor_fault": True}, False),
        ({"external_stop": True}, False),
    ],
)
def test_contactor_closes_only_for_a_session_that_may_run(change, contactor):
    c = ctx(modules_available=2, request_a=100.0)
    c.applied = 50.0
    for key, value in change.items():
        setattr(c, key, value)
    core._contactor(c)
    assert c.contactor is contactor and c.enable is contactor
    c = ctx(modules_available=0, request_a=100.0)
    c.applied = 50.0
    core._contactor(c)
    assert not c.contactor


@pytest.mark.parametrize(
    "session, request_a, change, contactor",
    [
        (True, 0.0, {}, True),  # a session at 0 A (a connector's controller asks for nothing yet)
        (False, 100.0, {}, False),  # no session: a request alone does not close it
        (True, 0.0, {"tripped": True}, False),
        (True, 0.0, {"stop": True}, False),
        (True, 0.0, {"sensor_fault": True}, False),
        (True, 0.0, {"external_stop": True}, False),
    ],
)
def test_a_session_flag_in_the_snapshot_decides_the_contactor_instead_of_the_request(
    session, request_a, change, contactor
):
    c = ctx(modules_available=2, request_a=request_a, session=session)
    c.applied = 0.0
    for key, value in change.items():
        setattr(c, key, value)
    core._contactor(c)
    assert c.contactor is contactor and not c.enable


def test_limits_from_the_snapshot_come_after_the_hardware_and_before_the_request():
    c = ctx(request_a=100.0, limits=[[80.0, "grid", "site fuse"], [-1.0, "session", "no session"]])
    core._base_limits(c)
    assert c.limits == [
        [200.0, "hardware", "hardware limit 200 A"],
        [80.0, "grid", "site fuse"],
        [0.0, "session", "no session"],
        [100.0, "request", "vehicle request 100 A"],
    ]


def test_an_uncooled_output_does_not_require_the_cable_inputs_but_uses_what_reports():
    c = ctx(uncooled=True, inputs={"coolant_out_c": [30.0, T, "ok"]})
    core._rule_sensors(c)
    assert (c.sensor_fault, c.faults, c.limits, c.vals) == (False, {}, [], {"coolant_out_c": 30.0})
    c = ctx(inputs={"coolant_out_c": [30.0, T, "ok"]})
    c.state["start_t"] = T - 1.0  # long after the start: a sensor never heard is missing
    core._rule_sensors(c)
    assert c.sensor_fault and "pin_dc_plus_missing" in c.faults


def test_a_sensor_not_heard_yet_at_start_gives_0_a_and_no_fault_until_its_max_age_has_passed():
    c = ctx(inputs={"coolant_out_c": [30.0, T, "ok"]})  # the first evaluation: only the outlet has reported
    core._rule_sensors(c)
    assert c.sensor_fault and not c.faults, c.faults
    assert [0.0, "sensor", "cable DC+ pin: waiting for the first reading"] in c.limits
    later = ctx(inputs={"coolant_out_c": [30.0, T, "ok"]})
    later.state.update(c.state)
    later.t = T + later.max_age_s("pin_dc_plus_c") + 0.01
    later.inputs["coolant_out_c"] = [30.0, later.t, "ok"]
    core._rule_sensors(later)
    assert "pin_dc_plus_missing" in later.faults and "coolant_out_missing" not in later.faults


def test_contactor_stays_closed_at_zero_amps_with_the_modules_off():
    c = ctx(modules_available=2, request_a=100.0)
    c.applied = 0.0
    core._contactor(c)
    assert c.contactor and not c.enable


def test_pump_runs_for_a_session_and_its_cool_down_never_with_a_leak():
    state = core.initial_state()
    c = ctx(state, request_a=100.0)
    core._pump(c)
    assert c.pump and state["pump_since"] == T and state["pump_until"] == T + core.PUMP_COOLDOWN_S
    c = core._Ctx({"t": T + 59.0, "inputs": {}, "request_a": 0.0}, CFG, state)
    core._pump(c)
    assert c.pump and state["pump_since"] == T  # cool-down: still counting from the start
    c = core._Ctx({"t": T + 60.0, "inputs": {}, "request_a": 0.0}, CFG, state)
    core._pump(c)
    assert not c.pump and state["pump_since"] is None
    c = ctx(core.initial_state(), request_a=100.0)
    c.trip("coolant_leak", "leak", True)
    core._pump(c)
    assert not c.pump


def test_fan_is_full_with_the_output_on_or_a_hot_module_and_low_with_the_pump_only():
    c = ctx()
    c.pump = True
    core._fan(c)
    assert c.fan == 0.3
    hot = CFG["module_temperature"]["derate_start_c"] + 1.0
    c = ctx(inputs={"module_temp_c": [hot, T, "ok"]})
    core._fan(c)
    assert c.fan == 1.0
    c = ctx(inputs={"module_temp_c": [hot, T - 60.0, "ok"]})  # stale: not a reason
    core._fan(c)
    assert c.fan == 0.0
    c = ctx()
    c.enable = True
    core._fan(c)
    assert c.fan == 1.0


def test_external_faults_join_the_fault_list_and_only_stopping_ones_limit():
    c = ctx(
        external_faults=[
            ["telemetry_store_error", "store cannot write", False],
            ("can_bus_off", "CAN can0 bus off", True),
        ]
    )
    c.faults["telemetry_store_error"] = "the core's own detail"
    core._rule_external_faults(c)
    assert c.faults == {"telemetry_store_error": "the core's own detail", "can_bus_off": "CAN can0 bus off"}
    assert c.limits == [[0.0, "external_fault", "CAN can0 bus off"]]
    assert c.external_stop and not c.trips and not c.sensor_fault
    c = ctx(external_faults=[["telemetry_store_error", "x", False]])
    core._rule_external_faults(c)
    assert c.limits == [] and not c.external_stop


def test_grid_helpers():
    assert core._worst_phase([10.0, 30.0, 30.0]) == [30.0, 2]
    hist = [[1.0, 100.0], [2.0, 300.0], [3.0, 200.0]]
    assert core._samples_around(hist, 2.5) == [[2.0, 300.0], [3.0, 200.0]]
    assert core._samples_around(hist, 3.5) == [[3.0, 200.0]]
    assert core._samples_around(hist, 0.5) == []
    good = {f"grid_l{i}_a": [10.0 * i, T - 0.1 * i, "ok"] for i in (1, 2, 3)}
    assert core._grid_phases(ctx(inputs=good)) == [[10.0, 20.0, 30.0], T - 0.3]
    assert core._grid_phases(ctx(inputs={**good, "grid_l2_a": [-1.0, T, "ok"]})) is None
    assert core._grid_phases(ctx(inputs={k: v for k, v in good.items() if k != "grid_l3_a"})) is None


def test_evaluate_never_changes_the_state_it_was_given():
    state = core.initial_state()
    state["latched"] = {"over_current": "oc"}
    before = repr(state)
    core.evaluate({"t": T, "inputs": {}, "request_a": 100.0, "clear": ["over_current"]}, CFG, state)
    assert repr(state) == before
