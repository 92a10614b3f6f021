"""Modbus meter benchmark: plan cost against brute force, time per snapshot against wire time, throughput.

Run from the repository root:  python -m bench.modbus  [--quick]

What it measures (each figure with its reference, see docs/BENCHMARKS.md "## Modbus meters"):
1. Per model, requests and bytes on the wire (RTU: 8 request + 5 + 2N response bytes) for one full
   snapshot, against the brute-force optimum over every split of the table into reads.
2. Time per full snapshot over a pty line that paces bytes like a UART (edge.sim.serial_link.SerialLink
   with pace_baudrate: one character time, 11 bits / baud, per byte, in both directions), against the
   computed wire time: sum over requests of (request + response chars) x 11 bits / baud + two t3.5
   silent intervals. Goal: <= 1.2 x at 9600 baud.
3. Snapshots per second over the unpaced pty at 115200 baud, and the CPU time of the polling side per
   snapshot (thread CPU time of the client thread; the simulated meter runs in another thread).

Then one goal line each (bench/report.py): plan_minimum (every model's requests and bytes equal the
brute-force minimum) and snapshot_time_9600 (the slowest model's snapshot <= 1.2 x its wire time at
9600 baud). Exit code 0 whatever the goals (as before).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time

from bench.report import goals
from drivers.meters.models import ABB_B23, EM24, SDM630, MeterModel
from drivers.meters.planner import Block, plan_blocks, plan_cost
from drivers.meters.poller import MeterPoller, PollSettings
from drivers.meters.reader import ModbusLine
from hal.serial import SerialSettings, rtu_wire_time_s
from tests.meter_harness import GENERIC, ServerThread
from tests.test_planner import brute_force

MODELS: list[MeterModel] = [SDM630, ABB_B23, EM24, GENERIC]
DEVICE_ID = 1
SNAPSHOT_GOAL = 1.2  # time per full snapshot at 9600 baud, x the wire time
SETTINGS = PollSettings(fast_period_s=0.1, slow_period_s=0.1, timeout_min_s=0.05, timeout_max_s=2.0, stale_after_s=60.0)


def plan_for(model: MeterModel) -> list[Block]:
    defined = model.defined()
    return plan_blocks(
        model.registers,
        model.max_registers_per_request,
        allow_gaps=not model.rejects_gaps,
        defined=lambda fc, a: (fc, a) in defined,
    )


def wire_time_s(blocks: list[Block], baud: int) -> float:
    return sum(rtu_wire_time_s(baud, 8, 5 + 2 * b.count) for b in blocks)


async def _snapshots(
    port: str,
    baud: int,
    model: MeterModel,
    count: int | None,
    seconds: float | None,
) -> tuple[int, float, float]:
    """(snapshots, wall s, client thread CPU s) polling full snapshots."""
    line = ModbusLine.serial(SerialSettings(port, baud), name="bench")
    poller = MeterPoller("m", model, DEVICE_ID, SETTINGS)
    await poller.poll(line, now=time.monotonic() + 1e6)  # connect and learn the latency first
    n, t0, c0 = 0, time.monotonic(), time.thread_time()
    while (count is not None and n < count) or (seconds is not None and time.monotonic() - t0 < seconds):
        readings, events = await poller.poll(line, now=time.monotonic() + 1e6 * (n + 2))
        if events or len(readings) != len(model.registers):
            raise RuntimeError(f"{model.name}: bad snapshot {events}")
        n += 1
    wall, cpu = time.monotonic() - t0, time.thread_time() - c0
    line.close()
    return n, wall, cpu


def measure(
    model: MeterModel,
    baud: int,
    pace: bool,
    count: int | None,
    seconds: float | None,
) -> tuple[int, float, float]:
    with ServerThread([(model, DEVICE_ID)], tcp=False, baudrate=baud, pace=pace) as srv:
        assert srv.link is not None
        return asyncio.run(_snapshots(srv.link.host_path, baud, model, count, seconds))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer snapshots (smoke run)")
    args = ap.parse_args()
    reps = {9600: 3, 19200: 5, 115200: 20} if not args.quick else {9600: 1, 19200: 1, 115200: 3}
    rate_s = 1.0 if args.quick else 2.0

    print(
        f"# Modbus meters benchmark  {time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  "
        f"{os.cpu_count()} cores  Python {platform.python_version()}"
    )
    print()
    print("## Plan per full snapshot (RTU bytes = 8 request + 5 + 2N response per read)")
    print(
        f"{'model':10s} {'regs':>4s} {'requests':>8s} {'bf min':>6s} {'bytes':>6s} {'bf min':>6s} "
        f"{'ratio':>5s}  {'fewest reads any size':>21s}"
    )
    not_minimal: list[str] = []
    for model in MODELS:
        blocks = plan_for(model)
        nbytes, nreq = plan_cost(blocks)
        defined = None if not model.rejects_gaps else {a for _, a in model.defined()}
        bf_bytes, bf_req = brute_force(list(model.registers), model.max_registers_per_request, defined)
        fewest = _fewest_requests(model)
        print(
            f"{model.name:10s} {len(model.registers):4d} {nreq:8d} {bf_req:6d} {nbytes:6d} {bf_bytes:6d} "
            f"{nbytes / bf_bytes:5.2f}  {fewest:21d}"
        )
        if (nbytes, nreq) != (bf_bytes, bf_req):
            not_minimal.append(f"{model.name} {nreq} req / {nbytes} B vs {bf_req} / {bf_bytes}")
    print()
    print("## Time per full snapshot on a paced line (pace: 11 bits/baud per byte, both directions)")
    print(f"{'model':10s} {'baud':>6s} {'n':>3s} {'measured ms':>11s} {'wire ms':>8s} {'ratio':>5s} {'goal':>6s}")
    slow: list[tuple[float, str]] = []
    for model in MODELS:
        blocks = plan_for(model)
        for baud in (9600, 19200, 115200):
            n, wall, _ = measure(model, baud, True, reps[baud], None)
            per = wall / n
            wire = wire_time_s(blocks, baud)
            goal = f"<={SNAPSHOT_GOAL:g}" if baud == 9600 else "-"
            if baud == 9600:
                slow.append((per / wire, model.name))
            print(
                f"{model.name:10s} {baud:6d} {n:3d} {per * 1000:11.1f} {wire * 1000:8.1f} {per / wire:5.2f} {goal:>6s}"
            )
    print()
    print("## Throughput over the unpaced pty at 115200 baud (client thread CPU per snapshot)")
    print(f"{'model':10s} {'snapshots/s':>11s} {'requests/s':>10s} {'CPU ms/snap':>11s}")
    for model in MODELS:
        n, wall, cpu = measure(model, 115200, False, None, rate_s)
        print(f"{model.name:10s} {n / wall:11.1f} {n * len(plan_for(model)) / wall:10.1f} {cpu / n * 1000:11.2f}")
    print()
    worst, worst_model = max(slow)
    goals(
        [
            ("plan_minimum", not not_minimal, "; ".join(not_minimal), "brute-force minimum (requests / bytes)"),
            ("snapshot_time_9600", worst <= SNAPSHOT_GOAL, f"{worst:.2f}x ({worst_model})", f"<= {SNAPSHOT_GOAL:g}x"),
        ]
    )
    return 0  # as before: the figures are reported, the run does not fail on them


def _fewest_requests(model: MeterModel) -> int:
    """Fewest reads if bytes did not matter (information: what 'fewest requests' alone would give)."""
    defined = model.defined()
    out = 0
    for fc in sorted({r.function_code for r in model.registers}):
        regs = sorted((r for r in model.registers if r.function_code == fc), key=lambda r: r.address)
        start = None
        prev_end = 0
        for r in regs:
            gap_ok = start is not None and (
                not model.rejects_gaps or all((fc, a) in defined for a in range(prev_end, r.address))
            )
            if start is None or not gap_ok or r.end - start > model.max_registers_per_request:
                out += 1
                start = r.address
            prev_end = r.end
    return out


if __name__ == "__main__":
    sys.exit(main())
