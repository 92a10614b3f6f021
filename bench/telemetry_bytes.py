"""Telemetry volume of a day: v2 (report by exception, MessagePack, zlib) against v1 JSON.

``python -m bench.telemetry_bytes``: the default simulated cabinet (edge/sim/sim-bench.toml) in simulated time
(SimStepper: the simulator's dynamics unchanged) for one charging session and one idle stretch; the day is
10 sessions plus idle for the rest (the figures of the two parts scaled, not re-simulated). Then a 7-day
backlog built from those records drains to a local mosquitto through the real uplink.

Prints a table figure/value/limit/ratio and one ``goal <name>: met`` or ``goal <name>: missed (<value> vs <limit>)``
line per goal (bench/report.py).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
import tomllib
import zlib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.report import goals, table
from edge.config import Config
from edge.config.telemetry import Mqtt, Telemetry
from edge.sim.stepper import SimStepper
from edge.telemetry import v2decode
from edge.telemetry.compact import Deadbands
from edge.telemetry.formats import EncoderContext, V1Json, V2Compact
from edge.telemetry.store import ROW_OVERHEAD_BYTES, RawRecord
from edge.telemetry.topics import Topics
from tests.mqtt_broker import Broker
from tests.uplink_harness import UplinkHarness

SESSIONS_PER_DAY = 10
SESSION_S = 1800.0  # 25 min at the vehicle's demand, 5 min taper
IDLE_S = 1800.0  # idle stretch simulated; the day's idle hours are scaled from it
DAY_S = 86400.0
STORE_MB = 256.0


def _ctx(store: Any, cfg: Config) -> EncoderContext:
    t = cfg.telemetry
    return EncoderContext(
        Topics("cabinet", "site", "cab"),
        "site",
        "cab",
        signals=store.signals,
        signal_count=lambda: store.alias_count,
        deadband=Deadbands(t.deadband_by_unit, t.deadband, t.deadband_default).of,
    )


def _part(cfg: Config, seconds: float, charging: bool) -> dict[str, Any]:
    """One stretch of simulated time: wire and store bytes of v1 and v2, and the v2 CPU time."""
    sim = SimStepper(cfg, step_s=0.1)
    v1_msgs: list[int] = []
    cpu = [0.0]
    try:
        rec = sim.cabinet.recorder
        flush, add = rec.sampler.flush, rec.compactor.add  # type: ignore[union-attr]
        v1 = V1Json(_ctx(sim.cabinet.store, cfg))

        def tapped() -> list[dict[str, Any]]:
            samples = flush()
            body = json.dumps({"interval_s": 1.0, "samples": samples}, separators=(",", ":"))
            v1_msgs.append(len(v1.encode([RawRecord(1, "telemetry", 0, body)], False)[0].payload))
            return samples

        def timed_add(t_ms: int, samples: list[dict[str, Any]]) -> Any:
            t0 = time.process_time()
            try:
                return add(t_ms, samples)
            finally:
                cpu[0] += time.process_time() - t0

        rec.sampler.flush = tapped  # type: ignore[method-assign]
        rec.compactor.add = timed_add  # type: ignore[method-assign,union-attr]
        sim.run(60.0)  # start-up faults settle; not counted
        v1_msgs.clear()
        store = sim.cabinet.store
        rec.close_record()
        store.flush()
        first = store.last_seq()
        if charging:
            sim.set_vehicle_demand(180.0)
            sim.run(seconds - 300.0)
            sim.set_vehicle_demand(60.0)
            sim.run(300.0)
            sim.set_vehicle_demand(0.0)
        else:
            sim.set_vehicle_demand(0.0)
            sim.run(seconds)
        rec.close_record()
        store.flush()
        rows = [r for r in store.pending_raw(first, None, 1_000_000) if r.kind == "telemetry"]
        enc = V2Compact(_ctx(store, cfg))
        enc.birth()
        t0 = time.process_time()
        v2_msgs = [enc.encode([r], False)[-1].payload for r in rows]  # live: one message per record
        cpu[0] += time.process_time() - t0
        alt = _compressors(enc, rows)
        signals = store.signals()
    finally:
        sim.close()
    return {
        "seconds": seconds,
        "v1_wire": sum(v1_msgs),
        "v1_store": sum(m + ROW_OVERHEAD_BYTES for m in v1_msgs),  # the stored JSON is the message's record
        "v2_wire": sum(len(m) for m in v2_msgs),
        "v2_store": sum(len(r.payload) + ROW_OVERHEAD_BYTES for r in rows),
        "v2_cpu_s": cpu[0],
        "rows": rows,
        "signals": signals,
        "alt": alt,
    }


def _compressors(enc: V2Compact, rows: list[RawRecord]) -> dict[str, int]:
    """Body bytes of the same live messages under other compressors (docs/TELEMETRY.md's choice)."""
    bodies = [enc.pack([r], False)[3:] for r in rows]
    raw = [zlib.decompress(b) for b in bodies]
    out = {"none": sum(len(r) for r in raw), "zlib-6": sum(len(b) for b in bodies)}
    try:
        import zstandard

        out["zstd-3"] = sum(len(zstandard.ZstdCompressor(level=3).compress(r)) for r in raw)
        zd = zstandard.train_dictionary(4096, raw[: len(raw) // 2])
        zc = zstandard.ZstdCompressor(level=3, dict_data=zd)
        out["zstd-3 + 4 kB dictionary"] = sum(len(zc.compress(r)) for r in raw[len(raw) // 2 :]) * 2
    except (ImportError, RuntimeError, ValueError) as exc:  # zstandard missing, or too few samples to train
        out[f"zstd ({type(exc).__name__})"] = 0
    return out


class SeqCounter:
    def __init__(self, port: int) -> None:
        self.seqs: set[int] = set()
        self.lock = threading.Lock()
        ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bytes-consumer", protocol=mqtt.MQTTv5)

        def on_connect(cl: mqtt.Client, *_: Any) -> None:
            cl.subscribe("cabinet/+/+/telemetry", qos=1)
            ready.set()

        c.on_connect = on_connect
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c
        if not ready.wait(10):
            raise RuntimeError("consumer could not connect")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        seqs = [r.seq for r in v2decode.decode_message(bytes(msg.payload)).records]
        with self.lock:
            self.seqs.update(seqs)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(cond: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("bench condition not met in time")
        time.sleep(0.05)


def _drain(day_rows: list[RawRecord], signals: list[Any], days: int) -> tuple[float, int, int]:
    """Seconds until a ``days`` backlog of these records is acknowledged by a local mosquitto."""
    work = Path(tempfile.mkdtemp(prefix="bench-bytes-"))
    broker = Broker(work / "broker")
    try:
        broker.start()
        cfg = Mqtt(port=broker.port, reconnect_min_s=0.1, reconnect_max_s=1.0)
        h = UplinkHarness(work / "data", cfg, store_max_mb=4096, telemetry=Telemetry())

        def fill() -> int:
            for s in signals:
                h.store.alias(s.name, s.unit, s.exp)
            n = 0
            for d in range(days):
                for r in day_rows:
                    h.store.append("telemetry", r.t_ms + d * 86_400_000, r.payload)  # type: ignore[arg-type]
                    n += 1
            return n

        n = h.call(fill, timeout=600)
        consumer = SeqCounter(broker.port)
        t = time.perf_counter()
        h.start()
        _wait(lambda: h.call(h.store.backlog) == 0, 600)
        took = time.perf_counter() - t
        _wait(lambda: len(consumer.seqs) >= n, 60)
        sent = h.uplink.stats.messages_sent
        consumer.close()
        h.stop()
        return took, n, sent
    finally:
        broker.stop(signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--session-s", type=float, default=SESSION_S)
    ap.add_argument("--idle-s", type=float, default=IDLE_S)
    ap.add_argument("--days", type=int, default=7, help="backlog to drain")
    args = ap.parse_args()
    sim_toml = importlib.resources.files("edge").joinpath("sim/sim-bench.toml").read_text()
    cfg = Config.model_validate(tomllib.loads(sim_toml))
    wall = time.perf_counter()
    ses = _part(cfg, args.session_s, charging=True)
    idle = _part(cfg, args.idle_s, charging=False)
    k_ses = SESSIONS_PER_DAY * SESSION_S / args.session_s
    k_idle = (DAY_S - SESSIONS_PER_DAY * SESSION_S) / args.idle_s

    def day(key: str) -> float:
        return float(ses[key] * k_ses + idle[key] * k_idle)

    v1_wire, v2_wire = day("v1_wire") / 1e6, day("v2_wire") / 1e6
    v1_days, v2_days = STORE_MB * 1048576 / day("v1_store"), STORE_MB * 1048576 / day("v2_store")
    cpu_pct = day("v2_cpu_s") / DAY_S * 100
    # the 7-day backlog: the day's records (sessions and idle mixed in the day's proportion)
    n_ses = max(1, round(len(ses["rows"]) * SESSIONS_PER_DAY * SESSION_S / args.session_s))
    n_idle = round(len(idle["rows"]) * k_idle)
    day_rows = [ses["rows"][i % len(ses["rows"])] for i in range(n_ses)]
    day_rows += [idle["rows"][i % len(idle["rows"])] for i in range(n_idle)]
    drain_s, n_rec, n_msg = _drain(day_rows, ses["signals"], args.days)
    drained = f"{drain_s:.1f} s ({n_rec:,} records, {n_msg:,} msgs)"
    rows = [
        ("wire per day (v2)", f"{v2_wire:.2f} MB", "<= 10 MB", f"{v2_wire / 10:.3f}", f"v1 {v1_wire:.0f} MB"),
        ("store capacity, 256 MB (v2)", f"{v2_days:.0f} days", ">= 30 days", f"{v2_days / 30:.1f}",
         f"v1 {v1_days * 24:.0f} h"),
        ("encode + compress CPU (v2)", f"{cpu_pct:.3f} % of a core", "<= 1 %", f"{cpu_pct:.3f}", "-"),
        (f"{args.days}-day backlog drain (v2)", drained, "<= 60 s", f"{drain_s / 60:.2f}",
         "v1: 24 h in ~60 s (bench/uplink.py)"),
        ("v1 / v2 wire", f"{v1_wire / v2_wire:.0f}x", ">= 56x", f"{v1_wire / v2_wire / 56:.1f}", "-"),
    ]  # fmt: skip
    for name, b in ses["alt"].items():
        rows.append((f"session body, {name}", f"{b * k_ses / 1e6:.2f} MB/day", "-", "-", "choice in docs"))
    print(
        f"Telemetry bytes bench: default simulated cabinet, {SESSIONS_PER_DAY} sessions x {SESSION_S / 60:.0f} min a "
        f"day (simulated {args.session_s:.0f} s charging + {args.idle_s:.0f} s idle, scaled), wall "
        f"{time.perf_counter() - wall:.0f} s"
    )
    table(rows, head=("figure", "value", "limit", "ratio", "v1"))
    met = goals(
        [
            ("wire_per_day", v2_wire <= 10, f"{v2_wire:.2f} MB", "10 MB"),
            ("store_days", v2_days >= 30, f"{v2_days:.0f} days", "30 days"),
            ("cpu", cpu_pct <= 1, f"{cpu_pct:.3f} %", "1 %"),
            ("backlog_drain", drain_s <= 60, f"{drain_s:.1f} s", "60 s"),
        ]
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
