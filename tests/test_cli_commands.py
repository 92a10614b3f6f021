"""Every `edge` command against a daemon on the simulated cabinet: human output (80 columns, the limit's
reason named), `--json` output validated against a schema, exit codes, bad arguments, daemon down.

One daemon for the whole module; tests that change the cabinet put it back (resume, limit clear)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from edge.cli import main
from tests.cli_support import quiet_sim
from tests.conftest import DaemonProcess, api_request, edge_env, sim_config_text, wait_for

# Pins derate from 20 °C so the simulated cabinet (pins ~25 °C) runs on a named temperature rule; the site
# fuse is large so the grid does not hide it; plausibility is relaxed (not under test here).
SETTINGS: dict[str, dict[str, Any]] = {
    "limits.pin_temperature": {"derate_start_c": 20.0, "derate_end_c": 90.0, "trip_c": 95.0},
    "limits.grid": {"fuse_a": 400.0},
    "limits.plausibility": {"max_rate_c_per_s": 500.0},
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tmp / "config.toml"
    cfg.write_text(quiet_sim(sim_config_text(tmp), **SETTINGS))
    d = DaemonProcess(cfg, str(tmp / "edge.sock"))
    d.wait_ready()
    yield d
    d.stop()


def edge(d: DaemonProcess | str, *args: str) -> Any:
    path = d if isinstance(d, str) else d.socket_path
    return CliRunner().invoke(main, [*args, "--socket", path], catch_exceptions=False)


def edge_json(d: DaemonProcess, *args: str) -> Any:
    res = edge(d, *args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def charging(d: DaemonProcess) -> dict[str, Any]:
    return wait_for(
        lambda: (s := d.status())["enable"] and s["outputs"]["contactor"] and s,
        timeout=15,
        what="the simulated vehicle charging",
    )


READING = {
    "type": "object",
    "required": ["value", "unit", "quality", "age_s"],
    "properties": {"quality": {"enum": ["ok", "stale", "invalid"]}, "value": {"type": ["number", "null"]}},
}
STATUS_SCHEMA = {
    "type": "object",
    "required": [
        "cabinet_id",
        "site_id",
        "version",
        "uptime_s",
        "limit_a",
        "target_a",
        "rule",
        "reason",
        "enable",
        "faults",
        "latched",
        "outputs",
        "modules",
        "meters",
        "readings",
        "telemetry",
        "hardware_limit_a",
        "external_limit",
        "stopped_by",
    ],
    "properties": {
        "limit_a": {"type": "number", "minimum": 0},
        "reason": {"type": "string", "minLength": 1},
        "faults": {"type": "object", "additionalProperties": {"type": "string"}},
        "latched": {"type": "array", "items": {"type": "string"}},
        "outputs": {"type": "object", "required": ["contactor", "pump", "fan"]},
        "modules": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["lost", "voltage_v", "current_a", "temperature_c", "alarms", "on"],
            },
        },
        "readings": {"type": "object", "additionalProperties": READING},
        "telemetry": {"type": "object", "required": ["backlog", "last_seq"]},
        "external_limit": {"type": ["object", "null"]},
    },
}
EVENT = {
    "type": "object",
    "required": ["seq", "t_ms", "kind", "name"],
    "properties": {"seq": {"type": "integer"}, "t_ms": {"type": "integer"}, "kind": {"type": "string"}},
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["ok", "code", "error"],
    "properties": {"ok": {"const": False}, "code": {"type": "string"}, "error": {"type": "string"}},
}


def assert_fits_80_columns(text: str) -> None:
    wide = [ln for ln in text.splitlines() if len(ln) > 80]
    assert not wide, f"lines over 80 columns: {wide}"


# -- read -------------------------------------------------------------------------------------------
def test_status_names_the_rule_behind_the_limit_on_one_80_column_screen(daemon):
    wait_for(
        lambda: (
            (s := charging(daemon))["rule"] in ("pin_dc_plus_c", "pin_dc_minus_c")
            and sum(m["current_a"] or 0.0 for m in s["modules"].values()) > 1
        ),
        timeout=20,
        what="charging, with the pin temperature rule the lowest limit",
    )
    res = edge(daemon, "status")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert_fits_80_columns(out)
    assert len(out.splitlines()) <= 24, out
    limit_line = r"^limit +\d+ A  <- cable DC[+-] pin \d+\.\d °C \(derating 20-90 °C\)(; rising \d+ A/s)?$"
    assert re.search(limit_line, out, re.M), out
    assert out.startswith("cabinet sim-cab @ sim-site")
    for fragment in (
        "state    CHARGING",
        "faults   none",
        "modules",
        "pin DC+",
        "pin DC-",
        "flow",
        "bar",
        "contactor CLOSED",
        "meter    grid ok",
        "kWh",
        "can      can0",
        "uplink",
        "backlog",
    ):
        assert fragment in out, f"{fragment!r} missing:\n{out}"
    for addr in ("1", "2", "3", "4"):
        assert re.search(rf"^ +{addr}  on ", out, re.M), out


def test_status_json_is_valid_and_complete(daemon):
    data = edge_json(daemon, "status")
    jsonschema.validate(data, STATUS_SCHEMA)
    assert data["cabinet_id"] == "sim-cab" and set(data["modules"]) == {"1", "2", "3", "4"}
    assert data["readings"]["cable.coolant_flow_lpm"]["unit"] == "l/min"
    assert data["hardware_limit_a"] == 200.0


def test_watch_prints_count_frames_then_exits_zero(daemon):
    res = edge(daemon, "watch", "--count", "2", "--interval", "0.2")
    assert res.exit_code == 0, res.output
    assert res.stdout.count("cabinet sim-cab @ sim-site") == 2
    assert_fits_80_columns(res.stdout)
    res = edge(daemon, "watch", "--count", "3", "--interval", "0.2", "--json")
    lines = res.stdout.splitlines()
    assert res.exit_code == 0 and len(lines) == 3
    frames = [json.loads(ln) for ln in lines]
    for f in frames:
        jsonschema.validate(f, STATUS_SCHEMA)
    assert frames[0]["uptime_s"] < frames[-1]["uptime_s"]


def test_faults_lists_none_when_healthy(daemon):
    charging(daemon)
    res = edge(daemon, "faults")
    assert res.exit_code == 0 and "no active faults" in res.stdout
    assert re.search(r"^limit +\d+ A  <- ", res.stdout, re.M)
    data = edge_json(daemon, "faults")
    jsonschema.validate(data, {"type": "object", "required": ["faults", "module_alarms", "limit_a", "reason"]})
    assert data["faults"] == {}


def test_events_are_ordered_and_since_filters(daemon):
    data = edge_json(daemon, "events")
    jsonschema.validate(
        data, {"type": "object", "required": ["events"], "properties": {"events": {"type": "array", "items": EVENT}}}
    )
    seqs = [e["seq"] for e in data["events"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert data["events"][0]["kind"] == "started"
    res = edge(daemon, "events")
    assert res.exit_code == 0 and "started daemon" in res.stdout
    assert_fits_80_columns(res.stdout)
    # the daemon started more than a moment ago: `--since 1ms`-style windows leave the start-up out
    wait_for(lambda: daemon.status()["uptime_s"] > 1.5, timeout=5)
    recent = edge_json(daemon, "events", "--since", "1s")["events"]
    assert all(e["kind"] != "started" for e in recent)
    iso = edge_json(daemon, "events", "--since", "2000-01-01T00:00:00Z")["events"]
    assert [e["seq"] for e in iso] == seqs[-len(iso) :] and iso[0]["kind"] == "started"
    res = edge(daemon, "events", "--since", "yesterday")
    assert res.exit_code == 2 and "neither a duration" in res.stderr


def test_events_page_back_and_forward_and_say_when_there_are_more(daemon):
    newest = edge_json(daemon, "events", "--limit", "2")
    assert len(newest["events"]) == 2 and newest["more"] is True
    first_seq = newest["events"][0]["seq"]
    res = edge(daemon, "events", "--limit", "2")
    assert res.exit_code == 0 and f"(more: edge events --before {first_seq})" in res.stdout
    older = edge_json(daemon, "events", "--limit", "2", "--before", str(first_seq))["events"]
    assert len(older) == 2 and all(e["seq"] < first_seq for e in older)
    oldest = edge_json(daemon, "events", "--limit", "1", "--after", "0")
    assert oldest["events"][0]["kind"] == "started" and oldest["more"] is True
    res = edge(daemon, "events", "--before", "5", "--after", "1")
    assert res.exit_code == 2 and "not both" in res.stderr


def test_whoami_reports_root_as_admin(daemon):
    assert edge_json(daemon, "whoami")["admin"] is True
    assert "read and change" in edge(daemon, "whoami").stdout


# -- change -----------------------------------------------------------------------------------------
def test_limit_set_lowers_the_limit_names_who_and_expires_or_clears(daemon):
    charging(daemon)
    res = edge(daemon, "limit", "set", "42A", "--for", "10m")
    try:
        assert res.exit_code == 0, res.output
        assert "operator limit 42 A for 10 m 00 s" in res.stdout
        st = wait_for(lambda: (s := daemon.status())["rule"] == "external" and s, timeout=5)
        assert st["target_a"] == 42.0 and st["external_limit"]["source"] == "cli:root"
        assert 590 < st["external_limit"]["remaining_s"] <= 600
        out = edge(daemon, "status").stdout
        assert re.search(r"^limit +42 A  <- external limit 42 A", out, re.M), out
        assert re.search(r"operator limit 42 A by root, (9 m 5\d s|10 m 00 s) left", out), out
    finally:
        cleared = edge(daemon, "limit", "clear")
    assert cleared.exit_code == 0 and "cleared 42 A from cli:root" in cleared.stdout
    assert daemon.status()["external_limit"] is None
    events = edge_json(daemon, "events", "--since", "1m")["events"]
    cmds = [(e["name"], e["user"], e["uid"], e["ok"]) for e in events if e["kind"] == "command"]
    assert ("limit_set", "root", 0, True) in cmds and ("limit_clear", "root", 0, True) in cmds


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["120"], "has no unit; write it like 120A"),
        (["-5A"], "cannot be negative"),
        (["120kW"], "unit must be A"),
        (["100A", "--for", "30"], "write it like 30m or 30s"),
        (["100A", "--for", "8d"], "longer than 7 days"),
    ],
)
def test_bad_limit_arguments_exit_2_with_a_clear_message(daemon, args, message):
    before = daemon.status()["telemetry"]["last_seq"]
    res = edge(daemon, "limit", "set", *args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr
    assert daemon.status()["external_limit"] is None
    assert daemon.status()["telemetry"]["last_seq"] - before < 5  # refused locally: no command event


def test_limit_above_the_hardware_limit_is_refused_by_the_daemon(daemon):
    res = edge(daemon, "limit", "set", "250A")
    assert res.exit_code == 2
    assert "250 A is above the hardware limit 200 A" in res.stderr
    assert daemon.status()["external_limit"] is None
    res = edge(daemon, "limit", "set", "250A", "--json")
    assert res.exit_code == 2
    err = json.loads(res.stdout)
    jsonschema.validate(err, ERROR_SCHEMA)
    assert err["code"] == "invalid_argument"


def test_clear_of_a_fault_that_is_not_latched_is_refused_with_the_reason(daemon):
    res = edge(daemon, "clear", "coolant_flow_low")
    assert res.exit_code == 4
    assert "refused: coolant_flow_low is not latched; latched now: none" in res.stderr
    err = json.loads(edge(daemon, "clear", "coolant_flow_low", "--json").stdout)
    assert err["code"] == "refused"
    res = edge(daemon, "clear", "No Such Fault!")
    assert res.exit_code == 2 and "invalid argument" in res.stderr


def test_stop_turns_the_output_off_and_resume_brings_it_back(daemon):
    charging(daemon)
    res = edge(daemon, "stop")
    try:
        assert res.exit_code == 0 and "stopped: output off, contactor open" in res.stdout
        st = wait_for(lambda: (s := daemon.status())["outputs"]["contactor"] == 0 and s, timeout=3)
        assert st["rule"] == "stop" and st["limit_a"] == 0 and st["stopped_by"] == "cli:root"
        out = edge(daemon, "status").stdout
        assert "state    STOPPED" in out and "stopped by root  (edge resume)" in out
    finally:
        res = edge(daemon, "resume", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["resumed"] is True
    charging(daemon)


def test_selftest_is_refused_while_charging_and_reports_flow_when_stopped(daemon):
    charging(daemon)
    res = edge(daemon, "selftest", "--seconds", "1")
    assert res.exit_code == 4 and "output is on (charging); run `edge stop` first" in res.stderr
    assert edge(daemon, "stop").exit_code == 0
    try:
        wait_for(lambda: daemon.status()["outputs"]["contactor"] == 0, timeout=3)
        res = edge(daemon, "selftest", "--seconds", "1")
        assert res.exit_code == 0, res.output
        assert_fits_80_columns(res.stdout)
        assert re.search(r"^coolant flow +\d+\.\d\d +\d+\.\d\d  l/min$", res.stdout, re.M), res.stdout
        assert "outputs seen on   pump yes  fan yes" in res.stdout and "PASS: flow" in res.stdout
        data = edge_json(daemon, "selftest", "--seconds", "1")
        assert data["verdict"] == "pass" and data["flow_settled_lpm"] >= data["flow_full_current_lpm"]
        assert set(data["before"]) == set(data["after"]) >= {"coolant_flow_lpm", "coolant_in_c", "pin_dc_plus_c"}
    finally:
        assert edge(daemon, "resume").exit_code == 0


# -- plumbing ---------------------------------------------------------------------------------------
def test_daemon_down_is_one_line_with_the_socket_path_and_exit_3(tmp_path):
    missing = str(tmp_path / "nope.sock")
    res = edge(missing, "status")
    assert res.exit_code == 3 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1
    assert missing in res.stderr and "systemctl" in res.stderr
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(stale)  # a socket file left behind by a killed daemon: nobody listens
    res = edge(stale, "limit", "clear")
    assert res.exit_code == 3 and "connection refused" in res.stderr
    res = edge(missing, "faults", "--json")
    assert res.exit_code == 3
    jsonschema.validate(json.loads(res.stdout), ERROR_SCHEMA)


def test_socket_path_comes_from_env_or_config(daemon, monkeypatch):
    monkeypatch.setenv("EDGE_SOCKET", daemon.socket_path)
    assert CliRunner().invoke(main, ["whoami"]).exit_code == 0
    monkeypatch.delenv("EDGE_SOCKET")
    cfg = Path(daemon.socket_path).parent / "config.toml"
    res = CliRunner().invoke(main, ["status", "--config", str(cfg)])
    assert res.exit_code == 0 and "cabinet sim-cab" in res.stdout


def test_exit_codes_hold_for_the_real_command(daemon):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edge", *args], capture_output=True, text=True, env=edge_env(), timeout=30
        )

    assert run("status", "--socket", daemon.socket_path).returncode == 0
    res = run("limit", "set", "120", "--socket", daemon.socket_path)
    assert res.returncode == 2 and "write it like 120A" in res.stderr


def test_protocol_errors_over_the_raw_socket(daemon):
    assert api_request(daemon.socket_path, {"cmd": "nope"})["code"] == "unknown_command"
    assert api_request(daemon.socket_path, {"v": 2, "cmd": "status"})["code"] == "unsupported_version"
    ans = api_request(daemon.socket_path, {"cmd": "events", "args": {"limit": 0}, "id": 9})
    assert ans["code"] == "invalid_argument" and ans["id"] == 9 and "limit" in ans["error"]
    ans = api_request(daemon.socket_path, {"cmd": "status", "id": "x"})
    assert ans["ok"] and ans["v"] == 1 and ans["id"] == "x"


def test_scan_group_exists_and_says_which_scan_is_missing():
    res = CliRunner().invoke(main, ["scan", "--help"])
    assert res.exit_code == 0 and "commissioning" in res.stdout
    for name in ("can", "modbus"):
        try:
            __import__(f"edge.scan.{name}")
        except ImportError:
            res = CliRunner().invoke(main, ["scan", name])
            assert res.exit_code == 1 and f"edge scan {name}: not available in this build" in res.stderr
        else:
            assert name in CliRunner().invoke(main, ["scan", "--help"]).stdout


def test_config_check_json(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(sim_config_text(tmp_path))
    res = CliRunner().invoke(main, ["config", "check", str(good), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["ok"] is True
    bad = tmp_path / "bad.toml"
    bad.write_text(sim_config_text(tmp_path).replace("poll_ms = 250", "poll_ms = 5"))
    res = CliRunner().invoke(main, ["config", "check", str(bad), "--json"])
    data = json.loads(res.stdout)
    problem = data["problems"][0]
    assert res.exit_code == 2 and data["ok"] is False and problem["key"] == "meters[0].poll_ms" and problem["line"]


def _spawn(args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "edge", *args], env=edge_env(), **kw)


def test_watch_redraws_in_place_on_a_terminal_and_ctrl_c_exits_0(daemon):
    import os
    import pty
    import signal

    primary, secondary = pty.openpty()
    proc = _spawn(
        ["watch", "--interval", "0.2", "--socket", daemon.socket_path], stdout=secondary, stderr=subprocess.PIPE
    )
    os.close(secondary)
    seen = b""

    def frames() -> int:
        nonlocal seen
        seen += os.read(primary, 65536)
        return seen.count(b"\x1b[H\x1b[2J")

    try:
        wait_for(lambda: frames() >= 2, timeout=15, what="two in-place frames")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(primary)
    assert b"cabinet sim-cab" in seen and b"(Ctrl-C to leave)" in seen
    assert b"Traceback" not in proc.stderr.read()  # type: ignore[union-attr]


def test_oversized_request_gets_bad_request(daemon):
    ans = api_request(daemon.socket_path, {"cmd": "status", "args": {"x": "y" * 70_000}})
    assert ans["ok"] is False and ans["code"] == "bad_request" and "longer than" in ans["error"]
    assert daemon.status()["cabinet_id"] == "sim-cab"  # the daemon is fine
