"""The daemon's side of the systemd contract (systemd/cabinet-edge.service: Type=notify, WatchdogSec=).

A fake service manager: an AF_UNIX datagram socket bound in a temp dir, announced through NOTIFY_SOCKET,
exactly as systemd does for a Type=notify service.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hal.watchdog import SystemdWDT, make_wdt

REPO = Path(__file__).resolve().parents[1]


class FakeServiceManager:
    """Receives sd_notify datagrams the way systemd's notify socket does."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.received: list[str] = []

    def next_message(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        text = data.decode("utf-8")  # systemd ignores STATUS= that is not UTF-8
        self.received.extend(text.splitlines())
        return text

    def wait_for(self, wanted: str, deadline: float) -> None:
        """Collect messages until a line equal to `wanted` (or starting with it, for 'X=') arrives."""
        while True:
            if any(line == wanted or (wanted.endswith("=") and line.startswith(wanted)) for line in self.received):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {wanted!r} before the deadline; got {self.received}")
            try:
                self.next_message(timeout=min(remaining, 0.5))
            except TimeoutError:
                continue

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServiceManager]:
    # Short path: sun_path is limited to 108 bytes, pytest's tmp_path can be longer.
    tmp = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    fake = FakeServiceManager(os.path.join(tmp, "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", fake.path)
    yield fake
    fake.close()
    os.unlink(fake.path)
    os.rmdir(tmp)


def test_systemd_wdt_sends_ready_watchdog_status_and_stopping(manager: FakeServiceManager) -> None:
    wdt = SystemdWDT(timeout=5000)
    wdt.ready()
    assert manager.next_message() == "READY=1"
    wdt.feed()
    assert manager.next_message() == "WATCHDOG=1"
    wdt.status("limit 150 A <- site fuse")
    assert manager.next_message() == "STATUS=limit 150 A <- site fuse"
    wdt.stopping()
    assert manager.next_message() == "STOPPING=1"


def test_status_is_one_line(manager: FakeServiceManager) -> None:
    wdt = SystemdWDT()
    wdt.status("two\nlines")
    assert manager.next_message() == "STATUS=two lines"


def test_status_with_degree_sign_reaches_systemd_as_utf8(manager: FakeServiceManager) -> None:
    wdt = SystemdWDT()
    wdt.status("limit 150 A <- cable DC+ pin 82.4 °C")
    assert manager.next_message() == "STATUS=limit 150 A <- cable DC+ pin 82.4 °C"


def test_abstract_notify_socket_is_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"cabinet-edge-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        SystemdWDT().ready()
        sock.settimeout(2.0)
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_without_notify_socket_messages_go_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    wdt = make_wdt("systemd", 5000)
    wdt.ready()
    wdt.feed()
    wdt.status("run by hand")
    wdt.stopping()


def test_unit_watchdog_is_longer_than_many_control_ticks() -> None:
    """WatchdogSec must leave room for many 100 ms ticks, yet be short enough to matter."""
    unit = (REPO / "systemd" / "cabinet-edge.service").read_text()
    match = re.search(r"^WatchdogSec=(\d+)s?$", unit, re.MULTILINE)
    assert match, "WatchdogSec= in seconds expected"
    assert 2 <= int(match.group(1)) <= 30


def _daemon_config(tmp_path: Path) -> Path:
    """The shipped example with the systemd watchdog backend (the daemon runs with --sim)."""
    example = REPO / "deploy" / "config.example.toml"
    text = example.read_text() if example.exists() else ""
    if re.search(r"^\[watchdog\]", text, re.MULTILINE):
        head, _, tail = text.partition("[watchdog]")
        section, sep, rest = tail.partition("\n[")
        section = re.sub(r"^backend\s*=.*$", 'backend = "systemd"', section, flags=re.MULTILINE)
        if "backend" not in section:
            section = '\nbackend = "systemd"' + section
        text = head + "[watchdog]" + section + sep + rest
    else:
        text += '\n[watchdog]\nbackend = "systemd"\n'
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_daemon_sends_ready_and_watchdog(manager: FakeServiceManager, tmp_path: Path) -> None:
    # Look in this checkout only: an editable install elsewhere may expose another tree's edge package.
    if not (REPO / "edge" / "daemon.py").exists():
        pytest.skip("the daemon (edge/daemon.py, `edge run`) is not in this checkout yet")
    pytest.importorskip("edge.daemon")
    config = _daemon_config(tmp_path)
    env = dict(os.environ, NOTIFY_SOCKET=manager.path, WATCHDOG_USEC="5000000", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--sim", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        manager.wait_for("READY=1", deadline=time.monotonic() + 30)
        manager.received.clear()
        manager.wait_for("WATCHDOG=1", deadline=time.monotonic() + 5)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=2)
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        assert rc == 0, output
        manager.wait_for("STOPPING=1", deadline=time.monotonic() + 1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()


def test_sim_wdt_keeps_only_the_last_messages() -> None:
    # the daemon sends a STATUS line every telemetry interval: a simulated cabinet running for days
    # must not keep every one of them (the soak measured 0.5 MB/h before this bound)
    from hal.watchdog import SIM_MESSAGES_KEPT, SimWDT

    wdt = SimWDT()
    wdt.ready()
    for i in range(SIM_MESSAGES_KEPT * 5):
        wdt.status(f"limit {i} A")
    assert len(wdt.messages) == SIM_MESSAGES_KEPT
    assert wdt.messages[-1] == f"STATUS=limit {SIM_MESSAGES_KEPT * 5 - 1} A"
    assert "READY=1" not in wdt.messages
