"""One typed view of the cabinet right now, and its three renderings: the API's ``status`` answer, the
retained MQTT ``state`` message (schema: edge/schemas/mqtt-v1.schema.json#state, ``cabinet-edge/state/2``)
and the one-line status of ``edge run --status-line``. Built by :meth:`edge.cabinet.Cabinet.view`; pure
from here on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drivers.readings import Reading
from edge.limits import inputs
from edge.telemetry.measurands import connector_signal, phase_code

PINS = inputs.names_where("place", "connector")  # the connector's pin temperatures, DC+ first
FLOW = inputs.names_where("sensor", "coolant_flow")[0]


@dataclass(frozen=True)
class ModuleView:
    lost: bool
    on: bool
    voltage_v: float
    current_a: float
    temperature_c: float | None
    alarms: tuple[str, ...]
    set_current_a: float
    retry_in_s: float | None = None  # lost: until the next poll goes out (from its deadline)


@dataclass(frozen=True)
class ReadingView:
    value: float
    unit: str
    quality: str
    age_s: float


@dataclass(frozen=True)
class OperatorLimitView:
    amps: float
    source: str
    expires_in_s: float | None  # None: until cleared


def estop_text(latched: Any, values: dict[str, int], functions: dict[str, str]) -> str | None:
    """``ok``, pressed or latched, and what to do; None when no ``[[input]]`` is an e-stop."""
    names = [n for n, f in functions.items() if f == "estop"]
    if not names:
        return None
    pressed = [n for n in names if values.get(n)]
    if pressed:
        return f"PRESSED ({', '.join(pressed)}): every output off; release it, then edge clear emergency_stop"
    if "emergency_stop" in latched:
        return "released, LATCHED: every output off until edge clear emergency_stop (on site)"
    return "ok"


def shown_phase(mode: str | None, phase: str | None) -> str:
    """What a technician reads for a connector: the phase, ``FAULT`` in capitals, the mode (``Export``,
    ``Off``) when the controller named no phase (EVerest ``Other``)."""
    if mode == "Fault" or phase == "Fault":
        return "FAULT"
    if phase and phase != "Other":
        return phase
    return mode or "Off"


@dataclass(frozen=True)
class ConnectorView:
    """One connector as the controller decided it in the last evaluation (config order = screen order)."""

    name: str
    phase: str  # session phase the cabinet follows: Off, CableCheck, PreCharge, Charging, Stopping, Fault
    mode: str  # the mode in force: Off, Export, Fault (EVerest power_supply_DC)
    request_v: float  # what the charging controller asks: target voltage
    request_a: float  # ... and current limit
    request_age_s: float | None  # since the last set-point; None = no request received
    output_v: float  # measured at the output
    output_a: float
    limit_a: float  # what the safety core allows this connector now
    rule: str | None  # the rule that sets limit_a; None before the first evaluation
    reason: str | None
    contactor: bool  # its output contactor as commanded
    enable: bool  # its modules are commanded on
    modules: tuple[int, ...]  # module addresses feeding it
    capabilities: dict[str, float]  # what it could give now (EVerest ``capabilities``, units in the keys)
    faults: tuple[str, ...]  # active fault names that hold this connector (cabinet-wide ones included)
    # never energised until cleared on site with the condition gone (a welded contactor: the core's out_of_service)
    out_of_service: bool = False

    @property
    def shown_phase(self) -> str:
        return shown_phase(self.mode, self.phase)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phase": self.phase,
            "mode": self.mode,
            "request_v": round(float(self.request_v), 1),
            "request_a": round(float(self.request_a), 1),
            "request_age_s": None if self.request_age_s is None else round(float(self.request_age_s), 3),
            "output_v": round(float(self.output_v), 1),
            "output_a": round(float(self.output_a), 1),
            "limit_a": round(float(self.limit_a), 1),
            "rule": self.rule,
            "reason": self.reason,
            "contactor": self.contactor,
            "enable": self.enable,
            "modules": list(self.modules),
            "capabilities": {k: float(v) for k, v in self.capabilities.items()},
            "faults": list(self.faults),
            "out_of_service": self.out_of_service,
        }

    def readings(self, t: float) -> list[Reading]:
        """Its telemetry signals (``connector.<name>.<suffix>``, docs/TELEMETRY.md) at monotonic time ``t``,
        for the recorder; without a request the requested values are 0."""
        asked = self.request_age_s is not None
        values = (
            ("voltage_v", self.output_v, "V"),
            ("current_a", self.output_a, "A"),
            ("limit_a", self.limit_a, "A"),
            ("request_voltage_v", self.request_v if asked else 0.0, "V"),
            ("request_current_a", self.request_a if asked else 0.0, "A"),
            ("phase", float(phase_code(self.mode, self.phase)), ""),
        )
        return [Reading(connector_signal(self.name, suffix), float(v), unit, t) for suffix, v, unit in values]

    def mqtt_state(self) -> dict[str, Any]:
        """The slow part only: the retained state is republished on every change, so measured and requested
        values (which move every tick) go to telemetry (``connector.<name>.*``), not here."""
        return {
            "name": self.name,
            "phase": self.phase,
            "mode": self.mode,
            "limit_a": round(float(self.limit_a), 1),
            "rule": self.rule,
            "reason": self.reason,
            "contactor": self.contactor,
            "enable": self.enable,
            "faults": list(self.faults),
            "out_of_service": self.out_of_service,
        }


@dataclass(frozen=True)
class StatusView:
    cabinet_id: str
    site_id: str
    version: str
    uptime_s: float
    limit_a: float  # in force now (ramped)
    target_a: float  # where the ramp goes
    rule: str | None  # the rule that sets the limit; None before the first evaluation
    reason: str | None
    enable: bool
    faults: dict[str, str]  # active: name -> detail
    latched: tuple[str, ...]
    outputs: dict[str, int]  # contactor, pump, fan levels
    modules: dict[str, ModuleView]  # by address
    readings: dict[str, ReadingView]  # by signal
    operator_limit: OperatorLimitView | None
    stopped_by: str | None
    grid_meter: str | None  # the meter that feeds the site-fuse rule
    cable: str | None  # the cable monitor shown on the status line
    backlog: int  # records in the store not yet acknowledged by the broker
    meters: dict[str, dict[str, Any]] = field(default_factory=dict)
    telemetry: dict[str, Any] = field(default_factory=dict)
    can: dict[str, Any] = field(default_factory=dict)
    can_frames: dict[str, Any] = field(default_factory=dict)
    control: dict[str, Any] = field(default_factory=dict)
    connectors: tuple[ConnectorView, ...] = ()  # config order
    everest: dict[str, Any] = field(default_factory=dict)  # the EVerest adapter's counters; {} without one
    estop: str | None = None  # the e-stop's state for a technician (estop_text); None without an e-stop input
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # [[input]] by name: function, active
    isolation: dict[str, dict[str, Any]] = field(default_factory=dict)  # the insulation monitors; {} without one
    sharing: dict[str, Any] = field(default_factory=dict)  # power sharing: groups and shares; {} without it
    cables: tuple[str, ...] = ()  # every configured cable monitor, shown even while it is silent
    cable_status: dict[str, Any] = field(default_factory=dict)  # by cable: silent, why values are invalid

    # -- the API's ``status`` ------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {
            "estop": self.estop,
            "inputs": self.inputs,
            "cabinet_id": self.cabinet_id,
            "site_id": self.site_id,
            "version": self.version,
            "uptime_s": round(self.uptime_s, 1),
            "limit_a": round(self.limit_a, 1),
            "target_a": round(self.target_a, 1),
            "rule": self.rule,
            "reason": self.reason,
            "enable": self.enable,
            "connectors": [c.as_dict() for c in self.connectors],
            "faults": dict(self.faults),
            "latched": list(self.latched),
            "outputs": dict(self.outputs),
            "modules": {
                a: {
                    "lost": m.lost,
                    # a lost module's last figures are history: null, never shown as if measured now
                    "voltage_v": None if m.lost else m.voltage_v,
                    "current_a": None if m.lost else m.current_a,
                    "temperature_c": None if m.lost else m.temperature_c,
                    "retry_in_s": None if m.retry_in_s is None else round(m.retry_in_s, 3),
                    "alarms": list(m.alarms),
                    "set_current_a": m.set_current_a,
                    "on": m.on,
                }
                for a, m in self.modules.items()
            },
            "meters": self.meters,
            "readings": {
                s: {"value": r.value, "unit": r.unit, "quality": r.quality, "age_s": round(r.age_s, 3)}
                for s, r in sorted(self.readings.items())
            },
            "telemetry": self.telemetry,
            "can": self.can,
            "can_frames": self.can_frames,
            "control": self.control,
            "everest": self.everest,
            **({"isolation": self.isolation} if self.isolation else {}),
            **({"sharing": self.sharing} if self.sharing else {}),
            "grid_meter": self.grid_meter,
            "cables": list(self.cables or ((self.cable,) if self.cable else ())),
            "backlog": self.backlog,
            "cable_status": self.cable_status,
        }

    # -- the retained MQTT ``state`` -----------------------------------------------------------------
    def mqtt_state(self) -> dict[str, Any]:
        lim = self.operator_limit
        store = self.telemetry
        return {
            "limit_a": round(float(self.limit_a), 1),
            "rule": self.rule,
            "reason": self.reason,
            "enable": self.enable,
            "connectors": [c.mqtt_state() for c in self.connectors],
            "faults": dict(self.faults),
            "latched": list(self.latched),
            "external_limit": None
            if lim is None
            else {
                "amps": lim.amps,
                "source": lim.source,
                "expires_in_s": None if lim.expires_in_s is None else float(round(lim.expires_in_s)),
            },
            "stopped_by": self.stopped_by,
            "modules": {a: {"lost": m.lost, "on": m.on} for a, m in self.modules.items()},
            "telemetry_store": {"degraded": store.get("degraded"), "write_errors": store.get("write_errors", 0)},
            **(
                {"sharing": {"policy": self.sharing["policy"], "groups": self.sharing["groups"]}}
                if self.sharing
                else {}
            ),
        }

    # -- ``edge run --status-line`` ------------------------------------------------------------------
    def line(self, width: int = 80) -> str:
        """One line of at most ``width`` terminal cells: state, each connector's current, limit and why first."""
        from edge.render import status_line  # render reads this module's shown_phase

        return status_line(self.as_dict(), width)
