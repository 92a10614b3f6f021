"""What a technician types is parsed strictly: a number without its unit is refused, never guessed."""

from __future__ import annotations

from datetime import datetime

import pytest

from edge.cli_parse import parse_current_a, parse_duration_s, parse_since_ms


@pytest.mark.parametrize(("text", "amps"), [("120A", 120.0), ("120 A", 120.0), ("87.5a", 87.5), ("0A", 0.0)])
def test_current_with_unit_is_accepted(text, amps):
    assert parse_current_a(text) == amps


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("120", "has no unit; write it like 120A"),
        ("-5A", "cannot be negative"),
        ("120kW", "unit must be A"),
        ("fast", "is not a current"),
        ("", "is not a current"),
    ],
)
def test_bad_current_gets_a_message_that_says_how_to_write_it(text, message):
    with pytest.raises(ValueError, match=message):
        parse_current_a(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("1h30m", 5400), ("90s", 90), ("2h", 7200), ("1d", 86400), ("45min", 2700), ("1.5h", 5400)],
)
def test_durations_need_units(text, seconds):
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["30", "", "m", "10x", "0s", "30m extra"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration_s(text)


def test_bare_number_duration_suggests_units():
    with pytest.raises(ValueError, match="write it like 30m or 30s"):
        parse_duration_s("30")


def test_since_accepts_a_duration_ago_or_an_iso_time():
    now = 1_800_000_000.0
    assert parse_since_ms("10m", now) == int((now - 600) * 1000)
    assert parse_since_ms("2026-11-26T13:00:00Z", now) == int(
        datetime.fromisoformat("2026-11-26T13:00:00+00:00").timestamp() * 1000
    )
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since_ms("yesterday", now)
