"""Power sharing allocator: delivered power against the brute-force optimum, and the cost of one evaluation.

    python -m bench.allocation                 # 10,000 random scenarios per policy
    python -m bench.allocation --scenarios 500 # quicker

Scenarios: random cabinets of 1-4 groups and 1-3 connectors (groups of 60 or 120 kW, each reaching a random
set of connectors, some out of service, some connected and carrying current; connectors charging or not,
random requests, hardware, priority, arrival, min/max groups, hold timers; fuse headroom from 0 to plenty).
For each, edge/limits/allocation.py's answer is compared with the best of every assignment of every group
(the same rules: availability, reach, the hold time, max_groups), by the policy's own objective; the figure
is the power the allocator's answer delivers over the power the optimum delivers, summed over all scenarios
(goal 1.000), and how many scenarios reach the optimum exactly.

Switching in the simulator: the power-sharing cabinet (edge/sim/sim-sharing.toml: 2 connectors, 8 modules in
4 groups, ``even``) on the SimStepper (simulated time, 10 ms steps): the 800 V car alone on connector 2 grows
into all four groups; then the 400 V car plugs in on connector 1 and its session asks (the request). The time
from that request to both connectors at their new share, with its parts: ramp-down (the request to the last
moving group at 0 A with its relay open: car A is at its new share then), relay (from there to the last relay
closed to connector 1 and confirmed, through the coil pins and the debounced mirror contacts), car B's
session start (its cable check and pre-charge on the groups it got) and ramp-up (charging to its share).

Cost: one ``allocate()`` on the default shared cabinet (2 connectors, 4 groups of 2 modules) in random states,
per policy (goal <= 0.5 ms, so it can run on every tick), and for information on a large one (4 connectors,
8 groups, even).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import platform
import random
import statistics
import time

from bench.report import goals, table
from edge.limits import allocation as al

GOAL_RATIO = 1.0
GOAL_COST_MS = 0.5
HOLD_S = 10.0
NOW_S = 100.0


def scenario(rnd: random.Random, n_groups: int, n_conns: int) -> tuple[list[dict], dict, float]:
    """(connectors, groups, headroom_kw) of one random cabinet."""
    conns = [str(i + 1) for i in range(n_conns)]
    groups: dict[str, dict] = {}
    reach: dict[str, list[str]] = {c: [] for c in conns}
    for i in range(n_groups):
        g = "ABCDEFGH"[i]
        to = rnd.sample(conns, rnd.randint(1, n_conns))
        for c in to:
            reach[c].append(g)
        kw = rnd.choice([60.0, 60.0, 120.0])
        groups[g] = {
            "available": rnd.random() > 0.15,
            "max_a": kw * 5.0 / 3.0,
            "max_kw": kw,
            "at": rnd.choice([None, *to]),
            "live": rnd.random() > 0.5,
        }
    connectors = [
        {
            "name": c,
            "phase": rnd.choice(["Charging", "Charging", "PreCharge", "Other"]),
            "request_kw": rnd.choice([25.0, 50.0, 90.0, 150.0, 350.0]),
            "request_v": rnd.choice([400.0, 800.0]),
            "max_a": rnd.choice([200.0, 500.0]),
            "max_kw": rnd.choice([150.0, 400.0]),
            "priority": rnd.randint(0, 2),
            "arrival": rnd.randint(0, 5) * 10 + i,
            "min_groups": rnd.randint(0, 1),
            "max_groups": rnd.randint(1, n_groups),
            "reach": sorted(reach[c]),
            "home": sorted(g for g in reach[c] if groups[g]["at"] == c),
            "changed_s": rnd.choice([None, None, 95.0]),
        }
        for i, c in enumerate(conns)
    ]
    return connectors, groups, rnd.choice([0.0, 100.0, 200.0, 1000.0])


def brute_force(connectors: list[dict], groups: dict, policy: str, headroom: float) -> tuple:
    """The best objective over every assignment of the groups the rules leave free, and its limits."""
    fixed, free = al.candidates(connectors, groups, policy, NOW_S, HOLD_S)
    room = {
        c["name"]: c["max_groups"] - sum(1 for g, w in fixed.items() if w == c["name"] and groups[g]["available"])
        for c in connectors
    }
    names = sorted(free)
    best: tuple | None = None
    for combo in itertools.product(*[[None, *free[g]] for g in names]):
        if any(sum(1 for w in combo if w == c) > max(0, room[c]) for c in room):
            continue
        assign = dict(fixed)
        assign.update(zip(names, combo, strict=True))
        full = al.score(connectors, groups, assign, policy, headroom)
        key = (full[0], full[1], full[3], full[4])
        if best is None or key > best[0]:
            best = (key, full[2])
    assert best is not None
    return best


def optimality(policy: str, n: int, seed: int) -> tuple[float, int, float]:
    """(delivered / optimum delivered, scenarios at the optimum, optimum kW summed) over ``n`` scenarios."""
    rnd = random.Random(seed)
    got = want = 0.0
    exact = 0
    for _ in range(n):
        connectors, groups, headroom = scenario(rnd, rnd.randint(1, 4), rnd.randint(1, 3))
        result = al.allocate(connectors, groups, policy, headroom, NOW_S, HOLD_S)
        assign = {g: c for c, gs in result["target"].items() for g in gs}
        placed = {g: assign.get(g) if info["available"] else info["at"] for g, info in groups.items()}
        full = al.score(connectors, groups, placed, policy, headroom)
        best_key, best_limits = brute_force(connectors, groups, policy, headroom)
        got += sum(result["limit_kw"].values())
        want += sum(best_limits.values())
        exact += (full[0], full[1], full[3], full[4]) == best_key
    return (got / want if want else 1.0), exact, want


def cost_ms(policy: str, n_groups: int, n_conns: int, n: int, seed: int) -> tuple[float, float]:
    """(mean, worst) ms of one allocate() over ``n`` random states of a full-matrix cabinet."""
    rnd = random.Random(seed)
    cases = []
    for _ in range(n):
        connectors, groups, headroom = scenario(rnd, n_groups, n_conns)
        for info in groups.values():  # the default cabinet: equal groups, every relay there
            info["max_kw"], info["max_a"] = 80.0, 100.0
        for c in connectors:
            c["reach"] = sorted(groups)
            c["max_groups"] = n_groups
        cases.append((connectors, groups, headroom))
    times = []
    for connectors, groups, headroom in cases:
        t0 = time.perf_counter()
        al.allocate(connectors, groups, policy, headroom, NOW_S, HOLD_S)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.fmean(times), max(times)


def switch_time() -> dict[str, float]:
    """The simulator's switching figures (module doc), simulated seconds from car B's request."""
    import re
    import tempfile
    from pathlib import Path

    from edge.config import parse_config
    from edge.sim.stepper import SimStepper

    logging.getLogger("edge").setLevel(logging.ERROR)  # the stepper's start-up faults (no sensors) are noise here
    tmp = Path(tempfile.mkdtemp(prefix="bench-alloc-"))
    text = (Path(__file__).resolve().parents[1] / "edge" / "sim" / "sim-sharing.toml").read_text()
    text = text.replace('socket = ".edge-sim/edge.sock"', f'socket = "{tmp}/edge.sock"')
    text = text.replace('data_dir = ".edge-sim"', f'data_dir = "{tmp}/data"')
    text = re.sub(r'backend = "systemd"[^\n]*', 'backend = "sim"', text)
    text = text.replace('[telemetry.mqtt]\nhost = "127.0.0.1"', '[telemetry.mqtt]\nenabled = false\nhost = "127.0.0.1"')
    with SimStepper(parse_config(text), tmp / "data", step_s=0.01) as sim:
        ctl = sim.cabinet.controller
        sharing, relays = ctl.sharing, sim.relays
        assert sharing is not None and relays is not None
        sim.unplug("1")

        def caps() -> dict:
            return {n: r.capabilities for n, r in ctl.reports().items()}

        sim.every("sessions", 0.05, lambda now: sim.drive_charging(ctl.demands, now, caps()))
        sim.run_until(lambda: sim.physics.connectors["2"].output_a > 250.0, timeout_s=60.0, what="car A on 4 groups")
        sim.run(6.0)  # past the hold time
        marks: dict[str, float] = {}

        def phase(name: str) -> str:
            return str((ctl.decision or {}).get("connectors", {}).get(name, {}).get("phase"))

        def watch(now: float) -> None:
            if "request" not in marks and phase("1") in ("CableCheck", "PreCharge", "Charging"):
                marks["request"] = now
            if "request" in marks and "down" not in marks and sum(len(relays.connected(g)) == 0 for g in "ABCD") >= 2:
                marks["down"] = now  # both moving groups at 0 A with their relays open
            if "down" in marks and "relay" not in marks and len(sharing.groups_of("1")) == 2:
                marks["relay"] = now
            if "relay" in marks and "charging" not in marks and phase("1") == "Charging":
                marks["charging"] = now
            told = ctl.reports()["1"].capabilities.max_export_current_a
            if "charging" in marks and "share" not in marks and sim.physics.connectors["1"].output_a >= 0.95 * told:
                marks["share"] = now

        sim.every("watch", 0.01, watch)
        sim.plug_in("1")
        sim.run_until(lambda: "share" in marks, timeout_s=60.0, what="car B at its share")
        t0 = marks["request"]
        return {
            "ramp_down_s": marks["down"] - t0,
            "relay_s": marks["relay"] - marks["down"],
            "session_start_s": marks["charging"] - marks["relay"],
            "ramp_up_s": marks["share"] - marks["charging"],
            "total_s": marks["share"] - t0,
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", type=int, default=10000, help="random scenarios per policy (default 10,000)")
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.2f}"
    )
    rows = []
    results = []
    for i, policy in enumerate(al.POLICIES):
        ratio, exact, total = optimality(policy, args.scenarios, seed=16 + i)
        rows.append(
            [
                f"{policy}: delivered / brute-force optimum ({args.scenarios} scenarios, {total:.0f} kW)",
                f"{ratio:.3f}",
                f"{GOAL_RATIO:.3f}",
                f"{ratio / GOAL_RATIO:.3f}",
            ]
        )
        rows.append(
            [f"{policy}: scenarios at the optimum", str(exact), str(args.scenarios), f"{exact / args.scenarios:.3f}"]
        )
        results.append((f"allocation_optimal_{policy}", round(ratio, 3) == GOAL_RATIO, f"{ratio:.3f}", "1.000"))
    for policy in al.POLICIES:
        mean, worst = cost_ms(policy, 4, 2, 2000, seed=7)
        rows.append(
            [
                f"{policy}: ms per allocate (2 connectors, 4 groups), mean / worst",
                f"{mean:.3f} / {worst:.3f}",
                f"<= {GOAL_COST_MS}",
                f"{mean / GOAL_COST_MS:.2f}",
            ]
        )
        results.append((f"allocation_cost_{policy}", mean <= GOAL_COST_MS, f"{mean:.3f} ms", f"{GOAL_COST_MS} ms"))
    mean, worst = cost_ms("even", 8, 4, 200, seed=8)
    rows.append(
        [
            "even: ms per allocate (4 connectors, 8 groups), mean / worst",
            f"{mean:.3f} / {worst:.3f}",
            "(information)",
            "",
        ]
    )
    sw = switch_time()
    parts = [
        ("ramp-down: both moving groups at 0 A, their relays open (car A at its share)", "ramp_down_s"),
        ("relay: both closed to connector 1, confirmed by their mirror contacts", "relay_s"),
        ("car B's cable check and pre-charge on its new groups", "session_start_s"),
        ("ramp-up: car B charging to its share (limits.ramp_up_a_per_s)", "ramp_up_s"),
    ]
    rows.append(["simulator: car B's request -> both at their new share, s", f"{sw['total_s']:.2f}", "(report)", ""])
    rows += [[f"  {label}, s", f"{sw[key]:.2f}", "", ""] for label, key in parts]
    table(rows)
    return 0 if goals(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
