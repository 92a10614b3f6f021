"""Shared fixtures: temporary configs, a daemon in a subprocess, waiting on conditions with deadlines."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SIM_TOML = (REPO / "edge" / "sim" / "sim-bench.toml").read_text()
EXAMPLE_TOML = (REPO / "deploy" / "config.example.toml").read_text()


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - condition may fail until the peer is up
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what or condition}"
        + (f" (last error: {last_exc})" if last_exc else "")
    )


def _drop_tables(text: str, headers: set[str]) -> str:
    """Remove the ``[table]`` blocks named in ``headers`` (TOML forbids defining a table twice)."""
    out, skipping = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            skipping = stripped.split("#")[0].strip() in headers
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


async def until(cond: Callable[[], Any], timeout: float = 15.0, what: str = "", interval: float = 0.005) -> float:
    """Await ``cond`` (a plain or an async callable) until it is truthy, on the running loop; returns the
    monotonic time it held. Fails the test after ``timeout`` s: a deadline, never a blind sleep."""
    deadline = time.monotonic() + timeout
    while True:
        res = cond()
        if inspect.isawaitable(res):
            res = await res
        if res:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or cond}")
        await asyncio.sleep(interval)


def sim_config_text(tmp: Path, extra: str = "") -> str:
    """The built-in sim config with data dir and socket moved into ``tmp``.

    Tables in ``extra`` replace the same tables of the built-in config (e.g. ``[limits.grid]``).
    """
    if "[telemetry.mqtt]" not in extra:
        # never deliver to (and delete for) a broker that happens to run on the developer's 1883
        extra += "\n[telemetry.mqtt]\nenabled = false\n"
    redefined = {
        ln.strip().split("#")[0].strip()
        for ln in extra.splitlines()
        if ln.strip().startswith("[") and not ln.strip().startswith("[[")
    }
    text = _drop_tables(SIM_TOML, redefined).replace('socket = ".edge-sim/edge.sock"', f'socket = "{tmp}/edge.sock"')
    text = text.replace('data_dir = ".edge-sim"', f'data_dir = "{tmp}/data"')
    text = text.replace('backend = "systemd"          # talks', 'backend = "sim"          # talks')
    return text + "\n" + extra


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def edge_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NOTIFY_SOCKET", None)
    return env


def api_request(sock_path: str, req: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return dict(json.loads(buf))


class DaemonProcess:
    def __init__(self, config_file: Path, socket_path: str, sim: bool = True) -> None:
        args = [sys.executable, "-m", "edge", "run", "--config", str(config_file)]
        if sim:
            args.append("--sim")
        self.socket_path = socket_path
        self.log_path = config_file.parent / "daemon.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=edge_env(), cwd=config_file.parent
        )

    def status(self) -> dict[str, Any]:
        answer = api_request(self.socket_path, {"cmd": "status"})
        assert answer["ok"], answer
        return dict(answer["data"])

    def wait_ready(self, timeout: float = 15.0) -> None:
        wait_for(
            lambda: self.proc.poll() is None and os.path.exists(self.socket_path) and self.status(),
            timeout,
            what=f"daemon API at {self.socket_path}\n{self.log()}",
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # a daemon that does not stop: its threads' stacks (SIGUSR1) into the log and the failure
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            raise AssertionError(
                f"daemon did not stop within {timeout} s after signal {sig}:\n{self.log()[-6000:]}"
            ) from None
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()


@pytest.fixture
def sim_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(extra: str = "") -> DaemonProcess:
        cfg = tmp_path / "config.toml"
        cfg.write_text(sim_config_text(tmp_path, extra))
        d = DaemonProcess(cfg, str(tmp_path / "edge.sock"))
        started.append(d)
        d.wait_ready()
        return d

    yield start
    for d in started:
        d.stop(signal.SIGKILL) if d.proc.poll() is None else d.stop()


# -- MQTT: a real mosquitto per test (tests/mqtt_broker.py) ------------------------------------------
@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[Any]:
    """A started mosquitto on a free loopback port (tests.mqtt_broker.Broker), killed on teardown."""
    from tests.mqtt_broker import running_broker  # imported here: mqtt_broker imports this module

    yield from running_broker(tmp_path / "broker")
