"""The uplink's delivery window without paho: an in-memory store, a fake wire, time passed by hand."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path

import pytest

from edge.telemetry.delivery import Batch, Delivery, sample_count
from edge.telemetry.store import EVENT, TELEMETRY, RawRecord


class MemStore:
    """What delivery reads, as a list (the store's pending_raw / last_seq contract)."""

    def __init__(self) -> None:
        self.rows: list[RawRecord] = []
        self.high = 0  # highest seq ever committed (survives deletes, like sqlite_sequence)
        self.reads = 0

    def add(self, n: int = 1, kind: str = TELEMETRY, samples: int = 1) -> list[int]:
        out = []
        for _ in range(n):
            self.high += 1
            body = {"samples": [{"signal": f"s{i}", "value": i} for i in range(samples)]} if kind == TELEMETRY else {}
            self.rows.append(RawRecord(self.high, kind, 1000 * self.high, json.dumps(body)))
            out.append(self.high)
        return out

    def pending_raw(self, after_seq: int, upto_seq: int | None, limit: int) -> list[RawRecord]:
        self.reads += 1
        hit = [r for r in self.rows if r.seq > after_seq and (upto_seq is None or r.seq <= upto_seq)]
        return hit[:limit]

    def last_seq(self) -> int:
        return self.high

    def delete(self, seqs: list[int]) -> None:
        gone = set(seqs)
        self.rows = [r for r in self.rows if r.seq not in gone]

    def seqs(self) -> list[int]:
        return [r.seq for r in self.rows]


class Wire:
    """The publishing side: gives message ids, remembers every message, can refuse (not connected)."""

    def __init__(self) -> None:
        self.sent: dict[int, Batch] = {}
        self.order: list[int] = []
        self.refuse = False
        self._mid = 0

    def send(self, batch: Batch) -> int | None:
        if self.refuse:
            return None
        self._mid += 1
        self.sent[self._mid] = batch
        self.order.append(self._mid)
        return self._mid

    def seqs(self, mids: list[int] | None = None) -> list[int]:
        return [s for m in (self.order if mids is None else mids) for s in self.sent[m].seqs]

    def since(self, n: int) -> list[int]:
        return self.order[n:]


def make(store: MemStore, window: int = 4, batch_samples: int = 1, **kw) -> Delivery:
    return Delivery(store, window=window, batch_samples=batch_samples, reject_pause_s=kw.pop("pause", 1.0), **kw)


def ack_all(d: Delivery, wire: Wire, mids: list[int], now_s: float = 0.0) -> None:
    for m in mids:
        assert d.acked(m, False, now_s) is not None


def drain(d: Delivery, store: MemStore, wire: Wire, now_s: float = 0.0, rounds: int = 10_000) -> None:
    """Ack what is in flight, oldest first, delete, pump, until nothing moves."""
    for _ in range(rounds):
        d.pump(now_s, wire.send)
        pending = [m for m in wire.order if m in d._inflight]
        if not pending:
            return
        ack_all(d, wire, pending, now_s)
        store.delete(d.take_deletes())
    raise AssertionError("did not drain")


def test_nothing_is_sent_before_the_connect_then_the_backlog_goes_in_seq_order_marked_replayed():
    store, wire = MemStore(), Wire()
    seqs = store.add(10)
    d = make(store, window=20, batch_samples=3)
    assert d.pump(0.0, wire.send) == 0 and not wire.order
    d.connected(session_present=False)
    d.pump(0.0, wire.send)
    assert wire.seqs() == seqs
    assert all(wire.sent[m].replayed for m in wire.order)
    assert [len(wire.sent[m].records) for m in wire.order] == [3, 3, 3, 1]


def test_a_batch_keeps_to_one_kind_and_never_splits_a_record():
    store, wire = MemStore(), Wire()
    store.add(2, samples=4)
    store.add(1, kind=EVENT)
    store.add(1, samples=9)  # alone above batch_samples: sent whole, on its own
    store.add(2, samples=2)
    d = make(store, window=20, batch_samples=8)
    d.connected(False)
    d.pump(0.0, wire.send)
    batches = [wire.sent[m] for m in wire.order]
    assert [b.seqs for b in batches] == [[1, 2], [3], [4], [5, 6]]
    assert [b.kind for b in batches] == [TELEMETRY, EVENT, TELEMETRY, TELEMETRY]
    assert all(sum(sample_count(r) for r in b.records) <= 8 or len(b.records) == 1 for b in batches)


def test_the_window_bounds_what_is_in_flight_and_the_backlog_leaves_a_reserve_for_live_data():
    store, wire = MemStore(), Wire()
    store.add(100)
    d = make(store, window=8)
    d.connected(False)
    d.pump(0.0, wire.send)
    assert d.inflight == d.backlog_window == 6, "backlog: window minus a quarter"
    for _ in range(5):  # more pumps without acks send nothing more
        assert d.pump(0.0, wire.send) == 0
    live = store.add(5)
    d.pump(0.0, wire.send)
    assert d.inflight == 8, "live records may use the whole window"
    assert wire.seqs(wire.since(6)) == live[:2]
    assert not any(wire.sent[m].replayed for m in wire.since(6))


@pytest.mark.parametrize("window", [1, 2, 4])
def test_a_small_window_still_gives_live_and_backlog_a_slot_each_in_turn(window: int):
    store, wire = MemStore(), Wire()
    backlog = store.add(20)
    d = make(store, window=window)
    d.connected(False)
    d.pump(0.0, wire.send)
    assert d.inflight == max(1, window - max(1, window // 4))
    live = store.add(3)
    drain(d, store, wire)
    assert sorted(wire.seqs()) == backlog + live and not store.rows
    first_live = wire.seqs().index(live[0])
    assert first_live < len(backlog), "the live record did not wait for the whole backlog"


def test_live_records_go_out_before_the_rest_of_the_backlog():
    store, wire = MemStore(), Wire()
    backlog = store.add(50)
    d = make(store, window=4)
    d.connected(False)
    d.pump(0.0, wire.send)
    ack_all(d, wire, wire.order[:1])
    live = store.add(2)
    n = len(wire.order)
    d.pump(0.0, wire.send)
    out = [(wire.sent[m].seqs, wire.sent[m].replayed) for m in wire.since(n)]
    assert out[0] == ([live[0]], False), "the first free slot goes to live data"
    drain(d, store, wire)
    delivered = wire.seqs()
    assert sorted(delivered) == backlog + live and len(delivered) == len(set(delivered)), "each seq once"
    replayed = [s for m in wire.order for s in wire.sent[m].seqs if wire.sent[m].replayed]
    assert replayed == backlog, "backlog in seq order, every backlog record marked replayed"


def test_acks_out_of_order_delete_exactly_the_acknowledged_records():
    store, wire = MemStore(), Wire()
    store.add(6)
    d = make(store, window=10)
    d.connected(False)
    d.pump(0.0, wire.send)
    mids = list(wire.order)
    assert d.take_deletes() == [], "nothing is deleted before a PUBACK"
    for m in (mids[4], mids[1], mids[5]):
        assert d.acked(m, False, 0.0) == 1
    assert sorted(d.take_deletes()) == sorted(wire.seqs([mids[4], mids[1], mids[5]]))
    assert d.inflight == 3
    n = len(wire.order)
    d.pump(0.0, wire.send)
    assert wire.order[n:] == [], "acknowledged slots refilled only with new records: none left"


def test_an_unknown_or_repeated_puback_changes_nothing():
    store, wire = MemStore(), Wire()
    store.add(3)
    d = make(store, window=10)
    d.connected(False)
    d.pump(0.0, wire.send)
    m = wire.order[0]
    assert d.acked(m, False, 0.0) == 1
    assert d.acked(m, False, 0.0) is None
    assert d.acked(999, False, 0.0) is None
    assert d.take_deletes() == wire.seqs([m])


@pytest.mark.parametrize("session_present", [True, False])
def test_a_disconnect_mid_window_replays_the_unacknowledged_records_in_order_and_nothing_else(session_present: bool):
    store, wire = MemStore(), Wire()
    seqs = store.add(12)
    d = make(store, window=8)  # backlog window 6
    d.connected(False)
    d.pump(0.0, wire.send)
    first = list(wire.order)
    ack_all(d, wire, [first[1], first[3]])
    store.delete(d.take_deletes())  # deleted
    ack_all(d, wire, [first[4]])  # acknowledged, delete not yet done when the connection drops
    in_flight = [s for m in first if m in d._inflight for s in wire.sent[m].seqs]
    d.disconnected()
    assert d.inflight == 0
    store.add(2)  # recorded while offline: backlog at the reconnect
    assert d.pump(0.0, wire.send) == 0, "nothing sent while disconnected"
    d.connected(session_present)
    n = len(wire.order)
    d.pump(0.0, wire.send)
    again = wire.seqs(wire.since(n))
    assert again[: len(in_flight)] == in_flight, "what was in flight comes first, in seq order"
    assert wire.seqs([first[4]])[0] not in again, "acknowledged, not yet deleted: never replayed"
    assert all(wire.sent[m].replayed for m in wire.since(n))
    drain(d, store, wire)
    assert not store.rows
    counts = {s: wire.seqs().count(s) for s in seqs}
    assert {s for s, c in counts.items() if c > 1} <= set(in_flight), "duplicates only by redelivery"


def test_records_are_deleted_only_after_their_puback_and_a_rejection_keeps_them():
    store, wire = MemStore(), Wire()
    store.add(4)
    d = make(store, window=10, pause=2.0)
    d.connected(False)
    d.pump(10.0, wire.send)
    mids = list(wire.order)
    assert d.acked(mids[0], False, 10.0) == 1
    assert d.acked(mids[1], True, 10.0) == 1, "a broker rejection (v5 reason code)"
    assert d.take_deletes() == [1], "only the acknowledged record"
    store.delete([1])
    assert d.inflight == 0, "the rejection replays everything from the store"
    assert d.pump(11.0, wire.send) == 0, "paused after a rejection"
    n = len(wire.order)
    d.pump(12.0, wire.send)
    assert wire.seqs(wire.since(n)) == [2, 3, 4]
    assert d.acked(mids[2], False, 12.0) is None, "an answer from before the resync is ignored"
    assert d.take_deletes() == []


def test_a_refused_send_keeps_the_batch_first_in_line():
    store, wire = MemStore(), Wire()
    store.add(5)
    d = make(store, window=10, batch_samples=2)
    d.connected(False)
    wire.refuse = True
    assert d.pump(0.0, wire.send) == 0 and d.inflight == 0
    wire.refuse = False
    d.pump(0.0, wire.send)
    assert wire.seqs() == [1, 2, 3, 4, 5]
    live = store.add(2)
    wire.refuse = True
    d.pump(0.0, wire.send)
    wire.refuse = False
    d.pump(0.0, wire.send)
    assert wire.seqs()[5:] == live and not wire.sent[wire.order[-1]].replayed


def test_deletes_are_a_group_commit_after_a_pause_at_most_every_interval_and_at_once_when_many():
    store, wire = MemStore(), Wire()
    store.add(30)
    d = make(store, window=30, delete_linger_s=0.005, delete_every_s=0.1, delete_max_rows=10)
    d.connected(False)
    d.pump(0.0, wire.send)
    assert d.delete_wait_s(0.0) is None
    d.acked(wire.order[0], False, 1.0)
    assert d.delete_wait_s(1.0) == pytest.approx(0.005), "linger for more PUBACKs"
    d.acked(wire.order[1], False, 1.09)
    assert d.delete_wait_s(1.09) == pytest.approx(0.005)
    assert d.delete_wait_s(1.098) == pytest.approx(0.002), "at most delete_every_s after the first"
    assert d.delete_wait_s(1.1) == 0.0
    assert d.take_deletes() == [1, 2] and d.delete_wait_s(1.1) is None
    for m in wire.order[2:12]:
        d.acked(m, False, 2.0)
    assert d.delete_wait_s(2.0) == 0.0, "delete_max_rows waiting: delete now"


def test_records_appended_after_the_connect_are_live_and_the_rest_drains_in_order():
    store, wire = MemStore(), Wire()
    backlog = store.add(30)
    d = make(store, window=4, batch_samples=2)
    d.connected(False)
    live: list[int] = []
    for i in range(40):
        if i % 3 == 0:
            live += store.add(1)
        d.pump(0.0, wire.send)
        oldest = [m for m in wire.order if m in d._inflight][:1]
        ack_all(d, wire, oldest)
        store.delete(d.take_deletes())
    drain(d, store, wire)
    flags = {s: wire.sent[m].replayed for m in wire.order for s in wire.sent[m].seqs}
    assert [s for s in sorted(flags) if flags[s]] == backlog and [s for s in sorted(flags) if not flags[s]] == live
    live_order = [s for s in wire.seqs() if s in live]
    assert live_order == live, "live in seq order"
    assert len(wire.seqs()) == len(backlog) + len(live), "no duplicate without a disconnect"


def test_the_backlog_is_read_in_bounded_chunks():
    store, wire = MemStore(), Wire()
    store.add(1000)
    d = make(store, window=4, prefetch_rows=100)
    d.connected(False)
    d.pump(0.0, wire.send)
    assert store.reads <= 3, "one live read, one prefetch"
    drain(d, store, wire)
    assert not store.rows


@pytest.mark.parametrize("seed", range(20))
def test_random_acks_disconnects_and_rejections_lose_nothing_and_duplicate_only_redeliveries(seed: int):
    rnd = random.Random(seed)
    store, wire = MemStore(), Wire()
    window = rnd.choice([1, 2, 3, 4, 8, 20])
    d = make(store, window=window, batch_samples=rnd.choice([1, 3, 10]), pause=0.5)
    produced: list[int] = store.add(rnd.randint(0, 40))
    redeliverable: set[int] = set()  # in flight when the connection dropped or a message was rejected
    acked: set[int] = set()
    now = 0.0
    d.connected(False)
    for _ in range(400):
        now += 0.1
        r = rnd.random()
        if r < 0.25:
            produced += store.add(rnd.randint(1, 3), kind=rnd.choice([TELEMETRY, EVENT]), samples=rnd.randint(1, 4))
        elif r < 0.6:
            in_flight = [m for m in wire.order if m in d._inflight]
            if in_flight:
                m = rnd.choice(in_flight)
                if rnd.random() < 0.05:
                    redeliverable.update(s for k in in_flight for s in wire.sent[k].seqs)
                    d.acked(m, True, now)
                else:
                    d.acked(m, False, now)
                    acked.update(wire.sent[m].seqs)
        elif r < 0.65:
            redeliverable.update(d.inflight_seqs())
            d.disconnected()
            d.connected(rnd.random() < 0.5)
        elif r < 0.8:
            deleted = d.take_deletes()
            assert set(deleted) <= acked, "deleted without a PUBACK"
            store.delete(deleted)
        d.pump(now, wire.send)
        assert d.inflight <= window
        assert d.backlog_inflight <= d.backlog_window
    now += 1.0
    drain(d, store, wire, now)
    store.delete(d.take_deletes())
    assert not store.rows, "everything delivered and deleted"
    sent = wire.seqs()
    assert set(sent) == set(produced)
    dups = {s for s in sent if sent.count(s) > 1}
    assert dups <= redeliverable, "a duplicate without a disconnect or rejection"


def test_delivery_stays_pure():
    """No paho, no threads, no sockets, no clock: the caller passes time in."""
    src = Path(__file__).resolve().parent.parent / "edge" / "telemetry" / "delivery.py"
    tree = ast.parse(src.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"paho", "threading", "socket", "time", "asyncio", "queue", "sqlite3"}
