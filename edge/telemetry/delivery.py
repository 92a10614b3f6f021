"""Which stored records to publish next, and which to delete: the uplink's delivery window, without I/O.

Pure bookkeeping: no paho, no threads, no sockets, no clock reads (the caller passes ``now_s``, seconds of
a monotonic clock). Records are read through :class:`RecordSource` (the store's ``pending_raw`` and
``last_seq``); messages go out through a ``send`` callable the caller gives to :meth:`Delivery.pump`,
which returns the message id it will later acknowledge, or None when it could not send.

The rules (at least once; consumers drop duplicates by ``seq``):
- On every (re)connect (:meth:`Delivery.connected`) the records up to the store's last seq at that moment
  are the *backlog*, replayed in seq order and marked ``replayed``. Later records are *live*, not marked.
  What was in flight when the connection dropped is in the store still, so it comes back as backlog, in
  seq order, with the same seqs: the only duplicates are such redeliveries. The same holds with or
  without ``session_present``: a PUBACK lost with the connection cannot be told from a message the broker
  never got, so everything unacknowledged is sent again (``session_present`` is kept for the status).
- Live first: live records may fill the whole window, the backlog only the window minus a reserve (a
  quarter, at least one slot), so live data goes out within one interval while a day of backlog drains.
- A message carries consecutive records of one kind, up to ``batch_samples`` samples; a record is never
  split.
- The backlog may be paced to ``backlog_records_per_s`` (the uplink's ``BACKLOG_RECORDS_PER_S``; live
  records are never paced): after a backlog message of n records the next one waits n / rate, so that a
  drain leaves the control loop most of the GIL it shares with the uplink and paho threads
  (bench/reaction.py). The caller pumps again after :meth:`Delivery.pump_wait_s`.
- Live records are looked for only when the store says it committed newer ones (:meth:`Delivery.appended`,
  from ``Store.on_append``); before the first such word, at every pump.
- A record may be deleted only after the PUBACK of its message (:meth:`Delivery.take_deletes`). Deletes
  are a group commit: due ``delete_linger_s`` after the PUBACKs pause, at most ``delete_every_s`` after
  the first one, at once with ``delete_max_rows`` waiting. Acknowledged records not yet deleted are never
  replayed.
- A PUBACK with an error code (MQTT 5: quota, not authorised) keeps the records; delivery pauses for
  ``reject_pause_s`` and then replays from the store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from edge.telemetry.store import EVENT, RawRecord

PREFETCH_ROWS = 128  # backlog rows read from SQLite at once (~1 MB: keeps each step short)
LIVE_ROWS = 256  # live rows read at once
# Group commit of deletes: per-PUBACK deletes held SQLite's write lock ~1,000 times a second during a
# drain and stalled the control loop's inserts (docs/RELIABILITY.md). A kill before the delete only means
# those records are sent again under the same seq.
DELETE_LINGER_S = 0.005
DELETE_EVERY_S = 0.1
DELETE_MAX_ROWS = 5000
# A v2 compact record (10 s of 40 signals by exception) is ~670 bytes of MessagePack; at 70 bytes per
# "sample" the default 200 samples put ~20 of them (~14 kB) in one message, ~3.5 kB after zlib: one AWS IoT
# 5 kB billing unit, and a quarter of the messages (PUBACKs, paho and uplink steps, GIL hand-overs) that
# 20 bytes per sample gave for the same backlog (bench/reaction.py: the drain shares the GIL with control).
COMPACT_BYTES_PER_SAMPLE = 70
# The uplink's pace of a backlog drain: a 7-day v2 backlog (60,480 records) in ~30 s (goal 60 s), a 24 h v1
# backlog in ~43 s; a v2 drain then takes under a tenth of one core instead of all the GIL it can get.
# bench/reaction.py under the drain, 10,000 events each: 4,000/s max 27-33 ms with 4 events > 25 ms;
# 2,000/s max 23.7 ms, none > 25 ms (docs/BENCHMARKS.md, 2026-12-04).
BACKLOG_RECORDS_PER_S = 2000.0


class RecordSource(Protocol):
    """What delivery reads from the store (``StoreView`` and ``Store`` have both)."""

    def pending_raw(self, after_seq: int, upto_seq: int | None, limit: int) -> list[RawRecord]: ...

    def last_seq(self) -> int: ...


def sample_count(rec: RawRecord) -> int:
    """Samples in one stored record (an event counts as one; a v2 compact record one per
    COMPACT_BYTES_PER_SAMPLE bytes, so ``batch_samples`` bounds a v2 message's size too)."""
    if rec.kind == EVENT:
        return 1
    if isinstance(rec.payload, bytes):
        return max(1, len(rec.payload) // COMPACT_BYTES_PER_SAMPLE)
    return max(1, rec.payload.count('"signal":'))


@dataclass(frozen=True)
class Batch:
    """One message: consecutive records of one kind, ``replayed`` when they are backlog."""

    records: tuple[RawRecord, ...]
    replayed: bool

    @property
    def kind(self) -> str:
        return self.records[0].kind

    @property
    def seqs(self) -> list[int]:
        return [r.seq for r in self.records]


Send = Callable[[Batch], "int | None"]


class Delivery:
    def __init__(
        self,
        source: RecordSource,
        *,
        window: int,
        batch_samples: int,
        reject_pause_s: float,
        prefetch_rows: int = PREFETCH_ROWS,
        live_rows: int = LIVE_ROWS,
        delete_linger_s: float = DELETE_LINGER_S,
        delete_every_s: float = DELETE_EVERY_S,
        delete_max_rows: int = DELETE_MAX_ROWS,
        backlog_records_per_s: float = 0.0,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.source = source
        self.window = window
        self.backlog_window = max(1, window - max(1, window // 4))
        self.batch_samples = batch_samples
        self.reject_pause_s = reject_pause_s
        self.prefetch_rows = prefetch_rows
        self.live_rows = live_rows
        self.delete_linger_s = delete_linger_s
        self.delete_every_s = delete_every_s
        self.delete_max_rows = delete_max_rows
        self.backlog_s_per_record = 1.0 / backlog_records_per_s if backlog_records_per_s > 0 else 0.0
        self._backlog_due = 0.0  # the next backlog message may go at this time
        self.online = False
        self.session_present: bool | None = None
        self._inflight: dict[int, Batch] = {}
        self._live_inflight = 0
        self._live_from = 0  # backlog is seq <= live_from, live is seq > live_from
        self._live_after = 0
        self._backlog_after = 0
        self._backlog: deque[RawRecord] = deque()
        self._backlog_done = True
        self._paused_until = 0.0
        self._refused = False  # send() refused during the current pump
        self._acked: list[int] = []  # acknowledged, not yet taken for deletion
        self._acked_set: set[int] = set()
        self._acked_since = 0.0
        self._newest: int | None = None  # newest seq the store committed, as far as we were told

    # -- connection --------------------------------------------------------------------------------
    def connected(self, session_present: bool) -> None:
        """A (re)connect: forget what was in flight; everything still in the store is backlog from here."""
        self.session_present = session_present
        self.online = True
        self._resync()

    def disconnected(self) -> None:
        """The connection dropped: nothing is sent until :meth:`connected`; what was in flight stays in
        the store and is replayed then, in seq order."""
        self.online = False
        self._inflight.clear()
        self._live_inflight = 0

    def _resync(self) -> None:
        self._inflight.clear()
        self._live_inflight = 0
        last = self.source.last_seq()
        self._live_from = self._live_after = last
        self._backlog_after = 0
        self._backlog.clear()
        self._backlog_done = False

    # -- sending -----------------------------------------------------------------------------------
    def pump(self, now_s: float, send: Send) -> int:
        """Fill the in-flight window: live records first, then the backlog in seq order. ``send``
        publishes one batch and returns its message id, or None (not connected any more: pumping stops
        here, the batch is sent again later). Returns the number of messages sent."""
        if not self.online or now_s < self._paused_until:
            return 0
        self._refused = False
        n = self._pump_live(send)
        if not self._refused:
            n += self._pump_backlog(send, now_s)
        return n

    def pump_wait_s(self, now_s: float) -> float | None:
        """How long until a pump could send backlog that is waiting for its pace (0: now; None: nothing
        waits for time, the next PUBACK or record pumps)."""
        if not self.online or self._refused or self._backlog_done or self.free_slots <= 0:
            return None  # refused: not connected any more, the disconnect or the next connect pumps
        if self.backlog_inflight >= self.backlog_window:
            return None
        return max(0.0, self._backlog_due - now_s, self._paused_until - now_s)

    def appended(self, seq: int) -> None:
        """The store committed records up to ``seq`` (any thread's word, passed on by the caller)."""
        if self._newest is None or seq > self._newest:
            self._newest = seq

    def _pump_live(self, send: Send) -> int:
        n = 0
        if self._newest is not None and self._newest <= self._live_after:
            return 0  # nothing new committed: no query (one per PUBACK during a drain otherwise)
        while self.free_slots > 0:
            rows = self.source.pending_raw(self._live_after, None, self.live_rows)
            if not rows:
                break
            buf = deque(rows)
            while buf and self.free_slots > 0:  # rows not sent now are read again next time
                batch = Batch(self._take(buf), replayed=False)
                if not self._send(batch, send):
                    return n
                n += 1
                self._live_after = batch.records[-1].seq
            if len(rows) < self.live_rows:
                break
        return n

    def _pump_backlog(self, send: Send, now_s: float) -> int:
        n = 0
        while not self._backlog_done and self.free_slots > 0 and self.backlog_inflight < self.backlog_window:
            if now_s < self._backlog_due:
                break
            if not self._backlog and not self._prefetch():
                break
            batch = Batch(self._take(self._backlog), replayed=True)
            if not self._send(batch, send):
                self._backlog.extendleft(reversed(batch.records))  # first in line at the next pump
                return n
            n += 1
            if self.backlog_s_per_record > 0:  # from this send, not from the due time: no burst to catch up
                self._backlog_due = now_s + self.backlog_s_per_record * len(batch.records)
        return n

    def _prefetch(self) -> bool:
        """Read the next backlog rows; False when the backlog is done."""
        while not self._backlog:
            rows = self.source.pending_raw(self._backlog_after, self._live_from, self.prefetch_rows)
            if not rows:
                self._backlog_done = True
                return False
            self._backlog_after = rows[-1].seq
            self._backlog.extend(r for r in rows if r.seq not in self._acked_set)
        return True

    def _take(self, buf: deque[RawRecord]) -> tuple[RawRecord, ...]:
        """Consecutive records of one kind, up to batch_samples samples (a record is never split)."""
        first = buf.popleft()
        batch = [first]
        n = sample_count(first)
        while buf and buf[0].kind == first.kind:
            k = sample_count(buf[0])
            if n + k > self.batch_samples:
                break
            batch.append(buf.popleft())
            n += k
        return tuple(batch)

    def _send(self, batch: Batch, send: Send) -> bool:
        msg_id = send(batch)
        if msg_id is None:
            self._refused = True
            return False
        self._inflight[msg_id] = batch
        if not batch.replayed:
            self._live_inflight += 1
        return True

    # -- acknowledgements and deletes --------------------------------------------------------------
    def acked(self, msg_id: int, failed: bool, now_s: float) -> int | None:
        """The broker's PUBACK for ``msg_id``. Returns the number of records it carried, or None for an
        id not in flight (an answer from before the last resync). ``failed``: the broker refused it."""
        batch = self._inflight.pop(msg_id, None)
        if batch is None:
            return None
        if not batch.replayed:
            self._live_inflight -= 1
        if failed:
            self._paused_until = now_s + self.reject_pause_s
            self._resync()
            return len(batch.records)
        if not self._acked:
            self._acked_since = now_s
        seqs = batch.seqs
        self._acked.extend(seqs)
        self._acked_set.update(seqs)
        return len(batch.records)

    def delete_wait_s(self, now_s: float) -> float | None:
        """How long the caller may wait before :meth:`take_deletes` (0: now; None: nothing to delete).
        Past the linger the caller deletes when no further PUBACK came in that time."""
        if not self._acked:
            return None
        if len(self._acked) >= self.delete_max_rows:
            return 0.0
        due = self._acked_since + self.delete_every_s - now_s
        return min(due, self.delete_linger_s) if due > 0 else 0.0

    def take_deletes(self) -> list[int]:
        """The acknowledged seqs to delete now (the caller deletes them; a failed delete only means they
        are sent again after the next resync)."""
        seqs, self._acked = self._acked, []
        self._acked_set.clear()
        return seqs

    # -- status ------------------------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def live_inflight(self) -> int:
        return self._live_inflight

    @property
    def backlog_inflight(self) -> int:
        return len(self._inflight) - self._live_inflight

    @property
    def free_slots(self) -> int:
        return self.window - len(self._inflight)

    @property
    def acked_not_deleted(self) -> int:
        return len(self._acked)

    def inflight_seqs(self) -> Iterable[int]:
        return (s for b in self._inflight.values() for s in b.seqs)
