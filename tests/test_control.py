"""The control loop in a cabinet built by build(): the InfyPower bank (frames captured at the module port), a
simulated clock, sim pins and a sim watchdog. What it must do: feed the watchdog from the tick loop only, switch
everything off on any error and let the error out, stop with a group command first, name lost modules.
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

import can
import pytest

from drivers.power_modules import infypower as infy
from drivers.readings import Reading
from edge.build import Backends, build
from edge.config import parse_config
from hal.clock import SimClock
from hal.pin import SimBoard
from tests.conftest import _drop_tables, sim_config_text

FAST = "[limits]\nraise_hold_ms = 0\nramp_up_a_per_s = 1000.0\n[limits.plausibility]\nmax_rate_c_per_s = 500.0\n"
SAFE_INPUTS = {"pin_dc_plus_c": 40.0, "pin_dc_minus_c": 40.0, "coolant_out_c": 30.0, "coolant_flow_lpm": 5.0}


class Rig:
    """The cabinet as build() wires it, on a simulated clock, with the module port's sends captured (what
    would go to the transmit thread) and no meter line (the grid rule is off without a grid meter)."""

    def __init__(self, tmp_path: Path, extra: str = FAST) -> None:
        self.config = parse_config(_drop_tables(sim_config_text(tmp_path, extra), {"[[serial]]", "[[meters]]"}))
        self.clock = SimClock(100.0)
        self.frames: list[can.Message] = []
        self.fail_send = False
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.cabinet = build(self.config, Backends(clock=self.clock, board=SimBoard(), api=False))
        self.cabinet.can.module_port.send = self._send  # type: ignore[method-assign]
        self.bank = self.cabinet.bank
        self.outputs = self.cabinet.outputs
        self.wdt = self.cabinet.wdt
        self.state = self.cabinet.state
        self.ctl = self.cabinet.controller
        emit = self.ctl.on_event

        def record(kind: str, name: str, data: dict[str, Any]) -> None:
            self.events.append((kind, name, data))
            emit(kind, name, data)

        self.ctl.on_event = record
        # the store's writer and the port's transmit threads end with the rig
        weakref.finalize(self, self.cabinet.close)

    def _send(self, msg: can.Message, *, priority: bool = False) -> bool:
        if self.fail_send:
            raise OSError("injected: CAN transmit failed")
        self.frames.append(msg)
        return True

    def feed(self, silent_modules: tuple[int, ...] = (), **temps: float) -> None:
        """Fresh cable readings and an answer from every module not in ``silent_modules``."""
        now = self.clock.monotonic()
        values = dict(SAFE_INPUTS, **temps)
        self.state.update([Reading(f"cable.{k}", v, "", now) for k, v in values.items()])
        for addr in self.bank.modules:
            if addr not in silent_modules:
                self.bank.handle(
                    infy.make_id(infy.CMD_READ_OUTPUT, infy.CONTROLLER, source=addr),
                    infy.encode_output(400.0, 0.0),
                    now,
                )

    def step(self, seconds: float = 0.1, **kw: Any) -> dict[str, Any]:
        self.clock.advance(seconds)
        self.feed(**kw)
        return self.ctl.evaluate_now()

    def charge(self) -> None:
        for _ in range(5):
            d = self.step()
        assert d["enable"] and d["limit_a"] > 0, d["reason"]


def _group_off(frame: can.Message) -> bool:
    fid = infy.parse_id(frame.arbitration_id)
    return fid.device == infy.DEVICE_GROUP and fid.command == infy.CMD_ON_OFF and frame.data[0] == 0x01


def test_watchdog_is_fed_by_the_tick_loop_and_never_by_frame_evaluations(tmp_path):
    rig = Rig(tmp_path)
    for _ in range(20):
        rig.step()
    assert rig.ctl.evaluations == 20 and rig.wdt.feeds == 0

    async def main() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(rig.ctl.run(stopping))
        while rig.ctl.ticks < 3:
            await asyncio.sleep(0.01)
        stopping.set()
        await task

    asyncio.run(main())
    assert rig.wdt.feeds == rig.ctl.ticks >= 3


def test_any_error_in_the_loop_switches_modules_off_opens_the_contactor_and_propagates(tmp_path, monkeypatch):
    rig = Rig(tmp_path)
    rig.charge()
    assert rig.outputs.contactor.value() == 1

    def broken(now: float, **extra: Any) -> dict[str, Any]:
        raise RuntimeError("injected: snapshot failed")

    monkeypatch.setattr(rig.state, "cabinet_snapshot", broken)
    rig.frames.clear()

    async def main() -> None:
        await rig.ctl.run(asyncio.Event())

    with pytest.raises(RuntimeError, match="injected"):
        asyncio.run(main())
    assert rig.outputs.contactor.value() == 0 and rig.outputs.fan.value() == 0
    assert any(_group_off(f) for f in rig.frames), "no group off command was sent"
    assert all(not m.output_on and m.set_current_a == 0 for m in rig.bank.modules.values())


def test_fail_safe_still_opens_the_contactor_when_the_can_bus_fails(tmp_path):
    rig = Rig(tmp_path)
    rig.charge()
    rig.fail_send = True
    rig.ctl.fail_safe()
    assert rig.outputs.contactor.value() == 0


def test_a_trip_sends_the_group_off_command_before_any_per_module_command(tmp_path):
    rig = Rig(tmp_path)
    rig.charge()
    rig.step(pin_dc_plus_c=80.0, pin_dc_minus_c=78.0)  # derated first: modules on at 25 A each
    rig.frames.clear()
    d = rig.step(pin_dc_plus_c=96.0, pin_dc_minus_c=90.0)
    assert d["rule"] == "trip" and d["faults"] == ["pin_over_temperature"]
    assert rig.frames and infy.parse_id(rig.frames[0].arbitration_id).device == infy.DEVICE_GROUP
    assert any(_group_off(f) for f in rig.frames[:2])
    assert rig.outputs.contactor.value() == 0
    assert ("fault_raised", "pin_over_temperature") in [(k, n) for k, n, _ in rig.events]
    raised = next(d for k, n, d in rig.events if n == "pin_over_temperature")
    assert raised["docs"] == "docs/SAFETY.md#pin_over_temperature"


def test_a_derating_commands_each_module_its_share_at_once(tmp_path):
    rig = Rig(tmp_path)
    rig.charge()
    rig.frames.clear()
    d = rig.step(pin_dc_plus_c=80.0, pin_dc_minus_c=78.0)  # 200 A * (90-80)/(90-70) = 100 A
    assert d["limit_a"] == pytest.approx(100.0)
    shares = {
        infy.parse_id(f.arbitration_id).destination: infy.decode_set_output(f.data)[1]
        for f in rig.frames
        if infy.parse_id(f.arbitration_id).command == infy.CMD_SET_OUTPUT
    }
    assert shares == {a: pytest.approx(25.0) for a in rig.config.power_modules.addresses}


def test_a_silent_module_is_lost_by_address_and_its_share_goes_to_the_others(tmp_path):
    rig = Rig(tmp_path)
    rig.charge()
    lost_after_s = rig.config.power_modules.lost_after_ms / 1000.0
    d: dict[str, Any] = {}
    for _ in range(int(lost_after_s / 0.1) + 2):
        d = rig.step(silent_modules=(2,))
    assert "module_lost_2" in d["faults"]
    assert d["fault_docs"]["module_lost_2"] == "docs/SAFETY.md#module_lost"
    assert d["limit_a"] == pytest.approx(150.0) and d["reason"].startswith("power modules: 3 of 4")
    # Until the lost module's own comms watchdog (10 s) must have switched it off, it may still deliver
    # its old share: the bank keeps that share free (docs/CAN.md), so the others get 150 A / 4 ...
    assert rig.bank.modules[1].set_current_a == pytest.approx(150.0 / 4)
    timeout_s = rig.bank.codec.module_comms_timeout_s
    for _ in range(int((timeout_s - lost_after_s) / 0.1) + 2):
        d = rig.step(silent_modules=(2,))
    # ... and after it, the whole 150 A across the three that answer
    assert rig.bank.modules[1].set_current_a == pytest.approx(50.0)
    d = rig.step()  # it answers again: restored, fault gone
    assert "module_lost_2" not in d["faults"]


def test_modules_not_yet_heard_at_start_are_waited_for_not_reported_lost(tmp_path):
    """Every start raised module_lost (and all_modules_lost) for the modules whose first answer came after the
    first evaluation, then cleared it a poll later: a fault and an EVerest error for nothing. Until lost_after_ms
    of silence from the start a module never heard is awaited: 0 A from it, no fault."""
    rig = Rig(tmp_path)
    everyone = tuple(rig.bank.modules)
    lost_after_s = rig.config.power_modules.lost_after_ms / 1000.0
    seen: set[str] = set()
    for _ in range(int(lost_after_s / 0.1) - 2):
        d = rig.step(silent_modules=everyone)
        seen |= {f for f in d["faults"] if "module" in f}
        assert d["limit_a"] == 0.0 and not d["enable"]
    assert not seen, seen
    d = rig.step(silent_modules=(2,))  # the others answer; module 2 stays silent ...
    assert not [f for f in d["faults"] if "module" in f]
    for _ in range(5):
        d = rig.step(silent_modules=(2,))
    assert "module_lost_2" in d["faults"]  # ... and is lost once lost_after_ms from the start has passed


def test_recent_tick_periods_keep_the_last_n_in_order_in_fixed_memory():
    from edge.control import RecentPeriods

    r = RecentPeriods(size=10)
    assert list(r) == [] and len(r) == 0
    for i in range(3):
        r.append(float(i))
    assert list(r) == [0.0, 1.0, 2.0]
    size_before = r._buf.buffer_info()[1]
    for i in range(3, 25):
        r.append(float(i))
    assert list(r) == [float(i) for i in range(15, 25)] and len(r) == 10
    assert r._buf.buffer_info()[1] == size_before  # never grows
    r.clear()
    assert list(r) == [] and len(r) == 0
