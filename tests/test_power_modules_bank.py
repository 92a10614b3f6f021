"""ModuleBank as a pure state machine: a fake clock, frames recorded, replies built with the codec."""

from __future__ import annotations

import pytest

from drivers.power_modules import infypower as infy
from drivers.power_modules.bank import ModuleBank
from drivers.power_modules.codec import Frame


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make_bank(addresses=(1, 2, 3), lost_after_s=3.0):
    clock = Clock()
    sent: list[Frame] = []
    events: list[tuple[str, str, dict]] = []
    bank = ModuleBank(
        infy.InfyPowerCodec(),
        list(addresses),
        lost_after_s,
        sent.append,
        50.0,
        poll_period_s=1.0,
        max_backoff_s=8.0,
        clock=clock,
        on_event=lambda k, n, d: events.append((k, n, d)),
    )
    return bank, clock, sent, events


def answer(bank: ModuleBank, addr: int, now: float, alarms=frozenset(), v=400.0, a=0.0):
    bank.handle(infy.make_id(infy.CMD_READ_OUTPUT, 0xF0, addr), infy.encode_output(v, a), now)
    bank.handle(infy.make_id(infy.CMD_STATUS, 0xF0, addr), infy.encode_status(alarms, 30), now)


def commands(sent: list[Frame], addr: int) -> list[tuple[int, bytes]]:
    """(command, data) of the frames sent to one module."""
    out = []
    for f in sent:
        fid = infy.parse_id(f.arbitration_id)
        if fid.destination == addr and fid.device == infy.DEVICE_SINGLE:
            out.append((fid.command, f.data))
    return out


def settle(bank, clock, steps=4):
    """Let the command spacing pass a few times (set-points first, then on/off)."""
    for _ in range(steps):
        clock.t += 0.05
        bank.flush(clock.t)


def present(bank, clock, addrs):
    for a in addrs:
        answer(bank, a, clock.t)
    bank.check(clock.t)


def test_lost_after_must_be_shorter_than_the_modules_own_watchdog():
    with pytest.raises(ValueError, match="comms timeout"):
        make_bank(lost_after_s=10.0)


def test_demand_is_split_equally_across_available_modules_and_capped_per_module():
    bank, clock, _sent, _ = make_bank()
    present(bank, clock, (1, 2, 3))
    bank.apply(True, 400.0, 90.0)
    settle(bank, clock)
    assert [bank.modules[a].set_current_a for a in (1, 2, 3)] == [30.0, 30.0, 30.0]
    assert all(bank.modules[a].output_on for a in (1, 2, 3))
    bank.apply(True, 400.0, 500.0)
    settle(bank, clock)
    assert {m.set_current_a for m in bank.modules.values()} == {50.0}


def test_a_silent_module_is_lost_after_the_configured_time_and_told_zero_amps_and_off():
    bank, clock, sent, events = make_bank()
    present(bank, clock, (1, 2, 3))
    bank.apply(True, 400.0, 90.0)
    settle(bank, clock)
    sent.clear()
    clock.t = bank.modules[3].last_seen + 2.9
    for a in (1, 2):
        answer(bank, a, clock.t)
    bank.check(clock.t)
    assert not bank.modules[3].lost  # 2.9 s of silence is not yet 3 s
    clock.t += 0.2
    ev = bank.check(clock.t)
    assert ev.lost == [3] and bank.modules[3].lost
    assert ("module_lost", "module_3") in [(k, n) for k, n, _ in events]
    cmds = commands(sent, 3)
    assert (infy.CMD_SET_OUTPUT, infy.encode_set_output(0.0, 0.0)) in cmds
    assert (infy.CMD_ON_OFF, infy.encode_on_off(False)) in cmds
    # it was on: until its own 10 s watchdog has surely switched it off, the others do not take over
    # its share (it may have lost only its transmitter and still deliver 30 A)
    bank.apply(True, 400.0, 90.0)
    settle(bank, clock)
    assert bank.available() == [1, 2] and bank.possibly_delivering(clock.t) == [3]
    assert bank.modules[1].set_current_a == bank.modules[2].set_current_a == 30.0
    clock.t = bank.modules[3].last_seen + 10.0
    bank.apply(True, 400.0, 90.0)
    settle(bank, clock)
    assert bank.possibly_delivering(clock.t) == []
    assert bank.modules[1].set_current_a == bank.modules[2].set_current_a == 45.0


def test_a_lost_module_is_polled_with_a_doubling_backoff():
    bank, clock, _, _ = make_bank(addresses=(1,))
    assert bank.polls_due(clock.t) == [1]
    times = []
    for _ in range(60):
        clock.t += 0.25
        if bank.polls_due(clock.t):
            times.append(clock.t)
    gaps = [round(b - a, 2) for a, b in zip([100.0, *times], times, strict=False)]
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0] and set(gaps[3:]) == {8.0}


def test_a_present_module_is_polled_every_poll_period():
    bank, clock, _, _ = make_bank(addresses=(1,))
    present(bank, clock, (1,))
    bank.polls_due(clock.t)
    clock.t += 0.5
    assert bank.polls_due(clock.t) == []
    clock.t += 0.5
    assert bank.polls_due(clock.t) == [1]


def test_recovery_restores_setpoints_before_the_lost_fault_clears():
    bank, clock, _sent, _events = make_bank(addresses=(1, 2))
    present(bank, clock, (1, 2))
    clock.t += 3.5
    answer(bank, 1, clock.t)
    bank.check(clock.t)
    assert bank.modules[2].lost
    bank.apply(True, 400.0, 40.0)  # while 2 is lost: it is remembered as 0 A / off for 2
    order: list[str] = []
    bank._send = lambda f: order.append(
        f"frame {infy.parse_id(f.arbitration_id).command:#x} to {infy.parse_id(f.arbitration_id).destination}"
    )
    bank._event = lambda k, n, d: order.append(f"{k} {n}")
    clock.t += 0.5
    answer(bank, 1, clock.t)
    answer(bank, 2, clock.t)
    ev = bank.check(clock.t)
    assert ev.recovered == [2]
    restore = [i for i, s in enumerate(order) if s in ("frame 0x1c to 2", "frame 0x1a to 2")]
    cleared = order.index("module_recovered module_2")
    assert len(restore) == 2 and max(restore) < cleared, order
    # then it rejoins the split
    bank.apply(True, 400.0, 40.0)
    settle(bank, clock)
    assert bank.available() == [1, 2] and bank.modules[2].set_current_a == 20.0


def test_frames_from_unconfigured_modules_are_counted_and_never_touch_state():
    bank, clock, _, _ = make_bank(addresses=(1, 2))
    present(bank, clock, (1, 2))
    before = {a: (m.voltage_v, m.current_a, m.alarms, m.last_seen) for a, m in bank.modules.items()}
    for _ in range(5):
        answer(bank, 9, clock.t + 1, alarms={"fault"}, v=999.0, a=999.0)
    assert bank.foreign_frames == 10 and bank.foreign_addresses == {9}
    assert {a: (m.voltage_v, m.current_a, m.alarms, m.last_seen) for a, m in bank.modules.items()} == before
    assert 9 not in bank.modules


def test_alarm_raised_takes_the_module_out_of_the_split_and_clearing_brings_it_back():
    bank, clock, _, events = make_bank(addresses=(1, 2))
    present(bank, clock, (1, 2))
    answer(bank, 2, clock.t, alarms={"over_temperature", "walk_in"})
    assert ("module_alarm_raised", "module_2_over_temperature") in [(k, n) for k, n, _ in events]
    blocking = {n: d["blocking"] for k, n, d in events if k == "module_alarm_raised"}
    assert blocking == {"module_2_over_temperature": True, "module_2_walk_in": False}
    assert bank.available() == [1]
    answer(bank, 2, clock.t, alarms={"walk_in"})
    assert ("module_alarm_cleared", "module_2_over_temperature") in [(k, n) for k, n, _ in events]
    assert bank.available() == [1, 2]


def test_raising_waits_for_the_command_spacing_but_a_reduction_goes_out_at_once():
    bank, clock, sent, _ = make_bank(addresses=(1,))
    present(bank, clock, (1,))  # the recovery restore is a command too
    clock.t += 0.1
    bank.apply(True, 400.0, 10.0)  # set V/I goes now, switching on waits for the spacing
    assert commands(sent, 1)[-1][0] == infy.CMD_SET_OUTPUT and not bank.modules[1].output_on
    n = len(sent)
    bank.apply(True, 400.0, 20.0)  # a raise within 50 ms: held back, latest value wins
    bank.apply(True, 400.0, 30.0)
    assert len(sent) == n and bank.pending() == 1
    clock.t += 0.05
    bank.flush(clock.t)
    assert commands(sent, 1)[-1] == (infy.CMD_SET_OUTPUT, infy.encode_set_output(400.0, 30.0))
    clock.t += 0.05
    bank.flush(clock.t)
    assert commands(sent, 1)[-1] == (infy.CMD_ON_OFF, infy.encode_on_off(True)) and bank.pending() == 0
    # reduction right after a command: no waiting
    n = len(sent)
    bank.apply(True, 400.0, 5.0)
    assert len(sent) == n + 1 and commands(sent, 1)[-1] == (infy.CMD_SET_OUTPUT, infy.encode_set_output(400.0, 5.0))
    bank.apply(False, 400.0, 0.0)  # stop: 0 A and off together, at once
    assert [c for c, _ in commands(sent, 1)[-2:]] == [infy.CMD_SET_OUTPUT, infy.CMD_ON_OFF]
    assert not bank.modules[1].output_on


def test_force_lost_marks_every_module_lost_until_it_answers_again():
    bank, clock, _, events = make_bank(addresses=(1, 2))
    present(bank, clock, (1, 2))
    assert bank.force_lost(clock.t, "bus off") == [1, 2]
    assert bank.available() == [] and bank.capacity_a() == 0.0
    assert all("bus off" in d["detail"] for k, _, d in events if k == "fault_raised")
    clock.t += 0.1
    answer(bank, 1, clock.t)
    bank.check(clock.t)
    assert bank.available() == [1]


def test_all_off_is_a_group_command_whatever_the_state():
    bank, _clock, sent, _ = make_bank()
    bank.all_off()
    ids = {infy.parse_id(f.arbitration_id) for f in sent}
    assert {(i.device, i.destination, i.command) for i in ids} == {(0x0B, 0x3F, 0x1C), (0x0B, 0x3F, 0x1A)}


def test_readings_of_a_lost_module_are_stale():
    bank, clock, _, _ = make_bank(addresses=(1,))
    present(bank, clock, (1,))
    assert {r.quality for r in bank.readings("module", clock.t) if r.signal != "module.1.present"} == {"ok"}
    clock.t += 4
    bank.check(clock.t)
    q = {r.signal: r.quality for r in bank.readings("module", clock.t)}
    assert q["module.1.current_a"] == "stale" and q["module.1.temperature_c"] == "stale"


def test_reductions_off_and_a_lost_modules_0_a_are_priority_frames_raises_and_polls_are_not():
    bank, clock, sent, _ = make_bank(addresses=(1,))
    present(bank, clock, [1])
    sent.clear()
    bank.apply(True, 400.0, 40.0)  # a raise: spaced, not priority
    settle(bank, clock)
    assert sent and not any(f.priority for f in sent)
    assert not any(f.priority for f in bank.poll_frames(1))
    sent.clear()
    bank.apply(True, 400.0, 10.0)  # a reduction: at once, priority
    assert [f.priority for f in sent] == [True]
    sent.clear()
    bank.apply(False, 400.0, 0.0)  # off
    assert sent and all(f.priority for f in sent)
    sent.clear()
    clock.t += 10.0
    bank.check(clock.t)  # silent: lost, told 0 A and off at once
    assert sent and all(f.priority for f in sent)
    sent.clear()
    bank.all_off()
    assert len(sent) == 2 and all(f.priority for f in sent)


def test_acknowledgements_are_counted_and_do_not_prove_presence():
    bank, clock, _, _ = make_bank(addresses=(1,))
    ack = bank.on_frame(infy.make_id(infy.CMD_ON_OFF, 0xF0, 1), infy.encode_on_off(True), clock.t)
    assert ack == [] and bank.acks == 1 and bank.modules[1].last_seen is None
    assert bank.on_frame(infy.make_id(infy.CMD_READ_OUTPUT, 0xF0, 7), infy.encode_output(1, 1), clock.t) is None
