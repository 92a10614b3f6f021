"""Scans against the running simulator (issue 19 item 4): `edge run --sim` serves its meters over Modbus TCP
on loopback and bridges its CAN bus to an slcan adapter on a pseudo-terminal, so `edge scan modbus --host`
and `edge scan can --interface slcan` find the simulated devices from another terminal; a scan that finds
nothing exits 1."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import can
import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.sim.scan_access import SlcanBridge, decode, encode
from tests.conftest import REPO, edge_env, wait_for

SIM_FILE = REPO / "edge" / "sim" / "sim.toml"


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`edge run --sim` as `make run` starts it (built-in config, its own process): what it printed at start."""
    tmp = tmp_path_factory.mktemp("make-run")
    log_path = tmp / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--sim"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=edge_env(),
            cwd=tmp,
        )
    try:
        printed: dict[str, str] = {}

        def started() -> bool:
            text = log_path.read_text(errors="replace")
            found = re.search(r"--tcp-port (\d+)", text), re.search(r"--channel (\S+)", text)
            if found[0] and found[1] and (tmp / ".edge-sim" / "edge.sock").exists():
                printed.update(port=found[0].group(1), channel=found[1].group(1), text=text)
            return bool(printed) or proc.poll() is not None

        wait_for(started, 20.0, what="edge run --sim printing how to scan it")
        assert printed, log_path.read_text(errors="replace")
        yield printed
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_make_run_prints_how_to_scan_the_simulator(make_run):
    assert f"edge scan modbus --host 127.0.0.1 --tcp-port {make_run['port']} --ids 1" in make_run["text"]
    assert f"--channel {make_run['channel']} --config {SIM_FILE} --bus can0" in make_run["text"]


def test_scan_modbus_finds_the_simulated_meter_over_tcp_and_nothing_exits_1(make_run):
    port = make_run["port"]
    found = CliRunner().invoke(main, ["scan", "modbus", "--host", "127.0.0.1", "--tcp-port", port, "--ids", "1-2"])
    assert found.exit_code == 0 and "id   1  sdm630" in found.stdout, found.output
    empty = CliRunner().invoke(
        main, ["scan", "modbus", "--host", "127.0.0.1", "--tcp-port", port, "--ids", "7", "--timeout", "50", "--json"]
    )
    assert empty.exit_code == 1 and json.loads(empty.stdout)["found"] == []


def test_scan_can_over_slcan_finds_every_simulated_module_and_cable(make_run):
    args = ["scan", "can", "--interface", "slcan", "--channel", make_run["channel"], "--config", str(SIM_FILE)]
    res = CliRunner().invoke(main, [*args, "--bus", "can0", "--seconds", "1.5", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert {a for a, m in data["modules"].items() if m["answers"]} == {"1", "2", "3", "4"}
    assert all(c["frames"] for c in data["cables"].values()) and data["silent"] == []
    assert data["sent"] > 0  # its read requests went onto the simulated bus (the modules answered them too)


def test_a_can_scan_that_sees_nothing_without_a_config_exits_1():
    res = CliRunner().invoke(
        main, ["scan", "can", "--interface", "virtual", "--channel", f"empty-{os.getpid()}", "--seconds", "0.2"]
    )
    assert res.exit_code == 1 and "nothing seen on virtual" in res.stderr


def test_the_slcan_bridge_relays_both_ways_and_refuses_garbage():
    channel = f"bridge-{os.getpid()}"
    bridge = SlcanBridge("can0", channel)
    peer = can.Bus(interface="virtual", channel=channel)
    bridge.start()
    tty = os.open(bridge.path, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(tty, b"S4\rO\rT123456782ABCD\rt12x\r")
        msg = peer.recv(timeout=2.0)
        assert msg is not None and (msg.arbitration_id, bytes(msg.data), msg.is_extended_id) == (
            0x12345678,
            b"\xab\xcd",
            True,
        )
        peer.send(can.Message(arbitration_id=0x123, data=b"\x01", is_extended_id=False))
        got, deadline = b"", time.monotonic() + 2.0
        while b"t1231" not in got and time.monotonic() < deadline:
            if select.select([tty], [], [], 0.1)[0]:
                got += os.read(tty, 4096)
        assert got.startswith(b"\r\rZ\r\a") and b"t123101\r" in got, got
    finally:
        os.close(tty)
        peer.shutdown()
        bridge.close()
    back = decode(encode(can.Message(arbitration_id=7, data=b"", is_extended_id=False)).decode().rstrip("\r"))
    assert back is not None and (back.arbitration_id, back.is_extended_id, back.data) == (7, False, bytearray())
