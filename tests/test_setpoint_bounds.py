"""Set-points bounded everywhere (issue 17 item 2): refused by the config check with file, line, key and
range; clamped by the safety core; clamped again where ModuleBank encodes the frames, so that no set-output
frame of either codec can carry more than the limits (a hypothesis property over NaN, inf, negative, huge)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.power_modules import infypower as infy
from drivers.power_modules import uugreen as uu
from drivers.power_modules.bank import CODEC_MAX_SETPOINT, ModuleBank
from drivers.power_modules.codec import Frame, ModuleCodec
from edge.config import ConfigError, parse_config
from edge.config.limits import LimitsConfig
from edge.limits import core
from tests.conftest import edge_env, sim_config_text


# -- config check ------------------------------------------------------------------------------------
def _check(tmp_path: Path, extra: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "config.toml"
    cfg.write_text(sim_config_text(tmp_path, extra))
    return subprocess.run(
        [sys.executable, "-m", "edge", "config", "check", str(cfg)],
        capture_output=True,
        text=True,
        env=edge_env(),
        timeout=30,
    )


def _line_of(path: Path, key: str) -> int:
    return next(n for n, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip().startswith(f"{key} ="))


def test_config_check_refuses_a_voltage_set_point_above_the_hardware_limit_with_file_line_and_range(tmp_path):
    res = _check(tmp_path, "[control]\noutput_voltage_v = 1500\n\n[limits]\nmax_output_voltage_v = 1000\n")
    assert res.returncode == 2, res
    cfg = tmp_path / "config.toml"
    want = (
        f"{cfg}:{_line_of(cfg, 'output_voltage_v')}: control.output_voltage_v = 1500: "
        "above limits.max_output_voltage_v = 1000 V; above power_modules.max_voltage_v = 1000 V; "
        "above limits.over_voltage.max_v = 1000 V: allowed 50..1000 V "
        "(the lowest of limits.max_output_voltage_v, power_modules.max_voltage_v, limits.over_voltage.max_v)"
    )
    assert want in res.stdout + res.stderr, res


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        (
            '[control]\noutput_voltage_v = 900\n\n[power_modules]\nbus = "can0"\nmax_voltage_v = 750\n',
            "control.output_voltage_v",
            "control.output_voltage_v = 900: above power_modules.max_voltage_v = 750 V: allowed 50..750 V",
        ),
        (
            "[control]\noutput_voltage_v = 800\n\n[limits.over_voltage]\nmax_v = 780\n",
            "control.output_voltage_v",
            "control.output_voltage_v = 800: above limits.over_voltage.max_v = 780 V: allowed 50..780 V",
        ),
        (
            "[control]\nrequested_current_a = 250\n",
            "control.requested_current_a",
            "control.requested_current_a = 250: above limits.max_output_current_a = 200 A: allowed 0..200 A",
        ),
        (
            "[limits]\nmax_output_current_a = 125\n",
            "limits.max_output_current_a",
            "limits.max_output_current_a = 125: below control.requested_current_a = 200 A (its default; not set "
            "in the file): set control.requested_current_a, allowed 0..125 A",
        ),
    ],
)
def test_every_set_point_is_checked_against_every_limit(tmp_path, extra, key, message):
    text = sim_config_text(tmp_path, extra)
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "cab.toml")
    (problem,) = [p for p in exc.value.problems if key in p]
    assert problem.startswith("cab.toml:") and message in problem, problem
    line = int(problem.split(":")[1])
    leaf = key.split(".")[-1]
    at = text.splitlines()[line - 1].strip()
    assert at.startswith(f"{leaf} ="), (line, at)


def test_set_points_at_the_limits_pass(tmp_path):
    cfg = parse_config(
        sim_config_text(tmp_path, "[control]\noutput_voltage_v = 1000\nrequested_current_a = 200\n"), "cab.toml"
    )
    assert (cfg.control.output_voltage_v, cfg.control.requested_current_a) == (1000.0, 200.0)


# -- the safety core -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("voltage", "expected", "note"),
    [
        (400.0, 400.0, None),
        (1000.0, 1000.0, None),
        (1000.1, 1000.0, "clamped to 1000.0 V"),
        (math.inf, 1000.0, "voltage set-point inf V clamped"),
        (math.nan, 0.0, "voltage set-point nan V invalid, 0 V sent"),
        (-1.0, 0.0, "invalid, 0 V sent"),
        (None, 0.0, None),
    ],
)
def test_the_core_step_clamps_the_voltage_set_point(voltage, expected, note):
    c = core._Ctx({"t": 1.0, "inputs": {}, "voltage_v": voltage}, LimitsConfig().model_dump(), core.initial_state())
    core._voltage_setpoint(c)
    assert c.voltage == expected
    assert (note in c.reason) if note else c.reason == ""


# -- the encoding boundary ---------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _set_points(codec: ModuleCodec, frame: Frame) -> list[tuple[str, float]]:
    """("v" | "a", value) of a set-output frame, decoded with the codec's own decoding; [] for others."""
    if isinstance(codec, infy.InfyPowerCodec):
        if infy.parse_id(frame.arbitration_id).command != infy.CMD_SET_OUTPUT:
            return []
        v, a = infy.decode_set_output(frame.data)
        return [("v", v), ("a", a)]
    _group, kind, command, value = uu.decode_data(frame.data)
    if kind != uu.TYPE_SET:
        return []
    return {uu.CMD_VREF: [("v", value / 1000.0)], uu.CMD_ILIMIT: [("a", value / 1000.0)]}.get(command, [])


def _present(bank: ModuleBank, codec: ModuleCodec, addrs: list[int], now: float) -> None:
    for a in addrs:
        if isinstance(codec, infy.InfyPowerCodec):
            bank.handle(infy.make_id(infy.CMD_READ_OUTPUT, 0xF0, a), infy.encode_output(0.0, 0.0), now)
        else:
            bank.handle(uu.make_id(a), uu.encode_data(uu.TYPE_READ_RESPONSE, uu.CMD_VOUT, 0), now)
    bank.check(now)


NASTY = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -0.0, 0.0, 1e300, 4294967.296, 5e6, 2000.0, 1500.0]),
    st.floats(min_value=0, max_value=2000),
)
STEPS = st.lists(
    st.tuples(st.booleans(), NASTY, NASTY, st.sampled_from([0.0, 0.01, 0.06, 4.0])), min_size=1, max_size=12
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    protocol=st.sampled_from(["infypower", "uugreen"]),
    max_v=st.floats(min_value=50, max_value=1500),
    max_a=st.floats(min_value=0.1, max_value=200),
    steps=STEPS,
)
def test_no_set_output_frame_carries_more_than_the_limits(
    protocol: str, max_v: float, max_a: float, steps: list[tuple[bool, float, float, float]]
) -> None:
    codec: ModuleCodec = infy.InfyPowerCodec() if protocol == "infypower" else uu.UUGreenCodec()
    clock = Clock()
    sent: list[Frame] = []
    addrs = [1, 2, 3]
    bank = ModuleBank(codec, addrs, 3.0, sent.append, max_a, poll_period_s=1.0, clock=clock, max_voltage_v=max_v)
    _present(bank, codec, addrs, clock.t)
    for enable, volts, amps, dt in steps:
        bank.apply(enable, volts, amps)  # must never raise, whatever comes in
        clock.t += dt
        if dt > 3.0:  # a module falls silent, another answers again
            _present(bank, codec, addrs[1:], clock.t)
        bank.flush(clock.t)
    decoded = [sp for f in sent for sp in _set_points(codec, f)]
    assert decoded, "set-output frames were sent"
    for what, value in decoded:
        high = max_v if what == "v" else max_a
        # the frame holds milli-units: rounding may add at most 0.5 m-unit
        assert 0.0 <= value <= high + 0.0005, (what, value, high)
    for mod in bank.modules.values():
        assert 0.0 <= mod.set_voltage_v <= max_v and 0.0 <= mod.set_current_a <= max_a


def test_a_clamp_at_the_encoding_boundary_is_counted_and_logged_once_a_minute(caplog: Any) -> None:
    clock = Clock()
    sent: list[Frame] = []
    codec = infy.InfyPowerCodec()
    bank = ModuleBank(codec, [1], 3.0, sent.append, 50.0, clock=clock, max_voltage_v=1000.0)
    _present(bank, codec, [1], clock.t)
    caplog.set_level("ERROR", logger="drivers.power_modules.bank")
    bank.apply(True, 1500.0, 40.0)
    bank.apply(True, math.nan, 40.0)
    bank.apply(True, 400.0, math.nan)
    assert bank.setpoints_clamped == 3 and bank.status()["setpoints_clamped"] == 3
    assert len(caplog.records) == 1 and "bug upstream" in caplog.records[0].getMessage()
    clock.t += 61.0
    bank.apply(True, 2000.0, 40.0)
    assert len(caplog.records) == 2
    assert bank.modules[1].set_voltage_v == 1000.0
    assert bank.max_voltage_v == 1000.0 and bank.max_setpoint_a == 50.0
    assert ModuleBank(codec, [1], 3.0, sent.append, 50.0).max_voltage_v == CODEC_MAX_SETPOINT


def test_a_nan_total_current_commands_nothing_not_the_full_module_current() -> None:
    # min(50, nan) is 50 in Python: a NaN demand must not become every module's maximum
    clock = Clock()
    sent: list[Frame] = []
    codec = infy.InfyPowerCodec()
    bank = ModuleBank(codec, [1, 2], 3.0, sent.append, 50.0, clock=clock, max_voltage_v=1000.0)
    _present(bank, codec, [1, 2], clock.t)
    bank.apply(True, 400.0, math.nan)
    assert all(m.set_current_a == 0.0 and not m.output_on for m in bank.modules.values())
