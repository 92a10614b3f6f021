"""Every time a technician reads says its zone, and the same one (issue 19 item 7): events, the daemon's log
lines, the diagnostics manifest and the status header print UTC with "UTC"; a `--since` time without an offset
is read as UTC too, so a time copied from `edge events` finds the same event. Run with a non-UTC local zone,
so a local time would show."""

from __future__ import annotations

import io
import logging
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from edge import logsetup, render
from edge.cli_parse import parse_since_ms

T_MS = 1_796_379_302_000  # 2026-12-04 10:15:02 UTC


@pytest.fixture
def far_zone() -> Iterator[None]:
    """Local time 5 h 30 min ahead of UTC: a time printed in local time differs from UTC."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "IST-5:30"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_events_print_utc_with_the_zone(far_zone):
    text = render.events_text([{"seq": 1, "t_ms": T_MS, "kind": "fault_raised", "name": "grid_meter_lost"}])
    assert text.startswith("2026-12-04 10:15:02 UTC fault_raised grid_meter_lost"), text


def test_a_since_time_without_an_offset_is_utc_the_zone_the_events_print(far_zone):
    printed = render.clock(T_MS).removesuffix(" UTC")  # what a technician copies from `edge events`
    assert parse_since_ms(printed.replace(" ", "T")) == T_MS
    assert parse_since_ms("2026-12-04T10:15:02Z") == T_MS
    assert parse_since_ms("2026-12-04T15:45:02+05:30") == T_MS


def test_the_daemon_log_lines_print_utc_with_the_zone(far_zone, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(logsetup.sys, "stderr", out)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logsetup.setup_logging("INFO")
        before = datetime.now(UTC).replace(microsecond=0)
        logging.getLogger("edge.events").info("fault_raised grid_meter_lost")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    line = out.getvalue()
    m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.\d{3} UTC INFO +edge\.events: fault_raised", line)
    assert m, line
    logged = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert 0 <= (logged - before).total_seconds() <= 5, (line, before)  # UTC, not the local +05:30
