"""drivers.can_dispatch: devices register their frames; filters, urgency, acks, unknown frames and decode
errors, on a python-can virtual bus with a module bank and a cable monitor."""

from __future__ import annotations

import asyncio
import itertools
import logging

import can
import pytest

from drivers.cable.monitor import CableMonitor
from drivers.can_dispatch import EXACT, CanDispatcher, any_urgent
from drivers.power_modules import infypower as infy
from drivers.power_modules.bank import ModuleBank
from drivers.readings import Reading
from hal.can import CanPort, CanSettings
from tests.conftest import until

_chan = itertools.count()
F0 = infy.CONTROLLER


def ext(aid: int, data: bytes = bytes(8)) -> can.Message:
    return can.Message(arbitration_id=aid, data=data, is_extended_id=True)


def devices(clock=None) -> tuple[CanDispatcher, ModuleBank, CableMonitor]:
    d = CanDispatcher("can0") if clock is None else CanDispatcher("can0", clock=clock)
    bank = ModuleBank(infy.InfyPowerCodec(), [1, 2], 3.0, lambda f: None, 50.0)
    cable = CableMonitor("cable", stale_after_s=0.3)
    bank.register(d)  # one line per device
    cable.register(d)
    return d, bank, cable


def cable_frame(cable: CableMonitor, counter: int = 0) -> tuple[int, bytes]:
    values = {"PinTempDcPlus": 45.0, "PinTempDcMinus": 44.0, "CoolantInletTemp": 25.0, "CoolantOutletTemp": 30.0}
    return cable.encode("CABLE_TEMPS", {**values, "RollingCounter": counter})


def test_bus_filters_come_from_the_registrations():
    d, bank, _ = devices()
    assert set(d.filters()) == {
        (0x18FF5101, EXACT, True),
        (0x18FF5201, EXACT, True),
        (*bank.codec.reply_mask(), True),
    }
    assert [r.device for r in d.registrations] == ["power modules", "cable cable"]


def test_a_registration_without_frames_is_refused():
    with pytest.raises(ValueError, match="no frame id"):
        CanDispatcher().register("nothing", lambda aid, data, now: [])


def test_both_device_kinds_on_a_virtual_bus_urgent_readings_acks_unknown_frames_and_decode_errors(caplog):
    d, bank, cable = devices()
    # a third device whose decoder has a bug: it must not stop the path for the others
    d.register("broken", lambda aid, data, now: [Reading("x", 1 / 0, "", now)], ids=[0x18FF7001])
    channel = f"test-dispatch-{next(_chan)}"
    peer = can.Bus(interface="virtual", channel=channel)
    port = CanPort(CanSettings(name="can0", interface="virtual", channel=channel, filters=d.filters()))
    bursts: list[list[Reading]] = []
    frames = [
        ext(*cable_frame(cable)),
        ext(infy.make_id(infy.CMD_STATUS, F0, 1), infy.encode_status({"fan_fault"}, 40)),  # alarms: urgent
        ext(infy.make_id(infy.CMD_READ_OUTPUT, F0, 2), infy.encode_output(400.0, 20.0)),  # values: not urgent
        ext(infy.make_id(infy.CMD_SET_OUTPUT, F0, 1), infy.encode_set_output(400.0, 20.0)),  # ack of our command
        ext(infy.make_id(infy.CMD_READ_OUTPUT, F0, 9), infy.encode_output(1.0, 1.0)),  # module not configured
        ext(infy.make_id(infy.CMD_STATUS, F0, 1, error=3)),  # module protocol, error reply: unknown
        ext(0x18FF7001),  # the broken decoder
        ext(0x0CFE6CEE),  # nobody registered it: filtered before the loop
        can.Message(arbitration_id=0x101, data=b"", is_extended_id=False),  # filtered too
        ext(*cable_frame(cable, 1)),
    ]

    async def main() -> None:
        port.start(asyncio.get_running_loop())
        task = asyncio.create_task(d.run(port, bursts.append))
        try:
            for m in frames:
                peer.send(m)
            await until(lambda: d.stats.frames == 8, timeout=5, what="every frame that passes the filters")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.ERROR, logger="drivers.can_dispatch"):
        try:
            asyncio.run(main())
        finally:
            port.close()
            peer.shutdown()
    readings = {r.signal: r for burst in bursts for r in burst}
    assert readings["cable.pin_dc_plus_c"].value == pytest.approx(45.0) and readings["cable.pin_dc_plus_c"].urgent
    assert readings["module.1.present"].urgent and readings["module.1.temperature_c"].value == 40.0
    assert readings["module.2.current_a"].value == 20.0 and not readings["module.2.current_a"].urgent
    assert bank.modules[1].alarms == {"fan_fault"} and bank.acks == 1
    assert port.stats.filtered == 2
    assert d.stats.unknown == 3  # the foreign module, the error reply, the broken frame; never the ack
    assert d.stats.decode_errors == 1 and "broken: frame 0x18FF7001" in caplog.text
    assert d.stats.per_device == {"power modules": 3, "cable cable": 2, "broken": 0}
    assert d.status()["urgent_bursts"] == sum(1 for b in bursts if any_urgent(b))


class ListPort:
    """A port whose queue already holds a burst; the next recv waits forever."""

    def __init__(self, messages: list[can.Message]) -> None:
        self.messages = messages
        self.empty = asyncio.Event()

    async def recv(self) -> can.Message:
        if not self.messages:
            self.empty.set()
            await asyncio.Event().wait()
        return self.messages.pop(0)

    def recv_nowait(self) -> can.Message | None:
        return self.messages.pop(0) if self.messages else None


def test_the_sink_is_called_once_per_drained_burst_and_says_whether_it_was_urgent():
    now = [50.0]
    d, _, cable = devices(clock=lambda: now[0])
    calls: list[list[Reading]] = []

    async def main(messages: list[can.Message]) -> None:
        port = ListPort(messages)
        task = asyncio.create_task(d.run(port, calls.append))
        await asyncio.wait_for(port.empty.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    output = ext(infy.make_id(infy.CMD_READ_OUTPUT, F0, 1), infy.encode_output(400.0, 20.0))
    asyncio.run(main([output, output]))
    assert len(calls) == 1 and len(calls[0]) == 6 and not any_urgent(calls[0])
    asyncio.run(main([output, ext(*cable_frame(cable)), ext(0x18FF5101, bytes(3))]))  # a short frame: invalid
    assert len(calls) == 2 and any_urgent(calls[1])
    assert all(r.t == 50.0 for r in calls[1])  # time from the dispatcher's clock
    asyncio.run(main([ext(0x18FF9999)]))  # nothing decoded: no call
    assert len(calls) == 2 and d.stats.unknown == 1


def test_periodic_hooks_report_staleness_and_send_spaced_set_points():
    now = [10.0]
    sent: list = []
    d = CanDispatcher("can0")
    bank = ModuleBank(infy.InfyPowerCodec(), [1, 2], 3.0, sent.append, 50.0, clock=lambda: now[0])
    cable = CableMonitor("cable", stale_after_s=0.3)
    bank.register(d)
    cable.register(d)
    fid, data = cable_frame(cable)
    d.dispatch(fid, data, 10.0)
    for a in (1, 2):
        bank.handle(infy.make_id(infy.CMD_STATUS, F0, a), infy.encode_status(set()), 10.0)
    bank.check(10.0)
    sent.clear()
    now[0] = 10.01
    bank.apply(True, 400.0, 60.0)  # a raise inside the command spacing: waits for the periodic hook
    assert sent == [] and bank.pending() == 2
    assert d.periodic(10.2) == []  # spacing over: the set-points go out; the cable is still fresh
    assert len(sent) == 2 and bank.pending() == 2  # one step per spacing: current first, then on
    stale = d.periodic(10.31)
    assert len(sent) == 4 and bank.pending() == 0
    assert {r.quality for r in stale} == {"stale"} and "cable.pin_dc_plus_c" in {r.signal for r in stale}
