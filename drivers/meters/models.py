"""Meter register tables, one per model, from the manufacturers' public register maps.

Signal names are OCPP 1.6/2.0.1 measurands with the phase appended; units are the device's
natural unit after scaling (V, A, W, Hz, kWh, and "-" for power factor). Sources: the manufacturers'
public register maps (docs/METERS.md section 6); every table has golden-vector tests in
tests/test_meter_models.py.

A model is data only: the registers, the request size limit, whether the device rejects reads that
span undefined registers, and a signature that `edge scan modbus` uses to recognise it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.meters.registers import FAST, SLOW, TYPES, Register

# Plausible ranges after scaling: a value outside is a broken frame or a broken meter, never a
# measurement. Wide on purpose (CT meters see thousands of amps); they catch garbage, not faults.
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "V": (0.0, 1000.0),
    "A": (-20000.0, 20000.0),
    "W": (-2.0e7, 2.0e7),
    "Hz": (40.0, 70.0),
    "-": (-1.0, 1.0),
    "kWh": (0.0, 1.0e10),
}
UNITS = tuple(PLAUSIBLE)


def reg(
    signal: str, address: int, type_: str, unit: str, scale: float = 1.0, *, fc: int, word_order: str = "big"
) -> Register:
    """A table row; energy registers are slow counters, everything else fast."""
    lo, hi = PLAUSIBLE[unit]
    energy = unit == "kWh"
    return Register(
        signal, address, type_, unit, scale, fc, word_order, SLOW if energy else FAST, lo, hi, counter=energy
    )


@dataclass(frozen=True)
class Signature:
    """How a scan recognises the model: read ``register``; it matches when the raw value is one of
    ``values`` or, without values, when the decoded value lies in ``in_range``."""

    register: Register
    values: tuple[int, ...] = ()
    in_range: tuple[float, float] | None = None
    variants: tuple[tuple[int, str], ...] = ()  # raw value -> model name when one table serves several

    def raw(self, words: list[int]) -> int:
        ordered = words if self.register.word_order == "big" else list(reversed(words))
        out = 0
        for w in ordered:
            out = (out << 16) | w
        return out


@dataclass(frozen=True)
class MeterModel:
    name: str
    registers: tuple[Register, ...]
    max_registers_per_request: int = 125
    # Some meters answer "illegal data address" when a read spans undefined registers.
    rejects_gaps: bool = False
    default_baudrate: int = 9600
    signature: Signature | None = None
    # Addresses known to be defined beyond the table (may be read through on rejects_gaps models).
    extra_defined: tuple[tuple[int, int], ...] = field(default=())

    def defined(self) -> frozenset[tuple[int, int]]:
        """(function code, address) of every register the device is known to answer."""
        out = {(r.function_code, a) for r in self.registers for a in range(r.address, r.end)}
        fcs = {r.function_code for r in self.registers}
        out |= {(fc, a) for start, end in self.extra_defined for a in range(start, end) for fc in fcs}
        return frozenset(out)


def _sdm(signal: str, address: int, unit: str) -> Register:
    return reg(signal, address, "float32", unit, fc=4)


# Eastron SDM630: input registers, float32 big-endian; at most 30 parameters (60 registers) per read.
SDM630 = MeterModel(
    name="sdm630",
    max_registers_per_request=60,
    registers=(
        _sdm("Voltage.L1", 0x0000, "V"),
        _sdm("Voltage.L2", 0x0002, "V"),
        _sdm("Voltage.L3", 0x0004, "V"),
        _sdm("Current.Import.L1", 0x0006, "A"),
        _sdm("Current.Import.L2", 0x0008, "A"),
        _sdm("Current.Import.L3", 0x000A, "A"),
        _sdm("Power.Active.Import.L1", 0x000C, "W"),
        _sdm("Power.Active.Import.L2", 0x000E, "W"),
        _sdm("Power.Active.Import.L3", 0x0010, "W"),
        _sdm("Power.Factor.L1", 0x001E, "-"),
        _sdm("Power.Factor.L2", 0x0020, "-"),
        _sdm("Power.Factor.L3", 0x0022, "-"),
        _sdm("Power.Active.Import", 0x0034, "W"),
        _sdm("Frequency", 0x0046, "Hz"),
        _sdm("Energy.Active.Import.Register", 0x0048, "kWh"),
        _sdm("Energy.Active.Export.Register", 0x004A, "kWh"),
    ),
    # No model register in the public map: a grid frequency in float32 at 0x0046 is the signature.
    signature=Signature(_sdm("Frequency", 0x0046, "Hz"), in_range=(45.0, 65.0)),
)


def _abb(signal: str, address: int, type_: str, unit: str, scale: float) -> Register:
    return reg(signal, address, type_, unit, scale, fc=3)


# ABB B23/B24: holding registers, big-endian words, scaled integers, "not available" markers.
ABB_B23 = MeterModel(
    name="abb_b23",
    registers=(
        _abb("Energy.Active.Import.Register", 0x5000, "u64", "kWh", 0.01),
        _abb("Energy.Active.Export.Register", 0x5004, "u64", "kWh", 0.01),
        _abb("Voltage.L1", 0x5B00, "u32", "V", 0.1),
        _abb("Voltage.L2", 0x5B02, "u32", "V", 0.1),
        _abb("Voltage.L3", 0x5B04, "u32", "V", 0.1),
        _abb("Current.Import.L1", 0x5B0C, "u32", "A", 0.01),
        _abb("Current.Import.L2", 0x5B0E, "u32", "A", 0.01),
        _abb("Current.Import.L3", 0x5B10, "u32", "A", 0.01),
        _abb("Power.Active.Import", 0x5B14, "s32", "W", 0.01),
        _abb("Power.Active.Import.L1", 0x5B16, "s32", "W", 0.01),
        _abb("Power.Active.Import.L2", 0x5B18, "s32", "W", 0.01),
        _abb("Power.Active.Import.L3", 0x5B1A, "s32", "W", 0.01),
        _abb("Frequency", 0x5B2C, "u16", "Hz", 0.01),
        # Power factor L1..L3: s16 x 0.001 (ABB B2x manual; not in the public maps, verify on site).
        _abb("Power.Factor.L1", 0x5B3B, "s16", "-", 0.001),
        _abb("Power.Factor.L2", 0x5B3C, "s16", "-", 0.001),
        _abb("Power.Factor.L3", 0x5B3D, "s16", "-", 0.001),
    ),
    # Model register u32 holds ASCII "B23 " / "B24 ".
    signature=Signature(
        _abb("model", 0x8960, "u32", "-", 1.0), values=(0x42323320, 0x42323420), variants=((0x42323420, "abb_b24"),)
    ),
)


def _em24(signal: str, address: int, type_: str, unit: str, scale: float) -> Register:
    return reg(signal, address, type_, unit, scale, fc=4, word_order="little")


# Carlo Gavazzi EM24: int32 with the LOW word first; fc 03 and 04 address the same map (we use 04).
# Treated as rejecting reads across undefined registers: we only read through what the table names.
EM24 = MeterModel(
    name="em24",
    rejects_gaps=True,
    registers=(
        _em24("Voltage.L1", 0x0000, "s32", "V", 0.1),
        _em24("Voltage.L2", 0x0002, "s32", "V", 0.1),
        _em24("Voltage.L3", 0x0004, "s32", "V", 0.1),
        _em24("Current.Import.L1", 0x000C, "s32", "A", 0.001),
        _em24("Current.Import.L2", 0x000E, "s32", "A", 0.001),
        _em24("Current.Import.L3", 0x0010, "s32", "A", 0.001),
        _em24("Power.Active.Import.L1", 0x0012, "s32", "W", 0.1),
        _em24("Power.Active.Import.L2", 0x0014, "s32", "W", 0.1),
        _em24("Power.Active.Import.L3", 0x0016, "s32", "W", 0.1),
        _em24("Power.Active.Import", 0x0028, "s32", "W", 0.1),
        # Power factor L1..L3: s16 x 0.001 (EM24 map; not in the public maps, verify on site).
        _em24("Power.Factor.L1", 0x002E, "s16", "-", 0.001),
        _em24("Power.Factor.L2", 0x002F, "s16", "-", 0.001),
        _em24("Power.Factor.L3", 0x0030, "s16", "-", 0.001),
        _em24("Frequency", 0x0033, "u16", "Hz", 0.1),
        _em24("Energy.Active.Import.Register", 0x0034, "s32", "kWh", 0.1),
        _em24("Energy.Active.Export.Register", 0x004E, "s32", "kWh", 0.1),
    ),
    # Model id (u16) at 0x000B: 1648..1653 are the EM24-DIN variants (as Victron's driver lists them).
    signature=Signature(_em24("model", 0x000B, "u16", "-", 1.0), values=(1648, 1649, 1650, 1651, 1652, 1653)),
)

MODELS: dict[str, MeterModel] = {
    SDM630.name: SDM630,
    ABB_B23.name: ABB_B23,
    "abb_b24": ABB_B23,  # same register map; B24 adds pulse outputs only
    EM24.name: EM24,
}
GENERIC = "generic"
MODEL_NAMES = (*MODELS, GENERIC)  # what a config may name: a table above, or its own generic table


class ModelError(ValueError):
    """A register table that cannot work: unknown type, overlapping registers, too wide."""


def generic_model(
    name: str, rows: Iterable[Mapping[str, Any]], max_registers_per_request: int = 125, rejects_gaps: bool = False
) -> MeterModel:
    """A model whose table comes from the config file (``[[meters.registers]]`` rows as dicts)."""
    regs: list[Register] = []
    for row in rows:
        unit = str(row["unit"])
        if row.get("type") not in TYPES:
            raise ModelError(f"{row.get('signal')}: type {row.get('type')!r} is not one of {sorted(TYPES)}")
        if unit not in PLAUSIBLE:
            raise ModelError(f"{row.get('signal')}: unit {unit!r} is not one of {list(UNITS)}")
        lo, hi = PLAUSIBLE[unit]
        energy = unit == "kWh"
        regs.append(
            Register(
                signal=str(row["signal"]),
                address=int(row["address"]),
                type=str(row["type"]),
                unit=unit,
                scale=float(row.get("scale", 1.0)),
                function_code=int(row.get("function_code", 4)),
                word_order=str(row.get("word_order", "big")),
                period=str(row.get("period") or (SLOW if energy else FAST)),
                valid_min=row.get("min", lo),
                valid_max=row.get("max", hi),
                counter=energy,
            )
        )
    model = MeterModel(
        name=name, registers=tuple(regs), max_registers_per_request=max_registers_per_request, rejects_gaps=rejects_gaps
    )
    check_model(model)
    return model


def check_model(model: MeterModel) -> None:
    """Raise :class:`ModelError` when registers overlap, repeat a signal or exceed the request size."""
    seen: dict[tuple[int, int], str] = {}
    signals: set[str] = set()
    for r in model.registers:
        if r.signal in signals:
            raise ModelError(f"{model.name}: signal {r.signal} listed twice")
        signals.add(r.signal)
        if r.words > model.max_registers_per_request:
            raise ModelError(
                f"{model.name}: {r.signal} needs {r.words} registers, max per request {model.max_registers_per_request}"
            )
        for a in range(r.address, r.end):
            other = seen.get((r.function_code, a))
            if other is not None:
                raise ModelError(f"{model.name}: {r.signal} overlaps {other} at address {a:#06x}")
            seen[(r.function_code, a)] = r.signal
            if a > 0xFFFF:
                raise ModelError(f"{model.name}: {r.signal} runs past address 0xFFFF")


def model_for(
    model: str,
    name: str,
    rows: Iterable[Mapping[str, Any]] = (),
    max_registers_per_request: int = 125,
    rejects_gaps: bool = False,
) -> MeterModel:
    """The table for a configured meter: a built-in model by name, or the generic one from ``rows``."""
    if model == GENERIC:
        return generic_model(f"generic:{name}", rows, max_registers_per_request, rejects_gaps)
    try:
        return MODELS[model]
    except KeyError:
        raise ModelError(f"model {model!r} is not one of {sorted(MODEL_NAMES)}") from None
