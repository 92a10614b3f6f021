"""`edge config check` completeness (issue 19 item 5): every problem with file, line and key (cross-key ones
too, dotted keys and inline tables too); a partial section takes the documented defaults for the rest;
``--json`` problems are objects {file, line, key, message, allowed}."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.config import ConfigError, parse_config

SIM = (Path(__file__).parent.parent / "edge" / "sim" / "sim.toml").read_text()


def _line(text: str, needle: str, nth: int = 0) -> int:
    hits = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth]


def _details(text: str):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.toml")
    return err.value.details


def test_a_partial_temperature_section_takes_the_documented_defaults_for_the_rest():
    cfg = parse_config(SIM + "\n[limits.pin_temperature]\ntrip_c = 100.0\n", "c.toml")
    rule = cfg.limits.pin_temperature
    assert (rule.derate_start_c, rule.derate_end_c, rule.trip_c) == (70.0, 90.0, 100.0)
    coolant = parse_config(SIM + "\n[limits.coolant_temperature]\nderate_start_c = 40\n", "c.toml")
    assert coolant.limits.coolant_temperature.derate_end_c == 60.0


def test_a_partial_section_is_still_checked_against_the_defaults_at_the_key_the_file_sets():
    text = SIM + "\n[limits.pin_temperature]\ntrip_c = 80.0\n"
    (problem,) = _details(text)
    assert (problem.line, problem.key) == (_line(text, "trip_c = 80"), "limits.pin_temperature.trip_c")
    assert "below derate_end_c = 90" in problem.message and problem.allowed == "90..200 °C"


CROSS_KEY = {
    "duplicate connector name": (SIM.replace('name = "2"\ncables', 'name = "1"\ncables'), 'name = "1"', 1),
    "module not configured": (SIM.replace("modules = [3, 4]", "modules = [3, 9]"), "modules = [3, 9]", 0),
    "pin used twice": (SIM.replace('contactor = "contactor2"', 'contactor = "pump"'), 'contactor = "pump"', 0),
    "set-point above a limit": (SIM + "\n[control]\noutput_voltage_v = 1200.0\n", "output_voltage_v = 1200", 0),
    "set-point as a dotted key": (
        SIM.replace("[limits.grid]", "[control]\noutput_voltage_v = 1200.0\n\n[limits.grid]"),
        "output_voltage_v = 1200",
        0,
    ),
    "limit in an inline table": (
        SIM.replace("[limits.grid]\n", "[limits]\nover_voltage = { max_v = 300.0 }\n\n[limits.grid]\n"),
        "over_voltage = { max_v = 300.0 }",
        0,
    ),
    "second grid meter": (
        SIM + '\n[[meters]]\nname = "g2"\nmodel = "sdm630"\nline = "rs485-grid"\ndevice_id = 2\nrole = "grid"\n',
        'role = "grid"',
        1,
    ),
}


@pytest.mark.parametrize("case", sorted(CROSS_KEY))
def test_every_cross_key_problem_has_the_line_of_its_key(case):
    text, needle, nth = CROSS_KEY[case]
    details = _details(text)
    assert details and all(p.line is not None and p.key for p in details), details
    assert _line(text, needle, nth) in [p.line for p in details], details


def test_a_key_left_at_its_default_is_reported_at_the_table_that_holds_it():
    # [power_modules] without bus: the default "can0" names no [[can]] here
    text = SIM.replace('[power_modules]\nbus = "can0"\n', "[power_modules]\n").replace('name = "can0"', 'name = "can1"')
    text = text.replace('bus = "can0"', 'bus = "can1"')
    problem = next(p for p in _details(text) if p.key == "power_modules.bus")
    assert problem.line == _line(text, "[power_modules]")


def test_config_check_json_problems_are_objects_with_file_line_key_message_allowed(tmp_path):
    bad = tmp_path / "bad.toml"
    text = SIM.replace("poll_ms = 250", "poll_ms = 5") + "\n[limits.pin_temperature]\ntrip_cc = 1\n"
    bad.write_text(text)
    res = CliRunner().invoke(main, ["config", "check", str(bad), "--json"])
    assert res.exit_code == 2, res.output
    problems = json.loads(res.stdout)["problems"]
    assert problems[0] == {
        "file": str(bad),
        "line": _line(text, "poll_ms = 5"),
        "key": "meters[0].poll_ms",
        "message": "Input should be greater than or equal to 100 (allowed: integer 100..60000)",
        "allowed": "integer 100..60000",
    }
    typo = problems[1]
    assert (typo["line"], typo["key"]) == (_line(text, "trip_cc"), "limits.pin_temperature.trip_cc")
    assert "trip_c" in typo["allowed"].split(", ")
    missing = CliRunner().invoke(main, ["config", "check", str(tmp_path / "none.toml"), "--json"])
    assert json.loads(missing.stdout)["problems"] == [
        {"file": str(tmp_path / "none.toml"), "line": None, "key": "", "message": "file not found", "allowed": None}
    ]
