"""Issue 17 item 10: configs that `edge config check` used to accept and must refuse, each with file, line,
key and the allowed range: a grid-meter-loss fallback above the fuse, a coolant-flow trip that can never
fire, limit orderings reported at their key, and loose coercion of strings and numbers (strict types; an
integer is still a float, as TOML writes ``100`` for ``100.0``)."""

from __future__ import annotations

import pytest

from edge.config import ConfigError, parse_config
from tests.conftest import EXAMPLE_TOML, SIM_TOML


def _line_of(text: str, start: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(start))


def _refused(old: str, new: str, base: str = EXAMPLE_TOML) -> tuple[str, list[str]]:
    assert old in base, old
    bad = base.replace(old, new, 1)
    with pytest.raises(ConfigError) as err:
        parse_config(bad, "config.toml")
    return bad, err.value.problems


def test_grid_fallback_above_the_fuse_is_refused_at_its_line():
    # the finding: a 4000 A fallback with a 160 A fuse
    bad, problems = _refused(
        "fallback_ac_a = 16.0", "fallback_ac_a = 4000.0", EXAMPLE_TOML.replace("fuse_a = 63.0", "fuse_a = 160.0", 1)
    )
    assert problems == [
        f"config.toml:{_line_of(bad, 'fallback_ac_a = 4000.0')}: limits.grid.fallback_ac_a = 4000.0: "
        "above fuse_a - margin_a = 160 - 3 = 157 A (the site load is unknown while the meter is lost): "
        "allowed 0..157 A"
    ]


def test_grid_fallback_at_its_default_above_a_small_fuse_points_at_the_fuse():
    bad, problems = _refused("fuse_a = 63.0", "fuse_a = 16.0", EXAMPLE_TOML.replace("fallback_ac_a = 16.0", "#", 1))
    assert problems == [
        f"config.toml:{_line_of(bad, 'fuse_a = 16.0')}: limits.grid.fuse_a = 16.0: "
        "leaves fuse_a - margin_a = 16 - 3 = 13 A, below fallback_ac_a = 16 A (its default, not set in the file): "
        "set fallback_ac_a (the site load is unknown while the meter is lost): allowed 0..13 A"
    ]


def test_grid_margin_at_or_above_the_fuse_is_refused():
    bad, problems = _refused("margin_a = 3.0", "margin_a = 63.0")
    assert (
        f"config.toml:{_line_of(bad, 'margin_a = 63.0')}: limits.grid.margin_a = 63.0: "
        "not below fuse_a = 63 A (no current could ever be allowed): allowed 0 <= margin_a < 63 A"
    ) in problems


def test_a_flow_trip_that_can_never_fire_is_refused():
    # the finding: trip_lpm = 0 with derating 0-0.1 l/min; flow is never below 0, so the trip never fires
    bad = EXAMPLE_TOML.replace("derate_start_lpm = 3.0", "derate_start_lpm = 0.1", 1)
    bad = bad.replace("derate_end_lpm = 1.5", "derate_end_lpm = 0.0", 1)
    bad, problems = _refused("trip_lpm = 1.0", "trip_lpm = 0.0", bad)
    assert problems == [
        f"config.toml:{_line_of(bad, 'trip_lpm = 0.0')}: limits.coolant_flow.trip_lpm = 0.0: "
        "Input should be greater than 0 (allowed: number >0..50)"
    ]


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        (
            "derate_start_lpm = 3.0",
            "derate_start_lpm = 1.0",
            "derate_start_lpm",
            "limits.coolant_flow.derate_start_lpm = 1.0: not above derate_end_lpm = 1.5 l/min "
            "(need trip_lpm <= derate_end_lpm < derate_start_lpm): allowed 1.5 < derate_start_lpm <= 50 l/min",
        ),
        (
            "trip_lpm = 1.0",
            "trip_lpm = 2.0",
            "trip_lpm",
            "limits.coolant_flow.trip_lpm = 2.0: above derate_end_lpm = 1.5 l/min "
            "(need trip_lpm <= derate_end_lpm < derate_start_lpm): allowed 0 < trip_lpm <= 1.5 l/min",
        ),
    ],
)
def test_flow_orderings_are_refused_at_the_key(old, new, key, expected):
    bad, problems = _refused(old, new)
    assert problems == [f"config.toml:{_line_of(bad, new)}: {expected}"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "derate_end_c = 90.0",
            "derate_end_c = 60.0",
            "limits.pin_temperature.derate_end_c = 60.0: not above derate_start_c = 70 °C "
            "(need derate_start_c < derate_end_c <= trip_c): allowed 70 < derate_end_c <= 95 °C",
        ),
        (
            "trip_c = 95.0",
            "trip_c = 85.0",
            "limits.pin_temperature.trip_c = 85.0: below derate_end_c = 90 °C "
            "(need derate_start_c < derate_end_c <= trip_c): allowed 90..200 °C",
        ),
    ],
)
def test_temperature_orderings_are_refused_at_the_key(old, new, expected):
    bad, problems = _refused(old, new)
    assert problems == [f"config.toml:{_line_of(bad, new)}: {expected}"]


@pytest.mark.parametrize(
    "rule", ["pin_temperature", "coolant_temperature", "module_temperature", "ambient_temperature"]
)
def test_every_temperature_rule_checks_its_ordering(rule):
    bad = '[cabinet]\nsite_id = "s"\ncabinet_id = "c"\n[[can]]\nname = "can0"\n'
    bad += f"[limits.{rule}]\nderate_start_c = 50.0\nderate_end_c = 40.0\ntrip_c = 60.0\n"
    with pytest.raises(ConfigError) as err:
        parse_config(bad, "c.toml")
    assert err.value.problems == [
        f"c.toml:8: limits.{rule}.derate_end_c = 40.0: not above derate_start_c = 50 °C "
        "(need derate_start_c < derate_end_c <= trip_c): allowed 50 < derate_end_c <= 60 °C"
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "tick_ms = 100 ",
            'tick_ms = "100" ',
            "control.tick_ms = '100': Input should be a valid integer (allowed: integer 10..1000)",
        ),
        (
            "remote_clear_allowed = false",
            'remote_clear_allowed = "yes"',
            "limits.remote_clear_allowed = 'yes': Input should be a valid boolean (allowed: true or false)",
        ),
        (
            "remote_clear_allowed = false",
            "remote_clear_allowed = 1",
            "limits.remote_clear_allowed = 1: Input should be a valid boolean (allowed: true or false)",
        ),
        (
            "tick_ms = 100 ",
            "tick_ms = 100.0 ",
            "control.tick_ms = 100.0: Input should be a valid integer (allowed: integer 10..1000)",
        ),
        (
            "tick_ms = 100 ",
            "tick_ms = true ",
            "control.tick_ms = True: Input should be a valid integer (allowed: integer 10..1000)",
        ),
        (
            "fuse_a = 63.0",
            'fuse_a = "63"',
            "limits.grid.fuse_a = '63': Input should be a valid number (allowed: number 6..4000)",
        ),
    ],
)
def test_loose_types_are_refused(old, new, expected):
    bad, problems = _refused(old, new)
    assert problems == [f"config.toml:{_line_of(bad, new.strip())}: {expected}"]


def test_an_integer_is_still_a_float():
    text = EXAMPLE_TOML.replace("fuse_a = 63.0", "fuse_a = 63", 1).replace("trip_c = 95.0", "trip_c = 95", 1)
    cfg = parse_config(text, "config.toml")
    assert cfg.limits.grid.fuse_a == 63.0 and cfg.limits.pin_temperature.trip_c == 95.0
    dumped = cfg.limits.model_dump()
    assert type(dumped["grid"]["fuse_a"]) is float and type(dumped["pin_temperature"]["trip_c"]) is float


def test_shipped_configs_still_load():
    assert parse_config(EXAMPLE_TOML, "config.example.toml").limits.grid.fallback_ac_a == 16.0
    assert parse_config(SIM_TOML, "sim-bench.toml").limits.grid.fuse_a == 160.0
