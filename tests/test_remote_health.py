"""The health window of a new release: kept only when it came up, stayed up, every device answered, the
uplink connected and no fault appeared that the old release did not have."""

from __future__ import annotations

from edge.remote.health import HealthSample, HealthWindow, sample_from_status

GOOD = HealthSample(up=True, version="2.0", uptime_s=1.0, devices_ok=True, uplink_ok=True, faults=frozenset({"old"}))


def window() -> HealthWindow:
    return HealthWindow("2.0", ["old"], window_s=300.0, start_timeout_s=90.0, t0_s=0.0)


def run(w: HealthWindow, samples: list[tuple[float, HealthSample]]) -> str | None:
    for t, s in samples:
        verdict = w.feed(s, t)
        if verdict is not None:
            return ("ok: " if verdict.healthy else "fail: ") + verdict.reason
    return None


def test_a_healthy_release_is_kept_at_the_end_of_the_window_not_before() -> None:
    w = window()
    assert run(w, [(10.0, GOOD), (200.0, GOOD)]) is None
    assert (run(w, [(310.0, GOOD)]) or "").startswith("ok: 2.0 healthy for 300 s")


def test_a_release_that_never_answers_fails_after_the_start_timeout() -> None:
    w = window()
    assert run(w, [(89.0, HealthSample(up=False))]) is None
    assert "did not come up within 90 s (no answer)" in (run(w, [(91.0, HealthSample(up=False))]) or "")


def test_the_old_version_answering_is_not_the_new_one_coming_up() -> None:
    old = HealthSample(up=True, version="1.0")
    assert "version 1.0 answers" in (run(window(), [(1.0, old), (95.0, old)]) or "")


def test_a_crash_after_coming_up_fails_at_once() -> None:
    assert "stopped answering" in (run(window(), [(5.0, GOOD), (6.0, HealthSample(up=False))]) or "")


def test_a_restart_within_the_window_is_a_crash() -> None:
    later = HealthSample(up=True, version="2.0", uptime_s=100.0, devices_ok=True, uplink_ok=True)
    restarted = HealthSample(up=True, version="2.0", uptime_s=2.0, devices_ok=True, uplink_ok=True)
    assert "restarted" in (run(window(), [(5.0, later), (8.0, restarted)]) or "")


def test_a_new_fault_fails_but_one_the_old_release_had_does_not() -> None:
    new = HealthSample(
        up=True, version="2.0", uptime_s=2.0, devices_ok=True, uplink_ok=True, faults=frozenset({"old", "x"})
    )
    assert run(window(), [(1.0, GOOD)]) is None
    assert "new fault(s) with 2.0: x" in (run(window(), [(1.0, GOOD), (2.0, new)]) or "")


def test_devices_and_uplink_must_each_be_seen_ok_once_within_the_window() -> None:
    mute = HealthSample(up=True, version="2.0", uptime_s=1.0, uplink_ok=True, bad_devices=frozenset({"module 2"}))
    assert "not every device answered within 300 s (not answering: module 2)" in (
        run(window(), [(1.0, mute), (302.0, mute)]) or ""
    )
    offline = HealthSample(up=True, version="2.0", uptime_s=1.0, devices_ok=True)
    assert "uplink did not connect" in (run(window(), [(1.0, offline), (302.0, offline)]) or "")


def test_sample_from_the_daemons_status_answer() -> None:
    status = {
        "version": "2.0",
        "uptime_s": 12.5,
        "faults": {"cable_over_temperature": "95 °C"},
        "modules": {"1": {"lost": False}, "2": {"lost": True}},
        "meters": {"grid": {"ok": True}},
        "readings": {"gun1.t": {"quality": "ok"}},
        "telemetry": {"uplink": {"connected": True}},
    }
    s = sample_from_status(status)
    assert s.up and s.version == "2.0" and s.uptime_s == 12.5 and s.uplink_ok
    assert not s.devices_ok and s.why_not_devices == "not answering: module 2"
    assert s.bad_devices == {"module 2"}
    assert s.faults == {"cable_over_temperature"}
    assert sample_from_status(None) == HealthSample(up=False)
    assert sample_from_status({"version": "2", "telemetry": {"uplink": {"enabled": False}}}).uplink_ok


def test_a_device_that_did_not_answer_the_old_release_either_does_not_fail_the_new_one() -> None:
    broken = frozenset({"reading gun1.coolant_flow_lpm"})
    w = HealthWindow("2.0", [], 300.0, 90.0, 0.0, baseline_bad_devices=broken)
    s = HealthSample(up=True, version="2.0", uptime_s=1.0, uplink_ok=True, bad_devices=broken)
    assert (run(w, [(1.0, s), (301.0, s)]) or "").startswith("ok: ")
    worse = HealthSample(up=True, version="2.0", uptime_s=1.0, uplink_ok=True, bad_devices=broken | {"module 1"})
    w2 = HealthWindow("2.0", [], 300.0, 90.0, 0.0, baseline_bad_devices=broken)
    assert "(not answering: module 1)" in (run(w2, [(1.0, worse), (301.0, worse)]) or "")
