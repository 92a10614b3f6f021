"""The root of the configuration file, and the checks that span sections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from edge.config.base import Loc, Section, check
from edge.config.connectors import Connector, Contactors, Everest, Session, legacy_connector
from edge.config.crosschecks import connector_notes, connector_problems, pin_problems, setpoint_problems
from edge.config.devices import CableSensor, Meter, PowerModules
from edge.config.digital_inputs import DigitalInput, input_problems
from edge.config.hardware import CanBus, ModbusTcp, Outputs, SerialLine, Watchdog
from edge.config.isolation import IsolationMonitor, IsolationRule, OverVoltageMonitor, isolation_problems
from edge.config.limits import LimitsConfig
from edge.config.remote import Remote
from edge.config.sharing import ModuleGroup, Relay, Sharing, sharing_problems
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
    connector: list[Connector] = []
    everest: Everest = Everest()
    session: Session = Session()
    contactors: Contactors = Contactors()
    sharing: Sharing | None = None
    module_group: list[ModuleGroup] = []
    relay: list[Relay] = []
    outputs: Outputs = Outputs()
    input: list[DigitalInput] = []  # digital safety inputs: e-stop, door, water, tilt
    watchdog: Watchdog = Watchdog()
    limits: LimitsConfig = LimitsConfig()
    isolation_monitor: list[IsolationMonitor] = []
    isolation: IsolationRule = IsolationRule()
    over_voltage_monitor: OverVoltageMonitor = OverVoltageMonitor()
    telemetry: Telemetry = Telemetry()
    api: Api = Api()
    storage: Storage = Storage()
    logging: Logging = Logging()
    remote: Remote = Remote()

    @model_validator(mode="after")
    def _references(self) -> Config:
        check(
            self._unique_names()
            + self._dangling_references()
            + self._one_grid_meter()
            # edge/config/crosschecks.py: set-points within every hardware limit, connectors against the rest
            + setpoint_problems(self)
            + connector_problems(self)
            + pin_problems(self)
            + input_problems(self)
            + isolation_problems(self)
            + sharing_problems(self)
        )
        return self

    def resolved_connectors(self) -> list[Connector]:
        """The charging outputs: the ``[[connector]]`` tables, or for a file without any the one connector its
        old keys describe (name "1", request "fixed"). Every consumer reads this, never ``connector``."""
        return list(self.connector) if self.connector else [legacy_connector(self)]

    def notes(self) -> list[str]:
        """Warnings for ``edge config check`` and the daemon's start-up log: allowed, but worth a look (the old
        single-output form, a connector rated above its modules, keys set but unused)."""
        return connector_notes(self)

    def _unique_names(self) -> list[tuple[Loc, str]]:
        """Every name once per kind; the problem is at the second use. Serial lines and Modbus TCP
        connections share one name space (a meter's ``line`` names either)."""
        kinds = [
            ("serial/modbus_tcp line", _named("serial", self.serial) + _named("modbus_tcp", self.modbus_tcp)),
            ("can bus", _named("can", self.can)),
            ("meter", _named("meters", self.meters)),
            ("cable", _named("cable", self.cable)),
        ]
        out: list[tuple[Loc, str]] = []
        for kind, named in kinds:
            seen: set[str] = set()
            for loc, name in named:
                if name in seen:
                    out.append(((*loc, "name"), f"{kind} names must be unique: {name!r} used twice"))
                seen.add(name)
        return out

    def _dangling_references(self) -> list[tuple[Loc, str]]:
        lines = [s.name for s in self.serial] + [t.name for t in self.modbus_tcp]
        buses = [c.name for c in self.can]
        out: list[tuple[Loc, str]] = [
            (("meters", i, "line"), f"meter {m.name!r}: not a [[serial]] or [[modbus_tcp]] name (have {lines})")
            for i, m in enumerate(self.meters)
            if m.line not in lines
        ]
        out += [
            (("cable", i, "bus"), f"cable {c.name!r}: not a [[can]] name (have {buses})")
            for i, c in enumerate(self.cable)
            if c.bus not in buses
        ]
        if self.power_modules.bus not in buses:
            out.append((("power_modules", "bus"), f"not a [[can]] name (have {buses})"))
        return out

    def _one_grid_meter(self) -> list[tuple[Loc, str]]:
        grid = [i for i, m in enumerate(self.meters) if m.role == "grid"]
        return [(("meters", i, "role"), 'at most one meter may have role = "grid"') for i in grid[1:]]


def _named(table: str, entries: Sequence[Any]) -> list[tuple[Loc, str]]:
    """(location, name) of each entry of a ``[[table]]`` array."""
    return [((table, i), entry.name) for i, entry in enumerate(entries)]
