"""Issue 16 scenarios on the sharing cabinet (edge/charging/sharing.py ``Cabinet``) with the simulated relay
matrix (edge/sim/relays.py) and a simple model of the groups' currents, on a simulated clock: car B arrives
while car A charges alone; car A leaves; a relay stuck; a group lost mid-session. Every step checks that no
group is ever connected to two connectors and that no relay opens under current."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.charging import sharing as sw
from edge.sim.relays import SimRelayMatrix

DT = 0.1
RAMP_A_PER_S = 400.0
VOLTS = 800.0
GROUPS = {"A": [1, 2], "B": [3, 4], "C": [5, 6], "D": [7, 8]}


@dataclass
class Rig:
    cabinet: sw.Cabinet
    relays: SimRelayMatrix
    now_s: float = 0.0
    phase: dict[str, str] = field(default_factory=lambda: {"1": "Other", "2": "Other"})
    request_kw: dict[str, float] = field(default_factory=lambda: {"1": 320.0, "2": 320.0})
    current_a: dict[str, float] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0.0))
    zeroed: set[str] = field(default_factory=set)
    on: set[str] = field(default_factory=set)
    log: list[tuple[float, list[Any]]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def run(self, seconds: float) -> None:
        end = self.now_s + seconds
        while self.now_s < end - 1e-9:
            self.now_s = round(self.now_s + DT, 6)
            self.relays.advance(self.now_s)
            self._physics()
            for g in GROUPS:
                assert len(self.relays.connected(g)) <= 1, f"group {g} parallels {self.relays.connected(g)}"
            connectors = {
                c: {
                    "phase": self.phase[c],
                    "request_kw": self.request_kw[c],
                    "request_v": VOLTS,
                    "max_a": 500.0,
                    "max_kw": 400.0,
                }
                for c in ("1", "2")
            }
            mirror = {g: self.relays.mirror(g) for g in GROUPS}
            lost = tuple(sorted(self.relays.lost))
            commands, events = self.cabinet.tick(self.now_s, connectors, dict(self.current_a), mirror, 1000.0, lost)
            self.events += events
            for cmd in commands:
                self._carry_out(cmd)

    def _carry_out(self, cmd: list[Any]) -> None:
        self.log.append((self.now_s, cmd))
        if cmd[0] == "relay":
            _, g, conn, what = cmd
            if what == "open":
                assert abs(self.current_a[g]) <= 1.0, f"relay {g}->{conn} opened at {self.current_a[g]} A"
            self.relays.command(g, conn, what == "close", self.now_s)
        elif cmd[0] == "group_current":
            self.zeroed.add(cmd[1])
        elif cmd[0] == "modules":
            if cmd[2] == "on":
                self.on.add(cmd[1])
                self.zeroed.discard(cmd[1])
            else:
                self.on.discard(cmd[1])

    def _physics(self) -> None:
        """Each connector draws min(request, its limit) at 800 V, shared by its working groups; every
        current ramps at 400 A/s; a group off, zeroed or lost gives nothing."""
        for conn in ("1", "2"):
            working = [
                g
                for g in self.cabinet.groups_of(conn)
                if g in self.on and g not in self.zeroed and g not in self.relays.lost and self.relays.connected(g)
            ]
            charging = self.phase[conn] == "Charging"
            kw = min(self.request_kw[conn], self.cabinet.limit_kw.get(conn, 0.0)) if charging else 0.0
            share = kw * 1000.0 / VOLTS / len(working) if working else 0.0
            for g in self.cabinet.groups_of(conn):
                want = share if g in working else 0.0
                step = RAMP_A_PER_S * DT
                self.current_a[g] += max(-step, min(step, want - self.current_a[g]))

    def delivered_kw(self, conn: str) -> float:
        return sum(self.current_a[g] for g in self.cabinet.groups_of(conn)) * VOLTS / 1000.0

    def first(self, after_s: float, kind: str, *args: Any) -> float:
        """The time of the first such command after ``after_s``."""
        return next(t for t, c in self.log if t > after_s and c[0] == kind and list(c[1 : 1 + len(args)]) == list(args))


def _rig(policy: str = "even", hold_s: float = 5.0) -> Rig:
    matrix = sw.Matrix(
        groups=GROUPS,
        reach={g: ["1", "2"] for g in GROUPS},
        home={"1": ["A", "B"], "2": ["C", "D"]},
        policy=policy,
        hold_s=hold_s,
        module_a=50.0,
        module_kw=40.0,
    )
    cabinet = sw.Cabinet(matrix)
    relays = SimRelayMatrix([(g, c) for g in GROUPS for c in ("1", "2")])
    relays.close_home(cabinet.at)
    rig = Rig(cabinet, relays)
    rig.on = set(GROUPS)
    return rig


def _car_a_alone(rig: Rig) -> None:
    rig.phase["1"] = "Charging"
    rig.run(8.0)
    assert rig.cabinet.groups_of("1") == ["A", "B", "C", "D"]
    assert abs(rig.delivered_kw("1") - 320.0) < 1.0


def test_car_b_arrives_while_car_a_charges_alone_even_split() -> None:
    rig = _rig("even", hold_s=5.0)
    _car_a_alone(rig)
    rig.run(5.0)  # car A's hold time is over
    arrived = rig.now_s
    rig.phase["2"] = "Charging"
    rig.run(5.0)  # within the hold time
    assert rig.cabinet.groups_of("1") == ["A", "B"] and rig.cabinet.groups_of("2") == ["C", "D"]
    assert abs(rig.delivered_kw("1") - 160.0) < 1.0 and abs(rig.delivered_kw("2") - 160.0) < 1.0
    # car A heard of its lower share, and its groups were at 0 A, before any relay of them opened
    told = rig.first(arrived, "capabilities", "1")
    opened = rig.first(arrived, "relay", "C", "1", "open")
    assert told < opened
    assert rig.first(arrived, "group_current", "C") <= opened
    assert rig.cabinet.limit_kw["1"] == 160.0
    changed = [e for e in rig.events if e["event"] == "allocation_changed"][-1]
    assert changed["before"] == {"1": ["A", "B", "C", "D"], "2": []}
    assert changed["after"] == {"1": ["A", "B"], "2": ["C", "D"]}
    assert "even: 2 group(s), 160 kW" in changed["reason"]


def test_car_a_leaves_and_car_b_gets_everything() -> None:
    rig = _rig("even", hold_s=2.0)
    rig.phase["1"] = rig.phase["2"] = "Charging"
    rig.run(6.0)
    assert rig.cabinet.groups_of("1") == ["A", "B"] and rig.cabinet.groups_of("2") == ["C", "D"]
    rig.phase["1"] = "Other"
    rig.run(6.0)
    assert rig.cabinet.groups_of("2") == ["A", "B", "C", "D"]
    assert abs(rig.delivered_kw("2") - 320.0) < 1.0


def test_relay_stuck_takes_the_group_out_of_service_and_it_never_closes_elsewhere() -> None:
    rig = _rig("even", hold_s=0.0)
    _car_a_alone(rig)
    rig.relays.stick("C", "1")
    rig.phase["2"] = "Charging"
    rig.run(8.0)
    faults = [e for e in rig.events if e["event"] == "group_out_of_service"]
    assert faults == [{"event": "group_out_of_service", "group": "C", "fault": "relay_stuck", "at": "1"}]
    assert rig.relays.connected("C") == ["1"] and "C" not in rig.cabinet.modules_of("1")
    assert ["relay", "C", "2", "close"] not in [c for _, c in rig.log]
    assert rig.cabinet.groups_of("2") == ["D"] and abs(rig.delivered_kw("2") - 80.0) < 1.0
    assert rig.cabinet.modules_of("1") == [1, 2, 3, 4]


def test_group_lost_mid_session_is_dropped_from_the_allocation() -> None:
    rig = _rig("even", hold_s=0.0)
    rig.phase["1"] = rig.phase["2"] = "Charging"
    rig.run(4.0)
    rig.relays.lose_group("D")
    rig.run(4.0)
    changed = [e for e in rig.events if e["event"] == "allocation_changed"][-1]
    assert "D" not in changed["after"]["2"]
    assert rig.current_a["D"] == 0.0
    assert abs(rig.delivered_kw("1") + rig.delivered_kw("2") - 240.0) < 1.0
