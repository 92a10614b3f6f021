"""Config of the insulation monitors (``[[isolation_monitor]]``), the cable check and insulation rules
(``[isolation]``) and the over-voltage limits by IEC 61851-23 (``[over_voltage_monitor]``).

Defaults are IEC 61851-23 figures as EVerest and vendor code quote them (docs/SAFETY.md, "Isolation
monitor and cable check", "Over-voltage monitoring"); the pure rules (edge/limits/isolation.py,
edge/limits/overvoltage.py) receive ``model_dump()`` of the two rule sections and hold the same defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from edge.config.base import Loc, Section, check
from edge.config.connectors import MODULE_ID_PATTERN
from edge.config.hardware import Name

if TYPE_CHECKING:
    from edge.config.schema import Config


class IsolationMonitor(Section):
    """One insulation monitoring device (IEC 61557-8) on a Modbus line; it watches the listed connectors."""

    name: str = Name
    model: Literal["bender_isocha"] = Field(
        "bender_isocha", description="register table: Bender isoCHA425HV / iso175 family (drivers/isolation)"
    )
    line: str = Field(description="name of a [[serial]] line or [[modbus_tcp]] connection (the meters' lines)")
    device_id: int = Field(3, ge=1, le=247, description="Modbus device id (the Bender default is 3)")
    connectors: list[str] = Field(
        min_length=1, description="names of the connectors whose output this IMD measures; each in one IMD only"
    )
    poll_ms: int = Field(1000, ge=100, le=10000, description="ms between two readings of resistance and status")
    timeout_ms: int = Field(500, ge=50, le=5000, description="ms to wait for one reply at most")
    everest_module_id: str = Field(
        "",
        pattern=MODULE_ID_PATTERN,
        description="serve this IMD to EVerest as its isolation_monitor_API module of this id (over [everest]); "
        'EVerest then runs the cable check and decides; one connector only; "" = the cabinet runs the cable check',
    )


class IsolationRule(Section):
    """Cable check in the session's CableCheck phase and the insulation while charging."""

    cable_check_min_ohm: float = Field(
        100000.0, ge=1000, le=10_000_000, description="cable check fails below this, Ohm (IEC 61851-23:2023: 100 kOhm)"
    )
    fault_ohm_per_v: float = Field(
        100.0, ge=10, le=1000, description="Charging: stop (isolation_fault) below this x output voltage, Ohm/V"
    )
    warning_ohm_per_v: float = Field(
        500.0, ge=10, le=5000, description="Charging: isolation_warning below this x output voltage, Ohm/V"
    )
    samples: int = Field(3, ge=1, le=20, description="good readings at the check voltage for a passed cable check")
    self_test: bool = Field(True, description="run the IMD's self-test at the start of every cable check")
    self_test_timeout_ms: int = Field(
        30000, ge=1000, le=120000, description="self-test not done within this -> cable_check_failed (Bender: ~20 s)"
    )
    stale_ms: int = Field(
        3000, ge=500, le=30000, description="IMD reading older than this in a session -> isolation_monitor_lost"
    )
    check_tolerance_v: float = Field(
        20.0, ge=1, le=100, description="readings count only with the output this close to the check voltage, V"
    )
    safe_voltage_v: float = Field(
        60.0, ge=10, le=60, description="the output must have been below this after the check before PreCharge, V"
    )
    latch: bool = Field(True, description="isolation_fault stays until cleared with the insulation good again")

    @model_validator(mode="after")
    def _order(self) -> IsolationRule:
        problems: list[tuple[Loc, str]] = []
        if self.warning_ohm_per_v <= self.fault_ohm_per_v:
            problems.append(
                (
                    ("warning_ohm_per_v",),
                    f"not above fault_ohm_per_v = {self.fault_ohm_per_v:g} Ohm/V (the warning comes first): "
                    f"allowed {self.fault_ohm_per_v:g} < warning_ohm_per_v <= 5000 Ohm/V",
                )
            )
        check(problems)
        return self


class OverVoltageMonitor(Section):
    """Over-voltage limits by the negotiated maximum voltage (IEC 61851-23 Tables 103 and 104)."""

    emergency_table: list[list[float]] = Field(
        default_factory=lambda: [[500.0, 550.0], [750.0, 825.0], [850.0, 935.0], [1000.0, 1100.0]],
        min_length=1,
        description="Table 103 rows [negotiated max V, emergency limit V], ascending; the first row whose max is at "
        "least the negotiated maximum applies",
    )
    above_table_factor: float = Field(
        1.1, ge=1.0, le=1.5, description="emergency limit above the last row: this x the negotiated maximum"
    )
    error_time_ms: int = Field(
        400, ge=200, le=400, description="above the negotiated maximum this long -> over_voltage_error (Table 104)"
    )
    emergency_time_ms: int = Field(
        50, ge=10, le=400, description="above the emergency limit this long -> over_voltage_emergency (software backup)"
    )
    latch: bool = Field(True, description="both faults stay until cleared with the output below the limit")

    @model_validator(mode="after")
    def _table(self) -> OverVoltageMonitor:
        problems: list[tuple[Loc, str]] = []
        rows = self.emergency_table
        for i, row in enumerate(rows):
            if len(row) != 2:
                problems.append((("emergency_table", i), f"row {row}: need [max V, emergency V]"))
                continue
            max_v, limit_v = row
            if not 0 < max_v < limit_v <= 2000:
                problems.append(
                    (("emergency_table", i), f"row [{max_v:g}, {limit_v:g}]: need 0 < max V < emergency V <= 2000")
                )
            if i and len(rows[i - 1]) == 2 and max_v <= rows[i - 1][0]:
                problems.append((("emergency_table", i), f"row [{max_v:g}, {limit_v:g}]: max V not ascending"))
        check(problems)
        return self


def isolation_problems(config: Config) -> list[tuple[Loc, str]]:
    """Each IMD on an existing line, watching existing connectors, each connector watched by one IMD at most."""
    lines = [s.name for s in config.serial] + [t.name for t in config.modbus_tcp]
    names = [c.name for c in config.resolved_connectors()]
    out: list[tuple[Loc, str]] = []
    watched: dict[str, str] = {}
    seen: set[str] = set()
    for i, imd in enumerate(config.isolation_monitor):
        loc: Loc = ("isolation_monitor", i)
        if imd.name in seen:
            out.append(((*loc, "name"), f"isolation monitor names must be unique: {imd.name!r} used twice"))
        seen.add(imd.name)
        if imd.line not in lines:
            out.append(
                (
                    (*loc, "line"),
                    f"isolation monitor {imd.name!r}: not a [[serial]] or [[modbus_tcp]] name (have {lines})",
                )
            )
        if imd.everest_module_id and len(imd.connectors) != 1:
            out.append(
                (
                    (*loc, "connectors"),
                    f"isolation monitor {imd.name!r} is served to EVerest (everest_module_id): it must watch "
                    f"exactly one connector (EVerest has one IMD per charging port), not {len(imd.connectors)}",
                )
            )
        served = [m.everest_module_id for m in config.isolation_monitor[:i] if m.everest_module_id]
        if imd.everest_module_id and imd.everest_module_id in served:
            out.append(((*loc, "everest_module_id"), f"{imd.everest_module_id!r} is the module id of another IMD"))
        for name in imd.connectors:
            if name not in names:
                out.append(
                    ((*loc, "connectors"), f"isolation monitor {imd.name!r}: no connector {name!r} (have {names})")
                )
            elif name in watched:
                out.append(
                    (
                        (*loc, "connectors"),
                        f"connector {name!r} is already watched by isolation monitor {watched[name]!r}",
                    )
                )
            else:
                watched[name] = imd.name
    return out
