"""The daemon on the simulated cabinet's CAN bus: vendor swap, module loss, alarms, bad frames, bus-off.

In-process (python-can ``virtual`` buses are shared within one process): the sim cabinet's peers and a
test "intruder" bus on the same channel as the daemon.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from pathlib import Path

import can
import pytest

from edge.build import Backends
from edge.config import parse_config
from edge.daemon import Daemon
from edge.sim.cabinet import SimCabinet
from hal import can as hcan
from tests.conftest import sim_config_text, until


def config_text(tmp_path: Path, protocol: str = "infypower", lost_after_ms: int = 1000) -> str:
    text = sim_config_text(tmp_path)
    extra = f'protocol = "{protocol}"\nlost_after_ms = {lost_after_ms}\n'
    return text.replace("[power_modules]\n", "[power_modules]\n" + extra)


def run(tmp_path: Path, body, protocol: str = "infypower"):
    cfg = parse_config(config_text(tmp_path, protocol))
    cab = SimCabinet(cfg)
    cab.start()
    intruder = can.Bus(interface="virtual", channel=cab.can_channels["can0"])
    try:

        async def main():
            daemon = Daemon(cab.patched_config(), Backends(board=cab.board))
            task = asyncio.create_task(daemon.run())
            try:
                await body(daemon, cab, intruder)
            finally:
                daemon.stopping.set()
            return await asyncio.wait_for(task, timeout=5), daemon

        return asyncio.run(main())
    finally:
        intruder.shutdown()
        cab.stop()


def events(daemon: Daemon) -> list[tuple[str, str]]:
    db = sqlite3.connect(daemon.cabinet.store.path)
    try:
        rows = db.execute("SELECT payload FROM records WHERE kind = 'event' ORDER BY seq").fetchall()
    finally:
        db.close()
    return [(p["kind"], p["name"]) for p in (json.loads(r[0]) for r in rows)]


def charging(daemon: Daemon, cab: SimCabinet) -> bool:
    return daemon.cabinet.outputs.contactor.value() == 1 and cab.physics.output_a > 1


@pytest.mark.parametrize("protocol", ["infypower", "uugreen"])
def test_either_vendor_charges_loses_a_silent_module_and_recovers_it(tmp_path, protocol):
    seen = {}

    async def body(daemon, cab, intruder):
        await until(lambda: charging(daemon, cab) and len(daemon.cabinet.bank.available()) == 4, what="charging")
        assert all(m.temperature_c is not None for m in daemon.cabinet.bank.modules.values())
        cab.set_module_silent(2, True)
        await until(lambda: daemon.cabinet.bank.modules[2].lost, timeout=3, what="module 2 lost")
        await until(
            lambda: cab.physics.modules[2].out_a == 0 and daemon.cabinet.bank.available() == [1, 3, 4], timeout=3
        )
        seen["share"] = daemon.cabinet.bank.modules[1].set_current_a
        cab.set_module_silent(2, False)
        await until(lambda: 2 in daemon.cabinet.bank.available(), timeout=6, what="module 2 back")
        await until(lambda: cab.physics.modules[2].out_a > 0, timeout=6, what="module 2 delivering")

    code, daemon = run(tmp_path, body, protocol)
    assert code == 0
    ev = events(daemon)
    assert ("fault_raised", "module_lost_2") in ev and ("fault_cleared", "module_lost_2") in ev
    assert ev.index(("fault_raised", "module_lost_2")) < ev.index(("fault_cleared", "module_lost_2"))


def test_module_alarm_is_raised_and_cleared_as_events_and_foreign_frames_are_ignored(tmp_path):
    async def body(daemon, cab, intruder):
        await until(lambda: charging(daemon, cab), what="charging")
        cab.can.foreign_module = 9
        cab.set_module_alarm(3, "over_temperature", True)
        await until(lambda: 3 not in daemon.cabinet.bank.available(), timeout=3, what="alarm takes module 3 out")
        await until(lambda: daemon.cabinet.bank.foreign_frames >= 3, timeout=3)
        assert 9 not in daemon.cabinet.bank.modules and daemon.cabinet.bank.foreign_addresses == {9}
        assert all(m.voltage_v < 999 for m in daemon.cabinet.bank.modules.values())
        cab.set_module_alarm(3, "over_temperature", False)
        await until(lambda: 3 in daemon.cabinet.bank.available(), timeout=3, what="module 3 back in the split")
        st = daemon.cabinet.status()
        assert st["can_frames"]["foreign_frames"] >= 3

    code, daemon = run(tmp_path, body)
    assert code == 0
    ev = events(daemon)
    assert ("module_alarm_raised", "module_3_over_temperature") in ev
    assert ("module_alarm_cleared", "module_3_over_temperature") in ev


def test_malformed_frames_never_stop_the_daemon(tmp_path):
    rng = random.Random(7)
    bad = [
        can.Message(arbitration_id=0x029C01F0 & 0x1FFFFFFF | 0, data=b"\x01", is_extended_id=True),  # short
        can.Message(
            arbitration_id=(0x0A << 22) | (0x03 << 16) | (0xF0 << 8) | 1, data=b"\x00" * 3, is_extended_id=True
        ),  # reply, short
        can.Message(
            arbitration_id=(0x0A << 22) | (0x04 << 16) | (0xF0 << 8) | 1, data=b"", is_extended_id=True
        ),  # status, empty
        can.Message(arbitration_id=0x18FF5101, data=b"\xff" * 3, is_extended_id=True),  # cable, short
        can.Message(arbitration_id=0x18FF5201, data=b"\xff" * 8, is_extended_id=True),  # out of range
        can.Message(arbitration_id=0x123, data=b"\x01\x02", is_extended_id=False),  # standard id
        can.Message(arbitration_id=0x18FF5101, is_remote_frame=True, dlc=8, is_extended_id=True),  # remote
        can.Message(
            arbitration_id=hcan.CAN_ERR_PROT | hcan.CAN_ERR_BUSERROR, data=bytes(8), is_error_frame=True
        ),  # error frame
        can.Message(arbitration_id=hcan.CAN_ERR_CRTL, data=b"", is_error_frame=True),  # short error
    ]
    bad += [
        can.Message(arbitration_id=rng.getrandbits(29), data=rng.randbytes(rng.randint(0, 8)), is_extended_id=True)
        for _ in range(300)
    ]

    async def body(daemon, cab, intruder):
        await until(lambda: charging(daemon, cab), what="charging")
        evals = daemon.cabinet.controller.evaluations
        for m in bad:
            intruder.send(m)
        await until(
            lambda: (
                daemon.cabinet.can.frame_counts()["unknown"] >= 2
                and daemon.cabinet.can.ports["can0"].stats.error_frames >= 2
            ),
            timeout=3,
        )
        await until(lambda: daemon.cabinet.controller.evaluations > evals + 5, timeout=3)
        st = daemon.cabinet.status()
        assert st["can"]["can0"]["health"] == "active"

    code, daemon = run(tmp_path, body)
    assert code == 0  # the daemon stopped because we asked it to, not because of a frame
    assert daemon.cabinet.can.frame_counts()["decode_errors"] == 0


def test_bus_off_raises_a_fault_drives_zero_amps_and_recovers_by_reopening(tmp_path):
    seen = {}

    async def body(daemon, cab, intruder):
        await until(lambda: charging(daemon, cab) and len(daemon.cabinet.bank.available()) == 4, what="charging")
        intruder.send(can.Message(arbitration_id=hcan.CAN_ERR_BUSOFF, data=bytes(8), is_error_frame=True))
        t0 = time.monotonic()
        await until(lambda: "can_bus_off" in daemon.cabinet.status()["faults"], timeout=2, what="can_bus_off fault")
        await until(lambda: daemon.cabinet.controller.decision["limit_a"] == 0.0, timeout=1, what="0 A")
        seen["to_zero_s"] = time.monotonic() - t0
        seen["available_then"] = daemon.cabinet.bank.available()
        seen["contactor_then"] = daemon.cabinet.outputs.contactor.value()
        await until(lambda: "can_bus_off" not in daemon.cabinet.status()["faults"], timeout=5, what="re-opened")
        await until(lambda: len(daemon.cabinet.bank.available()) == 4, timeout=6, what="modules back")
        seen["status"] = daemon.cabinet.status()["can"]["can0"]

    code, daemon = run(tmp_path, body)
    assert code == 0
    assert seen["available_then"] == [] and seen["contactor_then"] == 0
    assert seen["to_zero_s"] < 0.5
    assert seen["status"]["bus_off"] == 1 and seen["status"]["reopens"] >= 1
    ev = events(daemon)
    assert ("fault_raised", "can_bus_off") in ev and ("fault_cleared", "can_bus_off") in ev


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # python-can's rx thread dies
def test_adapter_gone_underneath_is_bus_off_then_the_bus_is_reopened(tmp_path):
    seen = {}

    async def body(daemon, cab, intruder):
        await until(lambda: charging(daemon, cab) and len(daemon.cabinet.bank.available()) == 4, what="charging")
        daemon.cabinet.can.module_port.bus.shutdown()  # like a USB adapter pulled out: sends and receives fail
        await until(lambda: "can_bus_off" in daemon.cabinet.status()["faults"], timeout=3, what="can_bus_off fault")
        await until(lambda: daemon.cabinet.controller.decision["limit_a"] == 0.0, timeout=1, what="0 A")
        seen["contactor"] = daemon.cabinet.outputs.contactor.value()
        await until(lambda: "can_bus_off" not in daemon.cabinet.status()["faults"], timeout=5, what="re-opened")
        await until(lambda: len(daemon.cabinet.bank.available()) == 4, timeout=6, what="modules back")

    code, _ = run(tmp_path, body)
    assert code == 0 and seen["contactor"] == 0
