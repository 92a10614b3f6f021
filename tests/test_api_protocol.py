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
