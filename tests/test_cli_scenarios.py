"""The technician's scenarios (shared/SCENARIOS.md) end to end: an in-process daemon on the simulated
cabinet whose fault knobs the test turns, and the real `edge` command in a subprocess talking to it."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edge.build import Backends
from edge.config import parse_config
from edge.daemon import Daemon
from edge.sim.cabinet import SimCabinet
from tests.cli_support import quiet_sim
from tests.conftest import edge_env, sim_config_text, until

# Relaxed on purpose, so these CLI scenarios see one fault at a time: the safety core (not under test
# here) can latch `over_current` while the modules ramp down after a trip, and `*_implausible` when two
# evaluations a few ms apart see a 0.1 °C step (reported to the integrator).
SETTINGS: dict[str, dict[str, Any]] = {
    "limits.grid": {"fuse_a": 400.0},
    "limits.plausibility": {"max_rate_c_per_s": 500.0},
    "limits.over_current": {"tolerance_a": 100.0},
}


class Cli:
    def __init__(self, sock: str) -> None:
        self.sock = sock

    async def __call__(self, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge",
            *args,
            "--socket",
            self.sock,
            env=edge_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        return proc.returncode or 0, out.decode(), err.decode()


def run_scenario(tmp_path: Path, body: Callable[[Daemon, SimCabinet, Cli], Awaitable[None]]) -> None:
    text = quiet_sim(sim_config_text(tmp_path), **SETTINGS)
    cab = SimCabinet(parse_config(text))
    cab.start()
    try:

        async def main() -> int:
            daemon = Daemon(cab.patched_config(), Backends(board=cab.board))
            run = asyncio.create_task(daemon.run())
            try:
                await until(lambda: Path(daemon.cabinet.config.api.socket).exists())
                await body(daemon, cab, Cli(daemon.cabinet.config.api.socket))
            finally:
                daemon.stopping.set()
            return await asyncio.wait_for(run, timeout=5)

        assert asyncio.run(main()) == 0
    finally:
        cab.stop()


def charging(daemon: Daemon) -> bool:
    d = daemon.cabinet.controller.decision
    return bool(d and d["enable"] and d["limit_a"] > 1)


def test_coolant_trip_is_cleared_only_once_flow_is_back_and_the_clear_names_the_user(tmp_path):
    async def body(daemon: Daemon, cab: SimCabinet, edge: Cli) -> None:
        await until(lambda: charging(daemon), what="charging")
        cab.set_pump_failed(True)
        await until(
            lambda: "coolant_flow_low" in daemon.cabinet.controller.decision["latched"],
            timeout=15,
            what="coolant_flow_low to latch",
        )
        code, out, _ = await edge("status")
        assert code == 0
        assert "state    TRIPPED" in out
        tripped = r"^limit +0 A  <- tripped: coolant_flow_low: coolant flow \d+\.\d+ l/min below 1\.00$"
        assert re.search(tripped, out, re.M), out
        assert re.search(
            r"^faults   coolant_flow_low  LATCHED\n +coolant flow \d\.\d\d l/min below 1\.00", out, re.M
        ), out
        assert "-> fix the cause, then: edge clear coolant_flow_low" in out
        code, out, _ = await edge("faults", "--json")
        assert json.loads(out)["faults"]["coolant_flow_low"]["latched"] is True
        # the self-test runs (output is off) and finds no flow with the pump on
        code, out, _ = await edge("selftest", "--seconds", "1")
        assert code == 1 and "FAIL: flow" in out and "check pump" in out, out
        # refill is not done yet: the clear is refused with the reason
        code, _, err = await edge("clear", "coolant_flow_low")
        assert code == 4 and "condition still present: coolant flow" in err, err
        cab.set_pump_failed(False)
        await until(
            lambda: (r := daemon.cabinet.state.get("cable.coolant_flow_lpm")) and r.value > 3.0, what="flow back"
        )
        code, out, err = await edge("clear", "coolant_flow_low")
        assert code == 0 and "cleared coolant_flow_low; recorded as root" in out, out + err
        assert "coolant_flow_low" not in daemon.cabinet.controller.decision["latched"]
        code, out, _ = await edge("events", "--json", "--since", "1m")
        clears = [
            (e["kind"], e["name"], e.get("user"), e.get("ok"))
            for e in json.loads(out)["events"]
            if e["name"] in ("clear", "coolant_flow_low")
        ]
        assert ("command", "clear", "root", False) in clears
        assert clears.index(("command", "clear", "root", True)) > clears.index(("command", "clear", "root", False))
        assert ("fault_cleared_by_request", "coolant_flow_low", None, None) in clears
        await until(lambda: charging(daemon), what="charging again after the clear")

    run_scenario(tmp_path, body)


def test_lost_module_shows_as_lost_and_the_limit_names_the_remaining_modules(tmp_path):
    async def body(daemon: Daemon, cab: SimCabinet, edge: Cli) -> None:
        await until(lambda: charging(daemon), what="charging")
        cab.set_module_silent(2, True)
        await until(lambda: daemon.cabinet.bank.modules[2].lost, timeout=10, what="module 2 lost")
        await until(lambda: daemon.cabinet.controller.decision["rule"] == "modules", what="modules rule")
        code, out, _ = await edge("status")
        assert code == 0
        assert re.search(r"^ +2  LOST +-- +-- +--  no answer, re-poll(ing now| in \d+ s)$", out, re.M), out
        modules = r"^limit +150 A  <- power modules: 3 of 4 available x 50 A(; rising \d+ A/s)?$"
        assert re.search(modules, out, re.M), out
        cab.set_module_silent(2, False)
        # back, and switched on again with the set-points of the others (restore takes a poll or two)
        await until(
            lambda: not daemon.cabinet.bank.modules[2].lost and daemon.cabinet.bank.modules[2].output_on,
            timeout=10,
            what="module 2 back and on",
        )
        code, out, _ = await edge("status")
        assert re.search(r"^ +2  on ", out, re.M), out

    run_scenario(tmp_path, body)
