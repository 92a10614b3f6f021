"""Find what grows: run ``edge ...`` under tracemalloc and log the growth every minute.

    python -m bench.memprobe --out /tmp/probe -- run --sim --config config.toml   # from the repository root
    python -m bench.soak --duration 1800 --memprobe /tmp/probe     # the same inside the soak

Every ``--every`` seconds one line goes to ``<out>/probe-<pid>.txt``: resident memory, what Python has
allocated (tracemalloc), what SQLite has allocated (``sqlite3_memory_used``) and glibc's heap
(``mallinfo2``). From ``--base`` seconds on, the tracebacks whose allocations grew most since that
point are listed, with the object types whose count grew. This is how the soak's memory growth was
traced to the simulator's parked Modbus requests and the simulated watchdog's message list
(docs/RELIABILITY.md). tracemalloc roughly doubles memory and slows Python: use it to find the cause,
never for the figures.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import os
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, TextIO

from bench.report import goal, table


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _lib(name: str) -> Any:
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _rss_kb() -> int:
    return int(Path(f"/proc/{os.getpid()}/statm").read_text().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _write_growth(
    f: TextIO,
    snap: tracemalloc.Snapshot,
    base: tracemalloc.Snapshot,
    types: collections.Counter[str],
    base_types: collections.Counter[str],
) -> None:
    for st in snap.compare_to(base, "traceback")[:12]:
        if st.size_diff <= 0:
            continue
        f.write(f"  +{st.size_diff / 1024:.1f} kB +{st.count_diff} blocks\n")
        for line in st.traceback.format()[-8:]:
            f.write("     " + line + "\n")
    grown = types - base_types
    f.write("  object types grown: " + ", ".join(f"{k} +{v}" for k, v in grown.most_common(15)) + "\n")


GROWTH_GOAL_MB_H = 1.0  # the soak's memory goal (docs/BENCHMARKS.md, "Soak and fault campaign")
# (elapsed s, Python bytes traced) at the reference point and at the latest line, for the goal at exit
_traced: dict[str, tuple[float, int]] = {}


def probe(out: Path, every_s: float, base_s: float) -> None:
    libc = _lib("libc.so.6")
    if libc is not None and hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _MallInfo2
    sqlite = _lib("libsqlite3.so.0")  # the library the sqlite3 module links, so the same counters
    if sqlite is not None:
        sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    path = out / f"probe-{os.getpid()}.txt"
    base: tracemalloc.Snapshot | None = None
    base_types: collections.Counter[str] = collections.Counter()
    t0 = time.monotonic()
    while True:
        time.sleep(every_s)
        elapsed = time.monotonic() - t0
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
        )
        types = collections.Counter(type(o).__name__ for o in gc.get_objects())
        heap = ""
        if libc is not None and hasattr(libc, "mallinfo2"):
            mi = libc.mallinfo2()
            heap = f" heap_in_use={mi.uordblks // 1024} kB heap_free={mi.fordblks // 1024} kB"
        sq = f" sqlite={sqlite.sqlite3_memory_used() // 1024} kB" if sqlite is not None else ""
        traced = tracemalloc.get_traced_memory()[0]
        _traced["last"] = (elapsed, traced)
        if "base" not in _traced and elapsed >= base_s:
            _traced["base"] = (elapsed, traced)
        with path.open("a") as f:
            f.write(
                f"=== t={elapsed:.0f} s rss={_rss_kb()} kB python={tracemalloc.get_traced_memory()[0] // 1024} kB"
                f"{sq}{heap} threads={threading.active_count()}\n"
            )
            if base is None and elapsed >= base_s:
                base, base_types = snap, types
            elif base is not None:
                _write_growth(f, snap, base, types, base_types)
        del snap, types


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for probe-<pid>.txt")
    ap.add_argument("--every", type=float, default=60.0, help="seconds between two lines (default 60)")
    ap.add_argument("--base", type=float, default=300.0, help="seconds after start of the reference (default 300)")
    ap.add_argument("--frames", type=int, default=8, help="traceback depth kept by tracemalloc (default 8)")
    ap.add_argument("edge_args", nargs=argparse.REMAINDER, help="-- then the arguments of `edge`")
    args = ap.parse_args()
    edge_args = args.edge_args[1:] if args.edge_args[:1] == ["--"] else args.edge_args
    if not edge_args:
        ap.error("give the edge command after --, e.g. -- run --sim")
    args.out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(args.frames)
    threading.Thread(target=probe, args=(args.out, args.every, args.base), daemon=True, name="memprobe").start()
    sys.argv = ["edge", *edge_args]
    try:
        runpy.run_module("edge", run_name="__main__", alter_sys=True)
    finally:
        report_growth()


def report_growth() -> None:
    """The growth of what Python allocates (tracemalloc's own count, not inflated by its overhead) from
    the reference point to the last line, against the soak's goal."""
    base, last = _traced.get("base"), _traced.get("last")
    if base is None or last is None or last[0] <= base[0]:
        goal("python_growth", False, "no line after the reference point", "a run longer than --base + --every")
        return
    mb_h = (last[1] - base[1]) / 1e6 / ((last[0] - base[0]) / 3600.0)
    table(
        [
            (
                "Python memory growth (tracemalloc)",
                f"{mb_h:.2f} MB/h",
                f"< {GROWTH_GOAL_MB_H:g} MB/h",
                f"{mb_h / GROWTH_GOAL_MB_H:.2f}",
            )
        ]
    )
    goal("python_growth", mb_h < GROWTH_GOAL_MB_H, f"{mb_h:.2f} MB/h", f"< {GROWTH_GOAL_MB_H:g} MB/h")


if __name__ == "__main__":
    main()
