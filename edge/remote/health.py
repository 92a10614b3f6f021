"""The health window of a new release (or config): keep it, or roll back, and say why.

A release is kept when, within ``start_timeout_s`` of its start, the daemon answers with the new version,
and then for ``window_s``:

- it stays up in the same run (a restart in between is a crash, even when systemd brought it back);
- every configured device answered at least once (no power module lost, every meter ok, every reading of
  quality ok), except those that did not answer the old release either (``baseline_bad_devices``): the new
  release talks to the hardware the old one talked to;
- the uplink was connected at least once (a release that cannot reach the backend cannot be updated again);
- no fault appears that was not active before the update (``baseline``): a fault the old release had
  too is the site's, not the release's.

:class:`HealthWindow` is pure (samples in, verdict out); :func:`sample_from_status` turns the daemon's
``status`` answer (the control socket, as ``edge status --json``) into a sample.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

OK = "ok"


@dataclass(frozen=True)
class HealthSample:
    up: bool  # the daemon answered
    version: str = ""
    uptime_s: float = 0.0  # falls when the daemon restarted between two samples
    devices_ok: bool = False
    uplink_ok: bool = False
    faults: frozenset[str] = frozenset()
    why_not_devices: str = ""
    bad_devices: frozenset[str] = frozenset()  # "module 2", "meter grid", "reading gun1.t" ...


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str


IDLE_PHASES = ("Other", "Off")  # a connector's phase with no vehicle session


def connectors_in_session(status: dict[str, Any] | None) -> list[str]:
    """The connectors of the daemon's ``status`` answer that are in a session (exporting, in a session's
    phase or ``Stopping``, or with the contactor closed); [] when the daemon did not answer."""
    busy = []
    for c in (status or {}).get("connectors") or []:
        if c.get("mode", "Off") != "Off" or c.get("phase", "Off") not in IDLE_PHASES or c.get("contactor"):
            busy.append(str(c.get("name")))
    return busy


def sample_from_status(status: dict[str, Any] | None) -> HealthSample:
    """A sample from the daemon's ``status`` answer; None (no answer) is a daemon that is not up."""
    if status is None:
        return HealthSample(up=False)
    bad = _bad_devices(status)
    why = _device_problems(bad)
    uplink = ((status.get("telemetry") or {}).get("uplink")) or {}
    return HealthSample(
        up=True,
        version=str(status.get("version", "")),
        uptime_s=float(status.get("uptime_s") or 0.0),
        devices_ok=not why,
        uplink_ok=bool(uplink.get("connected")) or uplink.get("enabled") is False,
        faults=frozenset(str(f) for f in (status.get("faults") or {})),
        why_not_devices=why,
        bad_devices=frozenset(bad),
    )


def _names_where(table: Any, bad: Any) -> list[str]:
    return sorted(str(name) for name, entry in (table or {}).items() if bad(entry))


def _bad_devices(status: dict[str, Any]) -> list[str]:
    return [
        *(f"module {n}" for n in _names_where(status.get("modules"), lambda m: m.get("lost"))),
        *(f"meter {n}" for n in _names_where(status.get("meters"), lambda m: not m.get("ok"))),
        *(f"reading {n}" for n in _names_where(status.get("readings"), lambda r: r.get("quality") != OK)),
    ]


def _device_problems(bad: Iterable[str]) -> str:
    """ "" when every device answered, else which did not (at most 6 named)."""
    names = sorted(bad)
    more = f" and {len(names) - 6} more" if len(names) > 6 else ""
    return f"not answering: {', '.join(names[:6])}{more}" if names else ""


class HealthWindow:
    """Feed samples with their time; :meth:`feed` returns a :class:`Verdict` once the window decided."""

    def __init__(
        self,
        version: str,
        baseline_faults: Iterable[str],
        window_s: float,
        start_timeout_s: float,
        t0_s: float,
        baseline_bad_devices: Iterable[str] = (),
    ) -> None:
        """``baseline_*``: what was already wrong with the old release (a broken sensor is the site's)."""
        self.version = version
        self.baseline = frozenset(baseline_faults)
        self.baseline_bad = frozenset(baseline_bad_devices)
        self.window_s = window_s
        self.start_timeout_s = start_timeout_s
        self.t0_s = t0_s
        self.t_up_s: float | None = None
        self.last_uptime_s = 0.0
        self.devices_seen = False
        self.uplink_seen = False
        self.why_not_devices = "no answer yet"

    def feed(self, s: HealthSample, now_s: float) -> Verdict | None:
        if self.t_up_s is None:
            if s.up and s.version == self.version:
                self.t_up_s = now_s
            elif now_s - self.t0_s > self.start_timeout_s:
                seen = f"version {s.version} answers" if s.up else "no answer"
                return Verdict(False, f"{self.version} did not come up within {self.start_timeout_s:g} s ({seen})")
            else:
                return None
        elif not s.up:
            return Verdict(False, f"{self.version} stopped answering {now_s - self.t_up_s:.0f} s after it came up")
        elif s.uptime_s + 1.0 < self.last_uptime_s or s.version != self.version:
            return Verdict(False, f"{self.version} restarted {now_s - self.t_up_s:.0f} s after it came up")
        self.last_uptime_s = s.uptime_s
        new = sorted(s.faults - self.baseline)
        if new:
            return Verdict(False, f"new fault(s) with {self.version}: {', '.join(new)}")
        newly_bad = s.bad_devices - self.baseline_bad
        devices_ok = s.devices_ok or (bool(s.bad_devices) and not newly_bad)
        self.devices_seen |= devices_ok
        self.uplink_seen |= s.uplink_ok
        if not devices_ok:
            self.why_not_devices = _device_problems(newly_bad) if s.bad_devices else s.why_not_devices
        if now_s - self.t_up_s < self.window_s:
            return None
        if not self.devices_seen:
            return Verdict(False, f"not every device answered within {self.window_s:g} s ({self.why_not_devices})")
        if not self.uplink_seen:
            return Verdict(False, f"the uplink did not connect within {self.window_s:g} s")
        return Verdict(True, f"{self.version} healthy for {self.window_s:g} s")
