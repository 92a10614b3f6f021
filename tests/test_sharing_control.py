"""Issue 16 item 5: the controller hook. With ``[sharing]`` each connector is fed by the modules the
allocation gives it (not its static list): car on connector 1 alone, asking for more than its home group
gives, gets connector 2's group moved over by the switching sequence (modules of the moving group at 0 A and
off before its relay opens, the relay matrix never connecting a group to two connectors), an
``allocation_changed`` event says so, and connector 1's published power is its share. Without ``[sharing]``
nothing changes (the rest of tests/test_control.py)."""

from __future__ import annotations

import itertools
import re
import weakref
from pathlib import Path
from typing import Any

from drivers.power_modules import infypower as infy
from drivers.readings import Reading
from edge.build import Backends, build
from edge.config import parse_config
from hal.clock import SimClock
from hal.pin import SimBoard
from tests.conftest import REPO, _drop_tables
from tests.test_control import FAST, SAFE_INPUTS, Rig

SIM2 = (REPO / "edge" / "sim" / "sim.toml").read_text()
SHARING = """
[sharing]
policy = "even"
hold_s = 1.0
module_max_power_kw = 30.0

[[module_group]]
name = "A"
modules = [1, 2]

[[module_group]]
name = "B"
modules = [3, 4]
""" + "".join(
    f'\n[[relay]]\ngroup = "{g}"\nconnector = "{c}"\npin = "relay-{g}{c}"\nfeedback = "relay-{g}{c}-mirror"\n'
    for g in "AB"
    for c in "12"
)


class ShareRig(Rig):
    def __init__(self, tmp_path: Path, extra: str = "") -> None:  # Rig's, on the sim config with a relay matrix
        ours = FAST + "\n[telemetry.mqtt]\nenabled = false\n"
        redefined = {ln.strip() for ln in ours.splitlines() if ln.strip().startswith("[") and "[[" not in ln}
        dropped = {"[[serial]]", "[[meters]]", "[[isolation_monitor]]", "[[input]]"}
        text = _drop_tables(SIM2, redefined | dropped) + ours + SHARING + extra
        text = text.replace('socket = ".edge-sim/edge.sock"', f'socket = "{tmp_path}/edge.sock"')
        text = text.replace('data_dir = ".edge-sim"', f'data_dir = "{tmp_path}/data"')
        text = re.sub(r'backend = "systemd"[^\n]*', 'backend = "sim"', text)
        # no mirror contacts: this rig drives no contactor physics (the SimStepper tests sharing with them)
        text = re.sub(r"contactor_feedback = [^\n]*\n", "", text)
        text = text.replace("max_power_kw = 60.0", "max_power_kw = 120.0", 1)
        text = text.replace("max_current_a = 100.0        # its two", "max_current_a = 200.0        # its two", 1)
        self.config = parse_config(text)
        self.clock = SimClock(100.0)
        self.frames: list[Any] = []
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
        weakref.finalize(self, self.cabinet.close)

    def feed(self, silent_modules: tuple[int, ...] = (), **temps: float) -> None:
        """Rig's, with both cables' readings (gun1, gun2)."""
        now = self.clock.monotonic()
        self.state.update(
            [
                Reading(f"{gun}.{k}", v, "", now)
                for gun in ("gun1", "gun2")
                for k, v in dict(SAFE_INPUTS, **temps).items()
            ]
            + [Reading(f"{gun}.leak", 0.0, "", now) for gun in ("gun1", "gun2")]
        )
        for addr in self.bank.modules:
            if addr not in silent_modules:
                self.bank.handle(
                    infy.make_id(infy.CMD_READ_OUTPUT, infy.CONTROLLER, source=addr),
                    infy.encode_output(400.0, 0.0),
                    now,
                )


def test_a_car_alone_gets_the_other_connectors_group_through_the_sequence(tmp_path: Path) -> None:
    rig = ShareRig(tmp_path)
    sharing = rig.ctl.sharing
    assert sharing is not None
    # the relays start open (coils off): each group goes home through its pin and mirror contact first
    assert rig.ctl.modules_of(rig.ctl.connectors[0]) == [] and rig.ctl.modules_of(rig.ctl.connectors[1]) == []
    for _ in range(4):  # close (the coil), the contact follows, the debounced mirror confirms
        rig.step()
    assert rig.ctl.modules_of(rig.ctl.connectors[0]) == [1, 2]
    assert rig.ctl.modules_of(rig.ctl.connectors[1]) == [3, 4]
    board = rig.outputs.board
    assert board is not None
    assert [board.level(f"relay-{g}{c}") for g in "AB" for c in "12"] == [1, 0, 0, 1]
    now = rig.clock.monotonic()
    rig.ctl.demands.set_mode("1", "Export", "Charging", now)
    rig.ctl.demands.set_target("1", 400.0, 200.0, now)  # 80 kW: more than group A's 60 kW
    seen = []
    for _ in range(30):
        rig.step()
        for g in "AB":
            assert len(sharing.relays.sim.connected(g)) <= 1  # type: ignore[attr-defined]
        seen.append(list(rig.ctl.modules_of(rig.ctl.connectors[0])))
    assert rig.ctl.modules_of(rig.ctl.connectors[0]) == [1, 2, 3, 4]
    assert rig.ctl.modules_of(rig.ctl.connectors[1]) == []
    assert [1, 2] in seen  # B was nobody's while it moved
    assert rig.decision_modules("1") == 4
    changed = [d for k, _, d in rig.events if k == "allocation_changed"]
    assert changed[-1]["after"] == {"1": ["A", "B"], "2": []} and "even: 2 group(s)" in changed[-1]["reason"]
    # told what both groups give (not its own 80 kW request: a vehicle never asks more than it is told)
    assert rig.ctl.reports()["1"].capabilities.max_export_power_w == 120000.0
    # connector 2 has no group now: held at 0 A by the module rule, and that is not a fault
    d = rig.ctl.decision
    assert d is not None and not [f for f in d["faults"] if "module" in f]
    assert d["connectors"]["2"]["limit_a"] == 0.0
    for a in (3, 4):  # switched off on the way (then on again with connector 1)
        assert rig.bank.modules[a].set_current_a >= 0.0


def _decision_modules(self: Rig, name: str) -> int:
    snap = self.ctl._connector_snapshot(
        next(c for c in self.ctl.connectors if c.name == name), self.clock.monotonic(), None, False
    )
    return int(snap["modules_configured"])


Rig.decision_modules = _decision_modules  # type: ignore[attr-defined]


def test_status_and_mqtt_state_show_each_group_and_the_shares(tmp_path: Path) -> None:
    from edge.render import status_text

    rig = ShareRig(tmp_path)
    rig.step()
    assert rig.cabinet.view().as_dict()["sharing"]["groups"]["A"]["state"] == "moving - -> 1: close"  # going home
    for _ in range(3):
        rig.step()
    view = rig.cabinet.view()
    st = view.as_dict()
    assert st["sharing"]["policy"] == "even"
    assert st["sharing"]["groups"]["A"] == {"connector": "1", "modules": [1, 2], "state": "parked"}
    assert view.mqtt_state()["sharing"]["groups"]["B"]["connector"] == "2"
    assert [c["modules"] for c in st["connectors"]] == [[1, 2], [3, 4]]
    text = status_text(st)
    assert "sharing  even: 1 0 kW, 2 0 kW" in text
    assert "group A -> 1  modules 1,2  parked" in text
    assert "  1: not charging: 1 group(s) parked" in text  # why, per connector
    # telemetry: each connector's groups and the power its vehicle is told (OCPP Power.Offered)
    rig.cabinet.sample_connectors()
    samples = {s["signal"]: s for s in rig.cabinet.sampler.flush()}
    assert samples["connector.1.groups"]["last"] == 1.0 and samples["connector.2.groups"]["last"] == 1.0
    offered = samples["connector.1.power_offered_kw"]
    assert offered["last"] == 60.0 and offered["unit"] == "kW" and offered["measurand"] == "Power.Offered"
    rig.ctl.sharing.relays.sim.stick("B", "2")  # type: ignore[union-attr]
    now = rig.clock.monotonic()
    rig.ctl.demands.set_mode("1", "Export", "Charging", now)
    rig.ctl.demands.set_target("1", 400.0, 200.0, now)
    for _ in range(15):
        rig.step()
    st = rig.cabinet.view().as_dict()
    assert st["sharing"]["groups"]["B"]["state"] == "out of service: relay_stuck"
    assert "group B -> 2  modules 3,4  out of service: relay_stuck" in status_text(st)
    assert [d["fault"] for k, _, d in rig.events if k == "group_out_of_service"] == ["relay_stuck"]


def test_a_relay_found_closed_at_start_keeps_its_group_out_of_service(tmp_path: Path) -> None:
    """At start every coil is off: a relay whose mirror contact reads closed anyway (welded to connector 2)
    is found before its group goes home to connector 1: the group is never closed to a second connector
    (which would parallel the two outputs) and is out of service; the other group goes home."""
    rig = ShareRig(tmp_path)
    sharing = rig.ctl.sharing
    assert sharing is not None
    sim = sharing.relays.sim  # type: ignore[attr-defined]
    sim.relays[("A", "2")].contact = True  # welded closed while de-energised
    sim.stick("A", "2")
    for _ in range(6):
        rig.step()
        assert len(sim.connected("A")) <= 1
    assert sharing.cabinet.out_of_service == {"A": "relay_not_open"}
    board = rig.outputs.board
    assert board is not None and board.level("relay-A1") == 0  # its home relay was never energised
    assert sharing.cabinet.groups_of("2") == ["B"] and rig.ctl.modules_of(rig.ctl.connectors[0]) == []
    assert [d["fault"] for k, _, d in rig.events if k == "group_out_of_service"] == ["relay_not_open"]


def test_a_connector_in_cable_check_without_a_set_point_gets_a_group_and_keeps_it(tmp_path: Path) -> None:
    """Found under load in tests/test_sharing_everest.py: car B's cable-check set-point came while its
    connector had no group (capabilities 0 A: refused), so it asked for nothing. With no group it counted as
    asking for everything (a vehicle asks at most what it is told), with one as asking for 0 kW: the group went
    there and back every few seconds, relays cycling, and car B never got its cable check. Before Charging a
    vehicle's request says nothing of what it will want: it counts as its connector's rating."""
    rig = ShareRig(tmp_path)
    for _ in range(4):
        rig.step()
    now = rig.clock.monotonic()
    rig.ctl.demands.set_mode("1", "Export", "Charging", now)
    rig.ctl.demands.set_target("1", 400.0, 200.0, now)
    for _ in range(20):
        rig.step()
    assert rig.ctl.modules_of(rig.ctl.connectors[0]) == [1, 2, 3, 4]
    rig.ctl.demands.set_mode("2", "Export", "CableCheck", rig.clock.monotonic())  # no set-point yet
    where = []
    for _ in range(150):  # 15 s: many times the hold time (1 s)
        rig.step()
        rig.ctl.demands.set_target("1", 400.0, 200.0, rig.clock.monotonic())
        rig.ctl.demands.set_mode("1", "Export", "Charging", rig.clock.monotonic())  # EVerest's repeats
        rig.ctl.demands.set_mode("2", "Export", "CableCheck", rig.clock.monotonic())
        where.append(tuple(rig.ctl.modules_of(rig.ctl.connectors[1])))
    assert where[-1] == (3, 4), [(round(i * 0.1, 1), w) for i, w in enumerate(where) if i and w != where[i - 1]]
    arrived = where.index((3, 4))
    changes = [(round(i * 0.1, 1), w) for i, w in enumerate(where) if i and w != where[i - 1]]
    assert all(w == (3, 4) for w in where[arrived:]), f"group B left connector 2 again: {changes}"


def _paused_vehicle_moves(rig: ShareRig) -> list[tuple[float, tuple[int, ...]]]:
    """Car A on connector 1 asks 200 A, car B on connector 2 is in Charging asking 0 A for 30 s: when connector
    2's modules changed."""
    for _ in range(4):
        rig.step()
    where = []
    for _ in range(300):
        now = rig.clock.monotonic()
        for name, amps in (("1", 200.0), ("2", 0.0)):
            rig.ctl.demands.set_mode(name, "Export", "Charging", now)
            rig.ctl.demands.set_target(name, 400.0, amps, now)
        rig.step()
        where.append(tuple(rig.ctl.modules_of(rig.ctl.connectors[1])))
    return [(round(i * 0.1, 1), w) for i, w in enumerate(where) if i and w != where[i - 1]]


def test_a_vehicle_paused_at_0_a_moves_its_group_once_per_hold_time_and_min_groups_keeps_it(tmp_path: Path) -> None:
    """Known and documented (docs/CHARGING.md "Power sharing"): a vehicle in Charging asking 0 A gives its group
    away, and with no group it counts as asking for everything (it is told 0 A, so it cannot ask more): the group
    comes back after the hold time. The hold time bounds the relay operations; ``min_groups = 1`` stops them."""
    moves = _paused_vehicle_moves(ShareRig(tmp_path / "a"))
    hold_s = 1.0
    assert len(moves) >= 4, moves  # it does move back and forth ...
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(moves)]
    assert min(gaps) >= hold_s, moves  # ... never sooner than the hold time
    keep = '\n[[sharing.connector]]\nname = "2"\nmin_groups = 1\n'
    assert len(_paused_vehicle_moves(ShareRig(tmp_path / "b", keep))) <= 1
