"""Property tests of the safety core (hypothesis): whatever the inputs, the core keeps its promises.

- the limit never exceeds the smallest configured hardware limit (cable rating, modules available);
- a stale, invalid or missing safety input gives 0 A, contactor open, in that same evaluation;
- a latched fault stays until an explicit clear, and a clear is granted only with the condition gone;
- an increase of the limit never exceeds the configured ramp rate, and waits for the hold time;
- a fault raised outside the core is listed while present, never latched, and 0 A when it stops the output.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.config.limits import LimitsConfig
from edge.limits import inputs
from edge.limits.core import SAFETY_INPUTS, evaluate

LATCHABLE = [
    "pin_over_temperature",
    "coolant_over_temperature",
    "module_over_temperature",
    "coolant_flow_low",
    "coolant_leak",
    "over_current",
    "over_voltage",
    "pins_disagree",
    "pin_dc_plus_implausible",
]

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw: Any) -> dict[str, Any]:
    return LimitsConfig(
        max_output_current_a=draw(st.sampled_from([50.0, 125.0, 200.0, 500.0])),
        ramp_up_a_per_s=draw(st.sampled_from([20.0, 25.0, 100.0, 1000.0])),
        raise_hold_ms=draw(st.sampled_from([0, 500, 2000])),
        sensor_stale_ms=draw(st.sampled_from([100, 300, 1000])),
    ).model_dump()


def _entry(draw: Any, value: float, t: float, stale_s: float) -> list[Any] | None:
    kind = draw(st.sampled_from(["ok"] * 30 + ["old", "invalid", "missing"]))
    if kind == "missing":
        return None
    if kind == "old":
        return [value, t - stale_s - draw(st.floats(0.001, 5.0)), "ok"]
    return [value, t, "invalid" if kind == "invalid" else "ok"]


def _walk(draw: Any, value: float, lo: float, hi: float, step: float) -> float:
    """Mostly small moves (a real sensor), sometimes a jump anywhere (a fault)."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.floats(lo, hi))
    return min(hi, max(lo, value + draw(st.floats(-step, step))))


@st.composite
def sequences(draw: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cfg = draw(configs())
    stale_s = cfg["sensor_stale_ms"] / 1000.0
    t = 0.0
    snaps = []
    v = {
        "pin_dc_plus_c": 40.0,
        "pin_dc_minus_c": 40.0,
        "coolant_out_c": 30.0,
        "coolant_flow_lpm": 5.0,
        "module_temp_c": 40.0,
        "output_a": 100.0,
        "output_v": 400.0,
        "coolant_leak": 0.0,
        "grid_l1_a": 30.0,
        "grid_l2_a": 30.0,
        "grid_l3_a": 30.0,
    }
    bounds = {
        "pin_dc_plus_c": (-20.0, 130.0, 3.0),
        "pin_dc_minus_c": (-20.0, 130.0, 3.0),
        "coolant_out_c": (-20.0, 90.0, 2.0),
        "coolant_flow_lpm": (0.0, 8.0, 0.5),
        "module_temp_c": (-20.0, 120.0, 2.0),
        "output_a": (0.0, 600.0, 40.0),
        "output_v": (0.0, 1200.0, 50.0),
        "coolant_leak": (0.0, 0.0, 0.0),
        "grid_l1_a": (0.0, 120.0, 5.0),
        "grid_l2_a": (0.0, 120.0, 5.0),
        "grid_l3_a": (0.0, 120.0, 5.0),
    }
    for _ in range(draw(st.integers(1, 40))):
        t += draw(st.sampled_from([0.001, 0.01, 0.05, 0.1, 0.1, 0.1, 0.3, 1.0, 3.0]))
        inputs = {}
        for name, (lo, hi, step) in bounds.items():
            v[name] = (
                _walk(draw, v[name], lo, hi, step) if name != "coolant_leak" else float(draw(st.integers(0, 30)) == 0)
            )
            e = _entry(draw, v[name], t, stale_s)
            if e is not None:
                inputs[name] = e
        snaps.append(
            {
                "t": t,
                "inputs": inputs,
                "request_a": draw(st.sampled_from([0.0, 50.0, 200.0, 1000.0, 1000.0, 1000.0])),
                "external_limit_a": draw(st.sampled_from([None, None, None, 0.0, 80.0, 5000.0])),
                "stop": draw(st.integers(0, 9)) == 0,
                "voltage_v": 400.0,
                "modules_available": draw(st.sampled_from([0, 1, 3, 4, 4, 4])),
                "modules_configured": 4,
                "module_max_a": 50.0,
                "modules_lost": [],
                "modules_alarm": [],
                "grid_configured": draw(st.booleans()),
                "clear": draw(st.lists(st.sampled_from(LATCHABLE), max_size=3)),
            }
        )
    return cfg, snaps


def _run(cfg: dict[str, Any], snaps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    state = None
    out = []
    for s in snaps:
        d, state = evaluate(s, cfg, state)
        out.append(d)
    return out


@SETTINGS
@given(sequences())
def test_limit_never_exceeds_the_smallest_hardware_limit(seq):
    cfg, snaps = seq
    for s, d in zip(snaps, _run(cfg, snaps), strict=True):
        hw = min(cfg["max_output_current_a"], s["modules_available"] * s["module_max_a"])
        assert 0.0 <= d["limit_a"] <= hw + 1e-9, (d["limit_a"], hw, d["reason"])
        assert d["enable"] is False or d["limit_a"] > 0


@SETTINGS
@given(sequences(), st.sampled_from(SAFETY_INPUTS), st.sampled_from(["old", "invalid", "missing"]))
def test_stale_or_invalid_safety_input_gives_zero_amps_in_the_same_evaluation(seq, name, kind):
    cfg, snaps = seq
    last = dict(snaps[-1], inputs=dict(snaps[-1]["inputs"]))
    t, stale_s = last["t"], cfg["sensor_stale_ms"] / 1000.0
    if kind == "missing":
        last["inputs"].pop(name, None)
    elif kind == "old":
        last["inputs"][name] = [40.0, t - stale_s - 0.001, "ok"]
    else:
        last["inputs"][name] = [40.0, t, "invalid"]
    d = _run(cfg, [*snaps[:-1], last])[-1]
    assert d["limit_a"] == 0.0 and not d["enable"] and not d["contactor"]
    heard = any(name in s["inputs"] for s in snaps[:-1])
    if kind == "missing" and not heard and t - snaps[0]["t"] <= stale_s:
        # never heard since the start, and the start younger than its max age: awaited, not yet a fault
        assert not any(f.startswith(inputs.sensor(name) + "_") for f in d["faults"]), d["faults"]
        return
    assert any(f.startswith(inputs.sensor(name) + "_") for f in d["faults"]), d["faults"]


@SETTINGS
@given(sequences())
def test_a_latched_fault_stays_until_a_clear_with_the_condition_gone(seq):
    cfg, snaps = seq
    decisions = _run(cfg, snaps)
    before: set[str] = set()
    for s, d in zip(snaps, decisions, strict=True):
        now = set(d["latched"])
        for name in before - now:
            assert name in s["clear"] and name in d["cleared"], f"{name} vanished without a clear"
            assert name not in d["faults"], f"{name} cleared while its condition is present"
        for name in d["cleared"]:
            assert name in before and name in s["clear"]
        if now:
            assert d["limit_a"] == 0.0 and not d["contactor"] and d["rule"] == "trip"
        before = now


@SETTINGS
@given(sequences())
def test_an_increase_never_exceeds_the_ramp_rate_or_comes_before_the_hold(seq):
    cfg, snaps = seq
    rate, hold_s = cfg["ramp_up_a_per_s"], cfg["raise_hold_ms"] / 1000.0
    prev_t, prev_a = None, 0.0
    t_down = snaps[0]["t"]
    for s, d in zip(snaps, _run(cfg, snaps), strict=True):
        if prev_t is not None:
            rise = d["limit_a"] - prev_a
            assert rise <= rate * (s["t"] - prev_t) + 1e-6, (rise, s["t"] - prev_t)
            if rise > 1e-9:
                assert s["t"] - t_down >= hold_s - 1e-6, "rose inside the hold time"
        if prev_t is not None and d["limit_a"] < prev_a - cfg["hold_reset_a"]:
            t_down = s["t"]
        prev_t, prev_a = s["t"], d["limit_a"]


EXTERNAL = [["can_bus_off", "CAN can0 bus off", True], ["telemetry_store_error", "store cannot write", False]]


@SETTINGS
@given(sequences(), st.lists(st.lists(st.sampled_from(range(len(EXTERNAL))), max_size=2), min_size=1, max_size=40))
def test_external_faults_are_listed_while_present_never_latched_and_a_stopping_one_gives_zero_amps(seq, present):
    cfg, snaps = seq
    snaps = [
        dict(s, external_faults=[EXTERNAL[i] for i in present[n % len(present)]], clear=[*s["clear"], "can_bus_off"])
        for n, s in enumerate(snaps)
    ]
    for s, d in zip(snaps, _run(cfg, snaps), strict=True):
        names = {f[0] for f in s["external_faults"]}
        assert names <= set(d["faults"]) and not names & set(d["latched"])
        assert set(d["faults"]) & {f[0] for f in EXTERNAL} == names  # gone from the input, gone from the list
        assert ["can_bus_off", "not latched"] in d["clear_refused"]
        if "can_bus_off" in names:
            assert d["limit_a"] == 0.0 and not d["contactor"] and not d["enable"]
