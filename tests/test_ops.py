"""The operations layer on its own (no socket, no broker): a real Controller on a simulated clock.

What must hold: one validation with bounds from the config, one bounded audit event per call, a change
evaluated at once, and the authority rules (issue 17): every stop and limit keeps its source, the lowest
limit wins, a source lifts only what it set, a local stop or limit is lifted only locally, and a refusal
names the holder.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edge import ops as ops_module
from edge.operator import Source
from edge.ops import Operations, OpError, summarise
from edge.telemetry import commands
from tests.test_control import FAST, Rig

ALICE = Source.local("alice", 1000)
BOB = Source.local("bob", 1001)
DR1 = Source.cloud("dr-1")
DR2 = Source.cloud("dr-2")
NOW_MS = 1_800_000_000_000


class Cabinet:
    """A controller rig plus the operations on it, recording audit events."""

    def __init__(self, tmp_path: Path, extra: str = FAST) -> None:
        self.rig = Rig(tmp_path, extra)
        self.ctl = self.rig.ctl
        self.audit: list[tuple[str, str, dict[str, Any]]] = []
        self.ops = Operations(
            self.rig.config, self.ctl, lambda k, n, d: self.audit.append((k, n, d)), self.status, self.rig.clock
        )

    def status(self) -> dict[str, Any]:
        d = self.ctl.decision or {}
        out = self.rig.outputs
        return {
            "faults": d.get("fault_details", {}),
            "latched": d.get("latched", []),
            "enable": d.get("enable", False),
            "outputs": {"contactor": out.contactor.value(), "pump": out.pump.value(), "fan": out.fan.value()},
            "readings": {s: {"value": r.value, "quality": r.quality} for s, r in self.rig.state.readings.items()},
        }

    def last_audit(self) -> dict[str, Any]:
        kind, name, data = self.audit[-1]
        assert kind == "command" and name == data["op"]
        json.dumps(data, allow_nan=False)  # always storable
        return data

    def refused(self, fn: Any, *args: Any) -> OpError:
        with pytest.raises(OpError) as exc:
            fn(*args)
        return exc.value


@pytest.fixture
def cab(tmp_path: Path) -> Cabinet:
    c = Cabinet(tmp_path)
    c.rig.charge()
    return c


# -- validation: one model per operation, bounds from the config --------------------------------------
@pytest.mark.parametrize(
    ("op", "source", "raw", "message"),
    [
        ("limit_set", ALICE, {"amps": 250}, "250 A is above the hardware limit 200 A (limits.max_output_current_a)"),
        ("limit_set", ALICE, {"amps": -1}, "amps = -1 A outside 0..200 A"),
        ("limit_set", ALICE, {"amps": "100"}, "amps must be a number in A, got '100'"),
        ("limit_set", ALICE, {"amps": True}, "amps must be a number in A, got True"),
        ("limit_set", ALICE, {"amps": float("nan")}, "amps must be a number in A, got nan"),
        ("limit_set", ALICE, {}, "amps is required"),
        ("limit_set", ALICE, {"amps": 10, "duration_s": 0.5}, "duration_s = 0.5 s outside 1..604800 s"),
        ("limit_set", ALICE, {"amps": 10, "force": True}, "unexpected field(s) force; allowed: amps, duration_s"),
        ("limit_set", DR1, {"amps": 10}, "duration_s must be a number in s, 1..86400 s"),
        ("limit_set", DR1, {"amps": 10, "duration_s": 86401}, "duration_s = 86401 s outside 1..86400 s"),
        ("stop", ALICE, {"reason": "x" * 201}, "reason: String should have at most 200 characters"),
        ("resume", ALICE, {"now": True}, "unexpected field(s) now; allowed: none"),
        ("limit_clear", DR1, {"amps": 1}, "unexpected field(s) amps; allowed: none"),
        ("clear", ALICE, {"fault": "No Such Fault!"}, "fault: String should match pattern"),
        ("clear", ALICE, {"fault": 7}, "fault: Input should be a valid string"),
    ],
)
def test_arguments_are_checked_once_with_bounds_from_the_config(cab, op, source, raw, message):
    evaluations = cab.ctl.evaluations
    err = cab.refused(cab.ops.run, op, source, raw)
    assert err.code == "invalid_argument" and message in err.message, err.message
    assert cab.ctl.evaluations == evaluations and cab.ctl.external_limit is None and cab.ctl.stopped_by is None
    audit = cab.last_audit()
    assert (audit["op"], audit["ok"], audit["code"], audit["result"]) == (op, False, "invalid_argument", err.message)


def test_a_limit_exactly_at_the_hardware_limit_and_long_local_limits_are_accepted(cab):
    assert cab.ops.limit_set(ALICE, {"amps": 200, "duration_s": 86401}).answer["hardware_limit_a"] == 200.0
    assert cab.ops.limit_set(DR1, {"amps": 200.0, "duration_s": 86400}).result == "limit 200 A for 86400 s"


def test_remote_clear_and_a_remote_selftest_are_forbidden(cab):
    err = cab.refused(cab.ops.clear_fault, DR1, {"fault": "coolant_flow_low"})
    assert err.code == "forbidden" and "limits.remote_clear_allowed = false" in err.message
    err = cab.refused(asyncio.run, cab.ops.selftest(DR1, {}))
    assert err.code == "forbidden" and "on site only" in err.message
    assert cab.last_audit()["code"] == "forbidden"


# -- audit: one event per call, who and what, bounded -------------------------------------------------
def test_each_call_is_one_audit_event_with_who_what_and_result(cab):
    cab.ops.limit_set(ALICE, {"amps": 20})
    assert cab.last_audit() == {
        "op": "limit_set",
        "source": "local",
        "user": "alice",
        "by": "cli:alice",
        "uid": 1000,
        "args": {"amps": 20.0, "duration_s": None},
        "ok": True,
        "result": "limit 20 A until cleared",
    }
    cab.ops.stop(DR1, {"reason": "grid emergency"})
    audit = cab.last_audit()
    assert (audit["source"], audit["user"], audit["id"], audit["by"]) == ("cloud", "dr-1", "dr-1", "cloud:dr-1")
    assert audit["args"] == {"reason": "grid emergency"} and "uid" not in audit
    assert len(cab.audit) == 2


def test_audited_arguments_are_summarised_bounded_and_always_json_safe():
    raw = {f"k{i}" * 20: "x" * 10_000 for i in range(100)}
    raw["k0" * 20] = float("nan")
    s = summarise({"nan": float("nan"), "big": 10**400, "deep": [[[1]]], "s": "y" * 70, **raw})
    assert len(s) == 9 and s["..."] == "96 more"
    assert s["nan"] == "nan" and s["big"] == "<int of 1329 bits>" and s["deep"] == "<list>"
    assert s["s"] == "y" * 64 + "..."
    assert len(json.dumps(s, allow_nan=False)) < 1200
    assert summarise(None) == {} and summarise([1, 2]) == {"_": "<list>"}


def test_a_refused_request_with_a_huge_payload_is_audited_compactly(cab):
    cab.refused(cab.ops.run, "stop", ALICE, {"why": float("nan"), "pad": "z" * 60_000})
    assert len(json.dumps(cab.last_audit(), allow_nan=False)) < 1000


# -- evaluated at once --------------------------------------------------------------------------------
def test_every_change_is_evaluated_at_once_from_either_source(cab):
    for source in (ALICE, DR1):
        n = cab.ctl.evaluations
        cab.ops.limit_set(source, {"amps": 20, "duration_s": 60})
        assert cab.ctl.evaluations == n + 1 and cab.ctl.decision["limit_a"] <= 20.0
        cab.ops.limit_clear(source)
        cab.ops.stop(source)
        assert cab.ctl.evaluations == n + 3 and not cab.ctl.decision["enable"]
        assert cab.ctl.decision["rule"] == "stop" and cab.rig.outputs.contactor.value() == 0
        cab.ops.resume(source)
        assert cab.ctl.evaluations == n + 4 and cab.ctl.decision["rule"] != "stop"
    err = cab.refused(cab.ops.clear_fault, ALICE, {"fault": "coolant_flow_low"})
    assert err.code == "refused" and err.message == "coolant_flow_low is not latched; latched now: none"


# -- authority ----------------------------------------------------------------------------------------
def test_a_cloud_stop_and_resume_do_not_lift_a_local_stop(cab):
    cab.ops.stop(ALICE)
    cab.ops.stop(DR1, {"reason": "grid emergency"})
    done = cab.ops.resume(DR2)  # lifts the cloud's own stop only
    assert done.answer["resumed"] is True
    assert done.result == (
        "resumed (was stopped by cloud:dr-1); still stopped locally by cli:alice: resume locally (edge resume)"
    )
    assert cab.ctl.stopped_by == "cli:alice" and cab.ctl.decision["rule"] == "stop"
    assert not cab.ctl.decision["enable"] and cab.rig.outputs.contactor.value() == 0
    err = cab.refused(cab.ops.resume, DR2)  # nothing of the cloud's left: refused, naming the holder
    assert err.code == "refused" and err.message == "stopped locally by cli:alice: resume locally (edge resume)"
    assert cab.last_audit()["ok"] is False and cab.last_audit()["code"] == "refused"
    assert cab.ctl.stopped_by == "cli:alice"
    assert cab.ops.resume(BOB).result == "resumed (was stopped by cli:alice)"  # any local admin may
    assert cab.ctl.stopped_by is None and cab.ctl.decision["rule"] != "stop"


def test_a_local_resume_does_not_lift_a_cloud_stop(cab):
    cab.ops.stop(DR1)
    err = cab.refused(cab.ops.resume, ALICE)
    assert err.message == "stopped from the cloud by cloud:dr-1: resume from the backend (MQTT resume)"
    assert cab.ctl.stopped_by == "cloud:dr-1" and cab.ctl.decision["rule"] == "stop"


def test_the_lowest_limit_wins_whoever_set_it_last(cab):
    cab.ops.limit_set(ALICE, {"amps": 20})
    done = cab.ops.limit_set(DR1, {"amps": 200, "duration_s": 600})
    assert done.result == (
        "limit 200 A for 600 s; lower and in force: limited to 20 A locally by cli:alice: "
        "clear it locally (edge limit clear)"
    )
    ext = cab.ctl.external_limit
    assert (ext.amps, ext.source, ext.expires_at) == (20.0, "cli:alice", None)
    assert cab.rig.step()["target_a"] == 20.0
    cab.ops.limit_set(DR2, {"amps": 15, "duration_s": 600})  # a new cloud limit replaces the cloud's old one
    assert (cab.ctl.external_limit.amps, cab.ctl.external_limit.source) == (15.0, "cloud:dr-2")
    assert cab.ctl.operator.limits["cloud"].amps == 15.0 and cab.ctl.operator.limits["local"].amps == 20.0
    from types import SimpleNamespace

    from edge.api.commands import full_status

    view = SimpleNamespace(controller=cab.ctl, config=cab.rig.config, status=dict)
    shown = full_status(view)["operator"]  # type: ignore[arg-type]
    assert shown["stops"] == {} and {k: (v["amps"], v["source"]) for k, v in shown["limits"].items()} == {
        "local": (20.0, "cli:alice"),
        "cloud": (15.0, "cloud:dr-2"),
    }


def test_a_cloud_limit_clear_never_removes_a_local_limit(cab):
    cab.ops.limit_set(ALICE, {"amps": 20})
    err = cab.refused(cab.ops.limit_clear, DR1)
    assert err.code == "refused"
    assert err.message == "limited to 20 A locally by cli:alice: clear it locally (edge limit clear)"
    assert cab.ctl.external_limit.amps == 20.0
    cab.ops.limit_set(DR1, {"amps": 50, "duration_s": 600})
    done = cab.ops.limit_clear(DR2)  # the cloud's own limit goes, the local one stays
    assert done.answer == {"cleared": True, "result": "cleared 50 A from cloud:dr-1"}
    assert done.result.endswith("still limited to 20 A locally by cli:alice: clear it locally (edge limit clear)")
    assert cab.ctl.external_limit.source == "cli:alice" and cab.rig.step()["target_a"] == 20.0
    assert cab.ops.limit_clear(BOB).answer == {"cleared": True, "result": "cleared 20 A from cli:alice"}
    assert cab.ctl.external_limit is None
    assert cab.ops.limit_clear(ALICE).answer == {"cleared": False, "result": "no limit was set"}


def test_a_local_limit_clear_leaves_the_cloud_limit_and_says_so(cab):
    cab.ops.limit_set(DR1, {"amps": 50, "duration_s": 600})
    err = cab.refused(cab.ops.limit_clear, ALICE)
    assert err.message.startswith("limited to 50 A from the cloud by cloud:dr-1: clear it from the backend")
    cab.ops.limit_set(ALICE, {"amps": 80})
    done = cab.ops.limit_clear(ALICE)
    assert "still limited to 50 A from the cloud by cloud:dr-1" in done.result
    assert cab.ctl.external_limit.amps == 50.0


def test_each_limit_expires_on_its_own_and_the_next_lowest_takes_over(cab):
    cab.ops.limit_set(DR1, {"amps": 30, "duration_s": 10})
    cab.ops.limit_set(ALICE, {"amps": 100, "duration_s": 60})
    assert cab.ctl.external_limit.amps == 30.0
    for _ in range(11):
        d = cab.rig.step(1.0)
    assert (cab.ctl.external_limit.amps, cab.ctl.external_limit.source) == (100.0, "cli:alice")
    assert d["target_a"] == 100.0
    assert [e for e in cab.rig.events if e[0] == "limit_expired"] == [
        ("limit_expired", "external_limit", {"amps": 30.0, "source": "cloud:dr-1"})
    ]


# -- self-test ----------------------------------------------------------------------------------------
def test_selftest_is_refused_while_charging_and_runs_pump_and_fan_when_stopped(cab, monkeypatch):
    err = cab.refused(asyncio.run, cab.ops.selftest(ALICE, {"duration_s": 2}))
    assert err.code == "refused" and "run `edge stop` first" in err.message
    cab.ops.stop(ALICE)
    monkeypatch.setattr(ops_module, "SELFTEST_SAMPLE_S", 0.001)

    def status_and_time() -> dict[str, Any]:  # every sample is 0.2 s later on the simulated clock
        cab.rig.clock.advance(0.2)
        cab.rig.feed()
        return cab.status()

    cab.ops.status = status_and_time
    done = asyncio.run(cab.ops.selftest(ALICE, {"duration_s": 2}))
    assert done.answer["verdict"] == "pass" and done.answer["flow_settled_lpm"] == 5.0
    assert done.answer["outputs_seen"] == {"pump": 1, "fan": 1}
    d = cab.ctl.decision  # released afterwards: pump and fan back to what the core decides
    assert cab.ctl.test_outputs == {} and cab.rig.outputs.fan.value() == int(d["fan"] > 0)
    assert cab.rig.outputs.pump.value() == int(bool(d["pump"]))
    audit = cab.last_audit()
    assert (audit["op"], audit["ok"], audit["args"]) == (
        "selftest",
        True,
        {"duration_s": 2.0, "pump": True, "fan": True},
    )
    assert audit["result"].startswith("pass: flow 5.00 l/min")


# -- the MQTT command channel onto the same operations ------------------------------------------------
def _cmd(cab: Cabinet, name: str, body: Any) -> commands.Result:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return commands.handle(name, raw, cab.ops, NOW_MS)


def test_mqtt_commands_map_onto_the_operations_and_act_at_once(cab):
    n = cab.ctl.evaluations
    res = _cmd(cab, "set-current-limit", {"id": "dr-9", "amps": 25, "duration_s": 30, "t_ms": NOW_MS})
    assert (res.id, res.command, res.result, res.reason) == (
        "dr-9",
        "set-current-limit",
        "accepted",
        "limit 25 A for 30 s",
    )
    assert cab.ctl.evaluations == n + 1 and cab.ctl.decision["limit_a"] <= 25.0
    audit = cab.last_audit()
    assert (audit["op"], audit["id"], audit["ok"]) == ("limit_set", "dr-9", True)
    assert _cmd(cab, "stop", {"id": "s-1"}).result == "accepted" and not cab.ctl.decision["enable"]
    assert _cmd(cab, "resume", {"id": "r-1"}).reason == "resumed (was stopped by cloud:s-1)"
    assert _cmd(cab, "clear-current-limit", {"id": "c-1"}).reason == "cleared 25 A from cloud:dr-9"
    assert _cmd(cab, "request-state", {"id": "q-1"}).reason == "state published"
    assert cab.last_audit()["op"] == "request-state"


def test_mqtt_refusals_name_the_local_holder_and_bad_envelopes_are_audited(cab):
    cab.ops.stop(ALICE)
    res = _cmd(cab, "resume", {"id": "r-2"})
    assert (res.result, res.reason) == ("rejected", "stopped locally by cli:alice: resume locally (edge resume)")
    res = _cmd(cab, "set-current-limit", {"id": "a", "amps": 250, "duration_s": 5})
    assert res.result == "rejected" and "above the hardware limit 200 A" in res.reason
    for body, reason in (
        (b"\xff not json", "payload is not JSON"),
        (b'{"id":"x\\n"}', "id missing or invalid"),
        (b"[" * 5000, "exceeds 4096"),
        ({"id": "old", "t_ms": NOW_MS - 3_600_000}, "3600 s old"),
    ):
        res = _cmd(cab, "stop", body)
        assert res.result == "rejected" and reason in res.reason, res
        audit = cab.last_audit()
        assert audit["ok"] is False and audit["code"] == "invalid_argument" and reason in audit["result"]
    assert cab.ctl.stopped_by == "cli:alice"


def test_parse_validates_with_the_operations_rules_without_doing_anything(cab):
    cmd = commands.parse("set-current-limit", b'{"id":"p-1","amps":40,"duration_s":60}', 200.0, False, NOW_MS)
    assert cmd.args == {"amps": 40.0, "duration_s": 60.0}
    assert cab.ctl.external_limit is None and cab.audit == []
    with pytest.raises(commands.Rejected, match="above the hardware limit"):
        commands.parse("set-current-limit", b'{"id":"p-2","amps":400,"duration_s":60}', 200.0, False, NOW_MS)
