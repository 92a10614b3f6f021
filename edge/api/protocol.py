"""The local control protocol, version 1: one JSON object per line in each direction.

Request::

    {"v": 1, "id": 7, "cmd": "limit_set", "args": {"amps": 120.0, "duration_s": 1800}}

``v`` (default 1) and ``id`` (echoed back, any JSON value) are optional; ``args`` defaults to ``{}``.

Answer::

    {"v": 1, "id": 7, "ok": true, "data": {...}}
    {"v": 1, "id": 7, "ok": false, "code": "refused", "error": "one line for a human"}

A ``watch`` request is answered by one ``ok`` line per interval until the client closes the
connection. Error codes are a closed set (:data:`CODES`); each maps to one CLI exit code, so a script
reacts to the code and a technician reads the message. docs/CLI.md documents both.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
MAX_LINE_BYTES = 64 * 1024

# CLI exit codes (also documented in docs/CLI.md)
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DOWN, EXIT_REFUSED = 0, 1, 2, 3, 4

# error code -> (meaning, CLI exit code)
CODES: dict[str, tuple[str, int]] = {
    "bad_request": ("not a JSON object, or a field of the wrong type", EXIT_USAGE),
    "unsupported_version": ("the daemon speaks another protocol version", EXIT_USAGE),
    "unknown_command": ("no such command", EXIT_USAGE),
    "invalid_argument": ("an argument is out of range (e.g. above the hardware limit)", EXIT_USAGE),
    "forbidden": ("the peer is not in the group this command needs", EXIT_REFUSED),
    "refused": ("allowed, but not now (condition still present, charging, busy)", EXIT_REFUSED),
    "internal": ("the daemon failed while answering; see its log", EXIT_FAIL),
}


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        assert code in CODES, code
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass
class Request:
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)
    id: Any = None
    v: int = VERSION


def parse_request(line: bytes) -> Request:
    """Decode one request line; raises :class:`ProtocolError` with ``bad_request`` / ``unsupported_version``."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise ProtocolError("bad_request", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "a request is a JSON object")
    v = obj.get("v", VERSION)
    if v != VERSION:
        raise ProtocolError(
            "unsupported_version", f"protocol version {v!r} not supported; this daemon speaks {VERSION}"
        )
    cmd, args = obj.get("cmd"), obj.get("args", {})
    if not isinstance(cmd, str) or not cmd:
        raise ProtocolError("bad_request", "field 'cmd' (string) is required")
    if not isinstance(args, dict):
        raise ProtocolError("bad_request", "field 'args' must be an object")
    return Request(cmd, args, obj.get("id"), v)


def ok(req_id: Any, data: dict[str, Any]) -> dict[str, Any]:
    return {"v": VERSION, "id": req_id, "ok": True, "data": data}


def error(req_id: Any, code: str, message: str) -> dict[str, Any]:
    assert code in CODES, code
    return {"v": VERSION, "id": req_id, "ok": False, "code": code, "error": message}


@dataclass(frozen=True)
class RawJson:
    """A value already encoded as strict JSON (e.g. events spliced from the store's JSON text): put into
    the answer as is, without being parsed into objects first (no garbage for the collector to chase)."""

    text: str


def encode(answer: dict[str, Any]) -> bytes:
    """One line of strict JSON: NaN/inf (an invalid reading) become null, which every parser accepts;
    :class:`RawJson` values are spliced in as they are."""
    raws: dict[str, str] = {}
    # copied (NaN -> null, RawJson -> placeholder) only when needed: a copy of a big answer is garbage
    # the collector must then chase, on the control loop's time too
    clean = _finite(answer, raws) if _needs_copy(answer) else answer
    line = json.dumps(clean, default=str, ensure_ascii=False, allow_nan=False)
    for token, text in raws.items():
        line = line.replace(token, text, 1)
    return line.encode() + b"\n"


def _needs_copy(obj: Any) -> bool:
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(_needs_copy(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_needs_copy(v) for v in obj)
    return isinstance(obj, RawJson)


def _finite(obj: Any, raws: dict[str, str]) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v, raws) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, raws) for v in obj]
    if isinstance(obj, RawJson):
        # a placeholder no other string can equal (control characters and a random nonce), replaced after
        token = f"\x00raw{len(raws)}:{secrets.token_hex(8)}\x00"
        raws[json.dumps(token)] = obj.text
        return token
    return obj


def exit_code(code: str | None) -> int:
    return CODES.get(code or "internal", CODES["internal"])[1]
