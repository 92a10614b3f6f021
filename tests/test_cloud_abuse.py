"""Cloud commands under abuse (issue 17 items 7 and 8): replayed, retained, future-dated, expired,
duplicated and malformed commands are rejected with a precise reason, keep their id, and never act twice.

Unit tests run the command channel on a real controller (tests.test_ops.Cabinet); the last test runs the
daemon against a real mosquitto.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from edge.telemetry import commands
from edge.telemetry.channel import Received
from tests.conftest import DaemonProcess, wait_for
from tests.mqtt_broker import Broker
from tests.mqtt_sim import BASE, mqtt_sim_config
from tests.test_commands import Backend
from tests.test_ops import Cabinet

NOW_MS = 1_800_000_000_000
HOUR_MS = 3_600_000


@pytest.fixture
def cab(tmp_path: Path) -> Cabinet:
    c = Cabinet(tmp_path)
    c.rig.charge()
    return c


def _raw(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def _cmd(cab: Cabinet, name: str, body: Any, guard: commands.Guard | None = None, **received: Any) -> commands.Result:
    return commands.handle(name, _raw(body), cab.ops, NOW_MS, guard=guard, received=Received(**received))


def _limit(cab: Cabinet) -> float | None:
    ext = cab.ctl.external_limit
    return ext.amps if ext else None


# -- item 7: time, retained, duplicates, expiry ------------------------------------------------------
@pytest.mark.parametrize(
    ("t_ms", "ahead"),
    [(NOW_MS + HOUR_MS, "3600 s"), (NOW_MS + 365 * 24 * HOUR_MS, "31536000 s"), (10**15, "998200000000 s")],
)
def test_a_command_from_the_future_beyond_the_clock_skew_is_rejected(cab, t_ms, ahead):
    res = _cmd(cab, "set-current-limit", {"id": "f-1", "amps": 20, "duration_s": 60, "t_ms": t_ms})
    assert (res.id, res.result) == ("f-1", "rejected")
    assert res.reason == (f"t_ms is {ahead} in the future (max clock skew 300 s, telemetry.mqtt.command_max_skew_s)"), (
        res.reason
    )
    assert _limit(cab) is None


def test_a_command_within_the_clock_skew_is_accepted_and_the_skew_is_configurable(cab):
    body = {"id": "f-2", "amps": 20, "duration_s": 60, "t_ms": NOW_MS + 200_000}
    assert _cmd(cab, "set-current-limit", body).result == "accepted"
    strict = commands.Guard(max_skew_s=10.0)
    res = _cmd(cab, "set-current-limit", {**body, "id": "f-3"}, strict)
    assert res.result == "rejected" and res.reason.startswith("t_ms is 200 s in the future (max clock skew 10 s")


def test_a_retained_command_is_ignored_answered_and_reported_at_a_bounded_rate(cab):
    guard = commands.Guard()
    for i in range(5):
        res = _cmd(cab, "set-current-limit", {"id": f"r-{i}", "amps": 20, "duration_s": 60}, guard, retained=True)
        assert (res.id, res.result, res.reason) == (f"r-{i}", "rejected", "retained command ignored")
    res = _cmd(cab, "stop", b"not even json", guard, retained=True)
    assert (res.id, res.result) == (None, "rejected")
    assert _limit(cab) is None and cab.ctl.stopped_by is None, "a retained command never acts"
    assert guard.retained_ignored == 6
    reports = [d for k, _n, d in cab.audit if k == "command" and "retained" in d["result"]]
    assert len(reports) == 1, "one event per report interval, not one per message"
    assert reports[0]["ok"] is False and reports[0]["id"] == "r-0"


def test_an_id_already_executed_is_answered_again_and_not_executed_again(cab):
    guard = commands.Guard()
    first = _cmd(cab, "set-current-limit", {"id": "d-1", "amps": 20, "duration_s": 60}, guard)
    assert first.result == "accepted"
    assert _cmd(cab, "clear-current-limit", {"id": "c-1"}, guard).result == "accepted"
    n_eval, n_audit = cab.ctl.evaluations, len(cab.audit)
    again = _cmd(cab, "set-current-limit", {"id": "d-1", "amps": 20, "duration_s": 60}, guard)
    assert again == first
    assert _limit(cab) is None, "the replayed limit is not applied again"
    assert (cab.ctl.evaluations, len(cab.audit)) == (n_eval, n_audit)
    assert guard.duplicates == 1
    # a rejection is answered the same way
    over = _cmd(cab, "set-current-limit", {"id": "d-2", "amps": 250, "duration_s": 60}, guard)
    assert _cmd(cab, "set-current-limit", {"id": "d-2", "amps": 250, "duration_s": 60}, guard) == over


def test_the_recent_ids_are_bounded_oldest_forgotten_first(cab):
    guard = commands.Guard(recent_ids=3)
    for i in range(4):
        _cmd(cab, "request-state", {"id": f"q-{i}"}, guard)
    assert list(guard.recent) == ["q-1", "q-2", "q-3"]


def test_an_mqtt5_message_whose_expiry_ran_out_before_it_was_handled_is_rejected(cab):
    body = {"id": "e-1", "amps": 20, "duration_s": 60}
    res = _cmd(cab, "set-current-limit", body, expiry_s=1, received_ms=NOW_MS - 2500)
    assert (res.id, res.result) == ("e-1", "rejected")
    assert res.reason == "message expired 1.5 s before it was handled (MQTT 5 message expiry 1 s)"
    assert _limit(cab) is None
    assert _cmd(cab, "set-current-limit", body, expiry_s=60, received_ms=NOW_MS - 2500).result == "accepted"


# -- item 8: bounded, strict parsing; the id kept ----------------------------------------------------
BIG = "9" * 400
DEEP = "[" * 800 + "]" * 800


@pytest.mark.parametrize(
    ("name", "raw", "cmd_id", "reason"),
    [
        ("stop", b'{"id":"x\\n"}', None, "id missing or invalid"),
        ("stop", b'{"id":"x\n"}', None, "payload is not JSON"),
        ("stop", f'{{"id":"n-1","t_ms":{BIG}}}', "n-1", "number with 400 digits (max 16)"),
        ("set-current-limit", f'{{"id":"n-2","amps":{BIG},"duration_s":5}}', "n-2", "number with 400 digits"),
        ("set-current-limit", f'{{"id":"n-3","amps":{BIG}.5,"duration_s":5}}', "n-3", "number with 402 characters"),
        ("set-current-limit", '{"id":"n-4","amps":1e999,"duration_s":5}', "n-4", "number 1e999 is out of range"),
        ("stop", f'{{"id":"n-5","reason":{DEEP}}}', "n-5", "nested deeper than 4 levels"),
        ("stop", f'{{"reason":{DEEP},"id":"n-6"}}', "n-6", "nested deeper than 4 levels"),
        ("stop", DEEP, None, "nested deeper than 4 levels"),
        ("set-current-limit", '{"id":"k-1","amps":500,"amps":10,"duration_s":5}', "k-1", "duplicate key 'amps'"),
        ("stop", '{"id":"k-2","id":"k-3"}', None, "duplicate key 'id'"),
        ("stop", '{"id":"k-4","reason":{"a":1,"a":2}}', "k-4", "duplicate key 'a'"),
    ],
)
def test_malformed_payloads_are_rejected_precisely_and_keep_the_id(cab, name, raw, cmd_id, reason):
    res = _cmd(cab, name, raw.encode() if isinstance(raw, str) else raw)
    assert (res.id, res.result) == (cmd_id, "rejected"), res
    assert reason in res.reason, res.reason
    assert _limit(cab) is None and cab.ctl.stopped_by is None
    audit = cab.last_audit()
    assert audit["ok"] is False and audit["id"] == (cmd_id or "-")


def test_no_payload_makes_the_command_channel_raise():
    nasty = [
        b"{" * 4000,
        b'{"id":"z","a":' + b"[" * 2000,
        b'{"id":"z","t_ms":' + b"1" * 4000 + b"}",
        b'{"id":"z","t_ms":-' + b"1" * 30 + b"}",
        b'{"id":"z","t_ms":1e308}',
        b'{"id":"z","t_ms":NaN}',
        b'{"id":"z","t_ms":"soon"}',
        b'{"id":"\\ud800"}',
        b"\x00\x01",
        b'"just a string"',
        b"[]",
    ]
    for raw in nasty:
        for name in ("stop", "set-current-limit", "request-state"):
            cmd = None
            try:
                cmd = commands.envelope(name, raw, NOW_MS)
            except commands.Rejected as rej:
                assert rej.reason
            assert cmd is None or cmd.id == "z"


# -- over a real broker ------------------------------------------------------------------------------
def _state_now(be: Backend, query_id: str) -> dict[str, Any]:
    """The state the cabinet publishes in answer to request-state (the limits it really holds now)."""
    n_state, n_res = len(be.on("state")), len(be.on("cmd-result"))
    be.send("request-state", {"id": query_id})
    assert be.result(query_id, n_res)["result"] == "accepted"
    return wait_for(lambda: be.on("state")[n_state:], 3, what="state after request-state")[-1].body


def test_over_mqtt_retained_future_and_repeated_commands_never_act(tmp_path: Path, mqtt_broker: Broker):
    cfg = tmp_path / "config.toml"
    cfg.write_text(mqtt_sim_config(tmp_path, mqtt_broker.port))
    d = DaemonProcess(cfg, str(tmp_path / "edge.sock"))
    be = Backend(mqtt_broker.port, client_id="backend-abuse")
    try:
        # a retained limit waits on the broker before the cabinet connects: it must never apply
        be.client.publish(
            f"{BASE}/cmd/set-current-limit", json.dumps({"id": "ret-1", "amps": 20, "duration_s": 600}), 1, True
        )
        d.wait_ready()
        wait_for(lambda: d.status()["telemetry"]["uplink"]["connected"], 10, what="uplink connected")
        res = be.result("ret-1")
        assert (res["result"], res["reason"]) == ("rejected", "retained command ignored")
        assert _state_now(be, "q-1")["external_limit"] is None

        future = {"id": "fut-1", "amps": 20, "duration_s": 600, "t_ms": int(time.time() * 1000) + HOUR_MS}
        be.send("set-current-limit", future)
        assert "in the future" in be.result("fut-1")["reason"]

        n = len(be.on("cmd-result"))
        be.send("set-current-limit", {"id": "dup-1", "amps": 25, "duration_s": 600})
        assert be.result("dup-1", n)["result"] == "accepted"
        assert _state_now(be, "q-2")["external_limit"]["amps"] == 25
        n = len(be.on("cmd-result"))
        be.send("clear-current-limit", {"id": "clr-1"})
        assert be.result("clr-1", n)["result"] == "accepted"
        n = len(be.on("cmd-result"))
        be.send("set-current-limit", {"id": "dup-1", "amps": 25, "duration_s": 600})
        again = be.result("dup-1", n)
        assert again["result"] == "accepted" and again["seq"] is None
        assert _state_now(be, "q-3")["external_limit"] is None, "the repeated id was not done again"

        # the retained command again after a broker restart: ignored again
        n = len(be.on("cmd-result"))
        mqtt_broker.restart()
        wait_for(lambda: [m for m in be.on("cmd-result")[n:] if m.body["id"] == "ret-1"], 20, what="retained again")
        uplink = d.status()["telemetry"]["uplink"]
        assert uplink["commands_retained_ignored"] >= 2 and uplink["commands_duplicate"] == 1
        assert _state_now(be, "q-4")["external_limit"] is None
        assert d.proc.poll() is None
    finally:
        d.stop()
        be.close()


# -- floods: a rate per command ----------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_rate_limit_admits_a_burst_then_its_rate_per_command_and_reports_at_a_bounded_rate():
    clock = _Clock()
    rate = commands.RateLimit(per_s=2.0, burst=5, report_every_s=60.0, clock=clock)
    assert [rate.admit("stop") for _ in range(7)] == [True] * 5 + [False] * 2
    assert rate.admit("set-current-limit"), "each command has a bucket of its own"
    assert rate.bucket("open-contactor") == rate.bucket("x") == commands.OTHER_TOPICS
    clock.t += 1.0  # refilled by 2
    assert [rate.admit("stop") for _ in range(3)] == [True, True, False]
    assert rate.limited == 3
    assert rate.report_due() == {"stop": 3}, "the first report at once"
    assert not rate.admit("stop")
    assert rate.report_due() is None, "then at most one per report interval"
    clock.t += 60.0
    assert rate.report_due() == {"stop": 1}
    assert rate.report_due() is None, "nothing limited since"
    clock.t += 3600.0
    assert sum(rate.admit("stop") for _ in range(10)) == 5, "a quiet hour saves up no more than the burst"
    assert rate.reason("stop") == (
        "rate limited: at most 5 stop commands at once and 2 per s; not done: send it again later"
    )


@pytest.mark.parametrize(
    ("raw", "cmd_id"),
    [
        (b'{"id":"a-1","amps":5}', "a-1"),
        (b'{"amps":5,"id":"a-2"}', "a-2"),
        (b'{"amps":5,"amps":6,"id":"a-3"}', "a-3"),
        (b'{"id":"a-4","x":' + b"[" * 50 + b"]" * 50 + b"}", "a-4"),
        (b'{"id":"a\\n"}', None),
        (b'{"x":"' + b"y" * 5000 + b'","id":"a-5"}', None),  # too big to parse and the id not first
        (b"\xff\xfe{", None),
    ],
)
def test_a_rate_limited_command_is_answered_with_its_id_read_cheaply(raw, cmd_id):
    assert commands.answer_id(raw) == cmd_id


def _answers(be: Backend, prefix: str, after: int) -> list[dict[str, Any]]:
    return [m.body for m in be.on("cmd-result")[after:] if str(m.body["id"]).startswith(prefix)]


def test_over_mqtt_a_flood_is_rate_limited_per_command_answered_and_counted_not_audited_one_by_one(
    tmp_path: Path, mqtt_broker: Broker
):
    cfg = tmp_path / "config.toml"
    cfg.write_text(mqtt_sim_config(tmp_path, mqtt_broker.port))
    d = DaemonProcess(cfg, str(tmp_path / "edge.sock"))
    be = Backend(mqtt_broker.port, client_id="backend-flood")
    flood = commands.RATE_BURST + 60
    try:
        d.wait_ready()
        wait_for(lambda: d.status()["telemetry"]["uplink"]["connected"], 10, what="uplink connected")
        be.wait_listening()
        n = len(be.on("cmd-result"))
        for i in range(flood):  # above the hardware limit: rejected by the operation when it is done
            be.send("set-current-limit", {"id": f"fl-{i}", "amps": 500, "duration_s": 60})
        answers = wait_for(lambda: len(a := _answers(be, "fl-", n)) >= flood and a, 10, what="every flood answer")
        limited = [a for a in answers if a["reason"].startswith("rate limited")]
        done = [a for a in answers if "above the hardware limit" in a["reason"]]
        assert len(limited) + len(done) == flood, answers
        # the burst, plus what the rate refilled while the flood was being sent (5 per s: well under 60)
        assert len(done) >= commands.RATE_BURST and len(limited) >= 20, (len(done), len(limited))
        assert {(a["result"], a["seq"]) for a in limited} == {("rejected", None)}
        assert limited[0]["reason"] == (
            f"rate limited: at most {commands.RATE_BURST} set-current-limit commands at once and "
            f"{commands.RATE_PER_S:g} per s; not done: send it again later"
        )
        # another command has its own allowance: a stop during the flood acts, and so does the resume
        n = len(be.on("cmd-result"))
        be.send("stop", {"id": "st-1"})
        assert be.result("st-1", n)["result"] == "accepted"
        n = len(be.on("cmd-result"))
        be.send("resume", {"id": "rs-1"})
        assert be.result("rs-1", n)["result"] == "accepted"
        # a limited id was not done, so it is not remembered: sent again once the rate allows, it is done
        again = limited[-1]["id"]

        def retried() -> dict[str, Any] | None:
            n = len(be.on("cmd-result"))
            be.send("set-current-limit", {"id": again, "amps": 500, "duration_s": 60})
            got = wait_for(lambda: _answers(be, again, n), 3, what=f"answer to {again}")[-1]
            return None if got["reason"].startswith("rate limited") else got

        assert "above the hardware limit" in wait_for(retried, 10, interval=0.3, what="the id done")["reason"]
        uplink = d.status()["telemetry"]["uplink"]
        assert uplink["commands_rate_limited"] >= len(limited)
        assert uplink["commands_dropped"] == 0
        # recorded: each command done (one event each), the limited ones only counted, in one event
        events = wait_for(
            lambda: [e for e in be.records("events") if e["kind"] == "command" and e.get("op") == "rate_limited"],
            5,
            what="the rate_limited event",
        )
        assert len(events) == 1, events
        assert events[0]["ok"] is False and 1 <= events[0]["args"]["set-current-limit"] <= len(limited)
        audited = {e.get("id") for e in be.records("events") if e["kind"] == "command"}
        assert {a["id"] for a in done} <= audited
        assert not {a["id"] for a in limited} - {again} & audited, "a limited command is not audited one by one"
        assert _state_now(be, "q-fl")["external_limit"] is None
        assert not be.errors, "the rate-limited answers and the rate_limited event follow the schema"
        assert d.proc.poll() is None
    finally:
        d.stop()
        be.close()
