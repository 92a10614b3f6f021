"""cmd/update end to end on this machine: a loopback HTTP server serves signed release bundles built from
this tree; the daemon side (UpdateManager) downloads and checks them and hands over; the real installer
(edge.remote.installer) installs them with the real deploy/install.sh into a temporary --prefix root
(real venvs), runs the health window and rolls back by itself. kill -9 at each installer step leaves a
runnable release, and the next start finishes the update."""

from __future__ import annotations

import hashlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.remote import installer, states
from edge.remote.update import Refused, UpdateManager
from tests.remote_support import Cabinet, FileServer, Served, Signer, bad_signature, build_bundle, wait_until

pytestmark = pytest.mark.timeout(300)
BASE = "1.0"


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


def test_signed_update_installs_beside_the_running_release_and_is_kept(
    cab: Cabinet, signer: Signer, server: FileServer
) -> None:
    d = Daemon(cab)
    assert "started" in update(d, signer, server, "good-2.0", "2.0")
    final = d.final()
    assert final.state == states.INSTALLED, final
    assert d.seen() == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert final.history == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert cab.current() == "2.0" and cab.runnable() == "2.0"
    assert (cab.root / "opt/cabinet-edge/releases" / BASE / ".cabinet-edge-release").exists(), "old release kept"
    assert sorted(p.name for p in cab.state_dir.iterdir()) == ["status.json"], "request, bundle and package gone"
    assert list((cab.root / "var/lib/cabinet-edge-installer").iterdir()) == [], "private copies gone"
    assert d.installs[0].returncode == 0, d.installs[0].stderr


@pytest.mark.parametrize(
    ("name", "version", "why"),
    [
        ("crash-2.1", "2.1", "did not come up within 3 s"),
        ("faulty-2.2", "2.2", "new fault(s) with 2.2: cable_over_temperature"),
    ],
    ids=["crashes-at-start", "fails-health-window"],
)
def test_a_bad_release_rolls_back_by_itself(
    cab: Cabinet, signer: Signer, server: FileServer, name: str, version: str, why: str
) -> None:
    d = Daemon(cab)
    update(d, signer, server, name, version)
    final = d.final()
    assert final.state == states.ROLLED_BACK, final
    assert final.history[-3:] == ["Installing", "InstallVerificationFailed", "RolledBack"]
    assert why in final.reason and f"{BASE} runs again" in final.reason
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


def test_an_update_during_a_session_waits_until_every_connector_is_idle(
    cab: Cabinet, signer: Signer, server: FileServer
) -> None:
    sessions = threading.Event()
    sessions.set()
    d = Daemon(cab, sessions)
    update(d, signer, server, "good-2.0", "2.0")
    wait_until(lambda: d.manager.status.state == states.SCHEDULED, 30, "Scheduled")
    assert not d.manager.installing and cab.current() == BASE and d.installs == []
    sessions.clear()
    assert d.final().state == states.INSTALLED
    assert d.seen() == ["Downloading", "Downloaded", "Scheduled", "Installing", "Installed"]
    assert cab.current() == "2.0"


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
    d = Daemon(cab)
    d.manager.resume()
    assert d.final().state == states.INSTALLED
    assert server.requests[seen:] == [("good-2.0", "bytes=10000-")]


CRASH_POINTS = ["begin", "unpacked", "installed", "restarted", "health"]


@pytest.mark.parametrize("step", CRASH_POINTS)
def test_kill_9_at_each_installer_step_leaves_a_runnable_release_and_the_update_finishes(
    cab: Cabinet, signer: Signer, server: FileServer, step: str
) -> None:
    d = Daemon(cab, **{installer.CRASH_AT: step})
    update(d, signer, server, "good-2.0", "2.0")
    wait_until(lambda: d.installs, 120, "the installer to die")
    assert d.installs[0].returncode == -9, d.installs[0].stderr
    assert cab.runnable() in (BASE, "2.0")
    assert (cab.state_dir / states.REQUEST_FILE).exists(), "the path unit starts the installer again"
    again = cab.run_installer()  # cabinet-edge-update.path, at the next boot or at once
    assert again.returncode == 0, again.stderr
    assert cab.status().state == states.INSTALLED and cab.runnable() == "2.0"
    d.manager.close()


@pytest.mark.parametrize("step", ["restarted", "verification_failed"])
def test_kill_9_while_a_bad_release_fails_still_ends_rolled_back(
    cab: Cabinet, signer: Signer, server: FileServer, step: str
) -> None:
    d = Daemon(cab, **{installer.CRASH_AT: step})
    update(d, signer, server, "faulty-2.2", "2.2")
    wait_until(lambda: d.installs, 120, "the installer to die")
    assert d.installs[0].returncode == -9
    assert cab.runnable() in (BASE, "2.2")
    assert cab.run_installer().returncode == 1
    assert cab.status().state == states.ROLLED_BACK and cab.runnable() == BASE
    d.manager.close()


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
    d = Daemon(cab)
    d.manager.resume()
    assert d.final().state == states.INSTALLED
    assert len(server.requests) == seen
