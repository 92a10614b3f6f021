"""Golden vectors for every meter table, written from the datasheets' encoding rules (PROTOCOLS.md),
independently of the tables and of the simulator: raw register words in, value and unit out.

Each vector is (signal, expected address, expected function code, raw words, value, unit).
"""

from __future__ import annotations

import math

import pytest

from drivers.meters import models
from drivers.meters.models import ABB_B23, EM24, SDM630, MeterModel, ModelError, generic_model, model_for
from drivers.meters.registers import DecodeError, Register, check_range, decode_words
from edge.config import ConfigError, parse_config
from tests.conftest import EXAMPLE_TOML

# Eastron SDM630: fc 04, IEEE float32, high word first. 230.1 V = 0x4366199A; 10.5 = 0x41280000;
# 50.0 = 0x42480000; 1234.5 = 0x449A5000; 2400.0 = 0x45160000; 0.98 ~ 0x3F7AE148; -1500.0 = 0xC4BB8000.
SDM630_VECTORS = [
    ("Voltage.L1", 0x0000, 4, [0x4366, 0x199A], 230.1, "V"),
    ("Voltage.L3", 0x0004, 4, [0x4366, 0x199A], 230.1, "V"),
    ("Current.Import.L2", 0x0008, 4, [0x4128, 0x0000], 10.5, "A"),
    ("Power.Active.Import.L1", 0x000C, 4, [0x4516, 0x0000], 2400.0, "W"),
    ("Power.Active.Import", 0x0034, 4, [0xC4BB, 0x8000], -1500.0, "W"),
    ("Power.Factor.L1", 0x001E, 4, [0x3F7A, 0xE148], 0.98, "-"),
    ("Frequency", 0x0046, 4, [0x4248, 0x0000], 50.0, "Hz"),
    ("Energy.Active.Import.Register", 0x0048, 4, [0x449A, 0x5000], 1234.5, "kWh"),
    ("Energy.Active.Export.Register", 0x004A, 4, [0x4248, 0x0000], 50.0, "kWh"),
]

# ABB B23/B24: fc 03, big-endian words. u32 0.1 V: 2301 = 0x000008FD; u32 0.01 A: 1050 = 0x0000041A;
# s32 0.01 W: -150025 = 0xFFFDB5F7; u64 0.01 kWh: 123456 = 0x1E240; u16 0.01 Hz: 5000 = 0x1388;
# s16 0.001: -500 = 0xFE0C.
ABB_VECTORS = [
    ("Voltage.L1", 0x5B00, 3, [0x0000, 0x08FD], 230.1, "V"),
    ("Voltage.L2", 0x5B02, 3, [0x0000, 0x08FD], 230.1, "V"),
    ("Current.Import.L3", 0x5B10, 3, [0x0000, 0x041A], 10.5, "A"),
    ("Power.Active.Import", 0x5B14, 3, [0xFFFD, 0xB5F7], -1500.25, "W"),
    ("Power.Active.Import.L1", 0x5B16, 3, [0x0000, 0x041A], 10.5, "W"),
    ("Frequency", 0x5B2C, 3, [0x1388], 50.0, "Hz"),
    ("Power.Factor.L2", 0x5B3C, 3, [0xFE0C], -0.5, "-"),
    ("Energy.Active.Import.Register", 0x5000, 3, [0x0000, 0x0000, 0x0001, 0xE240], 1234.56, "kWh"),
    ("Energy.Active.Export.Register", 0x5004, 3, [0x0000, 0x0000, 0x0000, 0x0064], 1.0, "kWh"),
]

# Carlo Gavazzi EM24: int32 with the LOW word first. 0.1 V: 2301 -> [0x08FD, 0x0000]; 0.001 A:
# 10500 = 0x2904; 0.1 W: -15000 = 0xFFFFC568 -> [0xC568, 0xFFFF]; u16 0.1 Hz: 500 = 0x01F4;
# 0.1 kWh: 1000000 = 0x000F4240 -> [0x4240, 0x000F] (the word order matters here).
EM24_VECTORS = [
    ("Voltage.L1", 0x0000, 4, [0x08FD, 0x0000], 230.1, "V"),
    ("Current.Import.L1", 0x000C, 4, [0x2904, 0x0000], 10.5, "A"),
    ("Current.Import.L3", 0x0010, 4, [0x2904, 0x0000], 10.5, "A"),
    ("Power.Active.Import.L2", 0x0014, 4, [0xC568, 0xFFFF], -1500.0, "W"),
    ("Power.Active.Import", 0x0028, 4, [0xC568, 0xFFFF], -1500.0, "W"),
    ("Frequency", 0x0033, 4, [0x01F4], 50.0, "Hz"),
    ("Energy.Active.Import.Register", 0x0034, 4, [0x4240, 0x000F], 100000.0, "kWh"),
    ("Energy.Active.Export.Register", 0x004E, 4, [0x3039, 0x0000], 1234.5, "kWh"),
]


def _reg(model: MeterModel, signal: str) -> Register:
    return next(r for r in model.registers if r.signal == signal)


@pytest.mark.parametrize(
    ("model", "vector"),
    [(SDM630, v) for v in SDM630_VECTORS] + [(ABB_B23, v) for v in ABB_VECTORS] + [(EM24, v) for v in EM24_VECTORS],
    ids=lambda x: x.name if isinstance(x, MeterModel) else x[0],
)
def test_golden_vector_decodes_to_datasheet_value_and_unit(model, vector):
    signal, address, fc, words, value, unit = vector
    reg = _reg(model, signal)
    assert (reg.address, reg.function_code, reg.unit) == (address, fc, unit)
    assert decode_words(reg, words) == pytest.approx(value, rel=1e-6, abs=1e-6)
    assert check_range(reg, decode_words(reg, words)) is None


@pytest.mark.parametrize("model", [SDM630, ABB_B23, EM24], ids=lambda m: m.name)
def test_every_model_has_per_phase_voltage_current_power_pf_and_totals(model):
    signals = {r.signal for r in model.registers}
    for ph in ("L1", "L2", "L3"):
        assert {f"Voltage.{ph}", f"Current.Import.{ph}", f"Power.Active.Import.{ph}", f"Power.Factor.{ph}"} <= signals
    assert {
        "Power.Active.Import",
        "Frequency",
        "Energy.Active.Import.Register",
        "Energy.Active.Export.Register",
    } <= signals
    units = {r.signal.split(".")[0]: r.unit for r in model.registers}
    assert units == {"Voltage": "V", "Current": "A", "Power": "W", "Frequency": "Hz", "Energy": "kWh"} | (
        {"Power": units["Power"]}
    )
    assert all(r.unit == "-" for r in model.registers if r.signal.startswith("Power.Factor"))
    models.check_model(model)


def test_energy_counters_are_slow_and_monotonic_everything_else_fast():
    for model in (SDM630, ABB_B23, EM24):
        for r in model.registers:
            assert (r.period == "slow") == (r.unit == "kWh") == r.counter, r


@pytest.mark.parametrize(
    ("model", "signal", "words"),
    [
        (ABB_B23, "Voltage.L1", [0xFFFF, 0xFFFF]),
        (ABB_B23, "Power.Active.Import", [0x7FFF, 0xFFFF]),
        (ABB_B23, "Energy.Active.Import.Register", [0xFFFF] * 4),
        (ABB_B23, "Frequency", [0xFFFF]),
        (ABB_B23, "Power.Factor.L1", [0x7FFF]),
        (EM24, "Voltage.L1", [0xFFFF, 0x7FFF]),  # s32 0x7FFFFFFF, low word first
    ],
)
def test_not_available_markers_are_decode_errors(model, signal, words):
    with pytest.raises(DecodeError, match="not available"):
        decode_words(_reg(model, signal), words)


@pytest.mark.parametrize("words", [[0x7FC0, 0x0000], [0x7F80, 0x0000], [0xFF80, 0x0000]], ids=["nan", "inf", "-inf"])
def test_sdm_nan_and_infinity_are_decode_errors(words):
    with pytest.raises(DecodeError, match="finite"):
        decode_words(_reg(SDM630, "Current.Import.L1"), words)


def test_implausible_values_fail_the_range_check():
    # 0x47C35000 = 100000.0 V: a float that decodes fine but cannot be a phase voltage
    v = decode_words(_reg(SDM630, "Voltage.L1"), [0x47C3, 0x5000])
    assert v == 100000.0 and check_range(_reg(SDM630, "Voltage.L1"), v)
    assert check_range(_reg(SDM630, "Frequency"), 0.0)
    assert check_range(_reg(SDM630, "Energy.Active.Import.Register"), -1.0)


def test_signatures_identify_abb_by_ascii_model_and_em24_by_id():
    abb = ABB_B23.signature
    assert abb is not None and abb.register.address == 0x8960 and abb.register.function_code == 3
    assert abb.raw([0x4232, 0x3320]) in abb.values  # "B23 "
    assert abb.raw([0x4232, 0x3420]) in abb.values  # "B24 "
    em = EM24.signature
    assert em is not None and em.register.address == 0x000B and em.raw([1648]) in em.values


GENERIC_TOML = """
[[meters]]
name = "sub"
model = "generic"
line = "rs485-grid"
device_id = 7
role = "charger"
rejects_gaps = true
max_registers_per_request = 40
[[meters.registers]]
signal = "Voltage.L1"
address = 0x10
type = "u32"
scale = 0.1
unit = "V"
function_code = 3
[[meters.registers]]
signal = "Energy.Active.Import.Register"
address = 0x20
type = "s32"
word_order = "little"
scale = 0.01
unit = "kWh"
"""


def test_generic_meter_table_comes_from_the_config():
    cfg = parse_config(EXAMPLE_TOML + GENERIC_TOML)
    m = cfg.meters[-1]
    model = model_for(
        m.model, m.name, [r.model_dump() for r in m.registers], m.max_registers_per_request, m.rejects_gaps
    )
    assert model.rejects_gaps and model.max_registers_per_request == 40
    volts = _reg(model, "Voltage.L1")
    assert (volts.address, volts.function_code, volts.period) == (0x10, 3, "fast")
    assert decode_words(volts, [0x0000, 0x08FD]) == pytest.approx(230.1)
    energy = _reg(model, "Energy.Active.Import.Register")
    assert energy.period == "slow" and energy.counter
    assert decode_words(energy, [0x4240, 0x000F]) == pytest.approx(10000.0)


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        ('unit = "V"', ('unit = "mV"', "meters[1].registers[0].unit", "'V', 'A', 'W', 'Hz', '-' or 'kWh'")),
        ('type = "u32"', ('type = "int32"', "meters[1].registers[0].type", "'u16'")),
        ("function_code = 3", ("function_code = 6", "meters[1].registers[0].function_code", "3 or 4")),
    ],
)
def test_generic_meter_config_errors_name_the_key_and_the_allowed_values(edit, expect):
    new, key, allowed = expect
    with pytest.raises(ConfigError) as err:
        parse_config(EXAMPLE_TOML + GENERIC_TOML.replace(edit, new, 1))
    assert key in str(err.value) and allowed in str(err.value)


def test_generic_registers_overlapping_in_one_function_code_are_refused():
    text = GENERIC_TOML.replace("function_code = 3", "function_code = 4").replace("address = 0x20", "address = 0x11")
    with pytest.raises(ConfigError, match=r"Energy\.Active\.Import\.Register at address 17 overlaps Voltage\.L1"):
        parse_config(EXAMPLE_TOML + text)


def test_generic_model_without_registers_and_bad_bounds_are_refused():
    with pytest.raises(ConfigError, match="needs a register table"):
        parse_config(
            EXAMPLE_TOML + '[[meters]]\nname = "x"\nmodel = "generic"\nline = "rs485-grid"\nrole = "charger"\n'
        )
    with pytest.raises(ConfigError, match="timeout_min_ms"):
        parse_config(EXAMPLE_TOML.replace("timeout_ms = 500", "timeout_ms = 60\ntimeout_min_ms = 100"))


def test_overlapping_generic_registers_are_a_model_error():
    with pytest.raises(ModelError, match="overlaps"):
        generic_model(
            "x",
            [
                {"signal": "Voltage.L1", "address": 0, "type": "u32", "unit": "V"},
                {"signal": "Voltage.L2", "address": 1, "type": "u16", "unit": "V"},
            ],
        )


def test_register_nan_value_is_never_ok():
    assert math.isnan(float("nan"))  # guard for the platform: float NaN exists
    reg = Register("Voltage.L1", 0, "float32", "V")
    with pytest.raises(DecodeError):
        decode_words(reg, [0xFFC0, 0x0001])
