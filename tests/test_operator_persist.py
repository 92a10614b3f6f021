"""Operator stops and limits survive a restart (issue 17 item 1): edge.operator.OperatorFile.

Unit tests run OperatorFile on a temporary data dir with hand-driven clocks; the daemon tests run the real
daemon (SIGKILL, restart) with a local stop through the socket and a cloud limit through a real mosquitto.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from edge.operator import (
    NOT_SAVED_FAULT,
    UNKNOWN_HOLDER,
    UNREADABLE_FAULT,
    Held,
    OperatorFile,
    Source,
)
from tests.conftest import DaemonProcess, api_request, sim_config_text, wait_for
from tests.mqtt_broker import Broker
from tests.mqtt_sim import mqtt_sim_config
from tests.test_commands import Backend

WALL_MS = 1_800_000_000_000
ALICE = Source.local("alice")
CLOUD = Source.cloud("dr-7")


class Faults:
    def __init__(self) -> None:
        self.active: dict[str, str] = {}

    def set(self, name: str, detail: str, stops_output: bool = False) -> None:
        assert not stops_output, "the unknown local stop already stops the output"
        self.active[name] = detail

    def clear(self, name: str, reason: str = "") -> None:
        self.active.pop(name, None)


class Run:
    """One run of the daemon as OperatorFile sees it: its own monotonic clock, a shared wall clock."""

    def __init__(self, data_dir: Path, wall_ms: int, mono: float = 100.0) -> None:
        self.mono, self.wall = mono, wall_ms
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.faults = Faults()
        self.file = OperatorFile(str(data_dir), lambda: self.mono, lambda: self.wall, self._emit, self.faults)

    def _emit(self, kind: str, name: str, data: dict[str, Any]) -> None:
        json.dumps(data, allow_nan=False)  # every event must be storable
        self.events.append((kind, name, data))

    def restored(self) -> dict[str, Any]:
        (event,) = [d for k, _n, d in self.events if k == "operator_restored"]
        return event


def _file(data_dir: Path) -> dict[str, Any]:
    return dict(json.loads((data_dir / "operator.json").read_text()))


def test_stops_and_limits_are_saved_on_every_change_in_the_documented_format(tmp_path: Path):
    run = Run(tmp_path, WALL_MS)
    st = run.file.restore()
    assert run.events == [] and not (tmp_path / "operator.json").exists(), "first start: nothing to restore"
    st.stop(ALICE)
    st.set_limit(CLOUD, 32.0, run.mono + 900.0)
    st.set_limit(ALICE, 20.0, None)
    assert _file(tmp_path) == {
        "version": 1,
        "saved_at_ms": WALL_MS,
        "stops": {"local": "cli:alice"},
        "limits": {
            "cloud": {"amps": 32.0, "source": "cloud:dr-7", "expires_at_ms": WALL_MS + 900_000},
            "local": {"amps": 20.0, "source": "cli:alice", "expires_at_ms": None},
        },
    }
    st.set_test_outputs(True, True, run.mono + 5)
    assert "test" not in (tmp_path / "operator.json").read_text(), "self-test outputs are not kept"
    assert st.clear_limit(ALICE) is not None and st.resume(ALICE) == "cli:alice"
    assert _file(tmp_path)["stops"] == {} and list(_file(tmp_path)["limits"]) == ["cloud"]
    assert run.file.saves == 5 and not (tmp_path / "operator.json.tmp").exists()


def test_a_restart_restores_who_stopped_and_the_limit_with_its_remaining_time(tmp_path: Path):
    first = Run(tmp_path, WALL_MS)
    st = first.file.restore()
    st.stop(ALICE)
    st.set_limit(CLOUD, 32.0, first.mono + 900.0)

    # 300 s later (wall clock), a new process whose monotonic clock started again near zero
    second = Run(tmp_path, WALL_MS + 300_000, mono=7.0)
    again = second.file.restore()
    assert again.stops == {"local": "cli:alice"} and again.stopped_by == "cli:alice"
    lim = again.limits["cloud"]
    assert (lim.amps, lim.source) == (32.0, "cloud:dr-7")
    assert lim.expires_at == pytest.approx(7.0 + 600.0)
    assert second.restored()["restored"] == [
        {"what": "stop", "authority": "local", "source": "cli:alice"},
        {"what": "limit", "authority": "cloud", "source": "cloud:dr-7", "amps": 32.0, "remaining_s": 600.0},
    ]
    # the local stop is still the technician's: the cloud cannot lift it
    with pytest.raises(Held, match="stopped locally by cli:alice"):
        again.resume(CLOUD)
    assert again.stopped_by == "cli:alice"


def test_an_expired_limit_is_dropped_with_a_note_and_the_others_kept(tmp_path: Path):
    first = Run(tmp_path, WALL_MS)
    st = first.file.restore()
    st.set_limit(CLOUD, 32.0, first.mono + 60.0)
    st.set_limit(ALICE, 20.0, first.mono + 3600.0)
    second = Run(tmp_path, WALL_MS + 90_000)
    again = second.file.restore()
    assert list(again.limits) == ["local"] and again.effective_limit().amps == 20.0  # type: ignore[union-attr]
    ev = second.restored()
    assert ev["dropped"] == [
        {
            "what": "limit",
            "authority": "cloud",
            "source": "cloud:dr-7",
            "amps": 32.0,
            "note": "expired 30.0 s before the restart",
        }
    ]
    assert [r["remaining_s"] for r in ev["restored"]] == [3510.0]


def test_a_wall_clock_that_went_back_never_lengthens_a_limit(tmp_path: Path):
    first = Run(tmp_path, WALL_MS)
    first.file.restore().set_limit(CLOUD, 32.0, first.mono + 600.0)
    second = Run(tmp_path, 0)  # RTC lost: 1970
    again = second.file.restore()
    assert again.limits["cloud"].expires_at == pytest.approx(second.mono + 600.0)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x00\x00\x00\x00", "JSONDecodeError"),  # a power cut on a file system without data journalling
        (b'{"version": 1, "saved_at_ms": 1, "stops": {"local": "cli:a"}', "JSONDecodeError"),  # truncated
        (b'{"version": 2, "saved_at_ms": 1, "stops": {}, "limits": {}}', "not a version 1"),
        (b'{"version": 1, "saved_at_ms": 1, "stops": {"cloud": "cli:alice"}, "limits": {}}', "does not belong"),
        (
            b'{"version": 1, "saved_at_ms": 1, "stops": {}, "limits": '
            b'{"local": {"amps": NaN, "source": "cli:a", "expires_at_ms": null}}}',
            "is not a current",
        ),
        (b"\xff\xfe bad utf-8", "UnicodeDecodeError"),
    ],
)
def test_an_unreadable_file_starts_stopped_locally_by_an_unknown_holder(tmp_path: Path, content: bytes, why: str):
    (tmp_path / "operator.json").write_bytes(content)
    run = Run(tmp_path, WALL_MS)
    st = run.file.restore()
    assert st.stops == {"local": UNKNOWN_HOLDER.label} and st.limits == {}
    assert st.stopped_by == "cli:unknown (operator state unreadable)"
    assert UNREADABLE_FAULT in run.faults.active and "edge resume" in run.faults.active[UNREADABLE_FAULT]
    ev = run.restored()
    assert why in ev["error"] and ev["restored"] == [{"what": "stop", "authority": "local", "source": st.stopped_by}]
    assert (tmp_path / "operator.json.unreadable").read_bytes() == content, "kept for a look"
    with pytest.raises(Held, match="resume locally"):
        st.resume(CLOUD)

    # a second restart before anyone acted still starts stopped (the fail-safe state was written)
    second = Run(tmp_path, WALL_MS + 1000)
    assert second.file.restore().stopped_by == UNKNOWN_HOLDER.label

    # the technician resumes on site: saved, and the fault is gone
    assert st.resume(ALICE) == UNKNOWN_HOLDER.label
    assert UNREADABLE_FAULT not in run.faults.active and _file(tmp_path)["stops"] == {}


def test_a_file_that_cannot_be_read_at_all_fails_safe_too(tmp_path: Path):
    (tmp_path / "operator.json").mkdir()  # EISDIR: an OSError other than "not found"
    run = Run(tmp_path, WALL_MS)
    st = run.file.restore()
    assert st.stopped_by == UNKNOWN_HOLDER.label and "IsADirectoryError" in run.restored()["error"]
    # the fail-safe state could not be written over a directory: the next start fails safe the same way
    assert Run(tmp_path, WALL_MS).file.restore().stopped_by == UNKNOWN_HOLDER.label


def test_a_crash_before_the_rename_leaves_the_previous_state_and_a_failed_save_is_a_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run = Run(tmp_path, WALL_MS)
    st = run.file.restore()
    st.stop(ALICE)
    before = (tmp_path / "operator.json").read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    st.resume(ALICE)
    assert st.stopped_by is None, "the change is in force even when it could not be saved"
    assert (tmp_path / "operator.json").read_bytes() == before
    assert "lost on a restart" in run.faults.active[NOT_SAVED_FAULT] and run.file.save_errors == 1
    monkeypatch.undo()
    st.stop(ALICE)
    assert NOT_SAVED_FAULT not in run.faults.active and _file(tmp_path)["stops"] == {"local": "cli:alice"}


def test_saving_is_quick_enough_to_do_before_the_answer(tmp_path: Path):
    run = Run(tmp_path, WALL_MS)
    st = run.file.restore()
    t0 = time.perf_counter()
    for i in range(20):
        st.set_limit(ALICE, 10.0 + i, None)
    per_save_ms = (time.perf_counter() - t0) * 1000 / 20
    assert per_save_ms < 100, f"{per_save_ms:.1f} ms per save"


# -- the real daemon -----------------------------------------------------------------------------------
def _events(d: DaemonProcess, kind: str) -> list[dict[str, Any]]:
    events = api_request(d.socket_path, {"cmd": "events", "args": {"limit": 1000}})["data"]["events"]
    return [e for e in events if e["kind"] == kind]


def _op(d: DaemonProcess, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    res = api_request(d.socket_path, {"cmd": cmd, "args": args or {}})
    assert res["ok"], res
    return res


def test_daemon_killed_keeps_the_local_stop_and_the_cloud_limit_after_a_restart(tmp_path: Path, mqtt_broker: Broker):
    cfg = tmp_path / "config.toml"
    cfg.write_text(mqtt_sim_config(tmp_path, mqtt_broker.port))
    be = Backend(mqtt_broker.port, client_id="backend-persist")
    d = DaemonProcess(cfg, str(tmp_path / "edge.sock"))
    try:
        d.wait_ready()
        wait_for(lambda: d.status()["telemetry"]["uplink"]["connected"], 10, what="uplink connected")
        be.wait_listening()
        _op(d, "stop", {"reason": "working on the cable"})
        n = len(be.on("cmd-result"))
        be.send("set-current-limit", {"id": "dr-p1", "amps": 32, "duration_s": 600})
        assert be.result("dr-p1", n)["result"] == "accepted"
        before = d.status()
        local = before["operator"]["stops"]["local"]
        assert before["stopped_by"] == local and local.startswith("cli:")
        d.stop(signal.SIGKILL)
        t_kill = time.monotonic()
        onlines = be.onlines()

        d = DaemonProcess(cfg, str(tmp_path / "edge.sock"))
        d.wait_ready()
        st = d.status()
        assert st["stopped_by"] == local and st["rule"] == "stop" and st["enable"] is False
        lim = st["operator"]["limits"]["cloud"]
        assert (lim["amps"], lim["source"]) == (32.0, "cloud:dr-p1")
        elapsed = time.monotonic() - t_kill
        assert 600 - elapsed - 30 < lim["remaining_s"] <= 600, (lim, elapsed)
        (ev,) = _events(d, "operator_restored")
        assert {"what": "stop", "authority": "local", "source": local} in ev["restored"]
        assert [(r["source"], r["amps"]) for r in ev["restored"] if r["what"] == "limit"] == [("cloud:dr-p1", 32.0)]

        # still the technician's stop: a cloud resume is refused and names the local holder
        wait_for(lambda: d.status()["telemetry"]["uplink"]["connected"], 10, what="uplink connected again")
        be.wait_listening(after=onlines)
        n = len(be.on("cmd-result"))
        be.send("resume", {"id": "dr-p2"})
        res = be.result("dr-p2", n)
        assert res["result"] == "rejected" and f"stopped locally by {local}" in res["reason"], res
        assert d.status()["stopped_by"] == local
        _op(d, "resume")
        wait_for(lambda: d.status()["stopped_by"] is None, 3, what="resumed locally")
    finally:
        be.close()
        d.stop(signal.SIGKILL)


def test_daemon_with_a_corrupt_operator_file_starts_stopped_and_says_why(tmp_path: Path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(sim_config_text(tmp_path))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "operator.json").write_bytes(b'{"version": 1, "stops": {"loc')
    d = DaemonProcess(cfg, str(tmp_path / "edge.sock"))
    try:
        d.wait_ready()
        st = d.status()
        assert st["stopped_by"] == UNKNOWN_HOLDER.label and st["enable"] is False
        assert "resume on site (edge resume)" in st["faults"][UNREADABLE_FAULT]
        (ev,) = _events(d, "operator_restored")
        assert "JSONDecodeError" in ev["error"]
        _op(d, "resume")
        wait_for(lambda: UNREADABLE_FAULT not in d.status()["faults"], 3, what="fault gone after a local resume")
        assert d.status()["stopped_by"] is None
    finally:
        d.stop(signal.SIGKILL)


def test_daemon_drops_an_expired_limit_at_start_with_a_note(tmp_path: Path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(sim_config_text(tmp_path))
    (tmp_path / "data").mkdir()
    now_ms = int(time.time() * 1000)
    (tmp_path / "data" / "operator.json").write_text(
        json.dumps(
            {
                "version": 1,
                "saved_at_ms": now_ms - 120_000,
                "stops": {},
                "limits": {
                    "cloud": {"amps": 30.0, "source": "cloud:old", "expires_at_ms": now_ms - 60_000},
                    "local": {"amps": 40.0, "source": "cli:bob", "expires_at_ms": None},
                },
            }
        )
    )
    d = DaemonProcess(cfg, str(tmp_path / "edge.sock"))
    try:
        d.wait_ready()
        st = d.status()
        assert st["external_limit"] == {"amps": 40.0, "source": "cli:bob", "remaining_s": None}
        assert list(st["operator"]["limits"]) == ["local"]
        (ev,) = _events(d, "operator_restored")
        (gone,) = ev["dropped"]
        assert gone["source"] == "cloud:old" and gone["note"].startswith("expired 6")
    finally:
        d.stop(signal.SIGKILL)
