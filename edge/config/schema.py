"""The root of the configuration file, and the checks that span sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge.config.base import Section
from edge.config.crosschecks import check_setpoints
from edge.config.devices import CableSensor, Meter, PowerModules
from edge.config.hardware import CanBus, ModbusTcp, Outputs, SerialLine, Watchdog
from edge.config.limits import LimitsConfig
from edge.config.telemetry import Telemetry


class Cabinet(Section):
    site_id: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$", description="site identifier used in MQTT topics")
    cabinet_id: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$", description="cabinet identifier used in MQTT topics")


class Control(Section):
    tick_ms: int = Field(100, ge=10, le=1000, description="period of the safety evaluation when no frame arrives")
    output_voltage_v: float = Field(400.0, ge=50, le=1500, description="voltage set-point sent to the modules")
    requested_current_a: float = Field(
        200.0, ge=0, le=1000, description="current asked for when no charging controller sets one"
    )


class Api(Section):
    """Local control socket for the `edge` CLI (protocol and permissions: docs/CLI.md)."""

    socket: str = Field(
        "/run/cabinet-edge/edge.sock",
        description="path of the local control socket; created with mode 0660, owned by `group`",
    )
    group: str = Field("cabinet-edge", description="group allowed to read (status, faults, events, watch, diag)")
    admin_group: str = Field(
        "cabinet-edge-admin",
        description="group also allowed to change (clear, limit, stop/resume, selftest); root always may",
    )


class Storage(Section):
    data_dir: str = Field("/var/lib/cabinet-edge", description="telemetry store and state")


class Logging(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(Section):
    cabinet: Cabinet
    control: Control = Control()
    serial: list[SerialLine] = []
    modbus_tcp: list[ModbusTcp] = []
    can: list[CanBus] = []
    meters: list[Meter] = []
    power_modules: PowerModules = PowerModules()
    cable: list[CableSensor] = []
    outputs: Outputs = Outputs()
    watchdog: Watchdog = Watchdog()
    limits: LimitsConfig = LimitsConfig()
    telemetry: Telemetry = Telemetry()
    api: Api = Api()
    storage: Storage = Storage()
    logging: Logging = Logging()

    @model_validator(mode="after")
    def _references(self) -> Config:
        lines = [s.name for s in self.serial] + [t.name for t in self.modbus_tcp]
        buses = [c.name for c in self.can]
        for kind, names in (
            ("serial/modbus_tcp line", lines),
            ("can bus", buses),
            ("meter", [m.name for m in self.meters]),
            ("cable", [c.name for c in self.cable]),
        ):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"{kind} names must be unique: {sorted(dup)} used twice")
        for m in self.meters:
            if m.line not in lines:
                raise ValueError(
                    f"meter {m.name!r}: line {m.line!r} is not a [[serial]] or [[modbus_tcp]] name (have {lines})"
                )
        for c in self.cable:
            if c.bus not in buses:
                raise ValueError(f"cable {c.name!r}: bus {c.bus!r} is not a [[can]] name (have {buses})")
        if self.power_modules.bus not in buses:
            raise ValueError(f"power_modules: bus {self.power_modules.bus!r} is not a [[can]] name (have {buses})")
        if len([m for m in self.meters if m.role == "grid"]) > 1:
            raise ValueError('at most one meter may have role = "grid"')
        check_setpoints(self)  # every set-point within every hardware limit (edge/config/crosschecks.py)
        return self
