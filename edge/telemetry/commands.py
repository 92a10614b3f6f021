"""Cloud commands: validate, execute against the controller, answer accepted/rejected with a reason.

Validation is pure (:func:`parse`); :func:`execute` is the only place that touches the controller. No
command can raise anything above the local configuration: a current limit above
``limits.max_output_current_a`` is rejected, never clamped, so the backend learns the real bound.
A stop issued locally (CLI) can only be lifted locally: cloud ``resume`` lifts only a cloud stop.

Command payload (JSON object): ``{"id": "<correlation id>", ...arguments}``; optional ``t_ms`` (UTC ms when
the backend sent it): commands older than ``MAX_AGE_S`` are rejected, so a persistent session
does not replay an hour-old limit after an outage.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

MAX_PAYLOAD_BYTES = 4096
MAX_AGE_S = 60.0
MAX_LIMIT_DURATION_S = 86400.0
ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
COMMANDS = ("set-current-limit", "clear-current-limit", "stop", "resume", "clear-fault", "request-state")
ACCEPTED = "accepted"
REJECTED = "rejected"


class ControllerLike(Protocol):
    stopped_by: str | None

    def set_external_limit(self, amps: float, duration_s: float | None, source: str) -> None: ...
    def clear_external_limit(self) -> None: ...
    def stop(self, source: str) -> None: ...
    def resume(self) -> None: ...
    def request_clear(self, fault: str) -> tuple[bool, str]: ...


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


def _number(d: dict[str, Any], key: str, lo: float, hi: float, unit: str, cmd_id: str | None) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise Rejected(f"{key} must be a number in {unit}, got {v!r}", cmd_id)
    if not lo <= v <= hi:
        raise Rejected(f"{key} = {v:g} {unit} outside {lo:g}..{hi:g} {unit}", cmd_id)
    return float(v)


def parse(name: str, payload: bytes, max_current_a: float, remote_clear_allowed: bool, now_ms: int) -> Command:
    """Validate one command; raises :class:`Rejected` with a reason a backend engineer can act on."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejected(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        body = json.loads(payload.decode("utf-8")) if payload.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected(f"payload is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Rejected("payload must be a JSON object")
    cmd_id = body.get("id")
    if not isinstance(cmd_id, str) or not ID_RE.match(cmd_id):
        raise Rejected("id missing or invalid (1-64 of A-Z a-z 0-9 _ . : -)")
    if name not in COMMANDS:
        raise Rejected(f"unknown command {name!r} (known: {', '.join(COMMANDS)})", cmd_id)
    if "t_ms" in body:
        t_ms = _number(body, "t_ms", 0, 1e15, "ms", cmd_id)
        age_s = (now_ms - t_ms) / 1000.0
        if age_s > MAX_AGE_S:
            raise Rejected(f"command is {age_s:.0f} s old (max {MAX_AGE_S:.0f} s)", cmd_id)
    allowed = {"id", "t_ms"} | {
        "set-current-limit": {"amps", "duration_s"},
        "stop": {"reason"},
        "clear-fault": {"fault"},
    }.get(name, set())
    extra = sorted(set(body) - allowed)
    if extra:
        raise Rejected(f"unexpected field(s) {', '.join(extra)} for {name}", cmd_id)
    args: dict[str, Any] = {}
    if name == "set-current-limit":
        amps = _number(body, "amps", 0.0, math.inf, "A", cmd_id)
        if amps > max_current_a:
            raise Rejected(f"above hardware limit {max_current_a:g} A", cmd_id)
        args = {"amps": amps, "duration_s": _number(body, "duration_s", 1.0, MAX_LIMIT_DURATION_S, "s", cmd_id)}
    elif name == "clear-fault":
        if not remote_clear_allowed:
            raise Rejected("remote clears disabled (limits.remote_clear_allowed = false)", cmd_id)
        fault = body.get("fault")
        if not isinstance(fault, str) or not re.match(r"^[A-Za-z0-9_.\-]{1,64}$", fault):
            raise Rejected("fault must name a latched fault", cmd_id)
        args = {"fault": fault}
    elif name == "stop":
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 200:
            raise Rejected("reason must be a string of at most 200 characters", cmd_id)
        args = {"reason": reason}
    return Command(name, cmd_id, args)


def execute(cmd: Command, ctl: ControllerLike) -> Result:
    """Apply a validated command. ``request-state`` is answered by the caller publishing state."""
    source = f"cloud:{cmd.id}"

    def ok(reason: str) -> Result:
        return Result(cmd.id, cmd.name, ACCEPTED, reason)

    if cmd.name == "set-current-limit":
        ctl.set_external_limit(cmd.args["amps"], cmd.args["duration_s"], source)
        return ok(f"limit {cmd.args['amps']:g} A for {cmd.args['duration_s']:g} s")
    if cmd.name == "clear-current-limit":
        ctl.clear_external_limit()
        return ok("external limit cleared")
    if cmd.name == "stop":
        ctl.stop(source)
        return ok("stopped")
    if cmd.name == "resume":
        by = ctl.stopped_by
        if by is not None and not by.startswith("cloud:"):
            return Result(cmd.id, cmd.name, REJECTED, f"stopped locally by {by}: resume locally")
        ctl.resume()
        return ok("resumed" if by else "was not stopped")
    if cmd.name == "clear-fault":
        cleared, why = ctl.request_clear(cmd.args["fault"])
        return Result(cmd.id, cmd.name, ACCEPTED if cleared else REJECTED, why)
    if cmd.name == "request-state":
        return ok("state published")
    return Result(cmd.id, cmd.name, REJECTED, "not implemented")
