"""Hypothesis property of the safety inputs in the cabinet core (edge/limits/safety_inputs.py): no input
sequence energises a connector while the e-stop is ACTIVE or its latch holds, whatever the requests, door,
water, tilt, output current and clear requests (local clears included) do."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.limits.connectors import evaluate_cabinet
from edge.limits.safety_inputs import LOCAL_CLEAR_ONLY
from edge.telemetry.commands import Rejected, parse
from tests.test_limits_connectors import FAST, cabinet, connector, request

FUNCTIONS = ("estop", "door", "water", "tilt")
CLEARABLE = ("emergency_stop", "water_ingress", "tilt", "door_open")

step = st.fixed_dictionaries(
    {
        "dt": st.sampled_from([0.001, 0.01, 0.1, 0.5]),
        "digital": st.fixed_dictionaries({f: st.sampled_from([0, 1]) for f in FUNCTIONS}),
        "clear": st.lists(st.sampled_from(CLEARABLE), max_size=2),
        "live": st.tuples(st.booleans(), st.booleans()),
        "amps": st.sampled_from([0.0, 50.0, 200.0]),
        "output_a": st.sampled_from([0.0, 0.5, 150.0]),
    }
)
config = {**FAST, "safety_inputs": {"door_action": "derate", "door_derate_a": 40.0}}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=25), st.sampled_from(["stop", "derate"]))
def test_no_input_sequence_energises_a_connector_while_the_estop_is_active_or_latched(
    steps: list[dict[str, Any]], door_action: str
) -> None:
    cfg = {**config, "safety_inputs": {"door_action": door_action, "door_derate_a": 40.0}}
    state = None
    t = 0.0
    pressed_since_clear = False
    for s in steps:
        t += s["dt"]
        conns = {
            name: connector(t, request(t, current_a=s["amps"]) if live else None, inputs={"output_a": s["output_a"]})
            for name, live in zip(("1", "2"), s["live"], strict=True)
        }
        d, state = evaluate_cabinet(cabinet(t, conns, digital=s["digital"], clear=s["clear"]), cfg, state)
        pressed = s["digital"]["estop"] == 1
        pressed_since_clear = pressed or (pressed_since_clear and "emergency_stop" not in d["cleared"])
        assert d["estop"] == pressed_since_clear
        if pressed:
            assert "emergency_stop" not in d["cleared"]  # never cleared while pressed
        if d["estop"]:
            assert "emergency_stop" in d["latched"] and "emergency_stop" in d["faults"]
            for name, c in d["connectors"].items():
                energised = c["enable"] or c["contactor"] or c["target_a"] > 0 or c["limit_a"] > 0
                assert not energised, f"connector {name} energised during an e-stop: {c}"
            assert not d["enable"] and not d["contactor"]


def test_the_cloud_clear_command_is_refused_for_local_clear_only_faults_even_with_remote_clears_allowed() -> None:
    assert set(LOCAL_CLEAR_ONLY) == {"emergency_stop", "water_ingress", "tilt"}
    for fault in LOCAL_CLEAR_ONLY:
        raw = json.dumps({"id": "c1", "fault": fault}).encode()
        with pytest.raises(Rejected, match="only on site"):
            parse("clear-fault", raw, max_current_a=200.0, remote_clear_allowed=True, now_ms=0)
    ok = parse("clear-fault", b'{"id": "c2", "fault": "coolant_flow_low"}', 200.0, True, 0)
    assert ok.args == {"fault": "coolant_flow_low"}
