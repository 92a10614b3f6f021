"""Limits that keep one local user from starving the daemon through the control socket.

- Connections: at most ``MAX_CONNECTIONS_PER_USER`` open per peer uid and ``MAX_CONNECTIONS`` in all;
  peers that may change things (root, the daemon's user, the admin group) get ``ADMIN_RESERVE`` more in
  all, so a read-only user can never lock an administrator out. The fd budget (systemd
  ``LimitNOFILE=``) is far above these.
- Log lines: :class:`LogLimit` lets one line per key through per interval and counts the rest, so a
  flood (refused connections, accept errors) costs a few lines a minute, not millions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_CONNECTIONS_PER_USER = 16
MAX_CONNECTIONS = 64
ADMIN_RESERVE = 8
LOG_EVERY_S = 60.0


@dataclass
class Connections:
    """Open control connections by peer uid."""

    per_user: int = MAX_CONNECTIONS_PER_USER
    total: int = MAX_CONNECTIONS
    admin_reserve: int = ADMIN_RESERVE
    by_uid: dict[int, int] = field(default_factory=dict)
    refused: int = 0

    @property
    def open(self) -> int:
        return sum(self.by_uid.values())

    def why_not(self, uid: int, user: Callable[[int], str], may_change: Callable[[], bool]) -> str | None:
        """None when a new connection of ``uid`` may be served, else the one-line refusal. The user
        database is asked only when refusing (``user``) or when the total is reached (``may_change``)."""
        mine = self.by_uid.get(uid, 0)
        if mine >= self.per_user:
            return (
                f"too many connections from {user(uid)} (uid {uid}): {mine} open, at most {self.per_user} per user; "
                "close some (edge watch?) and try again"
            )
        n = self.open
        if n >= self.total + self.admin_reserve or (n >= self.total and not may_change()):
            return f"too many connections to the daemon ({n} open, at most {self.total}); try again later"
        return None

    def add(self, uid: int) -> None:
        self.by_uid[uid] = self.by_uid.get(uid, 0) + 1

    def remove(self, uid: int) -> None:
        left = self.by_uid.get(uid, 0) - 1
        if left > 0:
            self.by_uid[uid] = left
        else:
            self.by_uid.pop(uid, None)


class LogLimit:
    """At most one log line per key every ``every_s``; the lines held back are counted and their number is
    added to the next line that goes through ("... (and 4,211 more like it in 60 s)")."""

    def __init__(
        self, logger: logging.Logger, every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless a line of ``key`` went out less than ``every_s`` ago; True if logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            msg += f" (and {held:,} more like it in the last {now - last:.0f} s)" if last is not None else ""
        self.logger.log(level, msg, *args)
        return True

    def held(self, key: str) -> int:
        return self._held.get(key, 0)
