"""What each control request does, registered by name with the permission it needs.

Read requests (``READ``) only look; change requests (``ADMIN``) go through the controller, which can
lower a limit or stop, never raise anything above the configured hardware limits. Every change request,
accepted or not, becomes an event in the store (who, what, result) and so goes out with telemetry.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.api.peer import ADMIN, READ, Peer, Policy
from edge.api.protocol import ProtocolError
from edge.config import Config
from edge.control import Controller
from edge.diag import package_versions, redact
from edge.telemetry.store import Store

MAX_EVENTS = 1000


class DaemonView(Protocol):
    """The part of the daemon the API uses (the daemon itself is never imported here)."""

    config: Config
    controller: Controller
    store: Store
    recent_events: deque[str]  # JSON objects with seq and t_ms

    def status(self) -> dict[str, Any]: ...

    def event(self, kind: str, name: str, data: dict[str, Any]) -> None: ...


@dataclass
class Context:
    daemon: DaemonView
    peer: Peer
    policy: Policy
    selftest_lock: asyncio.Lock


Handler = Callable[[Context, Any], Awaitable[dict[str, Any]]]


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoArgs(Args):
    pass


@dataclass(frozen=True)
class Command:
    name: str
    need: str
    args: type[Args]
    handler: Handler
    help: str


COMMANDS: dict[str, Command] = {}


def command(name: str, need: str, args: type[Args] = NoArgs, help: str = "") -> Callable[[Handler], Handler]:  # noqa: A002
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = Command(name, need, args, fn, help or (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return register


def parse_args(cmd: Command, raw: dict[str, Any]) -> Args:
    try:
        return cmd.args.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors())
        raise ProtocolError("invalid_argument", f"{cmd.name}: {problems}") from None


def audit(ctx: Context, what: str, args: dict[str, Any], ok: bool, result: str) -> None:
    ctx.daemon.event(
        "command", what, {"user": ctx.peer.user, "uid": ctx.peer.uid, "args": args, "ok": ok, "result": result}
    )


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


def collect_events(daemon: DaemonView, since_ms: int | None, limit: int) -> list[dict[str, Any]]:
    """Events still in the store (not yet delivered) and those since start-up, merged by seq."""
    by_seq: dict[int, dict[str, Any]] = {}
    for rec in daemon.store.pending(0, 100_000, kind="event"):
        by_seq[rec.seq] = {"seq": rec.seq, "t_ms": rec.t_ms, **rec.payload}
    for text in daemon.recent_events:
        ev = json.loads(text)
        by_seq.setdefault(ev["seq"], ev)
    events = [by_seq[s] for s in sorted(by_seq) if since_ms is None or by_seq[s]["t_ms"] >= since_ms]
    return events[-limit:]


@command("events", READ, EventsArgs)
async def _events(ctx: Context, args: EventsArgs) -> dict[str, Any]:
    """Recent events (faults, clears, limit rule changes, commands), oldest first."""
    return {"events": collect_events(ctx.daemon, args.since_ms, args.limit)}


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


@command("diag", READ)
async def _diag(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """What `edge diag` bundles from the daemon: redacted config, store, events, status, versions."""
    d = ctx.daemon
    return {
        "config": redact(d.config.model_dump(mode="json")),
        "store": store_stats(d.store),
        "events": collect_events(d, None, 500),
        "status": full_status(d),
        "daemon": {
            "pid": os.getpid(),
            "python": sys.version,
            "platform": platform.platform(),
            "packages": package_versions(),
        },
    }


# -- change ----------------------------------------------------------------------------------------
class ClearArgs(Args):
    fault: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")


@command("clear", ADMIN, ClearArgs)
async def _clear(ctx: Context, args: ClearArgs) -> dict[str, Any]:
    """Clear a latched fault; refused while its condition is still present."""
    st = ctx.daemon.status()
    ok, why = ctx.daemon.controller.request_clear(args.fault)
    if ok:
        audit(ctx, "clear", args.model_dump(), True, "cleared")
        return {"fault": args.fault, "cleared": True}
    if why == "not latched":
        active = st.get("faults", {})
        latched = st.get("latched", [])
        if args.fault in active:
            why = f"{args.fault} is not latched: it clears by itself when the condition is gone ({active[args.fault]})"
        else:
            why = f"{args.fault} is not latched; latched now: {', '.join(latched) or 'none'}"
    audit(ctx, "clear", args.model_dump(), False, why)
    raise ProtocolError("refused", why)


class LimitSetArgs(Args):
    amps: float = Field(ge=0, description="A")
    duration_s: float | None = Field(None, gt=0, le=7 * 86400, description="s; until cleared when absent")


@command("limit_set", ADMIN, LimitSetArgs)
async def _limit_set(ctx: Context, args: LimitSetArgs) -> dict[str, Any]:
    """Set a temporary current limit (only ever lowers: the lowest rule wins)."""
    hw_a = ctx.daemon.config.limits.max_output_current_a
    if args.amps > hw_a:
        why = f"{args.amps:g} A is above the hardware limit {hw_a:g} A (limits.max_output_current_a)"
        audit(ctx, "limit_set", args.model_dump(), False, why)
        raise ProtocolError("invalid_argument", why)
    ctx.daemon.controller.set_external_limit(args.amps, args.duration_s, f"cli:{ctx.peer.user}")
    ctx.daemon.controller.evaluate_now()
    audit(ctx, "limit_set", args.model_dump(), True, "accepted")
    return {
        "amps": args.amps,
        "duration_s": args.duration_s,
        "hardware_limit_a": hw_a,
        "expires_at_ms": int((time.time() + args.duration_s) * 1000) if args.duration_s else None,
    }


@command("limit_clear", ADMIN)
async def _limit_clear(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """Remove the temporary current limit set from the CLI or the cloud."""
    had = ctx.daemon.controller.external_limit
    ctx.daemon.controller.clear_external_limit()
    ctx.daemon.controller.evaluate_now()
    result = f"cleared {had.amps:g} A from {had.source}" if had else "no limit was set"
    audit(ctx, "limit_clear", {}, True, result)
    return {"cleared": had is not None, "result": result}


@command("stop", ADMIN)
async def _stop(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """Stop charging: 0 A, output off, contactor open, until `resume`."""
    ctx.daemon.controller.stop(f"cli:{ctx.peer.user}")
    d = ctx.daemon.controller.evaluate_now()
    audit(ctx, "stop", {}, True, "stopped")
    return {"stopped": True, "limit_a": d["limit_a"], "enable": d["enable"]}


@command("resume", ADMIN)
async def _resume(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """Undo `stop`; charging restarts when every rule allows it (latched faults still hold)."""
    was = ctx.daemon.controller.stopped_by
    ctx.daemon.controller.resume()
    d = ctx.daemon.controller.evaluate_now()
    audit(ctx, "resume", {}, True, f"resumed (was stopped by {was})" if was else "was not stopped")
    return {"resumed": was is not None, "limit_a": d["limit_a"], "target_a": d["target_a"], "reason": d["reason"]}


class SelftestArgs(Args):
    duration_s: float = Field(5.0, ge=1.0, le=60.0)
    pump: bool = True
    fan: bool = True


_SELFTEST_SIGNALS = (
    "coolant_flow_lpm",
    "coolant_pressure_bar",
    "coolant_in_c",
    "coolant_out_c",
    "pin_dc_plus_c",
    "pin_dc_minus_c",
)


def _cable_values(st: dict[str, Any], cable: str | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for sig in _SELFTEST_SIGNALS:
        r = st.get("readings", {}).get(f"{cable}.{sig}") if cable else None
        out[sig] = r["value"] if r and r.get("quality") == "ok" else None
    return out


def settled_flow(flows: list[float]) -> float | None:
    """The flow the pump holds: the median of the second half of the readings (after spin-up). The
    highest reading would pass a pump that surges once and then fails."""
    tail = sorted(flows[len(flows) // 2 :])
    return tail[len(tail) // 2] if tail else None


@command("selftest", ADMIN, SelftestArgs)
async def _selftest(ctx: Context, args: SelftestArgs) -> dict[str, Any]:
    """Run pump and fan with the output off; report coolant flow and temperatures before, during, after."""
    d, ctl = ctx.daemon, ctx.daemon.controller
    decision = ctl.decision or {}
    if decision.get("enable") or d.status()["outputs"]["contactor"]:
        why = "output is on (charging); run `edge stop` first, or wait until the session ends"
        audit(ctx, "selftest", args.model_dump(), False, why)
        raise ProtocolError("refused", why)
    if ctx.selftest_lock.locked():
        raise ProtocolError("refused", "a self-test is already running")
    cable = d.config.cable[0].name if d.config.cable else None
    async with ctx.selftest_lock:
        before = _cable_values(d.status(), cable)
        ctl.set_test_outputs(args.pump, args.fan, args.duration_s)
        ctl.evaluate_now()
        flows: list[float] = []
        outputs_seen = {"pump": 0, "fan": 0}
        aborted = None
        t_end = time.monotonic() + args.duration_s
        while time.monotonic() < t_end:
            await asyncio.sleep(0.2)
            st = d.status()
            if st.get("enable"):
                aborted = "output was enabled during the test: test outputs released"
                break
            flow = _cable_values(st, cable)["coolant_flow_lpm"]
            if flow is not None:
                flows.append(flow)
            for k, seen in outputs_seen.items():
                outputs_seen[k] = max(seen, int(st["outputs"][k]))
        ctl.set_test_outputs(None, None, 0.0)
        ctl.evaluate_now()
        after = _cable_values(d.status(), cable)
    rule = d.config.limits.coolant_flow
    max_flow = max(flows) if flows else None
    flow = settled_flow(flows)
    if aborted:
        verdict, why = "aborted", aborted
    elif not args.pump:
        verdict, why = "pass", "pump not tested"
    elif flow is None:
        verdict, why = "fail", "no valid coolant flow reading during the test"
    elif flow >= rule.derate_start_lpm:
        verdict, why = "pass", f"flow {flow:.2f} l/min >= {rule.derate_start_lpm:g} l/min (full current)"
    elif flow >= rule.trip_lpm:
        verdict, why = (
            "warn",
            (
                f"flow {flow:.2f} l/min below {rule.derate_start_lpm:g} l/min: "
                "charging will be derated; check coolant level and filter"
            ),
        )
    else:
        verdict, why = (
            "fail",
            (
                f"flow {flow:.2f} l/min below trip {rule.trip_lpm:g} l/min with the pump on: "
                "check pump, fuse, coolant level, kinked hose"
            ),
        )
    result = {
        "verdict": verdict,
        "why": why,
        "duration_s": args.duration_s,
        "before": before,
        "after": after,
        "flow_settled_lpm": flow,
        "flow_min_lpm": min(flows) if flows else None,
        "flow_max_lpm": max_flow,
        "outputs_seen": outputs_seen,
        "flow_full_current_lpm": rule.derate_start_lpm,
        "flow_trip_lpm": rule.trip_lpm,
    }
    audit(ctx, "selftest", args.model_dump(), verdict == "pass", f"{verdict}: {why}")
    return result
