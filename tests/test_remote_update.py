"""cmd/update end to end on this machine: a loopback HTTP server serves signed release bundles built from
this tree; the daemon side (UpdateManager) downloads and checks them and hands over; the real installer
(edge.remote.installer) installs them with the real deploy/install.sh into a temporary --prefix root
(real venvs), runs the health window and rolls back by itself. kill -9 at each installer step leaves a
runnable release, and the next start finishes the update."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.remote import health, installer, signing, states
from edge.remote.update import Refused, UpdateManager
from tests.conftest import REPO, DaemonProcess, _drop_tables, api_request, wait_for
from tests.mqtt_broker import Broker, Consumer
from tests.mqtt_sim import BASE as BASE_TOPIC
from tests.remote_support import Cabinet, FileServer, Served, Signer, bad_signature, build_bundle, wait_until

pytestmark = pytest.mark.timeout(300)
BASE = "1.0"
# the simulated sessions start without a plausibility trip of the fast ramp (as tests/test_charging_e2e.py)
FAST_LIMITS = (
    "raise_hold_ms = 0\nramp_up_a_per_s = 1000.0\n"
    "[limits.plausibility]\nmax_rate_c_per_s = 500.0\nstep_allowance_c = 50.0"
)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    work = tmp_path_factory.mktemp("bundles")
    srv = FileServer()
    srv.files["good-2.0"] = Served(build_bundle(work, "2.0"))
    srv.files["crash-2.1"] = Served(build_bundle(work, "2.1", crash=True))
    srv.files["faulty-2.2"] = Served(build_bundle(work, "2.2", faults=("cable_over_temperature",)))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def base_cabinet(tmp_path_factory: pytest.TempPathFactory) -> Cabinet:
    root = tmp_path_factory.mktemp("base") / "root"
    cab = Cabinet(root)
    cab.install_base(BASE, root.parent)
    return cab


@pytest.fixture
def cab(base_cabinet: Cabinet, tmp_path: Path, signer: Signer) -> Cabinet:
    c = base_cabinet.clone(tmp_path / "root")
    c.write_config([signer.public_b64])
    return c


class Daemon:
    """The daemon side of one cabinet: an UpdateManager whose trigger runs the installer, as the path unit
    does on a board."""

    def __init__(self, cab: Cabinet, sessions: threading.Event | None = None, **installer_env: str) -> None:
        self.cab = cab
        self.reports: list[states.UpdateStatus] = []
        self.installs: list[subprocess.CompletedProcess[str]] = []
        self.threads: list[threading.Thread] = []
        sessions = sessions or threading.Event()
        self.manager = UpdateManager(
            installer.remote_config(cab.config),
            cab.state_dir,
            cab.current(),
            sessions_active=sessions.is_set,
            active_faults=lambda: ["old_fault"],
            report=lambda s, _new: self.reports.append(s),
            trigger=lambda _req: self._start_installer(installer_env),
            poll_s=0.02,
            config_path=str(cab.config),
        )

    def _start_installer(self, env: dict[str, str]) -> None:
        t = threading.Thread(target=self._install, args=(env,), daemon=True)
        self.threads.append(t)
        t.start()

    def _install(self, env: dict[str, str]) -> None:
        self.installs.append(self.cab.run_installer(**env))

    def final(self, timeout_s: float = 120.0) -> states.UpdateStatus:
        def done() -> states.UpdateStatus | None:
            s = self.manager.status
            return s if s.state in states.FINAL and not self.manager.installing else None

        try:
            return wait_until(done, timeout_s, "the update to end")
        finally:
            self.manager.close()
            for t in self.threads:
                t.join(timeout_s)

    def seen(self) -> list[str]:
        out: list[str] = []
        for s in self.reports:
            if not out or out[-1] != s.state:
                out.append(s.state)
        return out


def update(d: Daemon, signer: Signer, server: FileServer, name: str, version: str, **extra: object) -> str:
    body = server.files[name].body
    return d.manager.request("u1", signer.command(version, body, server.url(name), **extra))


def test_a_release_that_crashes_at_start_rolls_back_by_itself(cab: Cabinet, signer: Signer, server: FileServer) -> None:
    d = Daemon(cab)
    update(d, signer, server, "crash-2.1", "2.1")
    final = d.final()
    assert final.state == states.ROLLED_BACK, final
    assert final.history[-3:] == ["Installing", "InstallVerificationFailed", "RolledBack"]
    assert "did not come up within 3 s" in final.reason and f"{BASE} runs again" in final.reason
    assert cab.current() == BASE and cab.runnable() == BASE
    assert "old_fault" not in final.reason, "a fault the old release had is not the new one's"


def tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "->" + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def opt_and_etc(cab: Cabinet) -> dict[str, str]:
    return {**tree(cab.root / "opt"), **tree(cab.root / "etc")}


def test_bad_signature_is_refused_before_downloading_and_changes_nothing(
    cab: Cabinet, signer: Signer, server: FileServer
) -> None:
    before, requests = opt_and_etc(cab), len(server.requests)
    d = Daemon(cab)
    cmd = signer.command("2.0", server.files["good-2.0"].body, server.url("good-2.0"), signature=bad_signature())
    with pytest.raises(Refused, match="InvalidSignature"):
        d.manager.request("u1", cmd)
    assert d.manager.status.state == states.INVALID_SIGNATURE
    wait_until(lambda: cab.status().state == states.INVALID_SIGNATURE, 10, "the status file")
    assert len(server.requests) == requests, "nothing downloaded"
    assert opt_and_etc(cab) == before and not (cab.state_dir / states.REQUEST_FILE).exists()


def test_a_signature_by_an_untrusted_key_is_refused(cab: Cabinet, server: FileServer) -> None:
    d = Daemon(cab)
    with pytest.raises(Refused, match="InvalidSignature"):
        d.manager.request("u1", Signer().command("2.0", server.files["good-2.0"].body, server.url("good-2.0")))


@pytest.mark.parametrize("fault", ["wrong-hash", "truncated"])
def test_wrong_hash_or_truncated_download_is_refused_and_changes_nothing(
    cab: Cabinet, signer: Signer, server: FileServer, fault: str
) -> None:
    body = server.files["good-2.0"].body
    if fault == "wrong-hash":
        server.files["x"] = Served(body + b"tampered")
        cmd = signer.command("2.0", body, server.url("x"))  # signed hash of the real file, another file served
    else:
        server.files["x"] = Served(body, cut_after=len(body) // 2, cuts_left=99)
        cmd = signer.command("2.0", body, server.url("x"))
    before = opt_and_etc(cab)
    d = Daemon(cab)
    d.manager.request("u1", cmd)
    final = d.final()
    assert final.state == states.DOWNLOAD_FAILED, final
    assert ("sha256" if fault == "wrong-hash" else "server closed") in final.reason
    assert opt_and_etc(cab) == before and d.installs == []
    assert sorted(p.name for p in cab.state_dir.iterdir()) == ["status.json"]


def test_downgrade_same_version_and_a_second_update_are_refused(
    cab: Cabinet, signer: Signer, server: FileServer
) -> None:
    d = Daemon(cab)
    body = server.files["good-2.0"].body
    with pytest.raises(Refused, match="already running"):
        d.manager.request("a", signer.command(BASE, body, server.url("good-2.0")))
    with pytest.raises(Refused, match="downgrade"):
        d.manager.request("b", signer.command("0.9", body, server.url("good-2.0"), downgrade=True))
    with pytest.raises(Refused, match="https"):
        d.manager.request("c", signer.command("2.0", body, "http://updates.example.com/r"))
    sessions = threading.Event()
    sessions.set()
    d2 = Daemon(cab, sessions)
    update(d2, signer, server, "good-2.0", "2.0")
    with pytest.raises(Refused, match="one update at a time"):
        d2.manager.request("d", signer.command("2.0", body, server.url("good-2.0")))
    d2.manager.close()


def test_a_daemon_restart_mid_download_resumes_with_range(cab: Cabinet, signer: Signer, server: FileServer) -> None:
    """What a kill -9 of the daemon leaves: the pending command, Downloading, and a part file."""
    body = server.files["good-2.0"].body
    cmd = signer.command("2.0", body, server.url("good-2.0"))
    states.write_atomic(cab.state_dir / "pending.json", {"id": "u1", **cmd})
    states.save_status(
        cab.state_dir, states.UpdateStatus(id="u1", version="2.0", from_version=BASE).to(states.DOWNLOADING)
    )
    (cab.state_dir / "cabinet-edge-2.0.tar.gz.part").write_bytes(body[:10_000])
    seen = len(server.requests)
    handed = handed_over(cab)
    handed.resume()
    wait_handed_over(cab)
    handed.close()
    assert server.requests[seen:] == [("good-2.0", "bytes=10000-")]
    assert signing.file_sha256(cab.state_dir / "cabinet-edge-2.0.tar.gz") == cmd["sha256"]
    assert handed.status.history == ["Downloading", "Downloaded"]


def wait_handed_over(cab: Cabinet) -> None:
    request = cab.state_dir / states.REQUEST_FILE
    wait_until(request.exists, 60, "the hand-over to the installer")


def handed_over(cab: Cabinet) -> UpdateManager:
    """A daemon side that stops at the hand-over: the request file is written, no installer runs."""
    return UpdateManager(installer.remote_config(cab.config), cab.state_dir, BASE, poll_s=0.02)


KILL_STEPS = ["begin", "unpacked", "installed", "restarted", "health"]  # edge.remote.installer's crash points


def kill_at_each(cab: Cabinet, steps: list[str]) -> list[str]:
    """The installer (its own process, as the path unit starts it) SIGKILLed at each of ``steps`` in turn,
    each time started again as the path unit would after a power cut; what ``current`` named after each."""
    after = []
    for step in steps:
        done = cab.run_installer(**{installer.CRASH_AT: step})
        assert done.returncode == -9, f"{step}: {done.returncode} {done.stderr[-500:]}"
        after.append(cab.runnable())
        assert (cab.state_dir / states.REQUEST_FILE).exists(), f"{step}: the path unit starts the installer again"
    return after


def test_a_release_failing_its_health_window_rolls_back_also_when_killed_on_the_way(
    cab: Cabinet, signer: Signer, server: FileServer
) -> None:
    d = Daemon(cab)
    d.manager.trigger = lambda _req: None
    update(d, signer, server, "faulty-2.2", "2.2")
    wait_handed_over(cab)
    assert kill_at_each(cab, ["restarted", "verification_failed"]) == ["2.2", "2.2"]
    assert cab.run_installer().returncode == 1
    final = d.final()
    assert final.state == states.ROLLED_BACK, final
    assert final.history[-3:] == ["Installing", "InstallVerificationFailed", "RolledBack"]
    assert "new fault(s) with 2.2: cable_over_temperature" in final.reason and f"{BASE} runs again" in final.reason
    assert "old_fault" not in final.reason, "a fault the old release had is not the new one's"
    assert cab.current() == BASE and cab.runnable() == BASE


# ---- config-apply: the same hand-over, health window and return to the previous config ------------------
def serve_config(cab: Cabinet, server: FileServer, name: str, text: str) -> dict[str, str]:
    body = text.encode()
    server.files[name] = Served(body)
    return {"url": server.url(name), "sha256": hashlib.sha256(body).hexdigest()}


def new_config(cab: Cabinet, extra: str) -> str:
    return cab.config.read_text().replace("[remote]", f"{extra}\n[remote]", 1)


def test_a_valid_config_is_applied_and_kept_after_its_health_window(cab: Cabinet, server: FileServer) -> None:
    old = cab.config.read_text()
    text = new_config(cab, "[control]\ntick_ms = 50")
    d = Daemon(cab)
    assert "started" in d.manager.request_config("c1", serve_config(cab, server, "cfg-ok", text))
    final = d.final()
    assert (final.state, final.kind) == (states.INSTALLED, states.CONFIG), final
    assert cab.config.read_text() == text
    assert (cab.root / "var/lib/cabinet-edge-installer/config.previous.toml").read_text() == old
    assert cab.current() == BASE, "the release is not touched"


def test_a_session_that_began_during_the_install_ends_before_the_restart(cab: Cabinet, server: FileServer) -> None:
    """The daemon handed over while idle; a car plugged in before the installer got to the restart."""
    restarted = cab.tools / "restarted"
    cab.restart_cmd = f"touch {restarted}"
    charging = cab.tools / "connectors.json"  # what the (test) daemon's status says about its connectors
    charging.write_text(json.dumps([{"name": "1", "phase": "Charging", "mode": "Export", "contactor": True}]))
    d = Daemon(cab)
    d.manager.request_config("c1", serve_config(cab, server, "cfg-busy", new_config(cab, "[control]\ntick_ms = 50")))
    wait_until(lambda: "in a session (now: 1)" in cab.status().reason, 60, "the installer waiting for the session")
    assert not restarted.exists() and cab.status().state == states.INSTALLING
    charging.write_text(json.dumps([{"name": "1", "phase": "Other", "mode": "Off", "contactor": False}]))
    final = d.final()
    assert final.state == states.INSTALLED and restarted.exists(), final


def test_connectors_in_session_from_the_daemons_status() -> None:
    idle = {"name": "1", "phase": "Other", "mode": "Off", "contactor": False}
    assert health.connectors_in_session(None) == [] and health.connectors_in_session({"connectors": [idle]}) == []
    for busy in ({"phase": "Stopping"}, {"mode": "Export"}, {"contactor": True}, {"phase": "CableCheck"}):
        assert health.connectors_in_session({"connectors": [idle, {**idle, "name": "2", **busy}]}) == ["2"], busy


def test_a_config_that_fails_validation_is_refused_with_line_and_key_and_changes_nothing(
    cab: Cabinet, server: FileServer
) -> None:
    old = cab.config.read_text()
    d = Daemon(cab)
    d.manager.request_config("c1", serve_config(cab, server, "cfg-bad", new_config(cab, "[control]\ntick_ms = 5")))
    final = d.final()
    assert final.state == states.INSTALLATION_FAILED, final
    assert final.reason.startswith("config.toml:8: control.tick_ms = 5"), final.reason
    assert cab.config.read_text() == old and d.installs == []


def test_a_config_that_fails_its_health_window_is_returned_by_itself(cab: Cabinet, server: FileServer) -> None:
    old = cab.config.read_text()
    d = Daemon(cab)
    text = new_config(cab, "# health-test-fault: meter_lost")
    d.manager.request_config("c1", serve_config(cab, server, "cfg-sick", text))
    final = d.final()
    assert final.state == states.ROLLED_BACK, final
    assert "new fault(s)" in final.reason and "meter_lost" in final.reason and "previous config is back" in final.reason
    assert cab.config.read_text() == old


def test_config_apply_cannot_change_the_remote_section(cab: Cabinet, server: FileServer, signer: Signer) -> None:
    old = cab.config.read_text()
    d = Daemon(cab)
    text = old.replace("trusted_keys = [", f'trusted_keys = ["{Signer().public_b64}", ', 1)
    d.manager.request_config("c1", serve_config(cab, server, "cfg-keys", text))
    final = d.final()
    assert final.state == states.INSTALLATION_FAILED and "[remote] section" in final.reason
    assert cab.config.read_text() == old


def test_outside_the_install_window_an_idle_cabinet_still_waits(
    cab: Cabinet, signer: Signer, server: FileServer, tmp_path: Path
) -> None:
    import datetime

    from edge.config.remote import Remote

    cfg = installer.remote_config(cab.config).model_copy(update={"install_window": "01:00-05:00"})
    Remote.model_validate(cfg.model_dump())  # still a valid section
    handed: list[Path] = []
    m = UpdateManager(
        cfg,
        cab.state_dir,
        BASE,
        trigger=handed.append,
        poll_s=0.02,
        now=lambda: datetime.datetime(2026, 12, 4, 12, 0),
    )
    m.request("w1", signer.command("2.0", server.files["good-2.0"].body, server.url("good-2.0")))
    wait_until(lambda: m.status.state == states.SCHEDULED, 60, "Scheduled")
    assert "install window 01:00-05:00" in m.status.reason and handed == []
    m.now = lambda: datetime.datetime(2026, 12, 5, 1, 30)
    wait_until(lambda: handed, 30, "the hand-over inside the window")
    m.close()


def test_the_installer_checks_the_package_itself_and_works_on_a_private_copy(
    cab: Cabinet, signer: Signer, server: FileServer
) -> None:
    """The daemon's directory is not trusted by root: a package swapped after the daemon's checks is
    refused, and what is verified is a copy the daemon cannot write."""
    body = server.files["good-2.0"].body
    cmd = signer.command("2.0", body, server.url("good-2.0"))
    (cab.state_dir / "cabinet-edge-2.0.tar.gz").write_bytes(body[:-10] + b"0123456789")
    states.write_atomic(cab.state_dir / states.REQUEST_FILE, {"id": "s1", "kind": "release", **cmd})
    done = cab.run_installer()
    assert done.returncode == 1
    assert cab.status().state == states.INSTALLATION_FAILED and "missing or changed" in cab.status().reason
    assert cab.current() == BASE
    work = cab.root / "var/lib/cabinet-edge-installer"
    assert oct(work.stat().st_mode & 0o777) == "0o700" and list(work.iterdir()) == []


def test_a_daemon_restart_after_the_download_does_not_download_again(
    cab: Cabinet, signer: Signer, server: FileServer
) -> None:
    body = server.files["good-2.0"].body
    cmd = signer.command("2.0", body, server.url("good-2.0"))
    states.write_atomic(cab.state_dir / "pending.json", {"id": "u1", **cmd})
    downloaded = states.UpdateStatus(id="u1", version="2.0", from_version=BASE).to(states.DOWNLOADED)
    states.save_status(cab.state_dir, downloaded)
    (cab.state_dir / "cabinet-edge-2.0.tar.gz").write_bytes(body)
    seen = len(server.requests)
    handed = handed_over(cab)
    handed.resume()
    wait_handed_over(cab)
    handed.close()
    assert len(server.requests) == seen


def check_diag_over_mqtt(backend: Consumer) -> None:
    """cmd/diag without a URL: the bundle in chunks on diag/<id>/<n>, then the summary; the bundle holds
    what `edge diag` takes from the daemon (its status with both connectors)."""
    backend.client.publish(f"{BASE_TOPIC}/cmd/diag", json.dumps({"id": "dg-1"}), qos=1)
    summary = wait_for(
        lambda: [m.body for m in backend.on("diag") if m.topic == f"{BASE_TOPIC}/diag" and m.body["id"] == "dg-1"], 30
    )[-1]
    assert summary["result"] == "published", summary
    chunks = {int(m.topic.rsplit("/", 1)[1]): m.payload for m in backend.messages if "/diag/dg-1/" in m.topic}
    data = b"".join(chunks[n] for n in range(summary["chunks"]))
    assert hashlib.sha256(data).hexdigest() == summary["sha256"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = {m.name.rsplit("/", 1)[-1]: tar.extractfile(m) for m in tar.getmembers() if m.isfile()}
        status = json.loads(files["status.json"].read())  # type: ignore[union-attr]
    assert [c["name"] for c in status["connectors"]] == ["1", "2"] and "config-file.toml.redacted" in files


# ---- end to end: cmd/update over a real mosquitto to the real daemon (edge run --sim) --------------------
def two_connector_config(tmp: Path, port: int, signer: Signer, cab: Cabinet) -> str:
    """edge/sim/sim.toml (two cars charging from the start, request = "sim") with the uplink on ``port`` and
    remote updates signed by ``signer`` downloaded into ``cab``'s state directory."""
    ours = (
        f'\n[telemetry.mqtt]\nhost = "127.0.0.1"\nport = {port}\nreconnect_min_s = 0.1\nreconnect_max_s = 1.0\n'
        f"\n[limits]\n{FAST_LIMITS}\n"
        f'\n[remote]\ncommands = ["update", "diag"]\ntrusted_keys = ["{signer.public_b64}"]\n'
        f'state_dir = "{cab.state_dir}"\nhealth_window_s = 1\nstart_timeout_s = 3\n'
    )
    redefined = {ln.strip() for ln in ours.splitlines() if ln.strip().startswith("[")}
    text = _drop_tables((REPO / "edge" / "sim" / "sim.toml").read_text(), redefined)
    text = text.replace('socket = ".edge-sim/edge.sock"', f'socket = "{tmp}/edge.sock"')
    text = text.replace('data_dir = ".edge-sim"', f'data_dir = "{tmp}/data"')
    return re.sub(r'backend = "systemd"[^\n]*', 'backend = "sim"', text) + ours


def test_update_over_mqtt_waits_for_the_session_then_installs_through_kill_9_at_each_step(
    cab: Cabinet, signer: Signer, server: FileServer, tmp_path: Path, mqtt_broker: Broker
) -> None:
    """The daemon's two simulated cars charge; cmd/update is answered at once and waits (Scheduled) until
    both are unplugged and every connector is idle; then the real installer (standing in for the path unit)
    installs the release into the --prefix root, killed with SIGKILL at each of its steps and started again
    each time, and the daemon reports Installed on the retained topic."""
    cfg = tmp_path / "daemon.toml"
    cfg.write_text(two_connector_config(tmp_path, mqtt_broker.port, signer, cab))
    installs: list[subprocess.CompletedProcess[str]] = []
    after_kill: list[str] = []  # the release `current` named after each kill -9
    stop = threading.Event()

    def path_unit() -> None:
        """cabinet-edge-update.path: the installer when request.json appears, and again after each
        kill -9 (a power cut at that step); the last run is not killed."""
        while not stop.wait(0.05):
            if (cab.state_dir / states.REQUEST_FILE).exists():
                for step in KILL_STEPS:
                    installs.append(cab.run_installer(**{installer.CRASH_AT: step}))
                    after_kill.append(cab.runnable())
                installs.append(cab.run_installer())
                return

    unit = threading.Thread(target=path_unit, daemon=True)
    unit.start()
    daemon = DaemonProcess(cfg, str(tmp_path / "edge.sock"))
    backend = Consumer(mqtt_broker.port, client_id="backend")
    try:
        daemon.wait_ready()
        wait_for(lambda: any(b"online" in m.payload for m in backend.on("status")), 15, what="daemon online")

        def charging() -> bool:
            return any(c["phase"] in ("CableCheck", "PreCharge", "Charging") for c in daemon.status()["connectors"])

        wait_for(charging, 20, what=f"a simulated session\n{daemon.log()}")
        body = server.files["good-2.0"].body
        cmd = {"id": "up-1", **signer.command("2.0", body, server.url("good-2.0"))}
        backend.client.publish(f"{BASE_TOPIC}/cmd/update", json.dumps(cmd), qos=1)
        answer = wait_for(lambda: [m.body for m in backend.on("cmd-result") if m.body["id"] == "up-1"], 5)[-1]
        assert answer["result"] == "accepted", answer

        def update_topic() -> list[Any]:  # not cmd/update, which ends the same
            return [m for m in backend.on("update") if m.topic == f"{BASE_TOPIC}/update"]

        def update_states() -> list[str]:
            return [m.body["state"] for m in update_topic()]

        wait_for(lambda: "Scheduled" in update_states(), 30, what=f"Scheduled\n{daemon.log()}")
        scheduled = [m.body for m in update_topic() if m.body["state"] == "Scheduled"][-1]
        assert scheduled["reason"] == "waiting until no connector is in a session" and scheduled["id"] == "up-1"
        assert cab.current() == BASE and installs == [], "nothing installed while a car charges"
        sim = os.path.join(str(tmp_path), "sim-control.sock")
        for connector in ("1", "2"):
            unplugged = api_request(sim, {"knob": "plug", "connector": connector, "value": False})
            assert unplugged["ok"], unplugged
        wait_for(lambda: "Installed" in update_states(), 90, what=f"Installed\n{daemon.log()}")
        installed = [m for m in update_topic() if m.body["state"] == "Installed"][-1]
        assert installed.retain or installed.body["version"] == "2.0"
        assert installed.body["history"] == ["Downloading", "Downloaded", "Scheduled", "Installing", "Installed"]
        # "Installed" goes out while the last installer is still finishing: its exit code once it has ended
        unit.join(60)
        assert not unit.is_alive(), "the last installer run did not end"
        assert [i.returncode for i in installs] == [-9] * len(KILL_STEPS) + [0], installs[-1].stderr
        assert after_kill == [BASE, BASE, "2.0", "2.0", "2.0"], "current switches once, after the release is built"
        assert cab.current() == "2.0" and cab.runnable() == "2.0"
        assert (cab.root / "opt/cabinet-edge/releases" / BASE / ".cabinet-edge-release").exists(), "old release kept"
        assert sorted(p.name for p in cab.state_dir.iterdir()) == ["status.json"], "request, bundle and package gone"
        assert list((cab.root / "var/lib/cabinet-edge-installer").iterdir()) == [], "private copies gone"

        def update_events() -> set[str]:  # the events topic follows the telemetry interval
            return {e["name"] for e in backend.records("events") if e["kind"] == "update"}

        wait_for(lambda: update_events() >= {"Scheduled", "Installed"}, 10, what="update events")
        events = backend.records("events")
        assert any(e["kind"] == "command" and e.get("id") == "up-1" and e["ok"] for e in events)
        assert not backend.errors, backend.errors[:3]
        check_diag_over_mqtt(backend)
    finally:
        stop.set()
        daemon.stop()
        backend.close()
        unit.join(120)
