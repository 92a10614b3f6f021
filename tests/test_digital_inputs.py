"""hal input pins and the debounced reader (drivers/digital_inputs.py): active level, NC/NO wiring, debounce,
the irq path that evaluates at once."""

from __future__ import annotations

import pytest

from drivers.digital_inputs import DigitalInputs, InputSpec, build_inputs, is_active
from hal.clock import SimClock
from hal.pin import Pin, SimBoard, SimPin, make_input


def test_input_pin_reads_the_driven_level_and_refuses_writes() -> None:
    pin = SimPin("in1", Pin.IN)
    assert pin.value() == 0
    pin.drive(1)
    assert pin.value() == 1
    with pytest.raises(ValueError, match="input"):
        pin.value(0)
    out = SimPin("out1", Pin.OUT)
    with pytest.raises(ValueError, match="output"):
        out.drive(1)
    with pytest.raises(ValueError, match="mode"):
        SimPin("x", 7)
    assert make_input("sim", "in2").mode == Pin.IN
    with pytest.raises(ValueError, match="unknown input backend"):
        make_input("spi", "in3")


def test_irq_fires_on_a_change_only() -> None:
    pin = SimPin("in1", Pin.IN)
    seen: list[int] = []
    pin.irq(lambda p: seen.append(p.value()))
    pin.drive(1)
    pin.drive(1)
    pin.drive(0)
    assert seen == [1, 0]


@pytest.mark.parametrize(
    ("level", "active", "wiring", "expected"),
    [
        # NC loop, contact to ground with a pull-up: closed (normal) reads 0; pressed/cut reads 1 -> ACTIVE
        (0, "low", "nc", 0),
        (1, "low", "nc", 1),
        # NC loop on an input that reads high while the contact conducts: a cut wire reads 0 -> ACTIVE
        (1, "high", "nc", 0),
        (0, "high", "nc", 1),
        # NO contact: ACTIVE while it conducts
        (0, "low", "no", 1),
        (1, "low", "no", 0),
        (1, "high", "no", 1),
        (0, "high", "no", 0),
    ],
)
def test_active_level_and_wiring(level: int, active: str, wiring: str, expected: int) -> None:
    assert is_active(level, active, wiring) == expected


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="active"):
        InputSpec("e", "p", active="up")
    with pytest.raises(ValueError, match="wiring"):
        InputSpec("e", "p", wiring="xx")
    with pytest.raises(ValueError, match="debounce"):
        InputSpec("e", "p", debounce_ms=-1)


def _reader(debounce_ms: float, **kw: object) -> tuple[SimBoard, SimClock, DigitalInputs]:
    board, clock = SimBoard(), SimClock()
    board.input("gpio5", 0)  # NC loop closed (active low): inactive
    spec = InputSpec("estop", "gpio5", active="low", wiring="nc", debounce_ms=debounce_ms)
    return board, clock, build_inputs([spec], board.input, clock.monotonic, **kw)  # type: ignore[arg-type]


def test_a_cut_nc_loop_reads_active_after_the_debounce_time() -> None:
    board, clock, reader = _reader(10)
    assert reader.poll() == {"estop": 0}
    board.drive("gpio5", 1)  # the loop opens (pressed or wire cut): the pull-up wins
    assert reader.poll() == {"estop": 0}
    clock.advance(0.009)
    assert reader.poll() == {"estop": 0}
    clock.advance(0.001)
    assert reader.poll() == {"estop": 1}


def test_bounce_restarts_the_wait_and_changes_the_value_once() -> None:
    board, clock, reader = _reader(10)
    changes = []
    last = reader.poll()["estop"]
    for level in (1, 0, 1, 0, 1):  # a bouncing contact, 2 ms per bounce
        board.drive("gpio5", level)
        clock.advance(0.002)
        v = reader.poll()["estop"]
        if v != last:
            changes.append(v)
        last = v
    assert changes == []  # never stable for 10 ms
    clock.advance(0.008)
    assert reader.poll() == {"estop": 1}
    # a glitch shorter than the debounce time is ignored
    board.drive("gpio5", 0)
    clock.advance(0.005)
    reader.poll()
    board.drive("gpio5", 1)
    clock.advance(0.02)
    assert reader.poll() == {"estop": 1}


def test_first_read_is_taken_at_once() -> None:
    board, clock = SimBoard(), SimClock()
    board.input("gpio5", 1)  # pressed when the daemon starts
    reader = build_inputs([InputSpec("estop", "gpio5", debounce_ms=50)], board.input, clock.monotonic)
    assert reader.poll() == {"estop": 1}


def test_edge_calls_on_change_at_once_without_debounce() -> None:
    calls: list[int] = []
    board, _clock, reader = _reader(0, on_change=lambda: calls.append(reader.values()["estop"]))
    board.drive("gpio5", 1)
    assert calls == [1]  # the edge alone, no poll, no tick


def test_edge_with_debounce_schedules_the_evaluation() -> None:
    timers: list[tuple[float, object]] = []
    calls: list[int] = []
    board, clock, reader = _reader(
        10, on_change=lambda: calls.append(reader.poll()["estop"]), call_later=lambda d, fn: timers.append((d, fn))
    )
    board.drive("gpio5", 1)
    assert calls == [] and [d for d, _ in timers] == [0.01]
    clock.advance(0.01)
    timers[0][1]()  # type: ignore[operator]
    assert calls == [1]


def test_shared_pins_and_names_are_refused() -> None:
    board, clock = SimBoard(), SimClock()
    with pytest.raises(ValueError, match="share a pin"):
        build_inputs([InputSpec("a", "p"), InputSpec("b", "p")], board.input, clock.monotonic)
    with pytest.raises(ValueError, match="unique"):
        DigitalInputs(
            [InputSpec("a", "p"), InputSpec("a", "q")], {"p": board.input("p"), "q": board.input("q")}, clock.monotonic
        )
