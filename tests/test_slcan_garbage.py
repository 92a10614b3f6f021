"""Issue 17 item 9: a malformed slcan line is a dropped, counted frame, not a bus-off.

python-can's slcan interface on a pseudo-terminal; the test writes the adapter's side (the pty master)
itself, so it decides exactly which line comes between which good frames.
"""

from __future__ import annotations

import asyncio
import os

import can
import pytest

from edge.render import can_lines
from hal import can as hcan
from hal.can import CanPort, CanSettings
from tests.conftest import until

GARBAGE = [
    b"T18FF50E58ZZ00000000000000\r",  # data is not hex
    b"T18FF50E5\r",  # no length digit
    b"T18FF50E5X0011223344556677\r",  # length is not a digit
    b"tZZZ0\r",  # standard frame with a non-hex id
    b"T18FF\r",  # the line ends inside the id (IndexError)
]


def frame_line(aid: int, data: bytes) -> bytes:
    return f"T{aid:08X}{len(data)}{data.hex().upper()}\r".encode()


@pytest.fixture
def pty_port():
    master, slave = os.openpty()
    path = os.ttyname(slave)
    port = CanPort(
        CanSettings(
            name="pty",
            interface="slcan",
            channel=path,
            extra={"sleep_after_open": 0.0},
            reopen_min_s=0.05,
            rx_error_limit=len(GARBAGE) + 1,
        )
    )
    try:
        yield port, master
    finally:
        port.close()
        for fd in (master, slave):
            try:
                os.close(fd)
            except OSError:
                pass


async def _received(port: CanPort, n: int) -> list[can.Message]:
    out: list[can.Message] = []
    while len(out) < n:
        out.append(await asyncio.wait_for(port.recv(), 5))
    return out


def test_malformed_slcan_lines_are_counted_and_dropped_and_the_bus_stays_up(pty_port):
    port, master = pty_port
    health: list[tuple[str, str]] = []
    port.on_health = lambda p, old, new, why: health.append((new, why))

    async def main() -> list[can.Message]:
        port.start(asyncio.get_running_loop())
        sup = asyncio.create_task(port.supervise(period_s=0.01))
        try:
            os.write(master, frame_line(0x18FF5001, b"\x01"))
            got = await _received(port, 1)
            for i, garbage in enumerate(GARBAGE):
                os.write(master, garbage + frame_line(0x18FF5002 + i, bytes([i])))
                got += await _received(port, 1)
                await until(lambda i=i: port.stats.rx_errors == i + 1, timeout=5, what="malformed line counted")
            for _ in range(20):  # supervision polls: nothing may turn the malformed lines into a bus-off
                port.check()
                await asyncio.sleep(0.01)
            return got
        finally:
            sup.cancel()
            await asyncio.gather(sup, return_exceptions=True)

    got = asyncio.run(main())
    assert [m.arbitration_id for m in got] == [0x18FF5001] + [0x18FF5002 + i for i in range(len(GARBAGE))]
    assert [bytes(m.data) for m in got[1:]] == [bytes([i]) for i in range(len(GARBAGE))]
    assert port.stats.rx_errors == len(GARBAGE) and port.stats.rx == 1 + len(GARBAGE)
    assert port.health == hcan.ACTIVE and health == []
    assert port.stats.bus_off == 0 and port.stats.reopens == 0
    assert port.status()["rx_errors"] == len(GARBAGE)


def test_a_run_of_malformed_lines_without_a_good_frame_is_bus_off_and_reopened(pty_port):
    # nothing but garbage (wrong adapter speed, a babbling adapter): the bus delivers nothing usable
    port, master = pty_port
    limit = port.settings.rx_error_limit

    async def main() -> str:
        port.start(asyncio.get_running_loop())
        sup = asyncio.create_task(port.supervise(period_s=0.01))
        try:
            os.write(master, b"".join(GARBAGE[0] for _ in range(limit - 1)))
            await until(lambda: port.stats.rx_errors == limit - 1, timeout=5, what="malformed lines counted")
            assert port.health == hcan.ACTIVE  # one short of the limit
            os.write(master, GARBAGE[0])
            await until(lambda: port.health == hcan.BUS_OFF, timeout=5, what="bus off")
            return port.health_reason
        finally:
            sup.cancel()
            await asyncio.gather(sup, return_exceptions=True)

    reason = asyncio.run(main())
    assert f"{limit} malformed frames in a row" in reason


def test_a_good_frame_resets_the_malformed_run(pty_port):
    port, master = pty_port
    limit = port.settings.rx_error_limit

    async def main() -> None:
        port.start(asyncio.get_running_loop())
        for k in range(3):
            os.write(master, b"".join(GARBAGE[0] for _ in range(limit - 1)) + frame_line(0x100 + k, b""))
            await _received(port, 1)
        await until(lambda: port.stats.rx_errors == 3 * (limit - 1), timeout=5, what="malformed lines counted")
        port.check()

    asyncio.run(main())
    assert port.health == hcan.ACTIVE and port.stats.bus_off == 0


def test_a_byte_that_is_not_text_is_recovered_by_the_reopen(pty_port):
    # python-can's slcan reader keeps an undecodable byte in its line buffer, so every later line fails
    # too: only a re-open (a new reader) gets the bus back. The malformed-run limit is what triggers it.
    port, master = pty_port
    limit = port.settings.rx_error_limit

    async def main() -> None:
        port.start(asyncio.get_running_loop())
        sup = asyncio.create_task(port.supervise(period_s=0.01))
        try:
            os.write(master, b"T\xff\r")
            for k in range(limit - 1):  # good frames, lost in the stuck reader: the run reaches the limit
                os.write(master, frame_line(0x200 + k, b""))
            await until(lambda: port.stats.reopens == 1 and port.health == hcan.ACTIVE, timeout=5, what="re-open")
            os.write(master, frame_line(0x300, b"\x03"))
            while (await asyncio.wait_for(port.recv(), 5)).arbitration_id != 0x300:
                pass
        finally:
            sup.cancel()
            await asyncio.gather(sup, return_exceptions=True)

    asyncio.run(main())
    assert port.stats.rx_errors == limit and port.stats.bus_off == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # python-can's dying thread
def test_the_serial_device_vanishing_is_bus_off_at_once(pty_port):
    port, master = pty_port

    async def main() -> str:
        port.start(asyncio.get_running_loop())
        os.write(master, frame_line(0x18FF5001, b"\x01"))
        await _received(port, 1)
        os.close(master)  # the adapter is gone: reads on the tty fail (EIO)
        await until(lambda: (port.check(), port.health == hcan.BUS_OFF)[1], timeout=5, what="bus off")
        return port.health_reason

    reason = asyncio.run(main())
    assert "receive failed" in reason and port.stats.rx_errors == 0


def test_edge_status_shows_the_malformed_frame_count():
    st = {"can": {"can0": {"health": "active", "rx_errors": 3, "error_frames": 0}}}
    assert "can0 active malformed frames 3" in " ".join(can_lines(st))
