"""Power module codecs: golden frames written from PROTOCOLS.md by hand, and hypothesis round trips."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.power_modules import infypower as infy
from drivers.power_modules import uugreen as uu
from drivers.power_modules.codec import ModuleCodec
from drivers.power_modules.registry import CODECS, make_codec

# -- InfyPower golden frames ----------------------------------------------------------------------------


def test_infypower_set_vi_to_module_1_is_the_documented_frame():
    f = infy.InfyPowerCodec().set_output(1, 500.0, 20.0)[0]
    assert f.arbitration_id == 0x029C01F0 and f.is_extended_id
    assert f.data == bytes([0x00, 0x07, 0xA1, 0x20, 0x00, 0x00, 0x4E, 0x20])


def test_infypower_group_set_vi_uses_device_0x0b_and_broadcast_destination():
    f = infy.InfyPowerCodec().set_output(None, 500.0, 20.0)[0]
    # error 0, device 0x0B, command 0x1C, destination 0x3F, source 0xF0
    assert f.arbitration_id == (0x0B << 22) | (0x1C << 16) | (0x3F << 8) | 0xF0 == 0x02DC3FF0


@pytest.mark.parametrize(("on", "first_byte"), [(True, 0x00), (False, 0x01)])
def test_infypower_on_off_frame(on, first_byte):
    f = infy.InfyPowerCodec().output_on(2, on)[0]
    assert f.arbitration_id == 0x029A02F0
    assert f.data == bytes([first_byte, 0, 0, 0, 0, 0, 0, 0])


def test_infypower_reads_carry_eight_zero_bytes_and_the_read_commands():
    codec = infy.InfyPowerCodec()
    frames = codec.poll(3) + codec.discover() + codec.identify(3)
    assert frames and all(f.data == bytes(8) for f in frames)
    commands = {(f.arbitration_id >> 16) & 0x3F for f in frames}
    assert commands == {0x02, 0x03, 0x04, 0x0A}


def test_infypower_status_bits_decode_to_named_alarms():
    codec = infy.InfyPowerCodec()
    rid = (0x0A << 22) | (0x04 << 16) | (0xF0 << 8) | 0x01  # status reply from module 1
    reply = codec.decode(rid, bytes([0, 0, 0, 0, 0x23, 0b1000_1000, 0b0001_0010, 0b0000_0001]))
    assert reply is not None and reply.address == 1
    assert reply.alarms == {"output_short", "fault", "over_temperature", "phase_lost", "pfc_off"}
    assert reply.temperature_c == 0x23  # ASSUMPTION documented in infypower.py: byte 4, whole °C


@pytest.mark.parametrize(("byte", "bit", "name"), [(b, i, n) for (b, i), n in infy.STATUS_BITS.items()])
def test_every_infypower_status_bit_has_its_own_name(byte, bit, name):
    data = bytearray(8)
    data[byte] = 1 << bit
    assert infy.decode_status(bytes(data)) == {name}


def test_infypower_capabilities_reply_scales_per_protocol():
    # Vmax 1000 V (x1), Vmin 150 V (x1), Imax 100.0 A (x0.1 -> 1000), rated 30 kW (x10 W -> 3000)
    rid = (0x0A << 22) | (0x0A << 16) | (0xF0 << 8) | 0x05
    reply = infy.InfyPowerCodec().decode(rid, bytes.fromhex("03E8009603E80BB8"))
    assert reply is not None and reply.address == 5
    assert reply.capabilities == {
        "max_voltage_v": 1000.0,
        "min_voltage_v": 150.0,
        "max_current_a": 100.0,
        "rated_power_w": 30000.0,
    }


def test_infypower_module_count_is_byte_2():
    rid = (0x0B << 22) | (0x02 << 16) | (0xF0 << 8) | 0x00
    reply = infy.InfyPowerCodec().decode(rid, bytes([0, 0, 4, 0, 0, 0, 0, 0]))
    assert reply is not None and reply.module_count == 4


def test_infypower_output_reply_is_two_big_endian_floats():
    rid = (0x0A << 22) | (0x03 << 16) | (0xF0 << 8) | 0x02
    reply = infy.InfyPowerCodec().decode(rid, struct.pack(">ff", 400.0, 31.5))
    assert reply is not None and (reply.voltage_v, reply.current_a) == (400.0, 31.5)


@pytest.mark.parametrize(
    "arbitration_id, data",
    [
        (infy.make_id(0x03, 0xF0, 1, error=3), struct.pack(">ff", 1.0, 1.0)),  # error code: data invalid
        (infy.make_id(0x03, 0xF1, 1), struct.pack(">ff", 1.0, 1.0)),  # for another controller
        (infy.make_id(0x03, 0xF0, 1), b"\x00" * 7),  # wrong DLC
        (infy.make_id(0x03, 0xF0, 1), b""),  # empty
        (infy.make_id(0x03, 0xF0, 1), struct.pack(">ff", float("nan"), 1.0)),  # NaN
        (infy.make_id(0x1C, 0x01, 0xF0), bytes(8)),  # our own command
        (infy.make_id(0x03, 0xF0, 0x50), bytes(8)),  # source is not a module address
    ],
)
def test_infypower_frames_that_are_not_usable_replies_decode_to_none(arbitration_id, data):
    assert infy.InfyPowerCodec().decode(arbitration_id, data) is None


def test_infypower_rejects_negative_setpoints_and_bad_addresses():
    codec = infy.InfyPowerCodec()
    with pytest.raises(ValueError):
        codec.set_output(1, -1.0, 0.0)
    with pytest.raises(ValueError):
        codec.set_output(0x3F, 400.0, 0.0)


# -- UUGreen golden frames ------------------------------------------------------------------------------


def test_uugreen_module_1_id_is_the_documented_one():
    assert uu.make_id(1) == 0x02204000


def test_uugreen_set_output_sends_current_limit_then_voltage_reference_in_milli_units():
    f_i, f_v = uu.UUGreenCodec().set_output(1, 500.0, 20.0)
    assert f_i.arbitration_id == f_v.arbitration_id == 0x02204000
    assert f_i.data == bytes([0x00, 0x03, 0, 0, 0x00, 0x00, 0x4E, 0x20])  # type 0 set, cmd 3, 20000 mA
    assert f_v.data == bytes([0x00, 0x02, 0, 0, 0x00, 0x07, 0xA1, 0x20])  # cmd 2, 500000 mV


def test_uugreen_shutdown_command_is_zero_for_on_and_one_for_off():
    codec = uu.UUGreenCodec()
    assert codec.output_on(2, True)[0].data == bytes([0, 4, 0, 0, 0, 0, 0, 0])
    assert codec.output_on(2, False)[0].data == bytes([0, 4, 0, 0, 0, 0, 0, 1])
    assert codec.output_on(None, False)[0].arbitration_id == 0x02200000  # broadcast = module 0


def test_uugreen_read_replies_decode_and_requests_do_not():
    codec = uu.UUGreenCodec()
    rid = uu.make_id(3)
    assert codec.decode(rid, bytes([0x03, 0, 0, 0, 0x00, 0x06, 0x1A, 0x80])).voltage_v == 400.0
    assert codec.decode(rid, bytes([0x03, 1, 0, 0, 0x00, 0x00, 0x7A, 0xF8])).current_a == 31.48
    assert codec.decode(rid, bytes([0x03, 30, 0, 0, 0xFF, 0xFF, 0xD8, 0xF0])).temperature_c == -10.0
    status = codec.decode(rid, bytes([0x03, 8, 0, 0, 0, 0, 0, 0b101]))
    assert status.alarms == {"status_bit_0", "status_bit_2"}
    assert codec.decode(rid, bytes([0x02, 0, 0, 0, 0, 0, 0, 0])) is None  # a read request
    ack = codec.decode(rid, bytes([0x01, 3, 0, 0, 0, 0, 0, 0]))  # a set acknowledgement: no values
    assert ack is not None and ack.ack and ack.address == 3 and ack.current_a is None and ack.alarms is None
    assert codec.decode(uu.make_id(0), bytes([0x03, 0, 0, 0, 0, 0, 0, 0])) is None  # broadcast id
    assert codec.decode(rid | 0x1, bytes([0x03, 0, 0, 0, 0, 0, 0, 0])) is None  # low bits not zero
    assert codec.decode(rid, bytes([0x03, 0, 0, 0, 0, 0, 0])) is None  # wrong DLC


def test_uugreen_address_zero_is_broadcast_and_not_a_module():
    with pytest.raises(ValueError):
        uu.UUGreenCodec().poll(0)


# -- both codecs ----------------------------------------------------------------------------------------

CODEC_NAMES = sorted(CODECS)


def _reply_id(codec: ModuleCodec, address: int, command_frame_id: int) -> int:
    if codec.name == "infypower":
        fid = infy.parse_id(command_frame_id)
        return infy.make_id(fid.command, infy.CONTROLLER, source=address)
    return uu.make_id(address)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_registry_builds_every_codec_with_what_the_bank_needs(name):
    codec = make_codec(name)
    assert codec.name == name
    assert codec.module_comms_timeout_s > 0 and 0 < codec.command_spacing_s < 0.25
    assert codec.blocking_alarms <= codec.alarm_names
    rid, mask = codec.reply_mask()
    assert rid & mask == rid


def test_unknown_protocol_name_is_a_clear_error():
    with pytest.raises(ValueError, match="known"):
        make_codec("winline")


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_replies_match_the_hardware_filter_and_commands_are_not_replies(name):
    codec = make_codec(name)
    rid, mask = codec.reply_mask()
    for f in codec.poll(1) + codec.set_output(1, 400, 10) + codec.output_on(1, True):
        assert codec.decode(f.arbitration_id, f.data) is None
    reply_id = _reply_id(codec, 1, codec.poll(1)[0].arbitration_id)
    assert reply_id & mask == rid


@given(v=st.floats(0, 1500), a=st.floats(0, 200))
def test_infypower_set_output_round_trips_to_the_millivolt(v, a):
    f = infy.InfyPowerCodec().set_output(7, v, a)[0]
    back_v, back_a = infy.decode_set_output(f.data)
    assert abs(back_v - v) <= 0.0005 and abs(back_a - a) <= 0.0005


@given(v=st.floats(-2000, 2000, width=32), a=st.floats(-500, 500, width=32), addr=st.integers(0, 0x3E))
def test_infypower_output_reply_round_trips(v, a, addr):
    reply = infy.InfyPowerCodec().decode(infy.make_id(0x03, 0xF0, addr), infy.encode_output(v, a))
    assert reply is not None and reply.address == addr and reply.voltage_v == v and reply.current_a == a


@given(alarms=st.sets(st.sampled_from(sorted(infy.ALARM_NAMES))), temp=st.integers(0, 255))
def test_infypower_status_round_trips(alarms, temp):
    reply = infy.InfyPowerCodec().decode(infy.make_id(0x04, 0xF0, 9), infy.encode_status(alarms, temp))
    assert reply.alarms == alarms and reply.temperature_c == temp


@given(vmax=st.integers(0, 65535), vmin=st.integers(0, 65535), i10=st.integers(0, 65535), p10=st.integers(0, 65535))
def test_infypower_capabilities_round_trip(vmax, vmin, i10, p10):
    data = infy.encode_capabilities(vmax, vmin, i10 / 10, p10 * 10)
    assert infy.decode_capabilities(data) == {
        "max_voltage_v": vmax,
        "min_voltage_v": vmin,
        "max_current_a": i10 / 10,
        "rated_power_w": p10 * 10.0,
    }


@given(mv=st.integers(0, 0xFFFFFFFF), addr=st.integers(1, 127), cmd=st.sampled_from([0, 1]))
def test_uugreen_read_reply_round_trips(mv, addr, cmd):
    reply = uu.UUGreenCodec().decode(uu.make_id(addr), uu.encode_data(uu.TYPE_READ_RESPONSE, cmd, mv))
    assert reply is not None and reply.address == addr
    assert (reply.voltage_v if cmd == 0 else reply.current_a) == mv / 1000.0


@given(v=st.floats(0, 1500), a=st.floats(0, 200), addr=st.integers(1, 127))
def test_uugreen_set_output_round_trips(v, a, addr):
    f_i, f_v = uu.UUGreenCodec().set_output(addr, v, a)
    assert uu.parse_id(f_i.arbitration_id).module == addr
    assert abs(uu.decode_data(f_v.data)[3] / 1000 - v) <= 0.0005
    assert abs(uu.decode_data(f_i.data)[3] / 1000 - a) <= 0.0005


@pytest.mark.parametrize("name", CODEC_NAMES)
@given(aid=st.integers(0, 0x1FFFFFFF), data=st.binary(max_size=8))
def test_no_frame_makes_a_codec_raise(name, aid, data):
    make_codec(name).decode(aid, data)


def test_config_accepts_every_registered_protocol_and_refuses_uugreen_broadcast_address():
    from edge.config import ConfigError, parse_config

    base = '[cabinet]\nsite_id = "s"\ncabinet_id = "c"\n[[can]]\nname = "can0"\n[power_modules]\n'
    assert parse_config(base + 'protocol = "uugreen"\naddresses = [1, 2]\n').power_modules.protocol == "uugreen"
    with pytest.raises(ConfigError, match=r"address.*1\.\.127"):  # 0 is the broadcast address
        parse_config(base + 'protocol = "uugreen"\naddresses = [0, 1]\n')


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_the_module_acknowledging_our_set_commands_is_an_ack_without_values(name):
    codec = make_codec(name)
    for f in codec.set_output(5, 400, 10) + codec.output_on(5, True):
        if name == "infypower":  # the module answers with the command's id, from its address to us
            rid, data = _reply_id(codec, 5, f.arbitration_id), f.data
        else:  # the same id and value, type "set response"
            rid, data = f.arbitration_id, bytes([uu.TYPE_SET_RESPONSE]) + f.data[1:]
        reply = codec.decode(rid, data)
        assert reply is not None and reply.ack and reply.address == 5
        assert (reply.voltage_v, reply.current_a, reply.alarms) == (None, None, None)


@pytest.mark.parametrize(
    ("name", "addresses", "lost_after_s", "poll_s", "problems"),
    [
        ("infypower", [0, 1, 62], 3.0, 1.0, []),
        ("infypower", [63], 3.0, 1.0, ["address 63 is outside 0..62"]),
        ("uugreen", [1, 127], 3.0, 1.0, []),
        ("uugreen", [0, 128], 3.0, 1.0, ["address 0 is outside 1..127", "address 128 is outside 1..127"]),
        ("uugreen", [2, 2], 3.0, 1.0, ["repeated: [2]"]),
        ("infypower", [1], 10.0, 1.0, ["own comms watchdog (10 s)"]),
        ("infypower", [1], 3.0, 2.0, ["two poll periods (4 s)"]),
    ],
)
def test_codecs_check_the_vendor_constraints_of_a_configuration(name, addresses, lost_after_s, poll_s, problems):
    found = make_codec(name).check_config(addresses, lost_after_s, poll_s)
    assert len(found) == len(problems)
    for (setting, text), expected in zip(found, problems, strict=True):
        assert expected in text and setting in ("addresses", "lost_after")
