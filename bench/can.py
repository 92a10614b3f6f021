"""CAN benchmark: decode throughput and CPU share at a saturated 1 Mbit/s bus, and send latency.

    python -m bench.can [--seconds S]        (from the repository root)

Figures (printed as a table: figure, value, limit/reference, ratio):
1. decode: the daemon's per-frame work (the CAN dispatcher with the module bank and a cable monitor
   registered, readings into the state) on a synthetic mix (40 % cable frames, 40 % module replies,
   20 % foreign/unknown ids), one thread.
   Goal: >= 3x the maximum extended-frame rate of a 1 Mbit/s bus (7,634 frames/s nominal).
2. CPU share of one core at a saturated 1 Mbit/s bus = 7,634 / decode rate.
3. rx through CanPort: a peer thread floods a python-can virtual bus, the Notifier thread queues, the
   asyncio loop drains and decodes (both threads share the GIL: this is the whole receive path).
4. send latency: from the control decision (ModuleBank.apply with a reduction) through CanPort's
   transmit thread to the frame arriving at a peer on the virtual bus; reference: ISO 15118-2
   CurrentDemand timeout 250 ms.

Then one goal line each (bench/report.py): decode_rate (>= 3x the 1 Mbit/s frame rate, CPU time),
cpu_share (<= 33.3 % of one core at a saturated 1 Mbit/s bus), send_p99 (decision->frame p99 <= 250 ms).
Exit code 1 only when the decode goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import threading
import time

import can

from bench.report import goal as goal_line
from drivers.cable.monitor import CableMonitor
from drivers.can_dispatch import CanDispatcher
from drivers.power_modules import infypower as infy
from drivers.power_modules.bank import ModuleBank
from drivers.power_modules.codec import Frame
from edge.state import CabinetState, InputMap
from hal.can import CanPort, CanSettings

BUS_1M_FRAMES_S = 7634  # PROTOCOLS.md: 29-bit id, 8 data bytes, nominal
GOAL_FACTOR = 3.0
SEND_LIMIT_MS = 250.0  # ISO 15118-2 CurrentDemand timeout
ADDRESSES = [1, 2, 3, 4]


def synthetic_mix(n: int, seed: int = 1) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    cable = CableMonitor("cable")
    frames: list[tuple[int, bytes]] = []
    counter = {0x18FF5101: 0, 0x18FF5201: 0}
    for _ in range(n):
        r = rng.random()
        if r < 0.4:
            msg = "CABLE_TEMPS" if rng.random() < 0.5 else "CABLE_COOLANT"
            fid = 0x18FF5101 if msg == "CABLE_TEMPS" else 0x18FF5201
            values = (
                {
                    "PinTempDcPlus": 40 + rng.random(),
                    "PinTempDcMinus": 39.0,
                    "CoolantInletTemp": 25.0,
                    "CoolantOutletTemp": 30.0,
                }
                if msg == "CABLE_TEMPS"
                else {"CoolantFlow": 5.0, "CoolantPressure": 1.7}
            )
            values["RollingCounter"] = counter[fid]
            counter[fid] = (counter[fid] + 1) % 16
            frames.append(cable.encode(msg, values))
        elif r < 0.8:
            addr = rng.choice(ADDRESSES)
            if rng.random() < 0.5:
                frames.append((infy.make_id(infy.CMD_READ_OUTPUT, 0xF0, addr), infy.encode_output(400.0, 30.0)))
            else:
                frames.append((infy.make_id(infy.CMD_STATUS, 0xF0, addr), infy.encode_status(set(), 35)))
        elif r < 0.9:
            frames.append((infy.make_id(infy.CMD_READ_OUTPUT, 0xF0, 9), infy.encode_output(1.0, 1.0)))  # foreign
        else:
            frames.append((rng.getrandbits(29), rng.randbytes(8)))  # unknown id
    return frames


class Decoder:
    """The per-frame work of the daemon's CAN receive path: the dispatcher, its devices, the state."""

    def __init__(self) -> None:
        self.dispatcher = CanDispatcher("bench")
        ModuleBank(infy.InfyPowerCodec(), ADDRESSES, 3.0, lambda f: None, 50.0).register(self.dispatcher)
        CableMonitor("cable", stale_after_s=1e9).register(self.dispatcher)
        self.state = CabinetState(InputMap(cable="cable", grid_meter=None))

    def frame(self, aid: int, data: bytes, now: float) -> None:
        readings = self.dispatcher.dispatch(aid, data, now)
        if readings:
            self.state.update(readings)


def bench_decode(seconds: float) -> tuple[float, float]:
    frames = synthetic_mix(20_000)
    dec = Decoder()
    n = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        now = time.monotonic()
        for aid, data in frames:
            dec.frame(aid, data, now)
        n += len(frames)
    cpu = time.process_time() - cpu0
    return n / (time.perf_counter() - t0), n / cpu


def bench_port(seconds: float) -> tuple[float, int]:
    frames = [can.Message(arbitration_id=a, data=d, is_extended_id=True) for a, d in synthetic_mix(5000, seed=2)]
    channel = f"bench-{time.monotonic_ns()}"
    peer = can.Bus(interface="virtual", channel=channel)
    port = CanPort(CanSettings(name="bench", interface="virtual", channel=channel, rx_queue=4096))
    dec = Decoder()
    done = threading.Event()

    def flood() -> None:
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            for m in frames[:500]:
                peer.send(m)
            frames.append(frames.pop(0))
        done.set()

    async def main() -> tuple[float, int]:
        port.start(asyncio.get_running_loop())
        n = 0
        t0 = time.perf_counter()
        threading.Thread(target=flood, daemon=True).start()
        while not (done.is_set() and port.queued() == 0):
            try:
                msg: can.Message | None = await asyncio.wait_for(port.recv(), 0.5)
            except TimeoutError:
                continue
            now = time.monotonic()
            while msg is not None:
                dec.frame(msg.arbitration_id, bytes(msg.data), now)
                n += 1
                msg = port.recv_nowait()
        return n / (time.perf_counter() - t0), port.stats.dropped

    try:
        return asyncio.run(main())
    finally:
        port.close()
        peer.shutdown()


def bench_send_latency(samples: int = 300) -> list[float]:
    channel = f"bench-lat-{time.monotonic_ns()}"
    peer = can.Bus(interface="virtual", channel=channel)
    port = CanPort(CanSettings(name="lat", interface="virtual", channel=channel))

    def send(f: Frame) -> None:
        port.send(can.Message(arbitration_id=f.arbitration_id, data=f.data, is_extended_id=True), priority=f.priority)

    bank = ModuleBank(infy.InfyPowerCodec(), [1], 3.0, send, 50.0)
    bank.handle(infy.make_id(infy.CMD_STATUS, 0xF0, 1), infy.encode_status(set()), time.monotonic())
    bank.check(time.monotonic())
    out: list[float] = []
    try:
        for i in range(samples):
            while peer.recv(timeout=0) is not None:
                pass
            bank.modules[1].set_current_a = 50.0  # so the next apply is a reduction: sent at once
            bank.modules[1].output_on = True
            bank.modules[1].set_voltage_v = 400.0
            t0 = time.perf_counter()
            bank.apply(True, 400.0, 10.0 + i % 5)
            msg = peer.recv(timeout=1.0)
            t1 = time.perf_counter()
            if msg is None:
                raise RuntimeError("frame did not arrive")
            out.append((t1 - t0) * 1000.0)
    finally:
        port.close()
        peer.shutdown()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    wall_rate, cpu_rate = bench_decode(args.seconds)
    port_rate, dropped = bench_port(args.seconds)
    lat = sorted(bench_send_latency())
    goal = BUS_1M_FRAMES_S * GOAL_FACTOR
    p50, p99 = statistics.median(lat), lat[int(len(lat) * 0.99) - 1]
    rows = [
        ("decode frames/s (1 thread, CPU)", f"{cpu_rate:,.0f}", f">= {goal:,.0f} (3x 1M)", cpu_rate / goal),
        ("decode frames/s (wall clock)", f"{wall_rate:,.0f}", f">= {goal:,.0f}", wall_rate / goal),
        (
            "CPU of 1 core, 1 Mbit/s saturated",
            f"{BUS_1M_FRAMES_S / cpu_rate * 100:.1f} %",
            f"<= {100 / GOAL_FACTOR:.1f} %",
            (100 / GOAL_FACTOR) / (BUS_1M_FRAMES_S / cpu_rate * 100),
        ),
        (
            "rx CanPort+Notifier+loop frames/s",
            f"{port_rate:,.0f}",
            f">= {BUS_1M_FRAMES_S:,} (1M bus)",
            port_rate / BUS_1M_FRAMES_S,
        ),
        ("  dropped by the bounded queue", f"{dropped}", "counted, bounded", None),
        ("send decision->frame p50, ms", f"{p50:.3f}", "250 (ISO 15118-2)", SEND_LIMIT_MS / p50),
        ("send decision->frame p99, ms", f"{p99:.3f}", "250 (ISO 15118-2)", SEND_LIMIT_MS / p99),
        ("send decision->frame max, ms", f"{lat[-1]:.3f}", "250 (ISO 15118-2)", SEND_LIMIT_MS / lat[-1]),
    ]
    print(f"{'figure':<35} {'value':>9}  {'limit/reference':<19} {'ratio':>9}")
    for name, value, ref, ratio in rows:
        r = f"{ratio:,.1f}x" if ratio is not None else ""
        print(f"{name:<35} {value:>9}  {ref:<19} {r:>9}".rstrip())
    cpu_share_pct = BUS_1M_FRAMES_S / cpu_rate * 100
    goal_line("decode_rate", cpu_rate >= goal, f"{cpu_rate:,.0f} frames/s", f">= {goal:,.0f} frames/s")
    share_limit_pct = 100 / GOAL_FACTOR
    goal_line("cpu_share", cpu_share_pct <= share_limit_pct, f"{cpu_share_pct:.1f} %", f"<= {share_limit_pct:.1f} %")
    goal_line("send_p99", p99 <= SEND_LIMIT_MS, f"{p99:.3f} ms", f"<= {SEND_LIMIT_MS:g} ms")
    # the exit code follows the decode goal only (as before): the latency figure depends on the machine's load
    return 0 if cpu_rate >= goal else 1


if __name__ == "__main__":
    sys.exit(main())
