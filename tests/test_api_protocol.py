"""The control protocol's framing, error codes and permission policy, without a daemon."""

from __future__ import annotations

import json

import pytest

from edge.api.peer import ADMIN, READ, Peer, Policy, describe
from edge.api.protocol import CODES, VERSION, ProtocolError, encode, error, exit_code, ok, parse_request


def test_request_defaults_version_and_args_and_echoes_id():
    req = parse_request(b'{"cmd": "status", "id": "abc"}\n')
    assert (req.cmd, req.args, req.id, req.v) == ("status", {}, "abc", VERSION)


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"not json", "bad_request"),
        (b"[1, 2]", "bad_request"),
        (b'{"args": {}}', "bad_request"),
        (b'{"cmd": "status", "args": [1]}', "bad_request"),
        (b'{"v": 2, "cmd": "status"}', "unsupported_version"),
    ],
)
def test_malformed_requests_get_a_code(line, code):
    with pytest.raises(ProtocolError) as err:
        parse_request(line)
    assert err.value.code == code


def test_answers_are_one_line_of_strict_json_with_nan_as_null():
    line = encode(ok(7, {"value": float("nan"), "nested": [float("inf"), 1.5]}))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"v": 1, "id": 7, "ok": True, "data": {"value": None, "nested": [None, 1.5]}}
    assert json.loads(encode(error(None, "refused", "busy"))) == {
        "v": 1,
        "id": None,
        "ok": False,
        "code": "refused",
        "error": "busy",
    }


def test_every_error_code_maps_to_a_documented_exit_code():
    assert {exit_code(c) for c in CODES} <= {1, 2, 4}
    assert exit_code("forbidden") == 4 and exit_code("invalid_argument") == 2 and exit_code("internal") == 1
    assert exit_code("no-such-code") == 1


def _peer(uid: int, groups: set[str]) -> Peer:
    return Peer(pid=1, uid=uid, gid=uid, user=f"u{uid}", groups=frozenset(groups))


def test_policy_read_group_reads_admin_group_changes_root_does_all():
    pol = Policy(group="edge", admin_group="edge-admin", own_uid=999)
    reader, admin, stranger = _peer(1000, {"edge"}), _peer(1001, {"edge-admin"}), _peer(1002, {"users"})
    assert pol.allows(reader, READ) and not pol.allows(reader, ADMIN)
    assert pol.allows(admin, READ) and pol.allows(admin, ADMIN)
    assert not pol.allows(stranger, READ) and not pol.allows(stranger, ADMIN)
    assert pol.allows(_peer(0, set()), ADMIN) and pol.allows(_peer(999, set()), ADMIN)
    assert "sudo usermod -aG edge-admin u1000" in pol.why_not(reader, ADMIN)


def test_peer_groups_come_from_the_user_database():
    root = describe(pid=1, uid=0, gid=0)
    assert root.user == "root" and "root" in root.groups
    ghost = describe(pid=1, uid=54321, gid=54321)
    assert ghost.user == "uid54321" and ghost.groups == frozenset({"54321"})


# -- abuse guards (issue 17): refusal audit limit, connection caps, log limit, raw JSON splicing -------
def test_refusals_beyond_the_allowance_are_counted_into_one_suppressed_event_when_the_window_ends():
    from types import SimpleNamespace

    from edge.operator import Source
    from edge.ops import AUDIT_REFUSED_PER_WINDOW, AUDIT_WINDOW_S, Operations
    from hal.clock import SimClock

    clock = SimClock()
    events: list[tuple[str, str, dict]] = []
    ops = Operations(SimpleNamespace(), None, lambda k, n, d: events.append((k, n, d)), dict, clock)  # type: ignore[arg-type]
    nobody, other = Source.local("nobody", 65534), Source.local("bob", 1001)
    for i in range(AUDIT_REFUSED_PER_WINDOW + 30):
        ops.audit("stop" if i % 2 else "limit_set", nobody, {"why": float("nan")}, False, "forbidden", "forbidden")
    ops.audit("stop", other, {}, False, "forbidden", "forbidden")  # another user has an allowance of its own
    ops.audit("stop", nobody, {}, True, "stopped")  # a change that was done is always recorded
    assert len(events) == AUDIT_REFUSED_PER_WINDOW + 2
    assert json.dumps(events, allow_nan=False) and events[0][2]["args"] == {"why": "nan"}
    clock.advance(AUDIT_WINDOW_S - 1)
    assert ops.flush_suppressed() == 0
    clock.advance(1)
    assert ops.flush_suppressed() == 1 and ops.flush_suppressed() == 0  # reported once
    kind, name, data = events[-1]
    assert (kind, name, data["user"], data["uid"], data["suppressed"]) == (
        "command",
        "audit_suppressed",
        "nobody",
        65534,
        30,
    )
    assert data["ops"] == {"limit_set": 15, "stop": 15} and "30 more refused requests by cli:nobody" in data["result"]
    # a new window: the allowance is back
    ops.audit("stop", nobody, {}, False, "forbidden", "forbidden")
    assert events[-1][1] == "stop"


def test_connection_caps_per_user_and_in_all_with_a_reserve_for_admins():
    from edge.api.guard import Connections

    c = Connections(per_user=2, total=3, admin_reserve=1)
    name = lambda uid: f"u{uid}"  # noqa: E731
    for uid in (10, 10, 11):
        assert c.why_not(uid, name, lambda: False) is None
        c.add(uid)
    assert "too many connections from u10 (uid 10): 2 open, at most 2 per user" in str(
        c.why_not(10, name, lambda: True)
    )
    assert "at most 3" in str(c.why_not(12, name, lambda: False))  # the total, for a reader
    assert c.why_not(0, name, lambda: True) is None  # an admin still gets in
    c.add(0)
    assert c.why_not(1, name, lambda: True) is not None  # ... until the reserve is used up
    c.remove(10)
    assert c.open == 3 and c.by_uid[10] == 1


def test_log_limit_lets_one_line_per_interval_through_and_counts_the_rest(caplog):
    import logging

    from edge.api.guard import LogLimit

    now = [0.0]
    limit = LogLimit(logging.getLogger("test.loglimit"), every_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.loglimit"):
        sent = [limit.log(logging.ERROR, "accept", "out of fds %s", i) for i in range(1000)]
        now[0] = 61.0
        limit.log(logging.ERROR, "accept", "out of fds %s", "again")
    assert sent.count(True) == 1 and len(caplog.records) == 2
    assert "(and 999 more like it in the last 61 s)" in caplog.records[1].getMessage()


def test_raw_json_is_spliced_into_the_answer_as_is():
    from edge.api.protocol import RawJson

    line = encode(ok(1, {"events": RawJson('[{"seq":1,"name":"\\u0000raw0"}]'), "nan": float("nan")}))
    assert json.loads(line) == {
        "v": 1,
        "id": 1,
        "ok": True,
        "data": {"events": [{"seq": 1, "name": "\x00raw0"}], "nan": None},
    }
