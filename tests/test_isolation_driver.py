"""The IMD driver against the simulated IMD behind a real pymodbus server (loopback TCP and RTU on a pty)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from drivers.isolation import registers as regs
from drivers.isolation.imd import FAULT, OK, SELF_TEST, ImdDriver
from drivers.meters.reader import MeterCommError, MeterTimeout, ModbusLine
from edge.sim.imd import SimImd, serial_server, tcp_server
from edge.sim.serial_link import SerialLink
from hal.serial import SerialSettings
from tests.conftest import free_port, until


def test_channel_codec_round_trip_and_flags() -> None:
    words = regs.encode_channel(123456.0, regs.UNIT_OHM, "alarm", "none", "exact", 71)
    ch = regs.decode_channel(words)
    assert (ch.value, ch.alarm, ch.test, ch.unit, ch.range, ch.description) == (
        123456.0,
        "alarm",
        "none",
        2,
        "exact",
        71,
    )
    assert ch.valid
    # device error code with test bits set is not a device error (the device's own rule)
    bad = regs.decode_channel([0, 0, (0x02 | 0x80) << 8 | 0xC2, 0])
    assert bad.alarm == "reserved" and bad.test == "external" and not bad.valid
    with pytest.raises(ValueError):
        regs.decode_channel([0, 0, 0])
    assert regs.decode_ascii(regs.encode_ascii("isoCHA425HV", 10)) == "isoCHA425HV"


async def _with_server(sim: SimImd, tcp: bool, body) -> None:  # type: ignore[no-untyped-def]
    link = None
    if tcp:
        port = free_port()
        server = tcp_server([sim], "127.0.0.1", port)
        line = ModbusLine.tcp("127.0.0.1", port, name="tcp")
    else:
        link = SerialLink(None)
        link.start()
        server = serial_server([sim], link.device_path, 19200)
        line = ModbusLine.serial(SerialSettings(link.host_path, 19200), name="rs485")
    task = asyncio.ensure_future(server.serve_forever())
    drv = ImdDriver(line, sim.device_id, timeout_s=0.5, self_test_timeout_s=5.0)

    async def answers() -> bool:
        with contextlib.suppress(MeterCommError):
            await drv.read()
            return True
        return False

    try:
        await until(answers, 5.0, "the simulated IMD to answer")
        await body(drv)
    finally:
        line.close()
        await server.shutdown()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if link is not None:
            link.close()


@pytest.mark.parametrize("tcp", [True, False], ids=["tcp", "rtu"])
def test_driver_reads_resistance_and_runs_the_self_test(tcp: bool) -> None:
    sim = SimImd(device_id=3, resistance_ohm=2.5e6, voltage_v=lambda: 512.0, self_test_s=0.3)

    async def body(drv: ImdDriver) -> None:
        r = await drv.read()
        assert (r.resistance_ohm, r.voltage_v, r.status, r.self_test) == (2.5e6, 512.0, OK, None)
        name, fw = await drv.identify()
        assert (name, fw) == ("isoCHA425HV", 510)
        await drv.start_self_test()
        assert sim.self_tests == 1
        r = await drv.read()
        assert r.status == SELF_TEST and r.resistance_ohm is None  # no insulation value during the test

        async def passed() -> bool:
            await drv.read()
            return drv.self_test == "passed"

        await until(passed, 5.0, "self-test passed")
        sim.resistance_ohm = 40e3
        assert (await drv.read()).resistance_ohm == 40e3
        await drv.set_measuring(False)
        assert sim.measuring is False and (await drv.read()).resistance_ohm is None
        await drv.set_measuring(True)

    asyncio.run(_with_server(sim, tcp, body))


def test_failed_self_test_and_silent_device() -> None:
    sim = SimImd(device_id=3, self_test_s=0.2)
    sim.self_test_fails = True

    async def body(drv: ImdDriver) -> None:
        await drv.start_self_test()

        async def done() -> bool:
            await drv.read()
            return drv.self_test == "failed"

        await until(done, 5.0, "self-test failed")
        assert (await drv.read()).status == FAULT
        sim.silent = True
        with pytest.raises(MeterTimeout):
            await drv.read()

    asyncio.run(_with_server(sim, True, body))


def test_the_link_carries_the_cores_commands_and_reports_a_silent_imd() -> None:
    from edge.config import parse_config
    from edge.isolation_link import IsolationLink
    from tests.conftest import REPO

    cfg = parse_config((REPO / "edge" / "sim" / "sim.toml").read_text())
    sim = SimImd(device_id=3, resistance_ohm=2e6, voltage_v=lambda: 470.0, self_test_s=0.2)
    sim.measuring = False
    events: list[tuple[str, str]] = []

    async def body(drv: ImdDriver) -> None:
        link = IsolationLink(cfg, {"rs485-grid": drv.line}, lambda kind, name, _d: events.append((kind, name)))
        mon = link.by_connector["1"]
        assert link.snapshot("1", 0.0)["status"] == "stale" and link.snapshot("9", 0.0) is None
        mon.driver.self_test = "passed"  # left from the last session
        link.command("1", {"measure": True, "self_test": True})
        assert link.snapshot("1", 0.0)["self_test"] is None  # not this session's result
        await link.poll_once(mon)
        assert sim.measuring and sim.self_tests == 1 and (3026, 1) in sim.writes
        link.command("1", {"measure": True, "self_test": True})  # still asked: no second test
        await until(lambda: _polled(link, mon, "passed"), 5.0, "self-test passed through the link")
        assert sim.self_tests == 1
        snap = link.snapshot("1", 0.0)
        assert (snap["ohm"], snap["status"], snap["voltage_v"]) == (2e6, "ok", 470.0)
        link.command("1", {"measure": False, "self_test": False})
        await link.poll_once(mon)
        assert not sim.measuring and link.snapshot("1", 0.0)["ohm"] is None
        sim.silent = True
        await link.poll_once(mon)
        assert link.snapshot("1", 0.0)["status"] == "stale" and link.status["imd1"]["errors"] == 1
        assert events == [("isolation_monitor_ok", "imd1"), ("isolation_monitor_lost", "imd1")]

    asyncio.run(_with_server(sim, True, body))


async def _polled(link, mon, result: str) -> bool:  # type: ignore[no-untyped-def]
    await link.poll_once(mon)
    return mon.driver.self_test == result
