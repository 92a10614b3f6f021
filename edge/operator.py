"""Operator state: who stopped the cabinet, who limited it, and the rules of who may lift what.

Two authorities act on a cabinet: ``local`` (a technician on the control socket, ``edge stop``) and
``cloud`` (a backend command over MQTT). Each keeps its own stop and its own current limit:

- the effective limit is the lowest of all limits still in force, so a cloud limit never replaces a
  local one (a local 20 A and a cloud 200 A give 20 A);
- an authority lifts only what it set: a cloud ``resume`` or ``clear-current-limit`` never lifts a
  local stop or limit, and a local ``resume`` never lifts a cloud stop;
- when a caller has nothing of its own to lift but the other authority holds one, the request is
  refused with the holder's name and where to lift it (:class:`Held`).

Within one authority the newest request wins (two technicians share the local stop; a new cloud
limit replaces the previous cloud limit). Pure bookkeeping: no I/O, time comes in as arguments.
Not persisted across restarts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Authority = Literal["local", "cloud"]
LOCAL: Authority = "local"
CLOUD: Authority = "cloud"
AUTHORITIES: tuple[Authority, ...] = (LOCAL, CLOUD)  # local first: shown first when both hold
_LABEL_PREFIX = {LOCAL: "cli", CLOUD: "cloud"}
_LIFT_HINT = {
    (LOCAL, "stopped"): "resume locally (edge resume)",
    (LOCAL, "limited"): "clear it locally (edge limit clear)",
    (CLOUD, "stopped"): "resume from the backend (MQTT resume)",
    (CLOUD, "limited"): "clear it from the backend (MQTT clear-current-limit) or let it expire",
}


@dataclass(frozen=True)
class Source:
    """Who asks: ``kind`` is the authority, ``who`` the local user name or the cloud command id."""

    kind: Authority
    who: str
    uid: int | None = None  # local callers: the peer's uid from the kernel

    @property
    def label(self) -> str:
        """As shown to users and in the retained state: ``cli:alice``, ``cloud:dr-2``."""
        return f"{_LABEL_PREFIX[self.kind]}:{self.who}"

    @classmethod
    def local(cls, user: str, uid: int | None = None) -> Source:
        return cls(LOCAL, user, uid)

    @classmethod
    def cloud(cls, command_id: str) -> Source:
        return cls(CLOUD, command_id)

    @classmethod
    def from_label(cls, label: str) -> Source:
        """``cloud:x`` is a cloud source; anything else (``cli:root``, a bare name) is local."""
        prefix, _, rest = label.partition(":")
        if prefix == "cloud" and rest:
            return cls(CLOUD, rest)
        return cls(LOCAL, rest if prefix == "cli" and rest else label)


@dataclass
class ExternalLimit:
    """An operator current limit (can only lower the limit)."""

    amps: float
    expires_at: float | None  # monotonic s, None = until cleared
    source: str  # label of who set it, e.g. cli:alice


class Held(Exception):
    """Refused: what the caller wants to lift is held by the other authority (message names it)."""


@dataclass
class OperatorState:
    limits: dict[Authority, ExternalLimit] = field(default_factory=dict)
    stops: dict[Authority, str] = field(default_factory=dict)  # authority -> label of who stopped
    # self-test of pump and fan: honoured only while the DC output is off (see Controller._apply)
    test_outputs: dict[str, bool] = field(default_factory=dict)
    test_outputs_until: float = 0.0

    # -- limits --------------------------------------------------------------------------------------
    def set_limit(self, source: Source, amps: float, expires_at: float | None) -> None:
        self.limits[source.kind] = ExternalLimit(amps, expires_at, source.label)

    def clear_limit(self, source: Source) -> ExternalLimit | None:
        """Lift the caller's own limit and return it; :class:`Held` when only the other holds one."""
        own = self.limits.pop(source.kind, None)
        if own is None:
            self._refuse_if_held(source, self.limits, "limited")
        return own

    def expire(self, now: float) -> list[ExternalLimit]:
        """Drop and return the limits whose time is up."""
        gone = [k for k, lim in self.limits.items() if lim.expires_at is not None and now >= lim.expires_at]
        return [self.limits.pop(k) for k in gone]

    def effective_limit(self) -> ExternalLimit | None:
        """The lowest limit in force (local first on a tie: it is the one only a technician can lift)."""
        held = [self.limits[k] for k in AUTHORITIES if k in self.limits]
        return min(held, key=lambda lim: lim.amps) if held else None

    # -- stops ---------------------------------------------------------------------------------------
    def stop(self, source: Source) -> None:
        self.stops[source.kind] = source.label

    def resume(self, source: Source) -> str | None:
        """Lift the caller's own stop; returns who had stopped, or None when there was none to lift.
        Raises :class:`Held` when only the other authority holds a stop."""
        own = self.stops.pop(source.kind, None)
        if own is None:
            self._refuse_if_held(source, self.stops, "stopped")
        return own

    @property
    def stopped_by(self) -> str | None:
        """The stop holder shown to users (local first: it is the one a technician on site must lift)."""
        return next((self.stops[k] for k in AUTHORITIES if k in self.stops), None)

    # -- self-test outputs ---------------------------------------------------------------------------
    def set_test_outputs(self, pump: bool | None, fan: bool | None, until: float) -> None:
        self.test_outputs = {k: v for k, v in (("pump", pump), ("fan", fan)) if v is not None}
        self.test_outputs_until = until

    # -- rules ---------------------------------------------------------------------------------------
    def held_by_others(self, source: Source, stops: bool = True, below_a: float = math.inf) -> str:
        """What the other authority still holds, with where to lift it ("" when nothing): the stop (when
        ``stops``) and its limits below ``below_a``."""
        parts = [_held(k, "stopped", label) for k, label in self.stops.items() if stops and k != source.kind]
        parts += [
            _held(k, "limited", lim.source, lim.amps)
            for k, lim in self.limits.items()
            if k != source.kind and lim.amps < below_a
        ]
        return "; ".join(parts)

    @staticmethod
    def _refuse_if_held(source: Source, held: dict[Authority, ExternalLimit] | dict[Authority, str], what: str) -> None:
        for kind, item in held.items():
            if kind != source.kind:
                if isinstance(item, ExternalLimit):
                    raise Held(_held(kind, what, item.source, item.amps))
                raise Held(_held(kind, what, item))


def _held(kind: Authority, what: str, label: str, amps: float | None = None) -> str:
    """e.g. ``stopped locally by cli:alice: resume locally (edge resume)``"""
    where = "locally" if kind == LOCAL else "from the cloud"
    to = f" to {amps:g} A" if amps is not None else ""
    return f"{what}{to} {where} by {label}: {_LIFT_HINT[kind, what]}"
