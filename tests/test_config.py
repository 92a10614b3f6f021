"""Config validation: the example loads; each class of mistake is refused with a message naming
file, line, key path, value and what is allowed; `edge config check` exits 2 on errors, 0 when valid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import ConfigError, load_config, parse_config
from tests.conftest import EXAMPLE_TOML, SIM_TOML, edge_env


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "config", "check", str(path)],
        capture_output=True,
        text=True,
        env=edge_env(),
        timeout=30,
    )


def test_example_config_loads_with_every_section():
    cfg = parse_config(EXAMPLE_TOML, "config.example.toml")
    assert cfg.cabinet.cabinet_id == "cab-017"
    assert cfg.meters[0].model == "sdm630" and cfg.power_modules.addresses == [1, 2]
    assert cfg.limits.pin_temperature.trip_c == 95.0


def test_builtin_sim_config_loads():
    assert parse_config(SIM_TOML).outputs.backend == "sim"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "trip_c = 95.0",
            "trip_c = 300.0",
            ["config.toml:", "limits.pin_temperature.trip_c = 300.0", "less than or equal to 200"],
        ),
        (
            "derate_start_c = 70.0",
            "derate_strat_c = 70.0",
            ["limits.pin_temperature.derate_strat_c", "unknown key", "allowed keys: derate_end_c, derate_start_c"],
        ),
        ("device_id = 1 ", 'device_id = "one" ', ["meters[0].device_id = 'one'", "valid integer"]),
        ("baudrate = 9600 ", "baudrate = 9601 ", ["serial[0].baudrate = 9601", "9600"]),
        ('line = "rs485-grid"', 'line = "rs485-nope"', ["meters[0].line = 'rs485-nope'", "not a [[serial]]"]),
        ("derate_end_c = 90.0", "derate_end_c = 60.0", ["need derate_start_c < derate_end_c <= trip_c"]),
        (
            "lost_after_ms = 3000",
            "lost_after_ms = 12000",
            ["power_modules.lost_after_ms = 12000", "infypower module's own comms watchdog (10 s)"],
        ),
        ("addresses = [1, 2] ", "addresses = [1, 63] ", ["power_modules.addresses", "address 63 is outside 0..62"]),
    ],
)
def test_each_mistake_names_key_value_and_allowed(old, new, expected):
    assert old in EXAMPLE_TOML, old
    bad = EXAMPLE_TOML.replace(old, new, 1)
    with pytest.raises(ConfigError) as err:
        parse_config(bad, "config.toml")
    text = str(err.value)
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in {text!r}"


def test_error_points_at_the_line_of_the_key():
    bad = EXAMPLE_TOML.replace("trip_c = 95.0", "trip_c = 300.0", 1)
    line_no = next(i for i, ln in enumerate(bad.splitlines(), 1) if ln.startswith("trip_c = 300.0"))
    with pytest.raises(ConfigError) as err:
        parse_config(bad, "config.toml")
    assert f"config.toml:{line_no}:" in str(err.value)


def test_broken_toml_is_refused_with_position():
    with pytest.raises(ConfigError) as err:
        parse_config("[cabinet\nsite_id = 1\n", "x.toml")
    assert "x.toml:1: not valid TOML" in str(err.value) and "line 1" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "nope.toml")
    assert "file not found" in str(err.value)


def test_missing_required_section():
    with pytest.raises(ConfigError) as err:
        parse_config("[logging]\nlevel = 'INFO'\n", "c.toml")
    assert "cabinet: required key is missing" in str(err.value)


def test_config_check_cli_valid_prints_effective_config(tmp_path):
    f = tmp_path / "ok.toml"
    f.write_text(EXAMPLE_TOML)
    res = check(f)
    assert res.returncode == 0, res.stderr
    effective = json.loads(res.stdout)
    assert effective["limits"]["coolant_flow"]["trip_lpm"] == 1.0  # defaults are filled in
    assert "OK" in res.stderr


@pytest.mark.parametrize(
    "content",
    [
        EXAMPLE_TOML + "\n[bogus]\nx = 1\n",
        EXAMPLE_TOML.replace("[cabinet]", "[cabinet", 1),
        EXAMPLE_TOML.replace("tick_ms = 100", "tick_ms = -5", 1),
    ],
)
def test_config_check_cli_refuses_with_exit_2(tmp_path, content):
    f = tmp_path / "bad.toml"
    f.write_text(content)
    res = check(f)
    assert res.returncode == 2
    assert str(f) in res.stderr and "INVALID" in res.stderr


def test_config_check_cli_missing_file_exit_2(tmp_path):
    res = check(tmp_path / "absent.toml")
    assert res.returncode == 2 and "file not found" in res.stderr


def _line_of(text: str, start: str, nth: int = 0) -> int:
    return [i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(start)][nth]


def test_cross_key_errors_point_at_the_line_of_the_key_they_are_about():
    for old, new, key in (
        ('line = "rs485-grid"', 'line = "rs485-nope"', "meters[0].line = 'rs485-nope'"),  # Config
        ("lost_after_ms = 3000", "lost_after_ms = 10000", "power_modules.lost_after_ms = 10000"),  # the codec's
        ('bus = "can0"                   # a [[can]]', 'bus = "can9" # a [[can]]', "power_modules.bus = 'can9'"),
    ):
        bad = EXAMPLE_TOML.replace(old, new, 1)
        assert bad != EXAMPLE_TOML, old
        with pytest.raises(ConfigError) as err:
            parse_config(bad, "config.toml")
        assert err.value.problems[0].startswith(f"config.toml:{_line_of(bad, new)}: {key}: "), err.value.problems


def test_every_problem_of_one_check_is_reported_each_at_its_key():
    bad = EXAMPLE_TOML.replace("timeout_ms = 500", "timeout_ms = 60\ntimeout_min_ms = 100\nfrozen_after_ms = 100", 1)
    with pytest.raises(ConfigError) as err:
        parse_config(bad, "config.toml")
    at = {
        key: f"config.toml:{_line_of(bad, key)}: meters[0].{key} = 100" for key in ("timeout_min_ms", "frozen_after_ms")
    }
    assert err.value.problems == [
        f"{at['timeout_min_ms']}: must not exceed timeout_ms = 60",
        f"{at['frozen_after_ms']}: use 0 (off) or at least 5000",
    ]


def test_a_default_key_in_a_cross_key_error_points_at_its_table():
    # the second grid meter says nothing about its role (default grid): the error is at its [[meters]] header
    bad = EXAMPLE_TOML + '\n[[meters]]\nname = "grid2"\nline = "rs485-grid"\ndevice_id = 9\n'
    with pytest.raises(ConfigError) as err:
        parse_config(bad, "config.toml")
    assert err.value.problems == [
        f'config.toml:{_line_of(bad, "[[meters]]", 1)}: meters[1].role: at most one meter may have role = "grid"'
    ]


def test_module_addresses_are_checked_by_the_vendor_codec():
    base = '[cabinet]\nsite_id = "s"\ncabinet_id = "c"\n[[can]]\nname = "can0"\n[power_modules]\n'
    # UUGreen's module field has 7 bits (1..127, 0 = broadcast); InfyPower's source byte stops at 0x3E
    assert parse_config(base + 'protocol = "uugreen"\naddresses = [1, 100]\n').power_modules.addresses == [1, 100]
    with pytest.raises(ConfigError, match=r"power_modules\.addresses: infypower module address 100 is outside 0\.\.62"):
        parse_config(base + 'protocol = "infypower"\naddresses = [1, 100]\n', "c.toml")
