"""Config of the devices: meters, power modules, cable sensors."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge.config.base import Section
from edge.config.hardware import Name


class Meter(Section):
    name: str = Name
    model: Literal["sdm630"] = Field("sdm630", description="register table to use")
    line: str = Field(description="name of a [[serial]] line or [[modbus_tcp]] connection")
    device_id: int = Field(1, ge=1, le=247, description="Modbus device (slave) id")
    role: Literal["grid", "charger"] = Field("grid", description="grid: site main meter used for load management")
    poll_ms: int = Field(500, ge=100, le=60000, description="ms between two full reads")
    timeout_ms: int = Field(500, ge=50, le=5000, description="ms to wait for one reply")
    stale_after_ms: int = Field(3000, ge=200, le=60000, description="ms without a good read before values are stale")


class PowerModules(Section):
    bus: str = Field("can0", description="name of a [[can]] bus")
    protocol: Literal["infypower", "uugreen"] = Field(
        "infypower", description="vendor protocol; one codec per name in drivers/power_modules/registry.py")
    addresses: list[int] = Field(default_factory=lambda: [1, 2], min_length=1, max_length=60)
    lost_after_ms: int = Field(3000, ge=500, le=9000,
                               description="ms of silence before a module is lost; below the module's own 10 s")
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
    stale_after_ms: int = Field(300, ge=50, le=5000,
                                description="ms without a frame before its values are stale (frames come every 100 ms)")
