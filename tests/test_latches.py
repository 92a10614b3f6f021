"""Latched faults survive a restart (edge/latches.py): the file on its own, the stepped cabinet built twice on
one data directory, and one real ``edge run --sim`` killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from edge.config import parse_config
from edge.latches import UNREADABLE_FAULT, LatchFile, cabinet_latched_of, core_state_with, latched_of
from edge.limits import connectors
from edge.operator import Source
from edge.ops import FORBIDDEN, OpError
from edge.sim.stepper import SimStepper
from tests.conftest import REPO, DaemonProcess, api_request, sim_config_text, wait_for

SIM_TOML = (REPO / "edge" / "sim" / "sim.toml").read_text()


class Faults:
    def __init__(self) -> None:
        self.active: dict[str, str] = {}

    def set(self, name: str, detail: str, stops_output: bool = False) -> None:
        self.active[name] = detail

    def clear(self, name: str, reason: str = "") -> None:
        self.active.pop(name, None)


class Rig:
    def __init__(self, data_dir: Path) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.faults = Faults()
        self.mono = 10.0
        self.file = LatchFile(str(data_dir), lambda: self.mono, lambda: 1_764_170_000_000, self._emit, self.faults)

    def _emit(self, kind: str, name: str, data: dict[str, Any]) -> None:
        self.events.append((kind, name, data))


def _state(latched: dict[str, dict[str, str]]) -> dict[str, Any] | None:
    return core_state_with(latched)


def test_the_latched_set_is_written_on_every_change_in_the_documented_format_and_restored(tmp_path: Path):
    rig = Rig(tmp_path)
    assert rig.file.restore(["1", "2"]) == ({}, {}) and rig.events == []  # no file: a first start, no event
    rig.file.save_if_changed(None)
    assert rig.file.saves == 0 and not (tmp_path / "latches.json").exists()  # nothing latched, nothing changed
    one = {"1": {"coolant_flow_low": "coolant flow 0.0 l/min"}}
    rig.file.save_if_changed(_state(one))
    rig.file.save_if_changed(_state(one))
    assert rig.file.saves == 1
    doc = json.loads((tmp_path / "latches.json").read_text())
    assert doc == {"version": 2, "saved_at_ms": 1_764_170_000_000, "latched": one, "cabinet": {}}
    both = {**one, "2": {"contactor_welded": "mirror contact still reads closed"}}
    rig.file.save_if_changed(_state(both))
    assert rig.file.saves == 2

    again = Rig(tmp_path)
    restored, cabinet = again.file.restore(["1", "2"])
    assert restored == both and cabinet == {} and latched_of(core_state_with(restored)) == both
    ((kind, _name, data),) = again.events
    assert kind == "latches_restored" and data["dropped"] == []
    assert {"connector": "2", "fault": "contactor_welded", "detail": "mirror contact still reads closed"} in data[
        "restored"
    ]
    dropped = Rig(tmp_path)
    assert dropped.file.restore(["1"]) == (one, {})
    assert dropped.events[0][2]["dropped"] == [
        {"connector": "2", "fault": "contactor_welded", "note": "connector no longer in the config"}
    ]


def test_the_cabinets_own_latches_are_written_and_restored_and_a_version_1_file_is_still_read(tmp_path: Path):
    rig = Rig(tmp_path)
    one = {"1": {"coolant_flow_low": "coolant flow 0.0 l/min"}}
    estop = {"emergency_stop": "emergency stop pressed (input estop)"}
    state = core_state_with(one, estop)
    assert cabinet_latched_of(state) == estop and latched_of(state) == one
    rig.file.save_if_changed(state)
    assert json.loads((tmp_path / "latches.json").read_text())["cabinet"] == estop
    rig.file.save_if_changed(core_state_with(one))  # the e-stop cleared: written again
    assert rig.file.saves == 2 and json.loads((tmp_path / "latches.json").read_text())["cabinet"] == {}
    rig.file.save_if_changed(state)
    again = Rig(tmp_path)
    assert again.file.restore(["1"]) == (one, estop)
    ((_kind, _name, data),) = again.events
    assert data["restored"][0] == {"connector": None, "fault": "emergency_stop", "detail": estop["emergency_stop"]}
    (tmp_path / "latches.json").write_text(json.dumps({"version": 1, "saved_at_ms": 1, "latched": one}))
    assert Rig(tmp_path).file.restore(["1", "2"]) == (one, {})  # written by session 23's daemon


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00" * 64,
        b'{"version": 1, "latched": {"1"',
        b'{"version": 3, "saved_at_ms": 1, "latched": {}, "cabinet": {}}',
        b'{"version": 2, "saved_at_ms": 1, "latched": {}}',
        b'{"version": 2, "saved_at_ms": 1, "latched": {}, "cabinet": {"emergency_stop": 1}}',
        b'{"version": 1, "saved_at_ms": 1, "latched": {"1": {"Bad Name": "x"}}}',
    ],
)
def test_an_unreadable_file_latches_every_connector_until_cleared_on_site(tmp_path: Path, content: bytes):
    (tmp_path / "latches.json").write_bytes(content)
    rig = Rig(tmp_path)
    restored, cabinet = rig.file.restore(["1", "2"])
    assert (
        cabinet == {} and set(restored) == {"1", "2"} and all(set(f) == {UNREADABLE_FAULT} for f in restored.values())
    )
    assert "edge clear latch_state_unreadable" in restored["1"][UNREADABLE_FAULT]
    assert (tmp_path / "latches.json.unreadable").read_bytes() == content
    assert Rig(tmp_path).file.restore(["1", "2"]) == (restored, {})  # the fail-safe state was written in its place
    assert rig.events[0][2]["error"]
    assert UNREADABLE_FAULT in connectors.core.LOCAL_CLEAR_ONLY


def test_a_failed_write_keeps_the_latch_raises_a_fault_and_is_retried(tmp_path: Path, monkeypatch):
    rig = Rig(tmp_path)
    real = os.replace

    def broken(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    one = {"1": {"over_current": "output 300 A"}}
    rig.file.save_if_changed(_state(one))
    assert "latch_state_not_saved" in rig.faults.active and rig.file.save_errors == 1
    rig.file.save_if_changed(_state(one))
    assert rig.file.save_errors == 1  # not every evaluation: after RETRY_S or at the next change
    monkeypatch.setattr(os, "replace", real)
    rig.mono += 6.0
    rig.file.save_if_changed(_state(one))
    assert "latch_state_not_saved" not in rig.faults.active
    assert json.loads((tmp_path / "latches.json").read_text())["latched"] == one


def test_a_weld_latched_before_a_restart_keeps_the_connector_off_from_the_first_evaluation(tmp_path: Path):
    cfg = parse_config(SIM_TOML)
    data = tmp_path / "data"
    sim = SimStepper(cfg, data, step_s=0.01)
    try:
        sim.weld_contactor("1", closed_now=True)  # welded before any session: reads closed, never commanded
        sim.run_until(lambda: "contactor_welded" in sim.decision()["latched"], 5.0, "weld at start-up")
    finally:
        sim.close()
    sim = SimStepper(cfg, data, step_s=0.01)  # a new process: the contactor was repaired meanwhile
    try:
        one = sim.decision()["connectors"]["1"]
        assert one["latched"] == ["contactor_welded"] and one["out_of_service"] and not one["contactor"]
        (ev,) = sim.events("latches_restored")
        assert [(r["connector"], r["fault"]) for r in ev.data["restored"]] == [("1", "contactor_welded")]
        sim.run(2.0)
        assert [level for _t, level in sim.board.pins["contactor1"].history] == [0]  # never closed
        assert sim.decision()["connectors"]["1"]["latched"] == ["contactor_welded"]
        ok, why = sim.cabinet.controller.request_clear("contactor_welded")  # reads open now: a local clear
        assert ok, why
        sim.run(0.2)
    finally:
        sim.close()
    assert json.loads((data / "latches.json").read_text())["latched"] == {}


def test_an_estop_latch_survives_a_restart_is_listed_and_only_a_local_clear_lifts_it(tmp_path: Path):
    cfg = parse_config(SIM_TOML + "\n[limits]\nremote_clear_allowed = true\n")
    data = tmp_path / "data"
    sim = SimStepper(cfg, data, step_s=0.01)
    try:
        sim.set_estop(True)
        sim.run(0.1)
        sim.set_estop(False)  # released: still latched until cleared on site
        sim.run(0.1)
        assert "emergency_stop" in sim.decision()["latched"]
    finally:
        sim.close()  # no clear: a crash or power cut now
    sim = SimStepper(cfg, data, step_s=0.01)  # a new process; the e-stop stays released
    try:
        d = sim.decision()
        assert d["estop"] and d["latched"] == ["emergency_stop"]
        assert all(c["limit_a"] == 0.0 and not c["contactor"] for c in d["connectors"].values())
        (ev,) = sim.events("latches_restored")
        assert [(r["connector"], r["fault"]) for r in ev.data["restored"]] == [(None, "emergency_stop")]
        assert sim.cabinet.status()["estop"] != "ok"
        sim.run(1.0)
        for pin in ("contactor1", "contactor2"):
            assert [lv for _t, lv in sim.board.pins[pin].history if lv] == []  # never closed
        ops = sim.cabinet.operations
        assert ops is not None
        with pytest.raises(OpError) as refused:
            ops.clear_fault(Source.cloud("cmd-1"), {"fault": "emergency_stop"})
        assert refused.value.code == FORBIDDEN
        assert sim.decision()["estop"]
        assert ops.clear_fault(Source.local("tech"), {"fault": "emergency_stop"}).result == "cleared"
        sim.run(0.1)
        assert not sim.decision()["estop"]
    finally:
        sim.close()
    assert json.loads((data / "latches.json").read_text())["cabinet"] == {}


# -- the real daemon -----------------------------------------------------------------------------------------


def _knob(d: DaemonProcess, **req: Any) -> None:
    answer = api_request(os.path.join(os.path.dirname(d.socket_path), "sim-control.sock"), req)
    assert answer["ok"], answer


def test_daemon_killed_with_a_latched_fault_still_has_it_latched_and_reported_after_a_restart(tmp_path: Path):
    cfg = tmp_path / "config.toml"
    estop = '[[input]]\nname = "estop"\npin = "estop-loop"\nfunction = "estop"\ndebounce_ms = 0\n'
    cfg.write_text(sim_config_text(tmp_path, estop))
    d = DaemonProcess(cfg, str(tmp_path / "edge.sock"))
    try:
        d.wait_ready()
        wait_for(lambda: d.status()["limit_a"] > 0, 15, what="charging")
        _knob(d, knob="pump_failed", value=True)
        wait_for(lambda: "coolant_flow_low" in d.status()["latched"], 15, what="coolant_flow_low latched")
        _knob(d, knob="input", function="estop", value=True)  # pressed and released: latched until cleared
        wait_for(lambda: "emergency_stop" in d.status()["latched"], 5, what="emergency_stop latched")
        _knob(d, knob="input", function="estop", value=False)
        wait_for(lambda: d.status()["estop"].startswith("released, LATCHED"), 5, what="e-stop released")
        saved = tmp_path / "data" / "latches.json"
        wait_for(lambda: saved.exists() and "emergency_stop" in json.loads(saved.read_text())["cabinet"], 5, "saved")
        d.stop(signal.SIGKILL)

        d = DaemonProcess(cfg, str(tmp_path / "edge.sock"))  # a new simulator: its pump works again
        d.wait_ready()
        st = d.status()
        assert {"coolant_flow_low", "emergency_stop"} <= set(st["latched"]) and st["enable"] is False
        assert st["estop"].startswith("released, LATCHED")
        events = api_request(d.socket_path, {"cmd": "events", "args": {"limit": 1000}})["data"]["events"]
        (ev,) = [e for e in events if e["kind"] == "latches_restored"]
        assert sorted(r["fault"] for r in ev["restored"]) == ["coolant_flow_low", "emergency_stop"]
        wait_for(lambda: d.status()["limit_a"] == 0 and "coolant_flow_low" in d.status()["latched"], 3, what="held")
        answer = api_request(d.socket_path, {"cmd": "clear", "args": {"fault": "emergency_stop"}})
        assert answer["ok"], answer  # released: the local socket's clear lifts it
        wait_for(lambda: d.status()["estop"] == "ok", 3, what="e-stop cleared")
    finally:
        d.stop(signal.SIGKILL)
