"""The telemetry store: ordered, bounded, restart-proof, and never a reason to stop control."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

import edge.telemetry.store as store_mod
from edge.telemetry.store import Store
from tests.conftest import wait_for
from tests.uplink_harness import interval_payload


def _fill(store: Store, n: int, kind: str = "telemetry") -> list[int]:
    out = []
    for i in range(n):
        payload = interval_payload(i) if kind == "telemetry" else {"kind": "fault_raised", "name": f"f{i}"}
        seq = store.append(kind, 1_700_000_000_000 + i, payload)
        assert seq is not None
        out.append(seq)
    return out


def test_seq_is_monotonic_across_restarts_even_after_everything_was_acknowledged(tmp_path: Path):
    s = Store(str(tmp_path))
    first = _fill(s, 5)
    s.delete(first)
    assert s.backlog() == 0
    s.close()
    s = Store(str(tmp_path))
    assert s.last_seq() == first[-1]
    again = _fill(s, 3)
    assert again == [first[-1] + 1, first[-1] + 2, first[-1] + 3]
    s.close()


def test_pending_is_in_seq_order_and_keeps_unit_and_quality(tmp_path: Path):
    s = Store(str(tmp_path))
    seqs = _fill(s, 3) + _fill(s, 2, "event") + _fill(s, 1)
    rows = s.pending_raw(0, None, 100)
    assert [r.seq for r in rows] == seqs
    assert [r.kind for r in rows] == ["telemetry"] * 3 + ["event"] * 2 + ["telemetry"]
    samples = s.pending(0, 1)[0].payload["samples"]
    volt = next(x for x in samples if x["signal"] == "grid.Voltage.L1")
    assert volt["unit"] == "V" and volt["quality"] == "ok" and volt["measurand"] == "Voltage"
    assert volt["min"] <= volt["mean"] <= volt["max"]
    s.close()


def test_size_bound_evicts_oldest_telemetry_first_and_keeps_events(tmp_path: Path):
    s = Store(str(tmp_path), max_mb=1.0)
    events = _fill(s, 20, "event")
    _fill(s, 400)  # ~8 kB each: 3 MB of telemetry into a 1 MB store
    s.enforce_bound()
    assert s.used_bytes() <= s.max_bytes
    kept = s.pending_raw(0, None, 100000)
    assert [r.seq for r in kept if r.kind == "event"] == events, "events must outlive telemetry"
    tele = [r.seq for r in kept if r.kind == "telemetry"]
    assert tele and tele == list(range(tele[0], tele[-1] + 1)), "only the oldest telemetry goes"
    assert tele[-1] == s.last_seq(), "the newest telemetry is kept"
    assert s.evicted >= 400 - len(tele) and s.evicted_events == 0
    s.close()


def _pin_file_size(s: Store) -> None:
    """Simulate a full disk: SQLite may not grow the file by another page. SQLite then fails writes with
    SQLITE_FULL, the very error (and code path) it reports when the file system returns ENOSPC."""
    pages = s._db.execute("PRAGMA page_count").fetchone()[0]
    s._db.execute(f"PRAGMA max_page_count = {pages}")


def test_disk_full_is_counted_and_reported_never_raised(tmp_path: Path):
    s = Store(str(tmp_path))
    _fill(s, 2, "event")  # nothing to evict but events... which eviction drops only as a last resort
    s._db.execute("DELETE FROM records")
    _pin_file_size(s)
    results = [s.append("telemetry", 1_700_000_000_000 + i, interval_payload(i)) for i in range(50)]
    assert None in results
    assert s.write_errors > 0
    assert s.degraded and "full" in s.degraded
    s.close()


def test_disk_full_makes_room_for_new_events_by_dropping_old_telemetry(tmp_path: Path):
    s = Store(str(tmp_path))
    old = _fill(s, 200)
    _pin_file_size(s)
    seqs = [
        s.append("event", 1_700_000_000_000 + i, {"kind": "fault_raised", "name": "x", "detail": "y" * 2000})
        for i in range(200)
    ]
    assert all(seq is not None for seq in seqs), "events find room while old telemetry can go"
    assert s.write_errors > 0 and s.degraded  # the full disk is still reported
    remaining = {r.seq for r in s.pending_raw(0, None, 100000)}
    assert old[0] not in remaining and set(seqs) <= remaining
    s.close()


def test_degraded_clears_after_writes_succeed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(store_mod, "DEGRADED_HOLD_S", 0.0)
    s = Store(str(tmp_path))
    _pin_file_size(s)
    while s.append("telemetry", 1_700_000_000_000, interval_payload(0)) is not None:
        pass
    s._db.execute("PRAGMA max_page_count = 1000000")
    assert s.append("telemetry", 1_700_000_000_000, interval_payload(1)) is not None
    assert s.degraded is None and s.write_errors >= 1
    s.close()


def test_a_non_json_value_is_a_counted_error_not_an_exception(tmp_path: Path):
    s = Store(str(tmp_path))
    assert s.append("telemetry", 1, {"x": float("nan")}) is None
    assert s.write_errors == 1
    s.close()


def test_store_file_is_wal_mode(tmp_path: Path):
    s = Store(str(tmp_path))
    s.close()
    mode = sqlite3.connect(tmp_path / "telemetry.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_disk_nearly_full_drops_telemetry_keeps_events_and_reports_it(tmp_path):
    st = os.statvfs(tmp_path)
    free_mb = st.f_bavail * st.f_frsize / 1048576
    store = Store(str(tmp_path / "low"), min_free_mb=free_mb * 2 + 1)  # more than this disk has free
    assert store.append("telemetry", 1, {"x": 1}) is None
    assert store.dropped_low_disk == 1
    assert store.degraded is not None and "disk nearly full" in store.degraded
    seq = store.append("event", 2, {"kind": "fault_raised"})
    assert seq is not None  # the last space is kept for events
    roomy = Store(str(tmp_path / "ok"), min_free_mb=0.0)  # 0 switches the check off
    assert roomy.append("telemetry", 1, {"x": 1}) is not None and roomy.degraded is None


def test_background_append_gives_seqs_at_once_and_commits_them_in_order(tmp_path: Path):
    s = Store(str(tmp_path), background=True)
    woken: list[int] = []
    s.on_append.append(woken.append)
    seqs = _fill(s, 50) + _fill(s, 5, "event")
    assert seqs == list(range(1, 56)) and s.last_seq() == 55
    assert s.backlog() == 55  # queued records count as backlog before their commit
    assert s.flush(5.0)
    assert [r.seq for r in s.pending_raw(0, None, 1000)] == seqs
    assert woken and woken[-1] == 55, "the uplink is woken after the commit, with the newest seq"
    s.close()


def test_background_close_commits_everything_queued(tmp_path: Path):
    s = Store(str(tmp_path), background=True)
    seqs = _fill(s, 300)
    s.close()  # no flush first: close must not lose the queue
    again = Store(str(tmp_path))
    assert [r.seq for r in again.pending_raw(0, None, 1000)] == seqs
    assert again.append("event", 1, {"kind": "fault_raised"}) == seqs[-1] + 1
    again.close()


def test_background_append_does_not_wait_for_a_held_write_lock(tmp_path: Path):
    # The uplink thread's deletes hold SQLite's write lock now and then; the control loop's appends must
    # return at once and be committed when the lock is free.
    import threading

    s = Store(str(tmp_path), background=True)
    holder = sqlite3.connect(s.path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as a long delete would hold it
    release = threading.Event()
    seqs: list[int] = []

    def appends() -> None:
        seqs.extend(_fill(s, 20))
        release.set()

    t = threading.Thread(target=appends)
    t.start()
    # appends that waited for the lock would need busy_timeout (2 s) each and then fail
    assert release.wait(1.5), "append waited for the write lock"
    holder.execute("COMMIT")
    t.join()
    assert s.flush(5.0)
    assert [r.seq for r in s.pending_raw(0, None, 100)] == seqs and s.write_errors == 0
    holder.close()
    s.close()


def test_background_write_failure_is_retried_in_order_until_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # disk full: records wait in memory, in seq order, and are written when there is room again; the
    # consumer sees no seq missing
    monkeypatch.setattr(store_mod, "DEGRADED_HOLD_S", 0.3)
    monkeypatch.setattr(store_mod, "RETRY_S", 0.05)
    s = Store(str(tmp_path), background=True)
    _fill(s, 2, "event")
    assert s.flush(5.0)
    s._wdb.execute("DELETE FROM records")
    pages = s._wdb.execute("PRAGMA page_count").fetchone()[0]
    s._wdb.execute(f"PRAGMA max_page_count = {pages}")
    seqs = [s.append("telemetry", 1_700_000_000_000 + i, interval_payload(i)) for i in range(50)]
    seqs.append(s.append("event", 1, {"kind": "fault_raised", "name": "x"}))
    assert None not in seqs  # never raises, never drops while it can hold
    assert not s.flush(0.5), "nothing can be written while the disk is full"
    assert s.write_errors > 0 and "full" in (s.last_error or "") and s.degraded
    assert s.backlog() == len(seqs)
    s._wdb.execute("PRAGMA max_page_count = 1000000")  # room again
    assert s.flush(5.0)
    assert [r.seq for r in s.pending_raw(0, None, 1000)] == seqs, "every seq written, in order"
    wait_for(lambda: s.degraded is None, 5, what="degraded clears once writes succeed")
    s.close()


def test_held_records_beyond_the_bound_drop_oldest_telemetry_first():
    from collections import deque

    held = deque(
        [
            (1, "event", 0, ""),
            (2, "telemetry", 0, ""),
            (3, "telemetry", 0, ""),
            (4, "event", 0, ""),
            (5, "telemetry", 0, ""),
        ]
    )
    assert store_mod._shed(held, 5) == 0 and len(held) == 5
    assert store_mod._shed(held, 3) == 2
    assert [r[0] for r in held] == [1, 4, 5]
    assert store_mod._shed(held, 1) == 2  # telemetry 5 first, then the oldest event
    assert [r[0] for r in held] == [4]


class _ManualClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_the_injected_clock_drives_the_degraded_hold_and_the_free_space_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    clock = _ManualClock()
    free = {"bytes": 10 * 1048576}

    class Vfs:
        f_frsize = 1
        f_bavail = 0

    def statvfs(_path: str) -> Vfs:
        v = Vfs()
        v.f_bavail = free["bytes"]
        return v

    monkeypatch.setattr(store_mod.os, "statvfs", statvfs)
    s = Store(str(tmp_path), min_free_mb=64.0, clock=clock)
    assert s.append("telemetry", 1, {"x": 1}) is None, "10 MB free, 64 MB wanted: telemetry dropped"
    assert s.degraded and "disk nearly full" in s.degraded
    free["bytes"] = 1024 * 1048576
    clock.now_s += 0.5
    assert s.append("telemetry", 2, {"x": 1}) is None, "free space is read at most once a second"
    clock.now_s += 0.6
    assert s.append("telemetry", 3, {"x": 1}) is not None
    assert s.degraded is not None, "the fault is held after the last failure"
    clock.now_s += store_mod.DEGRADED_HOLD_S
    assert s.degraded is None
    s.close()


# -- a really full file system (issue 17 item 11) ---------------------------------------------------
FULL_DISK_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[2])
from edge.telemetry.store import Store
from tests.uplink_harness import interval_payload

data = sys.argv[1]
subprocess_out = {}
s = Store(data, max_mb=1000.0, min_free_mb=0.0, reserve_mb=float(sys.argv[3]))
# the store itself fills the disk
i = 0
while s.write_errors == 0 and i < 10000:
    s.append("telemetry", 1_700_000_000_000 + i, interval_payload(i))
    i += 1
tele = i
# ... and then something else takes every byte left (a runaway log)
try:
    with open(os.path.join(data, "..", "junk"), "wb") as f:
        while True:
            f.write(b"x" * 4096)
            f.flush()
except OSError:
    pass
events = [s.append("event", 1_700_000_000_000 + j, {"kind": "fault_raised", "name": "f", "detail": "y" * 500})
          for j in range(50)]
stats = s.stats()
s.close()
print(json.dumps({"telemetry": tele, "events": events, "stats": stats}))
"""


def _on_a_small_tmpfs(tmp_path: Path, size_mb: int, reserve_mb: float) -> dict:
    """Run FULL_DISK_SCRIPT with the store on its own tmpfs of ``size_mb`` (a mount namespace of its own)."""
    import json
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK_SCRIPT)
    repo = str(Path(__file__).resolve().parents[1])
    shell = (
        f"mount -t tmpfs -o size={size_mb}m tmpfs {mnt} && mkdir {mnt}/data && "
        f"{sys.executable} {script} {mnt}/data {repo} {reserve_mb}"
    )
    flags = ["-m"] if os.geteuid() == 0 else ["-Urm"]
    r = subprocess.run(["unshare", *flags, "sh", "-c", shell], capture_output=True, text=True, timeout=120)
    if r.returncode != 0 and "mount" in r.stderr and "Operation not permitted" in r.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_on_a_really_full_disk_eviction_still_runs_and_new_events_are_written(tmp_path: Path):
    # SQLite's "drop the oldest telemetry and retry" needs disk itself (the WAL grows with the DELETE): the
    # reserve file is given up to make that room
    out = _on_a_small_tmpfs(tmp_path, size_mb=16, reserve_mb=4.0)
    assert out["telemetry"] > 100, out
    assert None not in out["events"], f"events lost on a full disk: {out}"
    st = out["stats"]
    assert st["evicted"] > 0 and st["write_errors"] > 0
    assert st["records_lost"] == 0, "the write that hit the full disk was retried after the eviction"


def test_failed_writes_and_records_lost_are_counted_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(store_mod, "RETRY_S", 0.05)
    s = Store(str(tmp_path), background=True, reserve_mb=0)
    _fill(s, 2, "event")
    assert s.flush(5.0)
    s._wdb.execute("DELETE FROM records")
    pages = s._wdb.execute("PRAGMA page_count").fetchone()[0]
    s._wdb.execute(f"PRAGMA max_page_count = {pages}")
    s.append("telemetry", 1, interval_payload(0))
    wait_for(lambda: s.write_errors >= 2, 5, what="two failed attempts")
    assert s.records_lost == 0, "held and retried: nothing lost yet"
    s._wdb.execute("PRAGMA max_page_count = 1000000")
    assert s.flush(5.0) and s.records_lost == 0
    s.close()
    direct = Store(str(tmp_path / "direct"), reserve_mb=0)
    assert direct.append("telemetry", 1, {"x": float("nan")}) is None
    assert (direct.write_errors, direct.records_lost) == (1, 1)
    direct.close()


def test_the_store_fault_text_counts_failed_writes_and_lost_records_apart():
    from edge.telemetry.recorder import Recorder

    class Faults:
        def __init__(self) -> None:
            self.text: dict[str, str] = {}

        def set(self, name: str, detail: str) -> None:
            self.text[name] = detail

        def clear(self, name: str) -> None:
            self.text.pop(name, None)

    class Held:
        write_errors = 2
        records_lost = 0
        dropped_low_disk = 0
        degraded = "database or disk is full"

    faults = Faults()
    rec = Recorder(None, Held(), faults, 1.0, lambda: 0.0, lambda: 0)  # type: ignore[arg-type]
    rec.check_store()
    assert faults.text["telemetry_store_error"] == (
        "telemetry store write failed (database or disk is full); 2 failed writes so far, "
        "no record lost (held and retried); control unaffected"
    )
    Held.records_lost, Held.dropped_low_disk = 3, 5
    rec.check_store()
    assert (
        "3 records lost (not written), 5 telemetry records dropped for low disk" in faults.text["telemetry_store_error"]
    )


def test_backlog_counts_a_record_once_while_its_commit_is_being_accounted(tmp_path: Path):
    # the writer commits, then counts the records as written: a backlog read in between counted them
    # twice (70 of 55 in one CI run), and a status or an uplink decision on it was wrong for a moment
    import threading

    s = Store(str(tmp_path), background=True)
    committed, go_on = threading.Event(), threading.Event()
    written = s._written

    def slow_written(n: int) -> None:
        committed.set()
        go_on.wait(5.0)
        written(n)

    s._written = slow_written  # type: ignore[method-assign]
    _fill(s, 30)
    assert committed.wait(5.0)
    try:
        assert s.backlog() == 30
    finally:
        go_on.set()
    assert s.flush(5.0) and s.backlog() == 30
    s.close()
