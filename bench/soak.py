"""Whole-cabinet soak and fault campaign: ``python -m bench.soak --duration 1h`` (from the repository root).

The daemon runs on the simulated cabinet (``edge run --sim``, a real process), charging sessions cycle,
and a schedule of faults is injected through the simulator's control socket, the broker's process, the
daemon's own process and the data directory's file system. A consumer on a real mosquitto counts every
telemetry and event record. One table is printed (and, with ``--report``, written into
docs/BENCHMARKS.md): memory, CPU, control tick jitter, every fault's detection and clearing, records
produced vs received, time to first telemetry.

Goals (issue 9): memory growth < 1 MB/h and steady state <= 60 MB; mean CPU <= 15 % of one core;
every fault detected and cleared; zero records lost (duplicates only with an existing seq); first
telemetry <= 2 s after start. After the table, one line per goal (bench/report.py): faults, lost, cpu,
rss, rss_growth, first_telemetry. The exit code is 1 on what ``problems`` lists (lost or malformed
records, a fault not detected or cleared, memory above 60 MB or growing beyond a bound scaled to the
run, an unclean stop), not on CPU or the 1 MB/h figure, which a short or shared run cannot hold to.
``run_soak`` is also used by tests/test_soak.py with a short duration.

The daemon process also runs the simulator (same process, python-can virtual bus), so CPU and memory
are upper bounds for the daemon alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report import Goal, goals
from tests.conftest import api_request as _request
from tests.conftest import sim_config_text
from tests.mqtt_broker import Broker, Consumer

REPO = Path(__file__).resolve().parent.parent

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
POLL_S = 0.05


@dataclass
class FaultResult:
    name: str
    injected: int = 0
    detected: int = 0
    cleared: int = 0
    detect_s: list[float] = field(default_factory=list)
    clear_s: list[float] = field(default_factory=list)
    rules: set[str] = field(default_factory=set)
    notes: set[str] = field(default_factory=set)


@dataclass
class Fault:
    """One injectable failure: how to cause it, how the daemon shows it, how to undo it."""

    name: str
    inject: Callable[[Soak], None]
    detect: Callable[[dict[str, Any]], str | None]  # status -> what detected it, or None
    restore: Callable[[Soak], None]
    cleared: Callable[[dict[str, Any]], bool]
    clear_faults: tuple[str, ...] = ()  # latched faults the technician clears after the repair
    hold_s: float = 2.0  # how long the fault stays after detection
    detect_timeout_s: float = 15.0
    clear_timeout_s: float = 20.0


def _fault_named(*names: str) -> Callable[[dict[str, Any]], str | None]:
    def detect(st: dict[str, Any]) -> str | None:
        return next((n for n in names if n in st["faults"]), None)

    return detect


def _none_of(*names: str) -> Callable[[dict[str, Any]], bool]:
    return lambda st: not any(n in st["faults"] for n in names)


def _module_alarm_detect(st: dict[str, Any]) -> str | None:
    m = st["modules"]["3"]
    if "over_temperature" in m["alarms"] and m["set_current_a"] == 0:
        return "module 3 alarm over_temperature -> share removed"
    return None


def _uplink(st: dict[str, Any]) -> dict[str, Any]:
    return dict(st.get("telemetry", {}).get("uplink", {}))


def _uplink_down(st: dict[str, Any]) -> str | None:
    return "uplink disconnected" if not _uplink(st).get("connected", True) else None


def _uplink_up(st: dict[str, Any]) -> bool:
    return bool(_uplink(st).get("connected"))


def faults() -> list[Fault]:
    return [
        Fault(
            "meter silent",
            lambda s: s.knob(knob="meter_silent", meter="grid", value=True),
            _fault_named("grid_meter_lost"),
            lambda s: s.knob(knob="meter_silent", meter="grid", value=False),
            _none_of("grid_meter_lost"),
        ),
        Fault(
            "power module silent and back",
            lambda s: s.knob(knob="module_silent", address=2, value=True),
            _fault_named("module_lost_2"),
            lambda s: s.knob(knob="module_silent", address=2, value=False),
            _none_of("module_lost_2"),
        ),
        Fault(
            "module alarm",
            lambda s: s.knob(knob="module_alarm", address=3, alarm="over_temperature", value=True),
            _module_alarm_detect,
            lambda s: s.knob(knob="module_alarm", address=3, alarm="over_temperature", value=False),
            lambda st: not st["modules"]["3"]["alarms"],
        ),
        Fault(
            "coolant pump stop",
            lambda s: s.knob(knob="pump_failed", value=True),
            _fault_named("coolant_flow_low"),
            lambda s: s.knob(knob="pump_failed", value=False),
            _none_of("coolant_flow_low"),
            clear_faults=("coolant_flow_low",),
        ),
        Fault(
            "pin sensor frozen",
            lambda s: s.knob(knob="cable_frozen", value=True),
            _fault_named("pin_dc_plus_invalid", "pin_dc_plus_stale"),
            lambda s: s.knob(knob="cable_frozen", value=False),
            _none_of("pin_dc_plus_invalid", "pin_dc_plus_stale"),
        ),
        Fault(
            "pin sensor silent",
            lambda s: s.knob(knob="cable_silent", value=True),
            _fault_named("pin_dc_plus_stale"),
            lambda s: s.knob(knob="cable_silent", value=False),
            _none_of("pin_dc_plus_stale"),
        ),
        Fault(
            "CAN bus-off",
            lambda s: s.knob(knob="can_bus_off"),
            _fault_named("can_bus_off"),
            lambda s: None,
            _none_of("can_bus_off"),
        ),
        Fault(
            "broker killed and restarted",
            lambda s: s.broker.stop(signal.SIGTERM),
            _uplink_down,
            lambda s: s.broker.start(),
            _uplink_up,
            hold_s=3.0,
            detect_timeout_s=70.0,
        ),
        Fault(
            "disk nearly full",
            lambda s: s.fill_disk(),
            _fault_named("telemetry_store_error"),
            lambda s: s.free_disk(),
            _none_of("telemetry_store_error"),
            hold_s=3.0,
            clear_timeout_s=60.0,
        ),  # the store reports healthy after 30 s of good writes
    ]


class Soak:
    def __init__(
        self,
        workdir: Path,
        duration_s: float,
        interval_s: float = 1.0,
        log: Callable[[str], None] = print,
        memprobe: Path | None = None,
    ) -> None:
        self.dir = workdir
        self.memprobe = memprobe
        self.duration_s = duration_s
        self.log = log
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.tmpfs = self._mount_tmpfs()
        self.broker = Broker(self.dir / "broker")
        self.sock = str(self.dir / "edge.sock")
        self.sim_sock = str(self.dir / "sim-control.sock")
        self.config = self.dir / "config.toml"
        self.interval_s = interval_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self.first_telemetry_s: list[float] = []
        self.rss_kb: list[tuple[float, int, int]] = []  # (t, life, rss)
        self.rss_ready_kb: list[int] = []  # at each start, once the API answers
        self.cpu: list[tuple[float, float]] = []  # per life: (wall s, cpu s)
        self.ticks: list[dict[str, Any]] = []
        self.results: dict[str, FaultResult] = {}
        self.lives = 0
        self.exit_codes: list[int] = []
        self._life_start = 0.0
        self._cpu_at_start = 0.0

    # -- environment ---------------------------------------------------------------------------------
    def _mount_tmpfs(self) -> bool:
        """The data directory on a small tmpfs of its own, so "disk full" is a real ENOSPC."""
        if os.geteuid() != 0:
            return False
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m", "soak-data", str(self.data_dir)], capture_output=True, timeout=10
        )
        return res.returncode == 0

    def fill_disk(self) -> None:
        if not self.tmpfs:
            raise RuntimeError("needs root to mount a tmpfs for the data directory")
        with open(self.data_dir / "filler", "wb", buffering=0) as f:
            chunk = b"\0" * (1 << 20)
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk)
            with contextlib.suppress(OSError):  # the last partial megabyte too
                while True:
                    f.write(b"\0" * 4096)

    def free_disk(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.data_dir / "filler")

    def close(self) -> None:
        self.free_disk()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.broker.stop(signal.SIGKILL)
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.data_dir)], capture_output=True, timeout=10)

    def write_config(self) -> None:
        extra = (
            f"\n[telemetry]\ninterval_s = {self.interval_s}\nmin_free_mb = 16.0\n"
            f'\n[telemetry.mqtt]\nhost = "127.0.0.1"\nport = {self.broker.port}\n'
            "reconnect_min_s = 0.5\nreconnect_max_s = 4.0\n"
        )
        self.config.write_text(sim_config_text(self.dir, extra))

    # -- daemon --------------------------------------------------------------------------------------
    def start_daemon(self) -> None:
        # the daemon's environment as systemd/cabinet-edge.service sets it (MALLOC_ARENA_MAX: glibc's heap
        # arenas per thread were 0.7-0.8 MB of the soak's resident memory)
        env = dict(os.environ, PYTHONPATH=str(REPO), MALLOC_ARENA_MAX="2")
        env.pop("NOTIFY_SOCKET", None)
        log = open(self.dir / "daemon.log", "ab")
        self.spawned_at = time.monotonic()
        # the daemon and its simulated devices; not the simulator's mirrors for `edge scan` (a Modbus TCP server
        # and slcan bridges: about 1.5 MB of a process the cabinet never runs)
        edge = ["run", "--sim", "--no-scan-access", "--config", str(self.config)]
        launcher = (
            ["-m", "edge"] if self.memprobe is None else ["-m", "bench.memprobe", "--out", str(self.memprobe), "--"]
        )
        self.proc = subprocess.Popen(
            [sys.executable, *launcher, *edge], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir
        )
        log.close()
        self.lives += 1
        self._wait(lambda: self.status() is not None and os.path.exists(self.sim_sock), 20, "daemon ready")
        self._life_start = time.monotonic()
        self._cpu_at_start = self._cpu_s()
        self.rss_ready_kb.append(self._rss_kb())
        self.knob(knob="sessions", value=True)

    def kill_daemon(self, sig: int) -> int:
        assert self.proc is not None
        self._end_life()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=10)
        self.exit_codes.append(code)
        return code

    def _end_life(self) -> None:
        st = self.status()
        if st is not None:
            self.ticks.append(st.get("control", {}))
        self.cpu.append((time.monotonic() - self._life_start, self._cpu_s() - self._cpu_at_start))

    def _cpu_s(self) -> float:
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def _rss_kb(self) -> int:
        assert self.proc is not None
        try:
            return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * PAGE_KB
        except FileNotFoundError:
            return 0

    def status(self) -> dict[str, Any] | None:
        try:
            answer = _request(self.sock, {"cmd": "status"})
        except (OSError, ValueError):
            return None
        return dict(answer["data"]) if answer.get("ok") else None

    def knob(self, **req: Any) -> None:
        answer = _request(self.sim_sock, req)
        if not answer.get("ok"):
            raise RuntimeError(f"sim knob {req}: {answer}")

    def clear(self, fault: str) -> dict[str, Any]:
        return _request(self.sock, {"v": 1, "cmd": "clear", "args": {"fault": fault}})

    def _wait(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sample()
            value = cond()
            if value:
                return value
            time.sleep(POLL_S)
        raise TimeoutError(f"soak: timed out after {timeout} s waiting for {what}")

    def sample(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            now = time.monotonic()
            if not self.rss_kb or now - self.rss_kb[-1][0] >= 1.0:
                self.rss_kb.append((now, self.lives, self._rss_kb()))

    # -- the campaign --------------------------------------------------------------------------------
    def run_fault(self, f: Fault) -> None:
        r = self.results.setdefault(f.name, FaultResult(f.name))
        r.injected += 1
        t0 = time.monotonic()
        f.inject(self)
        try:
            found = self._wait(lambda: (st := self.status()) and f.detect(st), f.detect_timeout_s, f.name)
            r.detected += 1
            r.detect_s.append(time.monotonic() - t0)
            r.rules.add(str(found))
            self.sample()
            time.sleep(f.hold_s)
        except TimeoutError:
            r.notes.add("not detected in time")
        t1 = time.monotonic()
        f.restore(self)
        try:
            for name in f.clear_faults:

                def cleared_now(name: str = name) -> bool:
                    st = self.status()
                    if st is None or name not in st.get("latched", []):
                        return True
                    return bool(self.clear(name).get("ok"))

                self._wait(cleared_now, f.clear_timeout_s, f"clear {name}")
            self._wait(lambda: (st := self.status()) and f.cleared(st), f.clear_timeout_s, f"{f.name} cleared")
            r.cleared += 1
            r.clear_s.append(time.monotonic() - t1)
        except TimeoutError:
            r.notes.add("not cleared in time")

    def run_daemon_kill(self) -> None:
        r = self.results.setdefault("daemon SIGKILL + restart", FaultResult("daemon SIGKILL + restart"))
        r.injected += 1
        code = self.kill_daemon(signal.SIGKILL)
        r.detected += 1
        r.detect_s.append(0.0)
        r.rules.add(f"process exit {code} -> restarted by the supervisor")
        t0 = time.monotonic()
        self.start_daemon()
        st = self.status() or {}
        if st.get("outputs", {}).get("contactor") == 1 and st.get("uptime_s", 9) < 0.5:
            r.notes.add("contactor closed right after restart")
        self._wait_first_telemetry()
        r.cleared += 1
        r.clear_s.append(time.monotonic() - t0)

    def _wait_first_telemetry(self) -> None:
        spawned = self.spawned_at
        n0 = len(self.consumer.on("telemetry"))

        def arrived() -> bool:
            return len(self.consumer.on("telemetry")) > n0

        self._wait(arrived, 30, "first telemetry")
        self.first_telemetry_s.append(time.monotonic() - spawned)

    def run(self) -> dict[str, Any]:
        self.broker.start()
        self.consumer = Consumer(self.broker.port, topic="#", client_id="soak-consumer")
        self.write_config()
        self.start_daemon()
        self._wait_first_telemetry()
        t_end = time.monotonic() + self.duration_s
        campaign = faults()
        if not self.tmpfs:
            campaign = [f for f in campaign if f.name != "disk nearly full"]
            self.results["disk nearly full"] = FaultResult("disk nearly full", notes={"not run: needs root (tmpfs)"})
        killed = False
        kill_at = time.monotonic() + self.duration_s * 0.4
        while time.monotonic() < t_end or not self.results or any(self.results.get(f.name) is None for f in campaign):
            for f in campaign:
                if not killed and time.monotonic() >= kill_at:
                    self.run_daemon_kill()
                    killed = True
                self.log(f"[{time.monotonic() - (t_end - self.duration_s):6.0f} s] {f.name}")
                self.run_fault(f)
                self.sample()
            if time.monotonic() >= t_end:
                break
            # quiet charging between rounds, sampling as we go
            quiet_end = min(t_end, time.monotonic() + 5.0)
            while time.monotonic() < quiet_end:
                self.sample()
                time.sleep(0.2)
        if not killed:
            self.run_daemon_kill()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        # let the uplink drain everything, then stop cleanly
        self._wait(lambda: (st := self.status()) and st["telemetry"].get("backlog", 1) == 0, 120, "backlog drained")
        code = self.kill_daemon(signal.SIGTERM)
        time.sleep(1.0)  # the broker forwards the last messages to the consumer
        db = sqlite3.connect(self.data_dir / "telemetry.sqlite3")
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
        last_seq = int(row[0]) if row else 0
        kept = {int(s) for (s,) in db.execute("SELECT seq FROM records")}
        db.close()
        received = self.consumer.seqs("telemetry", "events")
        unique = set(received)
        lost = sorted(set(range(1, last_seq + 1)) - unique - kept)
        dup_seqs = len(received) - len(unique)
        schema_errors = self.consumer.errors
        self.consumer.close()
        return {
            "exit_code_sigterm": code,
            "last_seq": last_seq,
            "received": len(received),
            "unique": len(unique),
            "kept_in_store": len(kept),
            "lost": lost,
            "duplicates": dup_seqs,
            "schema_errors": schema_errors[:5],
            "schema_error_count": len(schema_errors),
        }


def summarize(s: Soak, records: dict[str, Any], duration_s: float) -> dict[str, Any]:
    rss = [(t, life, kb) for t, life, kb in s.rss_kb if kb]
    lives = {life for _, life, _ in rss}
    longest = max(lives, key=lambda lf: sum(1 for _, x, _ in rss if x == lf)) if lives else 0
    pts = [(t, kb) for t, lf, kb in rss if lf == longest]
    # steady state: skip the first fifth of the longest life (imports, caches, first sessions)
    pts = pts[len(pts) // 5 :]
    growth_mb_h = 0.0
    if len(pts) >= 10:
        ts = [t for t, _ in pts]
        ks = [kb / 1024 for _, kb in pts]
        growth_mb_h = statistics.linear_regression(ts, ks).slope * 3600
    wall = sum(w for w, _ in s.cpu)
    cpu = sum(c for _, c in s.cpu)
    p50 = [t["tick_p50_ms"] for t in s.ticks if t.get("tick_p50_ms") is not None]
    p99 = [t["tick_p99_ms"] for t in s.ticks if t.get("tick_p99_ms") is not None]
    mx = [t["tick_max_ms"] for t in s.ticks if t.get("tick_max_ms") is not None]
    return {
        "duration_s": duration_s,
        "rss_start_mb": s.rss_ready_kb[0] / 1024 if s.rss_ready_kb else None,
        "rss_warm_mb": pts[0][1] / 1024 if pts else None,
        "rss_growth_mb": (pts[-1][1] - pts[0][1]) / 1024 if pts else None,
        "rss_peak_mb": max(kb for _, _, kb in rss) / 1024 if rss else None,
        "rss_end_mb": rss[-1][2] / 1024 if rss else None,
        "rss_growth_mb_per_h": growth_mb_h,
        "growth_window_s": (pts[-1][0] - pts[0][0]) if len(pts) > 1 else 0.0,
        "cpu_percent_of_one_core": 100.0 * cpu / wall if wall else None,
        "tick_p50_ms": statistics.median(p50) if p50 else None,
        "tick_p99_ms": max(p99) if p99 else None,
        "tick_max_ms": max(mx) if mx else None,
        "first_telemetry_s": s.first_telemetry_s,
        "faults": {
            name: {
                "injected": r.injected,
                "detected": r.detected,
                "cleared": r.cleared,
                "detect_s_max": max(r.detect_s) if r.detect_s else None,
                "detect_s_median": statistics.median(r.detect_s) if r.detect_s else None,
                "clear_s_max": max(r.clear_s) if r.clear_s else None,
                "rules": sorted(r.rules),
                "notes": sorted(r.notes),
            }
            for name, r in s.results.items()
        },
        "records": records,
        "exit_codes": s.exit_codes,
    }


def table(summary: dict[str, Any]) -> str:
    def f(v: Any, fmt: str = "{:.1f}") -> str:
        return "n/a" if v is None else fmt.format(v)

    rows = [("figure", "value", "limit/reference", "ratio")]

    def add(name: str, value: float | None, limit: float | None, text: str, fmt: str = "{:.1f}") -> None:
        ratio = "" if value is None or not limit else f"{value / limit:.2f}"
        rows.append((name, f(value, fmt), text, ratio))

    add("RSS at start (ready), MB", summary["rss_start_mb"], None, "")
    add("RSS when warm, MB", summary["rss_warm_mb"], None, "start of the steady-state window")
    add("RSS peak, MB", summary["rss_peak_mb"], 60.0, "<= 60 MB steady")
    add("RSS at end, MB", summary["rss_end_mb"], 60.0, "<= 60 MB steady")
    add("RSS growth in window, MB", summary["rss_growth_mb"], None, "")
    add(
        "RSS growth, MB/h",
        summary["rss_growth_mb_per_h"],
        1.0,
        f"< 1 MB/h (over {summary['growth_window_s']:.0f} s)",
        "{:.2f}",
    )
    add("CPU, % of one core", summary["cpu_percent_of_one_core"], 15.0, "<= 15 % (incl. simulator)")
    add("control tick p50, ms", summary["tick_p50_ms"], 100.0, "period 100 ms", "{:.2f}")
    add("control tick p99, ms", summary["tick_p99_ms"], 100.0, "period 100 ms", "{:.2f}")
    add("control tick max, ms", summary["tick_max_ms"], 100.0, "period 100 ms", "{:.2f}")
    ft = summary["first_telemetry_s"]
    add("start to first telemetry, s (max)", max(ft) if ft else None, 2.0, "<= 2 s", "{:.2f}")
    rec = summary["records"]
    rows.append(("records produced (last seq)", str(rec["last_seq"]), "", ""))
    rows.append(("records received (unique)", str(rec["unique"]), f"+{rec['kept_in_store']} still in store", ""))
    rows.append(("records lost", str(len(rec["lost"])), "0", ""))
    rows.append(("duplicates (same seq)", str(rec["duplicates"]), "allowed, same seq", ""))
    rows.append(("schema violations", str(rec["schema_error_count"]), "0", ""))
    for name, r in summary["faults"].items():
        detail = (
            f"{r['detected']}/{r['injected']} detected, {r['cleared']} cleared; "
            f"detect max {f(r['detect_s_max'], '{:.2f}')} s; " + "; ".join(r["rules"] + r["notes"])
        )
        rows.append(
            (
                f"fault: {name}",
                "ok" if r["detected"] == r["injected"] == r["cleared"] and r["injected"] else "FAIL",
                detail,
                "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"| {r[0]:<{widths[0]}} | {r[1]:>{widths[1]}} | {r[2]:<{widths[2]}} | {r[3]} |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in [*widths, 5]) + "|")
    return "\n".join(lines)


def problems(summary: dict[str, Any], growth_bound_mb: float) -> list[str]:
    """What makes a soak fail (used by tests/test_soak.py and the exit code)."""
    out = []
    rec = summary["records"]
    if rec["lost"]:
        out.append(f"{len(rec['lost'])} records lost, e.g. {rec['lost'][:10]}")
    if rec["schema_error_count"]:
        out.append(f"{rec['schema_error_count']} messages violate the schema: {rec['schema_errors'][:2]}")
    for name, r in summary["faults"].items():
        if r["injected"] and (r["detected"] < r["injected"] or r["cleared"] < r["injected"]):
            out.append(f"fault {name!r}: {r['detected']}/{r['injected']} detected, {r['cleared']} cleared {r['notes']}")
    growth = summary["rss_growth_mb"]
    if growth is not None and growth > growth_bound_mb:
        out.append(f"memory grew {growth:.1f} MB in steady state (bound {growth_bound_mb:.1f} MB)")
    peak = summary["rss_peak_mb"]
    if peak is not None and peak > 60.0:
        out.append(f"resident memory peaked at {peak:.1f} MB (goal <= 60 MB)")
    if summary["exit_codes"] and summary["exit_codes"][-1] != 0:
        out.append(f"clean stop exited {summary['exit_codes'][-1]}")
    return out


def goal_results(summary: dict[str, Any]) -> list[Goal]:
    """The issue-9 goals as (name, met, value, limit) for bench/report.py (a figure not measured: missed)."""
    rec = summary["records"]
    bad = [
        f"{name} {r['detected']}/{r['injected']} detected, {r['cleared']} cleared"
        for name, r in summary["faults"].items()
        if not (r["injected"] and r["detected"] == r["injected"] == r["cleared"])
    ]
    ft = summary["first_telemetry_s"]
    first_s = max(ft) if ft else None

    def at_most(name: str, value: float | None, limit: float, unit: str, fmt: str = "{:.1f}") -> Goal:
        shown = "n/a" if value is None else f"{fmt.format(value)} {unit}"
        return (name, value is not None and value <= limit, shown, f"<= {limit:g} {unit}")

    growth = summary["rss_growth_mb_per_h"]
    return [
        ("faults", not bad, "; ".join(bad), "every fault detected and cleared"),
        ("lost", not rec["lost"], f"{len(rec['lost'])} record(s)", "0"),
        at_most("cpu", summary["cpu_percent_of_one_core"], 15.0, "%"),
        at_most("rss", summary["rss_peak_mb"], 60.0, "MB"),
        ("rss_growth", growth < 1.0, f"{growth:.2f} MB/h", "< 1 MB/h"),
        at_most("first_telemetry", first_s, 2.0, "s", "{:.2f}"),
    ]


def run_soak(
    workdir: Path, duration_s: float, log: Callable[[str], None] = print, memprobe: Path | None = None
) -> dict[str, Any]:
    soak = Soak(workdir, duration_s, log=log, memprobe=memprobe)
    try:
        records = soak.run()
        return summarize(soak, records, duration_s)
    finally:
        soak.close()


def write_report(path: Path, summary: dict[str, Any], text: str) -> None:
    heading = "## Soak and fault campaign"
    machine = f"{os.cpu_count()} cores, {os.uname().machine}, Python {sys.version.split()[0]}"
    body = (
        f"{heading}\n\nCommand: `python -m bench.soak --duration {summary['duration_s']:.0f}`. "
        f"Machine: {machine}. Date: {time.strftime('%Y-%m-%d')}.\n"
        "CPU and memory are of the `edge run --sim` process, which also runs the simulator.\n\n"
        f"{text}\n"
    )
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(heading)
    if start >= 0:
        end = old.find("\n## ", start + len(heading))
        old = old[:start] + old[end + 1 :] if end >= 0 else old[:start]
    path.write_text(old.rstrip("\n") + "\n\n" + body)


_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0}


def duration_s(text: str) -> float:
    """``--duration``: seconds, or a number with s, m or h (``3600``, ``90s``, ``5m``, ``1h``, ``1.5h``)."""
    t = text.strip().lower()
    unit_s = _UNIT_S.get(t[-1:])
    try:
        value = float(t[:-1] if unit_s else t) * (unit_s or 1.0)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds or a number with s, m or h (e.g. 3600, 5m, 1h)")
    return value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--duration",
        type=duration_s,
        default=120.0,
        help="length of the fault campaign: seconds, or with s, m or h, e.g. 1h (default 120 s)",
    )
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    ap.add_argument("--report", type=Path, default=None, help="write the table into this markdown file")
    ap.add_argument("--json", type=Path, default=None, help="write the full summary as JSON")
    ap.add_argument(
        "--memprobe",
        type=Path,
        default=None,
        help="run the daemon under bench/memprobe.py (tracemalloc) with its logs in this directory; "
        "for finding a leak only: it doubles memory and costs CPU",
    )
    args = ap.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = args.workdir or Path(tmp)
        summary = run_soak(
            work, args.duration, log=lambda m: print(m, file=sys.stderr, flush=True), memprobe=args.memprobe
        )
    text = table(summary)
    print(text)
    goals(goal_results(summary))  # the exit code stays with problems(): CPU and growth depend on the machine
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=sorted))
    if args.report:
        write_report(args.report, summary, text)
    bound = max(5.0, summary["duration_s"] / 3600 * 1.0 + 5.0)
    issues = problems(summary, bound)
    for p in issues:
        print("PROBLEM:", p, file=sys.stderr)
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
