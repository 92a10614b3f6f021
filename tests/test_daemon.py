"""Daemon lifecycle and the simulated cabinet end to end (real pty + pymodbus, python-can virtual bus)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import time
from pathlib import Path

import pytest

import edge.control
from edge.build import Backends
from edge.config import parse_config
from edge.daemon import Daemon
from edge.sim.cabinet import SimCabinet
from tests.conftest import sim_config_text, wait_for
from tests.conftest import until as _until


def _reading_ok(status: dict, signal_name: str) -> bool:
    r = status["readings"].get(signal_name)
    return bool(r) and r["quality"] == "ok"


def test_sim_daemon_reads_meter_modules_and_cable(sim_daemon):
    d = sim_daemon()
    st = wait_for(
        lambda: (
            (s := d.status())
            and all(
                _reading_ok(s, k)
                for k in (
                    "grid.Voltage.L1",
                    "grid.Current.Import.L1",
                    "grid.Energy.Active.Import.Register",
                    "module.1.voltage_v",
                    "module.4.current_a",
                    "cable.pin_dc_plus_c",
                    "cable.coolant_flow_lpm",
                )
            )
            and s
        ),
        timeout=15,
        what="readings from meter, modules and cable",
    )
    assert 220.0 < st["readings"]["grid.Voltage.L1"]["value"] < 240.0
    assert st["readings"]["grid.Voltage.L1"]["unit"] == "V"
    assert all(not m["lost"] for m in st["modules"].values())
    # values are live: the energy counter of the meter keeps rising while the vehicle charges
    e0 = st["readings"]["grid.Energy.Active.Import.Register"]["value"]
    wait_for(
        lambda: d.status()["readings"]["grid.Energy.Active.Import.Register"]["value"] > e0,
        timeout=10,
        what="meter energy to increase",
    )
    # the vehicle draws current once limits allow it
    wait_for(
        lambda: d.status()["limit_a"] > 0 and sum(m["current_a"] or 0.0 for m in d.status()["modules"].values()) > 1,
        timeout=15,
        what="output current",
    )


def test_sigterm_stops_cleanly_within_two_seconds(sim_daemon, tmp_path):
    d = sim_daemon()
    wait_for(lambda: d.status()["uptime_s"] > 0.5, timeout=10)
    t0 = time.monotonic()
    code = d.stop(signal.SIGTERM, timeout=5)
    elapsed = time.monotonic() - t0
    assert code == 0, d.log()
    assert elapsed < 2.0, f"stop took {elapsed:.2f} s"
    db = sqlite3.connect(tmp_path / "data" / "telemetry.sqlite3")
    kinds = [row[0] for row in db.execute("SELECT payload FROM records WHERE kind='event' ORDER BY seq")]
    assert '"stopped"' in kinds[-1] and '"exit_code":0' in kinds[-1]


def test_sigusr1_writes_every_threads_stack_to_the_log_and_the_daemon_goes_on(sim_daemon):
    d = sim_daemon()
    before = d.log()
    d.proc.send_signal(signal.SIGUSR1)

    def dumped() -> str | None:  # the dump is written thread by thread: wait for the main thread's stack
        dump = d.log()[len(before) :]
        return dump if dump.lower().count("thread 0x") >= 2 and "edge/daemon.py" in dump else None

    # the store writer and the event loop, each with its stack: enough to see where a stuck daemon waits
    assert wait_for(dumped, 5, what="every thread's stack in the daemon's log")
    assert d.proc.poll() is None and d.status()["uptime_s"] > 0


def _in_process(tmp_path: Path, body, patch=None):
    """Run the daemon in this process on a sim cabinet; ``body(daemon, cabinet)`` is awaited beside it."""
    cfg = parse_config(sim_config_text(tmp_path))
    cab = SimCabinet(cfg)
    cab.start()
    try:

        async def main():
            daemon = Daemon(cab.patched_config(), Backends(board=cab.board))
            run = asyncio.create_task(daemon.run())
            await body(daemon, cab, run)
            return await asyncio.wait_for(run, timeout=5), daemon

        return asyncio.run(main())
    finally:
        cab.stop()


def test_stop_request_turns_outputs_off(tmp_path):
    async def body(daemon, cab, run):
        await _until(lambda: daemon.cabinet.outputs.contactor.value() == 1 and cab.physics.output_a > 1)
        daemon.stopping.set()  # what the SIGTERM handler does

    code, daemon = _in_process(tmp_path, body)
    assert code == 0
    assert daemon.cabinet.outputs.contactor.value() == 0
    assert daemon.cabinet.outputs.pump.value() == 0
    assert all(m.set_current_a == 0 and not m.output_on for m in daemon.cabinet.bank.modules.values())


def test_exception_in_control_path_fails_safe_and_exits_nonzero(tmp_path, monkeypatch, caplog):
    real = edge.control.evaluate_cabinet
    armed = {"on": False}

    def evaluate(snapshot, config, state):
        if armed["on"]:
            raise RuntimeError("injected fault in the safety evaluation")
        return real(snapshot, config, state)

    monkeypatch.setattr(edge.control, "evaluate_cabinet", evaluate)

    async def body(daemon, cab, run):
        await _until(lambda: daemon.cabinet.outputs.contactor.value() == 1 and cab.physics.output_a > 1)
        armed["on"] = True

    with caplog.at_level(logging.ERROR):
        code, daemon = _in_process(tmp_path, body)
    assert code == 1
    assert daemon.cabinet.outputs.contactor.value() == 0
    assert all(m.set_current_a == 0 and not m.output_on for m in daemon.cabinet.bank.modules.values())
    assert "injected fault in the safety evaluation" in caplog.text
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("knob", ["cable_silent"])
def test_silent_cable_sensor_gives_zero_amps_and_a_named_fault(tmp_path, knob):
    seen = {}

    async def body(daemon, cab, run):
        await _until(lambda: daemon.cabinet.controller.decision and daemon.cabinet.controller.decision["limit_a"] > 1)
        cab.set_cable_silent(True)
        t0 = time.monotonic()
        await _until(lambda: daemon.cabinet.controller.decision["limit_a"] == 0.0, timeout=2)
        seen["reaction_s"] = time.monotonic() - t0
        seen["faults"] = list(daemon.cabinet.controller.decision["faults"])
        daemon.stopping.set()

    code, _ = _in_process(tmp_path, body)
    assert code == 0
    assert "pin_dc_plus_stale" in seen["faults"]
    # stale after 300 ms + at most one 100 ms tick
    assert seen["reaction_s"] < 0.3 + 0.1 + 0.15
