"""Safety limits. Every rule has a unit, a default, an allowed range and a latch policy.

docs/SAFETY.md explains each rule; the pure core in ``edge/limits`` receives ``model_dump()`` of this.
Defaults are conservative: no public standard gives trip temperatures for cable pins or coolant.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from edge.config.base import Section


class TemperatureRule(Section):
    """Linear derating from ``derate_start_c`` (full current) to ``derate_end_c`` (0 A); trip above ``trip_c``."""

    derate_start_c: float = Field(ge=-40, le=200)
    derate_end_c: float = Field(ge=-40, le=200)
    trip_c: float = Field(ge=-40, le=200)
    latch: bool = Field(True, description="a trip stays until an explicit clear with the condition gone")

    @model_validator(mode="after")
    def _order(self) -> TemperatureRule:
        if not self.derate_start_c < self.derate_end_c <= self.trip_c:
            raise ValueError(
                f"need derate_start_c < derate_end_c <= trip_c, got "
                f"{self.derate_start_c} / {self.derate_end_c} / {self.trip_c} °C"
            )
        return self


def _temp(start: float, end: float, trip: float) -> TemperatureRule:
    return TemperatureRule(derate_start_c=start, derate_end_c=end, trip_c=trip)


class CoolantFlowRule(Section):
    """Full current at or above ``derate_start_lpm``, 0 A at ``derate_end_lpm``; trip below ``trip_lpm``
    for longer than ``trip_delay_ms`` (a pump takes a moment to spin up)."""

    derate_start_lpm: float = Field(3.0, ge=0, le=50)
    derate_end_lpm: float = Field(1.5, ge=0, le=50)
    trip_lpm: float = Field(1.0, ge=0, le=50)
    trip_delay_ms: int = Field(2000, ge=0, le=30000)
    latch: bool = True

    @model_validator(mode="after")
    def _order(self) -> CoolantFlowRule:
        if not self.trip_lpm <= self.derate_end_lpm < self.derate_start_lpm:
            raise ValueError("need trip_lpm <= derate_end_lpm < derate_start_lpm")
        return self


class OverCurrentRule(Section):
    tolerance_a: float = Field(10.0, ge=0, le=100, description="A above the commanded limit before counting")
    time_ms: int = Field(500, ge=10, le=5000, description="ms above limit + tolerance before a trip")
    settle_ms: int = Field(
        1000,
        ge=0,
        le=10000,
        description="ms after a reduction during which the previous limit still counts "
        "(the output current needs time to fall to the new set-point)",
    )
    latch: bool = True


class OverVoltageRule(Section):
    max_v: float = Field(1000.0, ge=50, le=1500, description="V; above this for time_ms -> trip")
    time_ms: int = Field(400, ge=10, le=5000, description="IEC 61851-23: > 400 ms above the maximum -> shutdown")
    latch: bool = True


class GridRule(Section):
    """Dynamic load management against the site fuse, from the grid meter."""

    fuse_a: float = Field(63.0, ge=6, le=4000, description="site main fuse per phase, A")
    margin_a: float = Field(3.0, ge=0, le=100, description="A kept free below the fuse")
    phase_voltage_v: float = Field(230.0, ge=100, le=400, description="nominal L-N voltage if the meter has none")
    efficiency: float = Field(0.95, ge=0.5, le=1.0, description="AC->DC efficiency of the modules")
    meter_loss_ms: int = Field(5000, ge=500, le=600000, description="ms without a good grid reading before fallback")
    fallback_ac_a: float = Field(16.0, ge=0, le=4000, description="A per phase allowed while the grid meter is lost")
    settle_ms: int = Field(
        1500,
        ge=0,
        le=30000,
        description="ms of charger output history; its smallest value is our share of the "
        "meter reading (meter and modules are read at different times)",
    )


class PlausibilityRule(Section):
    pin_disagree_c: float = Field(25.0, ge=1, le=200, description="DC+ and DC- pins further apart than this -> fault")
    max_rate_c_per_s: float = Field(20.0, ge=0.5, le=500, description="faster temperature change is implausible")
    step_allowance_c: float = Field(
        2.0, ge=0, le=50, description="°C allowed on top of rate x time (quantisation, bunched frames)"
    )
    latch: bool = True


class LimitsConfig(Section):
    max_output_current_a: float = Field(200.0, gt=0, le=1000, description="hardware limit of cable/connector, A")
    max_output_voltage_v: float = Field(1000.0, gt=0, le=1500, description="hardware limit of the output, V")
    ramp_up_a_per_s: float = Field(25.0, ge=20, le=1000, description="increase rate; IEC 61851-23 needs >= 20 A/s")
    raise_hold_ms: int = Field(2000, ge=0, le=60000, description="a lower limit must hold this long before rising")
    hold_reset_a: float = Field(
        2.0, ge=0, le=100, description="a drop larger than this (A) restarts the hold; smaller ones are noise"
    )
    remote_clear_allowed: bool = Field(False, description="may cloud commands clear latched faults")
    pin_temperature: TemperatureRule = _temp(70.0, 90.0, 95.0)
    coolant_temperature: TemperatureRule = _temp(45.0, 60.0, 65.0)
    module_temperature: TemperatureRule = _temp(75.0, 90.0, 95.0)
    ambient_temperature: TemperatureRule = _temp(45.0, 55.0, 60.0)
    coolant_flow: CoolantFlowRule = CoolantFlowRule()
    over_current: OverCurrentRule = OverCurrentRule()
    over_voltage: OverVoltageRule = OverVoltageRule()
    grid: GridRule = GridRule()
    plausibility: PlausibilityRule = PlausibilityRule()
    sensor_stale_ms: int = Field(
        300, ge=50, le=5000, description="ms without a fresh safety input before 0 A (cable frames every 100 ms)"
    )
    slow_input_stale_ms: int = Field(
        5000,
        ge=500,
        le=60000,
        description="ms before module temperature, ambient and output measurements "
        "count as stale (they come with the module poll)",
    )
    ambient_signal: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="reading that is the cabinet ambient temperature, °C, "
        "e.g. 'cabinet.ambient_c'; unset = no ambient sensor, rule off",
    )
