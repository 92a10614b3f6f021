"""hal.can.CanPort transmit path: the caller never waits for the bus; off / 0 A frames jump the queue;
a bus that never acknowledges is reported as bus off, never as an exception or a slow control tick."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import threading
import time

import can

from drivers.power_modules import infypower as infy
from drivers.power_modules.bank import ModuleBank
from drivers.power_modules.codec import Frame
from hal import can as hcan
from hal.can import CanPort, CanSettings
from tests.conftest import until, wait_for

_chan = itertools.count()


def ext(aid: int) -> can.Message:
    return can.Message(arbitration_id=aid, data=bytes(8), is_extended_id=True)


class NeverAckBus(can.BusABC):
    """A bus nobody acknowledges: every send waits for its whole timeout, then fails, like a controller
    whose transmit queue is full (modules unplugged, no ACK)."""

    def __init__(self) -> None:
        super().__init__(channel="never-ack")
        self.attempts = 0
        self._closed = threading.Event()

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        self.attempts += 1
        self._closed.wait(timeout or 0.0)
        raise can.CanOperationError("transmit buffer full (no ACK)")

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        self._closed.wait(timeout or 0.0)
        return None, False

    def shutdown(self) -> None:
        self._closed.set()
        super().shutdown()


class GateBus(can.BusABC):
    """Records what is sent; the first send blocks until ``release`` (the transmit thread is busy)."""

    def __init__(self) -> None:
        super().__init__(channel="gate")
        self.sent: list[int] = []
        self.busy = threading.Event()
        self.release = threading.Event()

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        self.busy.set()
        self.release.wait(5.0)
        self.sent.append(msg.arbitration_id)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        time.sleep(min(timeout or 0.01, 0.01))
        return None, False


def present_bank(send, addresses=(1, 2, 3, 4)) -> ModuleBank:
    bank = ModuleBank(infy.InfyPowerCodec(), list(addresses), 5.0, send, 50.0)
    now = time.monotonic()
    for a in addresses:
        bank.handle(infy.make_id(infy.CMD_STATUS, infy.CONTROLLER, a), infy.encode_status(set()), now)
    bank.check(now)
    assert bank.available() == list(addresses)
    return bank


def test_a_bus_that_never_acknowledges_does_not_slow_the_tick_and_is_reported_as_bus_off():
    bus = NeverAckBus()
    changes: list[tuple[str, str, str, int]] = []
    port = CanPort(
        CanSettings(name="modules", interface="virtual", channel="never-ack", send_error_limit=5, tx_queue=16),
        bus=bus,
        on_health=lambda p, old, new, why: changes.append((old, new, why, threading.get_ident())),
    )

    def send(frame: Frame) -> None:
        port.send(ext(frame.arbitration_id), priority=frame.priority)

    bank = present_bank(send)
    tick_s, ticks = 0.010, 100

    async def main() -> tuple[list[float], int]:
        loop_thread = threading.get_ident()
        port.start(asyncio.get_running_loop())
        periods_ms: list[float] = []
        last = time.perf_counter()
        for i in range(ticks):
            await asyncio.sleep(tick_s)
            now = time.perf_counter()
            periods_ms.append((now - last) * 1000.0)
            last = now
            # every tick sends: a reduction (priority) or a raise, the spaced set-points, and the polls
            bank.apply(True, 400.0, 40.0 if i % 2 else 160.0)
            bank.flush(time.monotonic())
            for addr in (1, 2, 3, 4):
                for frame in bank.poll_frames(addr):
                    send(frame)
        await until(lambda: port.health == hcan.BUS_OFF, timeout=5, what="the loss reported as bus off")
        return periods_ms, loop_thread

    try:
        periods_ms, loop_thread = asyncio.run(main())
    finally:
        port.close(drain_s=0.2)
    # On the old path each tick waited 50 ms per frame (4 modules x 1-2 frames + 8 polls): >= 200 ms.
    # Generous margins for a loaded 2-core machine; the point is the order of magnitude.
    assert statistics.median(periods_ms) < 3 * tick_s * 1000, periods_ms
    assert max(periods_ms) < 150.0, periods_ms
    assert [(old, new) for old, new, _, _ in changes] == [(hcan.ACTIVE, hcan.BUS_OFF)]
    assert "5 sends failed in a row" in changes[0][2] and "no ACK" in changes[0][2]
    assert changes[0][3] == loop_thread  # the owner hears it on the loop thread, like an error frame
    assert port.stats.send_errors >= 5 and port.stats.tx == 0
    assert port.stats.tx_dropped > 0  # bounded: the queue did not grow with the ticks


def test_priority_frames_overtake_queued_ones_and_drop_stale_frames_with_their_id():
    bus = GateBus()
    port = CanPort(CanSettings(name="t", interface="virtual", channel="gate"), bus=bus)
    try:
        port.send(ext(0x99))  # in flight: the thread is inside bus.send
        assert bus.busy.wait(5)
        port.send(ext(0x1))  # a raise for module 1 ...
        port.send(ext(0x2))
        port.send(ext(0x1))
        port.send(ext(0x1), priority=True)  # ... overtaken by its reduction
        assert port.tx_queued() == 2 and port.stats.tx_superseded == 2
        bus.release.set()
        wait_for(lambda: port.stats.tx == 3, timeout=5, what="the queue sent")
        assert bus.sent == [0x99, 0x1, 0x2]
    finally:
        bus.release.set()
        port.close()


def test_close_sends_what_is_queued_so_the_fail_safe_off_frames_go_out():
    channel = f"test-tx-{next(_chan)}"
    peer = can.Bus(interface="virtual", channel=channel)
    port = CanPort(CanSettings(name="t", interface="virtual", channel=channel))
    try:
        bank = present_bank(lambda f: port.send(ext(f.arbitration_id), priority=f.priority), addresses=(1,))
        # the module found: its set-points and the capabilities read
        wait_for(lambda: port.tx_queued() == 0 and port.stats.tx == 3, timeout=5, what="the first frames sent")
        assert all(peer.recv(timeout=2.0) is not None for _ in range(3))
        bank.all_off()  # the group off: set-point 0 A and output off
        port.close()
        got = [peer.recv(timeout=2.0) for _ in range(2)]
        assert [m.arbitration_id for m in got if m is not None] == [
            infy.make_id(infy.CMD_SET_OUTPUT, infy.BROADCAST, device=infy.DEVICE_GROUP),
            infy.make_id(infy.CMD_ON_OFF, infy.BROADCAST, device=infy.DEVICE_GROUP),
        ]
    finally:
        peer.shutdown()


def test_the_port_measures_time_with_the_injected_clock():
    now = [1000.0]
    port = CanPort(
        CanSettings(name="t", interface="socketcan", channel="edge-test-no-such-can8", reopen_min_s=0.5),
        clock=lambda: now[0],
    )
    try:
        assert port.health == hcan.BUS_OFF  # cannot be opened: re-open due after the backoff, on our clock
        assert not port.reopen_due(1000.4)
        assert port.reopen_due(1000.5)
        now[0] = 2000.0
        port.reopen()  # fails again: the next try is planned from the injected clock, doubled
        assert not port.reopen_due(2000.4) and port.reopen_due(2000.5)
    finally:
        port.close()


def test_with_nothing_queued_a_frame_goes_out_in_place_and_queued_frames_keep_their_order():
    channel = f"tx-direct-{next(_chan)}"
    peer = can.Bus(interface="virtual", channel=channel)
    port = CanPort(CanSettings(name="t", interface="virtual", channel=channel))
    try:
        assert port.send(ext(0x100)) is True
        # on the wire before send() returned: no hop to the transmit thread (bench.can: p99 0.08 ms, was 5 ms)
        got = peer.recv(timeout=0)
        assert got is not None and got.arbitration_id == 0x100
        assert port._tx_thread is None and port.stats.tx == 1
        # with a frame queued or held by the transmit thread, a new one must queue behind it (order kept)
        with port._tx_cond:
            port._tx_normal.append(ext(0x101))
        assert port._send_now(ext(0x102)) is False
        with port._tx_cond:
            port._tx_normal.clear()
            port._tx_busy = True
        assert port._send_now(ext(0x102)) is False
        with port._tx_cond:
            port._tx_busy = False
        assert peer.recv(timeout=0) is None
    finally:
        port.close()
        peer.shutdown()
