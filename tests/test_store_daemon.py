"""A full disk under the running daemon: telemetry degrades and is reported; control goes on."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

import edge.telemetry.store as store_mod
from edge.build import Backends
from edge.config import parse_config
from edge.daemon import Daemon
from edge.sim.cabinet import SimCabinet
from tests.conftest import until as _until
from tests.mqtt_sim import mqtt_sim_config


def test_disk_full_raises_a_store_fault_and_control_keeps_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(store_mod, "DEGRADED_HOLD_S", 2.0)
    cab = SimCabinet(parse_config(mqtt_sim_config(tmp_path, None, interval_s=0.1)))
    cab.start()
    seen: dict = {}

    async def body(daemon: Daemon) -> None:
        await _until(
            lambda: (
                daemon.cabinet.controller.decision
                and daemon.cabinet.store.backlog() > 5
                and daemon.cabinet.controller.decision["limit_a"] > 1
            ),
            what="charging with telemetry stored",
        )
        db = daemon.cabinet.store._wdb  # the writer thread's connection (max_page_count is per connection)
        # "disk full": SQLite may not grow the file by one more page -> SQLITE_FULL on writes, exactly
        # what it returns on ENOSPC (a tmpfs of fixed size needs root to mount; this needs nothing)
        db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
        await _until(
            lambda: "telemetry_store_error" in daemon.cabinet.status()["faults"], 10, what="store fault reported"
        )
        ticks, evals = daemon.cabinet.controller.ticks, daemon.cabinet.controller.evaluations
        await asyncio.sleep(1.0)  # a time window in which control must keep ticking (not a synchronisation)
        seen["ticks"] = daemon.cabinet.controller.ticks - ticks
        seen["evals"] = daemon.cabinet.controller.evaluations - evals
        seen["limit_a"] = daemon.cabinet.controller.decision["limit_a"]
        seen["status"] = daemon.cabinet.status()
        seen["state"] = daemon.cabinet.mqtt_state()
        db.execute("PRAGMA max_page_count = 1073741823")  # disk space back
        await _until(lambda: "telemetry_store_error" not in daemon.cabinet.status()["faults"], 10, what="fault cleared")
        daemon.stopping.set()

    async def main() -> int:
        daemon = Daemon(cab.patched_config(), Backends(board=cab.board))
        seen["daemon"] = daemon
        run = asyncio.create_task(daemon.run())
        await body(daemon)
        return await asyncio.wait_for(run, timeout=5)

    try:
        code = asyncio.run(main())
    finally:
        cab.stop()
    assert code == 0
    assert seen["ticks"] >= 8, f"control ticked only {seen['ticks']} times in 1 s while the disk was full"
    assert seen["limit_a"] > 1, "charging continued"
    tel = seen["status"]["telemetry"]
    assert tel["write_errors"] > 0 and "full" in tel["degraded"]
    assert "control unaffected" in seen["status"]["faults"]["telemetry_store_error"]
    assert "telemetry_store_error" in seen["state"]["faults"]
    db = sqlite3.connect(tmp_path / "data" / "telemetry.sqlite3")
    events = [json.loads(p) for (p,) in db.execute("SELECT payload FROM records WHERE kind='event' ORDER BY seq")]
    db.close()
    # the clear is written once there is room again (the raise itself may have met the full disk)
    assert {"kind": "fault_cleared", "name": "telemetry_store_error"} in events
