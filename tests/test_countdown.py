"""Every wait a technician is shown counts down to the moment of the next try on the wire: the meter's
re-probe, the power module's re-poll (simulated cabinet on a simulated clock) and the uplink's reconnect
(paho's wait, from the deadline the session sets)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import parse_config
from edge.config.telemetry import Mqtt
from edge.render import countdown, meter_lines, module_lines, uplink_state
from edge.sim.stepper import SimStepper
from edge.telemetry.session import Session
from tests.test_screen import sim_toml


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimStepper]:
    s = SimStepper(parse_config(sim_toml(tmp_path)), tmp_path / "data", step_s=0.05)
    yield s
    s.close()


def _deadlines_and_tries(
    sim: SimStepper, shown: Any, tried: Any, duration_s: float
) -> tuple[list[tuple[float, float]], list[float]]:
    """Step ``duration_s``; at each step the deadline shown (now + countdown) and when a try went out."""
    seen: list[tuple[float, float]] = []
    tries: list[float] = []
    before = tried()
    end = sim.now + duration_s
    while sim.now < end:
        sim.step()
        now_count = tried()
        if now_count != before:
            tries.append(sim.now)
            before = now_count
        wait = shown()
        if wait is not None:
            seen.append((sim.now, wait))
    return seen, tries


def _check(seen: list[tuple[float, float]], tries: list[float], late_s: float) -> None:
    """Between two tries the countdown falls with the clock and ends at the next try (within ``late_s``,
    the simulator's period of looking)."""
    assert len(tries) >= 3, tries
    for (t0, w0), (t1, w1) in itertools.pairwise(seen):
        nxt = next((t for t in tries if t > t0), None)
        if nxt is None or nxt <= t1:
            continue  # a try in between: a new wait starts
        assert w1 == pytest.approx(max(0.0, w0 - (t1 - t0)), abs=1e-6), (t0, w0, t1, w1)
        assert 0.0 <= nxt - (t0 + w0) <= late_s, (t0, w0, nxt)


def test_a_silent_meters_retry_counts_down_to_its_next_probe(sim):
    sim.set_meter_silent("grid", True)
    poller = next(m for p in sim.cabinet.meters.pollers for m in p.meters)
    sim.run_until(lambda: poller.absent, 30.0, "meter absent")

    def shown() -> float | None:
        return sim.cabinet.status()["meters"]["grid"]["retry_in_s"]

    seen, tries = _deadlines_and_tries(sim, shown, lambda: poller.polls, 20.0)
    _check(seen, tries, late_s=0.25 + 0.05)
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps[-1] > gaps[0]  # the back-off grows, and the countdown follows it
    text = "\n".join(meter_lines(sim.cabinet.status()))
    assert "retry in" in text and "-- kW" in text  # an absent meter's last values are not shown as live


def test_a_lost_modules_re_poll_counts_down_to_its_next_poll(sim):
    sim.set_module_silent(3, True)
    bank = sim.cabinet.bank
    sim.run_until(lambda: bank.modules[3].lost, 30.0, "module 3 lost")
    polled: list[float] = []
    original = bank.polls_due

    def spy(now: float) -> list[int]:
        due = original(now)
        if 3 in due:
            polled.append(now)
        return due

    bank.polls_due = spy  # type: ignore[method-assign]

    def shown() -> float | None:
        return sim.cabinet.status()["modules"]["3"]["retry_in_s"]

    seen, tries = _deadlines_and_tries(sim, shown, lambda: len(polled), 12.0)
    _check(seen, tries, late_s=bank.codec.command_spacing_s + 0.05)
    st = sim.cabinet.status()
    assert st["modules"]["3"]["current_a"] is None and st["modules"]["3"]["lost"]  # not its last current
    row = next(ln for ln in module_lines(st) if ln.split()[:2] == ["3", "LOST"])
    assert row.split()[2:5] == ["--", "--", "--"] and "re-poll in" in row, row


class _Paho:
    def __init__(self) -> None:
        self.delays: list[tuple[float, float]] = []

    def reconnect_delay_set(self, min_delay: float, max_delay: float) -> None:
        self.delays.append((min_delay, max_delay))


def test_the_uplinks_reconnect_counts_down_to_pahos_next_attempt():
    t = [100.0]
    session = Session(Mqtt(host="b", reconnect_min_s=2.0, reconnect_max_s=120.0), "c", None, will=("w", b""))  # type: ignore[arg-type]
    session.clock = lambda: t[0]
    paho = _Paho()
    waits = []
    for _ in range(4):  # four failed attempts: the wait paho is given, and what status says meanwhile
        session._set_delay(paho)  # type: ignore[arg-type]
        d = paho.delays[-1][0]
        assert paho.delays[-1] == (d, d)  # paho waits exactly this long before its next attempt
        shown = [session.retry_in_s()]
        t[0] += d / 2
        shown.append(session.retry_in_s())
        t[0] += d / 2
        shown.append(session.retry_in_s())
        assert shown == pytest.approx([d, d / 2, 0.0], abs=1e-3)
        waits.append(d)
    assert waits[-1] > waits[0]
    up = {"connected": False, "broker": "b:1883", "last_error": "refused", "next_reconnect_s": 0.2}
    assert uplink_state({"uplink": up}).endswith("retry in 1 s")  # a fraction left is not "0 s"
    assert countdown(65.0) == "1 m 05 s" and countdown(None) == "--"
