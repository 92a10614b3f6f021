"""Store-and-forward on local disk: SQLite in WAL mode, one ordered table of records.

Guarantees:
- Every record (a telemetry interval or an event) gets a sequence number from SQLite's AUTOINCREMENT,
  which never reuses a value, even after deletes and restarts: consumers drop duplicates by ``seq``.
- A record leaves the store only when the uplink has the broker's acknowledgement for it, or when the
  size bound evicts it: the oldest *telemetry* goes first; events go only when no telemetry is left.
- Writes never raise into the control path. A full disk or an I/O error is counted (``write_errors``),
  the record is dropped, and :attr:`Store.degraded` names the error until writes have succeeded for
  ``DEGRADED_HOLD_S``; the daemon reports that as the fault ``telemetry_store_error``. On "disk full" the
  store first evicts old telemetry and retries once, so new events still find room.

All methods are called from the daemon's event-loop thread; nothing here blocks on the network.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
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
TELEMETRY = "telemetry"
EVENT = "event"
DEGRADED_HOLD_S = 30.0  # a write error keeps the fault raised this long after the last failure
CHECK_EVERY = 64        # appends between two checks of the size bound
EVICT_TO = 0.9          # evict down to this fraction of the bound, so eviction is not run per append
FULL_EVICT_ROWS = 64    # telemetry rows dropped to make room when SQLite reports the disk full
BUSY_TIMEOUT_MS = 2000  # the uplink thread's deletes hold the write lock for a few ms at most


@dataclass(frozen=True)
class Record:
    seq: int
    kind: str
    t_ms: int
    payload: dict[str, Any]


@dataclass(frozen=True)
class RawRecord:
    """A record with its payload still as the stored JSON text (the uplink splices it unparsed)."""

    seq: int
    kind: str
    t_ms: int
    payload: str


class _Records:
    """Reading and acknowledging, shared by the writer (Store) and the uplink's own view (StoreView)."""

    _db: sqlite3.Connection

    def pending(self, after_seq: int = 0, limit: int = 500, kind: str | None = None) -> list[Record]:
        q = "SELECT seq, kind, t_ms, payload FROM records WHERE seq > ?"
        args: list[Any] = [after_seq]
        if kind:
            q += " AND kind = ?"
            args.append(kind)
        q += " ORDER BY seq LIMIT ?"
        args.append(limit)
        return [Record(s, k, t, json.loads(p)) for s, k, t, p in self._db.execute(q, args)]

    def pending_raw(self, after_seq: int, upto_seq: int | None, limit: int) -> list[RawRecord]:
        """Records with ``after_seq < seq <= upto_seq`` in seq order, payload unparsed."""
        q = "SELECT seq, kind, t_ms, payload FROM records WHERE seq > ?"
        args: list[Any] = [after_seq]
        if upto_seq is not None:
            q += " AND seq <= ?"
            args.append(upto_seq)
        q += " ORDER BY seq LIMIT ?"
        args.append(limit)
        return [RawRecord(*row) for row in self._db.execute(q, args)]

    def delete(self, seqs: list[int]) -> None:
        """Forget acknowledged records. A failure only means they are sent again (same seq)."""
        if not seqs:
            return
        try:
            # one transaction (one hold of the write lock) for the whole list; 500 per statement keeps
            # under SQLite's host-parameter limit
            self._db.execute("BEGIN")
            for i in range(0, len(seqs), 500):
                chunk = seqs[i:i + 500]
                self._db.execute(f"DELETE FROM records WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            log.warning("could not delete %d acknowledged records (%s): they will be sent again", len(seqs), exc)

    def backlog(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def last_seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        return int(row[0]) if row else 0



class StoreView(_Records):
    """A second connection to the same store for the uplink's own thread (WAL: readers never block the
    writer; an acknowledged delete holds the write lock for one short statement)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def close(self) -> None:
        self._db.close()


class Store(_Records):
    def __init__(self, data_dir: str, max_mb: float = 256.0, min_free_mb: float = 0.0) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self.data_dir = data_dir
        self.min_free_bytes = int(min_free_mb * 1024 * 1024)
        self.dropped_low_disk = 0
        self._free_checked_t = -1e9
        self._disk_low = False
        self.path = os.path.join(data_dir, "telemetry.sqlite3")
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.write_errors = 0
        self.evicted = 0            # telemetry + events dropped by the size bound
        self.evicted_events = 0
        self.last_error: str | None = None
        self._last_error_t = -1e9
        self._appends = 0
        self.on_append: list[Callable[[int], None]] = []  # called with the new seq (uplink wake-up)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL: a committed transaction survives a process kill; a power cut may lose the
        # last few, never corrupt the file.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.executescript(SCHEMA)
        self.page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])

    # -- writing -------------------------------------------------------------------------------------
    def append(self, kind: str, t_ms: int, payload: dict[str, Any]) -> int | None:
        """Add one record; returns its seq, or None when the write failed (counted, never raised)."""
        try:
            text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
        except ValueError as exc:  # NaN/inf have no JSON form: a bug upstream, not a disk problem
            self._failed(f"record not JSON-safe: {exc}")
            return None
        if kind == "telemetry" and self._disk_nearly_full():
            # Keep the last of the space for events (faults, commands): they matter more than samples.
            self.dropped_low_disk += 1
            return None
        seq = self._insert(kind, t_ms, text)
        if seq is None:
            return None
        self._appends += 1
        if self._appends % CHECK_EVERY == 0:
            self.enforce_bound()
        for cb in self.on_append:
            cb(seq)
        return seq

    def _insert(self, kind: str, t_ms: int, text: str) -> int | None:
        sql = "INSERT INTO records(kind, t_ms, payload) VALUES (?, ?, ?)"
        try:
            return int(self._db.execute(sql, (kind, t_ms, text)).lastrowid or 0)
        except sqlite3.Error as exc:
            self._failed(str(exc))  # counted and reported even if eviction makes room
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                return None
            if self._evict_oldest(FULL_EVICT_ROWS) == 0:
                return None
            try:
                return int(self._db.execute(sql, (kind, t_ms, text)).lastrowid or 0)
            except sqlite3.Error as exc2:
                self._failed(str(exc2))
                return None

    def _disk_nearly_full(self) -> bool:
        """Free space below ``min_free_mb``, checked at most once a second (statvfs is a syscall)."""
        if self.min_free_bytes <= 0:
            return False
        now = time.monotonic()
        if now - self._free_checked_t >= 1.0:
            self._free_checked_t = now
            try:
                st = os.statvfs(self.data_dir)
                free = st.f_bavail * st.f_frsize
            except OSError as exc:
                self._failed(f"cannot read free disk space: {exc}")
                return False
            self._disk_low = free < self.min_free_bytes
            if self._disk_low:
                self._failed(f"disk nearly full: {free / 1048576:.1f} MB free, below "
                             f"{self.min_free_bytes / 1048576:.0f} MB; telemetry dropped, events kept")
        return self._disk_low

    def _failed(self, why: str) -> None:
        self.write_errors += 1
        self.last_error = why
        self._last_error_t = time.monotonic()
        if self.write_errors in (1, 10, 100) or self.write_errors % 1000 == 0:
            log.error("telemetry store write failed (%s): record dropped, control continues "
                      "(%d failures so far)", why, self.write_errors)

    @property
    def degraded(self) -> str | None:
        """The last write error while writes fail (and for DEGRADED_HOLD_S after), else None."""
        if self.last_error is not None and time.monotonic() - self._last_error_t < DEGRADED_HOLD_S:
            return self.last_error
        return None

    # -- size bound ----------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self.page_size

    def enforce_bound(self) -> int:
        """Evict the oldest telemetry (then events) until the store is below EVICT_TO of its bound."""
        dropped = 0
        try:
            used = self.used_bytes()
            while used > self.max_bytes and (n := self.backlog()) > 0:
                per_row = max(1, used // n)
                rows = max(1, int((used - self.max_bytes * EVICT_TO) // per_row) + 1)
                got = self._evict_oldest(rows)
                if got == 0:
                    break
                dropped += got
                used = self.used_bytes()
        except sqlite3.Error as exc:
            self._failed(f"size bound: {exc}")
        if dropped:
            log.warning("telemetry store above %.0f MB: dropped the %d oldest records (not yet uplinked)",
                        self.max_bytes / 1048576, dropped)
        return dropped

    def _evict_oldest(self, rows: int) -> int:
        """Delete up to ``rows`` oldest telemetry records; oldest events only when no telemetry is left."""
        try:
            cur = self._db.execute(
                "DELETE FROM records WHERE seq IN (SELECT seq FROM records WHERE kind = ? ORDER BY seq LIMIT ?)",
                (TELEMETRY, rows))
            got = cur.rowcount
            if got == 0:
                cur = self._db.execute(
                    "DELETE FROM records WHERE seq IN (SELECT seq FROM records ORDER BY seq LIMIT ?)", (rows,))
                got = cur.rowcount
                self.evicted_events += got
        except sqlite3.Error as exc:
            self._failed(f"eviction: {exc}")
            return 0
        self.evicted += got
        return int(got)

    def stats(self) -> dict[str, Any]:
        return {"backlog": self.backlog(), "last_seq": self.last_seq(), "write_errors": self.write_errors,
                "evicted": self.evicted, "evicted_events": self.evicted_events, "degraded": self.degraded,
                "dropped_low_disk": self.dropped_low_disk}

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()

