"""Simulated CAN peers: power modules (InfyPower or UUGreen personality) and one cable monitor.

Runs with its own python-can bus object (``virtual`` in-process, or any interface such as ``slcan``
for cross-process tests), in two threads in real time or stepped in simulated time
(edge/sim/stepper.py). Modules answer requests like the real ones, switch themselves off after their
comms watchdog without controller frames, and can be made silent or raise alarms. The personality
(which protocol the modules speak) follows ``power_modules.protocol``. The cable monitor sends both
DBC messages every 100 ms with a rolling counter; it can freeze (repeat the same frame) or fall silent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import can

from drivers.cable.monitor import CableMonitor
from drivers.power_modules import infypower as infy
from drivers.power_modules import uugreen as uu
from edge.sim.physics import ModuleModel, Physics

CABLE_PERIOD_S = 0.1
Reply = tuple[int, bytes]


class Personality(Protocol):
    comms_timeout_s: float

    def from_controller(self, msg: can.Message) -> bool: ...

    def handle(self, msg: can.Message, modules: dict[int, ModuleModel]) -> list[Reply]:
        """Apply a controller frame to the modules it addresses; the replies to send."""
        ...

    def chatter(self, address: int) -> Reply:
        """A reply from a module nobody configured (foreign frames)."""
        ...


class InfyPersonality:
    comms_timeout_s = infy.InfyPowerCodec.module_comms_timeout_s

    def from_controller(self, msg: can.Message) -> bool:
        return infy.parse_id(msg.arbitration_id).source == infy.CONTROLLER

    def handle(self, msg: can.Message, modules: dict[int, ModuleModel]) -> list[Reply]:
        fid = infy.parse_id(msg.arbitration_id)
        data = bytes(msg.data)
        if fid.device == infy.DEVICE_GROUP:
            targets = list(modules.values())
        else:
            m = modules.get(fid.destination)
            targets = [m] if m is not None else []
        out: list[Reply] = []
        for m in targets:
            if m.silent:
                continue
            if len(data) != 8:
                out.append((infy.make_id(fid.command, infy.CONTROLLER, m.address, error=3), bytes(8)))
                continue
            if fid.command == infy.CMD_SET_OUTPUT:
                m.set_v, m.set_a = infy.decode_set_output(data)
            elif fid.command == infy.CMD_ON_OFF:
                m.on = data[0] == 0x00
            elif fid.command in infy.READ_COMMANDS and data != infy.ZERO8:
                # "read requests carry 8 zero bytes, otherwise the module answers with an error"
                out.append((infy.make_id(fid.command, infy.CONTROLLER, m.address, error=3), bytes(8)))
            elif fid.command == infy.CMD_READ_OUTPUT:
                out.append(self._reply(m, fid.command, infy.encode_output(m.out_v, m.out_a)))
            elif fid.command == infy.CMD_STATUS:
                out.append(self._reply(m, fid.command, infy.encode_status(m.alarms, m.temp_c)))
            elif fid.command == infy.CMD_MODULE_COUNT:
                out.append(self._reply(m, fid.command, infy.encode_module_count(len(modules))))
            elif fid.command == infy.CMD_CAPABILITIES:
                out.append(self._reply(m, fid.command, infy.encode_capabilities(1000, 150, 50.0, 30000)))
        return out

    @staticmethod
    def _reply(m: ModuleModel, command: int, data: bytes) -> Reply:
        return infy.make_id(command, infy.CONTROLLER, source=m.address), data

    def chatter(self, address: int) -> Reply:
        return infy.make_id(infy.CMD_READ_OUTPUT, infy.CONTROLLER, source=address), infy.encode_output(999.0, 999.0)


class UUGreenPersonality:
    comms_timeout_s = uu.UUGreenCodec.module_comms_timeout_s

    def from_controller(self, msg: can.Message) -> bool:
        fid = uu.parse_id(msg.arbitration_id)
        if fid.protocol != uu.PROTOCOL or fid.monitor != uu.MONITOR or len(msg.data) != 8:
            return False
        return msg.data[0] & 0xF in (uu.TYPE_SET, uu.TYPE_READ)

    def handle(self, msg: can.Message, modules: dict[int, ModuleModel]) -> list[Reply]:
        fid = uu.parse_id(msg.arbitration_id)
        group, kind, command, value = uu.decode_data(bytes(msg.data))
        if fid.module == uu.BROADCAST:
            targets = list(modules.values())
        else:
            m = modules.get(fid.module)
            targets = [m] if m is not None else []
        out: list[Reply] = []
        for m in targets:
            if m.silent:
                continue
            if kind == uu.TYPE_SET:
                if command == uu.CMD_VREF:
                    m.set_v = value / 1000.0
                elif command == uu.CMD_ILIMIT:
                    m.set_a = value / 1000.0
                elif command == uu.CMD_SHUTDOWN:
                    m.on = value == 0
                out.append((uu.make_id(m.address), uu.encode_data(uu.TYPE_SET_RESPONSE, command, value, group)))
            else:
                answer = {
                    uu.CMD_VOUT: int(m.out_v * 1000),
                    uu.CMD_IOUT: int(m.out_a * 1000),
                    uu.CMD_STATUS: self._status_word(m),
                    uu.CMD_INPUT_TEMPERATURE: int(m.temp_c * 1000) & 0xFFFFFFFF,
                }.get(command, 0)
                out.append((uu.make_id(m.address), uu.encode_data(uu.TYPE_READ_RESPONSE, command, answer, group)))
        return out

    @staticmethod
    def _status_word(m: ModuleModel) -> int:
        word = 0
        for name in m.alarms:
            if name.startswith("status_bit_"):
                word |= 1 << int(name.rsplit("_", 1)[1])
            elif name != "sleeping":
                word |= 1  # any other simulated alarm shows as bit 0
        return word

    def chatter(self, address: int) -> Reply:
        return uu.make_id(address), uu.encode_data(uu.TYPE_READ_RESPONSE, uu.CMD_VOUT, 999_000)


PERSONALITIES: dict[str, type[Personality]] = {"infypower": InfyPersonality, "uugreen": UUGreenPersonality}


class SimCanDevices:
    """The simulated modules and cable monitor on one python-can bus object.

    Two ways to run the same code: :meth:`start` runs it in two threads in real time (``edge run
    --sim``, the in-process daemon tests); edge/sim/stepper.py instead calls :meth:`receive_pending`
    and :meth:`tick` itself, in simulated time from ``clock``, with no thread and no sleep.
    """

    def __init__(
        self,
        bus: can.BusABC,
        physics: Physics,
        lock: threading.Lock,
        cable_node: int = 1,
        cable_name: str = "cable",
        protocol: str = "infypower",
        cable_bus: can.BusABC | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.cable_bus = cable_bus or bus
        self.physics = physics
        self.lock = lock
        self.clock = clock  # the modules' comms watchdog counts in this time
        self.personality: Personality = PERSONALITIES[protocol]()
        self.cable = CableMonitor(cable_name, cable_node)
        self.cable_silent = False
        self.cable_frozen = False
        self.cable_status_faults: set[str] = set()
        self.foreign_module: int | None = None  # address of an unconfigured module that chatters
        self._counter = 0
        self._frozen_frames: list[tuple[int, bytes]] = []
        self._last_controller_rx = clock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.frames_handled = 0

    def start(self) -> None:
        """Real-time mode: one thread answers controller frames, one sends every CABLE_PERIOD_S."""
        self._threads = [
            threading.Thread(target=self._rx_loop, name="sim-can-rx", daemon=True),
            threading.Thread(target=self._tx_loop, name="sim-can-tx", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=1.0)

    # -- modules ------------------------------------------------------------------------------------
    def _rx_loop(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.bus.recv(timeout=0.05)
            except can.CanError:
                continue
            if msg is not None:
                self.handle(msg)

    def receive_pending(self) -> int:
        """Stepped mode: answer every frame already waiting at the bus; how many were read."""
        n = 0
        while (msg := self.bus.recv(timeout=0)) is not None:
            self.handle(msg)
            n += 1
        return n

    def handle(self, msg: can.Message) -> None:
        """One frame seen on the bus: a controller frame to the modules is applied and answered."""
        if msg.is_error_frame or msg.is_remote_frame or not msg.is_extended_id:
            return
        if not self.personality.from_controller(msg):
            return
        self._last_controller_rx = self.clock()
        with self.lock:
            replies = self.personality.handle(msg, self.physics.modules)
            self.frames_handled += 1
        for rid, data in replies:
            self._send(self.bus, rid, data)

    @staticmethod
    def _send(bus: can.BusABC, arbitration_id: int, data: bytes) -> None:
        try:
            bus.send(can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=True), timeout=0.05)
        except can.CanError:
            pass

    # -- cable monitor and module comms watchdog ------------------------------------------------------
    def _tx_loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.tick()
            next_t += CABLE_PERIOD_S
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def tick(self) -> None:
        """What happens every CABLE_PERIOD_S: the modules' comms watchdog, the cable frames, foreign chatter."""
        if self.clock() - self._last_controller_rx > self.personality.comms_timeout_s:
            with self.lock:
                for m in self.physics.modules.values():
                    m.on = False  # the module's own comms watchdog
        if not self.cable_silent:
            for fid, data in self._cable_frames():
                self._send(self.cable_bus, fid, data)
        if self.foreign_module is not None:
            self._send(self.bus, *self.personality.chatter(self.foreign_module))

    def _cable_frames(self) -> list[tuple[int, bytes]]:
        if self.cable_frozen and self._frozen_frames:
            return self._frozen_frames
        p = self.physics
        with self.lock:
            faults = self.cable_status_faults
            temps = {
                "PinTempDcPlus": p.pin_plus_c,
                "PinTempDcMinus": p.pin_minus_c,
                "CoolantInletTemp": p.coolant_in_c,
                "CoolantOutletTemp": min(p.coolant_out_c, 150.0),
                "RollingCounter": self._counter,
                "PinDcPlusSensorFault": int("PinDcPlusSensorFault" in faults),
                "PinDcMinusSensorFault": int("PinDcMinusSensorFault" in faults),
                "CoolantTempSensorFault": int("CoolantTempSensorFault" in faults),
            }
            cool = {
                "CoolantFlow": p.flow_lpm,
                "CoolantPressure": p.pressure_bar,
                "RollingCounter": self._counter,
                "FlowSensorFault": int("FlowSensorFault" in faults),
                "PressureSensorFault": int("PressureSensorFault" in faults),
                "LeakDetected": int("LeakDetected" in faults),
            }
        self._counter = (self._counter + 1) % 16
        frames = [self.cable.encode("CABLE_TEMPS", temps), self.cable.encode("CABLE_COOLANT", cool)]
        self._frozen_frames = frames
        return frames
