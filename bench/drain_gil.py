"""What a telemetry backlog drain costs the control loop of the same process (the GIL they share).

    python -m bench.drain_gil                     # 3 rounds of 12 s per variant
    python -m bench.drain_gil --seconds 5 --rounds 1

An asyncio loop on the main thread (the daemon's control loop stands for it; ``sys.setswitchinterval``
1 ms as the daemon sets it) sleeps 2 ms again and again and records how late it wakes up (the lag), while
the real uplink (its own thread and asyncio loop, paho's thread, tests.uplink_harness) drains a v2 backlog
of 300,000 compact records into a local mosquitto. Three variants, interleaved round by round so that a
shared machine's load falls on all of them alike:

- ``none``: no drain (the machine's own floor);
- ``unpaced``: the drain as issue 18 first built it: ~5 compact records per message (20 bytes per
  sample) and no pace, as fast as it can (the live look-up only on new records is in both);
- ``paced``: as shipped: ~20 records per message (``delivery.COMPACT_BYTES_PER_SAMPLE``) at most
  ``uplink.BACKLOG_RECORDS_PER_S`` records a second.

Quicker and steadier on a shared machine than bench/reaction.py (which measures the whole safety path
under a drain, CAN flood and Modbus polling over 10,000 events): this isolates the drain's share.
Goal: the paced drain adds at most 1 ms to the loop's p99 lag over ``none``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.report import goals, table
from edge.config.telemetry import Mqtt, Telemetry
from edge.telemetry import delivery, uplink
from edge.telemetry.store import SCHEMA
from tests.mqtt_broker import Broker
from tests.uplink_harness import UplinkHarness, compact_records

RECORDS = 300_000
SLEEP_S = 0.002
GOAL_EXTRA_P99_MS = 1.0
VARIANTS = {
    "none": None,
    "unpaced": (20, 0.0),
    "paced": (delivery.COMPACT_BYTES_PER_SAMPLE, uplink.BACKLOG_RECORDS_PER_S),
}


def prefill(data: Path) -> None:
    """RECORDS compact records (one simulated hour of the recorder's records, repeated) and their aliases."""
    signals, hour = compact_records(3600)
    data.mkdir(parents=True)
    db = sqlite3.connect(data / "telemetry.sqlite3", isolation_level=None)
    try:
        db.executescript(SCHEMA)
        db.execute("BEGIN")
        db.executemany("INSERT INTO signals VALUES (?, ?, ?, ?)", [(s.alias, s.name, s.unit, s.exp) for s in signals])
        t0 = int(time.time() * 1000) - RECORDS * 10_000
        rows = ((t0 + i * 10_000, hour[i % len(hour)][1]) for i in range(RECORDS))
        db.executemany("INSERT INTO records(kind, t_ms, payload) VALUES ('telemetry', ?, ?)", rows)
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=WAL")
    finally:
        db.close()


@contextmanager
def drain(variant: tuple[int, float] | None) -> Iterator[UplinkHarness | None]:
    """A broker and an uplink draining the backlog with the variant's batch size and pace (None: no drain)."""
    if variant is None:
        yield None
        return
    saved = delivery.COMPACT_BYTES_PER_SAMPLE, uplink.BACKLOG_RECORDS_PER_S
    delivery.COMPACT_BYTES_PER_SAMPLE, uplink.BACKLOG_RECORDS_PER_S = variant
    tmp = Path(tempfile.mkdtemp(prefix="edge-drain-gil-"))
    broker = Broker(tmp / "broker")
    h = None
    try:
        prefill(tmp / "data")
        broker.start()
        h = UplinkHarness(tmp / "data", Mqtt(port=broker.port, reconnect_min_s=0.1), telemetry=Telemetry())
        h.start()
        deadline = time.monotonic() + 20
        while h.uplink.stats.records_delivered == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the drain did not start: {h.uplink.status()}")
            time.sleep(0.01)
        yield h
    finally:
        if h is not None:
            h.stop()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        delivery.COMPACT_BYTES_PER_SAMPLE, uplink.BACKLOG_RECORDS_PER_S = saved


async def lags_ms(seconds: float) -> list[float]:
    out = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        await asyncio.sleep(SLEEP_S)
        out.append((time.perf_counter() - t - SLEEP_S) * 1000.0)
    return out


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=12.0, help="lag measured per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sys.setswitchinterval(0.001)  # as edge/daemon.py
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    lags: dict[str, list[float]] = {name: [] for name in VARIANTS}
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name, variant in VARIANTS.items():
            with drain(variant) as h:
                d0 = h.uplink.stats.records_delivered if h is not None else 0
                got = asyncio.run(lags_ms(args.seconds))
                rate = (h.uplink.stats.records_delivered - d0) / args.seconds if h is not None else 0.0
            got.sort()
            lags[name] += got
            rates[name].append(rate)
            print(
                f"round {r + 1} {name:8s} lag p99 {pct(got, 0.99):.2f} ms, max {got[-1]:.1f} ms, drain "
                f"{rate:,.0f} rec/s, load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    rows = []
    for name in VARIANTS:
        xs = sorted(lags[name])
        rate = sum(rates[name]) / len(rates[name])
        rows.append(
            (
                f"loop lag, drain {name}",
                f"p50 {pct(xs, 0.5):.2f} / p99 {pct(xs, 0.99):.2f} / p99.9 {pct(xs, 0.999):.2f} / max {xs[-1]:.1f} ms",
                f"drain {rate:,.0f} rec/s",
                f"{pct(xs, 0.99) / max(pct(sorted(lags['none']), 0.99), 1e-9):.2f}",
            )
        )
    table(rows)
    extra = pct(sorted(lags["paced"]), 0.99) - pct(sorted(lags["none"]), 0.99)
    goals([("drain_loop_lag_p99", extra <= GOAL_EXTRA_P99_MS, f"+{extra:.2f} ms", f"+{GOAL_EXTRA_P99_MS:.0f} ms")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
