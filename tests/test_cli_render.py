"""Rendering edge cases that the simulated cabinet does not produce on demand: uplink states (whose keys
come from the telemetry side and may grow), stale and invalid readings, long fault texts."""

from __future__ import annotations

from typing import Any

import pytest

from edge.render import WIDTH, status_text, uplink_lines, uplink_state


@pytest.mark.parametrize(
    ("tel", "expected"),
    [
        ({"backlog": 3}, "state not reported"),
        ({"uplink": {"enabled": False}}, "disabled (telemetry.mqtt.enabled = false)"),
        ({"uplink": {"connected": True, "broker": "127.0.0.1:1883"}}, "connected to 127.0.0.1:1883"),
        (
            {
                "uplink": {
                    "connected": False,
                    "broker": "b:8883",
                    "last_error": "connection refused",
                    "next_reconnect_s": 75.0,
                }
            },
            "DISCONNECTED to b:8883: connection refused, retry in 1 m 15 s",
        ),
        ({"uplink": {"state": "draining backlog", "connected": True}}, "draining backlog"),
    ],
)
def test_uplink_state_reads_what_the_telemetry_side_reports(tel, expected):
    assert uplink_state(tel) == expected


def test_store_trouble_is_shouted_in_the_uplink_line():
    text = "\n".join(
        uplink_lines(
            {
                "telemetry": {
                    "backlog": 9,
                    "last_seq": 99,
                    "write_errors": 2,
                    "degraded": True,
                    "evicted": 5,
                    "uplink": {"connected": True},
                }
            }
        )
    )
    assert "STORE WRITE ERRORS 2" in text and "STORE DEGRADED" in text and "5 records evicted" in text
    assert all(len(ln) <= WIDTH for ln in text.splitlines())


def _status(**over: Any) -> dict[str, Any]:
    st: dict[str, Any] = {
        "cabinet_id": "cab-017",
        "site_id": "site-001",
        "version": "0.1.0",
        "uptime_s": 90061,
        "limit_a": 0.0,
        "target_a": 0.0,
        "rule": "sensor",
        "reason": "cable DC+ pin stale",
        "enable": False,
        "faults": {"pin_dc_plus_stale": "cable DC+ pin stale (no valid value within 300 ms) " * 3},
        "latched": [],
        "outputs": {"contactor": 0, "pump": 1, "fan": 0},
        "modules": {
            "1": {
                "lost": False,
                "voltage_v": 0.0,
                "current_a": 0.0,
                "temperature_c": None,
                "alarms": ["over_temperature", "fan_fail"],
                "on": False,
            }
        },
        "meters": {"grid": {"ok": False, "errors": 12, "last_error": "no response"}},
        "readings": {
            "cable.pin_dc_plus_c": {"value": 41.2, "unit": "°C", "quality": "stale", "age_s": 3.0},
            "cable.pin_dc_minus_c": {"value": None, "unit": "°C", "quality": "invalid", "age_s": 0.1},
        },
        "telemetry": {"backlog": 1, "last_seq": 1},
    }
    st.update(over)
    return st


def test_can_bus_trouble_is_named_on_the_can_line():
    out = status_text(
        _status(
            can={"can0": {"health": "bus-off", "reason": "no ACK", "dropped": 3, "rx": 10}},
            can_frames={"unknown": 7, "decode_errors": 0},
        )
    )
    assert "can      can0 bus-off (no ACK) dropped 3;  unknown frames 7" in out
    assert "can      can0 active" in status_text(_status(can={"can0": {"health": "active", "rx": 1}}))


def test_stale_and_invalid_values_never_look_good_and_lines_fit():
    out = status_text(_status())
    assert all(len(ln) <= WIDTH for ln in out.splitlines()), out
    assert "up 1 d 1 h" in out
    assert "pin DC+ 41.2 STALE °C" in out and "pin DC- -- INVALID °C" in out
    assert "state    OFF (fault)" in out
    assert "NO ANSWER (12 errors: no response)" in out
    absent = status_text(
        _status(
            meters={"grid": {"ok": False, "absent": True, "errors": 40, "last_error": "timeout", "backoff_s": 30.0}}
        )
    )
    assert "NO ANSWER (40 errors: timeout; retry in 30 s)" in absent
    assert "over_temperature,fan_fail" in out
    assert "limit    0 A  <- cable DC+ pin stale" in out


def test_a_connector_without_measurement_or_request_shows_dashes_never_nan():
    conn = {
        "name": "2",
        "phase": "Other",
        "mode": "Export",
        "request_v": 0.0,
        "request_a": 0.0,
        "request_age_s": None,
        "output_v": float("nan"),
        "output_a": None,
        "limit_a": 0.0,
        "reason": None,
    }
    lines = status_text(_status(connectors=[conn])).splitlines()
    row = next(ln for ln in lines if ln.startswith("2 "))
    assert row.split() == ["2", "Export", "--", "--", "--", "--", "0.0", "starting"], row
    assert "nan" not in "\n".join(lines).lower()
    assert lines[1] == "state    OFF (fault) output 0 V  0.0 A  0.0 kW"
