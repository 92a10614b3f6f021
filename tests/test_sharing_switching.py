"""Issue 16 item 3: the switching sequence (edge/charging/sharing.py), step by step and each failure: the
losing connector hears first, the group is at 0 A and off before its relay opens, it closes to the gaining
connector only with every relay of it confirmed open, and a relay that does not confirm takes the group out
of service."""

from __future__ import annotations

from edge.charging import sharing as sw

T = sw.Timing(confirm_s=0.5, ramp_timeout_s=2.0, off_current_a=1.0)
OPEN_BOTH = {"1": 0, "2": 0}


def _to_open(current_a: float = 80.0) -> tuple[sw.Move, list[list]]:
    """A move of group A from 1 to 2 driven up to its open command."""
    move, out = sw.start("A", "1", "2", 0.0)
    log = [*out]
    log += sw.step(move, current_a, {"1": 1, "2": 0}, 0.1, T)
    log += sw.step(move, 0.5, {"1": 1, "2": 0}, 0.2, T)  # the group is down at 0.5 A
    log += sw.step(move, 0.2, {"1": 1, "2": 0}, 0.3, T)  # modules off, still low
    return move, log


def test_the_full_sequence_in_order() -> None:
    move, log = _to_open()
    assert log == [
        ["capabilities", "1"],
        ["group_current", "A", 0.0],
        ["modules", "A", "off"],
        ["relay", "A", "1", "open"],
    ]
    assert move.step == sw.OPEN
    assert sw.step(move, 0.0, {"1": 1, "2": 0}, 0.35, T) == []  # mirror still closed: wait
    assert sw.step(move, 0.0, OPEN_BOTH, 0.4, T) == [["relay", "A", "2", "close"]]
    assert sw.step(move, 0.0, OPEN_BOTH, 0.45, T) == []
    assert sw.step(move, 0.0, {"1": 0, "2": 1}, 0.5, T) == [
        ["modules", "A", "on"],
        ["capabilities", "2"],
        ["done", "A", "2"],
    ]
    assert move.finished and move.fault is None
    assert sw.step(move, 0.0, {"1": 0, "2": 1}, 0.6, T) == []


def test_ramp_down_waits_for_the_current_then_times_out_to_modules_off() -> None:
    move, _ = sw.start("A", "1", "2", 0.0)
    sw.step(move, 80.0, {"1": 1}, 0.0, T)
    assert sw.step(move, 80.0, {"1": 1}, 1.0, T) == []  # still carrying current: no modules off yet
    assert sw.step(move, None, {"1": 1}, 1.5, T) == []  # current not known: not low
    assert sw.step(move, 80.0, {"1": 1}, 2.0, T) == [["modules", "A", "off"]]  # ramp timeout


def test_group_that_keeps_current_with_modules_off_never_opens_its_relay() -> None:
    move, _ = sw.start("A", "1", "2", 0.0)
    sw.step(move, 0.5, {"1": 1}, 0.0, T)
    sw.step(move, 0.5, {"1": 1}, 0.1, T)  # -> modules off
    assert sw.step(move, 5.0, {"1": 1}, 0.3, T) == []
    out = sw.step(move, 5.0, {"1": 1}, 0.6, T)
    assert [c[:3] for c in out] == [["fault", "A", "group_not_off"]]
    assert move.step == sw.FAILED and not any(c[0] == "relay" for c in move.log)


def test_relay_stuck_closed_is_a_fault_and_nothing_closes() -> None:
    move, _ = _to_open()
    assert sw.step(move, 0.0, {"1": 1, "2": 0}, 0.7, T) == []
    out = sw.step(move, 0.0, {"1": 1, "2": 0}, 0.8, T)  # 0.5 s after the open command
    assert out[0][:3] == ["fault", "A", "relay_stuck"] and "A->1" in out[0][3]
    assert move.fault == "relay_stuck"
    assert ["relay", "A", "2", "close"] not in move.log


def test_relay_failing_to_close_is_opened_again_and_a_fault() -> None:
    move, _ = _to_open()
    sw.step(move, 0.0, OPEN_BOTH, 0.4, T)  # close issued at 0.4
    assert sw.step(move, 0.0, OPEN_BOTH, 0.8, T) == []
    out = sw.step(move, 0.0, OPEN_BOTH, 0.9, T)
    assert out[0] == ["relay", "A", "2", "open"]
    assert out[1][:3] == ["fault", "A", "relay_failed_to_close"]
    assert ["modules", "A", "on"] not in move.log


def test_never_closes_while_another_relay_of_the_group_is_not_open() -> None:
    """A group from no connector (it was idle) with a third relay reading closed (or not read)."""
    for reading in (1, None):
        move, out = sw.start("B", None, "2", 0.0)
        assert out == []
        cmds = sw.step(move, 0.0, {"1": 0, "2": 0, "3": reading}, 0.1, T)
        assert [c[:3] for c in cmds] == [["fault", "B", "relay_not_open"]]
        assert not any(c[0] == "relay" for c in move.log)


def test_group_from_no_connector_closes_at_once_and_to_no_connector_ends_open() -> None:
    move, _ = sw.start("B", None, "2", 0.0)
    assert sw.step(move, 0.0, OPEN_BOTH, 0.1, T) == [["relay", "B", "2", "close"]]
    assert sw.step(move, 0.0, {"1": 0, "2": 1}, 0.2, T)[-1] == ["done", "B", "2"]
    leave, _ = sw.start("C", "1", None, 0.0)
    sw.step(leave, 0.0, {"1": 1}, 0.0, T)
    sw.step(leave, 0.0, {"1": 1}, 0.1, T)
    sw.step(leave, 0.0, {"1": 1}, 0.2, T)
    assert sw.step(leave, 0.0, {"1": 0}, 0.3, T) == [["done", "C", None]]
    assert not any(c[0] == "relay" and c[3] == "close" for c in leave.log)


def test_the_power_told_to_a_vehicle_is_its_share_not_its_own_last_request() -> None:
    """EVerest never asks more than the capabilities say: a vehicle in its cable check (2 A) must not be told
    2 A x V as its maximum power, or it could never ask more (found by tests/test_sharing_everest.py). It is
    told its share of the fuse headroom (what the others leave it) within the groups it has now; a group on
    its way to it counts only once it is there, one leaving it no more."""
    matrix = sw.Matrix(
        groups={"A": [1, 2], "B": [3, 4]}, reach={"A": ["1", "2"], "B": ["1", "2"]}, home={"1": ["A"], "2": ["B"]}
    )
    cab = sw.Cabinet(matrix, T)
    runner = sw.Runner(cab, None)  # type: ignore[arg-type]  # limit_w reads the cabinet only
    conn = {"max_a": 200.0, "max_kw": 120.0, "request_v": 400.0}
    idle = {"phase": "Other", "request_kw": 0.0, **conn}
    cab.tick(0.0, {"1": {"phase": "Charging", "request_kw": 0.8, **conn}, "2": idle}, {"A": 0.0, "B": 0.0}, {}, 100.0)
    assert cab.limit_kw["1"] == 0.8  # the split follows the requests
    assert runner.limit_w("1") == 80_000.0  # what its group A gives, within the 100 kW headroom
    assert runner.limit_w("2") == 80_000.0  # group B parked there: what a car arriving there may have
    cab.tick(1.0, {"1": {"phase": "Charging", "request_kw": 80.0, **conn}, "2": idle}, {"A": 70.0, "B": 0.0}, {}, 100.0)
    assert cab.moves["B"].target == "1"  # car A asks all it was told: B comes over
    assert runner.limit_w("1") == 80_000.0 and runner.limit_w("2") == 0.0  # B counts for 1 only once there
    cab.at["B"], cab.moves = "1", {}
    cab.tick(2.0, {"1": {"phase": "Charging", "request_kw": 80.0, **conn}, "2": idle}, {"A": 70.0, "B": 0.0}, {}, 100.0)
    assert runner.limit_w("1") == 100_000.0  # both groups, within the headroom
