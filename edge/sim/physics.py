"""A small physical model of the cabinet, stepped in time.

- Output current: the vehicle draws up to its demand, limited by what the switched-on modules are set
  to deliver, and only while the contactor is closed.
- Cable pins heat with I^2 (contact resistance) and are cooled towards the coolant temperature with a
  coefficient that falls with coolant flow; with the pump stopped they heat up fast.
- Coolant outlet = inlet + heat taken from the cable / flow. Flow follows the pump with a time lag.
- Module temperature follows its load.
- Grid: a site base load per phase that moves slowly, plus the charger's AC draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Calibrated so that 200 A at full flow settles near 55 °C pins and 300 A reaches the derating band.
PIN_HEAT_K_PER_A2 = 6.0e-4  # °C of rise per A^2 at nominal flow
PIN_TAU_S = 8.0  # thermal time constant of a pin
NOMINAL_FLOW_LPM = 5.0
FLOW_TAU_S = 0.8
COOLANT_HEAT_K = 1.0e-4  # °C·(l/min) per A^2 of outlet rise
MODULE_TAU_S = 20.0
MODULE_K_PER_A = 0.6  # °C rise per A of module output


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


@dataclass
class Physics:
    modules: dict[int, ModuleModel]
    ambient_c: float = 25.0
    coolant_in_c: float = 25.0
    flow_lpm: float = 0.0
    pin_plus_c: float = 25.0
    pin_minus_c: float = 25.0
    coolant_out_c: float = 25.0
    pressure_bar: float = 0.2
    vehicle_demand_a: float = 180.0
    battery_v: float = 380.0
    contactor: bool = False
    pump_on: bool = False
    pump_failed: bool = False
    grid_base_a: float = 20.0
    grid_a: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    grid_v: list[float] = field(default_factory=lambda: [230.0, 230.0, 230.0])
    import_kwh: float = 1000.0
    t: float = 0.0

    @property
    def output_a(self) -> float:
        return sum(m.out_a for m in self.modules.values())

    def step(self, dt: float) -> None:
        self.t += dt
        # vehicle and modules
        on = [
            m for m in self.modules.values() if m.on and m.set_a > 0 and not m.silent and not (m.alarms - {"sleeping"})
        ]
        deliverable = sum(m.set_a for m in on)
        total = min(self.vehicle_demand_a, deliverable) if self.contactor else 0.0
        for m in self.modules.values():
            if m in on and deliverable > 0:
                m.out_a = total * m.set_a / deliverable
                m.out_v = self.battery_v if total > 0 else m.set_v
            else:
                m.out_a, m.out_v = 0.0, 0.0
            target = self.ambient_c + 5.0 + MODULE_K_PER_A * m.out_a
            m.temp_c += (target - m.temp_c) * min(1.0, dt / MODULE_TAU_S)
        i = self.output_a
        # coolant
        flow_target = NOMINAL_FLOW_LPM if (self.pump_on and not self.pump_failed) else 0.0
        self.flow_lpm += (flow_target - self.flow_lpm) * min(1.0, dt / FLOW_TAU_S)
        self.pressure_bar = 0.2 + 0.3 * self.flow_lpm
        flow_eff = max(self.flow_lpm, 0.3)
        self.coolant_out_c = self.coolant_in_c + COOLANT_HEAT_K * i * i / flow_eff * NOMINAL_FLOW_LPM / 5.0
        rise = PIN_HEAT_K_PER_A2 * i * i * NOMINAL_FLOW_LPM / max(self.flow_lpm, 0.5)
        for attr, bias in (("pin_plus_c", 1.0), ("pin_minus_c", 0.97)):
            cur = getattr(self, attr)
            target = self.coolant_out_c + rise * bias
            setattr(self, attr, cur + (target - cur) * min(1.0, dt / PIN_TAU_S))
        # grid: base load wanders, charger draws P/(eff*3*V) per phase
        charger_ac = self.battery_v * i / 0.95 / (3 * 230.0)
        for p in range(3):
            base = self.grid_base_a * (1.0 + 0.3 * math.sin(self.t / 30.0 + p))
            self.grid_a[p] = base + charger_ac
            self.grid_v[p] = 230.0 + 2.0 * math.sin(self.t / 7.0 + p)
        self.import_kwh += sum(v * a for v, a in zip(self.grid_v, self.grid_a, strict=True)) * dt / 3.6e6
