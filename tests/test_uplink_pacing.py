"""The pace of a backlog drain and the live look-up, in the uplink's delivery window (pure, no paho): a
drain must leave the control loop most of the GIL (bench/reaction.py), live records must not wait for it,
and no record may be lost or reordered by the pacing."""

from __future__ import annotations

import random

import pytest

from edge.telemetry.delivery import BACKLOG_RECORDS_PER_S, COMPACT_BYTES_PER_SAMPLE, sample_count
from edge.telemetry.store import TELEMETRY, RawRecord
from tests.test_delivery import MemStore, Wire, make


def test_the_backlog_goes_at_its_pace_and_the_next_message_waits_for_its_records() -> None:
    store, wire = MemStore(), Wire()
    store.add(30)
    d = make(store, window=20, batch_samples=3, backlog_records_per_s=100.0)  # 3 records, 30 ms a message
    d.connected(False)
    assert d.pump_wait_s(0.0) == 0.0
    assert d.pump(0.0, wire.send) == 1, "one backlog message per pump, not the whole window"
    assert wire.seqs() == [1, 2, 3]
    assert d.pump_wait_s(0.01) == pytest.approx(0.02)  # 3 records at 100 /s: 30 ms after the send
    assert d.pump(0.029, wire.send) == 0
    assert d.pump(0.031, wire.send) == 1
    # a pump that comes late does not catch up with a burst: the pace counts from the send
    assert d.pump(1.0, wire.send) == 1
    assert d.pump_wait_s(1.0) == pytest.approx(0.03)
    assert wire.seqs() == list(range(1, 10))


def test_live_records_never_wait_for_the_pace() -> None:
    store, wire = MemStore(), Wire()
    store.add(10)
    d = make(store, window=20, batch_samples=1, backlog_records_per_s=10.0)
    d.connected(False)
    d.pump(0.0, wire.send)
    live = store.add(3)
    d.appended(live[-1])
    assert d.pump(0.001, wire.send) == 3, "live records go at once, the backlog waits"
    assert wire.seqs() == [1, *live]
    assert not any(wire.sent[m].replayed for m in wire.order[1:])


def test_nothing_waits_for_time_when_there_is_no_backlog_the_window_is_full_or_a_send_was_refused() -> None:
    store, wire = MemStore(), Wire()
    d = make(store, window=8, batch_samples=1, backlog_records_per_s=1000.0)  # 1 ms a record
    assert d.pump_wait_s(0.0) is None, "not connected"
    store.add(10)
    d.connected(False)
    for t in range(6):  # the backlog's share of the window: 8 - 2 kept for live records
        assert d.pump(t * 0.001, wire.send) == 1
    assert d.pump_wait_s(0.006) is None, "the backlog's share is in flight: the next PUBACK pumps"
    d.acked(wire.order[0], False, 0.006)
    assert d.pump_wait_s(0.006) == 0.0
    wire.refuse = True
    d.pump(0.006, wire.send)
    assert d.pump_wait_s(0.007) is None, "refused: the disconnect and the next connect pump, not the clock"
    wire.refuse = False
    d.pump(0.007, wire.send)
    store.delete(d.take_deletes())
    while d.pump_wait_s(1.0) is not None or d.inflight:
        for m in [m for m in wire.order if m in d._inflight]:
            d.acked(m, False, 1.0)
        d.pump(1.0 + len(wire.order), wire.send)
    assert wire.seqs() == list(range(1, 11))


def test_a_paced_drain_with_random_disconnects_delivers_every_record_once_in_order_per_connection() -> None:
    rnd = random.Random(18)
    store, wire = MemStore(), Wire()
    store.add(300)
    d = make(store, window=8, batch_samples=4, backlog_records_per_s=2000.0)
    now, delivered = 0.0, []
    d.connected(False)
    for _ in range(20_000):
        now += rnd.choice((0.0001, 0.001, 0.003))
        if rnd.random() < 0.002:
            d.disconnected()
            d.connected(True)
        d.pump(now, wire.send)
        for mid in [m for m in wire.order if m in d._inflight][: rnd.randint(0, 3)]:
            d.acked(mid, False, now)
            delivered += wire.sent[mid].seqs
        store.delete(d.take_deletes())
        if not store.rows:
            break
    assert not store.rows, f"{len(store.rows)} records left"
    assert set(delivered) == set(range(1, 301))


def test_live_records_are_read_only_when_the_store_committed_newer_ones() -> None:
    store, wire = MemStore(), Wire()
    d = make(store, window=20, batch_samples=1)
    d.connected(False)
    d.appended(store.last_seq())
    reads = store.reads
    for t in range(100):  # e.g. a pump per PUBACK during a drain: no query for live records
        d.pump(t * 0.01, wire.send)
    assert store.reads - reads <= 1  # the backlog's one (empty) read
    seq = store.add(1)[0]
    d.appended(seq)
    d.pump(1.0, wire.send)
    assert wire.seqs() == [seq]


def test_a_v2_backlog_message_carries_about_twenty_compact_records() -> None:
    """~670 bytes per 10 s compact record: 20 of them (~14 kB, ~3.5 kB after zlib) per 200 samples."""
    rec = RawRecord(1, TELEMETRY, 0, bytes(670))
    assert 200 // sample_count(rec) == 22
    assert COMPACT_BYTES_PER_SAMPLE * 200 < 16_000
    assert 60_480 / BACKLOG_RECORDS_PER_S <= 60.0, "a 7-day v2 backlog within the 60 s drain goal"
