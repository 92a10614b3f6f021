"""Cloud commands: the MQTT command channel as a thin adapter onto :mod:`edge.ops`.

This module only reads the MQTT envelope (size, JSON object, ``id``, age, known command) and maps the
command names onto the operations; arguments, bounds, authority, evaluate-at-once and the audit event
are those of :class:`edge.ops.Operations`, the same as for the local socket:

=====================  ===============  =====================
MQTT command           operation        payload fields
=====================  ===============  =====================
set-current-limit      limit_set        amps, duration_s
clear-current-limit    limit_clear      (none)
stop                   stop             reason (optional)
resume                 resume           (none)
clear-fault            clear            fault
request-state          (answered here)  (none)
update, log-level,     edge/remote      see edge/remote/commands.py (``remote=`` of :func:`handle`)
config-get, ...
=====================  ===============  =====================

No command can raise anything above the local configuration: a current limit above
``limits.max_output_current_a`` is rejected, never clamped, so the backend learns the real bound. A
cloud command lifts only what the cloud set: a local stop or limit is lifted only locally, and the
rejection names the local holder.

Command payload (JSON object): ``{"id": "<correlation id>", ...arguments}``; optional ``t_ms`` (UTC ms when
the backend sent it): commands older than ``MAX_AGE_S`` are rejected, so a persistent session
does not replay an hour-old limit after an outage, and so are commands more than
``telemetry.mqtt.command_max_skew_s`` in the future (a wrong backend clock would otherwise make them
valid for ever).

What a payload may hold is bounded before anything reads it: ``MAX_PAYLOAD_BYTES``, ``MAX_DEPTH`` levels
of nesting (scanned without recursion), integers of up to ``MAX_INT_DIGITS`` digits, other numbers of up
to ``MAX_NUMBER_CHARS`` characters and finite, and no key twice (``{"amps":500,"amps":10}`` is rejected,
not read as 10 A). A rejection names the problem and keeps the id whenever the id could be read.

Floods (:class:`RateLimit`): each command name has a token bucket of ``RATE_BURST`` commands refilled at
``RATE_PER_S`` (every other topic shares one more), checked on paho's thread before a command reaches the
event loop. A command over its bucket is not done, not audited one by one and answered at once
``rejected`` / "rate limited: ..." (its id read from the payload's start, else by the bounded parse); how
many were limited, by command, goes into one ``command`` event (op ``rate_limited``) at once and then at
most once per ``RATE_REPORT_S``. A backend has no reason to send more than a few commands a minute; a
flood of 2,000 stretched the control tick (bench/abuse.py).

Replays (:class:`Guard`, one per uplink, for the life of the process): a *retained* command is never
done (the broker would replay it on every subscribe, i.e. after every broker restart); it is counted,
reported as a ``command`` event at most once per ``RETAINED_REPORT_S`` and answered "retained command
ignored" when it has an id. An id among the last ``RECENT_IDS`` done is answered with its first result
and not done again. Under MQTT 5 a message whose expiry ran out before it was handled is rejected.

:func:`handle` is the command channel's entry point. :func:`parse` and :func:`execute` are kept with
their old signatures for callers that record the outcome themselves (they do not audit).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.operator import Source
from edge.ops import CLOUD_MAX_LIMIT_S, INVALID_ARGUMENT, REFUSED, Operations, OpError, authorise, validate
from edge.remote.commands import REMOTE_COMMANDS, RemoteHandler, audit_args
from edge.telemetry.channel import LIVE, Received

MAX_PAYLOAD_BYTES = 4096
MAX_DEPTH = 4  # levels of nesting (the payload object is level 1); commands are flat
MAX_INT_DIGITS = 16  # t_ms in ms has 13
MAX_NUMBER_CHARS = 24  # a number with a fraction or an exponent, as written
MAX_AGE_S = 60.0
DEFAULT_MAX_SKEW_S = 300.0  # telemetry.mqtt.command_max_skew_s: how far ahead a backend clock may run
RECENT_IDS = 1000  # ids (and their results) remembered, so that a repeated id is not done twice
RETAINED_REPORT_S = 60.0  # at most one event per this for retained commands ignored
RETAINED = "retained command ignored"
MAX_LIMIT_DURATION_S = CLOUD_MAX_LIMIT_S
ID_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")  # whole string (fullmatch): "id\n" is not an id
_ID_FIELD_RE = re.compile(r'"id"\s*:\s*"([A-Za-z0-9_.:\-]{1,64})"')
_LEADING_ID_RE = re.compile(r'\s*\{\s*"id"\s*:\s*"([A-Za-z0-9_.:\-]{1,64})"\s*[,}]')
OPS = {
    "set-current-limit": "limit_set",
    "clear-current-limit": "limit_clear",
    "stop": "stop",
    "resume": "resume",
    "clear-fault": "clear",
}
REQUEST_STATE = "request-state"
COMMANDS = (*OPS, REQUEST_STATE, *REMOTE_COMMANDS)
RATE_PER_S = 5.0  # commands per s per command name, sustained
RATE_BURST = 20  # commands per command name at once (a backend sends a few a minute)
RATE_REPORT_S = 60.0  # at most one rate_limited event per this (the first at once)
OTHER_TOPICS = "other"  # the one bucket every topic that is not a command shares
RATE_LIMITED = "rate limited"
ACCEPTED = "accepted"
REJECTED = "rejected"


@dataclass(frozen=True)
class Command:
    name: str
    id: str | None
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    id: str | None
    command: str
    result: str  # accepted | rejected
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "command": self.command, "result": self.result, "reason": self.reason}


class Rejected(Exception):
    def __init__(self, reason: str, cmd_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cmd_id = cmd_id


# -- the envelope ------------------------------------------------------------------------------------
class _Decoder:
    """``json.loads`` hooks that bound what a payload may hold. The first problem is kept and parsing goes
    on, so that the id can still be read and the rejection names it."""

    def __init__(self) -> None:
        self.problem: str | None = None

    def _note(self, why: str) -> None:
        if self.problem is None:
            self.problem = why

    def pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:  # json.loads would keep the last one: {"amps":500,"amps":10} is not 10 A to us
                self._note(f"duplicate key {key[:40]!r}")
            out[key] = _AMBIGUOUS if key in out else value
        return out

    def parse_int(self, text: str) -> int:
        digits = len(text.lstrip("-"))
        if digits > MAX_INT_DIGITS:
            self._note(f"number with {digits} digits (max {MAX_INT_DIGITS})")
            return 0
        return int(text)

    def parse_float(self, text: str) -> float:
        if len(text) > MAX_NUMBER_CHARS:
            self._note(f"number with {len(text)} characters (max {MAX_NUMBER_CHARS})")
            return 0.0
        value = float(text)
        if not math.isfinite(value):
            self._note(f"number {text} is out of range")
            return 0.0
        return value


_AMBIGUOUS = object()  # the value of a duplicate key: neither of them


def _valid_id(value: Any) -> str | None:
    return value if isinstance(value, str) and ID_RE.fullmatch(value) else None


def _leading_id(text: str) -> str | None:
    """The id when the payload starts with it (``{"id":"..."``): read without parsing the rest."""
    m = _LEADING_ID_RE.match(text)
    return m.group(1) if m else None


def _nesting(text: str) -> tuple[bool, str | None]:
    """(deeper than MAX_DEPTH, the top-level id if one is seen), scanned without recursion.

    Only payloads with more brackets than MAX_DEPTH are scanned; a command is a flat object."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False, None
    depth = deepest = 0
    in_string = escaped = False
    top_id: str | None = None
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
            if depth == 1 and top_id is None and (m := _ID_FIELD_RE.match(text, i)):
                top_id = m.group(1)
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest > MAX_DEPTH, top_id


def _body(payload: bytes) -> dict[str, Any]:
    """The payload as a JSON object with bounded size, depth and numbers and no duplicate key; raises
    :class:`Rejected` with the id whenever it could be read."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        head = payload[:128].decode("utf-8", "replace")
        raise Rejected(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}", _leading_id(head))
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(f"payload is not JSON: {str(exc)[:120]}") from None
    if not text.strip():
        return {}
    too_deep, top_id = _nesting(text)
    if too_deep:
        raise Rejected(f"payload nested deeper than {MAX_DEPTH} levels", top_id)
    dec = _Decoder()
    try:
        body = json.loads(text, object_pairs_hook=dec.pairs, parse_int=dec.parse_int, parse_float=dec.parse_float)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise Rejected(f"payload is not JSON: {str(exc)[:120]}", _leading_id(text)) from None
    if not isinstance(body, dict):
        raise Rejected("payload must be a JSON object")
    if dec.problem is not None:
        raise Rejected(f"payload rejected: {dec.problem}", _valid_id(body.get("id")))
    return body


def _check_age(body: dict[str, Any], cmd_id: str, now_ms: int, max_skew_s: float) -> None:
    t_ms = body["t_ms"]
    if isinstance(t_ms, bool) or not isinstance(t_ms, int | float) or not math.isfinite(t_ms):
        raise Rejected(f"t_ms must be a number in ms, got {str(t_ms)[:40]!r}", cmd_id)
    if not 0 <= t_ms <= 1e15:
        raise Rejected(f"t_ms = {t_ms:g} ms outside 0..1e+15 ms", cmd_id)
    ahead_s = (t_ms - now_ms) / 1000.0
    if ahead_s > max_skew_s:
        raise Rejected(
            f"t_ms is {ahead_s:.0f} s in the future (max clock skew {max_skew_s:g} s, "
            "telemetry.mqtt.command_max_skew_s)",
            cmd_id,
        )
    if -ahead_s > MAX_AGE_S:
        raise Rejected(f"command is {-ahead_s:.0f} s old (max {MAX_AGE_S:.0f} s)", cmd_id)


def _check_expiry(received: Received, cmd_id: str | None, now_ms: int) -> None:
    """MQTT 5: the broker counts the expiry down while it holds a message and drops it at zero; what it
    delivers may still wait behind a busy loop here, so the rest of the expiry runs from its arrival."""
    if received.expiry_s is None or received.received_ms is None:
        return
    late_ms = now_ms - (received.received_ms + received.expiry_s * 1000)
    if late_ms > 0:
        raise Rejected(
            f"message expired {late_ms / 1000:.1f} s before it was handled "
            f"(MQTT 5 message expiry {received.expiry_s} s)",
            cmd_id,
        )


def envelope(name: str, payload: bytes, now_ms: int, max_skew_s: float = DEFAULT_MAX_SKEW_S) -> Command:
    """Check everything but the arguments; the command's ``args`` are the payload without id and t_ms."""
    body = _body(payload)
    cmd_id = _valid_id(body.get("id"))
    if cmd_id is None:
        raise Rejected("id missing or invalid (1-64 of A-Z a-z 0-9 _ . : -)")
    if name not in COMMANDS:
        raise Rejected(f"unknown command {name[:64]!r} (known: {', '.join(COMMANDS)})", cmd_id)
    if "t_ms" in body:
        _check_age(body, cmd_id, now_ms, max_skew_s)
    args = {k: v for k, v in body.items() if k not in ("id", "t_ms")}
    if name == REQUEST_STATE and args:
        raise Rejected(f"unexpected field(s) {', '.join(sorted(args))[:200]} for {name}", cmd_id)
    return Command(name, cmd_id, args)


def answer_id(payload: bytes) -> str | None:
    """The id to answer with, without doing the command: read from the payload's start when it is there (a
    regex on 128 bytes), else by the bounded parse (at most ``MAX_PAYLOAD_BYTES``); None when unreadable."""
    found = _leading_id(payload[:128].decode("utf-8", "replace"))
    if found is not None or len(payload) > MAX_PAYLOAD_BYTES:
        return found
    try:
        return _valid_id(_body(payload).get("id"))
    except Rejected as rej:
        return rej.cmd_id


# -- floods -------------------------------------------------------------------------------------------
class RateLimit:
    """Token buckets per command name (``OTHER_TOPICS`` for any other topic): ``burst`` commands at once,
    refilled at ``per_s``. Thread-safe: paho's thread admits, the event loop takes the reports. Memory:
    one bucket per known command and one more."""

    def __init__(
        self,
        per_s: float = RATE_PER_S,
        burst: int = RATE_BURST,
        report_every_s: float = RATE_REPORT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_s = per_s
        self.burst = burst
        self.report_every_s = report_every_s
        self.clock = clock
        self.limited = 0  # in all, for the uplink's status
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # bucket -> (tokens, when counted, s)
        self._unreported: dict[str, int] = {}
        self._reported_s: float | None = None

    @staticmethod
    def bucket(name: str) -> str:
        return name if name in COMMANDS else OTHER_TOPICS

    def admit(self, name: str) -> bool:
        """Take one token from ``name``'s bucket: False (and counted) when it is empty."""
        key = self.bucket(name)
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.per_s)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return True
            self._buckets[key] = (tokens, now)
            self.limited += 1
            self._unreported[key] = self._unreported.get(key, 0) + 1
            return False

    def reason(self, name: str) -> str:
        what = f"{name[:64]} commands" if self.bucket(name) != OTHER_TOPICS else "messages on other command topics"
        return (
            f"{RATE_LIMITED}: at most {self.burst} {what} at once and {self.per_s:g} per s; "
            "not done: send it again later"
        )

    def report_due(self) -> dict[str, int] | None:
        """Commands limited since the last report, by bucket, when a report is due: the first at once, then
        at most one per ``report_every_s``; None when nothing is due."""
        now = self.clock()
        with self._lock:
            if not self._unreported:
                return None
            if self._reported_s is not None and now - self._reported_s < self.report_every_s:
                return None
            self._reported_s = now
            due, self._unreported = self._unreported, {}
            return due


# -- what the channel remembers between commands ------------------------------------------------------
class Guard:
    """The command channel's memory for the life of the process (it survives reconnects): the clock skew
    bound, the results of the last ``recent_ids`` ids (an id seen again is answered with its first
    result and not done again) and the rate of retained-command reports."""

    def __init__(
        self,
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
        recent_ids: int = RECENT_IDS,
        report_every_s: float = RETAINED_REPORT_S,
    ) -> None:
        self.max_skew_s = max_skew_s
        self.recent_ids = recent_ids
        self.report_every_ms = int(report_every_s * 1000)
        self.recent: OrderedDict[str, Result] = OrderedDict()
        self.duplicates = 0
        self.retained_ignored = 0
        self._reported_ms: int | None = None
        self._unreported = 0

    def recall(self, cmd_id: str) -> Result | None:
        seen = self.recent.get(cmd_id)
        if seen is not None:
            self.recent.move_to_end(cmd_id)
            self.duplicates += 1
        return seen

    def remember(self, cmd_id: str, result: Result) -> None:
        self.recent[cmd_id] = result
        self.recent.move_to_end(cmd_id)
        while len(self.recent) > self.recent_ids:
            self.recent.popitem(last=False)

    def retained_report_due(self, now_ms: int) -> int | None:
        """Count one retained command; when a report is due, how many went unreported before it."""
        self.retained_ignored += 1
        if self._reported_ms is not None and now_ms - self._reported_ms < self.report_every_ms:
            self._unreported += 1
            return None
        self._reported_ms = now_ms
        unreported, self._unreported = self._unreported, 0
        return unreported


# -- the command channel -----------------------------------------------------------------------------
def _run(cmd: Command, ops: Operations, remote: RemoteHandler | None) -> Result:
    if cmd.name == REQUEST_STATE:  # the caller publishes the state
        return Result(cmd.id, cmd.name, ACCEPTED, "state published")
    if cmd.name in REMOTE_COMMANDS:  # audited here: the remote handlers know nothing of the channel
        ok, why = remote.run(cmd.name, cmd.id or "-", cmd.args) if remote else (False, "no remote operations here")
        ops.audit(cmd.name, Source.cloud(cmd.id or "-"), audit_args(cmd.args), ok, why, None if ok else REFUSED)
        return Result(cmd.id, cmd.name, ACCEPTED if ok else REJECTED, why)
    try:
        done = ops.run(OPS[cmd.name], Source.cloud(cmd.id or "-"), cmd.args)
    except OpError as exc:
        return Result(cmd.id, cmd.name, REJECTED, exc.message)
    return Result(cmd.id, cmd.name, ACCEPTED, done.result)


def _ignore_retained(name: str, payload: bytes, ops: Operations, guard: Guard, now_ms: int) -> Result:
    """A retained command is a stored one, replayed on every subscribe (every broker restart): never done."""
    try:
        cmd_id = _valid_id(_body(payload).get("id"))
    except Rejected as rej:
        cmd_id = rej.cmd_id
    unreported = guard.retained_report_due(now_ms)
    if unreported is not None:
        more = f" ({unreported} more since the last report)" if unreported else ""
        ops.audit(name[:64], Source.cloud(cmd_id or "-"), None, False, RETAINED + more, INVALID_ARGUMENT)
    return Result(cmd_id, name[:64], REJECTED, RETAINED)


def handle(
    name: str,
    payload: bytes,
    ops: Operations,
    now_ms: int,
    *,
    guard: Guard | None = None,
    received: Received = LIVE,
    remote: RemoteHandler | None = None,
) -> Result:
    """One command from the command topic ``name``: validated, done through ``ops`` (which evaluates at
    once and records the ``command`` event), answered. Never raises for a bad command.

    ``guard`` is the channel's memory (skew bound, recent ids, retained reports); without one every id is
    new. A retained message is ignored; an id in ``guard.recent`` is answered with its first result, not
    done again and not recorded again."""
    guard = guard or Guard()
    if received.retained:
        return _ignore_retained(name, payload, ops, guard, now_ms)
    try:
        cmd = envelope(name, payload, now_ms, guard.max_skew_s)
        _check_expiry(received, cmd.id, now_ms)
    except Rejected as rej:
        ops.audit(name[:64], Source.cloud(rej.cmd_id or "-"), None, False, rej.reason, INVALID_ARGUMENT)
        return Result(rej.cmd_id, name[:64], REJECTED, rej.reason)
    cmd_id = cmd.id or "-"
    seen = guard.recall(cmd_id)
    if seen is not None:
        return seen
    result = _run(cmd, ops, remote)
    if cmd.name == REQUEST_STATE:
        ops.audit(REQUEST_STATE, Source.cloud(cmd_id), None, True, result.reason)
    guard.remember(cmd_id, result)
    return result


# -- compatibility: validate and execute apart, not audited (the caller records the outcome) ---------
def parse(name: str, payload: bytes, max_current_a: float, remote_clear_allowed: bool, now_ms: int) -> Command:
    """Validate one command with the operations' own rules; raises :class:`Rejected` with the reason."""
    cmd = envelope(name, payload, now_ms)
    if cmd.name == REQUEST_STATE or cmd.name in REMOTE_COMMANDS:
        return cmd
    source = Source.cloud(cmd.id or "-")
    try:
        authorise(OPS[name], source, remote_clear_allowed)
        args = validate(OPS[name], cmd.args, source, max_current_a)
    except OpError as exc:
        raise Rejected(exc.message, cmd.id) from None
    return Command(cmd.name, cmd.id, args.model_dump())
