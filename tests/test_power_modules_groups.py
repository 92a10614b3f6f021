"""ModuleBank on a python-can virtual bus against modules written from the protocol facts (not from our
codecs): capabilities enforced, one connector's group commanded without touching the other's, off per
group, acknowledgements counted as such.

The peers below build and read frames with struct from the published layouts; the bank, its dispatcher
and the codecs are the real ones. Delivery is synchronous: python-can's virtual bus puts a sent frame into
the other bus objects' queues during ``send``, so ``recv(timeout=0)`` sees it at once.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import can
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from drivers.can_dispatch import CanDispatcher
from drivers.power_modules.bank import ModuleBank
from drivers.power_modules.registry import make_codec

_chan = itertools.count()
CONTROLLER = 0xF0


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class InfyModules:
    """InfyPower REG V1.13 modules: id bits 28-26 error, 25-22 device (0x0A one, 0x0B group), 21-16 command,
    15-8 destination, 7-0 source. They answer reads (8 zero bytes) and acknowledge set commands with the
    command's id from their address to the controller."""

    def __init__(self, bus: can.BusABC, caps: dict[int, tuple[int, int, int, int]]) -> None:
        self.bus = bus
        self.caps = caps  # address -> (Vmax V, Vmin V, Imax x0.1 A, power x10 W) as the module reports them
        self.set_points: dict[int, tuple[float, float]] = {a: (0.0, 0.0) for a in caps}
        self.on = dict.fromkeys(caps, False)
        self.set_frames: list[tuple[int, float, float]] = []  # every set V/I a module received
        self.refuse: set[int] = set()  # addresses that answer set commands with error 3 (data invalid)
        self.acks_sent = 0

    def _reply(self, command: int, source: int, data: bytes, error: int = 0) -> None:
        aid = (error << 26) | (0x0A << 22) | (command << 16) | (CONTROLLER << 8) | source
        self.bus.send(can.Message(arbitration_id=aid, data=data, is_extended_id=True))

    def serve(self) -> None:
        while (msg := self.bus.recv(timeout=0)) is not None:
            device, command = (msg.arbitration_id >> 22) & 0xF, (msg.arbitration_id >> 16) & 0x3F
            dest = (msg.arbitration_id >> 8) & 0xFF
            targets = list(self.caps) if device == 0x0B else [dest] if dest in self.caps else []
            for addr in targets:
                self._handle(addr, command, bytes(msg.data))

    def _handle(self, addr: int, command: int, data: bytes) -> None:
        if command in (0x1C, 0x1A):
            if addr in self.refuse:
                self._reply(command, addr, data, error=3)
                return
            if command == 0x1C:
                mv, ma = struct.unpack(">II", data)
                self.set_points[addr] = (mv / 1000, ma / 1000)
                self.set_frames.append((addr, mv / 1000, ma / 1000))
            else:
                self.on[addr] = data[0] == 0x00
            self._reply(command, addr, data)
            self.acks_sent += 1
        elif command == 0x03:
            v, a = self.set_points[addr] if self.on[addr] else (0.0, 0.0)
            self._reply(command, addr, struct.pack(">ff", v, a))
        elif command == 0x04:
            self._reply(command, addr, bytes(8))
        elif command == 0x0A:
            self._reply(command, addr, struct.pack(">HHHH", *self.caps[addr]))


class UUGreenModules:
    """UUGreen modules: id bits 28-25 protocol 1, 24-21 monitor 1, 20-14 module (0 = all); data byte 0 =
    group << 4 | type (0 set, 1 set response, 2 read, 3 read response), byte 1 command, bytes 4-7 u32 BE."""

    def __init__(self, bus: can.BusABC, addresses: list[int]) -> None:
        self.bus = bus
        self.addresses = addresses
        self.acks_sent = 0

    def serve(self) -> None:
        while (msg := self.bus.recv(timeout=0)) is not None:
            module, kind, command = (msg.arbitration_id >> 14) & 0x7F, msg.data[0] & 0xF, msg.data[1]
            for addr in self.addresses if module == 0 else [module] if module in self.addresses else []:
                aid = (1 << 25) | (1 << 21) | (addr << 14)
                if kind == 0:  # set: the set response echoes command and value
                    data = bytes([0x01, command, 0, 0]) + bytes(msg.data[4:8])
                    self.acks_sent += 1
                else:  # read: a read response with a value
                    data = bytes([0x03, command, 0, 0]) + struct.pack(">I", 0)
                self.bus.send(can.Message(arbitration_id=aid, data=data, is_extended_id=True))


class Cabinet:
    """The bank and its dispatcher on one end of a virtual bus."""

    def __init__(self, protocol: str, addresses: list[int], channel: str, max_a: float, max_v: float) -> None:
        self.clock = Clock()
        self.bus = can.Bus(interface="virtual", channel=channel)
        self.dispatcher = CanDispatcher("can0", clock=self.clock)
        self.bank = ModuleBank(
            make_codec(protocol),
            addresses,
            3.0,
            lambda f: self.bus.send(can.Message(arbitration_id=f.arbitration_id, data=f.data, is_extended_id=True)),
            max_a,
            poll_period_s=1.0,
            clock=self.clock,
            max_voltage_v=max_v,
        )
        self.bank.register(self.dispatcher)
        self.modules: InfyModules | UUGreenModules

    def pump(self) -> None:
        """Until the bus is quiet: the modules answer what we sent, we decode what they sent."""
        for _ in range(20):
            self.modules.serve()
            got = False
            while (msg := self.bus.recv(timeout=0)) is not None:
                self.dispatcher.dispatch_message(msg, self.clock.t)
                got = True
            if not got:
                return
        raise AssertionError("the bus did not go quiet")

    def poll_all(self) -> None:
        for addr in self.bank.polls_due(self.clock.t):
            for frame in self.bank.poll_frames(addr, self.clock.t):
                self.bus.send(can.Message(arbitration_id=frame.arbitration_id, data=frame.data, is_extended_id=True))
        self.pump()
        self.bank.check(self.clock.t)
        self.pump()

    def settle(self, steps: int = 4) -> None:
        """Let the command spacing pass a few times (set-points first, then on/off)."""
        for _ in range(steps):
            self.clock.t += 0.05
            self.bank.flush(self.clock.t)
            self.pump()


@contextmanager
def cabinet(
    protocol: str = "infypower",
    caps: dict[int, tuple[int, int, int, int]] | None = None,
    max_a: float = 150.0,
    max_v: float = 1000.0,
) -> Iterator[Cabinet]:
    caps = caps if caps is not None else {a: (1000, 150, 1000, 3000) for a in (1, 2)}  # 100 A, 30 kW
    channel = f"test-groups-{next(_chan)}"
    cab = Cabinet(protocol, sorted(caps), channel, max_a, max_v)
    peer = can.Bus(interface="virtual", channel=channel)
    cab.modules = InfyModules(peer, caps) if protocol == "infypower" else UUGreenModules(peer, sorted(caps))
    try:
        cab.poll_all()  # found: restored (0 A, off), capabilities asked for and answered
        yield cab
    finally:
        cab.bus.shutdown()
        peer.shutdown()


# -- capabilities ----------------------------------------------------------------------------------------


def test_a_module_reporting_100_a_and_30_kw_is_never_commanded_more_than_75_a_at_400_v():
    with cabinet(max_a=150.0) as cab:  # the config says 150 A per module, the modules say 100 A / 30 kW
        assert cab.bank.available() == [1, 2]
        assert cab.bank.modules[1].capabilities == {
            "max_voltage_v": 1000.0,
            "min_voltage_v": 150.0,
            "max_current_a": 100.0,
            "rated_power_w": 30000.0,
        }
        assert cab.bank.module_max_a([1, 2], 400.0) == 75.0  # 30 kW / 400 V
        assert cab.bank.module_max_a([1, 2]) == 100.0  # without a voltage: the reported current
        assert cab.bank.module_max_a([1, 2], 250.0) == 100.0  # 30 kW / 250 V = 120 A: the current rules
        for total in (100.0, 150.0, 300.0, 1000.0):  # up to far more than the modules can give
            cab.bank.apply(True, 400.0, total)
            cab.settle()
        assert cab.modules.set_frames and max(a for _, _, a in cab.modules.set_frames) == 75.0
        assert cab.modules.set_points == {1: (400.0, 75.0), 2: (400.0, 75.0)}
        cab.bank.apply(True, 800.0, 1000.0)  # 30 kW / 800 V = 37.5 A
        cab.settle()
        assert cab.modules.set_points == {1: (800.0, 37.5), 2: (800.0, 37.5)}
        assert cab.bank.setpoints_clamped == 0  # within the limits by construction: nothing to clamp
        assert cab.bank.capabilities() == {
            "max_current_a": 200.0,
            "max_power_w": 60000.0,
            "min_voltage_v": 150.0,
            "max_voltage_v": 1000.0,
        }


def test_capabilities_are_asked_for_when_a_module_appears_not_on_every_poll():
    with cabinet() as cab:
        asked = [f for f in cab.bank.poll_frames(1, cab.clock.t) if (f.arbitration_id >> 16) & 0x3F == 0x0A]
        assert asked == []  # answered: the next polls do not ask again
        for _ in range(10):
            cab.clock.t += 1.0
            cab.poll_all()
        assert cab.bank.modules[1].capabilities_t == 100.0  # once, at start-up
        # the module goes silent, is lost, comes back with other figures (replaced): asked again
        cab.modules.caps[1] = (750, 200, 500, 2000)  # 750 V, 200 V, 50 A, 20 kW
        cab.clock.t += 4.0
        cab.bank.check(cab.clock.t)
        assert cab.bank.modules[1].lost and cab.bank.modules[2].lost
        cab.poll_all()
        assert cab.bank.modules[1].capabilities["max_current_a"] == 50.0
        assert cab.bank.modules[1].capabilities_t == cab.clock.t
        assert cab.bank.module_max_a([1, 2], 400.0) == 50.0  # 20 kW / 400 V, the lowest of the two
        assert cab.bank.capabilities()["max_voltage_v"] == 750.0 and cab.bank.capabilities()["min_voltage_v"] == 200


def test_a_module_that_does_not_answer_the_capabilities_request_is_asked_again_every_few_seconds_only():
    bank = ModuleBank(make_codec("infypower"), [1], 3.0, lambda f: None, 50.0, poll_period_s=1.0, clock=Clock())
    t = 100.0
    bank.handle(0x0283F001, struct.pack(">ff", 0.0, 0.0), t)  # a read reply: present
    bank.check(t)  # found: asked once
    asks = []
    for step in range(1, 13):
        t = 100.0 + step
        if any((f.arbitration_id >> 16) & 0x3F == 0x0A for f in bank.poll_frames(1, t)):
            asks.append(t)
        bank.handle(0x0283F001, struct.pack(">ff", 0.0, 0.0), t)
    assert asks == [105.0, 110.0]  # IDENTIFY_RETRY_S = 5 s, not every 1 s poll
    assert bank.module_max_a() == 50.0  # nothing reported: the configured figure stands alone


def test_lower_capabilities_reported_while_running_reduce_the_set_point_at_once():
    sent = []
    clock = Clock()
    bank = ModuleBank(make_codec("infypower"), [1], 3.0, sent.append, 150.0, clock=clock)
    bank.handle(0x0283F001, struct.pack(">ff", 0.0, 0.0), clock.t)
    bank.check(clock.t)
    bank.apply(True, 400.0, 120.0)
    for _ in range(3):
        clock.t += 0.05
        bank.flush(clock.t)
    assert bank.modules[1].set_current_a == 120.0 and bank.modules[1].output_on
    sent.clear()
    bank.handle(0x028AF001, struct.pack(">HHHH", 1000, 150, 1000, 3000), clock.t)  # 100 A, 30 kW
    assert bank.modules[1].set_current_a == 75.0  # now, not at the next apply
    assert len(sent) == 1 and sent[0].priority and struct.unpack(">II", sent[0].data) == (400_000, 75_000)
    assert bank.setpoints_clamped == 0


def test_a_set_point_above_the_reported_voltage_range_is_clamped_counted_and_logged(caplog):
    caps = {1: (750, 200, 1000, 3000)}  # 750 V max, 200 V min
    with cabinet(caps=caps) as cab, caplog.at_level("ERROR", logger="drivers.power_modules.bank"):
        cab.bank.apply(True, 800.0, 30.0)
        cab.settle()
        assert cab.modules.set_points[1] == (750.0, 30.0)
        assert cab.bank.setpoints_clamped >= 1 and "800.0 V / 30.0 A to module 1" in caplog.text
        # below the module's minimum the voltage is never raised to it: the module sits out at 0 A
        before = cab.bank.setpoints_clamped
        cab.bank.apply(True, 100.0, 30.0)
        cab.settle()
        assert cab.modules.set_points[1] == (0.0, 0.0) and not cab.modules.on[1]
        assert cab.bank.setpoints_clamped == before + 1
        assert cab.bank.module_max_a([1], 100.0) == 0.0


def test_uugreen_reports_no_capabilities_and_the_configured_figures_stand():
    with cabinet("uugreen", caps={1: (0, 0, 0, 0), 2: (0, 0, 0, 0)}, max_a=40.0, max_v=950.0) as cab:
        assert cab.bank.available() == [1, 2]
        assert cab.bank.modules[1].capabilities == {}
        assert cab.bank.module_max_a(None, 800.0) == 40.0
        assert cab.bank.capabilities() == {
            "max_current_a": 80.0,
            "max_power_w": 2 * 40.0 * 950.0,
            "min_voltage_v": 0.0,
            "max_voltage_v": 950.0,
        }


def test_status_shows_each_modules_capabilities_and_the_total():
    with cabinet(caps={1: (1000, 150, 1000, 3000), 2: (1000, 150, 1000, 3000), 3: (1000, 150, 1000, 3000)}) as cab:
        cab.bank.force_lost(cab.clock.t, "test")  # nothing available: the total is 0
        assert cab.bank.capabilities([1, 2]) == dict.fromkeys(
            ("max_current_a", "max_power_w", "min_voltage_v", "max_voltage_v"), 0.0
        )
        assert cab.bank.module_max_a([1, 2], 400.0) == 0.0
        cab.clock.t += 0.5
        cab.poll_all()
        st = cab.bank.status()
        assert st["capabilities"]["3"]["rated_power_w"] == 30000.0
        assert st["capabilities_total"]["max_current_a"] == 300.0


# -- groups (one per connector) ----------------------------------------------------------------------------


def four_modules() -> dict[int, tuple[int, int, int, int]]:
    return {a: (1000, 150, 1000, 3000) for a in (1, 2, 3, 4)}


def test_apply_to_one_group_leaves_the_other_groups_set_points_untouched():
    with cabinet(caps=four_modules()) as cab:
        cab.bank.apply(True, 400.0, 100.0, [1, 2])
        cab.bank.apply(True, 800.0, 60.0, [3, 4])
        cab.settle()
        assert cab.modules.set_points == {1: (400.0, 50.0), 2: (400.0, 50.0), 3: (800.0, 30.0), 4: (800.0, 30.0)}
        assert all(cab.modules.on.values())
        cab.modules.set_frames.clear()
        for amps in (120.0, 40.0, 0.0, 10.0):  # raises, a reduction, zero and back
            cab.bank.apply(True, 450.0, amps, [1, 2])
            cab.settle()
        assert {a for a, _, _ in cab.modules.set_frames} == {1, 2}  # not one frame to 3 or 4
        assert cab.modules.set_points[3] == cab.modules.set_points[4] == (800.0, 30.0)
        assert cab.modules.on[3] and cab.modules.on[4]
        assert cab.modules.set_points[1] == cab.modules.set_points[2] == (450.0, 5.0)
        cab.bank.apply(False, 0.0, 0.0, [1, 2])
        cab.settle()
        assert not cab.modules.on[1] and not cab.modules.on[2] and cab.modules.on[3] and cab.modules.on[4]


def test_off_switches_only_the_groups_modules_off_with_per_module_priority_frames():
    with cabinet(caps=four_modules()) as cab:
        cab.bank.apply(True, 400.0, 100.0, [1, 2])
        cab.bank.apply(True, 800.0, 60.0, [3, 4])
        cab.settle()
        sent = []
        send = cab.bank._send
        cab.bank._send = lambda f: (sent.append(f), send(f))
        cab.bank.off([3, 4])
        cab.pump()
        assert sent and all(f.priority for f in sent)
        ids = {((f.arbitration_id >> 22) & 0xF, (f.arbitration_id >> 8) & 0xFF) for f in sent}
        assert ids == {(0x0A, 3), (0x0A, 4)}  # one module each, never the group/broadcast device
        assert not cab.modules.on[3] and not cab.modules.on[4] and cab.modules.set_points[3] == (0.0, 0.0)
        assert cab.modules.on[1] and cab.modules.on[2] and cab.modules.set_points[1] == (400.0, 50.0)
        assert [cab.bank.modules[a].output_on for a in (1, 2, 3, 4)] == [True, True, False, False]


def test_available_and_possibly_delivering_are_filtered_by_group():
    with cabinet(caps=four_modules()) as cab:
        cab.bank.apply(True, 400.0, 100.0, [1, 2])
        cab.bank.apply(True, 400.0, 100.0, [3, 4])
        cab.settle()
        cab.modules.caps.pop(3)  # module 3 goes silent while on
        cab.clock.t += 3.5
        cab.poll_all()
        assert cab.bank.available([1, 2]) == [1, 2] and cab.bank.available([3, 4]) == [4]
        assert cab.bank.possibly_delivering(cab.clock.t, [3, 4]) == [3]
        assert cab.bank.possibly_delivering(cab.clock.t, [1, 2]) == []
        assert cab.bank.available() == [1, 2, 4] and cab.bank.available([4, 4, 9]) == [4]
        # module 3 may still deliver its 50 A: module 4 does not take over its share on top
        cab.bank.apply(True, 400.0, 100.0, [3, 4])
        cab.settle()
        assert cab.modules.set_points[4] == (400.0, 50.0)
        assert cab.bank.module_max_a([3, 4], 400.0) == 75.0 and cab.bank.capabilities([3, 4])["max_current_a"] == 100


# -- acknowledgements --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["infypower", "uugreen"])
def test_the_modules_acknowledgements_of_a_ramp_are_counted_as_acks_never_as_unknown_frames(protocol):
    with cabinet(protocol, caps={a: (1000, 150, 1000, 3000) for a in (1, 2)}) as cab:
        for amps in range(0, 200, 5):  # a ramp: a set-point per step, each acknowledged by every module
            cab.bank.apply(True, 400.0, float(amps))
            cab.settle(2)
        cab.bank.all_off()
        cab.pump()
        assert cab.modules.acks_sent > 40
        assert cab.bank.acks == cab.modules.acks_sent
        assert cab.dispatcher.stats.unknown == 0 and cab.bank.foreign_frames == 0
        assert cab.bank.status()["acks"] == cab.modules.acks_sent


def test_a_refused_set_command_is_counted_as_rejected_and_logged_not_as_an_unknown_frame(caplog):
    with cabinet() as cab, caplog.at_level("WARNING", logger="drivers.power_modules.bank"):
        assert isinstance(cab.modules, InfyModules)
        cab.modules.refuse.add(2)
        cab.bank.apply(True, 400.0, 40.0)
        cab.settle()
        assert cab.bank.rejected == 2 and cab.bank.status()["rejected"] == 2  # set V/I and on, both refused
        assert cab.dispatcher.stats.unknown == 0
        assert "power module 2 refused a set command (error code 3" in caplog.text
        assert not cab.bank.modules[2].lost  # a refusal proves nothing either way; the polls decide


# -- property: no set-output frame above what the module may be given ------------------------------------

CAPS = st.one_of(
    # (Vmax V, Vmin V, Imax x0.1 A, rated power x10 W): modules as sold (30 kW 100 A, 40 kW 66.7 A, ...)
    st.sampled_from([(1000, 150, 1000, 3000), (1000, 200, 667, 4000), (750, 150, 1333, 3000), (1000, 50, 300, 3000)]),
    st.tuples(st.integers(100, 1500), st.integers(0, 400), st.integers(0, 3000), st.integers(0, 6000)),
)
STEP = st.one_of(
    st.tuples(
        st.just("apply"),
        st.booleans(),
        st.one_of(
            st.sampled_from([200.0, 400.0, 750.0, 800.0, 950.0]),
            st.floats(0, 1600),
            st.sampled_from([math.nan, -1.0, 0.0, 150.0, 1e9]),
        ),
        st.one_of(st.floats(0, 2000), st.sampled_from([200.0, 600.0, math.nan, -5.0, 0.0, 1e9])),
        st.sampled_from([None, [1, 2], [3, 4], [2, 3], [4]]),
    ),
    st.tuples(st.just("caps"), st.integers(1, 4), CAPS),
    st.tuples(st.just("off"), st.sampled_from([[1, 2], [3, 4], [1]])),
    st.tuples(st.just("time"), st.sampled_from([0.01, 0.05, 0.3])),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_a=st.floats(1, 200),
    max_v=st.floats(100, 1500),
    reported=st.lists(st.one_of(st.none(), CAPS), min_size=4, max_size=4),
    steps=st.lists(STEP, min_size=1, max_size=25),
)
@example(
    max_a=150.0,
    max_v=1000.0,
    reported=[None] * 4,
    steps=[("caps", 1, (1000, 150, 1000, 3000)), ("apply", True, 800.0, 1e3, [1])],
)
@example(
    max_a=150.0,
    max_v=1000.0,
    reported=[None] * 4,
    steps=[("apply", True, 800.0, 600.0, None), ("caps", 2, (750, 150, 500, 2000))],
)
def test_no_set_output_frame_exceeds_config_reported_current_power_or_voltage(max_a, max_v, reported, steps):
    """Every set V/I frame, decoded by hand (u32 BE mV, mA), is within the limits of its module at the time."""
    clock = Clock()
    bank = ModuleBank(
        make_codec("infypower"), [1, 2, 3, 4], 3.0, lambda f: None, max_a, clock=clock, max_voltage_v=max_v
    )
    violations: list[str] = []

    def send(frame) -> None:
        if (frame.arbitration_id >> 16) & 0x3F != 0x1C or (frame.arbitration_id >> 22) & 0xF != 0x0A:
            return
        mod = bank.modules[(frame.arbitration_id >> 8) & 0xFF]
        mv, ma = struct.unpack(">II", frame.data)
        v, a = mv / 1000, ma / 1000
        caps = mod.capabilities
        high_a = min(max_a, caps.get("max_current_a", math.inf))
        if v > 0 and "rated_power_w" in caps:
            high_a = min(high_a, caps["rated_power_w"] / v)
        if a > high_a + 0.0011:  # milli rounding of V and A
            violations.append(f"{a} A > {high_a} A at {v} V, caps {caps}")
        if v > min(max_v, caps.get("max_voltage_v", math.inf)) + 0.0005:
            violations.append(f"{v} V above {max_v} / {caps}")
        if a > 0 and v < caps.get("min_voltage_v", 0.0) - 0.0005:
            violations.append(f"{v} V with {a} A below the minimum, caps {caps}")

    bank._send = send
    for a in (1, 2, 3, 4):
        bank.handle(0x0283F000 | a, struct.pack(">ff", 0.0, 0.0), clock.t)
    bank.check(clock.t)
    for a, caps in enumerate(reported, start=1):  # what each module answers to the request at start-up
        if caps is not None:
            bank.handle(0x028AF000 | a, struct.pack(">HHHH", *caps), clock.t)
    for step in steps:
        if step[0] == "apply":
            bank.apply(step[1], step[2], step[3], step[4])
        elif step[0] == "caps":
            bank.handle(0x028AF000 | step[1], struct.pack(">HHHH", *step[2]), clock.t)
        elif step[0] == "off":
            bank.off(step[1])
        else:
            clock.t += step[1]
            for a in (1, 2, 3, 4):
                bank.handle(0x0283F000 | a, struct.pack(">ff", 0.0, 0.0), clock.t)
            bank.check(clock.t)
    assert violations == []


def test_a_module_reporting_that_it_can_give_nothing_is_out_of_the_split_not_pulling_the_others_to_0_a():
    caps = {1: (1000, 150, 1000, 3000), 2: (1000, 150, 0, 3000), 3: (1000, 150, 1000, 0), 4: (100, 150, 1000, 3000)}
    with cabinet(caps=caps) as cab:  # 2 reports 0 A, 3 reports 0 W, 4 a maximum below its minimum
        assert cab.bank.available() == [1]
        assert cab.bank.module_max_a(None, 400.0) == 75.0
        cab.bank.apply(True, 400.0, 60.0)
        cab.settle()
        assert cab.modules.set_points[1] == (400.0, 60.0)
        assert all(cab.modules.set_points[a] == (0.0, 0.0) and not cab.modules.on[a] for a in (2, 3, 4))
        cab.modules.caps[2] = (1000, 150, 1000, 3000)  # replaced: it comes back able to deliver
        cab.clock.t += 4.0
        cab.bank.check(cab.clock.t)
        cab.poll_all()
        assert 2 in cab.bank.available()


def test_module_max_a_is_zero_for_a_voltage_that_is_not_a_number_and_ignores_other_groups():
    with cabinet(caps=four_modules()) as cab:
        assert cab.bank.module_max_a([1, 2], math.nan) == 0.0 and cab.bank.module_max_a([1, 2], -1.0) == 0.0
        assert cab.bank.module_max_a([1, 2], 0.0) == 100.0  # no voltage yet: the current figure alone
        cab.bank.modules[3].capabilities["max_current_a"] = 20.0  # a weaker module in the other group
        assert cab.bank.module_max_a([1, 2], 400.0) == 75.0 and cab.bank.module_max_a([3, 4], 400.0) == 20.0
        assert cab.bank.module_max_a(None, 400.0) == 20.0
