"""Meter register tables, one per model, from the manufacturers' public register maps.

Signal names are OCPP 1.6/2.0.1 measurands with the phase appended; units are the device's
natural unit after scaling (V, A, W, Hz, kWh, and "-" for power factor).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.meters.registers import Register


@dataclass(frozen=True)
class MeterModel:
    name: str
    registers: tuple[Register, ...]
    max_registers_per_request: int = 125
    # Some meters answer "illegal data address" when a read spans undefined registers.
    rejects_gaps: bool = False
    default_baudrate: int = 9600


def _sdm(signal: str, address: int, unit: str) -> Register:
    return Register(signal, address, "float32", unit, function_code=4)


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
)

MODELS: dict[str, MeterModel] = {m.name: m for m in (SDM630,)}
