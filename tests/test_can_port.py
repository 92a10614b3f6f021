"""hal.can.CanPort on python-can virtual buses: bounded queue, error frames, bus health, re-open, filters."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import tracemalloc

import can
import pytest

from hal import can as hcan
from hal.can import CanPort, CanSettings
from tests.conftest import until, wait_for

_chan = itertools.count()


def settings(**kw) -> CanSettings:
    kw.setdefault("channel", f"test-port-{next(_chan)}")
    return CanSettings(name="t", interface="virtual", **kw)


def ext(aid: int, data: bytes = bytes(8)) -> can.Message:
    return can.Message(arbitration_id=aid, data=data, is_extended_id=True)


def error_frame(cls: int, data: bytes = bytes(8)) -> can.Message:
    return can.Message(arbitration_id=cls, data=data, is_error_frame=True, is_extended_id=False)


@pytest.mark.parametrize(
    ("cls", "data", "health"),
    [
        (hcan.CAN_ERR_BUSOFF, bytes(8), hcan.BUS_OFF),
        (hcan.CAN_ERR_CRTL, bytes([0, hcan.CAN_ERR_CRTL_TX_PASSIVE]) + bytes(6), hcan.PASSIVE),
        (hcan.CAN_ERR_CRTL, bytes([0, hcan.CAN_ERR_CRTL_RX_PASSIVE]) + bytes(6), hcan.PASSIVE),
        (hcan.CAN_ERR_CRTL, bytes([0, hcan.CAN_ERR_CRTL_ACTIVE]) + bytes(6), hcan.ACTIVE),
        (hcan.CAN_ERR_CRTL, bytes([0, hcan.CAN_ERR_CRTL_RX_WARNING]) + bytes(6), None),
        (hcan.CAN_ERR_RESTARTED, bytes(8), hcan.ACTIVE),
        (hcan.CAN_ERR_PROT | hcan.CAN_ERR_BUSERROR, bytes(8), None),
        (hcan.CAN_ERR_ACK, bytes(8), None),
        (hcan.CAN_ERR_CRTL, b"", None),  # short error frame: no controller byte, no crash
    ],
)
def test_error_frames_are_classified_by_the_linux_error_h_bits(cls, data, health):
    new, desc = hcan.classify_error_frame(cls, data)
    assert new == health and desc


def test_frames_reach_the_loop_and_error_frames_do_not():
    s = settings()
    peer = can.Bus(interface="virtual", channel=s.channel)
    port = CanPort(s)

    async def main():
        port.start(asyncio.get_running_loop())
        peer.send(ext(0x123))
        peer.send(error_frame(hcan.CAN_ERR_PROT))
        peer.send(ext(0x456))
        got = [await asyncio.wait_for(port.recv(), 2), await asyncio.wait_for(port.recv(), 2)]
        await until(lambda: port.stats.error_frames == 1)
        return [m.arbitration_id for m in got]

    try:
        assert asyncio.run(main()) == [0x123, 0x456]
        assert port.recv_nowait() is None and port.health == hcan.ACTIVE
    finally:
        port.close()
        peer.shutdown()


def test_flood_at_full_rate_is_bounded_by_the_queue_and_counted_as_dropped():
    s = settings(rx_queue=256)
    peer = can.Bus(interface="virtual", channel=s.channel)
    port = CanPort(s)
    n = 20_000
    sent = threading.Event()

    def flood():
        msg = ext(0x18FF5101)
        for _ in range(n):
            peer.send(msg)
        sent.set()

    async def main():
        port.start(asyncio.get_running_loop())
        await asyncio.sleep(0.05)
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        t = threading.Thread(target=flood)
        t.start()
        # nobody drains the queue: the worst case for memory
        await until(lambda: sent.is_set() and port.stats.rx == n, timeout=30)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        t.join()
        growth = sum(st.size_diff for st in after.compare_to(before, "filename"))
        return growth

    try:
        growth = asyncio.run(main())
        assert port.queued() == 256
        assert port.stats.dropped == n - 256
        assert growth < 1_000_000, f"memory grew by {growth} bytes for a {n}-frame flood"
    finally:
        port.close()
        peer.shutdown()


def test_bus_off_error_frame_reports_once_and_the_bus_is_reopened_with_backoff():
    s = settings(reopen_min_s=0.2)
    peer = can.Bus(interface="virtual", channel=s.channel)
    changes: list[tuple[str, str]] = []
    port = CanPort(s, on_health=lambda p, old, new, why: changes.append((old, new)))

    async def main():
        port.start(asyncio.get_running_loop())
        sup = asyncio.create_task(port.supervise(period_s=0.02))
        peer.send(error_frame(hcan.CAN_ERR_BUSOFF))
        peer.send(error_frame(hcan.CAN_ERR_BUSOFF))  # a second report of the same state: no new event
        await until(lambda: port.health == hcan.BUS_OFF)
        t_off = time.monotonic()
        await until(lambda: port.health == hcan.ACTIVE, timeout=3)
        waited = time.monotonic() - t_off
        # the re-opened bus receives again
        peer.send(ext(0x77))
        msg = await asyncio.wait_for(port.recv(), 2)
        sup.cancel()
        return waited, msg.arbitration_id

    try:
        waited, aid = asyncio.run(main())
        assert changes == [(hcan.ACTIVE, hcan.BUS_OFF), (hcan.BUS_OFF, hcan.ACTIVE)]
        assert 0.15 <= waited < 1.5 and aid == 0x77
        assert port.stats.bus_off == 1 and port.stats.reopens == 1
    finally:
        port.close()
        peer.shutdown()


def test_error_passive_and_back_to_active():
    s = settings()
    peer = can.Bus(interface="virtual", channel=s.channel)
    port = CanPort(s)

    async def main():
        port.start(asyncio.get_running_loop())
        peer.send(error_frame(hcan.CAN_ERR_CRTL, bytes([0, hcan.CAN_ERR_CRTL_TX_PASSIVE]) + bytes(6)))
        await until(lambda: port.health == hcan.PASSIVE)
        peer.send(error_frame(hcan.CAN_ERR_CRTL, bytes([0, hcan.CAN_ERR_CRTL_ACTIVE]) + bytes(6)))
        await until(lambda: port.health == hcan.ACTIVE)

    try:
        asyncio.run(main())
        assert port.stats.error_passive == 1
    finally:
        port.close()
        peer.shutdown()


def test_failing_sends_are_counted_not_raised_and_enough_of_them_mean_bus_off():
    s = settings(send_error_limit=3, reopen_min_s=0.1)
    changes: list[tuple[str, str, str]] = []
    port = CanPort(s, on_health=lambda p, old, new, why: changes.append((old, new, why)))
    port.bus.shutdown()  # the adapter went away underneath us
    for _ in range(3):
        assert port.send(ext(0x1)) is True  # queued: the caller never waits for the bus
    wait_for(lambda: port.stats.send_errors == 3, timeout=5, what="three failed sends")
    wait_for(lambda: port.health == hcan.BUS_OFF, timeout=5, what="bus off")
    assert changes == [(hcan.ACTIVE, hcan.BUS_OFF, changes[0][2])] and "3 sends failed in a row" in changes[0][2]
    port.reopen()
    port.send(ext(0x1))
    wait_for(lambda: port.stats.tx == 1, timeout=5, what="a send after the re-open")
    port.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # python-can's dying thread
def test_a_dead_receive_thread_is_seen_as_bus_off_and_recovered():
    s = settings(reopen_min_s=0.1)
    port = CanPort(s)

    async def main():
        port.start(asyncio.get_running_loop())
        sup = asyncio.create_task(port.supervise(period_s=0.02))
        port.bus.shutdown()  # recv now raises in the Notifier thread: it dies
        await until(lambda: port.health == hcan.BUS_OFF)
        reason = port.health_reason
        await until(lambda: port.health == hcan.ACTIVE, timeout=3)
        sup.cancel()
        return reason

    try:
        assert "receive failed" in asyncio.run(main())
    finally:
        port.close()


def test_software_filters_keep_other_ids_out_of_the_queue_on_virtual_buses():
    s = settings(filters=((0x18FF5101, 0x1FFFFFFF, True), (0xF000, 0xFF00, True)))
    peer = can.Bus(interface="virtual", channel=s.channel)
    port = CanPort(s)

    async def main():
        port.start(asyncio.get_running_loop())
        for aid in (0x18FF5101, 0x18FF5102, 0x029C01F0, 0x0283F001, 0x101):
            peer.send(ext(aid))
        peer.send(can.Message(arbitration_id=0x101, data=b"", is_extended_id=False))
        peer.send(error_frame(hcan.CAN_ERR_BUSOFF))
        await until(lambda: port.stats.filtered + port.stats.rx + port.stats.error_frames == 7)
        out = []
        while (m := port.recv_nowait()) is not None:
            out.append(m.arbitration_id)
        return out

    try:
        assert asyncio.run(main()) == [0x18FF5101, 0x0283F001]
        assert port.stats.filtered == 4 and port.stats.error_frames == 1  # error frames always pass
    finally:
        port.close()
        peer.shutdown()


def test_socketcan_gets_kernel_filters_and_others_do_not(monkeypatch):
    seen = {}

    def fake_bus(**kw):
        seen.update(kw)
        return "bus"

    monkeypatch.setattr(can, "Bus", fake_bus)
    f = ((0x100, 0x700, False),)
    hcan.open_bus(CanSettings(name="x", interface="socketcan", channel="can0", filters=f))
    assert seen["can_filters"] == [{"can_id": 0x100, "can_mask": 0x700, "extended": False}]
    seen.clear()
    hcan.open_bus(CanSettings(name="x", interface="slcan", channel="/dev/ttyACM0", filters=f))
    assert "can_filters" not in seen and seen["bitrate"] == 125_000


def test_a_bus_that_cannot_be_opened_starts_closed_as_bus_off_and_is_retried():
    # socketcan on an interface that does not exist (or a kernel without AF_CAN): a real open failure
    port = CanPort(
        CanSettings(
            name="t", interface="socketcan", channel="edge-test-no-such-can9", reopen_min_s=0.05, reopen_max_s=0.2
        )
    )
    assert port.health == hcan.BUS_OFF and "cannot open socketcan" in port.health_reason
    assert port.send(can.Message(arbitration_id=1, data=b"", is_extended_id=True)) is False
    assert port.stats.tx_dropped == 1

    async def main() -> None:
        port.start(asyncio.get_running_loop())
        task = asyncio.create_task(port.supervise(period_s=0.02))
        await until(lambda: port.stats.reopens >= 2, timeout=3, what="re-open attempts")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert port.health == hcan.BUS_OFF  # still closed: nothing to open
    port.close()
