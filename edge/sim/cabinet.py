"""The whole simulated cabinet in real time, for ``edge run --sim`` and as a test fixture.

``SimCabinet(config)`` builds the peers for what the config names (meters on serial lines, power
modules and cable monitors on CAN buses), and :meth:`SimCabinet.patched_config` returns the config the
daemon should use: serial ports point at the simulator's pseudo-terminals, CAN buses at ``virtual``
channels private to this cabinet, outputs at the simulated board. Fault knobs are plain methods
(edge/sim/hardware.py). A thread with its own asyncio loop steps the physics every PHYSICS_STEP_S and
serves the meters; to walk a cabinet through simulated time without threads, use edge/sim/stepper.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from edge.config import Config
from edge.sim import control
from edge.sim.hardware import SimHardware
from edge.sim.layout import SimConnectorSpec
from edge.sim.meter import serial_server, tcp_server
from edge.sim.scan_access import SCAN_MODBUS_PORT, SlcanBridge, tcp_port
from edge.sim.serial_link import SerialLink

log = logging.getLogger(__name__)
PHYSICS_STEP_S = 0.05


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimCabinet(SimHardware):
    def __init__(
        self,
        config: Config,
        pace_serial: bool = False,
        layout: list[SimConnectorSpec] | None = None,
        scan_access: bool = False,
    ) -> None:
        super().__init__(config, layout=layout)
        # edge/sim/scan_access.py: the meters also on Modbus TCP, the CAN buses on slcan ptys (for `edge scan`)
        self.scan_modbus_ports: dict[str, int] = {}
        self.scan_slcan: dict[str, SlcanBridge] = {}
        if scan_access:
            lines = [line.name for line in config.serial if any(m.line == line.name for m in config.meters)]
            self.scan_modbus_ports = {name: tcp_port(SCAN_MODBUS_PORT + i) for i, name in enumerate(lines)}
            self.scan_slcan = {bus.name: SlcanBridge(bus.name, self.can_channels[bus.name]) for bus in config.can}
        self.links: dict[str, SerialLink] = {
            line.name: SerialLink(line.baudrate if pace_serial else None) for line in config.serial
        }
        self.tcp_ports: dict[str, int] = {t.name: _free_port() for t in config.modbus_tcp}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._thread_main, name="sim-cabinet", daemon=True)
        self._ready = threading.Event()
        self._stopping = threading.Event()

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
    def scan_access_text(self, config_file: str) -> list[str]:
        """How to scan this simulator from another terminal (printed by ``edge run --sim``); ``config_file``
        is the simulator's config (the scan takes the module protocol, addresses and cables from it)."""
        out = []
        for line, port in self.scan_modbus_ports.items():
            ids = ",".join(str(m.device_id) for m in self.config.meters if m.line == line)
            out.append(
                f"sim: meters of {line} on Modbus TCP: edge scan modbus --host 127.0.0.1 --tcp-port {port} --ids {ids}"
            )
        for bus, bridge in self.scan_slcan.items():
            out.append(
                f"sim: CAN {bus} on slcan: edge scan can --interface slcan --channel {bridge.path} "
                f"--config {config_file} --bus {bus}"
            )
        return out

    def start(self) -> None:
        for bridge in self.scan_slcan.values():
            bridge.start()
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
        self.close_devices()
        for link in self.links.values():
            link.close()
        for bridge in self.scan_slcan.values():
            bridge.close()

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

    def _meter_servers(self) -> list[Any]:
        """One pymodbus server per line that has simulated meters on it (RTU on the pty, or TCP)."""
        servers: list[Any] = []
        for line in self.config.serial:
            meters = [self.meters[m.name] for m in self.config.meters if m.line == line.name] + self._imds_on(line.name)
            if meters:
                servers.append(serial_server(meters, self.links[line.name].device_path, line.baudrate))
        for tcp in self.config.modbus_tcp:
            meters = [self.meters[m.name] for m in self.config.meters if m.line == tcp.name] + self._imds_on(tcp.name)
            if meters:
                servers.append(tcp_server(meters, "127.0.0.1", self.tcp_ports[tcp.name]))
        for name, port in self.scan_modbus_ports.items():
            meters = [self.meters[m.name] for m in self.config.meters if m.line == name]
            servers.append(tcp_server(meters, "127.0.0.1", port))
        return servers

    def _imds_on(self, line: str) -> list[Any]:
        """The simulated IMDs on ``line``: served by the same server as its meters (one RS-485 line)."""
        return [self.imds[m.name] for m in self.config.isolation_monitor if m.line == line and m.name in self.imds]

    async def _main(self) -> None:
        servers = self._meter_servers()
        serving = [asyncio.ensure_future(server.serve_forever()) for server in servers]
        serving.append(asyncio.ensure_future(control.serve(self, control.socket_path_for(self.config.api.socket))))
        self._ready.set()
        while not self._stopping.is_set():
            self.step_physics(PHYSICS_STEP_S)
            await asyncio.sleep(PHYSICS_STEP_S)
        for server in servers:
            await server.shutdown()
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)
