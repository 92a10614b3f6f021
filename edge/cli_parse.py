"""Strict parsing of what a technician types: currents, durations, points in time.

A number without its unit is refused rather than guessed: ``120`` could be amps or a percentage,
``30`` could be seconds or minutes.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from edge.i18n import _

_CURRENT = re.compile(r"^\s*(?P<num>[+-]?\d+(?:\.\d+)?)\s*(?P<unit>[A-Za-z]*)\s*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(min|d|h|m|s)", re.IGNORECASE)
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0}


def parse_current_a(text: str) -> float:
    """``120A``, ``120 A``, ``87.5a`` -> amps. Raises ValueError with a message for a technician."""
    m = _CURRENT.match(text)
    if not m:
        raise ValueError(_("{text} is not a current; write it like 120A").format(text=repr(text)))
    value, unit = float(m.group("num")), m.group("unit")
    if not unit:
        raise ValueError(
            _("{text} has no unit; write it like {number}A").format(text=repr(text), number=m.group("num"))
        )
    if unit not in ("A", "a"):
        raise ValueError(_("{text}: unit must be A (amps), got {unit}").format(text=repr(text), unit=repr(unit)))
    if value < 0:
        raise ValueError(_("{text}: a current limit cannot be negative").format(text=repr(text)))
    return value


def parse_duration_s(text: str) -> float:
    """``30m``, ``1h30m``, ``90s``, ``2h`` -> seconds (a bare number is refused)."""
    t = text.strip().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2).lower()]
        pos = m.end()
    if pos != len(t) or not t:
        hint = _("; write it like {t}m or {t}s").format(t=t) if re.fullmatch(r"\d+(\.\d+)?", t) else ""
        raise ValueError(
            _("{text} is not a duration (units d, h, m, s: 30m, 1h30m, 90s)").format(text=repr(text)) + hint
        )
    if total <= 0:
        raise ValueError(_("{text}: a duration must be longer than 0 s").format(text=repr(text)))
    return total


def parse_since_ms(text: str, now_s: float | None = None) -> int:
    """``10m`` (ago) or an ISO date/time (``2026-11-26T13:00``; UTC unless it has an offset), read the way
    the CLI prints every time (``2026-11-26 13:00:00 UTC``: events, status, expiries)."""
    now_s = time.time() if now_s is None else now_s
    try:
        return int((now_s - parse_duration_s(text)) * 1000)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            _(
                "{text} is neither a duration (10m, 2h, 1d) nor an ISO time "
                "(2026-11-26T13:00, UTC unless it ends in +hh:mm)"
            ).format(text=repr(text))
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)
