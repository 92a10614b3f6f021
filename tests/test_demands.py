"""The demand store: requests as timestamped readings, bad values refused, a silent controller noticed."""

from __future__ import annotations

import math
from typing import Any

from edge.charging.demands import Demands


def _store(**kw: Any) -> tuple[Demands, list[str], list[tuple[str, str, dict[str, Any]]]]:
    changed: list[str] = []
    events: list[tuple[str, str, dict[str, Any]]] = []
    d = Demands(
        {"1": "everest", "2": "everest", "3": "sim"},
        heartbeat_timeout_s={"everest": 3.0},
        on_change=changed.append,
        on_event=lambda k, n, data: events.append((k, n, data)),
        **kw,
    )
    return d, changed, events


def test_mode_and_target_are_kept_with_their_receive_times_and_notify_at_once() -> None:
    d, changed, _ = _store()
    d.heartbeat("everest", 0.5)
    d.set_mode("1", "Export", "PreCharge", 1.0)
    d.set_target("1", 752.0, 2.0, 1.2)
    assert changed == ["1", "1"]
    req = d.core_request("1")
    assert req == {
        "mode": "Export",
        "phase": "PreCharge",
        "voltage_v": 752.0,
        "current_a": 2.0,
        "power_w": None,
        "t_mode": 1.0,
        "t_setpoint": 1.2,
    }
    assert d.core_request("2") is None  # nothing asked of connector 2


def test_bad_requests_are_refused_and_counted_never_stored() -> None:
    d, changed, _ = _store()
    d.heartbeat("everest", 0.0)
    d.set_mode("1", "Export", "Charging", 1.0)
    d.set_target("1", 400.0, 100.0, 1.0)
    for args in ((math.nan, 10.0), (400.0, math.inf), (-1.0, 10.0), (400.0, -5.0)):
        d.set_target("1", *args, now=2.0)
    d.set_target("9", 400.0, 10.0, 2.0)  # unknown connector
    d.set_mode("1", "Boost", "Charging", 2.0)
    d.set_mode("1", "Export", "Warp", 2.0)
    assert d.rejected == 7
    assert d.get("1").current_a == 100.0 and d.get("1").t_setpoint == 1.0
    assert changed == ["1", "1"]


def test_silent_controller_removes_the_request_of_each_of_its_connectors_and_says_so() -> None:
    d, changed, events = _store()
    d.heartbeat("everest", 0.0)
    d.set_mode("1", "Export", "Charging", 0.1)
    d.set_mode("3", "Export", "Charging", 0.1)
    d.check(2.9)
    assert d.core_request("1") is not None and events == []
    d.check(3.1)
    assert d.core_request("1") is None
    assert d.core_request("3") is not None  # the sim source has no heartbeat to lose
    assert events == [("controller_lost", "everest", {"silent_ms": 3100, "connectors": ["1", "2"]})]
    d.check(4.0)
    assert len(events) == 1  # said once
    changed.clear()
    d.heartbeat("everest", 4.5)
    assert events[-1] == ("controller_back", "everest", {"connectors": ["1", "2"]})
    assert d.core_request("1") is not None and changed == ["1", "2"]


def test_a_controller_never_heard_is_silent() -> None:
    d, _, _ = _store()
    d.set_mode("1", "Export", "CableCheck", 1.0)
    assert d.silent("everest") and d.core_request("1") is None


def test_hold_is_a_fixed_bench_session_without_notification() -> None:
    d, changed, _ = _store()
    d.hold("3", 400.0, 200.0, 5.0)
    req = d.core_request("3")
    assert req is not None and req["mode"] == "Export" and req["phase"] == "Charging"
    assert req["t_setpoint"] == 5.0 and changed == []


def test_outside_pre_charge_and_charging_the_heartbeat_keeps_the_request_fresh() -> None:
    d, _, _ = _store()
    d.heartbeat("everest", 0.0)
    d.set_target("1", 920.0, 2.0, 0.5)
    d.set_mode("1", "Export", "CableCheck", 0.6)
    d.heartbeat("everest", 20.0)  # an isolation self-test later: the set-point came once
    req = d.core_request("1")
    assert req is not None and req["t_setpoint"] == 20.0
    d.set_mode("1", "Export", "Charging", 21.0)
    d.heartbeat("everest", 22.0)
    req = d.core_request("1")
    assert req is not None and req["t_setpoint"] == 0.5  # CurrentDemand must refresh it itself


def test_the_controllers_over_voltage_limits_become_the_connectors_negotiated_maximum() -> None:
    d, changed, _ = _store()
    assert d.voltage_limits("1") == {}
    d.set_voltage_limits("1", 420.0, 550.0)
    assert changed == ["1"]  # evaluated at once
    assert d.voltage_limits("1") == {"ev_max_v": 420.0, "ev_emergency_v": 550.0}
    assert d.voltage_limits("2") == {}
    d.set_voltage_limits("1", None, None)  # stop: lifted
    assert d.voltage_limits("1") == {}
    d.set_voltage_limits("9", 420.0, 550.0)
    assert d.rejected == 1
