"""``edge scan can`` against the simulated modules and cable monitor on a shared virtual bus (in-process)."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import can
import pytest
from click.testing import CliRunner

from edge.scan.can import can_command
from edge.sim.can_devices import SimCanDevices
from edge.sim.physics import ModuleModel, Physics
from tests.conftest import sim_config_text

_n = itertools.count()


@pytest.fixture
def bench(tmp_path: Path):
    """A config file and sim devices (modules 1-4 + cable) on a private virtual channel."""
    started = []

    def start(protocol: str = "infypower", silent: tuple[int, ...] = (), foreign: int | None = None):
        channel = f"scan-test-{next(_n)}"
        text = sim_config_text(tmp_path).replace('channel = "sim-can0"', f'channel = "{channel}"')
        text = text.replace("[power_modules]\n", f'[power_modules]\nprotocol = "{protocol}"\n')
        cfg = tmp_path / "config.toml"
        cfg.write_text(text)
        physics = Physics(modules={a: ModuleModel(a, silent=a in silent) for a in (1, 2, 3, 4)})
        bus = can.Bus(interface="virtual", channel=channel)
        dev = SimCanDevices(bus, physics, threading.Lock(), protocol=protocol)
        dev.foreign_module = foreign
        dev.start()
        started.append((dev, bus))
        return cfg

    yield start
    for dev, bus in started:
        dev.stop()
        bus.shutdown()


@pytest.mark.parametrize("protocol", ["infypower", "uugreen"])
def test_scan_lists_ids_with_rates_and_every_configured_device_answering(bench, protocol):
    cfg = bench(protocol)
    res = CliRunner().invoke(can_command, ["--config", str(cfg), "--seconds", "1.2"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "0x18FF5101" in res.output and "cable cable CABLE_TEMPS" in res.output
    for a in (1, 2, 3, 4):
        assert any(line.startswith(f"  module {a} ") and " ok " in line for line in lines), res.output
    assert "cable cable (node 0x01): ok" in res.output
    assert "sent " in res.output
    # the cable monitor sends every 100 ms: about 10 frames/s per message
    row = next(line for line in lines if line.startswith("0x18FF5101"))
    assert 7.0 <= float(row.split()[3]) <= 13.0, row


def test_scan_names_silent_and_unconfigured_modules_and_exits_1(bench):
    cfg = bench(silent=(3,), foreign=9)
    res = CliRunner().invoke(can_command, ["--config", str(cfg), "--seconds", "1.2", "--json"])
    assert res.exit_code == 1
    data = json.loads(res.output)
    assert data["silent"] == ["module 3"]
    assert data["modules"]["3"]["answers"] == 0 and data["modules"]["1"]["answers"] > 0
    assert data["foreign_modules"]["9"] > 0
    assert data["cables"]["cable"]["frames"] > 0
    assert {i["id"] for i in data["ids"]} >= {"0x18FF5101", "0x18FF5201"}


def test_listen_only_sends_nothing_so_request_driven_modules_stay_silent(bench):
    cfg = bench()
    res = CliRunner().invoke(can_command, ["--config", str(cfg), "--seconds", "0.6", "--listen-only", "--json"])
    data = json.loads(res.output)
    assert data["sent"] == 0 and res.exit_code == 1
    assert data["cables"]["cable"]["frames"] > 0
    assert all(m["answers"] == 0 for m in data["modules"].values())


def test_scan_usage_errors_are_clear(tmp_path):
    res = CliRunner().invoke(can_command, ["--interface", "virtual", "--seconds", "0.2"])
    assert res.exit_code == 2 and "--interface and --channel" in res.output
    res = CliRunner().invoke(can_command, ["--seconds", "99", "--interface", "virtual", "--channel", "x"])
    assert res.exit_code == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[cabinet]\nsite_id = 1\n")
    res = CliRunner().invoke(can_command, ["--config", str(bad)])
    assert res.exit_code == 2 and "config error" in res.output


def test_help_says_that_the_scan_sends_read_requests():
    res = CliRunner().invoke(can_command, ["--help"])
    assert "SENDS read requests" in res.output and "--listen-only" in res.output
