"""Config of the charging outputs: ``[[connector]]``, the EVerest broker ``[everest]`` and the session rules
``[session]`` (issue 14).

A connector is one DC output: its contactor, the modules that feed it, the cable monitor(s) protecting it,
its hardware maximum and where its charging requests come from. What a connector table can check on its
own is checked here (each problem at its key, with the allowed range); what needs other sections (cables,
module addresses, pins, limits) is in ``edge/config/crosschecks.py``.

A file without ``[[connector]]`` keeps working: :func:`legacy_connector` builds the one connector the old
keys describe, and ``edge config check`` prints the ``[[connector]]`` block that says the same explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from edge.config.base import Loc, Section, check

if TYPE_CHECKING:
    from edge.config.schema import Config

REQUEST_SOURCES = ("everest", "sim", "fixed")
MIN_VOLTAGE_DEFAULT_V = 150.0
LEGACY_NAME = "1"

# an EVerest module id is one MQTT topic level: no "/", "+", "#" or blanks
MODULE_ID_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9_.\-]{0,63})?$"


class Connector(Section):
    """One DC output (one charging point): repeat the table for each; their order is the order on screen."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$",
        description="connector name shown in status, events and signal names, e.g. 1, 2, left",
    )
    cables: list[str] = Field(
        default_factory=list,
        description="names of the [[cable]] monitors protecting this output; each [[cable]] in exactly one connector",
    )
    uncooled: bool = Field(False, description="true: a cable without a cable monitor is allowed here (cables = [])")
    contactor: str = Field(
        min_length=1, description="output contactor pin (chip:line on linux, any name in sim); unique"
    )
    contactor_feedback: str = Field(
        "", description='mirror-contact input pin of the contactor; "" = none; unique when set'
    )
    modules: list[int] = Field(
        description="power_modules.addresses feeding this output (static; each address in one connector only)"
    )
    max_current_a: float = Field(
        gt=0, le=1000, description="hardware maximum current of this output (cable, contactor, fuse), A"
    )
    max_voltage_v: float = Field(gt=0, le=1500, description="hardware maximum voltage of this output, V")
    min_voltage_v: float = Field(
        MIN_VOLTAGE_DEFAULT_V, ge=0, le=1500, description="lowest voltage the output regulates, V; below max_voltage_v"
    )
    max_power_kw: float = Field(gt=0, le=1500, description="hardware maximum power of this output, kW")
    request: Literal["everest", "sim", "fixed"] = Field(
        "everest",
        description="who asks for voltage and current: everest (power_supply_DC API over [everest]), sim (the "
        "built-in simulated charging controller), fixed (a permanent bench session at control.output_voltage_v "
        "and control.requested_current_a)",
    )
    everest_module_id: str = Field(
        "",
        pattern=MODULE_ID_PATTERN,
        description="id of this connector's power_supply_DC_API module in the EVerest config; required with "
        'request = "everest", unique',
    )
    everest_ovm_module_id: str = Field(
        "",
        pattern=MODULE_ID_PATTERN,
        description="serve this output's over-voltage monitoring to EVerest as its over_voltage_monitor_API "
        'module of this id (over [everest]): its limits become the negotiated maximum; "" = not served; unique',
    )

    @model_validator(mode="after")
    def _own_checks(self) -> Connector:
        check(self._problems())
        return self

    def _problems(self) -> list[tuple[Loc, str]]:
        out: list[tuple[Loc, str]] = []
        if not self.cables and not self.uncooled:
            out.append(
                (
                    ("cables",),
                    f'connector {self.name!r} has no cable monitor: name its [[cable]] (cables = ["..."]), '
                    "or set uncooled = true for a cable without one",
                )
            )
        repeated = sorted({c for c in self.cables if self.cables.count(c) > 1})
        if repeated:
            out.append((("cables",), f"connector {self.name!r}: cable(s) {repeated} listed twice"))
        if not self.modules:
            out.append(
                (("modules",), f"connector {self.name!r} has no modules: list the power_modules.addresses feeding it")
            )
        twice = sorted({m for m in self.modules if self.modules.count(m) > 1})
        if twice:
            out.append((("modules",), f"connector {self.name!r}: module address(es) {twice} listed twice"))
        if self.min_voltage_v >= self.max_voltage_v:
            out.append(
                (
                    ("min_voltage_v",),
                    f"not below max_voltage_v = {self.max_voltage_v:g} V: allowed 0 <= min_voltage_v < "
                    f"{self.max_voltage_v:g} V",
                )
            )
        if self.request == "everest" and not self.everest_module_id:
            out.append(
                (
                    ("everest_module_id",),
                    f'connector {self.name!r}: request = "everest" needs everest_module_id (the id of its '
                    "power_supply_DC_API module in the EVerest config)",
                )
            )
        return out


class Everest(Section):
    """The charging controller's MQTT broker (EVerest's power_supply_DC API; often the dispenser's mosquitto).
    Used by the connectors with request = "everest" and by the served isolation / over-voltage monitor APIs
    (everest_module_id of [[isolation_monitor]], everest_ovm_module_id of [[connector]])."""

    host: str = Field("127.0.0.1", min_length=1, description="broker host name or IP address")
    port: int = Field(1883, ge=1, le=65535, description="broker port (8883 is usual with TLS)")
    tls: bool = Field(False, description="connect with TLS")
    ca_file: str = Field("", description='CA bundle to verify the broker (PEM); "" = system CAs; with tls only')
    cert_file: str = Field("", description='client certificate (PEM) for mutual TLS; "" = none; with key_file')
    key_file: str = Field("", description='client private key (PEM) for mutual TLS; "" = none; with cert_file')
    username: str = Field("", description='"" = no login')
    password: str = Field("", description="secret: never printed or bundled")
    base: str = Field(
        "everest_api/1",
        pattern=r"^[^/+#\s]+(/[^/+#\s]+)*$",
        description="topic base: <base>/power_supply_DC/<module id>/e2m|m2e/...; older EVerest: everest_api/1.0",
    )
    client_id: str = Field(
        "", pattern=r"^[^\s+#/]{0,128}$", description='MQTT client id; "" = cabinet-edge-<cabinet_id>'
    )
    heartbeat_timeout_ms: int = Field(
        3000,
        ge=500,
        le=10000,
        description="no heartbeat from EVerest for this long: its connectors go to 0 A (EVerest sends one "
        "every 1 s by default)",
    )
    voltage_current_period_ms: int = Field(
        250, ge=50, le=1000, description="period of the measured output voltage and current (m2e/voltage_current)"
    )
    communication_check_period_ms: int = Field(
        1000,
        ge=100,
        le=4000,
        description="period of m2e/communication_check (EVerest gives up after 5 s without one)",
    )
    capabilities_min_interval_ms: int = Field(
        1000, ge=100, le=10000, description="at most one capabilities republish per connector in this time"
    )
    capabilities_hysteresis_a: float = Field(
        5.0,
        ge=0,
        le=100,
        description="capabilities are republished when the current a connector can give moved by more than "
        "this (or its power by more than 5 %)",
    )

    @model_validator(mode="after")
    def _tls_files(self) -> Everest:
        check(tls_problems(self))
        return self


def tls_problems(everest: Everest) -> list[tuple[Loc, str]]:
    """With ``tls = true`` every file named must be there (found at ``edge config check``, not at the first
    connect, which would only log); a client certificate needs its key and the other way round."""
    if not everest.tls:
        return []
    out: list[tuple[Loc, str]] = []
    if bool(everest.cert_file) != bool(everest.key_file):
        have, missing = ("cert_file", "key_file") if everest.cert_file else ("key_file", "cert_file")
        out.append(((missing,), f"{have} is set: mutual TLS needs both cert_file and key_file (or neither)"))
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(everest, key)
        if path and not Path(path).is_file():
            out.append(((key,), f"tls = true and {key} names no file: {path} not found"))
    return out


class Session(Section):
    """How a charging session runs on every connector (the same rules for each)."""

    request_stale_ms: int = Field(
        3000,
        ge=250,
        le=30000,
        description="no set-point or mode refresh for this long while exporting: 0 A and the contactor opens",
    )
    precheck_current_a: float = Field(
        2.0, gt=0, le=2, description="most current during CableCheck and PreCharge (IEC 61851-23: 2 A)"
    )
    off_current_a: float = Field(
        1.0, gt=0, le=1, description="at the end of a session the contactor opens only below this current"
    )
    off_timeout_ms: int = Field(2000, ge=100, le=10000, description="... or after this long anyway (an event says so)")
    precharge_tolerance_v: float = Field(
        20.0,
        ge=1,
        le=20,
        description="PreCharge is done once the output is within this of the target (vehicles close within 20 V)",
    )
    precharge_timeout_ms: int = Field(
        5000,
        ge=1000,
        le=7000,
        description="PreCharge not within precharge_tolerance_v of the target after this long: fault "
        "precharge_timeout, 0 A (DIN 70121: 5 s for the station; the vehicle gives up after 7 s)",
    )


class Contactors(Section):
    """Mirror contacts of the output contactors (``contactor_feedback`` of a ``[[connector]]``): how fast
    a contactor must follow its command before it counts as welded or failed to close (docs/SAFETY.md)."""

    close_timeout_ms: int = Field(
        200,
        ge=50,
        le=2000,
        description="the mirror contact reads closed within this after the close command, else fault "
        "contactor_failed_to_close (DC contactors close in 20-50 ms; the rest is debounce and the control tick)",
    )
    open_timeout_ms: int = Field(
        200,
        ge=50,
        le=2000,
        description="the mirror contact reads open within this after the open command, else fault "
        "contactor_welded (DC contactors open in under 20 ms with an economizer)",
    )
    feedback_active: Literal["high", "low"] = Field(
        "high", description="input level of a closed contactor: high (NO mirror contact) or low (NC)"
    )
    feedback_debounce_ms: int = Field(
        10, ge=0, le=100, description="a feedback level counts once it was steady this long"
    )

    @model_validator(mode="after")
    def _debounce_within_timeouts(self) -> Contactors:
        shortest = min(self.close_timeout_ms, self.open_timeout_ms)
        if self.feedback_debounce_ms * 2 > shortest:
            check(
                [
                    (
                        ("feedback_debounce_ms",),
                        f"{self.feedback_debounce_ms} ms leaves too little of the shortest timeout ({shortest} ms): "
                        "allowed at most half of close_timeout_ms and open_timeout_ms",
                    )
                ]
            )
        return self


def legacy_connector(config: Config) -> Connector:
    """The one output an old file (no ``[[connector]]``) describes: every cable, ``outputs.contactor``, every
    module, ``limits.max_output_*``, a fixed request at the ``[control]`` set-points. The old keys are
    validated already (and may describe what a ``Connector`` table would refuse, e.g. no cable monitor at
    all: the old daemon ran without one), so it is built without validation."""
    max_v = min(config.limits.max_output_voltage_v, config.power_modules.max_voltage_v)
    max_a = config.limits.max_output_current_a
    return Connector.model_construct(
        name=LEGACY_NAME,
        cables=[c.name for c in config.cable],
        uncooled=not config.cable,
        contactor=config.outputs.contactor,
        contactor_feedback="",
        modules=list(config.power_modules.addresses),
        max_current_a=max_a,
        max_voltage_v=max_v,
        min_voltage_v=min(MIN_VOLTAGE_DEFAULT_V, config.control.output_voltage_v),
        max_power_kw=round(max_a * max_v / 1000.0, 3),
        request="fixed",
        everest_module_id="",
    )


def connector_block(connector: Connector) -> str:
    """The ``[[connector]]`` table that describes ``connector``, as a technician would write it."""
    cables = ", ".join(f'"{c}"' for c in connector.cables)
    lines = [
        "[[connector]]",
        f'name = "{connector.name}"',
        f"cables = [{cables}]",
        *(["uncooled = true"] if connector.uncooled else []),
        f'contactor = "{connector.contactor}"',
        f"modules = [{', '.join(str(m) for m in connector.modules)}]",
        f"max_current_a = {connector.max_current_a:g}",
        f"max_voltage_v = {connector.max_voltage_v:g}",
        f"min_voltage_v = {connector.min_voltage_v:g}",
        f"max_power_kw = {connector.max_power_kw:g}",
        f'request = "{connector.request}"',
    ]
    return "\n".join(lines)
