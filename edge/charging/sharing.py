"""The switching sequence that moves one module group from one connector to another (issue 16 item 3).

Pure: readings in, commands out, the time as an argument; the controller carries the commands out (and the
simulator's relay matrix answers with its mirror contacts). One :class:`Move` per group on its way; a group is
never switched with current on it and never closed to a connector while any other relay of it is not
confirmed open (so two connectors are never paralleled, whatever the allocator asked):

1. ``capabilities`` of the losing connector (its lower limit, so its vehicle asks for less),
2. ``group_current 0`` and wait until the group carries at most ``off_current_a`` (or ``ramp_timeout_s``),
3. ``modules off`` and wait until the current is below ``off_current_a`` (else fault ``group_not_off``),
4. ``relay open`` to the losing connector; its mirror contact must read open within ``confirm_s``
   (else fault ``relay_stuck``: the group stays where it is, modules off, out of service),
5. check every relay of the group reads open, ``relay close`` to the gaining connector; its mirror must read
   closed within ``confirm_s`` (else fault ``relay_failed_to_close``: opened again, out of service),
6. ``modules on`` and ``capabilities`` of the gaining connector.

A group coming from no connector starts at 5, one going to no connector ends after 4. A fault takes the group
out of service: the caller marks it unavailable, and the allocator recomputes without it.

Commands (lists, so they log and serialise as they are): ``["capabilities", connector]``,
``["group_current", group, 0.0]``, ``["modules", group, "off"|"on"]``, ``["relay", group, connector,
"open"|"close"]``, ``["fault", group, name, detail]``, ``["done", group, connector or None]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge.limits import allocation

Command = list[Any]
SATURATED = 0.95  # a request at this share of what the connector's groups give may want more
BEFORE_CHARGING = ("CableCheck", "PreCharge")  # phases whose request (<= 2 A) says nothing of the demand

# the steps of a move, in order
REPUBLISH_LOSS = "republish_loss"
RAMP_DOWN = "ramp_down"
MODULES_OFF = "modules_off"
OPEN = "open"
CLOSE = "close"
DONE = "done"
FAILED = "failed"

FAULTS = {
    "group_not_off": "the group still carries current with its modules off: check the modules' output stage; "
    "the relay was not opened",
    "relay_stuck": "a relay's mirror contact did not read open after the open command: check the relay and its "
    "mirror contact (group out of service, modules off, left where it was)",
    "relay_failed_to_close": "a relay's mirror contact did not read closed after the close command: check the "
    "relay coil, its supply and its mirror contact (group out of service, relay opened again)",
    "relay_not_open": "another relay of the group does not read open: the group is not closed to a second "
    "connector (that would parallel two outputs)",
}


def fault_name(fault: str, group: str) -> str:
    """The name of a group's fault in the cabinet's fault list, e.g. ``relay_stuck_C``."""
    return f"{fault}_{group}"


def group_of_fault(name: str) -> tuple[str, str] | None:
    """(fault, group) of a name made by :func:`fault_name`; None for any other fault."""
    for fault in FAULTS:
        if name.startswith(fault + "_") and len(name) > len(fault) + 1:
            return fault, name[len(fault) + 1 :]
    return None


@dataclass(frozen=True)
class Timing:
    """The sequence's limits: from ``[sharing]`` and ``[session]``."""

    confirm_s: float = 0.5  # sharing.relay_confirm_ms
    ramp_timeout_s: float = 2.0  # session.off_timeout_ms: modules off after this even if the current is not down
    off_current_a: float = 1.0  # session.off_current_a: a relay opens only below this


@dataclass
class Move:
    """One group on its way from ``source`` to ``target`` (connector names; None = no connector)."""

    group: str
    source: str | None
    target: str | None
    step: str = REPUBLISH_LOSS
    since_s: float = 0.0
    fault: str | None = None
    log: list[Command] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.step in (DONE, FAILED)


def start(group: str, source: str | None, target: str | None, now_s: float) -> tuple[Move, list[Command]]:
    """A new move and its first commands."""
    move = Move(group, source, target, since_s=now_s)
    if source is None:
        return _enter(move, CLOSE, now_s, [])
    return _enter(move, REPUBLISH_LOSS, now_s, [["capabilities", source]])


def step(
    move: Move, current_a: float | None, mirror: dict[str, int | None], now_s: float, timing: Timing
) -> list[Command]:
    """Advance ``move`` with the group's measured output current (None = not known) and the mirror contacts of
    all its relays ``{connector: 1 closed | 0 open | None not read}``; returns the commands to carry out."""
    if move.finished:
        return []
    waited = now_s - move.since_s
    low = current_a is not None and abs(current_a) <= timing.off_current_a
    if move.step == REPUBLISH_LOSS:
        return _enter(move, RAMP_DOWN, now_s, [["group_current", move.group, 0.0]])[1]
    if move.step == RAMP_DOWN:
        if low or waited >= timing.ramp_timeout_s:
            return _enter(move, MODULES_OFF, now_s, [["modules", move.group, "off"]])[1]
        return []
    if move.step == MODULES_OFF:
        return _after_off(move, low, waited, now_s, timing)
    if move.step == OPEN:
        return _after_open(move, mirror, waited, now_s, timing)
    return _after_close(move, mirror, waited, now_s, timing)


def _after_off(move: Move, low: bool, waited: float, now_s: float, timing: Timing) -> list[Command]:
    if low:
        assert move.source is not None
        return _enter(move, OPEN, now_s, [["relay", move.group, move.source, "open"]])[1]
    if waited >= timing.confirm_s:
        return _fail(move, "group_not_off", f"more than {timing.off_current_a:g} A {waited:.1f} s after modules off")
    return []


def _after_open(
    move: Move, mirror: dict[str, int | None], waited: float, now_s: float, timing: Timing
) -> list[Command]:
    assert move.source is not None
    if mirror.get(move.source) == 0:
        if move.target is None:
            return _finish(move, now_s)
        return _enter(move, CLOSE, now_s, [])[1] + _close(move, mirror, now_s)
    if waited >= timing.confirm_s:
        detail = f"relay {move.group}->{move.source}: mirror contact not open {waited * 1000:.0f} ms after open"
        return _fail(move, "relay_stuck", detail)
    return []


def _close(move: Move, mirror: dict[str, int | None], now_s: float) -> list[Command]:
    """The close command, only with every relay of the group confirmed open."""
    assert move.target is not None
    closed = sorted(c for c, state in mirror.items() if state != 0)
    if closed:
        return _fail(move, "relay_not_open", f"group {move.group}: relay(s) to {', '.join(closed)} not confirmed open")
    move.log.append(["relay", move.group, move.target, "close"])
    move.since_s = now_s  # the mirror contact has confirm_s from the command on
    return [["relay", move.group, move.target, "close"]]


def _after_close(
    move: Move, mirror: dict[str, int | None], waited: float, now_s: float, timing: Timing
) -> list[Command]:
    assert move.target is not None
    if not any(c[:2] == ["relay", move.group] and c[3] == "close" for c in move.log):
        return _close(move, mirror, now_s)  # a group from no connector: the first step
    if mirror.get(move.target) == 1:
        done = [["modules", move.group, "on"], ["capabilities", move.target]]
        move.log += done
        return done + _finish(move, now_s)
    if waited >= timing.confirm_s:
        detail = f"relay {move.group}->{move.target}: mirror contact not closed {waited * 1000:.0f} ms after close"
        return [["relay", move.group, move.target, "open"], *_fail(move, "relay_failed_to_close", detail)]
    return []


def _enter(move: Move, step_name: str, now_s: float, commands: list[Command]) -> tuple[Move, list[Command]]:
    move.step = step_name
    move.since_s = now_s
    move.log += commands
    return move, commands


def _finish(move: Move, now_s: float) -> list[Command]:
    move.step = DONE
    move.since_s = now_s
    return [["done", move.group, move.target]]


def _fail(move: Move, name: str, detail: str) -> list[Command]:
    move.step = FAILED
    move.fault = name
    cmd: Command = ["fault", move.group, name, detail]
    move.log.append(cmd)
    return [cmd]


# -- the cabinet: the allocator and the moves together --------------------------------------------------
@dataclass
class Matrix:
    """The relay matrix as the config gives it: groups (name -> modules), each group's reach (connectors it has
    a relay to), home groups per connector, per-connector policy settings, and the module rating."""

    groups: dict[str, list[int]]
    reach: dict[str, list[str]]  # group -> connectors
    home: dict[str, list[str]]  # connector -> groups
    policy: str = "even"
    hold_s: float = 10.0
    module_a: float = 50.0
    module_kw: float = 40.0
    priority: dict[str, int] = field(default_factory=dict)
    min_groups: dict[str, int] = field(default_factory=dict)
    max_groups: dict[str, int] = field(default_factory=dict)


def matrix_from_config(config: Any) -> Matrix | None:
    """The :class:`Matrix` of a loaded config; None without ``[sharing]`` (each connector its static modules)."""
    sharing = config.sharing
    if sharing is None:
        return None
    reach: dict[str, list[str]] = {g.name: [] for g in config.module_group}
    for relay in config.relay:
        reach[relay.group].append(relay.connector)
    group_of = {m: g.name for g in config.module_group for m in g.modules}
    home = {c.name: sorted({group_of[m] for m in c.modules}) for c in config.connector}
    per = {sc.name: sc for sc in sharing.connector}
    names = [c.name for c in config.connector]
    return Matrix(
        groups={g.name: list(g.modules) for g in config.module_group},
        reach=reach,
        home=home,
        policy=sharing.policy,
        hold_s=sharing.hold_s,
        module_a=config.power_modules.max_current_a,
        module_kw=sharing.module_max_power_kw,
        priority={n: per[n].priority if n in per else 0 for n in names},
        min_groups={n: per[n].min_groups if n in per else 0 for n in names},
        max_groups={n: per[n].max_groups if n in per else 64 for n in names},
    )


@dataclass
class Cabinet:
    """Where each group is (its confirmed relay), the moves under way, the groups out of service, when each
    connector's groups last changed and when each connector began to charge. :meth:`tick` is pure apart from
    this state: readings and the time in, commands and events out."""

    matrix: Matrix
    timing: Timing = field(default_factory=Timing)
    at: dict[str, str | None] = field(default_factory=dict)
    moves: dict[str, Move] = field(default_factory=dict)
    out_of_service: dict[str, str] = field(default_factory=dict)
    fault_detail: dict[str, str] = field(default_factory=dict)  # group -> what its failed move measured
    changed_s: dict[str, float] = field(default_factory=dict)
    arrival: dict[str, float] = field(default_factory=dict)
    last_target: dict[str, list[str]] = field(default_factory=dict)
    limit_kw: dict[str, float] = field(default_factory=dict)
    offer_kw: dict[str, float] = field(default_factory=dict)  # the power each connector's vehicle is told
    reasons: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for conn, groups in self.matrix.home.items():
            for g in groups:
                self.at.setdefault(g, conn)
        for g in self.matrix.groups:
            self.at.setdefault(g, None)

    def modules_of(self, connector: str) -> list[int]:
        """The modules feeding ``connector`` now: its groups' (a group on its way is nobody's)."""
        out: list[int] = []
        for g, where in sorted(self.at.items()):
            if where == connector and g not in self.moves and g not in self.out_of_service:
                out += self.matrix.groups[g]
        return out

    def status(self) -> dict[str, Any]:
        """For ``edge status`` and the MQTT state: the policy, each group (where, its modules, what it is doing)
        and each connector's share and why."""
        groups = {}
        for g, modules in sorted(self.matrix.groups.items()):
            move = self.moves.get(g)
            if g in self.out_of_service:
                doing = f"out of service: {self.out_of_service[g]}"
            elif move is not None:
                doing = f"moving {move.source or '-'} -> {move.target or '-'}: {move.step}"
            else:
                where = self.at.get(g)
                doing = "idle" if where is None else ("in use" if where in self.arrival else "parked")
            groups[g] = {"connector": self.at.get(g), "modules": list(modules), "state": doing}
        return {
            "policy": self.matrix.policy,
            "groups": groups,
            "limit_kw": {c: round(kw, 1) for c, kw in sorted(self.limit_kw.items())},
            "reasons": dict(sorted(self.reasons.items())),
        }

    def go_home(self, now_s: float) -> list[Command]:
        """Start moving each group that is nowhere to its home connector (at start, with every relay open): the
        sequence closes its relay only with all the group's mirror contacts confirmed open, and waits for the
        close to confirm, so a relay found closed at start takes its group out of service."""
        commands: list[Command] = []
        for conn, groups in sorted(self.matrix.home.items()):
            for g in groups:
                if self.at.get(g) is None and g not in self.moves and g not in self.out_of_service:
                    self.moves[g], first = start(g, None, conn, now_s)
                    commands += first
        return commands

    def groups_of(self, connector: str) -> list[str]:
        return sorted(g for g, where in self.at.items() if where == connector)

    def faults(self) -> dict[str, str]:
        """The cabinet's fault per group out of service, ``{"relay_stuck_C": detail}``: never latched in the core,
        present while the group is out of service; :meth:`return_to_service` ends it."""
        return {
            fault_name(
                fault, g
            ): f"module group {g} (modules {', '.join(map(str, self.matrix.groups[g]))}) out of service: "
            f"{self.fault_detail.get(g, fault)}"
            for g, fault in sorted(self.out_of_service.items())
        }

    def return_to_service(self, group: str, mirror: dict[str, int | None]) -> tuple[bool, str]:
        """An on-site clear of ``group``'s fault: back in the allocation, as a group on no connector (it is closed
        where it is wanted through the confirmed sequence), only while every relay of it reads open."""
        closed = sorted(c for c, state in mirror.items() if state != 0)
        if closed:
            where = ", ".join(f"{group}->{c}" for c in closed)
            return False, f"relay(s) {where} still read closed (or unread): check the relay and its mirror contact"
        del self.out_of_service[group]
        self.fault_detail.pop(group, None)
        self.at[group] = None
        return True, "cleared"

    def tick(
        self,
        now_s: float,
        connectors: dict[str, dict[str, Any]],
        group_current_a: dict[str, float | None],
        mirror: dict[str, dict[str, int | None]],
        headroom_kw: float,
        lost: tuple[str, ...] = (),
    ) -> tuple[list[Command], list[dict[str, Any]]]:
        """One evaluation. ``connectors``: ``{name: {phase, request_kw, request_v, max_a, max_kw}}``;
        ``group_current_a``: each group's output current; ``mirror``: each group's mirror contacts; ``lost``:
        groups whose modules are lost. Returns (commands for the controller, events)."""
        events: list[dict[str, Any]] = []
        commands = self._step_moves(now_s, group_current_a, mirror, events)
        self._arrivals(now_s, connectors)
        result = allocation.allocate(
            self._connector_inputs(connectors),
            self._group_inputs(group_current_a, lost),
            self.matrix.policy,
            headroom_kw,
            now_s,
            self.matrix.hold_s,
        )
        self.limit_kw = dict(result["limit_kw"])
        self.offer_kw = self._offers(result, connectors, headroom_kw)
        self.reasons = dict(result["reasons"])
        if result["target"] != self.last_target:
            events.append(
                {
                    "event": "allocation_changed",
                    "before": self.last_target,
                    "after": result["target"],
                    "reason": "; ".join(f"{c}: {r}" for c, r in sorted(result["reasons"].items())),
                }
            )
            self.last_target = result["target"]
        for group, source, target in result["moves"]:
            if group in self.moves or group in self.out_of_service:
                continue
            move, first = start(group, source, target, now_s)
            self.moves[group] = move
            commands += first
        return commands, events

    def _offers(
        self, result: dict[str, Any], connectors: dict[str, dict[str, Any]], headroom_kw: float
    ) -> dict[str, float]:
        """The power each connector's vehicle is told (its capabilities): its share of the fuse headroom plus
        what the others leave unused, within the groups it has now and keeps (a group leaving it counts no
        more, one coming only once it is there) and its hardware. Not its share alone: that follows its own
        request, and a vehicle never asks more than it is told, so it could never ask more again."""
        spare = max(float(headroom_kw) - sum(result["limit_kw"].values()), 0.0)
        out = {}
        for name, conn in sorted(connectors.items()):
            here = [
                g
                for g in result["target"].get(name, [])
                if self.at.get(g) == name and g not in self.moves and g not in self.out_of_service
            ]
            groups_kw = sum(len(self.matrix.groups[g]) for g in here) * self.matrix.module_kw
            share_kw = result["limit_kw"].get(name, 0.0) + spare
            out[name] = round(min(share_kw, groups_kw, float(conn["max_kw"])), 3)
        return out

    def _step_moves(
        self,
        now_s: float,
        group_current_a: dict[str, float | None],
        mirror: dict[str, dict[str, int | None]],
        events: list[dict[str, Any]],
    ) -> list[Command]:
        commands: list[Command] = []
        for g in sorted(self.moves):
            move = self.moves[g]
            commands += step(move, group_current_a.get(g), mirror.get(g, {}), now_s, self.timing)
            if not move.finished:
                continue
            del self.moves[g]
            if move.fault is None:
                self.at[g] = move.target
                for c in (move.source, move.target):
                    if c is not None:
                        self.changed_s[c] = now_s
                continue
            self.out_of_service[g] = move.fault
            self.fault_detail[g] = next((str(c[3]) for c in reversed(move.log) if c[0] == "fault"), move.fault)
            # not off or stuck: still on its source (modules off); else its relays are open (or unknown)
            self.at[g] = move.source if move.fault in ("group_not_off", "relay_stuck") else None
            events.append({"event": "group_out_of_service", "group": g, "fault": move.fault, "at": self.at[g]})
        return commands

    def _arrivals(self, now_s: float, connectors: dict[str, dict[str, Any]]) -> None:
        for name, conn in connectors.items():
            charging = conn.get("phase") in allocation.WANT_PHASES
            if charging:
                self.arrival.setdefault(name, now_s)
            else:
                self.arrival.pop(name, None)

    def _connector_inputs(self, connectors: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        m = self.matrix
        return [
            {
                "name": name,
                "phase": conn.get("phase"),
                "request_kw": conn.get("request_kw", 0.0),
                "request_v": conn.get("request_v", 0.0),
                "max_a": conn["max_a"],
                "max_kw": conn["max_kw"],
                "priority": m.priority.get(name, 0),
                "arrival": self.arrival.get(name, 0.0),
                "min_groups": m.min_groups.get(name, 0),
                "max_groups": m.max_groups.get(name, 64),
                "reach": sorted(g for g, to in m.reach.items() if name in to),
                "home": m.home.get(name, []),
                "changed_s": self.changed_s.get(name),
            }
            for name, conn in sorted(connectors.items())
        ]

    def _group_inputs(self, group_current_a: dict[str, float | None], lost: tuple[str, ...]) -> dict[str, Any]:
        out = {}
        for g, modules in self.matrix.groups.items():
            current = group_current_a.get(g)
            move = self.moves.get(g)
            out[g] = {
                "available": g not in self.out_of_service and g not in lost,
                "max_a": len(modules) * self.matrix.module_a,
                "max_kw": len(modules) * self.matrix.module_kw,
                # a group on its way counts as where it goes (so no second group is sent after it)
                "at": move.target if move is not None else self.at.get(g),
                "live": move is None and (current is None or abs(current) > self.timing.off_current_a),
            }
        return out


# -- the controller's side: readings from the cabinet, commands to the bank and the relays -----------------
class RelayMatrix(Protocol):
    """The relays and their mirror contacts (edge/sim/relays.py in the simulator)."""

    def command(self, group: str, connector: str, close: bool, now_s: float) -> None: ...

    def mirror(self, group: str) -> dict[str, int | None]: ...

    def advance(self, now_s: float) -> None: ...


class _Coil(Protocol):
    def value(self, x: int | bool | None = None) -> int: ...


class _Mirrors(Protocol):
    def poll(self) -> dict[str, int]: ...

    def raw(self) -> dict[str, int]: ...


def mirror_name(group: str, connector: str) -> str:
    """The name of a relay's mirror contact among the debounced inputs (events, diagnostics)."""
    return f"relay {group}->{connector}"


@dataclass
class PinRelays:
    """The relay matrix on the board: each relay's coil an output pin (``[[relay]] pin``, energised = closed) and
    its mirror contact a debounced input (``[[relay]] feedback``; ``mirrors.poll()`` gives 1 = closed by
    :func:`mirror_name`). ``follow``: the simulator's matrix behind the same pins when no simulator steps it
    (a test's cabinet), called at every :meth:`advance` with the time."""

    coils: Mapping[tuple[str, str], _Coil]
    mirrors: _Mirrors
    follow: Any = None
    sim: Any = None  # the simulator's matrix behind the pins (edge/sim/relays.py), for tests and knobs; None on a board

    def command(self, group: str, connector: str, close: bool, now_s: float) -> None:
        self.coils[(group, connector)].value(1 if close else 0)

    def mirror(self, group: str) -> dict[str, int | None]:
        """``{connector: 1 closed | 0 open | None changing}``: a contact whose level differs from its debounced
        value is changing (not yet confirmed either way), so a relay found closed since the last steady read
        never counts as open."""
        read, raw = self.mirrors.poll(), self.mirrors.raw()
        out: dict[str, int | None] = {}
        for g, c in sorted(self.coils):
            if g == group:
                name = mirror_name(g, c)
                out[c] = read.get(name) if read.get(name) == raw.get(name) else None
        return out

    def advance(self, now_s: float) -> None:
        if self.follow is not None:
            self.follow(now_s)


@dataclass
class Runner:
    """What edge/control.py calls when the config has ``[sharing]``: the modules of each connector now, the
    allocation's power limit, and once per evaluation :meth:`after_decision` (readings in, the commands carried
    out on the module bank and the relay matrix, events out)."""

    cabinet: Cabinet
    relays: RelayMatrix
    # the relays are open at start (coils de-energised): each group goes home through the sequence, confirmed
    homing: bool = False
    faults: Any = None  # edge.faults.ExternalFaults: a group out of service is in the cabinet's fault list
    _raised: set[str] = field(default_factory=set)

    def clear(self, name: str) -> tuple[bool, str] | None:
        """``edge clear <name>`` for a group's fault (e.g. ``relay_stuck_C``): the group back in the allocation
        when its relays all read open; None when ``name`` is not a group's fault."""
        parsed = group_of_fault(name)
        if parsed is None or parsed[1] not in self.cabinet.matrix.groups:
            return None
        fault, group = parsed
        if self.cabinet.out_of_service.get(group) != fault:
            return False, f"{name} is not active"
        ok, why = self.cabinet.return_to_service(group, self.relays.mirror(group))
        if ok:
            self._sync_faults()
        return ok, why

    def holds(self, name: str) -> bool:
        """True for a group's fault raised now: held until an on-site clear (shown as latched)."""
        return name in self._raised

    def _sync_faults(self) -> None:
        if self.faults is None:
            return
        now = self.cabinet.faults()
        for name in self._raised - set(now):
            self.faults.clear(name, "group back in service")
        for name, detail in now.items():
            self.faults.set(name, detail)
        self._raised = set(now)

    def modules_of(self, connector: str) -> list[int]:
        return self.cabinet.modules_of(connector)

    def status(self) -> dict[str, Any]:
        return self.cabinet.status()

    def groups_of(self, connector: str) -> list[str]:
        """The groups feeding ``connector`` now (a group on its way is nobody's)."""
        cab = self.cabinet
        return [g for g in cab.groups_of(connector) if g not in cab.moves and g not in cab.out_of_service]

    def limit_w(self, connector: str) -> float | None:
        """The power ``connector``'s vehicle is told it may have (its capabilities), W; None before the first
        allocation."""
        kw = self.cabinet.offer_kw.get(connector)
        return None if kw is None else kw * 1000.0

    def after_decision(self, ctl: Any, decision: dict[str, Any], now_s: float) -> list[Command]:
        """One sharing step after the safety core's decision (``ctl``: the Controller)."""
        cab = self.cabinet
        self.relays.advance(now_s)
        connectors = _requests(ctl, decision)
        currents, lost = _group_currents(ctl, cab.matrix)
        allowed_w = decision.get("grid_allowed_w")
        headroom_kw = allowed_w / 1000.0 if allowed_w is not None else sum(c.max_power_kw for c in ctl.connectors)
        mirror = {g: self.relays.mirror(g) for g in cab.matrix.groups}
        commands: list[Command] = []
        if self.homing:
            self.homing = False
            commands += cab.go_home(now_s)
        more, events = cab.tick(now_s, connectors, currents, mirror, headroom_kw, tuple(lost))
        commands += more
        for cmd in commands:
            self._carry_out(ctl, cmd, now_s)
        self._sync_faults()
        for event in events:
            ctl.on_event(event["event"], "sharing", {k: v for k, v in event.items() if k != "event"})
        return commands

    def _carry_out(self, ctl: Any, cmd: Command, now_s: float) -> None:
        kind = cmd[0]
        if kind == "relay":
            self.relays.command(cmd[1], cmd[2], cmd[3] == "close", now_s)
            return
        modules = self.cabinet.matrix.groups.get(cmd[1], []) if kind in ("group_current", "modules") else []
        if kind == "group_current":
            volts = max((ctl.bank.modules[a].set_voltage_v for a in modules), default=0.0)
            if volts > 0.0:
                ctl.bank.apply(True, volts, 0.0, addresses=modules)  # 0 A at the voltage they hold
            else:
                ctl.bank.off(modules)  # not regulating anything: off is 0 A already
        elif kind == "modules" and cmd[2] == "off":
            ctl.bank.off(modules)
        # "modules on": the connector's next apply switches them on; "capabilities": reports() has the new limit


def _requests(ctl: Any, decision: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each connector's phase and request (kW at the requested voltage) and its hardware limits."""
    out = {}
    for c in ctl.connectors:
        request = ctl.demands.core_request(c.name) or {}
        volts = float(request.get("voltage_v") or 0.0)
        amps = float(request.get("current_a") or 0.0)
        power_kw = float(request.get("power_w") or 0.0) / 1000.0 or volts * amps / 1000.0
        # a vehicle asks for at most what it was told it may have: one asking (nearly) all of that current or
        # power may want more, so it counts as asking for the connector's whole rating (the allocation then
        # finds out). Before Charging (cable check, pre-charge: at most 2 A) the request says nothing of what the
        # vehicle will want, so it counts the same way: else a connector without a group would count as asking
        # for everything, with one as asking for nothing, and its group would go back and forth.
        modules = len(ctl.sharing.modules_of(c.name))
        matrix = ctl.sharing.cabinet.matrix
        phase = decision["connectors"][c.name]["phase"] if request else "Other"
        if (
            phase in BEFORE_CHARGING
            or amps >= SATURATED * modules * matrix.module_a
            or power_kw >= SATURATED * modules * matrix.module_kw
        ):
            power_kw = c.max_power_kw
        out[c.name] = {
            "phase": phase,
            "request_kw": min(c.max_power_kw, power_kw),
            "request_v": volts,
            "max_a": c.max_current_a,
            "max_kw": c.max_power_kw,
        }
    return out


def _group_currents(ctl: Any, matrix: Matrix) -> tuple[dict[str, float | None], list[str]]:
    """Each group's output current from its modules (None: not known) and the groups whose modules are all lost."""
    currents: dict[str, float | None] = {}
    lost = []
    for g, modules in matrix.groups.items():
        states = [ctl.bank.modules[a] for a in modules]
        # a lost module that was on may still deliver: the group's current is then not known
        unknown = any(m.lost and (m.on_at_loss or m.last_seen is None) for m in states)
        currents[g] = None if unknown else sum(m.current_a for m in states if not m.lost)
        if all(m.lost for m in states):
            lost.append(g)
    return currents, lost
