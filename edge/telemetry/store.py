"""Store-and-forward on local disk: SQLite in WAL mode, one ordered table of records.

Every record (a telemetry interval or an event) gets a sequence number from SQLite's AUTOINCREMENT,
which never reuses a value, even after deletes and restarts: consumers drop duplicates by ``seq``.
A record leaves the store only when the uplink has the broker's acknowledgement for it.

Writes never raise into the control path: a full disk or an I/O error is counted and reported
(``write_errors``) and the record is dropped from memory, never blocking control.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,            -- 'telemetry' or 'event'
    t_ms INTEGER NOT NULL,         -- UTC milliseconds since the epoch
    payload TEXT NOT NULL          -- JSON
);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind, seq);
"""


@dataclass(frozen=True)
class Record:
    seq: int
    kind: str
    t_ms: int
    payload: dict[str, Any]


class Store:
    def __init__(self, data_dir: str, max_mb: float = 256.0) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self.path = os.path.join(data_dir, "telemetry.sqlite3")
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.write_errors = 0
        self.evicted = 0
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL: a committed transaction survives a process kill; a power cut may lose the
        # last few, never corrupt the file.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def append(self, kind: str, t_ms: int, payload: dict[str, Any]) -> int | None:
        """Add one record; returns its seq, or None when the write failed (counted, never raised)."""
        try:
            cur = self._db.execute("INSERT INTO records(kind, t_ms, payload) VALUES (?, ?, ?)",
                                   (kind, t_ms, json.dumps(payload, separators=(",", ":"))))
            return int(cur.lastrowid or 0)
        except sqlite3.Error as exc:
            self.write_errors += 1
            log.error("telemetry store write failed (%s): record dropped, control continues", exc)
            return None

    def pending(self, after_seq: int = 0, limit: int = 500, kind: str | None = None) -> list[Record]:
        q = "SELECT seq, kind, t_ms, payload FROM records WHERE seq > ?"
        args: list[Any] = [after_seq]
        if kind:
            q += " AND kind = ?"
            args.append(kind)
        q += " ORDER BY seq LIMIT ?"
        args.append(limit)
        return [Record(s, k, t, json.loads(p)) for s, k, t, p in self._db.execute(q, args)]

    def delete(self, seqs: list[int]) -> None:
        if seqs:
            self._db.executemany("DELETE FROM records WHERE seq = ?", [(s,) for s in seqs])

    def backlog(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def last_seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
