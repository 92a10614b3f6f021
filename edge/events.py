"""The event log: every event goes to the journal, to the store (and so, in order, to the cloud) and to a
bounded in-memory list that `edge events` reads after the uplink has delivered (and the store deleted) it.

Events are never dropped by this module: a store that cannot take one keeps it in its writer queue (see
edge/telemetry/store.py); the in-memory copy carries a negative placeholder seq until then.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("edge.events")
RECENT_EVENTS = 1000  # kept in memory for `edge events` (also the API's most per request)


class EventStore(Protocol):
    def append(self, kind: str, t_ms: int, payload: dict[str, Any]) -> int | None: ...


class EventLog:
    """``emit(kind, name, data)``: the one event sink every component is given."""

    def __init__(self, store: EventStore, wall_ms: Callable[[], int], keep: int = RECENT_EVENTS) -> None:
        self.store = store
        self.wall_ms = wall_ms
        # compact JSON (~200 B each instead of ~460 B as dicts): a thousand of them cost little memory
        self.recent: deque[str] = deque(maxlen=keep)

    def emit(self, kind: str, name: str, data: dict[str, Any]) -> None:
        level = logging.WARNING if kind == "fault_raised" else logging.INFO
        detail = data.get("detail") or data.get("reason") or ""
        log.log(level, "%s %s%s", kind, name, f": {detail}" if detail else "")
        t_ms = self.wall_ms()
        payload = {"kind": kind, "name": name, **data}
        seq = self.store.append("event", t_ms, payload)
        self.recent.append(
            json.dumps(
                {"seq": seq if seq is not None else -len(self.recent) - 1, "t_ms": t_ms, **payload},
                separators=(",", ":"),
                default=str,
            )
        )
