"""A simulated electric vehicle behind one connector: battery, its own contactors, what it accepts.

Pure (no thread, no clock): the physics (edge/sim/physics.py) and the simulated charging controller
(edge/sim/session.py) step it with the time that passed.

- Battery: open-circuit voltage from a monotonic table over the state of charge, an internal resistance,
  a capacity. Its terminal voltage while charging is OCV + I x R; the energy stored is OCV x I x dt (the
  I^2 R part heats the pack), so the state of charge rises with the energy delivered.
- Contactors: the vehicle closes its own contactors only during pre-charge and only when the voltage at
  its inlet is within ``precharge_tolerance_v`` (20 V, IEC 61851-23) of its battery voltage; closing with
  a larger difference would send an inrush through the contactors. With the built-in charging controller
  (edge/sim/session.py, which plays the vehicle's side of the protocol too) pre-charge is armed
  (``precharging``) and the vehicle closes at once. A vehicle whose session an external controller runs
  (``autonomous``: it cannot see that controller's phases) closes once its inlet has stayed within the
  tolerance for ``PRECHARGE_SETTLE_S`` (a cable check only passes through its battery voltage). Every
  vehicle opens its contactors when the connector's contactor opens under it (the end of an external
  controller's session, or the cabinet stopping the output).
- Acceptance (CC/CV): the most current the vehicle asks for falls with the state of charge (the BMS
  taper) and near its charge voltage (constant voltage: no more than (charge voltage - OCV) / R).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

PRECHARGE_TOLERANCE_V = 20.0
PRECHARGE_SETTLE_S = 0.5  # autonomous vehicle: inlet within the tolerance this long before it closes


@dataclass(frozen=True)
class VehicleSpec:
    """One vehicle type. Voltages in V, currents in A, the table as (state of charge 0..1, OCV V) pairs."""

    name: str
    ocv_table: tuple[tuple[float, float], ...]
    resistance_ohm: float
    capacity_kwh: float
    max_current_a: float  # the most it ever asks for (the BMS limit at low state of charge)
    charge_voltage_v: float  # constant-voltage point: its target voltage in CurrentDemand
    max_voltage_v: float  # EVMaximumVoltageLimit: the cable-check voltage derives from it
    # (state of charge, fraction of max_current_a) pairs: the BMS taper, linear in between
    taper: tuple[tuple[float, float], ...] = ((0.0, 1.0), (0.5, 1.0), (0.8, 0.4), (1.0, 0.05))
    target_soc: float = 0.8  # where the vehicle ends the session
    precharge_tolerance_v: float = PRECHARGE_TOLERANCE_V

    def __post_init__(self) -> None:
        socs = [s for s, _ in self.ocv_table]
        volts = [v for _, v in self.ocv_table]
        if len(self.ocv_table) < 2 or socs[0] != 0.0 or socs[-1] != 1.0:
            raise ValueError(f"{self.name}: the OCV table must run from SoC 0 to 1")
        if any(b <= a for a, b in pairwise(socs)) or any(b <= a for a, b in pairwise(volts)):
            raise ValueError(f"{self.name}: the OCV table must rise strictly with the state of charge")
        if self.charge_voltage_v <= volts[-1] or self.max_voltage_v < self.charge_voltage_v:
            raise ValueError(f"{self.name}: need full OCV < charge voltage <= max voltage")


# A 400 V class car (a 60 kWh pack of 96 cells in series): 350-403 V, 200 A, 470 V cable check.
CAR_400V = VehicleSpec(
    name="400v",
    ocv_table=((0.0, 350.0), (0.1, 362.0), (0.3, 372.0), (0.5, 380.0), (0.8, 393.0), (0.95, 400.0), (1.0, 403.0)),
    resistance_ohm=0.05,
    capacity_kwh=60.0,
    max_current_a=200.0,
    charge_voltage_v=408.0,
    max_voltage_v=420.0,
)

# An 800 V class car (84 kWh, 192 cells): 700-806 V, 300 A; cable check 1.1 x 836 V = 920 V, pre-charge
# to 752 V at 20 %.
CAR_800V = VehicleSpec(
    name="800v",
    ocv_table=((0.0, 700.0), (0.1, 735.0), (0.2, 752.0), (0.5, 772.0), (0.8, 790.0), (0.95, 800.0), (1.0, 806.0)),
    resistance_ohm=0.027,
    capacity_kwh=84.0,
    max_current_a=300.0,
    charge_voltage_v=816.0,
    max_voltage_v=836.0,
)

VEHICLE_TYPES: dict[str, VehicleSpec] = {CAR_400V.name: CAR_400V, CAR_800V.name: CAR_800V}
DEFAULT_SOC = {CAR_400V.name: 0.30, CAR_800V.name: 0.20}


def _interpolate(table: tuple[tuple[float, float], ...], x: float) -> float:
    if x <= table[0][0]:
        return table[0][1]
    for (x0, y0), (x1, y1) in pairwise(table):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return table[-1][1]


@dataclass
class Vehicle:
    """One vehicle, plugged in or not. Mutated in place (its connector keeps the same object)."""

    spec: VehicleSpec
    soc: float = 0.3  # state of charge 0..1
    plugged: bool = False
    contactors_closed: bool = False
    precharging: bool = False  # the vehicle is in PreCharge: it closes once its inlet is close enough
    energy_kwh: float = 0.0  # delivered into the pack since plug-in (at the terminals)
    autonomous: bool = False  # an external charging controller runs its sessions (see the module doc)
    in_band_s: float = 0.0  # autonomous: how long the inlet has been within the pre-charge tolerance

    @classmethod
    def of_type(cls, name: str, soc: float | None = None, plugged: bool = False) -> Vehicle:
        spec = VEHICLE_TYPES[name]
        return cls(spec, DEFAULT_SOC.get(name, 0.3) if soc is None else soc, plugged)

    # -- battery -------------------------------------------------------------------------------------
    @property
    def ocv_v(self) -> float:
        return _interpolate(self.spec.ocv_table, self.soc)

    def terminal_v(self, current_a: float) -> float:
        return self.ocv_v + current_a * self.spec.resistance_ohm

    def current_at(self, terminal_v: float) -> float:
        """What the battery takes at ``terminal_v`` (it never gives back: the supply blocks reverse current)."""
        return max(0.0, (terminal_v - self.ocv_v) / self.spec.resistance_ohm)

    def charge(self, current_a: float, dt_s: float) -> None:
        """``current_a`` flowed into the pack for ``dt_s``: the state of charge rises with the energy."""
        if current_a <= 0.0 or dt_s <= 0.0:
            return
        stored_kwh = self.ocv_v * current_a * dt_s / 3.6e6
        self.energy_kwh += self.terminal_v(current_a) * current_a * dt_s / 3.6e6
        self.soc = min(1.0, self.soc + stored_kwh / self.spec.capacity_kwh)

    # -- what it asks for ----------------------------------------------------------------------------
    def acceptance_a(self) -> float:
        """The most current it accepts now: the BMS taper over SoC, and constant voltage near full."""
        bms_a = self.spec.max_current_a * _interpolate(self.spec.taper, self.soc)
        cv_a = (self.spec.charge_voltage_v - self.ocv_v) / self.spec.resistance_ohm
        return max(0.0, min(bms_a, cv_a))

    @property
    def full(self) -> bool:
        return self.soc >= self.spec.target_soc

    # -- contactors and plug -------------------------------------------------------------------------
    def try_close(self, inlet_v: float) -> bool:
        """Pre-charge: close the contactors if armed and the inlet is within the tolerance of the battery."""
        if (
            self.plugged
            and self.precharging
            and not self.contactors_closed
            and abs(inlet_v - self.ocv_v) <= self.spec.precharge_tolerance_v
        ):
            self.contactors_closed = True
            self.precharging = False
        return self.contactors_closed

    def watch_inlet(self, inlet_v: float, dt_s: float) -> bool:
        """Autonomous pre-charge: close once the inlet has been within the tolerance for PRECHARGE_SETTLE_S."""
        if not self.plugged or self.contactors_closed:
            self.in_band_s = 0.0
            return self.contactors_closed
        if abs(inlet_v - self.ocv_v) <= self.spec.precharge_tolerance_v:
            self.in_band_s += dt_s
        else:
            self.in_band_s = 0.0
        if self.in_band_s >= PRECHARGE_SETTLE_S - 1e-9:
            self.contactors_closed = True
            self.in_band_s = 0.0
        return self.contactors_closed

    def open_contactors(self) -> None:
        self.contactors_closed = False
        self.precharging = False
        self.in_band_s = 0.0

    def plug_in(self, spec: VehicleSpec | None = None, soc: float | None = None) -> None:
        """Plug in (optionally another vehicle type, or at another state of charge)."""
        if spec is not None:
            self.spec = spec
        if soc is not None:
            self.soc = soc
        self.plugged = True
        self.energy_kwh = 0.0
        self.open_contactors()

    def unplug(self) -> None:
        self.plugged = False
        self.open_contactors()
