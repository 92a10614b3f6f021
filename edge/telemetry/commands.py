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
=====================  ===============  =====================

No command can raise anything above the local configuration: a current limit above
``limits.max_output_current_a`` is rejected, never clamped, so the backend learns the real bound. A
cloud command lifts only what the cloud set: a local stop or limit is lifted only locally, and the
rejection names the local holder.

Command payload (JSON object): ``{"id": "<correlation id>", ...arguments}``; optional ``t_ms`` (UTC ms when
the backend sent it): commands older than ``MAX_AGE_S`` are rejected, so a persistent session
does not replay an hour-old limit after an outage.

:func:`handle` is the command channel's entry point. :func:`parse` and :func:`execute` are kept with
their old signatures for callers that record the outcome themselves (they do not audit).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from edge.operator import Source
from edge.ops import CLOUD_MAX_LIMIT_S, INVALID_ARGUMENT, Operations, OpError, authorise, validate

MAX_PAYLOAD_BYTES = 4096
MAX_AGE_S = 60.0
MAX_LIMIT_DURATION_S = CLOUD_MAX_LIMIT_S
ID_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")  # whole string (fullmatch): "id\n" is not an id
OPS = {
    "set-current-limit": "limit_set",
    "clear-current-limit": "limit_clear",
    "stop": "stop",
    "resume": "resume",
    "clear-fault": "clear",
}
REQUEST_STATE = "request-state"
COMMANDS = (*OPS, REQUEST_STATE)
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
def _body(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejected(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        body = json.loads(payload.decode("utf-8")) if payload.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise Rejected(f"payload is not JSON: {str(exc)[:120]}") from None
    if not isinstance(body, dict):
        raise Rejected("payload must be a JSON object")
    return body


def _check_age(body: dict[str, Any], cmd_id: str, now_ms: int) -> None:
    t_ms = body["t_ms"]
    if isinstance(t_ms, bool) or not isinstance(t_ms, int | float) or not math.isfinite(t_ms):
        raise Rejected(f"t_ms must be a number in ms, got {str(t_ms)[:40]!r}", cmd_id)
    if not 0 <= t_ms <= 1e15:
        raise Rejected(f"t_ms = {t_ms:g} ms outside 0..1e+15 ms", cmd_id)
    age_s = (now_ms - t_ms) / 1000.0
    if age_s > MAX_AGE_S:
        raise Rejected(f"command is {age_s:.0f} s old (max {MAX_AGE_S:.0f} s)", cmd_id)


def envelope(name: str, payload: bytes, now_ms: int) -> Command:
    """Check everything but the arguments; the command's ``args`` are the payload without id and t_ms."""
    body = _body(payload)
    cmd_id = body.get("id")
    if not isinstance(cmd_id, str) or not ID_RE.fullmatch(cmd_id):
        raise Rejected("id missing or invalid (1-64 of A-Z a-z 0-9 _ . : -)")
    if name not in COMMANDS:
        raise Rejected(f"unknown command {name[:64]!r} (known: {', '.join(COMMANDS)})", cmd_id)
    if "t_ms" in body:
        _check_age(body, cmd_id, now_ms)
    args = {k: v for k, v in body.items() if k not in ("id", "t_ms")}
    if name == REQUEST_STATE and args:
        raise Rejected(f"unexpected field(s) {', '.join(sorted(args))[:200]} for {name}", cmd_id)
    return Command(name, cmd_id, args)


# -- the command channel -----------------------------------------------------------------------------
def _run(cmd: Command, ops: Operations) -> Result:
    if cmd.name == REQUEST_STATE:  # the caller publishes the state
        return Result(cmd.id, cmd.name, ACCEPTED, "state published")
    try:
        done = ops.run(OPS[cmd.name], Source.cloud(cmd.id or "-"), cmd.args)
    except OpError as exc:
        return Result(cmd.id, cmd.name, REJECTED, exc.message)
    return Result(cmd.id, cmd.name, ACCEPTED, done.result)


def handle(name: str, payload: bytes, ops: Operations, now_ms: int) -> Result:
    """One command from the command topic ``name``: validated, done through ``ops`` (which evaluates at
    once and records the ``command`` event), answered. Never raises for a bad command."""
    try:
        cmd = envelope(name, payload, now_ms)
    except Rejected as rej:
        ops.audit(name[:64], Source.cloud(rej.cmd_id or "-"), None, False, rej.reason, INVALID_ARGUMENT)
        return Result(rej.cmd_id, name[:64], REJECTED, rej.reason)
    result = _run(cmd, ops)
    if cmd.name == REQUEST_STATE:
        ops.audit(REQUEST_STATE, Source.cloud(cmd.id or "-"), None, True, result.reason)
    return result


# -- compatibility: validate and execute apart, not audited (the caller records the outcome) ---------
def parse(name: str, payload: bytes, max_current_a: float, remote_clear_allowed: bool, now_ms: int) -> Command:
    """Validate one command with the operations' own rules; raises :class:`Rejected` with the reason."""
    cmd = envelope(name, payload, now_ms)
    if cmd.name == REQUEST_STATE:
        return cmd
    source = Source.cloud(cmd.id or "-")
    try:
        authorise(OPS[name], source, remote_clear_allowed)
        args = validate(OPS[name], cmd.args, source, max_current_a)
    except OpError as exc:
        raise Rejected(exc.message, cmd.id) from None
    return Command(cmd.name, cmd.id, args.model_dump())
