"""A small physical model of the cabinet, stepped in time, one output per connector.

Per connector (its own contactor, modules, cable, vehicle):

- A connector with a vehicle (every request source but the fixed bench one): the modules' output
  voltage slews towards their set voltage at ``SLEW_V_PER_S`` (down at the same rate when they are off:
  the modules' discharge). Current flows only into a plugged vehicle with both the connector's contactor
  and the vehicle's contactors closed; then the output is clamped to the battery (OCV + I x R) and the
  current is the least of the modules' set current, the vehicle's acceptance and what the battery takes
  at the modules' set voltage, (V_set - OCV) / R. The vehicle closes its contactors during pre-charge
  once the output is within 20 V of its battery, only behind a closed connector contactor
  (edge/sim/vehicle.py).
- A connector without a vehicle (the old single output, ``request = "fixed"``): the load draws up to its
  demand, limited by what the switched-on modules are set to deliver, whenever the contactor is closed.
- Cable pins heat with I^2 (contact resistance) and are cooled towards the coolant temperature with a
  coefficient that falls with coolant flow; with the pump stopped they heat up fast. A hot-pin offset
  (a bad contact) adds to the DC+ pin.
- Coolant outlet = inlet + heat taken from the cable / flow. Flow follows the one pump with a time lag.

Cabinet-wide: module temperature follows its load; the grid is a site base load per phase that moves
slowly, plus the charger's AC draw (the sum of every connector's output power).

The old single-output attributes (``pin_plus_c``, ``contactor``, ``vehicle_demand_a``, ``battery_v``,
...) are those of the first connector ("1").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

from edge.sim.vehicle import Vehicle

# Calibrated so that 200 A at full flow settles near 55 °C pins and 300 A reaches the derating band.
PIN_HEAT_K_PER_A2 = 6.0e-4  # °C of rise per A^2 at nominal flow
PIN_TAU_S = 8.0  # thermal time constant of a pin
NOMINAL_FLOW_LPM = 5.0
FLOW_TAU_S = 0.8
COOLANT_HEAT_K = 1.0e-4  # °C·(l/min) per A^2 of outlet rise
MODULE_TAU_S = 20.0
MODULE_K_PER_A = 0.6  # °C rise per A of module output
SLEW_V_PER_S = 500.0  # output voltage ramp of the modules with no load (and their discharge when off)
CHARGER_EFFICIENCY = 0.95
T = TypeVar("T")


@dataclass
class ModuleModel:
    address: int
    set_v: float = 0.0
    set_a: float = 0.0
    on: bool = False
    out_v: float = 0.0
    out_a: float = 0.0
    temp_c: float = 30.0
    alarms: set[str] = field(default_factory=set)
    silent: bool = False

    @property
    def delivering(self) -> bool:
        return self.on and self.set_a > 0 and not self.silent and not (self.alarms - {"sleeping"})


@dataclass
class ConnectorPhysics:
    """One output: contactor, modules, cable and coolant measurements, and its vehicle (or a fixed load)."""

    name: str
    modules: tuple[int, ...]
    vehicle: Vehicle | None = None  # None: the fixed load of the old single output (vehicle_demand_a)
    contactor: bool = False
    vehicle_demand_a: float = 180.0  # fixed load only
    battery_v: float = 380.0  # fixed load only
    output_v: float = 0.0
    output_a: float = 0.0
    flow_lpm: float = 0.0
    pin_plus_c: float = 25.0
    pin_minus_c: float = 25.0
    coolant_out_c: float = 25.0
    pressure_bar: float = 0.2
    hot_pin_c: float = 0.0  # a bad contact: extra °C on the DC+ pin at any current
    over_voltage_v: float = 0.0  # a regulation fault: the delivering modules measure the output this much higher

    @property
    def power_w(self) -> float:
        return self.output_v * self.output_a

    def step_output(self, mods: list[ModuleModel], dt: float) -> None:
        """Voltage and current of this output for one step; the modules' out_v / out_a follow."""
        on = [m for m in mods if m.delivering]
        deliverable = sum(m.set_a for m in on)
        if self.vehicle is None:
            self._fixed_load(mods, on, deliverable)
            return
        v = self.vehicle
        set_v = max((m.set_v for m in on), default=0.0)
        if self.contactor and v.plugged and v.contactors_closed:
            # the battery holds the output: modules regulate CC/CV against it
            amps = min(deliverable, v.acceptance_a(), v.current_at(set_v)) if on else 0.0
            self.output_a = max(0.0, amps)
            self.output_v = v.terminal_v(self.output_a)
            v.charge(self.output_a, dt)
        else:
            self.output_a = 0.0
            step_v = SLEW_V_PER_S * dt
            self.output_v += max(-step_v, min(step_v, set_v - self.output_v))
            if not self.contactor:
                # the connector's contactor opened under the vehicle (the session ended or the cabinet
                # stopped it): the vehicle sees its inlet go dead and opens too
                v.in_band_s = 0.0
                if v.contactors_closed:
                    v.open_contactors()
            elif v.autonomous:
                v.watch_inlet(self.output_v, dt)
            else:
                v.try_close(self.output_v)
        for m in mods:
            m.out_a = self.output_a * m.set_a / deliverable if m in on and deliverable > 0 else 0.0
            high = self.over_voltage_v if m in on else 0.0
            m.out_v = 0.0 if m.silent else self.output_v + high  # every module measures the common output

    def _fixed_load(self, mods: list[ModuleModel], on: list[ModuleModel], deliverable: float) -> None:
        total = min(self.vehicle_demand_a, deliverable) if self.contactor else 0.0
        for m in mods:
            if m in on and deliverable > 0:
                m.out_a = total * m.set_a / deliverable
                m.out_v = self.battery_v if total > 0 else m.set_v
            else:
                m.out_a, m.out_v = 0.0, 0.0
        self.output_a = total
        self.output_v = self.battery_v if total > 0 else max((m.set_v for m in on), default=0.0)

    def step_cable(self, flow_target_lpm: float, coolant_in_c: float, dt: float) -> None:
        i = self.output_a
        self.flow_lpm += (flow_target_lpm - self.flow_lpm) * min(1.0, dt / FLOW_TAU_S)
        self.pressure_bar = 0.2 + 0.3 * self.flow_lpm
        flow_eff = max(self.flow_lpm, 0.3)
        self.coolant_out_c = coolant_in_c + COOLANT_HEAT_K * i * i / flow_eff * NOMINAL_FLOW_LPM / 5.0
        rise = PIN_HEAT_K_PER_A2 * i * i * NOMINAL_FLOW_LPM / max(self.flow_lpm, 0.5)
        self.pin_plus_c = _lag(self.pin_plus_c, self.coolant_out_c + rise + self.hot_pin_c, dt)
        self.pin_minus_c = _lag(self.pin_minus_c, self.coolant_out_c + rise * 0.97, dt)


def _lag(value: float, target: float, dt: float) -> float:
    return value + (target - value) * min(1.0, dt / PIN_TAU_S)


class _Primary(Generic[T]):
    """An old single-output attribute of :class:`Physics`: that of the first connector."""

    def __init__(self, attr: str) -> None:
        self.attr = attr

    def __get__(self, physics: Physics, owner: type | None = None) -> T:
        return cast(T, getattr(physics.primary, self.attr))

    def __set__(self, physics: Physics, value: T) -> None:
        setattr(physics.primary, self.attr, value)


@dataclass
class Physics:
    modules: dict[int, ModuleModel]
    connectors: dict[str, ConnectorPhysics] = field(default_factory=dict)  # in connector order
    ambient_c: float = 25.0
    coolant_in_c: float = 25.0
    pump_on: bool = False
    pump_failed: bool = False
    grid_base_a: float = 20.0
    grid_a: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    grid_v: list[float] = field(default_factory=lambda: [230.0, 230.0, 230.0])
    import_kwh: float = 1000.0
    t: float = 0.0
    # power sharing (issue 16): which modules feed which connector now, from the relay matrix; None = static
    routing: Callable[[], dict[str, tuple[int, ...]]] | None = None

    def __post_init__(self) -> None:
        if not self.connectors:
            self.connectors = {"1": ConnectorPhysics("1", tuple(self.modules))}

    @classmethod
    def with_connectors(cls, modules: Iterable[int], connectors: Iterable[ConnectorPhysics]) -> Physics:
        return cls({a: ModuleModel(a) for a in modules}, {c.name: c for c in connectors})

    @property
    def primary(self) -> ConnectorPhysics:
        return next(iter(self.connectors.values()))

    pin_plus_c = _Primary[float]("pin_plus_c")
    pin_minus_c = _Primary[float]("pin_minus_c")
    coolant_out_c = _Primary[float]("coolant_out_c")
    flow_lpm = _Primary[float]("flow_lpm")
    pressure_bar = _Primary[float]("pressure_bar")
    vehicle_demand_a = _Primary[float]("vehicle_demand_a")
    battery_v = _Primary[float]("battery_v")
    contactor = _Primary[bool]("contactor")

    @property
    def output_a(self) -> float:
        return sum(m.out_a for m in self.modules.values())

    @property
    def output_w(self) -> float:
        return sum(c.power_w for c in self.connectors.values())

    def step(self, dt: float) -> None:
        self.t += dt
        if self.routing is not None:  # power sharing: modules feed the connector their group's relay closes to
            routed = self.routing()
            for name, conn in self.connectors.items():
                conn.modules = routed.get(name, ())
            fed = {a for mods in routed.values() for a in mods}
            for a, m in self.modules.items():
                if a not in fed:
                    m.out_a = 0.0  # its relays are open: it feeds nothing
        for conn in self.connectors.values():
            conn.step_output([self.modules[a] for a in conn.modules if a in self.modules], dt)
        for m in self.modules.values():
            target = self.ambient_c + 5.0 + MODULE_K_PER_A * m.out_a
            m.temp_c += (target - m.temp_c) * min(1.0, dt / MODULE_TAU_S)
        flow_target = NOMINAL_FLOW_LPM if (self.pump_on and not self.pump_failed) else 0.0
        for conn in self.connectors.values():
            conn.step_cable(flow_target, self.coolant_in_c, dt)
        # grid: base load wanders, the charger draws its output power / efficiency, spread over 3 phases
        charger_ac = self.output_w / CHARGER_EFFICIENCY / (3 * 230.0)
        for p in range(3):
            base = self.grid_base_a * (1.0 + 0.3 * math.sin(self.t / 30.0 + p))
            self.grid_a[p] = base + charger_ac
            self.grid_v[p] = 230.0 + 2.0 * math.sin(self.t / 7.0 + p)
        self.import_kwh += sum(v * a for v, a in zip(self.grid_v, self.grid_a, strict=True)) * dt / 3.6e6
