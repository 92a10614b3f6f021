"""Safety limits. Every rule has a unit, a default, an allowed range and a latch policy.

docs/SAFETY.md explains each rule; the pure core in ``edge/limits`` receives ``model_dump()`` of this.
Defaults are conservative: no public standard gives trip temperatures for cable pins or coolant.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from edge.config.base import Loc, Section, check, set_in_file

TEMP_MIN_C, TEMP_MAX_C = -40.0, 200.0
FLOW_MAX_LPM = 50.0


class TemperatureRule(Section):
    """Linear derating from ``derate_start_c`` (full current) to ``derate_end_c`` (0 A); trip above ``trip_c``.

    The order is checked (edge/limits/core.py ``_derate`` divides by ``end - start``; a trip below the
    derating end would make the derating pointless): each problem at the key the file sets, with its range.
    """

    derate_start_c: float = Field(ge=TEMP_MIN_C, le=TEMP_MAX_C)
    derate_end_c: float = Field(ge=TEMP_MIN_C, le=TEMP_MAX_C)
    trip_c: float = Field(ge=TEMP_MIN_C, le=TEMP_MAX_C)
    latch: bool = Field(True, description="a trip stays until an explicit clear with the condition gone")

    @model_validator(mode="after")
    def _order(self) -> TemperatureRule:
        check(self._order_problems())
        return self

    def _order_problems(self) -> list[tuple[Loc, str]]:
        start, end, trip = self.derate_start_c, self.derate_end_c, self.trip_c
        need = "(need derate_start_c < derate_end_c <= trip_c)"
        if not start < end:
            if set_in_file(self, "derate_end_c", "derate_start_c") == "derate_end_c":
                return [
                    (
                        ("derate_end_c",),
                        f"not above derate_start_c = {start:g} °C {need}: "
                        f"allowed {start:g} < derate_end_c <= {trip:g} °C",
                    )
                ]
            return [
                (
                    ("derate_start_c",),
                    f"not below derate_end_c = {end:g} °C {need}: "
                    f"allowed {TEMP_MIN_C:g} <= derate_start_c < {end:g} °C",
                )
            ]
        if not end <= trip:
            if set_in_file(self, "trip_c", "derate_end_c") == "trip_c":
                return [(("trip_c",), f"below derate_end_c = {end:g} °C {need}: allowed {end:g}..{TEMP_MAX_C:g} °C")]
            return [
                (
                    ("derate_end_c",),
                    f"above trip_c = {trip:g} °C {need}: allowed {start:g} < derate_end_c <= {trip:g} °C",
                )
            ]
        return []


def _c(default: float) -> Any:
    return Field(default, ge=TEMP_MIN_C, le=TEMP_MAX_C)


# One class per temperature with its documented defaults as field defaults: a partial section
# (``[limits.pin_temperature]`` with only ``trip_c``) takes them for the keys it leaves out, and
# ``model_fields_set`` still says which keys the file sets (problems are reported at those).
class PinTemperature(TemperatureRule):
    __doc__ = TemperatureRule.__doc__
    derate_start_c: float = _c(70.0)
    derate_end_c: float = _c(90.0)
    trip_c: float = _c(95.0)


class CoolantTemperature(TemperatureRule):
    __doc__ = TemperatureRule.__doc__
    derate_start_c: float = _c(45.0)
    derate_end_c: float = _c(60.0)
    trip_c: float = _c(65.0)


class ModuleTemperature(TemperatureRule):
    __doc__ = TemperatureRule.__doc__
    derate_start_c: float = _c(75.0)
    derate_end_c: float = _c(90.0)
    trip_c: float = _c(95.0)


class AmbientTemperature(TemperatureRule):
    __doc__ = TemperatureRule.__doc__
    derate_start_c: float = _c(45.0)
    derate_end_c: float = _c(55.0)
    trip_c: float = _c(60.0)


class CoolantFlowRule(Section):
    """Full current at or above ``derate_start_lpm``, 0 A at ``derate_end_lpm``; trip below ``trip_lpm``
    for longer than ``trip_delay_ms`` (a pump takes a moment to spin up).

    ``trip_lpm`` must be above 0 (flow is never below 0: a trip at 0 could never fire) and at or below the
    derating end, which is below its start; each problem at the key the file sets, with its range."""

    derate_start_lpm: float = Field(3.0, ge=0, le=FLOW_MAX_LPM)
    derate_end_lpm: float = Field(1.5, ge=0, le=FLOW_MAX_LPM)
    trip_lpm: float = Field(1.0, gt=0, le=FLOW_MAX_LPM)
    trip_delay_ms: int = Field(2000, ge=0, le=30000)
    latch: bool = True

    @model_validator(mode="after")
    def _order(self) -> CoolantFlowRule:
        check(self._order_problems())
        return self

    def _order_problems(self) -> list[tuple[Loc, str]]:
        start, end, trip = self.derate_start_lpm, self.derate_end_lpm, self.trip_lpm
        need = "(need trip_lpm <= derate_end_lpm < derate_start_lpm)"
        if not end < start:
            if set_in_file(self, "derate_start_lpm", "derate_end_lpm") == "derate_start_lpm":
                return [
                    (
                        ("derate_start_lpm",),
                        f"not above derate_end_lpm = {end:g} l/min {need}: "
                        f"allowed {end:g} < derate_start_lpm <= {FLOW_MAX_LPM:g} l/min",
                    )
                ]
            return [
                (
                    ("derate_end_lpm",),
                    f"not below derate_start_lpm = {start:g} l/min {need}: "
                    f"allowed {trip:g} <= derate_end_lpm < {start:g} l/min",
                )
            ]
        if not trip <= end:
            if set_in_file(self, "trip_lpm", "derate_end_lpm") == "trip_lpm":
                return [
                    (
                        ("trip_lpm",),
                        f"above derate_end_lpm = {end:g} l/min {need}: allowed 0 < trip_lpm <= {end:g} l/min",
                    )
                ]
            return [
                (
                    ("derate_end_lpm",),
                    f"below trip_lpm = {trip:g} l/min {need}: allowed {trip:g} <= derate_end_lpm < {start:g} l/min",
                )
            ]
        return []


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

    @model_validator(mode="after")
    def _fits_the_fuse(self) -> GridRule:
        check(self._fuse_problems())
        return self

    def _fuse_problems(self) -> list[tuple[Loc, str]]:
        """The margin below the fuse, and the fallback within what is left: while the grid meter is lost the
        site's own load is unknown, so a fallback above the fuse could blow it on its own."""
        fuse, margin, fallback = self.fuse_a, self.margin_a, self.fallback_ac_a
        if margin >= fuse:
            never = "(no current could ever be allowed)"
            if set_in_file(self, "margin_a", "fuse_a") == "margin_a":
                return [(("margin_a",), f"not below fuse_a = {fuse:g} A {never}: allowed 0 <= margin_a < {fuse:g} A")]
            return [(("fuse_a",), f"not above margin_a = {margin:g} A {never}: allowed {margin:g} < fuse_a <= 4000 A")]
        room = fuse - margin
        if fallback <= room:
            return []
        key = set_in_file(self, "fallback_ac_a", "fuse_a", "margin_a")
        if key == "fallback_ac_a":
            msg = f"above fuse_a - margin_a = {fuse:g} - {margin:g} = {room:g} A"
        else:
            msg = (
                f"leaves fuse_a - margin_a = {fuse:g} - {margin:g} = {room:g} A, below fallback_ac_a = "
                f"{fallback:g} A (its default, not set in the file): set fallback_ac_a"
            )
        return [((key,), f"{msg} (the site load is unknown while the meter is lost): allowed 0..{room:g} A")]


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
    pin_temperature: PinTemperature = PinTemperature()
    coolant_temperature: CoolantTemperature = CoolantTemperature()
    module_temperature: ModuleTemperature = ModuleTemperature()
    ambient_temperature: AmbientTemperature = AmbientTemperature()
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
