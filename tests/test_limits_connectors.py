"""The safety core of a cabinet with several connectors (edge.limits.connectors.evaluate_cabinet): each
session rule on its own, the cabinet's merge, and hypothesis properties over two connectors. The scenario
vectors (tests/vectors/connectors, run under CPython and MicroPython) check the rules together."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.config.connectors import Contactors, Session
from edge.config.limits import LimitsConfig
from edge.limits import connectors, contactor
from edge.limits.connectors import SESSION_DEFAULTS, evaluate_cabinet

FAST = LimitsConfig(raise_hold_ms=0, ramp_up_a_per_s=1000.0).model_dump()
CABLE = {"pin_dc_plus_c": 40.0, "pin_dc_minus_c": 40.0, "coolant_out_c": 30.0, "coolant_flow_lpm": 5.0}


def fresh(t: float, **values: float) -> dict[str, list[Any]]:
    return {k: [v, t, "ok"] for k, v in values.items()}


def request(t: float, **over: Any) -> dict[str, Any]:
    req = {
        "mode": "Export",
        "phase": "Charging",
        "voltage_v": 400.0,
        "current_a": 100.0,
        "power_w": None,
        "t_mode": t,
        "t_setpoint": t,
    }
    req.update(over)
    return req


def connector(t: float, req: dict[str, Any] | None = None, inputs: dict[str, float] | None = None, **over: Any):
    conn = {
        "inputs": fresh(t, **{**CABLE, "output_v": 400.0, "output_a": 0.0, **(inputs or {})}),
        "request": req,
        "hw_max_a": 200.0,
        "hw_max_v": 1000.0,
        "hw_min_v": 150.0,
        "hw_max_w": 150000.0,
        "uncooled": False,
        "modules_available": 4,
        "module_max_a": 50.0,
        "modules_configured": 4,
        "modules_lost": [],
        "modules_alarm": [],
        "external_limit_a": None,
        "stop": False,
        "external_faults": [],
    }
    conn.update(over)
    return conn


def cabinet(t: float, conns: dict[str, dict[str, Any]], inputs: dict[str, float] | None = None, **over: Any):
    snap = {
        "t": t,
        "inputs": fresh(t, **(inputs or {})),
        "grid_configured": False,
        "ambient_configured": False,
        "external_faults": [],
        "clear": [],
        "external_limit_a": None,
        "stop": False,
        "connectors": conns,
    }
    snap.update(over)
    return snap


def run(steps: list[dict[str, Any]], config: dict[str, Any] = FAST, state: Any = None) -> tuple[list[Any], Any]:
    out = []
    for snap in steps:
        d, state = evaluate_cabinet(snap, config, state)
        out.append(d)
    return out, state


def settle(make: Any, until: float = 0.5, config: dict[str, Any] = FAST) -> tuple[dict[str, Any], Any]:
    """Evaluate ``make(t)`` every 100 ms up to ``until``: the last decision and the state."""
    ds, state = run([make(i / 10) for i in range(round(until * 10) + 1)], config)
    return ds[-1], state


def two(t: float, **per: Any) -> dict[str, Any]:
    """Two connectors charging at 400 V 100 A; ``per`` = {"c1": {...connector overrides}, "c2": {...}}."""
    return {
        "1": connector(t, request(t), **per.get("c1", {})),
        "2": connector(t, request(t), **per.get("c2", {})),
    }


# -- config and shapes ---------------------------------------------------------------------------------------


def test_session_defaults_match_the_config_keys_and_a_config_section_overrides_them():
    assert SESSION_DEFAULTS == {
        "request_stale_ms": 3000,
        "precheck_current_a": 2.0,
        "off_current_a": 1.0,
        "off_timeout_ms": 2000,
        "precharge_tolerance_v": 20.0,
        "precharge_timeout_ms": 5000,
    }
    assert SESSION_DEFAULTS == Session().model_dump()
    assert contactor.DEFAULTS == Contactors().model_dump(include={"close_timeout_ms", "open_timeout_ms"})
    assert connectors.session_config({"session": {"off_current_a": 0.5}})["off_current_a"] == 0.5
    assert connectors.session_config({})["request_stale_ms"] == 3000


def test_the_decision_has_the_documented_shape():
    d, state = settle(lambda t: cabinet(t, two(t)))
    assert set(d) == {
        "limit_a",
        "target_a",
        "voltage_v",
        "enable",
        "contactor",
        "pump",
        "fan",
        "faults",
        "fault_details",
        "fault_docs",
        "latched",
        "rule",
        "reason",
        "cleared",
        "clear_refused",
        "connectors",
        "events",
        "grid_allowed_w",
        "estop",  # edge/limits/safety_inputs.py
        "digital",
    }
    assert set(d["connectors"]["1"]) == {
        "limit_a",
        "target_a",
        "voltage_v",
        "enable",
        "contactor",
        "phase",
        "mode",
        "ending",
        "rule",
        "reason",
        "faults",
        "latched",
        "max_current_a",
        "max_power_w",
        "voltage_reached",
        "request_age_s",
        "out_of_service",
        "imd",
        "over_voltage_v",
    }
    assert set(state) == {"connectors", "sessions", "grid", "safety"}
    assert d["limit_a"] == 200.0 and d["enable"] and d["contactor"]


def test_evaluate_cabinet_never_changes_the_state_it_was_given():
    _, state = settle(lambda t: cabinet(t, two(t)))
    before = copy.deepcopy(state)
    evaluate_cabinet(cabinet(0.6, two(0.6, c1={"inputs": {"output_a": 3.0}})), FAST, state)
    assert state == before


def test_the_state_of_a_connector_no_longer_configured_is_forgotten():
    _, state = settle(lambda t: cabinet(t, two(t)))
    _, state = evaluate_cabinet(cabinet(0.6, {"1": connector(0.6, request(0.6))}), FAST, state)
    assert sorted(state["connectors"]) == sorted(state["sessions"]) == ["1"]


def test_our_own_output_counts_for_the_site_fuse_only_as_each_connector_measured_it():
    grid = {"grid_l1_a": 60.0, "grid_l2_a": 60.0, "grid_l3_a": 60.0}

    def make(on_cabinet: bool) -> Any:
        def snap(t: float) -> dict[str, Any]:
            conns = {"1": connector(t, request(t)), "2": connector(t, request(t))}
            cab = dict(grid)
            if on_cabinet:  # a cabinet-wide reading is not a connector's: it must not make room twice
                for c in conns.values():
                    del c["inputs"]["output_a"]
                cab.update({"output_a": 40.0, "output_v": 400.0})
            else:
                for c in conns.values():
                    c["inputs"]["output_a"] = [20.0, t, "ok"]
            return cabinet(t, conns, inputs=cab, grid_configured=True)

        return snap

    assert settle(make(False))[0]["grid_allowed_w"] == pytest.approx(16000.0)
    assert settle(make(True))[0]["grid_allowed_w"] == pytest.approx(0.0)


def test_a_cabinet_without_connectors_gives_nothing():
    d, _ = evaluate_cabinet(cabinet(0.0, {}), FAST, None)
    assert (d["limit_a"], d["contactor"], d["enable"], d["pump"], d["connectors"]) == (0.0, False, False, False, {})
    assert d["rule"] == "session"


# -- the request --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "req, cause",
    [
        (None, "no request"),
        ({"mode": "Off"}, "mode Off"),
        ({"mode": "Import"}, "mode Import"),
        ({"mode": "Fault"}, "mode Fault"),
    ],
)
def test_no_export_request_means_zero_amps_no_enable_and_an_open_contactor(req, cause):
    def make(t: float) -> dict[str, Any]:
        r = None if req is None else request(t, **req)
        return cabinet(t, {"1": connector(t, r)})

    d, _ = settle(make)
    c = d["connectors"]["1"]
    assert (c["limit_a"], c["enable"], c["contactor"], c["mode"]) == (0.0, False, False, "Off")
    assert (c["rule"], c["reason"]) == ("session", f"no session ({cause})")
    assert d["faults"] == [] and d["pump"] is False


def test_a_request_exactly_at_the_stale_time_is_fresh_and_one_ms_later_stale_in_that_evaluation():
    def make(t: float, t_req: float) -> dict[str, Any]:
        return cabinet(t, {"1": connector(t, request(t_req)), "2": connector(t, request(t))})

    ds, _ = run([make(i / 10, i / 10) for i in range(6)] + [make(3.5, 0.5), make(3.501, 0.5)])
    at, after = ds[-2]["connectors"]["1"], ds[-1]["connectors"]["1"]
    assert at["limit_a"] == 100.0 and at["faults"] == [] and at["request_age_s"] == 3.0
    assert (after["limit_a"], after["target_a"], after["enable"], after["rule"]) == (0.0, 0.0, False, "request_stale")
    assert after["faults"] == ["request_stale"] and ds[-1]["latched"] == []
    assert ds[-1]["fault_details"]["request_stale"] == (
        "connector 1: request stale: no mode or set-point for 3001 ms (max 3000 ms)"
    )
    assert ds[-1]["connectors"]["2"]["limit_a"] == 100.0


def test_either_a_mode_or_a_set_point_refresh_keeps_the_request_fresh():
    def make(t: float) -> dict[str, Any]:
        return cabinet(t, {"1": connector(t, request(t, t_setpoint=0.0)), "2": connector(t, request(t, t_mode=None))})

    d, _ = settle(make, until=5.0)
    assert d["faults"] == [] and d["connectors"]["1"]["limit_a"] == 100.0 and d["connectors"]["2"]["limit_a"] == 100.0
    d, _ = evaluate_cabinet(cabinet(0.0, {"1": connector(0.0, request(0.0, t_mode=None, t_setpoint=None))}), FAST, None)
    assert d["connectors"]["1"]["rule"] == "request_stale"
    assert "no mode or set-point for - ms" in d["fault_details"]["request_stale"]


def test_the_session_stale_time_comes_from_the_config():
    cfg = {**FAST, "session": {"request_stale_ms": 500}}
    ds, _ = run([cabinet(t, {"1": connector(t, request(0.0))}) for t in (0.0, 0.5, 0.6)], cfg)
    assert [d["connectors"]["1"]["faults"] for d in ds] == [[], [], ["request_stale"]]


@pytest.mark.parametrize("phase", ["CableCheck", "PreCharge"])
def test_cable_check_and_pre_charge_get_at_most_the_precheck_current(phase):
    cfg = {**FAST, "session": {"precheck_current_a": 1.5}}
    d, _ = settle(lambda t: cabinet(t, {"1": connector(t, request(t, phase=phase))}), config=cfg)
    c = d["connectors"]["1"]
    assert (c["limit_a"], c["rule"], c["reason"], c["phase"]) == (1.5, "precheck", f"{phase}: at most 1.5 A", phase)
    assert c["enable"] and c["contactor"] and c["max_current_a"] == 200.0


def test_pre_charge_reports_the_voltage_reached_within_the_tolerance():
    def make(out_v: float) -> Any:
        return lambda t: cabinet(
            t, {"1": connector(t, request(t, phase="PreCharge", voltage_v=380.0), inputs={"output_v": out_v})}
        )

    assert settle(make(359.0))[0]["connectors"]["1"]["voltage_reached"] is False
    assert settle(make(360.0))[0]["connectors"]["1"]["voltage_reached"] is True
    assert settle(make(401.0))[0]["connectors"]["1"]["voltage_reached"] is False


def test_a_power_request_limits_as_amps_at_the_higher_of_requested_and_measured_voltage():
    d, _ = settle(lambda t: cabinet(t, {"1": connector(t, request(t, power_w=40000.0), inputs={"output_v": 500.0})}))
    c = d["connectors"]["1"]
    assert (c["limit_a"], c["rule"], c["reason"]) == (80.0, "request_power", "requested power 40.0 kW at 500.0 V")


def test_the_hardware_power_is_a_current_limit_at_the_voltage_and_the_capability_power():
    d, _ = settle(lambda t: cabinet(t, {"1": connector(t, request(t, current_a=200.0), hw_max_w=60000.0)}))
    c = d["connectors"]["1"]
    assert (c["limit_a"], c["rule"]) == (150.0, "hardware_power")
    assert (c["max_current_a"], c["max_power_w"]) == (200.0, 60000.0)


def test_the_connector_hardware_current_replaces_the_cabinet_figure():
    d, _ = settle(
        lambda t: cabinet(t, {"1": connector(t, request(t, current_a=500.0), hw_max_a=300.0, modules_available=8)})
    )
    c = d["connectors"]["1"]
    assert (c["limit_a"], c["rule"], c["max_current_a"]) == (300.0, "hardware", 300.0)


def test_module_capability_limits_each_connector():
    d, _ = settle(
        lambda t: cabinet(
            t, {"1": connector(t, request(t), modules_available=2, module_max_a=30.0), "2": connector(t, request(t))}
        )
    )
    assert d["connectors"]["1"]["limit_a"] == 60.0 and d["connectors"]["1"]["rule"] == "modules"
    assert d["connectors"]["2"]["limit_a"] == 100.0


@pytest.mark.parametrize(
    "hw_max_v, cfg_max_v, ov_max_v, expected",
    [(500.0, 1000.0, 1000.0, 500.0), (1000.0, 600.0, 1000.0, 600.0), (1000.0, 1000.0, 700.0, 700.0)],
)
def test_the_voltage_set_point_is_clamped_to_the_lowest_maximum(hw_max_v, cfg_max_v, ov_max_v, expected):
    cfg = LimitsConfig(
        raise_hold_ms=0, ramp_up_a_per_s=1000.0, max_output_voltage_v=cfg_max_v, over_voltage={"max_v": ov_max_v}
    ).model_dump()
    d, _ = settle(lambda t: cabinet(t, {"1": connector(t, request(t, voltage_v=900.0), hw_max_v=hw_max_v)}), config=cfg)
    c = d["connectors"]["1"]
    assert c["voltage_v"] == expected
    assert f"voltage set-point 900.0 V clamped to {expected:.1f} V" in c["reason"]
    assert c["max_power_w"] == min(150000.0, 200.0 * expected)


def test_the_over_voltage_reference_is_the_connector_maximum():
    def make(out_v: float) -> Any:
        return lambda t: cabinet(t, {"1": connector(t, request(t), inputs={"output_v": out_v}, hw_max_v=500.0)})

    ds, _ = run([make(450.0)(i / 10) for i in range(6)] + [make(510.0)(0.6 + i / 10) for i in range(5)])
    assert ds[-2]["faults"] == []
    assert ds[-1]["faults"] == ["over_voltage"]
    # one connector: its name is not in the detail
    assert ds[-1]["fault_details"]["over_voltage"] == "output 510.0 V above 500.0 V for 400 ms"


@pytest.mark.parametrize("volts", [float("nan"), -5.0])
def test_an_invalid_requested_voltage_sends_0_v(volts):
    d, _ = settle(lambda t: cabinet(t, {"1": connector(t, request(t, voltage_v=volts))}))
    c = d["connectors"]["1"]
    assert c["voltage_v"] == 0.0 and "invalid, 0 V sent" in c["reason"]


def test_a_requested_voltage_below_the_connector_minimum_gives_zero_amps_with_a_reason():
    d, _ = settle(lambda t: cabinet(t, {"1": connector(t, request(t, voltage_v=149.0))}))
    c = d["connectors"]["1"]
    assert (c["limit_a"], c["enable"], c["rule"]) == (0.0, False, "voltage_range")
    assert c["reason"] == "requested 149.0 V below the connector minimum 150.0 V"
    assert c["contactor"] is True and c["mode"] == "Export"


# -- the end of a session ------------------------------------------------------------------------------------


def _ending(out_a: float, mode: str = "Off") -> list[dict[str, Any]]:
    steps = [cabinet(i / 10, two(i / 10)) for i in range(6)]
    for i in range(1, 26):
        t = 0.5 + i / 10
        conns = two(t)
        conns["1"] = connector(t, request(t, mode=mode), inputs={"output_a": out_a})
        steps.append(cabinet(t, conns))
    return steps


def test_at_the_end_of_a_session_the_modules_stop_at_once_and_the_contactor_opens_below_the_off_current():
    ds, _ = run(_ending(0.9))
    c = ds[6]["connectors"]["1"]
    assert (c["limit_a"], c["enable"], c["contactor"], c["mode"]) == (0.0, False, False, "Off")
    assert ds[6]["events"] == ["connector 1: session ended (mode Off): output 0.9 A below 1.0 A, contactor opened"]
    assert ds[6]["faults"] == [] and ds[7]["events"] == []


def test_the_contactor_waits_for_the_off_current_at_most_the_off_timeout():
    ds, _ = run(_ending(5.0))
    waiting = [d["connectors"]["1"] for d in ds[6:26]]  # 0.6 .. 2.5 s: less than 2000 ms since the end
    assert all(c["contactor"] and c["ending"] and not c["enable"] and c["limit_a"] == 0.0 for c in waiting)
    assert all(c["mode"] == "Export" for c in waiting)
    assert all(d["events"] == [] for d in ds[6:26])
    done = ds[26]["connectors"]["1"]
    assert (done["contactor"], done["ending"], done["mode"]) == (False, False, "Off")
    assert ds[26]["events"] == [
        "connector 1: session ended (mode Off): output still 5.0 A after 2000 ms (off current 1.0 A), "
        "contactor opened anyway"
    ]
    assert ds[26]["faults"] == [] and ds[26]["connectors"]["2"]["contactor"]


def test_without_an_output_measurement_the_contactor_opens_after_the_off_timeout():
    steps = _ending(5.0)
    for s in steps[6:]:
        del s["connectors"]["1"]["inputs"]["output_a"]
    ds, _ = run(steps)
    assert ds[25]["connectors"]["1"]["contactor"] and not ds[26]["connectors"]["1"]["contactor"]
    assert "output not measured after 2000 ms" in ds[26]["events"][0]


def test_a_stop_during_the_off_current_wait_opens_the_contactor_at_once():
    steps = _ending(5.0)
    steps[8]["connectors"]["1"]["stop"] = True
    ds, _ = run(steps)
    assert ds[7]["connectors"]["1"]["contactor"] and not ds[8]["connectors"]["1"]["contactor"]
    assert not ds[9]["connectors"]["1"]["contactor"]  # the wait is over: no session, no contactor
    assert all(d["events"] == [] for d in ds[6:])


def test_a_connector_that_never_closed_its_contactor_does_not_wait():
    ds, _ = run(
        [
            cabinet(t / 10, {"1": connector(t / 10, request(t / 10, mode="Off"), inputs={"output_a": 5.0})})
            for t in range(3)
        ]
    )
    assert [d["connectors"]["1"]["contactor"] for d in ds] == [False, False, False]
    assert all(d["events"] == [] for d in ds)


# -- the cabinet ---------------------------------------------------------------------------------------------


def test_the_site_fuse_allowance_is_shared_in_watts_between_connectors_at_different_voltages():
    def make(t: float) -> dict[str, Any]:
        conns = {
            "1": connector(t, request(t, current_a=500.0), hw_max_a=500.0, modules_available=10),
            "2": connector(
                t,
                request(t, voltage_v=800.0, current_a=500.0),
                inputs={"output_v": 800.0},
                hw_max_a=500.0,
                modules_available=10,
            ),
            "3": connector(t, None),
        }
        return cabinet(t, conns, inputs={"grid_l1_a": 13.0, "grid_l2_a": 13.0, "grid_l3_a": 13.0}, grid_configured=True)

    d, _ = settle(make)
    allowed_w = 47.0 * 3 * 230.0 * 0.95
    assert d["grid_allowed_w"] == pytest.approx(allowed_w)
    one, two_ = d["connectors"]["1"], d["connectors"]["2"]
    assert one["limit_a"] * 400.0 == pytest.approx(allowed_w / 2)
    assert two_["limit_a"] * 800.0 == pytest.approx(allowed_w / 2)
    assert one["reason"] == "site fuse: L1 at 13 A of 63 A (margin 3 A); shared by 2 connectors"
    idle = d["connectors"]["3"]
    assert idle["limit_a"] == 0.0 and idle["max_current_a"] == pytest.approx(allowed_w / 3 / 400.0)


def test_cabinet_faults_are_listed_once_without_a_connector_name():
    # past slow_input_stale_ms from the start: an ambient sensor never heard is awaited until then
    d, _ = settle(lambda t: cabinet(t, two(t), ambient_configured=True), until=5.2)
    assert d["faults"] == ["ambient_missing"]
    assert d["fault_details"]["ambient_missing"] == "cabinet ambient temperature missing (max age 5000 ms)"
    assert d["connectors"]["1"]["faults"] == d["connectors"]["2"]["faults"] == ["ambient_missing"]
    assert d["limit_a"] == 0.0 and not d["contactor"]


def test_a_cabinet_input_a_connector_sends_itself_is_that_connectors_and_named_so():
    def make(t: float) -> dict[str, Any]:
        conns = two(t, c2={"inputs": {"module_temp_c": 96.0}})
        return cabinet(t, conns, inputs={"module_temp_c": 50.0})

    d, _ = settle(make)
    assert d["fault_details"]["module_over_temperature"] == "connector 2: power module 96.0 °C above trip 95.0 °C"
    assert d["connectors"]["1"]["contactor"] and not d["connectors"]["2"]["contactor"]
    assert connectors.is_cabinet_fault("module_temp_stale", {}, {})
    assert not connectors.is_cabinet_fault("module_temp_stale", {}, {"module_temp_c": [1.0, 0.0, "ok"]})
    assert connectors.is_cabinet_fault("can_bus_off", {"can_bus_off": True}, {})
    assert not connectors.is_cabinet_fault("pin_dc_plus_stale", {}, {})


def test_the_same_fault_on_two_connectors_is_one_entry_with_both_details():
    hot = {"inputs": {"pin_dc_plus_c": 96.0, "pin_dc_minus_c": 90.0}}
    d, _ = evaluate_cabinet(cabinet(0.0, two(0.0, c1=hot, c2=hot)), FAST, None)
    assert d["faults"].count("pin_over_temperature") == 1
    assert d["fault_details"]["pin_over_temperature"] == (
        "connector 1: cable DC+ pin 96.0 °C above trip 95.0 °C; connector 2: cable DC+ pin 96.0 °C above trip 95.0 °C"
    )
    assert d["latched"] == ["pin_over_temperature"]


def test_a_clear_clears_every_connector_whose_condition_is_gone_and_says_where_it_stays():
    def make(t: float, p1: float, p2: float, clear: list[str] | None = None) -> dict[str, Any]:
        conns = two(
            t,
            c1={"inputs": {"pin_dc_plus_c": p1, "pin_dc_minus_c": p1}},
            c2={"inputs": {"pin_dc_plus_c": p2, "pin_dc_minus_c": p2}},
        )
        return cabinet(t, conns, clear=clear or [])

    ds, _ = run([make(0.0, 96.0, 96.0), make(2.0, 60.0, 96.0, ["pin_over_temperature"])])
    d = ds[-1]
    assert d["cleared"] == ["pin_over_temperature"]
    assert d["clear_refused"] == [
        ["pin_over_temperature", "connector 2: condition still present: cable DC+ pin 96.0 °C above trip 95.0 °C"]
    ]
    assert d["connectors"]["1"]["latched"] == [] and d["connectors"]["2"]["latched"] == ["pin_over_temperature"]
    assert d["connectors"]["1"]["mode"] == "Export" and d["connectors"]["2"]["mode"] == "Fault"


def test_the_pump_runs_while_any_connector_wants_current_and_the_fan_follows_the_busiest():
    def make(t: float) -> dict[str, Any]:
        return cabinet(t, {"1": connector(t, None), "2": connector(t, request(t))})

    d, _ = settle(make)
    assert d["pump"] is True and d["fan"] == 1.0
    d, _ = settle(lambda t: cabinet(t, {"1": connector(t, None), "2": connector(t, None)}))
    assert d["pump"] is False and d["fan"] == 0.0


def test_an_uncooled_connector_runs_without_a_cable_monitor_and_does_not_start_the_pump():
    def make(t: float) -> dict[str, Any]:
        conn = connector(t, request(t), uncooled=True)
        conn["inputs"] = fresh(t, output_v=400.0, output_a=0.0)
        return cabinet(t, {"1": conn, "2": connector(t, None)})

    d, _ = settle(make)
    c = d["connectors"]["1"]
    assert (c["limit_a"], c["contactor"], c["faults"], d["pump"]) == (100.0, True, [], False)
    d, _ = settle(lambda t: cabinet(t, {"1": {**connector(t, request(t)), "inputs": fresh(t, output_v=400.0)}}))
    assert d["connectors"]["1"]["limit_a"] == 0.0 and "pin_dc_plus_missing" in d["faults"]


def test_the_cabinet_reason_is_the_one_of_the_most_limited_connector_in_session():
    d, _ = settle(
        lambda t: cabinet(
            t,
            {
                "1": connector(t, request(t, current_a=80.0)),
                "2": connector(t, request(t, current_a=30.0)),
                "3": connector(t, None),
            },
        )
    )
    assert (d["limit_a"], d["rule"], d["reason"]) == (110.0, "request", "connector 2: vehicle request 30 A")


def test_an_operator_limit_for_the_cabinet_is_shared_between_the_connectors_in_session():
    d, _ = settle(lambda t: cabinet(t, two(t), external_limit_a=100.0))
    assert [d["connectors"][n]["limit_a"] for n in ("1", "2")] == [50.0, 50.0]
    assert d["connectors"]["1"]["rule"] == "external"


# -- properties ----------------------------------------------------------------------------------------------

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = ("1", "2")


@st.composite
def connector_steps(draw: Any, t: float, last_req_t: dict[str, float], name: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(["charge"] * 6 + ["precheck", "off", "none", "silent", "power"]))
    if kind in ("charge", "precheck", "power"):
        last_req_t[name] = t
    req_t = last_req_t.get(name)
    req: dict[str, Any] | None = None
    if kind == "none" or req_t is None:
        req = None
    else:
        req = request(
            req_t,
            mode="Off" if kind == "off" else "Export",
            phase=draw(st.sampled_from(["CableCheck", "PreCharge"])) if kind == "precheck" else "Charging",
            voltage_v=draw(st.sampled_from([100.0, 200.0, 400.0, 800.0, 1200.0])),
            current_a=draw(st.sampled_from([0.0, 10.0, 100.0, 300.0, 1000.0])),
            power_w=draw(st.sampled_from([5000.0, 50000.0])) if kind == "power" else None,
        )
    pin = draw(st.sampled_from([40.0] * 8 + [85.0, 96.0]))
    inputs = {**CABLE, "pin_dc_plus_c": pin, "pin_dc_minus_c": pin}
    inputs["output_v"] = draw(st.sampled_from([0.0, 350.0, 400.0, 790.0]))
    inputs["output_a"] = draw(st.sampled_from([0.0, 0.5, 5.0, 50.0]))
    conn = connector(
        t,
        req,
        inputs=inputs,
        hw_max_a=draw(st.sampled_from([100.0, 200.0, 500.0])),
        hw_max_v=draw(st.sampled_from([500.0, 1000.0])),
        hw_max_w=draw(st.sampled_from([30000.0, 150000.0, None])),
        modules_available=draw(st.sampled_from([0, 1, 2, 4])),
        module_max_a=draw(st.sampled_from([25.0, 50.0])),
        stop=draw(st.integers(0, 19)) == 0,
    )
    if draw(st.integers(0, 9)) == 0:
        del conn["inputs"]["pin_dc_minus_c"]
    return conn


@st.composite
def cabinet_runs(draw: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cfg = LimitsConfig(
        raise_hold_ms=draw(st.sampled_from([0, 2000])), ramp_up_a_per_s=draw(st.sampled_from([25.0, 1000.0]))
    ).model_dump()
    cfg["session"] = {**SESSION_DEFAULTS, "request_stale_ms": draw(st.sampled_from([500, 3000]))}
    t = 0.0
    last_req_t: dict[str, float] = {}
    snaps = []
    grid = draw(st.booleans())
    for _ in range(draw(st.integers(1, 40))):
        t += draw(st.sampled_from([0.05, 0.1, 0.1, 0.3, 1.0, 2.5]))
        conns = {n: draw(connector_steps(t, last_req_t, n)) for n in NAMES}
        phases = {f"grid_l{i}_a": draw(st.sampled_from([5.0, 30.0, 58.0, 70.0])) for i in (1, 2, 3)}
        meter = phases if draw(st.integers(0, 9)) else {}
        snaps.append(cabinet(t, conns, inputs=meter, grid_configured=grid, clear=["pin_over_temperature"]))
    return cfg, snaps


def _live(conn: dict[str, Any], t: float, cfg: dict[str, Any]) -> bool:
    req = conn["request"]
    if req is None or req["mode"] != "Export":
        return False
    return (t - max(req["t_mode"], req["t_setpoint"])) * 1000.0 <= cfg["session"]["request_stale_ms"] + 1e-3


@SETTINGS
@given(cabinet_runs())
def test_no_connector_exceeds_its_hardware_modules_request_or_power(run_):
    cfg, snaps = run_
    ds, _ = run(snaps, cfg)
    for s, d in zip(snaps, ds, strict=True):
        for n in NAMES:
            conn, c = s["connectors"][n], d["connectors"][n]
            req = conn["request"]
            cap = min(conn["hw_max_a"], conn["modules_available"] * conn["module_max_a"])
            if _live(conn, s["t"], cfg):
                cap = min(cap, max(0.0, req["current_a"]))
                if req["phase"] in ("CableCheck", "PreCharge"):
                    cap = min(cap, cfg["session"]["precheck_current_a"])
                if req["power_w"] is not None:
                    assert c["limit_a"] * max(req["voltage_v"], c["voltage_v"]) <= req["power_w"] + 1e-6
            else:
                cap = 0.0
            assert 0.0 <= c["limit_a"] <= cap + 1e-9, (n, c, conn)
            if conn["hw_max_w"] is not None:
                assert c["limit_a"] * c["voltage_v"] <= conn["hw_max_w"] + 1e-6
            assert c["voltage_v"] <= min(conn["hw_max_v"], cfg["max_output_voltage_v"], cfg["over_voltage"]["max_v"])
            assert c["max_current_a"] <= min(conn["hw_max_a"], conn["modules_available"] * conn["module_max_a"]) + 1e-9
            assert not c["enable"] or (c["limit_a"] > 0 and c["contactor"])


@SETTINGS
@given(cabinet_runs())
def test_the_connectors_together_never_exceed_the_site_fuse_allowance(run_):
    cfg, snaps = run_
    ds, _ = run(snaps, cfg)
    for s, d in zip(snaps, ds, strict=True):
        if not s["grid_configured"]:
            assert d["grid_allowed_w"] is None
            continue
        total_w = 0.0
        for n in NAMES:
            out_v = s["connectors"][n]["inputs"]["output_v"][0]
            total_w += d["connectors"][n]["limit_a"] * max(d["connectors"][n]["voltage_v"], out_v)
        assert total_w <= d["grid_allowed_w"] + 1e-6, (total_w, d["grid_allowed_w"])
        rule = cfg["grid"]
        if s["inputs"]:  # a fresh meter: the allowance is the headroom plus at most our own recent output
            worst = max(v[0] for v in s["inputs"].values())
            headroom_w = (rule["fuse_a"] - rule["margin_a"] - worst) * 3 * rule["phase_voltage_v"] * rule["efficiency"]
            own_w = max(
                [
                    sum(
                        x["connectors"][n]["inputs"]["output_v"][0] * x["connectors"][n]["inputs"]["output_a"][0]
                        for n in NAMES
                    )
                    for x in snaps
                    if s["t"] - x["t"] <= rule["settle_ms"] / 1000.0 and x["t"] <= s["t"]
                ]
            )
            assert d["grid_allowed_w"] <= max(0.0, headroom_w + own_w) + 1e-6


@SETTINGS
@given(cabinet_runs(), st.sampled_from(NAMES))
def test_a_stale_request_gives_that_connector_zero_amps_in_the_same_evaluation(run_, name):
    cfg, snaps = run_
    last = copy.deepcopy(snaps[-1])
    conn = last["connectors"][name]
    stale_s = cfg["session"]["request_stale_ms"] / 1000.0
    conn["request"] = request(last["t"] - stale_s - 0.002)
    d = run([*snaps[:-1], last], cfg)[0][-1]
    c = d["connectors"][name]
    assert (c["limit_a"], c["target_a"], c["enable"]) == (0.0, 0.0, False)
    assert "request_stale" in c["faults"] and "request_stale" not in d["latched"]


@SETTINGS
@given(cabinet_runs())
def test_no_contactor_is_closed_without_a_session_except_during_the_bounded_off_current_wait(run_):
    cfg, snaps = run_
    ds, _ = run(snaps, cfg)
    timeout_s = cfg["session"]["off_timeout_ms"] / 1000.0
    ended: dict[str, float | None] = dict.fromkeys(NAMES)
    closed_before = dict.fromkeys(NAMES, False)
    for s, d in zip(snaps, ds, strict=True):
        for n in NAMES:
            c = d["connectors"][n]
            if _live(s["connectors"][n], s["t"], cfg):
                ended[n] = None
            elif closed_before[n] and ended[n] is None:
                ended[n] = s["t"]
            if c["contactor"] and not _live(s["connectors"][n], s["t"], cfg):
                assert closed_before[n] and ended[n] is not None and s["t"] - ended[n] < timeout_s, (n, c)
                assert not c["enable"] and c["limit_a"] == 0.0 and c["ending"]
            if c["enable"]:
                assert _live(s["connectors"][n], s["t"], cfg)
            if not c["contactor"]:
                ended[n] = None
            closed_before[n] = c["contactor"]
        assert d["contactor"] == any(d["connectors"][n]["contactor"] for n in NAMES)
        assert d["limit_a"] == pytest.approx(sum(d["connectors"][n]["limit_a"] for n in NAMES))


@SETTINGS
@given(cabinet_runs())
def test_each_fault_is_listed_once_and_every_connector_fault_is_in_the_cabinet_list(run_):
    cfg, snaps = run_
    for d in run(snaps, cfg)[0]:
        assert d["faults"] == sorted(set(d["faults"])) == sorted(d["fault_details"]) == sorted(d["fault_docs"])
        for n in NAMES:
            assert set(d["connectors"][n]["faults"]) <= set(d["faults"])
            assert set(d["connectors"][n]["latched"]) <= set(d["latched"])
            if d["connectors"][n]["latched"]:
                assert d["connectors"][n]["mode"] == "Fault" and not d["connectors"][n]["contactor"]
        assert not any(math.isnan(d["connectors"][n]["limit_a"]) for n in NAMES)
