"""Store-and-forward on local disk: SQLite in WAL mode, one ordered table of records.

Guarantees:
- Every record (a telemetry interval or an event) gets its sequence number from :meth:`Store.append`:
  the next after the highest seq ever written. The table is declared AUTOINCREMENT only so that SQLite
  keeps that high-water mark (``sqlite_sequence``) across deletes and restarts: a seq is never reused,
  and consumers drop duplicates by ``seq``.
- A record leaves the store only when the uplink has the broker's acknowledgement for it, or when the
  size bound evicts it: the oldest *telemetry* goes first; events go only when no telemetry is left.
- Writes never raise into the control path. A full disk or an I/O error is counted (``write_errors``)
  and :attr:`Store.degraded` names the error until writes have succeeded for ``DEGRADED_HOLD_S``; the
  daemon reports that as the fault ``telemetry_store_error``. On "disk full" the store first evicts old
  telemetry and retries once, so new events still find room. What happens to a record that still cannot
  be written depends on the mode (below): the writer thread holds it and retries; a direct append drops
  it (``append`` returns None). Below ``min_free_mb`` of free disk, new telemetry is dropped at once
  (``dropped_low_disk``) and events are still written.
- Eviction needs disk itself: in WAL mode a DELETE is written to the WAL first, and on a really full file
  system it fails like the insert did. So the store keeps a reserve file (``telemetry.reserve``,
  ``reserve_mb``) next to the database and deletes it on the first "disk full", which gives the WAL room
  for the eviction, the retry and a checkpoint; the evicted rows' pages are then reused by new records.
  The reserve is made again once the file system has room for it twice over (checked at most every
  ``RESERVE_CHECK_S``).
- Counters say what they count: ``write_errors`` is failed write attempts (a held record retried ten times
  is ten), ``records_lost`` is records that were never written (dropped from the held queue, a failed
  direct append, not JSON-safe, still held at close), ``evicted`` is records deleted by the size bound or
  to make room, ``dropped_low_disk`` is telemetry not stored below ``min_free_mb``.

Threads: with ``background=True`` (the daemon) :meth:`Store.append` only encodes the record, gives it
its seq and queues it; a writer thread with its own SQLite connection commits what is queued in one
transaction. The event loop then never waits for SQLite's write lock, which the uplink thread's deletes
hold now and then (docs/RELIABILITY.md: INSERTs on the loop stalled the safety reaction up to 100 ms). A
record is *recorded* once committed, a few milliseconds after ``append``; a kill in between loses only
that tail, never a seq in the middle. A failed commit is kept in memory, in seq order, and retried every
``RETRY_S``; beyond ``MAX_HELD`` held records the oldest telemetry is dropped (counted, logged: a gap in
seq). With ``background=False`` (tests, tools) ``append`` commits before it returns. Reads run on the
caller's connection; in WAL mode they never wait for a writer.

Time (the degraded hold, the free-space check, the retry pause) is read from the injected ``clock``
(seconds, monotonic; default ``time.monotonic``), so a simulated clock can drive it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,            -- 'telemetry' or 'event'
    t_ms INTEGER NOT NULL,         -- UTC milliseconds since the epoch
    payload TEXT NOT NULL          -- JSON text, or a v2 compact record (MessagePack, stored as a BLOB)
);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind, seq);
-- v2 aliases of signal names: given once, never reused, so every stored compact record stays readable
CREATE TABLE IF NOT EXISTS signals (
    alias INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    unit TEXT NOT NULL,
    exp INTEGER NOT NULL           -- values are integers x 10**exp
);
"""
TELEMETRY = "telemetry"
EVENT = "event"
DEGRADED_HOLD_S = 30.0  # a write error keeps the fault raised this long after the last failure
CHECK_EVERY = 64  # appends between two checks of the size bound
EVICT_TO = 0.9  # evict down to this fraction of the bound, so eviction is not run per append
FULL_EVICT_ROWS = 64  # telemetry rows dropped to make room when SQLite reports the disk full
BUSY_TIMEOUT_MS = 2000  # the uplink thread's deletes hold the write lock for a few ms at most
WRITE_BATCH = 500  # records committed in one transaction by the writer thread, at most
RETRY_S = 0.5  # a failed commit is retried this often (disk full: until there is room again)
MAX_HELD = 1000  # records kept in memory while commits fail (~8 MB of 40-signal intervals)
CLOSE_WAIT_S = 5.0  # longest wait for the writer thread to commit what is queued at close
RESERVE_MB = 8.0  # disk kept back for the eviction on a full disk: the WAL grows ~4 MB between checkpoints
RESERVE_FILE = "telemetry.reserve"
RESERVE_CHECK_S = 10.0  # how often a released reserve is tried again
ROW_OVERHEAD_BYTES = 40  # SQLite row + kind index entry besides the payload (measured, bench/telemetry_bytes.py)


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
    payload: str | bytes  # JSON text, or a v2 compact record


@dataclass(frozen=True)
class SignalRow:
    alias: int
    name: str
    unit: str
    exp: int


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One explicit transaction (one hold of the write lock); rolled back if anything in it fails."""
    db.execute("BEGIN")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def _count(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])


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
        return [Record(s, k, t, _parsed(p)) for s, k, t, p in self._db.execute(q, args)]

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
            # one transaction for the whole list; 500 per statement keeps under SQLite's parameter limit
            with _transaction(self._db):
                for i in range(0, len(seqs), 500):
                    chunk = seqs[i : i + 500]
                    self._db.execute(f"DELETE FROM records WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
        except sqlite3.Error as exc:
            log.warning("could not delete %d acknowledged records (%s): they will be sent again", len(seqs), exc)

    def backlog(self) -> int:
        return _count(self._db)

    def signals(self) -> list[SignalRow]:
        """The v2 alias table, by alias."""
        rows = self._db.execute("SELECT alias, name, unit, exp FROM signals ORDER BY alias")
        return [SignalRow(*row) for row in rows]

    def last_seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        return int(row[0]) if row else 0


def _parsed(p: str | bytes) -> dict[str, Any]:
    if isinstance(p, bytes):  # a v2 compact record
        out: dict[str, Any] = msgpack.unpackb(p, raw=False, strict_map_key=False)
        return out
    out = json.loads(p)
    return out


class StoreView(_Records):
    """A second connection to the same store for the uplink's own thread (WAL: readers never block the
    writer; an acknowledged delete holds the write lock for one short statement)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def close(self) -> None:
        self._db.close()


def _shed(held: deque[_Row], limit: int) -> int:
    """Drop records from ``held`` beyond ``limit``: the oldest telemetry first, events only when no
    telemetry is left. Returns how many were dropped (their seqs are then missing at the consumer)."""
    excess = len(held) - limit
    if excess <= 0:
        return 0
    keep: deque[_Row] = deque()
    dropped = 0
    for row in held:
        if dropped < excess and row[1] == TELEMETRY:
            dropped += 1
        else:
            keep.append(row)
    while dropped < excess and keep:
        keep.popleft()
        dropped += 1
    held.clear()
    held.extend(keep)
    log.error("telemetry store: %d records dropped, writes have failed for too long", dropped)
    return dropped


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL: a committed transaction survives a process kill; a power cut may lose the
    # last few, never corrupt the file.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return db


_Row = tuple[int, str, int, str | bytes]  # seq, kind, t_ms, payload (JSON text or compact record)


class Store(_Records):
    def __init__(
        self,
        data_dir: str,
        max_mb: float = 256.0,
        min_free_mb: float = 0.0,
        background: bool = False,
        clock: Callable[[], float] = time.monotonic,
        reserve_mb: float = RESERVE_MB,
    ) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self._clock = clock
        self.data_dir = data_dir
        self.min_free_bytes = int(min_free_mb * 1024 * 1024)
        self.dropped_low_disk = 0
        self._free_checked_t = -1e9
        self._disk_low = False
        self.path = os.path.join(data_dir, "telemetry.sqlite3")
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.write_errors = 0  # failed write attempts
        self.records_lost = 0  # records never written
        self.evicted = 0  # telemetry + events dropped by the size bound
        self.evicted_events = 0
        self.last_error: str | None = None
        self._last_error_t = -1e9
        self._appends = 0
        self.on_append: list[Callable[[int], None]] = []  # called with the new seq (uplink wake-up)
        self.reserve_path = os.path.join(data_dir, RESERVE_FILE)
        self.reserve_bytes = int(reserve_mb * 1024 * 1024)
        self.reserve_released = 0  # times the reserve was given up to make room
        self._reserve_checked_t = -1e9
        self._make_reserve()
        self.before_close: list[Callable[[], None]] = []  # last appends (the recorder's record in progress)
        self.bytes_written = 0  # payload + row overhead committed since open: the rate for days_left
        self._opened_t = clock()
        self._db = _connect(self.path)
        self._db.executescript(SCHEMA)
        self.page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        row = self._db.execute("SELECT MAX(seq) FROM records").fetchone()
        # seqs are given out here, not by AUTOINCREMENT, so append() can return one before the commit
        self._next_seq = max(_Records.last_seq(self), int(row[0] or 0)) + 1
        self._aliases = {r.name: r.alias for r in self.signals()}
        self._wdb = self._db  # the connection that writes
        self._queue: queue.SimpleQueue[_Row | None] | None = None
        self._unwritten = 0
        self._cond = threading.Condition()
        self._writer: threading.Thread | None = None
        if background:
            self._wdb = _connect(self.path)
            self._queue = queue.SimpleQueue()
            self._writer = threading.Thread(target=self._write_main, name="store-writer", daemon=True)
            self._writer.start()

    # -- writing -------------------------------------------------------------------------------------
    def alias(self, name: str, unit: str, exp: int) -> int:
        """The v2 alias of a signal, given once and kept (committed at once: a new signal is rare, and its
        alias must be on disk before any record that uses it)."""
        got = self._aliases.get(name)
        if got is None:
            got = max(self._aliases.values(), default=0) + 1
            try:
                with _transaction(self._db):
                    self._db.execute(
                        "INSERT INTO signals(alias, name, unit, exp) VALUES (?, ?, ?, ?)", (got, name, unit, exp)
                    )
            except sqlite3.Error as exc:
                self._failed(f"signal alias: {exc}")
            self._aliases[name] = got
        return got

    @property
    def alias_count(self) -> int:
        return len(self._aliases)

    def append(self, kind: str, t_ms: int, payload: dict[str, Any] | bytes) -> int | None:
        """Add one record (a dict stored as JSON, or a v2 compact record as it is); returns its seq, or None
        when it was dropped (counted, never raised)."""
        text: str | bytes
        if isinstance(payload, bytes):
            text = payload
        else:
            try:
                text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
            except ValueError as exc:  # NaN/inf have no JSON form: a bug upstream, not a disk problem
                self._failed(f"record not JSON-safe: {exc}")
                self.records_lost += 1
                return None
        if kind == "telemetry" and self._disk_nearly_full():
            # Keep the last of the space for events (faults, commands): they matter more than samples.
            self.dropped_low_disk += 1
            return None
        seq = self._next_seq
        self._next_seq += 1
        if self._queue is not None:
            with self._cond:
                self._unwritten += 1
            self._queue.put((seq, kind, t_ms, text))
            return seq
        if not self._commit([(seq, kind, t_ms, text)]):
            self._next_seq = seq  # nothing was written: the seq is given to the next record
            self.records_lost += 1
            return None
        return seq

    def flush(self, timeout: float = CLOSE_WAIT_S) -> bool:
        """Wait until everything appended is committed (or dropped); True if it was in time."""
        with self._cond:
            return self._cond.wait_for(lambda: self._unwritten == 0, timeout)

    def _write_main(self) -> None:
        """Commit queued records in seq order. A failed commit (disk full, I/O error) is kept and retried
        every RETRY_S, newer records queue behind it: nothing is skipped, so no seq goes missing unless
        more than MAX_HELD records pile up (then the oldest telemetry goes first, counted and logged)."""
        held: deque[_Row] = deque()
        next_try = 0.0
        while True:
            stop = self._collect(held, max(0.0, next_try - self._clock()) if held else None)
            # at close: one last attempt for what is held
            if (stop or self._clock() >= next_try) and not self._commit_held(held):
                next_try = self._clock() + RETRY_S
            if stop:
                if held:
                    log.error("telemetry store closed with %d records not written (%s)", len(held), self.last_error)
                    self.records_lost += len(held)
                    self._written(len(held))
                return

    def _collect(self, held: deque[_Row], wait_s: float | None) -> bool:
        """Move what is queued to ``held``, waiting up to ``wait_s`` for the first; True at close."""
        assert self._queue is not None
        try:
            item = self._queue.get(timeout=wait_s)
            while item is not None:
                held.append(item)
                item = self._queue.get_nowait()
            return True
        except queue.Empty:
            return False

    def _commit_held(self, held: deque[_Row]) -> bool:
        """Commit ``held`` oldest first, WRITE_BATCH per transaction; False when a commit failed (what
        failed stays held, beyond MAX_HELD the oldest telemetry is dropped)."""
        while held:
            batch = [held[i] for i in range(min(WRITE_BATCH, len(held)))]
            if not self._commit(batch):
                shed = _shed(held, MAX_HELD)
                self.records_lost += shed
                self._written(shed)
                return False
            for _ in batch:
                held.popleft()
            self._written(len(batch))
        return True

    def _written(self, n: int) -> None:
        """``n`` queued records are done with (committed or dropped)."""
        if n:
            with self._cond:
                self._unwritten -= n
                self._cond.notify_all()

    def _commit(self, rows: list[_Row]) -> bool:
        """Write ``rows`` in one transaction; on "disk full" give up the reserve, evict old telemetry and
        retry once."""
        ok = self._insert(rows)
        if ok is None:
            self._release_reserve()
            if self._evict_oldest(FULL_EVICT_ROWS) > 0:
                ok = self._insert(rows)
        if not ok:
            return False
        self._keep_reserve()
        self._appends += len(rows)
        self.bytes_written += sum(len(r[3]) + ROW_OVERHEAD_BYTES for r in rows)
        if self._appends // CHECK_EVERY != (self._appends - len(rows)) // CHECK_EVERY:
            self.enforce_bound()
        for cb in self.on_append:
            cb(rows[-1][0])
        return True

    def _insert(self, rows: list[_Row]) -> bool | None:
        """True when committed; None when the disk is full (eviction may help); False otherwise."""
        try:
            with _transaction(self._wdb):
                self._wdb.executemany("INSERT INTO records(seq, kind, t_ms, payload) VALUES (?, ?, ?, ?)", rows)
            return True
        except sqlite3.Error as exc:
            self._failed(str(exc))  # counted and reported even if eviction makes room
            return None if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL else False

    # -- the reserve: room for the eviction on a full disk ---------------------------------------------
    def _make_reserve(self) -> bool:
        """Allocate the reserve file (really allocated, not sparse); False when there is no room."""
        if self.reserve_bytes <= 0:
            return False
        try:
            if os.path.getsize(self.reserve_path) >= self.reserve_bytes:
                return True
        except OSError:
            pass
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
            return True
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(self.reserve_path)
            log.warning("telemetry store: no room for the %d MB disk reserve (%s)", self.reserve_bytes >> 20, exc)
            return False

    def _release_reserve(self) -> None:
        try:
            os.unlink(self.reserve_path)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("telemetry store: cannot release the disk reserve: %s", exc)
            return
        self.reserve_released += 1
        self._reserve_checked_t = self._clock()
        log.error(
            "telemetry store: disk full, released the %d MB reserve to evict old telemetry", self.reserve_bytes >> 20
        )

    def _keep_reserve(self) -> None:
        """Make the reserve again once the disk has room for it twice over (at most every RESERVE_CHECK_S)."""
        if self.reserve_bytes <= 0 or self._clock() - self._reserve_checked_t < RESERVE_CHECK_S:
            return
        self._reserve_checked_t = self._clock()
        if os.path.exists(self.reserve_path):
            return
        try:
            st = os.statvfs(self.data_dir)
        except OSError:
            return
        if st.f_bavail * st.f_frsize >= 2 * self.reserve_bytes and self._make_reserve():
            log.warning("telemetry store: disk reserve of %d MB made again", self.reserve_bytes >> 20)

    def _disk_nearly_full(self) -> bool:
        """Free space below ``min_free_mb``, checked at most once a second (statvfs is a syscall)."""
        if self.min_free_bytes <= 0:
            return False
        now = self._clock()
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
                self._failed(
                    f"disk nearly full: {free / 1048576:.1f} MB free, below "
                    f"{self.min_free_bytes / 1048576:.0f} MB; telemetry dropped, events kept"
                )
        return self._disk_low

    def _failed(self, why: str) -> None:
        self.write_errors += 1
        self.last_error = why
        self._last_error_t = self._clock()
        if self.write_errors in (1, 10, 100) or self.write_errors % 1000 == 0:
            log.error(
                "telemetry store write failed (%s), control continues (%d failed writes, %d records lost so far)",
                why,
                self.write_errors,
                self.records_lost,
            )

    @property
    def degraded(self) -> str | None:
        """The last write error while writes fail (and for DEGRADED_HOLD_S after), else None."""
        if self.last_error is not None and self._clock() - self._last_error_t < DEGRADED_HOLD_S:
            return self.last_error
        return None

    # -- reading -------------------------------------------------------------------------------------
    def backlog(self) -> int:
        """Records not yet acknowledged, including those queued for the writer. The rows and the highest
        committed seq come from one read (one snapshot): the writer's counter of queued records is updated
        just after its commit, and adding it to the rows counted a record twice in between."""
        row = self._db.execute(
            "SELECT (SELECT COUNT(*) FROM records), (SELECT seq FROM sqlite_sequence WHERE name = 'records')"
        ).fetchone()
        committed_seq = int(row[1]) if row[1] is not None else 0
        queued = max(0, self._next_seq - 1 - committed_seq) if self._queue is not None else 0
        return int(row[0]) + queued

    def last_seq(self) -> int:
        """The newest seq given out (committed a few ms later in background mode)."""
        return self._next_seq - 1

    # -- size bound ----------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        pages = int(self._wdb.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._wdb.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self.page_size

    def enforce_bound(self) -> int:
        """Evict the oldest telemetry (then events) until the store is below EVICT_TO of its bound."""
        dropped = 0
        try:
            used = self.used_bytes()
            while used > self.max_bytes and (n := _count(self._wdb)) > 0:
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
            log.warning(
                "telemetry store above %.0f MB: dropped the %d oldest records (not yet uplinked)",
                self.max_bytes / 1048576,
                dropped,
            )
        return dropped

    def _evict_oldest(self, rows: int) -> int:
        """Delete up to ``rows`` oldest telemetry records; oldest events only when no telemetry is left."""
        try:
            cur = self._wdb.execute(
                "DELETE FROM records WHERE seq IN (SELECT seq FROM records WHERE kind = ? ORDER BY seq LIMIT ?)",
                (TELEMETRY, rows),
            )
            got = cur.rowcount
            if got == 0:
                cur = self._wdb.execute(
                    "DELETE FROM records WHERE seq IN (SELECT seq FROM records ORDER BY seq LIMIT ?)", (rows,)
                )
                got = cur.rowcount
                self.evicted_events += got
        except sqlite3.Error as exc:
            self._failed(f"eviction: {exc}")
            return 0
        self.evicted += got
        return int(got)

    def size_bytes(self) -> int:
        """Bytes in use, read on the caller's connection (any thread but the writer's)."""
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self.page_size

    def days_left(self) -> float | None:
        """Days until the size bound at the rate records were written since open (None before a minute)."""
        elapsed = self._clock() - self._opened_t
        if elapsed < 60.0 or self.bytes_written <= 0:
            return None
        per_day = self.bytes_written / elapsed * 86400.0
        return round(max(0, self.max_bytes - self.size_bytes()) / per_day, 1)

    def stats(self) -> dict[str, Any]:
        return {
            "backlog": self.backlog(),
            "last_seq": self.last_seq(),
            "write_errors": self.write_errors,
            "records_lost": self.records_lost,
            "evicted": self.evicted,
            "evicted_events": self.evicted_events,
            "degraded": self.degraded,
            "dropped_low_disk": self.dropped_low_disk,
            "reserve_released": self.reserve_released,
            "store_days_left": self.days_left(),
        }

    def close(self) -> None:
        """Commit what is queued, checkpoint the WAL into the file, close."""
        for cb in self.before_close:
            try:
                cb()
            except Exception:  # a failing hook must not keep the store open
                log.exception("store close hook failed")
        if self._writer is not None and self._queue is not None:
            self._queue.put(None)
            self._writer.join(CLOSE_WAIT_S)
            if self._writer.is_alive():
                log.error(
                    "telemetry store writer did not finish within %.0f s; %d records not written",
                    CLOSE_WAIT_S,
                    self._unwritten,
                )
            else:
                self._wdb.close()
            self._writer = None
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
