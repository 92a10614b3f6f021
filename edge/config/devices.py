"""Config of the devices: meters, power modules, cable sensors.

The allowed values of the device keys come from the drivers (meter models, register types, units,
word orders, vendor protocols), and the vendor's own constraints (module addresses, the module's
comms watchdog) from its codec: adding a meter model or a vendor changes the driver only.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from drivers.meters.models import MODEL_NAMES, UNITS
from drivers.meters.registers import FUNCTION_CODES, PERIODS, TYPES, WORD_ORDERS
from drivers.power_modules.registry import CODECS, make_codec
from edge.config.base import Loc, Section, check, one_of
from edge.config.hardware import Name

if TYPE_CHECKING:  # mypy checks plain values; pydantic gets the driver tables as Literals
    MeterModelName = str
    RegisterType = str
    WordOrder = str
    Unit = str
    Period = str
    FunctionCode = int
    ModuleProtocol = str
else:
    MeterModelName = one_of(MODEL_NAMES)
    RegisterType = one_of(TYPES)
    WordOrder = one_of(WORD_ORDERS)
    Unit = one_of(UNITS)
    Period = one_of(PERIODS)
    FunctionCode = one_of(FUNCTION_CODES)
    ModuleProtocol = one_of(CODECS)


class MeterRegister(Section):
    """One row of a generic meter's register table (``[[meters.registers]]``)."""

    signal: str = Field(
        pattern=r"^[A-Z][A-Za-z]*(\.[A-Za-z0-9]+)*$",
        description="OCPP measurand (+ phase), e.g. Voltage.L1, Current.Import.L1",
    )
    address: int = Field(ge=0, le=0xFFFF, description="0-based register address")
    function_code: FunctionCode = Field(4, description="3 = holding, 4 = input registers")
    type: RegisterType = "float32"
    word_order: WordOrder = Field("big", description="big: high word first; little: low word first")
    scale: float = Field(1.0, description="multiplier from the raw value to the unit")
    unit: Unit = Field(description="unit after scaling")
    period: Period | None = Field(None, description="poll period class; default slow for kWh")
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
        check(self._timing_problems() + self._table_problems())
        return self

    def _timing_problems(self) -> list[tuple[Loc, str]]:
        out: list[tuple[Loc, str]] = []
        if self.timeout_min_ms > self.timeout_ms:
            out.append((("timeout_min_ms",), f"must not exceed timeout_ms = {self.timeout_ms}"))
        if self.backoff_initial_ms > self.backoff_max_ms:
            out.append((("backoff_initial_ms",), f"must not exceed backoff_max_ms = {self.backoff_max_ms}"))
        if 0 < self.frozen_after_ms < 5000:
            out.append((("frozen_after_ms",), "use 0 (off) or at least 5000"))
        return out

    def _table_problems(self) -> list[tuple[Loc, str]]:
        """The register table: only with model = "generic" (and then required), no signal twice, no
        overlapping registers, none wider than one request."""
        if self.model == "generic" and not self.registers:
            return [(("model",), 'model = "generic" needs a register table: add [[meters.registers]] rows')]
        if self.model != "generic" and self.registers:
            return [(("registers",), f'registers are only allowed with model = "generic" (model is {self.model!r})')]
        signals = [r.signal for r in self.registers]
        dup = sorted({s for s in signals if signals.count(s) > 1})
        out: list[tuple[Loc, str]] = [(("registers",), f"signal(s) {dup} listed twice")] if dup else []
        out += [(("registers",), msg) for msg in _overlaps(self.registers)]
        wide = [r.signal for r in self.registers if _words(r) > self.max_registers_per_request]
        if wide:
            out.append(
                (("registers",), f"{wide} need more than max_registers_per_request = {self.max_registers_per_request}")
            )
        return out


def _overlaps(registers: list[MeterRegister]) -> list[str]:
    """Registers of one function code that share an address."""
    spans = sorted((r.function_code, r.address, r.address + _words(r), r.signal) for r in registers)
    return [
        f"{b[3]} at address {b[1]} overlaps {a[3]} ({a[1]}..{a[2] - 1})"
        for a, b in itertools.pairwise(spans)
        if a[0] == b[0] and b[1] < a[2]
    ]


def _words(reg: MeterRegister) -> int:
    return TYPES[reg.type][0]


# --- end meters -------------------------------------------------------------------------------------


class PowerModules(Section):
    bus: str = Field("can0", description="name of a [[can]] bus")
    protocol: ModuleProtocol = Field(
        "infypower", description="vendor protocol; one codec per name in drivers/power_modules/registry.py"
    )
    addresses: list[int] = Field(
        default_factory=lambda: [1, 2],
        min_length=1,
        max_length=60,
        description="module addresses, unique, in the range the vendor's codec accepts",
    )
    lost_after_ms: int = Field(
        3000,
        ge=500,
        description="ms of silence before a module is lost; below the module's own comms watchdog (its codec's)",
    )
    poll_ms: int = Field(1000, ge=100, le=5000, description="ms between two status polls of one module")
    max_current_a: float = Field(50.0, gt=0, le=200, description="rated output current of one module, A")
    max_voltage_v: float = Field(1000.0, gt=0, le=1500, description="rated output voltage of one module, V")

    @model_validator(mode="after")
    def _checks(self) -> PowerModules:
        check(vendor_problems(self))
        return self


def vendor_problems(modules: PowerModules) -> list[tuple[Loc, str]]:
    """What the vendor forbids in ``[power_modules]``, as its codec knows it (address range, repeated
    addresses, its own comms watchdog, the poll period): the one hook between the config and the codecs."""
    problems = make_codec(modules.protocol).check_config(
        modules.addresses, modules.lost_after_ms / 1000.0, modules.poll_ms / 1000.0
    )
    return [((_VENDOR_KEYS[setting],), message) for setting, message in problems]


_VENDOR_KEYS = {"addresses": "addresses", "lost_after": "lost_after_ms"}  # codec setting -> config key


class CableSensor(Section):
    name: str = Name
    bus: str = Field("can0", description="name of a [[can]] bus")
    node_id: int = Field(1, ge=1, le=254, description="low byte of the monitor's frame ids")
    stale_after_ms: int = Field(
        300, ge=50, le=5000, description="ms without a frame before its values are stale (frames come every 100 ms)"
    )
