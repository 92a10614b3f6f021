"""What each control request does, registered by name with the permission it needs.

Read requests (``READ``) only look. The ``heavy`` ones (``events``, ``diag``) take what lives on the loop
in a quick snapshot, then read the store and build (and the server encodes) the answer in the API's
worker thread (:attr:`Context.offload`), so no answer holds the control loop; their answers are bounded
(at most ``MAX_EVENTS`` events) and paginated (``before_seq`` / ``after_seq`` and ``more``).
Change requests (``ADMIN``) are thin adapters onto :class:`edge.ops.Operations`, which validates them,
applies the authority rules (a local stop or limit is lifted only locally; the lowest limit wins),
evaluates at once and records every change request, accepted or not, as one ``command`` event (who,
what, result) that goes out with telemetry.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.api.peer import ADMIN, READ, Peer, Policy
from edge.api.protocol import ProtocolError, RawJson, encode
from edge.api.reader import EventReader
from edge.config import Config
from edge.control import Controller
from edge.diag import package_versions, redact
from edge.operator import Source
from edge.ops import Operations, OpError, settled_flow
from edge.telemetry.store import Store

__all__ = [
    "COMMANDS",
    "Context",
    "DaemonView",
    "Offload",
    "WatchArgs",
    "events_page",
    "full_status",
    "parse_args",
    "settled_flow",
]

MAX_EVENTS = 1000  # events in one answer, at most (~1 MB of JSON)
DIAG_EVENTS = 500


class DaemonView(Protocol):
    """The part of the daemon the API uses (the daemon itself is never imported here)."""

    config: Config
    controller: Controller
    store: Store
    recent_events: deque[str]  # JSON objects with seq and t_ms

    def status(self) -> dict[str, Any]: ...

    def event(self, kind: str, name: str, data: dict[str, Any]) -> None: ...


# runs a function of the store reader in the API's worker thread and awaits its result
Offload = Callable[[Callable[[EventReader], Any]], Awaitable[Any]]


@dataclass
class Context:
    daemon: DaemonView
    peer: Peer
    policy: Policy
    ops: Operations
    offload: Offload


Handler = Callable[[Context, Any], Awaitable[dict[str, Any]]]


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoArgs(Args):
    pass


@dataclass(frozen=True)
class Command:
    name: str
    need: str
    args: type[Args] | None  # None: the raw args go to edge.ops, which validates them
    handler: Handler
    help: str
    heavy: bool = False  # the server encodes the answer in the worker thread


COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    need: str,
    args: type[Args] | None = NoArgs,
    help: str = "",  # noqa: A002
    heavy: bool = False,
) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = Command(name, need, args, fn, help or (fn.__doc__ or "").strip().splitlines()[0], heavy)
        return fn

    return register


def parse_args(cmd: Command, raw: dict[str, Any]) -> Args | dict[str, Any]:
    if cmd.args is None:
        return raw
    try:
        return cmd.args.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors())
        raise ProtocolError("invalid_argument", f"{cmd.name}: {problems}") from None


# -- read ------------------------------------------------------------------------------------------
def full_status(daemon: DaemonView) -> dict[str, Any]:
    """The daemon's status plus what a technician needs to understand operator actions."""
    ctl = daemon.controller
    now = ctl.clock.monotonic()
    ext = ctl.external_limit
    return {
        **daemon.status(),
        "hardware_limit_a": daemon.config.limits.max_output_current_a,
        "external_limit": None
        if ext is None
        else {
            "amps": ext.amps,
            "source": ext.source,
            "remaining_s": round(ext.expires_at - now, 1) if ext.expires_at is not None else None,
        },
        "stopped_by": ctl.stopped_by,
        # every holder, not only the one that wins (edge.operator: local and cloud kept apart)
        "operator": {
            "stops": dict(ctl.operator.stops),
            "limits": {
                kind: {
                    "amps": lim.amps,
                    "source": lim.source,
                    "remaining_s": round(lim.expires_at - now, 1) if lim.expires_at is not None else None,
                }
                for kind, lim in ctl.operator.limits.items()
            },
        },
        "selftest": {
            "active": bool(ctl.test_outputs) and now < ctl.test_outputs_until,
            "outputs": dict(ctl.test_outputs),
        },
        "time_ms": int(time.time() * 1000),
    }


@command("status", READ)
async def _status(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """Everything about the cabinet right now (the content of `edge status`)."""
    return full_status(ctx.daemon)


@command("whoami", READ)
async def _whoami(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """The peer as the daemon sees it, and whether it may change things."""
    cfg = ctx.daemon.config.api
    return {
        "user": ctx.peer.user,
        "uid": ctx.peer.uid,
        "gid": ctx.peer.gid,
        "groups": sorted(ctx.peer.groups),
        "admin": ctx.policy.allows(ctx.peer, ADMIN),
        "group": cfg.group,
        "admin_group": cfg.admin_group,
    }


@command("faults", READ)
async def _faults(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """Active faults with detail, whether latched, and how to clear them."""
    st = full_status(ctx.daemon)
    latched = set(st.get("latched", []))
    out = {}
    for name, detail in sorted(st.get("faults", {}).items()):
        out[name] = {
            "detail": detail,
            "latched": name in latched,
            "hint": (
                f"fix the cause, then: edge clear {name}"
                if name in latched
                else "clears by itself when the condition is gone"
            ),
        }
    alarms = {a: m["alarms"] for a, m in st.get("modules", {}).items() if m.get("alarms")}
    return {"faults": out, "module_alarms": alarms, "limit_a": st.get("limit_a"), "reason": st.get("reason")}


class EventsArgs(Args):
    since_ms: int | None = Field(None, ge=0, description="UTC ms since the epoch; all kept events when absent")
    limit: int = Field(200, ge=1, le=MAX_EVENTS)
    before_seq: int | None = Field(None, ge=1, description="page back: the newest events older than this seq")
    after_seq: int | None = Field(None, ge=0, description="page forward: the oldest events newer than this seq")

    @model_validator(mode="after")
    def _one_direction(self) -> EventsArgs:
        if self.before_seq is not None and self.after_seq is not None:
            raise ValueError("give before_seq or after_seq, not both")
        return self


_RECENT_HEAD = re.compile(r'^\{"seq":(-?\d+),"t_ms":(-?\d+)')  # edge.events writes seq and t_ms first


def _in_page(seq: int, t_ms: int, page: EventsArgs) -> bool:
    return (
        (page.before_seq is None or seq < page.before_seq)
        and (page.after_seq is None or seq > page.after_seq)
        and (page.since_ms is None or t_ms >= page.since_ms)
    )


def _stored_text(seq: int, t_ms: int, payload: str) -> str:
    """``{"seq":..,"t_ms":.., **payload}`` as JSON text, spliced (the store wrote strict JSON)."""
    head = f'{{"seq":{seq},"t_ms":{t_ms}'
    return head + ("}" if payload.strip() == "{}" else "," + payload.lstrip()[1:])


def _recent_entry(text: str) -> tuple[int, int, str]:
    """seq, t_ms and strict JSON text of one in-memory event (parsed only if the fast path cannot tell)."""
    m = _RECENT_HEAD.match(text)
    if m and "NaN" not in text and "Infinity" not in text:
        return int(m[1]), int(m[2]), text
    ev = json.loads(text)
    return int(ev["seq"]), int(ev["t_ms"]), encode(ev).decode().rstrip("\n")


def events_page(reader: EventReader, recent: list[str], page: EventsArgs) -> dict[str, Any]:
    """One page of events, oldest first: the newest ``limit`` (before ``before_seq``), or with ``after_seq``
    the oldest ``limit`` after it. Merged by seq from the store (not yet delivered; at most ``limit + 1``
    read) and ``recent`` (a snapshot of the in-memory list: delivered ones too). ``events`` is one
    :class:`RawJson` list, spliced from the stored JSON texts without parsing them; ``more``: another page
    lies further in that direction. Runs in the API's worker thread."""
    newest_first = page.after_seq is None
    by_seq: dict[int, str] = {}
    for seq, t_ms, payload in reader.events(
        page.limit + 1, page.before_seq, page.after_seq, page.since_ms, newest_first=newest_first
    ):
        by_seq[seq] = _stored_text(seq, t_ms, payload)
    for text in recent:
        seq, t_ms, strict = _recent_entry(text)
        if _in_page(seq, t_ms, page):
            by_seq.setdefault(seq, strict)
    seqs = sorted(by_seq, reverse=newest_first)
    chosen = sorted(seqs[: page.limit])
    return {"events": RawJson("[" + ",".join(by_seq[s] for s in chosen) + "]"), "more": len(seqs) > page.limit}


def collect_events(daemon: DaemonView, since_ms: int | None, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` events since ``since_ms`` (store and memory merged by seq), oldest first; on
    the caller's thread with a reader of its own (tools and tests; the server pages in its worker)."""
    reader = EventReader(daemon.store.path)
    try:
        page = events_page(reader, list(daemon.recent_events), EventsArgs(since_ms=since_ms, limit=limit))
    finally:
        reader.close()
    return list(json.loads(page["events"].text))


@command("events", READ, EventsArgs, heavy=True)
async def _events(ctx: Context, args: EventsArgs) -> dict[str, Any]:
    """Recent events (faults, clears, limit rule changes, commands), oldest first, a page at a time."""
    recent = list(ctx.daemon.recent_events)  # the snapshot is taken on the loop, which alone appends
    return dict(await ctx.offload(lambda reader: events_page(reader, recent, args)))


class WatchArgs(Args):
    interval_s: float = Field(1.0, ge=0.1, le=60.0)
    count: int | None = Field(None, ge=1, description="stop after this many; until disconnect when absent")


@command("watch", READ, WatchArgs)
async def _watch(ctx: Context, args: WatchArgs) -> dict[str, Any]:
    """A status line every interval until the client disconnects (handled by the server)."""
    raise AssertionError("watch is streamed by the server")  # pragma: no cover


def store_stats(store: Store) -> dict[str, Any]:
    sizes: dict[str, int | None] = {}
    for suffix, key in (("", "db_bytes"), ("-wal", "wal_bytes"), ("-shm", "shm_bytes")):
        try:
            sizes[key] = os.path.getsize(store.path + suffix)
        except OSError:
            sizes[key] = None
    stats = getattr(store, "stats", None)  # the telemetry side's own figures, where the store has them
    more: dict[str, Any] = stats() if callable(stats) else {}
    return {
        **more,
        "path": store.path,
        "backlog": store.backlog(),
        "last_seq": store.last_seq(),
        "write_errors": store.write_errors,
        "evicted": getattr(store, "evicted", None),
        "max_bytes": getattr(store, "max_bytes", None),
        **sizes,
    }


@functools.lru_cache(maxsize=1)
def _packages() -> dict[str, Any]:
    """Installed versions: they do not change while the daemon runs, and finding them makes much garbage."""
    return dict(package_versions())


_redacted: tuple[Config | None, dict[str, Any]] = (None, {})


def _redacted_config(config: Config) -> dict[str, Any]:
    """The daemon's config never changes while it runs: redacted once (worker thread only)."""
    global _redacted
    if _redacted[0] is not config:
        _redacted = (config, dict(redact(config.model_dump(mode="json"))))
    return _redacted[1]


class DiagArgs(Args):
    limit: int = Field(DIAG_EVENTS, ge=1, le=MAX_EVENTS, description="events in the answer, newest")
    before_seq: int | None = Field(None, ge=1, description="page back: events older than this seq")


@command("diag", READ, DiagArgs, heavy=True)
async def _diag(ctx: Context, args: DiagArgs) -> dict[str, Any]:
    """What `edge diag` bundles from the daemon: redacted config, store, events, status, versions."""
    d = ctx.daemon
    # what lives on the loop is read on the loop; the rest is built in the worker thread
    status, store, recent, config = full_status(d), store_stats(d.store), list(d.recent_events), d.config
    page = EventsArgs(limit=args.limit, before_seq=args.before_seq)

    def build(reader: EventReader) -> dict[str, Any]:
        events = events_page(reader, recent, page)
        return {
            "config": _redacted_config(config),
            "store": store,
            "events": events["events"],
            "events_more": events["more"],
            "status": status,
            "daemon": {
                "pid": os.getpid(),
                "python": sys.version,
                "platform": platform.platform(),
                "packages": _packages(),
            },
        }

    return dict(await ctx.offload(build))


# -- change: thin adapters onto edge.ops (one validation, authority, audit, evaluate-at-once) -----
def local_source(ctx: Context) -> Source:
    return Source.local(ctx.peer.user, ctx.peer.uid)


def _run(ctx: Context, op: str, raw: dict[str, Any]) -> dict[str, Any]:
    try:
        return ctx.ops.run(op, local_source(ctx), raw).answer
    except OpError as exc:
        raise ProtocolError(exc.code, exc.message) from None


def _operation(op: str) -> Handler:
    """The socket command ``op``: the operation of the same name, done for the local peer."""

    async def handler(ctx: Context, raw: dict[str, Any]) -> dict[str, Any]:
        return _run(ctx, op, raw)

    return handler


for _op, _help in (
    ("clear", "Clear a latched fault; refused while its condition is still present."),
    ("limit_set", "Set a temporary current limit (only ever lowers: the lowest rule wins)."),
    ("limit_clear", "Remove the operator current limit set locally (a cloud one stays)."),
    ("stop", "Stop charging: 0 A, output off, contactor open, until `resume`."),
    ("resume", "Undo a local `stop`; charging restarts when every rule allows it."),
):
    command(_op, ADMIN, None, help=_help)(_operation(_op))


@command("selftest", ADMIN, None, help="Run pump and fan with the output off; report coolant flow and temperatures.")
async def _selftest(ctx: Context, raw: dict[str, Any]) -> dict[str, Any]:
    try:
        return (await ctx.ops.selftest(local_source(ctx), raw)).answer
    except OpError as exc:
        raise ProtocolError(exc.code, exc.message) from None
