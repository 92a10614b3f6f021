"""Config of the devices: meters, power modules, cable sensors."""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import Field, model_validator

from edge.config.base import Section
from edge.config.hardware import Name

# --- meters (owned by the meters area; register tables live in drivers/meters/models.py) -----------
# These Literals must list the keys of drivers.meters.models.MODELS / registers.TYPES / models.PLAUSIBLE;
# tests/test_meter_models.py checks that they do.
MeterModelName = Literal["sdm630", "abb_b23", "abb_b24", "em24", "generic"]


class MeterRegister(Section):
    """One row of a generic meter's register table (``[[meters.registers]]``)."""

    signal: str = Field(
        pattern=r"^[A-Z][A-Za-z]*(\.[A-Za-z0-9]+)*$",
        description="OCPP measurand (+ phase), e.g. Voltage.L1, Current.Import.L1",
    )
    address: int = Field(ge=0, le=0xFFFF, description="0-based register address")
    function_code: Literal[3, 4] = Field(4, description="3 = holding, 4 = input registers")
    type: Literal["u16", "s16", "u32", "s32", "u64", "s64", "float32"] = "float32"
    word_order: Literal["big", "little"] = Field("big", description="big: high word first; little: low word first")
    scale: float = Field(1.0, description="multiplier from the raw value to the unit")
    unit: Literal["V", "A", "W", "Hz", "kWh", "-"] = Field(description="unit after scaling")
    period: Literal["fast", "slow"] | None = Field(None, description="poll period class; default slow for kWh")
    min: float | None = Field(None, description="lowest plausible value; default by unit")
    max: float | None = Field(None, description="highest plausible value; default by unit")


class Meter(Section):
    name: str = Name
    model: MeterModelName = Field("sdm630", description="register table to use")
    line: str = Field(description="name of a [[serial]] line or [[modbus_tcp]] connection")
    device_id: int = Field(1, ge=1, le=247, description="Modbus device (slave) id")
    role: Literal["grid", "charger"] = Field("grid", description="grid: site main meter used for load management")
    poll_ms: int = Field(500, ge=100, le=60000, description="ms between two reads of power, current, voltage")
    slow_poll_ms: int = Field(5000, ge=100, le=600000, description="ms between two reads of energy counters")
    timeout_ms: int = Field(500, ge=50, le=5000, description="ms to wait for one reply at most (adaptive upper bound)")
    timeout_min_ms: int = Field(50, ge=10, le=5000, description="ms the adaptive reply timeout never goes below")
    backoff_initial_ms: int = Field(1000, ge=100, le=60000, description="ms before re-probing an absent meter")
    backoff_max_ms: int = Field(30000, ge=100, le=600000, description="ms the re-probe interval doubles up to")
    stale_after_ms: int = Field(3000, ge=200, le=60000, description="ms without a good read before values are stale")
    frozen_after_ms: int = Field(
        60000, ge=0, le=3600000, description="ms with every fast register unchanged before values are invalid; 0 = off"
    )
    max_registers_per_request: int = Field(125, ge=1, le=125, description="generic model: registers per read")
    rejects_gaps: bool = Field(False, description="generic model: never read across undefined registers")
    registers: list[MeterRegister] = Field(default_factory=list, description="generic model: the register table")

    @model_validator(mode="after")
    def _meter_checks(self) -> Meter:
        if self.timeout_min_ms > self.timeout_ms:
            raise ValueError(f"timeout_min_ms = {self.timeout_min_ms} must not exceed timeout_ms = {self.timeout_ms}")
        if self.backoff_initial_ms > self.backoff_max_ms:
            raise ValueError(
                f"backoff_initial_ms = {self.backoff_initial_ms} must not exceed backoff_max_ms = {self.backoff_max_ms}"
            )
        if self.model == "generic" and not self.registers:
            raise ValueError('model = "generic" needs a register table: add [[meters.registers]] rows')
        if self.model != "generic" and self.registers:
            raise ValueError(f'registers are only allowed with model = "generic" (model is {self.model!r})')
        if 0 < self.frozen_after_ms < 5000:
            raise ValueError(f"frozen_after_ms = {self.frozen_after_ms}: use 0 (off) or at least 5000")
        signals = [r.signal for r in self.registers]
        dup = sorted({s for s in signals if signals.count(s) > 1})
        if dup:
            raise ValueError(f"registers: signal(s) {dup} listed twice")
        spans = sorted((r.function_code, r.address, r.address + _WORDS[r.type], r.signal) for r in self.registers)
        for a, b in itertools.pairwise(spans):
            if a[0] == b[0] and b[1] < a[2]:
                raise ValueError(f"registers: {b[3]} at address {b[1]} overlaps {a[3]} ({a[1]}..{a[2] - 1})")
        wide = [r.signal for r in self.registers if _WORDS[r.type] > self.max_registers_per_request]
        if wide:
            raise ValueError(
                f"registers: {wide} need more than max_registers_per_request = {self.max_registers_per_request}"
            )
        return self


_WORDS = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "u64": 4, "s64": 4, "float32": 2}
# --- end meters -------------------------------------------------------------------------------------


class PowerModules(Section):
    bus: str = Field("can0", description="name of a [[can]] bus")
    protocol: Literal["infypower", "uugreen"] = Field(
        "infypower", description="vendor protocol; one codec per name in drivers/power_modules/registry.py"
    )
    addresses: list[int] = Field(default_factory=lambda: [1, 2], min_length=1, max_length=60)
    lost_after_ms: int = Field(
        3000, ge=500, le=9000, description="ms of silence before a module is lost; below the module's own 10 s"
    )
    poll_ms: int = Field(1000, ge=100, le=5000, description="ms between two status polls of one module")
    max_current_a: float = Field(50.0, gt=0, le=200, description="rated output current of one module, A")
    max_voltage_v: float = Field(1000.0, gt=0, le=1500, description="rated output voltage of one module, V")

    @model_validator(mode="after")
    def _unique(self) -> PowerModules:
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError("module addresses must be unique")
        if any(not 0 <= a <= 0x3E for a in self.addresses):
            raise ValueError("module addresses must be 0..62")
        if self.protocol == "uugreen" and 0 in self.addresses:
            raise ValueError("uugreen module address 0 is the broadcast address; use 1..62")
        return self


class CableSensor(Section):
    name: str = Name
    bus: str = Field("can0", description="name of a [[can]] bus")
    node_id: int = Field(1, ge=1, le=254, description="low byte of the monitor's frame ids")
    stale_after_ms: int = Field(
        300, ge=50, le=5000, description="ms without a frame before its values are stale (frames come every 100 ms)"
    )
