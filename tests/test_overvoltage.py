"""edge/limits/overvoltage.py: IEC 61851-23 Table 103 limits and the 400 ms / 50 ms software timers (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edge.config.isolation import OverVoltageMonitor
from edge.limits import overvoltage


@pytest.mark.parametrize(
    "max_v, emergency_v",
    [(400.0, 550.0), (500.0, 550.0), (500.1, 825.0), (800.0, 935.0), (1000.0, 1100.0), (1200.0, 1320.0)],
)
def test_the_emergency_limit_follows_table_103(max_v: float, emergency_v: float) -> None:
    assert overvoltage.emergency_limit_v(max_v, overvoltage.DEFAULTS) == pytest.approx(emergency_v)


def test_the_schema_defaults_are_the_cores() -> None:
    assert OverVoltageMonitor().model_dump() == overvoltage.DEFAULTS


def run(volts: list[tuple[float, float]], ev_max_v: float | None, cfg: dict | None = None) -> list[tuple[float, list]]:
    state = overvoltage.initial_state()
    out = []
    for t, v in volts:
        r = overvoltage.evaluate(v, ev_max_v, 1000.0, {"over_voltage_monitor": cfg or {}}, state, t)
        out.append((t, [x[0] for x in r["trips"]]))
    return out


def test_error_after_400_ms_above_the_negotiated_maximum_not_before() -> None:
    steps = [(i * 0.01, 420.0) for i in range(45)]
    trips = run(steps, 410.0)
    first = next(t for t, names in trips if "over_voltage_error" in names)
    assert first == pytest.approx(0.40)
    # a dip below the limit restarts the timer
    steps = [(i * 0.01, 420.0 if i != 20 else 400.0) for i in range(65)]
    first = next(t for t, names in run(steps, 410.0) if names)
    assert first == pytest.approx(0.61)


def test_emergency_after_50_ms_above_the_table_limit_and_no_error_rule_without_a_negotiated_maximum() -> None:
    steps = [(i * 0.01, 1101.0) for i in range(8)]
    trips = run(steps, None)  # emergency from the connector's 1000 V: 1100 V
    assert [t for t, names in trips if names] == pytest.approx([0.05, 0.06, 0.07])
    assert all(names in ([], ["over_voltage_emergency"]) for _, names in trips)
    r = overvoltage.evaluate(1050.0, None, 1000.0, {}, overvoltage.initial_state(), 0.0)
    assert r["view"] == {"error_v": None, "emergency_v": 1100.0} and r["blockers"] == []


def test_the_table_must_ascend() -> None:
    with pytest.raises(ValidationError, match="not ascending"):
        OverVoltageMonitor(emergency_table=[[750.0, 825.0], [500.0, 550.0]])


def test_the_controllers_emergency_limit_replaces_table_103_only_with_a_negotiated_maximum() -> None:
    def view(ev_max_v: float | None, ev_emergency_v: float | None) -> dict:
        st = overvoltage.initial_state()
        return overvoltage.evaluate(400.0, ev_max_v, 1000.0, {}, st, 0.0, ev_emergency_v)["view"]

    assert view(450.0, 500.0) == {"error_v": 450.0, "emergency_v": 500.0}  # EVerest's set_limits
    assert view(450.0, None) == {"error_v": 450.0, "emergency_v": 550.0}  # Table 103
    assert view(None, 500.0) == {"error_v": None, "emergency_v": 1100.0}  # no session limits: the connector's
    assert view(450.0, 440.0) == {"error_v": 450.0, "emergency_v": 550.0}  # below the error limit: not used
