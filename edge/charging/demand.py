"""The charging controller's demand per connector, as a timestamped reading, and what the cabinet reports back.

Every request source (the EVerest ``power_supply_DC`` adapter, the simulator's charging controller, the fixed
bench request) hands its requests in through a :class:`DemandSink` (called on the event loop's thread) and
reads what to publish from :class:`ConnectorReport` objects. The safety core sees the demand as one input of
the connector (``request`` in its snapshot): a demand older than the configured stale time is 0 A.

Modes and phases follow EVerest's ``power_supply_DC`` interface: the mode says what the supply must do, the
phase is information (the supply always regulates CC/CV), except that CableCheck and PreCharge are limited to
the pre-charge current (2 A by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

MODES = ("Off", "Export", "Import", "Fault")
PHASES = ("Other", "CableCheck", "PreCharge", "Charging")


@dataclass(frozen=True)
class Demand:
    """What the charging controller asks of one connector now (monotonic receive times, s)."""

    mode: str = "Off"  # one of MODES
    phase: str = "Other"  # one of PHASES
    voltage_v: float = 0.0  # target output voltage
    current_a: float = 0.0  # current limit (the supply regulates CC/CV below it)
    power_w: float | None = None  # optional power limit
    t_mode: float | None = None  # when the mode was last received
    t_setpoint: float | None = None  # when voltage/current were last received

    @property
    def exporting(self) -> bool:
        return self.mode == "Export"


@dataclass(frozen=True)
class Capabilities:
    """What one connector can give now (EVerest ``capabilities`` field names in units of V, A, W)."""

    max_export_voltage_v: float
    min_export_voltage_v: float
    max_export_current_a: float
    min_export_current_a: float
    max_export_power_w: float
    current_regulation_tolerance_a: float = 1.0
    peak_current_ripple_a: float = 0.5


@dataclass(frozen=True)
class ConnectorReport:
    """What a request source publishes for one connector (read on the loop thread)."""

    connector: str
    voltage_v: float  # measured at the output
    current_a: float  # measured at the output
    mode: str  # the mode in force: "Off" until the output is below the off current, "Export", "Fault"
    capabilities: Capabilities
    faults: tuple[str, ...] = ()  # our fault names active for this connector (cabinet-wide ones included)
    modules_reachable: bool = True  # False: none of its modules answers (EVerest CommunicationFault)
    phase: str = "Other"  # the session phase the cabinet follows
    extra: dict[str, float] = field(default_factory=dict)


class DemandSink(Protocol):
    """Where request sources hand requests in (on the event loop's thread)."""

    def set_mode(self, connector: str, mode: str, phase: str, now: float) -> None: ...

    def set_target(
        self, connector: str, voltage_v: float, current_a: float, now: float, power_w: float | None = None
    ) -> None: ...

    def heartbeat(self, source: str, now: float) -> None:
        """The controller behind ``source`` (e.g. ``everest``) is alive; its silence stops its connectors."""
