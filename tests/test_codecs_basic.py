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


def test_infypower_capabilities_request_is_command_0x0a_with_eight_zero_bytes():
    # id: device 0x0A (bits 25-22), command 0x0A (21-16), destination module 3, source controller 0xF0
    frames = infypower.InfyPowerCodec().identify(3)
    assert [(f.arbitration_id, f.data) for f in frames] == [(0x028A03F0, bytes(8))]


def test_infypower_capabilities_reply_golden_vector():
    # module 3 -> 0xF0, command 0x0A; four u16 BE: Vmax 750 V (x1 = 0x02EE), Vmin 200 V (x1 = 0x00C8),
    # Imax 100.0 A (x0.1 A = 1000 = 0x03E8), rated power 30 kW (x10 W = 3000 = 0x0BB8)
    reply = infypower.InfyPowerCodec().decode(0x028AF003, bytes.fromhex("02EE00C803E80BB8"))
    assert reply is not None and reply.address == 3 and not reply.ack
    assert reply.capabilities == {
        "max_voltage_v": 750.0,
        "min_voltage_v": 200.0,
        "max_current_a": 100.0,
        "rated_power_w": 30000.0,
    }


def test_infypower_capabilities_reply_with_the_largest_fields():
    # 0xFFFF in every field: 65535 V, 65535 V, 6553.5 A, 655350 W (no sign, no overflow)
    reply = infypower.InfyPowerCodec().decode(0x028AF03E, bytes.fromhex("FFFFFFFFFFFFFFFF"))
    assert reply is not None and reply.address == 0x3E
    assert reply.capabilities == {
        "max_voltage_v": 65535.0,
        "min_voltage_v": 65535.0,
        "max_current_a": 6553.5,
        "rated_power_w": 655350.0,
    }


@pytest.mark.parametrize(
    ("arbitration_id", "error"),
    [
        (0x029CF001, 0),  # module 1 -> 0xF0, set V/I (0x1C), error 0: taken
        (0x029AF001, 0),  # module 1 -> 0xF0, on/off (0x1A)
        (0x0E9CF001, 3),  # error bits 28-26 = 3 "data invalid": refused
        (0x1E9AF001, 7),  # error 7 "in start processing"
    ],
)
def test_infypower_answers_to_our_set_commands_are_acknowledgements(arbitration_id, error):
    reply = infypower.InfyPowerCodec().decode(arbitration_id, bytes.fromhex("0007A12000004E20"))
    assert reply is not None and reply.ack and reply.address == 1 and reply.error == error
    assert reply.voltage_v is None and reply.current_a is None and reply.capabilities is None


def test_infypower_refused_read_is_not_a_reply():
    # module 1 -> 0xF0, read output (0x03) with error 3: carries no values
    assert infypower.InfyPowerCodec().decode(0x0E83F001, bytes(8)) is None


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
