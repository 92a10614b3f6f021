"""Cross-process CAN: python-can's slcan interface on a pseudo-terminal, the peer in another process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import can
import pytest

from drivers.cable.monitor import CableMonitor
from drivers.can_dispatch import CanDispatcher
from drivers.power_modules.bank import ModuleBank
from drivers.power_modules.infypower import InfyPowerCodec
from hal.can import CanPort, CanSettings
from tests.conftest import REPO, edge_env, until


@pytest.fixture
def slcan_peer():
    master, slave = os.openpty()
    path = os.ttyname(slave)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.slcan_peer", str(master), "1", "2"], pass_fds=(master,), env=edge_env(), cwd=REPO
    )
    os.close(master)
    try:
        yield path, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        os.close(slave)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # python-can's rx thread dies
def test_module_bank_and_cable_monitor_work_over_slcan_across_processes(slcan_peer):
    path, proc = slcan_peer
    port = CanPort(
        CanSettings(name="pty", interface="slcan", channel=path, bitrate=125_000, extra={"sleep_after_open": 0.0})
    )

    def send(frame):
        msg = can.Message(arbitration_id=frame.arbitration_id, data=frame.data, is_extended_id=True)
        port.send(msg, priority=frame.priority)

    bank = ModuleBank(InfyPowerCodec(), [1, 2], 1.0, send, 50.0, poll_period_s=0.2)
    dispatcher = CanDispatcher("pty")
    bank.register(dispatcher)
    CableMonitor("cable").register(dispatcher)
    cable_ok = []

    def sink(readings):
        cable_ok.extend(r for r in readings if r.signal.startswith("cable.") and r.quality == "ok")

    async def poll():
        while True:
            for addr in bank.polls_due(time.monotonic()):
                for f in bank.poll_frames(addr):
                    send(f)
            bank.check(time.monotonic())
            await asyncio.sleep(0.02)

    async def main():
        port.start(asyncio.get_running_loop())
        tasks = [asyncio.create_task(dispatcher.run(port, sink)), asyncio.create_task(poll())]
        try:
            await until(lambda: bank.available() == [1, 2], what="both modules present over slcan")
            bank.apply(True, 400.0, 60.0)
            await until(
                lambda: all(m.current_a == 30.0 and m.voltage_v == 400.0 for m in bank.modules.values()),
                what="set-points applied by the peer and read back",
            )
            await until(lambda: len(cable_ok) >= 8, what="cable frames")
            proc.kill()  # the peer process dies: its modules go silent
            await until(lambda: bank.available() == [], timeout=3, what="modules lost")
            # the tty is gone: failing sends or the dead receive thread are reported as bus off
            await until(lambda: (port.check(), port.health == "bus_off")[1], timeout=3, what="bus off")
        finally:
            for t in tasks:
                t.cancel()

    try:
        asyncio.run(main())
    finally:
        port.close()
    assert port.health == "bus_off" and (
        "receive failed" in port.health_reason or "sends failed in a row" in port.health_reason
    )
    assert cable_ok[0].signal == "cable.pin_dc_plus_c" and cable_ok[0].value == pytest.approx(40.0)
    assert port.stats.rx > 10 and port.stats.dropped == 0
