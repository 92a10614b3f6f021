"""The small things a new user and a technician hit first: whoami answers everyone, the permission hint
never says "join group root", selftest says "running" only once it runs, diag -o never overwrites by
accident, events carry their time zone."""

from __future__ import annotations

import grp
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.render import clock, events_text
from tests.test_api_permissions import run_as

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to other users needs root")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="edge-screen-"))
    os.chmod(d, 0o755)  # other users must reach the socket file itself
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _socket(path: Path, group: str) -> socket.socket:
    """A listening socket the way the daemon leaves it: 0660, owned by ``group``."""
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen()
    os.chown(path, 0, grp.getgrnam(group).gr_gid)
    os.chmod(path, 0o660)
    return s


@as_root
def test_whoami_answers_a_user_the_socket_lets_not_in_with_who_they_are_and_the_fix(shared_dir):
    with _socket(shared_dir / "edge.sock", "nogroup"):
        res = run_as("bin", "bin", [], str(shared_dir / "edge.sock"), "whoami")
        assert res["code"] == 0, res
        assert res["stdout"].startswith("bin (uid 2), groups bin: no access to the daemon at "), res
        assert "sudo usermod -aG nogroup bin" in res["stdout"], res
        js = run_as("bin", "bin", [], str(shared_dir / "edge.sock"), "whoami", "--json")
        data = json.loads(js["stdout"])
        assert data["answered_by"] == "local" and data["read"] is False and data["socket_group"] == "nogroup"


@as_root
def test_the_permission_hint_never_says_join_group_root(shared_dir):
    with _socket(shared_dir / "edge.sock", "root"):
        res = run_as("bin", "bin", [], str(shared_dir / "edge.sock"), "status")
    assert res["code"] == 4, res
    assert "-aG root" not in res["stderr"], res
    assert "group cabinet-edge (api.group) does not exist" in res["stderr"] and "groupadd cabinet-edge" in res["stderr"]


def _answering(path: Path, answer: dict, delay_s: float) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen()

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            conn.makefile().readline()
            time.sleep(delay_s)  # the daemon's side: a refusal at once, or a test that takes its time
            conn.sendall((json.dumps({"v": 1, "id": None, **answer}) + "\n").encode())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_selftest_says_running_only_when_the_daemon_did_not_refuse_at_once(tmp_path):
    refusal = {"ok": False, "code": "refused", "error": "charging: stop first"}
    t = _answering(tmp_path / "a.sock", refusal, 0.0)
    res = CliRunner().invoke(main, ["selftest", "--seconds", "1", "--socket", str(tmp_path / "a.sock")])
    t.join(5)
    assert res.exit_code == 4 and "charging: stop first" in res.stderr, res.stderr
    assert "running pump and fan" not in res.stderr
    result = {"verdict": "pass", "why": "flow ok", "duration_s": 1.0, "before": {}, "after": {}}
    result.update(flow_full_current_lpm=4.0, outputs_seen={"pump": True, "fan": True})
    t = _answering(tmp_path / "b.sock", {"ok": True, "data": result}, 0.8)
    res = CliRunner().invoke(main, ["selftest", "--seconds", "1", "--socket", str(tmp_path / "b.sock")])
    t.join(5)
    assert res.exit_code == 0 and "running pump and fan for 1 s" in res.stderr, (res.stdout, res.stderr)


def test_diag_refuses_to_overwrite_an_existing_file_without_force(tmp_path):
    out = tmp_path / "bundle.tar.gz"
    out.write_bytes(b"precious")
    args = ["diag", "-o", str(out), "--socket", str(tmp_path / "none.sock"), "--config", str(tmp_path / "no.toml")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "exists" in res.stderr and "--force" in res.stderr, res.stderr
    assert out.read_bytes() == b"precious"
    res = CliRunner().invoke(main, [*args, "--force"])
    assert res.exit_code == 0, res.stderr
    assert out.read_bytes()[:2] == b"\x1f\x8b"  # a gzip bundle now


def test_events_and_times_say_utc_like_the_status():
    assert clock(0) == "1970-01-01 00:00:00 UTC"
    text = events_text([{"seq": 1, "t_ms": 86_400_000, "kind": "fault_raised", "name": "x", "detail": "y"}])
    assert text == "1970-01-02 00:00:00 UTC fault_raised x: y"
