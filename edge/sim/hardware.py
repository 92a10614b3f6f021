"""Everything of the simulated cabinet that is not the controller: the physics, the board's pins, the CAN
peers, the meters' registers and the fault knobs. Shared by the two ways the simulator runs:

- :class:`edge.sim.cabinet.SimCabinet`: in real time, in threads, behind pseudo-terminals and TCP, for
  ``edge run --sim`` and the daemon tests;
- :class:`edge.sim.stepper.SimStepper`: in simulated time, stepped by a test, with no thread and no sleep.

Both step the same :meth:`SimHardware.step_physics` and answer with the same device code.

Connectors come from the config (edge/sim/layout.py): each has its contactor pin, its modules, the cable
monitors of its ``[[cable]]`` names and, unless its request is the fixed bench one, a vehicle (the 400 V
car on the first, third, ... connector, the 800 V car on the others), plugged in at start. The built-in
charging controller (edge/sim/session.py) runs the sessions of the connectors whose request is "sim":
:meth:`SimHardware.step_charging` steps it under the physics lock.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import can

from drivers.digital_inputs import is_active
from drivers.meters.models import model_for
from edge.charging.demand import Capabilities, DemandSink
from edge.config import Config
from edge.sim.can_devices import CableSpec, SimCanDevices
from edge.sim.contactor import SimContactor
from edge.sim.imd import SimImd
from edge.sim.layout import SimConnectorSpec, connector_layout
from edge.sim.meter import SimMeter
from edge.sim.physics import ConnectorPhysics, ModuleModel, Physics
from edge.sim.relays import SimRelayMatrix, routes, wiring
from edge.sim.session import Request, SimSessions, apply
from edge.sim.vehicle import DEFAULT_SOC, VEHICLE_TYPES, Vehicle
from hal.can import CAN_ERR_BUSOFF
from hal.pin import SimBoard

_instance = itertools.count(1)
DEFAULT_CARS = ("400v", "800v")  # by connector position, alternating


class SimHardware:
    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
        layout: list[SimConnectorSpec] | None = None,
        plugged: bool = True,
    ) -> None:
        self.config = config
        self.board = SimBoard()
        for inp in config.input:  # the safety inputs start in their normal state (loop closed, door shut)
            self.board.input(inp.pin, _input_level(inp.active, inp.wiring, False))
        self.lock = threading.Lock()
        self.layout = layout if layout is not None else connector_layout(config)
        self.physics = Physics(
            modules={a: ModuleModel(a) for a in config.power_modules.addresses},
            connectors={spec.name: _connector(i, spec, plugged) for i, spec in enumerate(self.layout)},
        )
        self.relays = self._relay_matrix(config)
        self._tag = f"sim{os.getpid()}-{next(_instance)}"
        self.meters: dict[str, SimMeter] = {
            m.name: SimMeter(
                model_for(
                    m.model, m.name, [r.model_dump() for r in m.registers], m.max_registers_per_request, m.rejects_gaps
                ),
                m.device_id,
                self._meter_values,
            )
            for m in config.meters
        }
        # private virtual channels: two simulated cabinets in one process never hear each other
        self.can_channels = {bus.name: f"{self._tag}-{bus.name}" for bus in config.can}
        self._dev_buses: dict[str, can.BusABC] = {}  # one bus object per channel: no peer hears its own frames
        self._dev_bus = self._device_bus(config.power_modules.bus)
        self.can = self._can_devices(config, clock)
        # one simulated insulation monitor per [[isolation_monitor]], measuring its first connector's output
        self.imds: dict[str, SimImd] = {
            m.name: SimImd(m.device_id, voltage_v=self._output_v(m.connectors[0]), clock=clock)
            for m in config.isolation_monitor
            if m.connectors[0] in self.physics.connectors
        }
        self.sessions = False
        self._session_t = 0.0
        # each connector's contactor follows its pin with a delay; its mirror contact is read where wired
        self.contactors = {spec.name: SimContactor() for spec in self.layout}
        # the mirror contacts the daemon reads: connector -> its contactor_feedback input pin
        self._feedback_pins = {
            c.name: c.contactor_feedback for c in config.resolved_connectors() if c.contactor_feedback
        }
        self._drive_feedback()
        # the built-in charging controller, for the connectors that ask for it
        self.charging = SimSessions(
            {
                spec.name: conn.vehicle
                for spec in self.layout
                if spec.request == "sim" and (conn := self.physics.connectors[spec.name]).vehicle is not None
            }
        )
        self._give_imd_time(config)

    def _can_devices(self, config: Config, clock: Callable[[], float]) -> SimCanDevices:
        """The power modules and cable monitors on their private virtual buses; each cable by its connector."""
        owner = {cable: spec.name for spec in self.layout for cable in spec.cables}
        cables: list[CableSpec] = [
            (c.name, c.node_id, owner.get(c.name, self.physics.primary.name), self._device_bus(c.bus))
            for c in config.cable
        ]
        return SimCanDevices(
            self._dev_bus,
            self.physics,
            self.lock,
            protocol=config.power_modules.protocol,
            clock=clock,
            cables=cables or None,
        )

    def _output_v(self, connector: str) -> Callable[[], float]:
        return lambda: self.physics.connectors[connector].output_v

    def _give_imd_time(self, config: Config) -> None:
        """A connector the cabinet's own IMD watches: its session measures long enough for the cabinet's cable
        check (self-test, then the samples, one poll each, with a margin) when no verdict source is set."""
        for m in config.isolation_monitor:
            wait_s = 0.5 + (config.isolation.samples + 3) * m.poll_ms / 1000.0
            wait_s += (
                max((i.self_test_s for i in self.imds.values()), default=0.0) if config.isolation.self_test else 0.0
            )
            for name in m.connectors:
                session = self.charging.sessions.get(name)
                if session is not None:
                    session.settings = dataclasses.replace(session.settings, isolation_measure_s=wait_s)

    def set_cable_check_verdict(self, verdict: Callable[[str], str | None]) -> None:
        """The cabinet's cable-check result per connector (its decision's ``imd.cable_check``): the sessions of
        the connectors an IMD watches wait for it instead of a fixed time."""
        watched = {n for m in self.config.isolation_monitor for n in m.connectors}
        for name, session in self.charging.sessions.items():
            if name in watched:
                session.verdict = verdict

    def _device_bus(self, bus_name: str) -> can.BusABC:
        bus = self._dev_buses.get(bus_name)
        if bus is None:
            bus = can.Bus(interface="virtual", channel=self.can_channels[bus_name], receive_own_messages=False)
            self._dev_buses[bus_name] = bus
        return bus

    def close_devices(self) -> None:
        self.can.stop()
        for bus in self._dev_buses.values():
            bus.shutdown()

    # -- one step of the physical world --------------------------------------------------------------
    def step_physics(self, dt_s: float) -> None:
        """Advance the physics by ``dt_s``: contactor and pump as the controller set the board's pins."""
        self._session_step(dt_s)
        with self.lock:
            for spec in self.layout:
                coil = bool(self.board.level(spec.contactor_pin))
                self.physics.connectors[spec.name].contactor = self.contactors[spec.name].step(coil, dt_s)
            self._drive_feedback()
            self._follow_relays(dt_s)
            self.physics.pump_on = bool(self.board.level(self.config.outputs.pump))
            self.physics.step(dt_s)

    # -- the built-in charging controller ----------------------------------------------------------------
    def measured(self) -> dict[str, tuple[float, float]]:
        """Every connector's output (V, A) as the physics has it."""
        with self.lock:
            return {name: (c.output_v, c.output_a) for name, c in self.physics.connectors.items()}

    def step_charging(
        self,
        now: float,
        capabilities: Mapping[str, Capabilities | None],
        measured: Mapping[str, tuple[float, float]] | None = None,
    ) -> list[Request]:
        """One step of the sessions of the "sim" connectors; the requests to hand to the DemandSink.

        ``measured``: connector -> (V, A) as the cabinet measured it; the physics' own values otherwise."""
        seen = self.measured() if measured is None else measured
        with self.lock:  # the sessions move the vehicles' contactors, which the physics thread reads
            return self.charging.step(now, seen, capabilities)

    def drive_charging(
        self,
        sink: DemandSink,
        now: float,
        capabilities: Mapping[str, Capabilities | None],
        measured: Mapping[str, tuple[float, float]] | None = None,
    ) -> list[Request]:
        """:meth:`step_charging` and hand the requests to ``sink`` (on the caller's thread)."""
        requests = self.step_charging(now, capabilities, measured)
        apply(sink, requests, now)
        return requests

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
    def _drive_feedback(self) -> None:
        """Each wired mirror contact's input level as the contacts stand ([contactors] feedback_active)."""
        closed_level = 1 if self.config.contactors.feedback_active == "high" else 0
        for name, pin in self._feedback_pins.items():
            self.board.drive(pin, closed_level if self.contactors[name].closed else 1 - closed_level)

    def _relay_matrix(self, config: Config) -> SimRelayMatrix | None:
        """Power sharing: the relay matrix, every relay open (coils de-energised) until the daemon closes it
        through its pin; the physics follows its contacts. None without ``[sharing]``."""
        self._relay_t = 0.0
        if config.sharing is None:
            return None
        relays = SimRelayMatrix([(r.group, r.connector) for r in config.relay])
        groups = {g.name: list(g.modules) for g in config.module_group}
        self.physics.routing = lambda: routes(relays, groups)
        self.relays = relays
        self._follow_relays(0.0)  # the mirror contacts' input levels (all open) before the daemon reads them
        return relays

    def _follow_relays(self, dt_s: float) -> None:
        """Power sharing: each relay as its coil pin stands (after its switching time), its mirror contact's pin."""
        if self.relays is None:
            return
        self._relay_t += dt_s
        pins, closed_level = wiring(self.config)
        self.relays.follow(self.board, pins, closed_level, self._relay_t)

    def weld_contactor(self, connector: str | None = None, on: bool = True, closed_now: bool = False) -> None:
        """Knob: the connector's contactor welds (stays closed once closed; ``closed_now``: closed at once)."""
        with self.lock:
            self.contactors[self.connector(connector).name].weld(on, closed_now)

    def contactor_fails_to_close(self, connector: str | None = None, on: bool = True) -> None:
        """Knob: the connector's contactor no longer closes (coil, driver or its supply broken)."""
        with self.lock:
            self.contactors[self.connector(connector).name].fail_to_close(on)

    def set_pump_failed(self, failed: bool) -> None:
        with self.lock:
            self.physics.pump_failed = failed

    def set_cable_silent(self, silent: bool, cable: str | None = None) -> None:
        self.can.cable_peer(cable).silent = silent

    def set_cable_frozen(self, frozen: bool, cable: str | None = None) -> None:
        self.can.cable_peer(cable).frozen = frozen

    def set_module_silent(self, address: int, silent: bool) -> None:
        with self.lock:
            self.physics.modules[address].silent = silent

    def set_module_alarm(self, address: int, alarm: str, on: bool) -> None:
        with self.lock:
            alarms = self.physics.modules[address].alarms
            (alarms.add if on else alarms.discard)(alarm)

    def set_relay_stuck(self, group: str, connector: str, stuck: bool = True) -> None:
        """Power sharing: the relay of ``group`` to ``connector`` keeps its contact whatever its coil does."""
        if self.relays is None:
            raise KeyError("no relay matrix: the config has no [sharing]")
        self.relays.stick(group, connector, stuck)

    def set_group_lost(self, group: str, lost: bool = True) -> None:
        """Power sharing: every module of ``group`` stops answering (or answers again)."""
        modules = {g.name: g.modules for g in self.config.module_group}
        if group not in modules:
            raise KeyError(f"unknown group {group!r} (have {sorted(modules)})")
        for address in modules[group]:
            self.set_module_silent(address, lost)

    def set_meter_silent(self, name: str, silent: bool) -> None:
        self.meters[name].silent = silent

    def set_input(self, function: str, active: bool) -> None:
        """Every ``[[input]]`` of ``function`` ("estop", "door", "water", "tilt") ACTIVE (pressed, open, wet,
        tilted) or back to normal: its pin driven to the level that means it with its wiring, as the wiring
        outside would (a change reaches the controller at once through the pin's irq)."""
        inputs = [i for i in self.config.input if i.function == function]
        if not inputs:
            have = sorted({i.function for i in self.config.input})
            raise KeyError(f"no [[input]] with function {function!r} in the config (have {have})")
        for inp in inputs:
            self.board.drive(inp.pin, _input_level(inp.active, inp.wiring, active))

    def set_estop(self, pressed: bool) -> None:
        self.set_input("estop", pressed)

    def set_door_open(self, open_: bool) -> None:
        self.set_input("door", open_)

    def imd(self, connector: str) -> SimImd:
        """The simulated IMD watching ``connector`` (KeyError when none does)."""
        for m in self.config.isolation_monitor:
            if connector in m.connectors and m.name in self.imds:
                return self.imds[m.name]
        raise KeyError(f"no isolation monitor watches connector {connector!r}")

    def set_imd_resistance(self, ohm: float, connector: str = "1") -> None:
        """The insulation resistance the IMD of ``connector`` measures, Ohm (a fault: below 100 kOhm)."""
        self.imd(connector).resistance_ohm = ohm

    def set_imd_self_test_fails(self, fails: bool, connector: str = "1") -> None:
        self.imd(connector).self_test_fails = fails

    def set_imd_silent(self, silent: bool, connector: str = "1") -> None:
        self.imd(connector).silent = silent

    def set_vehicle_demand(self, amps: float) -> None:
        with self.lock:
            self.physics.vehicle_demand_a = amps

    def connector(self, name: str | None = None) -> ConnectorPhysics:
        """Connector ``name`` of the physics (the first when None); KeyError names the ones there are."""
        if name is None:
            return self.physics.primary
        try:
            return self.physics.connectors[name]
        except KeyError:
            raise KeyError(f"no connector {name!r} (have {sorted(self.physics.connectors)})") from None

    def vehicle(self, connector: str | None = None) -> Vehicle:
        v = self.connector(connector).vehicle
        if v is None:
            raise KeyError(f"connector {self.connector(connector).name!r} has a fixed load, not a vehicle")
        return v

    def plug_in(self, connector: str | None = None, car: str | None = None, soc: float | None = None) -> None:
        """Plug a vehicle in: the same car again, or ``car`` ("400v", "800v") at its default state of charge."""
        with self.lock:
            v = self.vehicle(connector)
            if car is not None and car not in VEHICLE_TYPES:
                raise KeyError(f"unknown car {car!r} (have {sorted(VEHICLE_TYPES)})")
            spec = VEHICLE_TYPES[car] if car is not None else None
            v.plug_in(spec, soc if soc is not None or car is None else DEFAULT_SOC[car])

    def unplug(self, connector: str | None = None) -> None:
        with self.lock:
            self.vehicle(connector).unplug()

    def set_soc(self, soc: float, connector: str | None = None) -> None:
        if not 0.0 <= soc <= 1.0:
            raise ValueError(f"state of charge {soc} outside 0..1")
        with self.lock:
            self.vehicle(connector).soc = soc

    def set_hot_pin(self, extra_c: float, connector: str | None = None) -> None:
        """A bad contact on the DC+ pin of a connector's cable: ``extra_c`` °C above what the current gives."""
        with self.lock:
            self.connector(connector).hot_pin_c = extra_c

    def set_over_voltage(self, extra_v: float, connector: str | None = None) -> None:
        """An output regulation fault: while its modules deliver, the connector's output reads ``extra_v`` V high."""
        with self.lock:
            self.connector(connector).over_voltage_v = extra_v

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
                "connectors": {name: _connector_view(c) for name, c in p.connectors.items()},
                "sessions": {
                    name: {"state": s.state, "reason": s.reason, "precharge_s": s.precharge_s}
                    for name, s in self.charging.sessions.items()
                },
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


def _input_level(active_level: str, wiring: str, active: bool) -> int:
    """The pin level that reads as ``active`` for an input with this active level and wiring."""
    return 1 if bool(is_active(1, active_level, wiring)) == active else 0


def _connector(index: int, spec: SimConnectorSpec, plugged: bool) -> ConnectorPhysics:
    if not spec.has_vehicle:
        return ConnectorPhysics(spec.name, spec.modules)
    vehicle = Vehicle.of_type(DEFAULT_CARS[index % len(DEFAULT_CARS)], plugged=plugged)
    vehicle.autonomous = spec.request != "sim"  # an external controller runs its sessions
    return ConnectorPhysics(spec.name, spec.modules, vehicle=vehicle)


def _connector_view(c: ConnectorPhysics) -> dict[str, Any]:
    view: dict[str, Any] = {
        "contactor": c.contactor,
        "output_v": round(c.output_v, 2),
        "output_a": round(c.output_a, 2),
        "modules": list(c.modules),
        "pin_plus_c": round(c.pin_plus_c, 2),
        "pin_minus_c": round(c.pin_minus_c, 2),
        "flow_lpm": round(c.flow_lpm, 3),
        "hot_pin_c": c.hot_pin_c,
    }
    v = c.vehicle
    if v is None:
        view["load"] = {"fixed_demand_a": c.vehicle_demand_a}
    else:
        view["vehicle"] = {
            "car": v.spec.name,
            "plugged": v.plugged,
            "soc": round(v.soc, 4),
            "ocv_v": round(v.ocv_v, 2),
            "contactors_closed": v.contactors_closed,
            "acceptance_a": round(v.acceptance_a(), 2),
            "energy_kwh": round(v.energy_kwh, 4),
            "max_voltage_v": v.spec.max_voltage_v,  # what an external controller needs to play the vehicle
            "charge_voltage_v": v.spec.charge_voltage_v,
            "target_soc": v.spec.target_soc,
            "full": v.full,
            "autonomous": v.autonomous,
        }
    return view
