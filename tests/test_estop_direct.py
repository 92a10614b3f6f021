"""The e-stop's direct path (edge/build.py, Controller.estop_off): the input's edge switches the modules off and
opens every contactor in the thread that sees it, before any evaluation; the evaluation then latches and
reports, and one already under way when the edge came cannot switch anything back on. The default
two-connector sim cabinet (edge/sim/sim.toml) in simulated time, both vehicles charging."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import edge.control
from edge.config import parse_config
from edge.sim.stepper import SimStepper
from tests.conftest import REPO

SIM_TOML = REPO / "edge" / "sim" / "sim.toml"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimStepper]:
    made = SimStepper(parse_config(SIM_TOML.read_text()), tmp_path / "data", step_s=0.01)
    cab = made.cabinet

    def sessions(now: float) -> None:
        caps = {n: r.capabilities for n, r in cab.controller.reports().items()}
        made.drive_charging(cab.controller.demands, now, caps)

    made.every("sim sessions", 0.05, sessions)
    made.run_until(
        lambda: all(c.output_a > 20.0 for c in made.physics.connectors.values()), timeout_s=60.0, what="both charging"
    )
    yield made
    made.close()


def _modules_on(sim: SimStepper) -> list[int]:
    return [a for a, m in sim.physics.modules.items() if m.on]


def _contactors_closed(sim: SimStepper) -> list[str]:
    return [spec.name for spec in sim.layout if sim.board.level(spec.contactor_pin)]


def test_estop_edge_opens_the_contactors_and_sends_the_off_frames_without_an_evaluation(sim):
    controller = sim.cabinet.controller
    digital = controller.digital
    assert digital is not None
    assert _modules_on(sim) and len(_contactors_closed(sim)) == 2
    evaluations = controller.evaluations
    queued: list[str] = []
    digital.on_change = lambda: queued.append("evaluate")  # the evaluation is held back: the direct path alone

    sim.set_estop(True)
    assert _contactors_closed(sim) == []  # at once, in the pressing thread
    sim.deliver()  # the priority off frames reach the simulated modules
    assert _modules_on(sim) == []
    assert controller.evaluations == evaluations and queued == ["evaluate"]
    assert sim.decision()["connectors"]["1"]["enable"]  # no evaluation has seen the e-stop yet

    d = controller.evaluate_now()  # the evaluation the edge queued: latches and reports as before
    assert d["estop"] and "emergency_stop" in d["latched"]
    assert not any(c["enable"] or c["contactor"] for c in d["connectors"].values())
    sim.set_estop(True)  # idempotent: a second edge report of the same press changes nothing
    sim.deliver()
    assert _modules_on(sim) == [] and _contactors_closed(sim) == []


def test_an_evaluation_under_way_when_the_edge_comes_cannot_close_the_contactors_again(sim, monkeypatch):
    controller = sim.cabinet.controller
    real = edge.control.evaluate_cabinet

    def edge_during_evaluation(snap: dict[str, Any], cfg: dict[str, Any], state: Any) -> Any:
        decision = real(snap, cfg, state)  # snapshot taken before the press: still charging
        controller.estop_off()  # the edge's direct path from another thread, mid-evaluation
        return decision

    monkeypatch.setattr(edge.control, "evaluate_cabinet", edge_during_evaluation)
    d = controller.evaluate_now()
    assert all(c["enable"] and c["contactor"] for c in d["connectors"].values())  # a stale "go on charging"
    sim.deliver()
    assert _contactors_closed(sim) == [] and _modules_on(sim) == []  # ...that was not applied


def test_a_door_edge_takes_no_direct_path(sim):
    digital = sim.cabinet.controller.digital
    assert digital is not None
    digital.on_change = None
    sim.set_door_open(True)
    sim.deliver()
    assert len(_contactors_closed(sim)) == 2 and _modules_on(sim)


def test_a_press_released_before_its_evaluation_still_latches(sim):
    controller = sim.cabinet.controller
    digital = controller.digital
    assert digital is not None
    digital.on_change = None  # the loop is late: press and release both come before the evaluation
    sim.set_estop(True)
    sim.set_estop(False)
    d = controller.evaluate_now()
    assert "emergency_stop" in d["latched"] and not any(c["contactor"] for c in d["connectors"].values())
    sim.run(0.5)
    assert _contactors_closed(sim) == [] and "emergency_stop" in sim.decision()["latched"]
