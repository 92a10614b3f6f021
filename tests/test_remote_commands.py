"""The remote commands on the MQTT command channel (edge.telemetry.commands.handle with ``remote=``):
each one disabled unless listed in [remote] commands, rate-limited, audited with its source; log-level for a
bounded time and then back; config-get with secrets redacted."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge.config.remote import Remote
from edge.ops import Operations
from edge.remote.commands import RemoteCommands
from edge.telemetry import commands
from tests.remote_support import wait_until

NOW_MS = 1_800_000_000_000


class Channel:
    def __init__(self, cfg: Remote, **kw: Any) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.published: list[tuple[str, bytes, bool]] = []
        self.now_s = 0.0
        self.ops = Operations(SimpleNamespace(), None, lambda k, n, d: self.events.append((k, n, d)), dict)  # type: ignore[arg-type]
        self.remote = RemoteCommands(
            cfg, publish=lambda leaf, p, r: self.published.append((leaf, p, r)), clock=lambda: self.now_s, **kw
        )
        self.guard = commands.Guard()
        self.n = 0

    def send(self, name: str, **args: Any) -> commands.Result:
        self.n += 1
        payload = json.dumps({"id": f"c{self.n}", **args}).encode()
        return commands.handle(name, payload, self.ops, NOW_MS, guard=self.guard, remote=self.remote)


def test_a_remote_command_not_enabled_is_refused_and_audited_with_its_source() -> None:
    ch = Channel(Remote())
    r = ch.send("log-level", level="DEBUG", duration_s=60)
    assert r.result == commands.REJECTED and "not enabled on this cabinet ([remote] commands)" in r.reason
    kind, op, data = ch.events[-1]
    assert (kind, op, data["source"], data["id"], data["ok"], data["code"]) == (
        "command",
        "log-level",
        "cloud",
        "c1",
        False,
        "refused",
    )


def test_without_a_remote_handler_the_names_are_known_but_refused() -> None:
    ops = Operations(SimpleNamespace(), None, None, dict)  # type: ignore[arg-type]
    r = commands.handle("update", b'{"id":"x"}', ops, NOW_MS)
    assert r.result == commands.REJECTED and "no remote operations" in r.reason


def test_remote_commands_are_rate_limited_per_hour() -> None:
    ch = Channel(Remote(commands=["log-level"], commands_per_hour=3))
    results = [ch.send("log-level", level="INFO", duration_s=10) for _ in range(4)]
    assert [r.result for r in results] == ["accepted"] * 3 + ["rejected"]
    assert "more than 3 remote commands in an hour" in results[-1].reason
    ch.now_s = 3600.0
    assert ch.send("log-level", level="INFO", duration_s=10).result == commands.ACCEPTED
    ch.remote.log_level.restore()


def test_log_level_holds_for_its_time_and_then_comes_back() -> None:
    ch = Channel(Remote(commands=["log-level"], log_level_max_s=60))
    logger = logging.getLogger("edge.remote_test")
    logger.setLevel(logging.WARNING)
    r = ch.send("log-level", level="DEBUG", duration_s=0.3, logger="edge.remote_test")
    assert r.result == commands.ACCEPTED, r.reason
    assert logger.level == logging.DEBUG
    wait_until(lambda: logger.level == logging.WARNING, 5, "the level to come back")
    assert ch.remote.log_level.until_s is None


def test_log_level_refuses_a_time_above_the_bound_and_bad_arguments() -> None:
    ch = Channel(Remote(commands=["log-level"], log_level_max_s=60))
    assert "above [remote] log_level_max_s = 60 s" in ch.send("log-level", level="DEBUG", duration_s=61).reason
    assert "level" in ch.send("log-level", level="TRACE", duration_s=5).reason
    assert "duration_s" in ch.send("log-level", level="DEBUG").reason


def test_a_second_log_level_replaces_the_first_and_the_configured_level_comes_back() -> None:
    ch = Channel(Remote(commands=["log-level"]))
    logger = logging.getLogger("edge.remote_test2")
    logger.setLevel(logging.INFO)
    ch.send("log-level", level="DEBUG", duration_s=30, logger="edge.remote_test2")
    ch.send("log-level", level="ERROR", duration_s=0.2, logger="edge.remote_test2")
    assert logger.level == logging.ERROR
    wait_until(lambda: logger.level == logging.INFO, 5, "the configured level")


def test_config_get_publishes_the_config_with_secrets_redacted(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[telemetry.mqtt]\nhost = "broker"\npassword = "hunter2"\n')
    ch = Channel(Remote(commands=["config-get"]), config_path=str(config))
    r = ch.send("config-get")
    assert r.result == commands.ACCEPTED, r.reason
    leaf, payload, retain = ch.published[-1]
    body = json.loads(payload)
    assert leaf == "config" and not retain and body["id"] == "c1"
    assert "hunter2" not in body["toml"] and 'host = "broker"' in body["toml"]
    assert body["sha256"] == hashlib.sha256(body["toml"].encode()).hexdigest()
    assert body["sha256"][:12] in r.reason


def test_update_without_an_update_manager_is_refused() -> None:
    ch = Channel(Remote(commands=["update"]))
    assert "not set up" in ch.send("update", version="2.0").reason


def test_build_remote_publishes_the_update_status_retained_and_each_new_state_as_an_event(tmp_path: Path) -> None:
    from edge.config import parse_config
    from edge.remote import states
    from edge.remote.service import build_remote, state_dir_of

    config = parse_config(
        f'[cabinet]\nsite_id = "s"\ncabinet_id = "c"\n[storage]\ndata_dir = "{tmp_path}"\n'
        '[[can]]\nname = "can0"\n'
        '[remote]\ncommands = ["update"]\n'
    )
    assert state_dir_of(config) == tmp_path / "update"
    published: list[tuple[str, bytes, bool]] = []
    events: list[tuple[str, str, dict[str, Any]]] = []
    remote = build_remote(
        config,
        None,
        "1.0",
        publish=lambda leaf, p, r: published.append((leaf, p, r)),
        on_event=lambda k, n, d: events.append((k, n, d)),
    )
    assert remote.update is not None
    remote.update.resume()  # nothing pending: the retained Idle status
    assert published[-1][0] == "update" and published[-1][2] is True
    assert json.loads(published[-1][1])["state"] == states.IDLE and events == []
    r = remote.run("update", "u1", {"version": "2.0", "url": "https://x/r", "sha256": "0" * 64, "signature": "AAAA"})
    assert not r[0] and "InvalidSignature: no trusted keys" in r[1]
    assert json.loads(published[-1][1])["state"] == states.INVALID_SIGNATURE
    assert [(k, n) for k, n, _ in events] == [("update", states.INVALID_SIGNATURE)]
    assert events[0][2]["target"] == "release" and "kind" not in events[0][2], "an event's kind is its own"


# ---- diag ----------------------------------------------------------------------------------------------
def diag_channel(tmp_path: Path, max_bytes: int = 1_000_000) -> tuple[Channel, Path]:
    from edge.remote.diag import DiagUpload, basic_files

    config = tmp_path / "config.toml"
    config.write_text('[telemetry.mqtt]\nhost = "broker"\npassword = "hunter2"\n')
    ch = Channel(Remote(commands=["diag"]), config_path=str(config))
    ch.remote.diag = DiagUpload(
        lambda: {**basic_files(str(config)), "status.json": '{"ok": true}\n'},
        max_bytes,
        publish=lambda leaf, p, r: ch.published.append((leaf, p, r)),
        on_event=lambda k, n, d: ch.events.append((k, n, d)),
    )
    return ch, config


def bundle_members(data: bytes) -> dict[str, bytes]:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_diag_uploads_the_redacted_bundle_with_put_and_answers_size_and_hash(tmp_path: Path) -> None:
    from tests.remote_support import FileServer

    srv = FileServer().start()
    try:
        ch, _ = diag_channel(tmp_path)
        r = ch.send("diag", url=srv.url("bucket/diag.tar.gz?sig=abc"))
        assert r.result == commands.ACCEPTED, r.reason
        ch.remote.diag.wait(30)  # type: ignore[union-attr]
        body = srv.uploads["bucket/diag.tar.gz?sig=abc"]
    finally:
        srv.stop()
    summary = json.loads(ch.published[-1][1])
    assert ch.published[-1][0] == "diag" and summary["result"] == "uploaded"
    assert summary["size_bytes"] == len(body) and summary["sha256"] == hashlib.sha256(body).hexdigest()
    members = bundle_members(body)
    assert b"hunter2" not in b"".join(members.values())
    assert b"<redacted>" in members["config-file.toml.redacted"] and "status.json" in members
    assert ("diag", "uploaded") in [(k, n) for k, n, _ in ch.events]


def test_diag_without_a_url_is_published_in_chunks_over_mqtt(tmp_path: Path) -> None:
    from edge.remote import diag as remote_diag

    ch, _ = diag_channel(tmp_path)
    remote_diag.CHUNK_BYTES, saved = 512, remote_diag.CHUNK_BYTES
    try:
        assert ch.send("diag").result == commands.ACCEPTED
        ch.remote.diag.wait(30)  # type: ignore[union-attr]
    finally:
        remote_diag.CHUNK_BYTES = saved
    summary = json.loads(ch.published[-1][1])
    chunks = [(leaf, p) for leaf, p, _ in ch.published if leaf.startswith("diag/c1/")]
    assert summary["result"] == "published" and summary["chunks"] == len(chunks) > 1
    assert [leaf for leaf, _ in chunks] == [f"diag/c1/{n}" for n in range(len(chunks))]
    data = b"".join(p for _, p in chunks)
    assert len(data) == summary["size_bytes"] and hashlib.sha256(data).hexdigest() == summary["sha256"]
    assert b"hunter2" not in b"".join(bundle_members(data).values())


def test_diag_above_its_size_bound_is_not_sent(tmp_path: Path) -> None:
    ch, _ = diag_channel(tmp_path, max_bytes=100)
    ch.send("diag")
    ch.remote.diag.wait(30)  # type: ignore[union-attr]
    summary = json.loads(ch.published[-1][1])
    assert summary["result"] == "failed" and "above the bound of 100 bytes" in summary["reason"]
    assert not [leaf for leaf, _, _ in ch.published if leaf.startswith("diag/")]


def test_diag_to_a_plain_http_url_elsewhere_is_refused(tmp_path: Path) -> None:
    ch, _ = diag_channel(tmp_path)
    assert "loopback" in ch.send("diag", url="http://bucket.example.com/x").reason


@pytest.mark.parametrize(
    ("window", "hhmm", "inside"),
    [
        ("", "12:00", True),
        ("01:00-05:00", "01:00", True),
        ("01:00-05:00", "04:59", True),
        ("01:00-05:00", "05:00", False),
        ("01:00-05:00", "12:00", False),
        ("22:00-02:00", "23:30", True),
        ("22:00-02:00", "01:59", True),
        ("22:00-02:00", "02:00", False),
    ],
)
def test_install_window_may_span_midnight(window: str, hhmm: str, inside: bool) -> None:
    import datetime

    from edge.remote.update import in_window

    assert in_window(window, datetime.datetime.fromisoformat(f"2026-12-04T{hhmm}")) is inside


def test_install_window_must_be_hh_mm_hh_mm() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Remote(install_window="1:00-5:00")
    assert Remote(install_window="22:00-02:00").install_window == "22:00-02:00"


def test_the_audit_event_keeps_no_pre_signed_url_signature(tmp_path: Path) -> None:
    ch, _ = diag_channel(tmp_path)
    ch.send("diag", url="http://127.0.0.1:9/d.tar.gz?X-Amz-Signature=s3cr3t")  # port 9: refused at once
    ch.remote.diag.wait(30)  # type: ignore[union-attr]
    audit = [d for k, n, d in ch.events if k == "command"][-1]
    assert "s3cr3t" not in json.dumps(audit) and audit["args"]["url"].endswith("?<redacted>")


# ---- what the daemon tells the update manager ---------------------------------------------------------
def _decision(**connectors: dict[str, Any]) -> dict[str, Any]:
    idle = {"mode": "Off", "phase": "Other", "ending": False, "contactor": False}
    return {"faults": ["door_open"], "connectors": {n: {**idle, **cd} for n, cd in connectors.items()}}


@pytest.mark.parametrize(
    ("connector", "active"),
    [
        ({}, False),
        ({"mode": "Export", "phase": "Charging"}, True),
        ({"mode": "Off", "phase": "CableCheck"}, True),  # the discharge after a cable check: mid-session
        ({"ending": True}, True),  # the off-current wait before the contactor opens
        ({"contactor": True}, True),
        ({"phase": "Off"}, False),
    ],
    ids=["idle", "charging", "cable-check-discharge", "ending", "contactor-closed", "off"],
)
def test_a_session_is_any_connector_not_idle(connector: dict[str, Any], active: bool) -> None:
    from edge.remote.service import active_faults_in, sessions_active_in

    assert sessions_active_in(_decision(**{"1": {}, "2": connector})) is active
    assert sessions_active_in(None) is False, "before the first evaluation: nothing charges"
    assert active_faults_in(_decision(**{"1": connector})) == ["door_open"] and active_faults_in(None) == []
