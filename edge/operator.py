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
limit replaces the previous cloud limit). :class:`OperatorState` is pure bookkeeping (no I/O, time comes
in as arguments); it calls ``on_change`` after every change of a stop or a limit that an operator made.

Stops and limits survive a restart: :class:`OperatorFile` keeps them in ``<data_dir>/operator.json``
(written crash-safely: temp file, fsync, rename, fsync of the directory) and :func:`restore` reads them
back before the first evaluation. A file that cannot be read or does not validate is kept aside as
``operator.json.unreadable`` and the cabinet starts STOPPED LOCALLY by ``cli:unknown (operator state
unreadable)``: a lost technician's stop is the one loss that can hurt someone, so the unknown holder is
treated as the strictest one (liftable on site only, ``edge resume``). Self-test outputs are not kept.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

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
    # called after an operator set or lifted a stop or a limit (build() saves the state there); not on
    # expiry: that runs in the control tick, and a restart drops an expired limit by its wall-clock time
    on_change: Callable[[OperatorState], None] | None = field(default=None, repr=False, compare=False)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    # -- limits --------------------------------------------------------------------------------------
    def set_limit(self, source: Source, amps: float, expires_at: float | None) -> None:
        self.limits[source.kind] = ExternalLimit(amps, expires_at, source.label)
        self._changed()

    def clear_limit(self, source: Source) -> ExternalLimit | None:
        """Lift the caller's own limit and return it; :class:`Held` when only the other holds one."""
        own = self.limits.pop(source.kind, None)
        if own is None:
            self._refuse_if_held(source, self.limits, "limited")
        else:
            self._changed()
        return own

    def expire(self, now: float) -> list[ExternalLimit]:
        """Drop and return the limits whose time is up (``on_change`` is not called, see above)."""
        gone = [k for k, lim in self.limits.items() if lim.expires_at is not None and now >= lim.expires_at]
        return [self.limits.pop(k) for k in gone]

    def effective_limit(self) -> ExternalLimit | None:
        """The lowest limit in force (local first on a tie: it is the one only a technician can lift)."""
        held = [self.limits[k] for k in AUTHORITIES if k in self.limits]
        return min(held, key=lambda lim: lim.amps) if held else None

    # -- stops ---------------------------------------------------------------------------------------
    def stop(self, source: Source) -> None:
        self.stops[source.kind] = source.label
        self._changed()

    def resume(self, source: Source) -> str | None:
        """Lift the caller's own stop; returns who had stopped, or None when there was none to lift.
        Raises :class:`Held` when only the other authority holds a stop."""
        own = self.stops.pop(source.kind, None)
        if own is None:
            self._refuse_if_held(source, self.stops, "stopped")
        else:
            self._changed()
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


# -- persistence ---------------------------------------------------------------------------------------
STATE_FILE = "operator.json"
FORMAT_VERSION = 1
UNREADABLE_FAULT = "operator_state_unreadable"
NOT_SAVED_FAULT = "operator_state_not_saved"
# who holds the stop when the file could not be read: local, so only a technician on site lifts it
UNKNOWN_HOLDER = Source.local("unknown (operator state unreadable)")
EventSink = Callable[[str, str, dict[str, Any]], None]


class FaultSink(Protocol):
    """The part of :class:`edge.faults.ExternalFaults` the file uses."""

    def set(self, name: str, detail: str, stops_output: bool = False) -> None: ...
    def clear(self, name: str, reason: str = "") -> None: ...


class OperatorFile:
    """``<data_dir>/operator.json``: the stops and limits of an :class:`OperatorState`, crash-safe.

    Format (version 1; UTF-8 JSON, one object; written whole on every change)::

        {"version": 1,
         "saved_at_ms": 1764170000000,
         "stops": {"local": "cli:alice"},
         "limits": {"cloud": {"amps": 32.0, "source": "cloud:dr-2", "expires_at_ms": 1764170900000},
                    "local": {"amps": 20.0, "source": "cli:bob", "expires_at_ms": null}}}

    ``stops`` and ``limits`` are keyed by authority (``local``, ``cloud``); a source label must belong to
    its authority (``cli:...`` / ``cloud:...``). ``expires_at_ms`` is UTC wall-clock ms (monotonic time
    means nothing after a restart), null = until cleared. ``saved_at_ms`` bounds what a restored limit can
    have left (``expires_at_ms - saved_at_ms``), so a wall clock that went back never lengthens a limit.

    :meth:`restore` reads it once at start-up; :meth:`save` is the ``on_change`` of the state it returns.
    A failed save keeps the change in memory (it is in force now) and raises ``operator_state_not_saved``.
    """

    def __init__(
        self,
        data_dir: str,
        monotonic: Callable[[], float],
        wall_ms: Callable[[], int],
        on_event: EventSink,
        faults: FaultSink,
    ) -> None:
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, STATE_FILE)
        self.monotonic = monotonic
        self.wall_ms = wall_ms
        self.on_event = on_event
        self.faults = faults
        self.saves = 0
        self.save_errors = 0

    # -- writing -------------------------------------------------------------------------------------
    def record(self, state: OperatorState) -> dict[str, Any]:
        now, wall = self.monotonic(), self.wall_ms()
        return {
            "version": FORMAT_VERSION,
            "saved_at_ms": wall,
            "stops": {k: state.stops[k] for k in AUTHORITIES if k in state.stops},
            "limits": {
                k: {
                    "amps": lim.amps,
                    "source": lim.source,
                    "expires_at_ms": None if lim.expires_at is None else wall + round((lim.expires_at - now) * 1000),
                }
                for k, lim in state.limits.items()
            },
        }

    def write(self, state: OperatorState) -> None:
        """Temp file, fsync, rename over the old one, fsync the directory: after a crash at any point the
        file is the old state or the new one, never a mix. Raises OSError."""
        write_atomic(self.path, json.dumps(self.record(state), separators=(",", ":"), allow_nan=False).encode())
        self.saves += 1

    def save(self, state: OperatorState) -> None:
        """``on_change``: write at once (the operator's answer comes after it); never raises."""
        try:
            self.write(state)
        except (OSError, ValueError) as exc:
            self.save_errors += 1
            self.faults.set(
                NOT_SAVED_FAULT,
                f"operator stops/limits not saved to {self.path} ({exc}): in force now, lost on a restart",
            )
            return
        self.faults.clear(NOT_SAVED_FAULT, "operator state saved")
        self.faults.clear(UNREADABLE_FAULT, "operator state saved after an operator change")

    # -- reading -------------------------------------------------------------------------------------
    def restore(self) -> OperatorState:
        """The state to start with (``on_change`` = :meth:`save`), and one ``operator_restored`` event
        listing what was restored and what was dropped (nothing when there was no file: a first start)."""
        state = OperatorState()
        raw = b""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
            restored, dropped = self._apply(state, _parse(raw))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            self._fail_safe(state, raw, f"{type(exc).__name__}: {exc}")
        else:
            self.on_event(
                "operator_restored", "operator", {"file": self.path, "restored": restored, "dropped": dropped}
            )
        state.on_change = self.save
        return state

    def _apply(self, state: OperatorState, doc: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        now, wall = self.monotonic(), self.wall_ms()
        restored: list[dict[str, Any]] = []
        dropped: list[dict[str, Any]] = []
        for kind, label in doc["stops"].items():
            state.stops[kind] = label
            restored.append({"what": "stop", "authority": kind, "source": label})
        for kind, lim in doc["limits"].items():
            item = {"what": "limit", "authority": kind, "source": lim["source"], "amps": lim["amps"]}
            until_ms = lim["expires_at_ms"]
            if until_ms is None:
                state.limits[kind] = ExternalLimit(lim["amps"], None, lim["source"])
                restored.append({**item, "remaining_s": None})
                continue
            left_s = min(until_ms - wall, until_ms - doc["saved_at_ms"]) / 1000.0
            if left_s <= 0:
                dropped.append({**item, "note": f"expired {-left_s:.1f} s before the restart"})
                continue
            state.limits[kind] = ExternalLimit(lim["amps"], now + left_s, lim["source"])
            restored.append({**item, "remaining_s": round(left_s, 1)})
        return restored, dropped

    def _fail_safe(self, state: OperatorState, raw: bytes, error: str) -> None:
        """Start stopped locally by an unknown holder; keep the bad file for a look; write the fail-safe
        state over it so that a second restart still starts stopped (unless the write fails too: then the
        bad file stays where it is and the next start fails safe the same way)."""
        state.stops, state.limits = {LOCAL: UNKNOWN_HOLDER.label}, {}
        kept = self.path + ".unreadable"
        try:
            with open(kept, "wb") as f:
                f.write(raw)
            self.write(state)
        except OSError:
            self.save_errors += 1
        detail = (
            f"operator state {self.path} unreadable ({error}); started stopped locally by {UNKNOWN_HOLDER.label}: "
            f"check the cabinet, then resume on site (edge resume); the bad file is kept as {kept}"
        )
        self.faults.set(UNREADABLE_FAULT, detail[:400])
        self.on_event(
            "operator_restored",
            "operator",
            {
                "file": self.path,
                "error": error[:200],
                "restored": [{"what": "stop", "authority": LOCAL, "source": UNKNOWN_HOLDER.label}],
                "dropped": [],
                "detail": detail[:400],
            },
        )


def write_atomic(path: str, data: bytes) -> None:
    """Temp file, fsync, rename over ``path``, fsync the directory: after a crash at any point the file is
    the old content or the new one, never a mix (also edge/latches.py's writer). Raises OSError."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_PREFIX_OF = {LOCAL: "cli:", CLOUD: "cloud:"}


def _label(kind: Any, label: Any) -> Authority:
    if kind not in _PREFIX_OF:
        raise ValueError(f"unknown authority {kind!r}")
    if not isinstance(label, str) or not label.startswith(_PREFIX_OF[kind]) or len(label) > 200:
        raise ValueError(f"source {label!r} does not belong to {kind}")
    return LOCAL if kind == LOCAL else CLOUD


def _ms(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**53:
        raise ValueError(f"{what} must be UTC ms, got {v!r}")
    return v


def _check_limit(kind: Any, lim: Any) -> None:
    if not isinstance(lim, dict) or set(lim) != {"amps", "source", "expires_at_ms"}:
        raise ValueError(f"limit of {kind!r} must have amps, source and expires_at_ms")
    _label(kind, lim["source"])
    amps = lim["amps"]
    if isinstance(amps, bool) or not isinstance(amps, (int, float)) or not 0 <= amps < math.inf:
        raise ValueError(f"limit of {kind!r}: amps {amps!r} is not a current in A")
    lim["amps"] = float(amps)
    if lim["expires_at_ms"] is not None:
        _ms(lim["expires_at_ms"], f"limit of {kind!r}: expires_at_ms")


def _parse(raw: bytes) -> dict[str, Any]:
    """The file's object, checked field by field; ValueError (with what is wrong) for anything else."""
    doc = json.loads(raw.decode("utf-8"))  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a version {FORMAT_VERSION} operator state object")
    if set(doc) != {"version", "saved_at_ms", "stops", "limits"}:
        raise ValueError(f"unexpected keys {sorted(doc)}")
    _ms(doc["saved_at_ms"], "saved_at_ms")
    stops, limits = doc["stops"], doc["limits"]
    if not isinstance(stops, dict) or not isinstance(limits, dict):
        raise ValueError("stops and limits must be objects")
    for kind, label in stops.items():
        _label(kind, label)
    for kind, lim in limits.items():
        _check_limit(kind, lim)
    return doc
