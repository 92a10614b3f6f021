"""The whole simulated cabinet in simulated time (edge/sim/stepper.py): no thread, no sleep.

The real cabinet from build() (CAN decode, module bank, safety core, controller, meter poller, store) runs
on a SimClock against the simulator's physics and devices on a python-can virtual bus. Each test covers
seconds to minutes of simulated time in a few seconds of wall time, and asserts the simulated time at
which something happened against the times in the config: exact to one step, not "eventually".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.can_link import CAN_WATCH_PERIOD_S
from edge.config import Config, parse_config
from edge.sim.stepper import SimStepper
from tests.conftest import sim_config_text

# a site fuse that is never the limit: these tests are about the cabinet's own rules
SITE = """
[limits.grid]
fuse_a = 400.0
"""


def config(
    tmp_path: Path, extra: str = "", control_tick_ms: int | None = None, replace: dict[str, str] | None = None
) -> Config:
    text = sim_config_text(tmp_path, extra)
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    if control_tick_ms is not None:
        text += f"\n[control]\ntick_ms = {control_tick_ms}\n"
    return parse_config(text)


@pytest.fixture
def stepper(tmp_path: Path) -> Iterator[type[SimStepper]]:
    made: list[SimStepper] = []

    class Made(SimStepper):
        def __init__(self, cfg: Config, step_s: float) -> None:
            super().__init__(cfg, tmp_path / "data", step_s=step_s)
            made.append(self)

    yield Made
    for s in made:
        s.close()


def first_event(sim: SimStepper, kind: str, name: str, after_s: float = 0.0) -> float:
    """Simulated time of the first ``kind`` ``name`` event at or after ``after_s``."""
    times = [e.t_s for e in sim.events(kind, name) if e.t_s >= after_s]
    assert times, f"no {kind} {name}; events: {[(e.t_s, e.kind, e.name) for e in sim.events()]}"
    return times[0]


def charging(sim: SimStepper, amps: float) -> float:
    return sim.run_until(
        lambda: sim.decision().get("limit_a", 0.0) >= amps and sim.physics.output_a >= amps * 0.99,
        timeout_s=60.0,
        what=f"charging at {amps} A",
    )


def test_ten_simulated_minutes_of_charging_ramp_as_configured_in_seconds_of_wall_time(tmp_path, stepper):
    # one step per control tick (the default 100 ms): the limit is evaluated at least once a step
    cfg = config(tmp_path, SITE + "[limits]\nraise_hold_ms = 3000\nramp_up_a_per_s = 40.0\n")
    step_s = cfg.control.tick_ms / 1000.0
    sim = stepper(cfg, step_s=step_s)
    hold_s = cfg.limits.raise_hold_ms / 1000.0
    ramp = cfg.limits.ramp_up_a_per_s
    full_a = min(cfg.limits.max_output_current_a, cfg.control.requested_current_a)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    trace: list[tuple[float, float]] = []
    while sim.now < 600.0:
        trace.append((sim.step(), sim.decision()["limit_a"]))
    wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0

    # CPU time: what the stepping costs, whatever else the machine runs (about 5 s on one idle core)
    assert cpu_s < 10.0, f"10 simulated minutes took {cpu_s:.1f} s of CPU time ({wall_s:.1f} s of wall time)"
    # start-up counts as a reduction: nothing before the hold is over, then ramp_up_a_per_s up to full.
    # The first rise counts from the evaluation before the hold ended (edge/limits/core.py _ramp), so
    # the limit runs up to one evaluation gap (here: one step) ahead of ramp x (t - hold).
    eps = 1e-6
    first_rise = next(t for t, a in trace if a > 0)
    assert hold_s - eps <= first_rise <= hold_s + step_s + eps
    t_full = next(t for t, a in trace if a >= full_a)
    assert hold_s + full_a / ramp - step_s - eps <= t_full <= hold_s + full_a / ramp + eps
    for t, amps in trace:
        low = min(full_a, max(0.0, ramp * (t - hold_s)))
        high = min(full_a, max(0.0, ramp * (t - hold_s + step_s))) if t >= hold_s - eps else 0.0
        assert low - eps <= amps <= high + eps, (t, amps)
    # and it kept charging for the rest of the ten minutes with the vehicle's demand, without a fault
    assert sim.decision()["faults"] == []
    assert sim.physics.output_a == pytest.approx(sim.physics.vehicle_demand_a)
    assert [e.name for e in sim.events("fault_raised") if e.t_s > t_full] == []
    assert sim.now == pytest.approx(600.0)


def test_a_pin_heating_up_derates_the_current_from_the_configured_temperatures(tmp_path, stepper):
    extra = SITE + "[limits]\nraise_hold_ms = 300\nramp_up_a_per_s = 400.0\n"
    extra += "[limits.pin_temperature]\nderate_start_c = 40.0\nderate_end_c = 60.0\ntrip_c = 90.0\n"
    cfg = config(tmp_path, extra, control_tick_ms=10)
    sim = stepper(cfg, step_s=0.01)
    rule = cfg.limits.pin_temperature
    full_a = cfg.limits.max_output_current_a
    sim.set_vehicle_demand(full_a)  # 200 A at full flow settles the pins near 55 °C (edge/sim/physics.py)
    pin = sim.cabinet.state.readings
    charging(sim, full_a)
    assert pin["cable.pin_dc_plus_c"].value < rule.derate_start_c

    def hottest() -> float:
        return max(pin["cable.pin_dc_plus_c"].value, pin["cable.pin_dc_minus_c"].value)

    crossed = sim.run_until(lambda: hottest() > rule.derate_start_c, timeout_s=120.0, what="pins above derate start")
    # the frame that crossed the derating start was evaluated at once: the pin rule limits in that step
    assert sim.decision()["rule"] == "pin_dc_plus_c"
    assert first_event(sim, "limit_rule", "pin_dc_plus_c") == pytest.approx(crossed, abs=0.01)
    # from then on the target follows the configured line from derate_start_c (full) to derate_end_c (0 A)
    for _ in range(3000):  # 30 s
        sim.step()
        t = hottest()
        want = full_a * (rule.derate_end_c - t) / (rule.derate_end_c - rule.derate_start_c)
        assert sim.decision()["target_a"] == pytest.approx(min(full_a, max(0.0, want)), abs=0.01)
    # settled between the two temperatures at a lower current, never tripped
    assert rule.derate_start_c < hottest() < rule.derate_end_c
    assert 0 < sim.physics.output_a < full_a - 20
    assert "pin_over_temperature" not in sim.decision()["faults"]


@pytest.mark.parametrize(
    ("cable_stale_ms", "core_stale_ms", "watch_s"),
    [
        (530, 2000, CAN_WATCH_PERIOD_S),  # the monitor's stale_after_ms first (seen by the CAN watch)
        (2000, 530, 0.0),  # the core's sensor_stale_ms first (seen by the next evaluation)
    ],
)
def test_a_silent_cable_monitor_gives_the_stale_fault_after_the_configured_time(
    tmp_path, stepper, cable_stale_ms, core_stale_ms, watch_s
):
    extra = SITE + f"[limits]\nraise_hold_ms = 300\nramp_up_a_per_s = 400.0\nsensor_stale_ms = {core_stale_ms}\n"
    cable = '[[cable]]\nname = "cable"\n'
    cfg = config(tmp_path, extra, control_tick_ms=10, replace={cable: f"{cable}stale_after_ms = {cable_stale_ms}\n"})
    sim = stepper(cfg, step_s=0.01)
    charging(sim, 150.0)
    sim.set_cable_silent(True)
    t_silent = sim.now
    t_fault = sim.run_until(lambda: "pin_dc_plus_stale" in sim.decision()["faults"], timeout_s=5.0)
    last_frame = sim.cabinet.state.readings["cable.pin_dc_plus_c"].t
    assert t_silent - 0.1 <= last_frame <= t_silent  # the monitor sends every 100 ms
    stale_s = min(cable_stale_ms, core_stale_ms) / 1000.0
    assert last_frame + stale_s < t_fault <= last_frame + stale_s + watch_s + 0.01
    assert first_event(sim, "fault_raised", "pin_dc_plus_stale", t_silent) == pytest.approx(t_fault, abs=1e-3)
    assert sim.decision()["limit_a"] == 0.0 and not sim.decision()["contactor"]


def test_a_silent_module_is_lost_after_lost_after_ms(tmp_path, stepper):
    extra = SITE + "[limits]\nraise_hold_ms = 300\nramp_up_a_per_s = 400.0\n"
    modules = "max_current_a = 50.0\n"
    cfg = config(tmp_path, extra, control_tick_ms=10, replace={modules: modules + "lost_after_ms = 1700\n"})
    assert cfg.power_modules.lost_after_ms == 1700
    sim = stepper(cfg, step_s=0.01)
    charging(sim, 180.0)
    sim.set_module_silent(2, True)
    t_silent = sim.now
    t_lost = sim.run_until(lambda: sim.cabinet.bank.modules[2].lost, timeout_s=10.0)
    last_answer = sim.cabinet.bank.modules[2].last_seen
    assert last_answer is not None and last_answer <= sim.now
    assert last_answer + 1.7 < t_lost <= last_answer + 1.7 + 0.01
    assert first_event(sim, "module_lost", "module_2", t_silent) == pytest.approx(t_lost, abs=1e-3)
    assert first_event(sim, "fault_raised", "module_lost_2", t_silent) == pytest.approx(t_lost, abs=1e-3)
    # the others carry on without it: three modules' worth at most
    sim.run(2.0)
    assert "module_lost_2" in sim.decision()["faults"]
    assert sim.physics.output_a <= 3 * cfg.power_modules.max_current_a + 1e-6
    assert sim.physics.modules[2].out_a == 0.0


def test_a_stopped_pump_trips_after_trip_delay_ms_below_the_trip_flow(tmp_path, stepper):
    extra = SITE + "[limits]\nraise_hold_ms = 300\nramp_up_a_per_s = 400.0\n"
    extra += "[limits.coolant_flow]\ntrip_delay_ms = 1500\n"
    cfg = config(tmp_path, extra, control_tick_ms=10)
    sim = stepper(cfg, step_s=0.01)
    rule = cfg.limits.coolant_flow
    charging(sim, 150.0)
    sim.set_pump_failed(True)
    flow = sim.cabinet.state.readings

    t_below = sim.run_until(lambda: flow["cable.coolant_flow_lpm"].value < rule.trip_lpm, timeout_s=10.0)
    t_below = flow["cable.coolant_flow_lpm"].t  # the frame that said so
    assert sim.decision()["limit_a"] == 0.0  # derated to 0 A already (below derate_end_lpm)
    assert "coolant_flow_low" not in sim.decision()["latched"]
    t_trip = sim.run_until(lambda: "coolant_flow_low" in sim.decision()["latched"], timeout_s=10.0)
    delay_s = rule.trip_delay_ms / 1000.0
    assert t_below + delay_s <= t_trip + 1e-9
    assert t_trip <= t_below + delay_s + 0.01
    assert first_event(sim, "fault_raised", "coolant_flow_low") == pytest.approx(t_trip, abs=1e-3)
    assert sim.decision()["rule"] == "trip" and not sim.decision()["contactor"]
    sim.step()  # the modules' off frames went out in that evaluation; the physics follows in the next step
    assert sim.physics.output_a == 0.0


def test_a_silent_grid_meter_falls_back_after_meter_loss_ms(tmp_path, stepper):
    cfg = config(tmp_path, "[limits.grid]\nfuse_a = 400.0\nmeter_loss_ms = 2500\n", control_tick_ms=10)
    sim = stepper(cfg, step_s=0.01)
    sim.run(3.0)
    grid = sim.cabinet.state.readings["grid.Current.Import.L1"]
    assert grid.quality == "ok" and grid.value == pytest.approx(sim.physics.grid_a[0], abs=1.0)
    assert sim.cabinet.meters.status["grid"]["ok"]
    sim.set_meter_silent("grid", True)
    t_lost = sim.run_until(lambda: "grid_meter_lost" in sim.decision()["faults"], timeout_s=10.0)
    last_good = sim.cabinet.state.readings["grid.Current.Import.L1"].t
    assert last_good + 2.5 <= t_lost + 1e-9
    assert t_lost <= last_good + 2.5 + 0.01
    # the configured fallback per phase, as DC A at the configured output voltage (docs/SAFETY.md)
    g = cfg.limits.grid
    fallback_a = g.fallback_ac_a * 3 * g.phase_voltage_v * g.efficiency / cfg.control.output_voltage_v
    assert sim.decision()["rule"] == "grid_fallback"
    assert sim.decision()["target_a"] == pytest.approx(fallback_a)


def test_a_part_scheduled_with_every_runs_the_built_in_sessions_in_simulated_time(tmp_path):
    from edge.charging.demand import Capabilities
    from edge.sim.layout import SimConnectorSpec

    cfg = config(tmp_path, SITE, control_tick_ms=10)
    layout = [SimConnectorSpec("1", ("cable",), cfg.outputs.contactor, (1, 2, 3, 4), request="sim")]
    made = SimStepper(cfg, tmp_path / "data2", step_s=0.01, layout=layout)
    try:
        caps = {"1": Capabilities(1000.0, 150.0, 200.0, 0.0, 150_000.0)}
        seen: list[tuple[float, str, tuple]] = []

        class Sink:
            def set_mode(self, connector: str, mode: str, phase: str, now: float) -> None:
                seen.append((now, "set_mode", (mode, phase)))

            def set_target(self, connector, voltage_v, current_a, now, power_w=None) -> None:
                seen.append((now, "set_target", (voltage_v, current_a)))

            def heartbeat(self, source: str, now: float) -> None:
                seen.append((now, "heartbeat", (source,)))

        made.every("sim sessions", 0.01, lambda now: made.drive_charging(Sink(), now, caps))
        t0 = made.now
        made.run(1.02)
        beats = [t for t, kind, _ in seen if kind == "heartbeat"]
        assert beats == pytest.approx([t0 + 0.01, t0 + 1.01])  # the first step after scheduling, then 1 s on
        assert seen[1:3] == [(t0 + 0.01, "set_target", (470.0, 2.0)), (t0 + 0.01, "set_mode", ("Export", "CableCheck"))]
        targets = [t for t, kind, _ in seen if kind == "set_target"]
        assert targets == pytest.approx([t0 + 0.01 + 0.25 * i for i in range(5)])
    finally:
        made.close()
