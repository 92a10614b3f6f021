"""The simulated relay matrix (issue 16): one relay per (group, connector) with a mirror contact that follows
the coil after ``switch_s``; in the simulated cabinet the coils are the board's output pins the daemon drives
and the mirror contacts drive the board's input pins the daemon reads (:meth:`SimRelayMatrix.follow`). Fault
knobs: ``stick`` (the contact stays where it is whatever the coil does: a welded or jammed relay) and
``lose_group`` (the group's modules stop answering)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class _Board(Protocol):  # hal.pin.SimBoard
    def level(self, id: str) -> int: ...  # noqa: A002

    def drive(self, id: str, level: int | bool) -> None: ...  # noqa: A002


@dataclass
class SimRelay:
    coil: bool = False  # commanded closed
    contact: bool = False  # really closed (what the mirror contact reports)
    changed_s: float = 0.0
    stuck: bool = False


@dataclass
class SimRelayMatrix:
    """Relays ``(group, connector)``; :meth:`advance` moves each contact to its coil ``switch_s`` after the
    command (a stuck one never moves)."""

    pairs: list[tuple[str, str]]
    switch_s: float = 0.02
    relays: dict[tuple[str, str], SimRelay] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        for pair in self.pairs:
            self.relays.setdefault(pair, SimRelay())

    def command(self, group: str, connector: str, close: bool, now_s: float) -> None:
        relay = self.relays[(group, connector)]
        if relay.coil != close:
            relay.coil = close
            relay.changed_s = now_s

    def advance(self, now_s: float) -> None:
        for relay in self.relays.values():
            if not relay.stuck and relay.contact != relay.coil and now_s - relay.changed_s >= self.switch_s:
                relay.contact = relay.coil

    def mirror(self, group: str) -> dict[str, int | None]:
        """The mirror contacts of ``group``'s relays: ``{connector: 1 closed | 0 open}``."""
        return {c: int(r.contact) for (g, c), r in sorted(self.relays.items()) if g == group}

    def connected(self, group: str) -> list[str]:
        """The connectors ``group`` is really connected to (more than one would parallel them)."""
        return [c for (g, c), r in sorted(self.relays.items()) if g == group and r.contact]

    def close_home(self, at: dict[str, str | None]) -> None:
        """Start with each group closed to its home connector."""
        for group, conn in at.items():
            if conn is not None:
                relay = self.relays[(group, conn)]
                relay.coil = relay.contact = True

    def follow(
        self, board: _Board, wiring: dict[tuple[str, str], tuple[str, str]], closed_level: int, now_s: float
    ) -> None:
        """One step on the board: each coil as its output pin stands, the contacts after ``switch_s``, each
        mirror contact's input pin driven to ``closed_level`` while closed. ``wiring``: (group, connector) ->
        (coil pin, mirror pin), the ``[[relay]]`` tables."""
        for pair, (coil, _mirror) in wiring.items():
            self.command(pair[0], pair[1], bool(board.level(coil)), now_s)
        self.advance(now_s)
        for pair, (_coil, mirror) in wiring.items():
            board.drive(mirror, closed_level if self.relays[pair].contact else 1 - closed_level)

    # -- fault knobs ---------------------------------------------------------------------------------------
    def stick(self, group: str, connector: str, stuck: bool = True) -> None:
        self.relays[(group, connector)].stuck = stuck

    def lose_group(self, group: str, lost: bool = True) -> None:
        if lost:
            self.lost.add(group)
        else:
            self.lost.discard(group)


def routes(relays: SimRelayMatrix, groups: dict[str, list[int]]) -> dict[str, tuple[int, ...]]:
    """``{connector: modules}`` as the contacts are now, for the simulator's physics (a group whose contacts are
    all open feeds nothing)."""
    out: dict[str, list[int]] = {}
    for group, modules in sorted(groups.items()):
        for conn in relays.connected(group):
            out.setdefault(conn, []).extend(modules)
    return {conn: tuple(mods) for conn, mods in out.items()}


def wiring(config: Any) -> tuple[dict[tuple[str, str], tuple[str, str]], int]:
    """``{(group, connector): (coil pin, mirror pin)}`` of a config's ``[[relay]]`` tables and the mirror input's
    level while a relay is closed (``sharing.relay_feedback_active``)."""
    pins = {(r.group, r.connector): (r.pin, r.feedback) for r in config.relay}
    return pins, 0 if config.sharing is not None and config.sharing.relay_feedback_active == "low" else 1
