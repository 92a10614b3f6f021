"""Permissions checked with the peer's real credentials (SO_PEERCRED): CLI clients run in forked
children that switch to other users, so the daemon sees a real non-root peer.

Setup: the socket's group is ``nogroup`` (read), the admin group is ``daemon``. ``nobody`` (in nogroup)
may read only; the ``daemon`` user (admin group through /etc/group) may change; ``bin`` is in neither.
Needs root (to switch users); skipped otherwise."""

from __future__ import annotations

import grp
import json
import os
import pwd
import select
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edge.cli import main
from tests.cli_support import quiet_sim
from tests.conftest import DaemonProcess, api_request, sim_config_text, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to other users needs root")


def _ids(user: str, group: str) -> tuple[int, int]:
    return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    for user, group in (("nobody", "nogroup"), ("daemon", "daemon"), ("bin", "bin")):
        try:
            _ids(user, group)
        except KeyError:
            pytest.skip(f"system account {user}:{group} missing")
    tmp = tmp_path_factory.mktemp("perm")
    # pytest's temp dirs are root-only; the socket goes where other users can reach it
    sock_dir = tempfile.mkdtemp(prefix="edge-perm-", dir="/tmp")
    os.chmod(sock_dir, 0o755)
    sock = f"{sock_dir}/edge.sock"
    text = quiet_sim(sim_config_text(tmp), api={"socket": sock, "group": "nogroup", "admin_group": "daemon"})
    cfg = tmp / "config.toml"
    cfg.write_text(text)
    d = DaemonProcess(cfg, sock)
    d.wait_ready()
    yield d
    d.stop()
    shutil.rmtree(sock_dir, ignore_errors=True)


def run_as(user: str, group: str, extra_groups: list[str], sock: str, *args: str) -> dict[str, Any]:
    """Run `edge ARGS --socket SOCK` in a forked child that became ``user``:``group`` (+ extra groups)."""
    uid, gid = _ids(user, group)
    extra = [grp.getgrnam(g).gr_gid for g in extra_groups]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop root for real, then run the CLI in-process (the interpreter is loaded)
        code = 0
        try:
            os.close(r)
            os.setgroups(extra)
            os.setgid(gid)
            os.setuid(uid)
            res = CliRunner().invoke(main, [*args, "--socket", sock])
            out = {"code": res.exit_code, "stdout": res.stdout, "stderr": res.stderr, "uid": os.getuid()}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            out = {"code": -1, "stdout": "", "stderr": f"child failed: {exc!r}", "uid": -1}
            code = 1
        data = json.dumps(out).encode()
        while data:
            data = data[os.write(w, data) :]
        os._exit(code)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready, _, _ = select.select([r], [], [], 0.5)
        if ready:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks))
    assert result["uid"] == uid, result
    return dict(result)


def commands_by(d: DaemonProcess, user: str) -> list[dict[str, Any]]:
    events = api_request(d.socket_path, {"cmd": "events", "args": {"limit": 1000}})["data"]["events"]
    return [e for e in events if e["kind"] == "command" and e.get("user") == user]


def test_socket_is_0660_and_owned_by_the_read_group(daemon):
    st = os.stat(daemon.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == grp.getgrnam("nogroup").gr_gid


def test_reader_can_read_but_cannot_change_anything(daemon):
    sock = daemon.socket_path
    res = run_as("nobody", "nogroup", [], sock, "status")
    assert res["code"] == 0 and "cabinet sim-cab" in res["stdout"], res
    assert run_as("nobody", "nogroup", [], sock, "events")["code"] == 0
    who = run_as("nobody", "nogroup", [], sock, "whoami")
    assert "read only (changing needs group daemon)" in who["stdout"]
    for args in (
        ["limit", "set", "10A"],
        ["limit", "clear"],
        ["stop"],
        ["resume"],
        ["clear", "coolant_flow_low"],
        ["selftest", "--seconds", "1"],
    ):
        res = run_as("nobody", "nogroup", [], sock, *args)
        assert res["code"] == 4, (args, res)
        assert "forbidden" in res["stderr"] and "not in group daemon" in res["stderr"], res
    st = daemon.status()
    assert st["external_limit"] is None and st["stopped_by"] is None and st["rule"] != "stop"
    refused = commands_by(daemon, "nobody")
    assert {e["name"] for e in refused} == {"limit_set", "limit_clear", "stop", "resume", "clear", "selftest"}
    assert all(e["ok"] is False and e["result"] == "forbidden" and e["uid"] == 65534 for e in refused)


def test_member_of_the_admin_group_may_change_and_is_recorded_by_name(daemon):
    sock = daemon.socket_path
    res = run_as("daemon", "nogroup", [], sock, "limit", "set", "33A", "--for", "5m")
    try:
        assert res["code"] == 0, res
        st = wait_for(lambda: (s := daemon.status())["external_limit"] and s, timeout=3)
        assert st["external_limit"]["amps"] == 33.0 and st["external_limit"]["source"] == "cli:daemon"
    finally:
        assert run_as("daemon", "nogroup", [], sock, "limit", "clear")["code"] == 0
    recorded = commands_by(daemon, "daemon")
    assert [(e["name"], e["ok"], e["uid"]) for e in recorded] == [("limit_set", True, 1), ("limit_clear", True, 1)]
    assert recorded[0]["args"] == {"amps": 33.0, "duration_s": 300.0}


def test_user_outside_both_groups_cannot_even_connect(daemon):
    res = run_as("bin", "bin", [], daemon.socket_path, "status")
    assert res["code"] == 4 and "permission denied" in res["stderr"], res
    # the hint names the group that owns this socket (api.group), not the packaged default
    assert "usermod -aG nogroup bin" in res["stderr"]


def test_daemon_checks_credentials_even_if_the_socket_file_is_opened_up(daemon):
    os.chmod(daemon.socket_path, 0o666)  # a mistaken chmod must not open the cabinet to everyone
    try:
        res = run_as("bin", "bin", [], daemon.socket_path, "status")
        assert res["code"] == 4 and "forbidden" in res["stderr"] and "not in group nogroup or daemon" in res["stderr"]
        res = run_as("bin", "bin", [], daemon.socket_path, "stop")
        assert res["code"] == 4 and "forbidden" in res["stderr"]
    finally:
        os.chmod(daemon.socket_path, 0o660)
    assert daemon.status()["stopped_by"] is None


def test_missing_group_is_logged_and_the_socket_stays_root_only(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(quiet_sim(sim_config_text(tmp_path), api={"group": "no-such-group-xyz"}))
    d = DaemonProcess(cfg, str(tmp_path / "edge.sock"))
    try:
        d.wait_ready()
        st = os.stat(d.socket_path)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()
        assert "group 'no-such-group-xyz' does not exist" in Path(d.log_path).read_text()
    finally:
        d.stop()
