"""Golden vectors taken from PROTOCOLS.md, written independently of the tables and codecs."""

import math

import pytest

from drivers.cable.monitor import CableMonitor
from drivers.meters.models import SDM630
from drivers.meters.registers import DecodeError, Register, decode_words
from drivers.power_modules import infypower
from drivers.readings import INVALID, OK


def test_sdm630_voltage_golden_vector():
    # "230.1 V is float32 0x4366199A -> registers [0x4366, 0x199A]"
    reg = next(r for r in SDM630.registers if r.signal == "Voltage.L1")
    assert reg.address == 0x0000 and reg.function_code == 4
    assert decode_words(reg, [0x4366, 0x199A]) == pytest.approx(230.1, abs=1e-4)


def test_sdm630_total_energy_register_is_import_not_total():
    reg = next(r for r in SDM630.registers if r.signal == "Energy.Active.Import.Register")
    assert reg.address == 0x0048 and reg.unit == "kWh"


def test_float_nan_is_a_decode_error():
    reg = Register("x", 0, "float32", "V")
    with pytest.raises(DecodeError):
        decode_words(reg, [0x7FC0, 0x0000])


def test_little_word_order_int32():
    reg = Register("x", 0, "s32", "V", scale=0.1, word_order="little")
    # 2301 = 0x000008FD, low word first
    assert decode_words(reg, [0x08FD, 0x0000]) == pytest.approx(230.1)


def test_infypower_set_output_golden_frame():
    frame = infypower.InfyPowerCodec().set_output(1, 500.0, 20.0)[0]
    assert frame.arbitration_id == 0x029C01F0
    assert frame.data == bytes.fromhex("0007A12000004E20")


def test_infypower_read_requests_are_eight_zero_bytes():
    frames = infypower.InfyPowerCodec().poll(3)
    assert frames and all(f.data == bytes(8) for f in frames)


def test_infypower_output_reply_decodes_floats():
    codec = infypower.InfyPowerCodec()
    rid = infypower.make_id(infypower.CMD_READ_OUTPUT, 0xF0, source=2)
    reply = codec.decode(rid, infypower.encode_output(400.0, 31.5))
    assert reply is not None and reply.address == 2
    assert reply.voltage_v == pytest.approx(400.0) and reply.current_a == pytest.approx(31.5)


def test_cable_monitor_counter_repeat_marks_frame_invalid():
    mon = CableMonitor("cable")
    fid, data = mon.encode(
        "CABLE_TEMPS",
        {
            "PinTempDcPlus": 45.0,
            "PinTempDcMinus": 44.0,
            "CoolantInletTemp": 25.0,
            "CoolantOutletTemp": 30.0,
            "RollingCounter": 5,
        },
    )
    first = {r.signal: r for r in mon.decode(fid, data, 1.0)}
    assert first["cable.pin_dc_plus_c"].quality == OK
    assert math.isclose(first["cable.pin_dc_plus_c"].value, 45.0, abs_tol=0.05)
    again = {r.signal: r for r in mon.decode(fid, data, 1.1)}
    assert again["cable.pin_dc_plus_c"].quality == INVALID
