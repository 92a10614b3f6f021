"""The API's own read connection to the telemetry store, used only from the API's worker thread.

`edge events` and `edge diag` read pages of events here, off the control loop: the store's main
connection belongs to the loop and its writer thread has another (edge/telemetry/store.py); in WAL mode
this reader never waits for the writer and the writer never waits for it.
"""

from __future__ import annotations

from typing import Any

from edge.telemetry.store import EVENT, StoreView


class EventReader(StoreView):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._db.execute("PRAGMA query_only = ON")  # this connection never writes

    def events(
        self,
        limit: int,
        before_seq: int | None = None,
        after_seq: int | None = None,
        since_ms: int | None = None,
        newest_first: bool = True,
    ) -> list[tuple[int, int, str]]:
        """At most ``limit`` stored events (seq, t_ms, payload JSON) with ``after_seq < seq < before_seq``
        and ``t_ms >= since_ms``: the newest ones (newest first) or, with ``newest_first=False``, the
        oldest ones (oldest first). Reads through the (kind, seq) index: the cost follows ``limit``."""
        q = "SELECT seq, t_ms, payload FROM records WHERE kind = ?"
        args: list[Any] = [EVENT]
        for cond, value in (("seq < ?", before_seq), ("seq > ?", after_seq), ("t_ms >= ?", since_ms)):
            if value is not None:
                q += f" AND {cond}"
                args.append(value)
        q += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        args.append(limit)
        return [(int(s), int(t), str(p)) for s, t, p in self._db.execute(q, args)]
