"""Simulated CAN peers: InfyPower power modules and one cable monitor on a python-can bus.

Runs in the simulator's thread with its own python-can bus object (``virtual`` in-process, or any
interface such as ``slcan`` for cross-process tests). Modules answer requests like the real ones,
switch themselves off after 10 s without controller frames, and can be made silent or raise alarms.
The cable monitor sends both DBC messages every 100 ms with a rolling counter; it can freeze (repeat
the same frame) or fall silent.
"""

from __future__ import annotations

import threading
import time

import can

from drivers.cable.monitor import CableMonitor
from drivers.power_modules import infypower as infy
from edge.sim.physics import Physics

CABLE_PERIOD_S = 0.1


class SimCanDevices:
    def __init__(self, bus: can.BusABC, physics: Physics, lock: threading.Lock, cable_node: int = 1,
                 cable_name: str = "cable") -> None:
        self.bus = bus
        self.physics = physics
        self.lock = lock
        self.cable = CableMonitor(cable_name, cable_node)
        self.cable_silent = False
        self.cable_frozen = False
        self.cable_status_faults: set[str] = set()
        self.foreign_module: int | None = None  # address of an unconfigured module that chatters
        self._counter = 0
        self._frozen_frames: list[tuple[int, bytes]] = []
        self._last_controller_rx = time.monotonic()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rx_loop, name="sim-can-rx", daemon=True),
                         threading.Thread(target=self._tx_loop, name="sim-can-tx", daemon=True)]
        self.frames_handled = 0

    def start(self) -> None:
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
            if msg is None or msg.is_error_frame or not msg.is_extended_id:
                continue
            self._handle(msg)

    def _handle(self, msg: can.Message) -> None:
        fid = infy.parse_id(msg.arbitration_id)
        if fid.source != infy.CONTROLLER:
            return
        self._last_controller_rx = time.monotonic()
        with self.lock:
            if fid.device == infy.DEVICE_GROUP:
                targets = list(self.physics.modules.values())
            else:
                m = self.physics.modules.get(fid.destination)
                targets = [m] if m is not None else []
            for m in targets:
                if m.silent:
                    continue
                self.frames_handled += 1
                if fid.command == infy.CMD_SET_OUTPUT:
                    m.set_v, m.set_a = infy.decode_set_output(bytes(msg.data))
                elif fid.command == infy.CMD_ON_OFF:
                    m.on = msg.data[0] == 0x00
                elif fid.command == infy.CMD_READ_OUTPUT and fid.device == infy.DEVICE_SINGLE:
                    self._reply(m.address, infy.CMD_READ_OUTPUT, infy.encode_output(m.out_v, m.out_a))
                elif fid.command == infy.CMD_STATUS and fid.device == infy.DEVICE_SINGLE:
                    self._reply(m.address, infy.CMD_STATUS, infy.encode_status(m.alarms, m.temp_c))

    def _reply(self, address: int, command: int, data: bytes) -> None:
        rid = infy.make_id(command, infy.CONTROLLER, source=address)
        self._send(rid, data)

    def _send(self, arbitration_id: int, data: bytes) -> None:
        try:
            self.bus.send(can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=True), timeout=0.05)
        except can.CanError:
            pass

    # -- cable monitor and module comms watchdog ------------------------------------------------------
    def _tx_loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - self._last_controller_rx > infy.InfyPowerCodec.module_comms_timeout_s:
                with self.lock:
                    for m in self.physics.modules.values():
                        m.on = False  # the module's own comms watchdog
            if not self.cable_silent:
                for fid, data in self._cable_frames():
                    self._send(fid, data)
            if self.foreign_module is not None:
                self._reply(self.foreign_module, infy.CMD_READ_OUTPUT, infy.encode_output(999.0, 999.0))
            next_t += CABLE_PERIOD_S
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _cable_frames(self) -> list[tuple[int, bytes]]:
        if self.cable_frozen and self._frozen_frames:
            return self._frozen_frames
        p = self.physics
        with self.lock:
            faults = self.cable_status_faults
            temps = {"PinTempDcPlus": p.pin_plus_c, "PinTempDcMinus": p.pin_minus_c,
                     "CoolantInletTemp": p.coolant_in_c, "CoolantOutletTemp": min(p.coolant_out_c, 150.0),
                     "RollingCounter": self._counter,
                     "PinDcPlusSensorFault": int("PinDcPlusSensorFault" in faults),
                     "PinDcMinusSensorFault": int("PinDcMinusSensorFault" in faults),
                     "CoolantTempSensorFault": int("CoolantTempSensorFault" in faults)}
            cool = {"CoolantFlow": p.flow_lpm, "CoolantPressure": p.pressure_bar, "RollingCounter": self._counter,
                    "FlowSensorFault": int("FlowSensorFault" in faults)}
        self._counter = (self._counter + 1) % 16
        frames = [self.cable.encode("CABLE_TEMPS", temps), self.cable.encode("CABLE_COOLANT", cool)]
        self._frozen_frames = frames
        return frames
