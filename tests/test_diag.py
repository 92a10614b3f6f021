"""`edge diag`: the bundle holds what its manifest says, and no secret from the config ever gets in
(mqtt password, TLS key contents), whether the daemon is up, down, or the config does not even parse."""

from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.diag import REDACTED, redact, redact_toml_text
from tests.cli_support import quiet_sim
from tests.conftest import DaemonProcess, sim_config_text

PASSWORD = "hunter2-Sup3r-S3cret-pw"
KEY_MATERIAL = "KEYMATERIAL-9f8e7d6c5b4a"


def secret_config(tmp: Path) -> str:
    key = tmp / "client.key"
    key.write_text(f"-----BEGIN PRIVATE KEY-----\n{KEY_MATERIAL}\n-----END PRIVATE KEY-----\n")
    return quiet_sim(
        sim_config_text(tmp),
        telemetry__mqtt={"username": "cab", "password": PASSWORD},
        telemetry__mqtt__tls={"key_file": str(key), "cert_file": str(key)},
    )


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("diag")
    cfg = tmp / "config.toml"
    cfg.write_text(secret_config(tmp))
    d = DaemonProcess(cfg, str(tmp / "edge.sock"))
    d.wait_ready()
    yield d
    d.stop()


def bundle(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def assert_no_secret(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())  # the whole tar stream, headers included
    for secret in (PASSWORD, KEY_MATERIAL, "BEGIN PRIVATE KEY"):
        assert secret.encode() not in raw, f"{secret} leaked into {path}"


def diag(*args: str) -> Any:
    return CliRunner().invoke(main, ["diag", *args], catch_exceptions=False)


def test_bundle_holds_config_versions_events_logs_store_and_status_without_secrets(daemon, tmp_path):
    cfg = Path(daemon.socket_path).parent / "config.toml"
    out = tmp_path / "cab17.tar.gz"
    res = diag("-o", str(out), "--socket", daemon.socket_path, "--config", str(cfg))
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.stdout
    files = bundle(out)
    assert set(files) >= {
        "MANIFEST.txt",
        "config.json",
        "config-file.json",
        "status.json",
        "status.txt",
        "events.json",
        "events.txt",
        "store.json",
        "daemon.json",
        "versions.json",
        "journal.txt",
    }
    manifest = files["MANIFEST.txt"].decode()
    assert "cabinet sim-cab" in manifest and all(f"  {name}" in manifest for name in files if name != "MANIFEST.txt")
    config = json.loads(files["config.json"])
    assert config["telemetry"]["mqtt"]["password"] == REDACTED and config["telemetry"]["mqtt"]["username"] == "cab"
    assert config["telemetry"]["mqtt"]["tls"]["key_file"].endswith("client.key")  # the path, never the content
    assert json.loads(files["config-file.json"])["telemetry"]["mqtt"]["password"] == REDACTED
    assert json.loads(files["status.json"])["cabinet_id"] == "sim-cab"
    assert files["status.txt"].decode().startswith("cabinet sim-cab")
    events = json.loads(files["events.json"])
    assert events and events[0]["kind"] == "started"
    store = json.loads(files["store.json"])
    assert store["backlog"] >= 1 and store["last_seq"] >= store["backlog"] and store["db_bytes"] > 0
    versions = json.loads(files["versions.json"])
    assert versions["python"] and versions["packages"]["cabinet-edge"] and versions["packages"]["pydantic"]
    assert "platform" in versions and json.loads(files["daemon.json"])["pid"] == daemon.proc.pid
    assert files["journal.txt"].strip()  # the journal, or a line saying why there is none
    assert_no_secret(out)


def test_bundle_is_written_when_the_daemon_is_down_and_says_so(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(secret_config(tmp_path))
    out = tmp_path / "down.tar.gz"
    res = diag("-o", str(out), "--socket", str(tmp_path / "gone.sock"), "--config", str(cfg), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["notes"][0].startswith(f"daemon not reachable at {tmp_path / 'gone.sock'}")
    files = bundle(out)
    assert "status.json" not in files and "daemon not reachable" in files["MANIFEST.txt"].decode()
    assert json.loads(files["config-file.json"])["telemetry"]["mqtt"]["password"] == REDACTED
    assert_no_secret(out)


def test_config_that_does_not_parse_is_included_redacted(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(secret_config(tmp_path).replace("poll_ms = 250", "poll_ms = 5"))
    out = tmp_path / "bad.tar.gz"
    res = diag("-o", str(out), "--socket", str(tmp_path / "gone.sock"), "--config", str(cfg))
    assert res.exit_code == 0, res.output
    files = bundle(out)
    text = files["config-file.toml.redacted"].decode()
    assert f'password = "{REDACTED}"' in text and "poll_ms = 5" in text
    assert "meters[0].poll_ms = 5" in files["MANIFEST.txt"].decode()
    assert_no_secret(out)


def test_redaction_covers_any_secret_named_key_at_any_depth():
    data = {
        "a": {"password": "x", "api_token": "y", "list": [{"client_secret": "z", "keep": 1}]},
        "password": None,
        "key_file": "/etc/k.pem",
    }
    assert redact(data) == {
        "a": {"password": REDACTED, "api_token": REDACTED, "list": [{"client_secret": REDACTED, "keep": 1}]},
        "password": None,
        "key_file": "/etc/k.pem",
    }
    assert redact_toml_text('  passphrase = "abc"  # x\nhost = "h"') == f'  passphrase = "{REDACTED}"\nhost = "h"\n'
