"""Simulated CAN peers: power modules (InfyPower or UUGreen personality) and a cable monitor per connector.

Runs with its own python-can bus object (``virtual`` in-process, or any interface such as ``slcan``
for cross-process tests), in two threads in real time or stepped in simulated time
(edge/sim/stepper.py). Modules answer requests like the real ones, switch themselves off after their
comms watchdog without controller frames, and can be made silent or raise alarms. The personality
(which protocol the modules speak) follows ``power_modules.protocol``. Each cable monitor (one per
``[[cable]]``, with its node id) sends both DBC messages every 100 ms with a rolling counter, from the
pins and coolant of its connector; each can freeze (repeat the same frame) or fall silent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import can

from drivers.cable.monitor import CableMonitor
from drivers.power_modules import infypower as infy
from drivers.power_modules import uugreen as uu
from edge.sim.physics import ConnectorPhysics, ModuleModel, Physics

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


@dataclass
class SimCablePeer:
    """One simulated cable monitor: its node id, the connector whose cable it measures, its bus."""

    monitor: CableMonitor
    connector: str
    bus: can.BusABC
    silent: bool = False
    frozen: bool = False  # repeats its last frames (rolling counter stuck)
    status_faults: set[str] = field(default_factory=set)  # DBC status bits set in its frames
    counter: int = 0
    frozen_frames: list[tuple[int, bytes]] = field(default_factory=list)

    def frames(self, conn: ConnectorPhysics, coolant_in_c: float) -> list[tuple[int, bytes]]:
        """Its two frames now (the caller holds the physics lock)."""
        if self.frozen and self.frozen_frames:
            return self.frozen_frames
        faults = self.status_faults
        temps = {
            "PinTempDcPlus": conn.pin_plus_c,
            "PinTempDcMinus": conn.pin_minus_c,
            "CoolantInletTemp": coolant_in_c,
            "CoolantOutletTemp": min(conn.coolant_out_c, 150.0),
            "RollingCounter": self.counter,
            "PinDcPlusSensorFault": int("PinDcPlusSensorFault" in faults),
            "PinDcMinusSensorFault": int("PinDcMinusSensorFault" in faults),
            "CoolantTempSensorFault": int("CoolantTempSensorFault" in faults),
        }
        cool = {
            "CoolantFlow": conn.flow_lpm,
            "CoolantPressure": conn.pressure_bar,
            "RollingCounter": self.counter,
            "FlowSensorFault": int("FlowSensorFault" in faults),
            "PressureSensorFault": int("PressureSensorFault" in faults),
            "LeakDetected": int("LeakDetected" in faults),
        }
        self.counter = (self.counter + 1) % 16
        self.frozen_frames = [self.monitor.encode("CABLE_TEMPS", temps), self.monitor.encode("CABLE_COOLANT", cool)]
        return self.frozen_frames


# (cable name, node id, connector name, the bus its frames go out on; None: the modules' bus)
CableSpec = tuple[str, int, str, "can.BusABC | None"]


class SimCanDevices:
    """The simulated modules and cable monitors on python-can bus objects.

    Two ways to run the same code: :meth:`start` runs it in two threads in real time (``edge run
    --sim``, the in-process daemon tests); edge/sim/stepper.py instead calls :meth:`receive_pending`
    and :meth:`tick` itself, in simulated time from ``clock``, with no thread and no sleep.

    ``cables``: one peer per entry; without it, one cable monitor (``cable_name``, ``cable_node``) on the
    first connector. ``cable_silent``, ``cable_frozen`` and ``cable_status_faults`` are the first peer's.
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
        cables: Sequence[CableSpec] | None = None,
    ) -> None:
        self.bus = bus
        self.physics = physics
        self.lock = lock
        self.clock = clock  # the modules' comms watchdog counts in this time
        self.personality: Personality = PERSONALITIES[protocol]()
        if cables is None:
            cables = [(cable_name, cable_node, physics.primary.name, cable_bus)]
        self.cables = [SimCablePeer(CableMonitor(name, node), conn, cbus or bus) for name, node, conn, cbus in cables]
        self.foreign_module: int | None = None  # address of an unconfigured module that chatters
        self._last_controller_rx = clock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.frames_handled = 0

    # -- the first cable monitor, as the single-cable knobs knew it -----------------------------------
    def cable_peer(self, name: str | None = None) -> SimCablePeer:
        """The cable monitor ``name`` (a [[cable]] name), or the first."""
        for peer in self.cables:
            if name is None or peer.monitor.name == name:
                return peer
        raise KeyError(f"no simulated cable monitor {name!r}")

    @property
    def cable(self) -> CableMonitor:
        return self.cable_peer().monitor

    @property
    def cable_silent(self) -> bool:
        return self.cable_peer().silent

    @cable_silent.setter
    def cable_silent(self, silent: bool) -> None:
        self.cable_peer().silent = silent

    @property
    def cable_frozen(self) -> bool:
        return self.cable_peer().frozen

    @cable_frozen.setter
    def cable_frozen(self, frozen: bool) -> None:
        self.cable_peer().frozen = frozen

    @property
    def cable_status_faults(self) -> set[str]:
        return self.cable_peer().status_faults

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

    # -- cable monitors and module comms watchdog -----------------------------------------------------
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
        for peer in self.cables:
            if peer.silent:
                continue
            with self.lock:
                frames = peer.frames(self.physics.connectors[peer.connector], self.physics.coolant_in_c)
            for fid, data in frames:
                self._send(peer.bus, fid, data)
        if self.foreign_module is not None:
            self._send(self.bus, *self.personality.chatter(self.foreign_module))
