"""Everything of the simulated cabinet that is not the controller: the physics, the board's pins, the CAN
peers, the meters' registers and the fault knobs. Shared by the two ways the simulator runs:

- :class:`edge.sim.cabinet.SimCabinet`: in real time, in threads, behind pseudo-terminals and TCP, for
  ``edge run --sim`` and the daemon tests;
- :class:`edge.sim.stepper.SimStepper`: in simulated time, stepped by a test, with no thread and no sleep.

Both step the same :meth:`SimHardware.step_physics` and answer with the same device code.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import can

from drivers.meters.models import model_for
from edge.config import Config
from edge.sim.can_devices import SimCanDevices
from edge.sim.meter import SimMeter
from edge.sim.physics import ModuleModel, Physics
from hal.can import CAN_ERR_BUSOFF
from hal.pin import SimBoard

_instance = itertools.count(1)


class SimHardware:
    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.board = SimBoard()
        self.lock = threading.Lock()
        self.physics = Physics(modules={a: ModuleModel(a) for a in config.power_modules.addresses})
        self._tag = f"sim{os.getpid()}-{next(_instance)}"
        self.meters: dict[str, SimMeter] = {}
        for m in config.meters:
            model = model_for(
                m.model, m.name, [r.model_dump() for r in m.registers], m.max_registers_per_request, m.rejects_gaps
            )
            self.meters[m.name] = SimMeter(model, m.device_id, self._meter_values)
        # private virtual channels: two simulated cabinets in one process never hear each other
        self.can_channels = {bus.name: f"{self._tag}-{bus.name}" for bus in config.can}
        cable = config.cable[0] if config.cable else None
        self._dev_bus = can.Bus(
            interface="virtual", channel=self.can_channels[config.power_modules.bus], receive_own_messages=False
        )
        self.can = SimCanDevices(
            self._dev_bus,
            self.physics,
            self.lock,
            cable_node=cable.node_id if cable else 1,
            cable_name=cable.name if cable else "cable",
            protocol=config.power_modules.protocol,
            clock=clock,
        )
        self.sessions = False
        self._session_t = 0.0

    def close_devices(self) -> None:
        self.can.stop()
        self._dev_bus.shutdown()

    # -- one step of the physical world --------------------------------------------------------------
    def step_physics(self, dt_s: float) -> None:
        """Advance the physics by ``dt_s``: contactor and pump as the controller set the board's pins."""
        self._session_step(dt_s)
        outputs = self.config.outputs
        with self.lock:
            self.physics.contactor = bool(self.board.level(outputs.contactor))
            self.physics.pump_on = bool(self.board.level(outputs.pump))
            self.physics.step(dt_s)

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

    def set_vehicle_demand(self, amps: float) -> None:
        with self.lock:
            self.physics.vehicle_demand_a = amps

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

    def _session_step(self, dt_s: float) -> None:
        if not self.sessions:
            return
        self._session_t = (self._session_t + dt_s) % self.SESSION_CYCLE_S
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
