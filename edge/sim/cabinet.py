"""The whole simulated cabinet, for ``edge run --sim`` and as a test fixture.

``SimCabinet(config)`` builds the peers for what the config names (meters on serial lines, power
modules and cable monitors on CAN buses), and :meth:`SimCabinet.patched_config` returns the config the
daemon should use: serial ports point at the simulator's pseudo-terminals, CAN buses at ``virtual``
channels private to this cabinet, outputs at the simulated board. Fault knobs are plain methods.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
from typing import Any

import can

from drivers.meters.models import model_for
from edge.config import Config
from edge.sim import control
from edge.sim.can_devices import SimCanDevices
from edge.sim.meter import SimMeter, serial_server, tcp_server
from edge.sim.physics import ModuleModel, Physics
from edge.sim.serial_link import SerialLink
from hal.can import CAN_ERR_BUSOFF
from hal.pin import SimBoard

log = logging.getLogger(__name__)
PHYSICS_STEP_S = 0.05
_instance = itertools.count(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimCabinet:
    def __init__(self, config: Config, pace_serial: bool = False) -> None:
        self.config = config
        self.board = SimBoard()
        self.lock = threading.Lock()
        self.physics = Physics(modules={a: ModuleModel(a) for a in config.power_modules.addresses})
        self._tag = f"sim{os.getpid()}-{next(_instance)}"
        self.links: dict[str, SerialLink] = {}
        self.meters: dict[str, SimMeter] = {}
        for line in config.serial:
            self.links[line.name] = SerialLink(line.baudrate if pace_serial else None)
        self.tcp_ports: dict[str, int] = {t.name: _free_port() for t in config.modbus_tcp}
        for m in config.meters:
            model = model_for(
                m.model, m.name, [r.model_dump() for r in m.registers], m.max_registers_per_request, m.rejects_gaps
            )
            self.meters[m.name] = SimMeter(model, m.device_id, self._meter_values)
        self.can_channels = {bus.name: f"{self._tag}-{bus.name}" for bus in config.can}
        cable = config.cable[0] if config.cable else None
        dev_bus_name = config.power_modules.bus
        self._dev_bus = can.Bus(
            interface="virtual", channel=self.can_channels[dev_bus_name], receive_own_messages=False
        )
        self.can = SimCanDevices(
            self._dev_bus,
            self.physics,
            self.lock,
            cable_node=cable.node_id if cable else 1,
            cable_name=cable.name if cable else "cable",
            protocol=config.power_modules.protocol,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._thread_main, name="sim-cabinet", daemon=True)
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self.sessions = False
        self._session_t = 0.0

    # -- configuration the daemon uses ---------------------------------------------------------------
    def patched_config(self) -> Config:
        data: dict[str, Any] = self.config.model_dump()
        for line in data["serial"]:
            line["port"] = self.links[line["name"]].host_path
        for tcp in data["modbus_tcp"]:
            tcp.update(host="127.0.0.1", port=self.tcp_ports[tcp["name"]])
        for bus in data["can"]:
            bus.update(interface="virtual", channel=self.can_channels[bus["name"]])
        data["outputs"]["backend"] = "sim"
        return Config.model_validate(data)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        for link in self.links.values():
            link.start()
        self.can.start()
        self._thread.start()
        if not self._ready.wait(timeout=5.0):
            raise RuntimeError("simulated cabinet did not start within 5 s")

    def stop(self) -> None:
        self._stopping.set()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: None)
        self._thread.join(timeout=3.0)
        self.can.stop()
        self._dev_bus.shutdown()
        for link in self.links.values():
            link.close()

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            # pymodbus leaves per-connection tasks behind after shutdown(): end them before closing
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _main(self) -> None:
        servers: list[Any] = []
        serving = []
        for line in self.config.serial:
            meters = [self.meters[m.name] for m in self.config.meters if m.line == line.name]
            if meters:
                server = serial_server(meters, self.links[line.name].device_path, line.baudrate)
                servers.append(server)
                serving.append(asyncio.ensure_future(server.serve_forever()))
        serving.append(asyncio.ensure_future(control.serve(self, control.socket_path_for(self.config.api.socket))))
        for tcp in self.config.modbus_tcp:
            meters = [self.meters[m.name] for m in self.config.meters if m.line == tcp.name]
            if meters:
                tserver = tcp_server(meters, "127.0.0.1", self.tcp_ports[tcp.name])
                servers.append(tserver)
                serving.append(asyncio.ensure_future(tserver.serve_forever()))
        self._ready.set()
        while not self._stopping.is_set():
            self._session_step()
            with self.lock:
                self.physics.contactor = bool(self.board.level(self.config.outputs.contactor))
                self.physics.pump_on = bool(self.board.level(self.config.outputs.pump))
                self.physics.step(PHYSICS_STEP_S)
            await asyncio.sleep(PHYSICS_STEP_S)
        for server in servers:
            await server.shutdown()
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)

    def _meter_values(self) -> dict[str, float]:
        with self.lock:
            p = self.physics
            vals: dict[str, float] = {
                "Frequency": 50.0,
                "Energy.Active.Import.Register": p.import_kwh,
                "Energy.Active.Export.Register": 0.0,
            }
            total = 0.0
            for i in range(3):
                ph = f"L{i + 1}"
                watts = p.grid_v[i] * p.grid_a[i] * 0.98
                total += watts
                vals.update(
                    {
                        f"Voltage.{ph}": p.grid_v[i],
                        f"Current.Import.{ph}": p.grid_a[i],
                        f"Power.Active.Import.{ph}": watts,
                        f"Power.Factor.{ph}": 0.98,
                    }
                )
            vals["Power.Active.Import"] = total
            return vals

    # -- fault knobs ---------------------------------------------------------------------------------
    def set_pump_failed(self, failed: bool) -> None:
        with self.lock:
            self.physics.pump_failed = failed

    def set_cable_silent(self, silent: bool) -> None:
        self.can.cable_silent = silent

    def set_cable_frozen(self, frozen: bool) -> None:
        self.can.cable_frozen = frozen

    def set_module_silent(self, address: int, silent: bool) -> None:
        with self.lock:
            self.physics.modules[address].silent = silent

    def set_module_alarm(self, address: int, alarm: str, on: bool) -> None:
        with self.lock:
            alarms = self.physics.modules[address].alarms
            (alarms.add if on else alarms.discard)(alarm)

    def set_meter_silent(self, name: str, silent: bool) -> None:
        self.meters[name].silent = silent

    def inject_bus_off(self) -> None:
        """What a controller's CAN chip reports when it went bus-off: an error frame with CAN_ERR_BUSOFF.

        On a virtual bus it reaches the daemon as it would through socketcan; the daemon then re-opens.
        """
        self._dev_bus.send(can.Message(arbitration_id=CAN_ERR_BUSOFF, data=bytes(8), is_error_frame=True))

    def set_sessions(self, on: bool) -> None:
        self.sessions = on
        self._session_t = 0.0

    # plug in -> charge -> unplug -> idle, seconds from the start of a cycle
    SESSION_PLAN = ((0.0, 0.0), (5.0, 180.0), (50.0, 60.0), (60.0, 0.0))
    SESSION_CYCLE_S = 70.0

    def _session_step(self) -> None:
        if not self.sessions:
            return
        self._session_t = (self._session_t + PHYSICS_STEP_S) % self.SESSION_CYCLE_S
        demand = 0.0
        for start, amps in self.SESSION_PLAN:
            if self._session_t >= start:
                demand = amps
        with self.lock:
            self.physics.vehicle_demand_a = demand

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            p = self.physics
            return {
                "output_a": p.output_a,
                "pin_plus_c": p.pin_plus_c,
                "pin_minus_c": p.pin_minus_c,
                "flow_lpm": p.flow_lpm,
                "coolant_out_c": p.coolant_out_c,
                "contactor": p.contactor,
                "pump_on": p.pump_on,
                "vehicle_demand_a": p.vehicle_demand_a,
                "grid_a": list(p.grid_a),
                "modules": {
                    a: {"on": m.on, "set_a": m.set_a, "out_a": m.out_a, "silent": m.silent, "alarms": sorted(m.alarms)}
                    for a, m in p.modules.items()
                },
            }

    def set_vehicle_demand(self, amps: float) -> None:
        with self.lock:
            self.physics.vehicle_demand_a = amps
