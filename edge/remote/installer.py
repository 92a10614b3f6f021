"""The update installer: runs as root, apart from the daemon, and resumes where a power cut left it.

Started by ``cabinet-edge-update.service`` (systemd/cabinet-edge-update.path starts it whenever
``<state_dir>/request.json`` exists, also at boot), or by hand::

    python -m edge.remote.installer --state-dir /var/lib/cabinet-edge/update

Steps, each recorded in the status file (:mod:`edge.remote.states`) before it is taken:

1. ``Installing`` / phase install: copy the bundle into ``/var/lib/cabinet-edge-installer`` (root only:
   the daemon could swap a file in its own directory between our check and its use), check the copy's
   SHA-256 and Ed25519 signature again with the keys of the config (which the daemon cannot write), unpack
   it there, run its
   ``deploy/install.sh --wheel ... --no-start``: the release is built beside the running one, the config is
   checked with the NEW version, ``current`` is switched atomically. A failure here is
   ``InstallationFailed`` with ``current`` back on the old release.
2. phase health: restart the service and watch the health window (:mod:`edge.remote.health`).
   Healthy: ``Installed``. Not: ``InstallVerificationFailed`` with the reason, then
3. phase rollback: ``install.sh --rollback --to <old>`` (switch back and restart), ``RolledBack``.

Each step is idempotent, so after a kill -9 or a power cut the installer starts the step it had recorded
again: ``current`` always names a complete release (install.sh switches it with one rename, only after the
release is built), so the board boots into the old or the new release, never neither. A power cut during
the health window boots the new release, whose window then starts again.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge.api.client import ApiError, Client, Unreachable
from edge.config.remote import Remote
from edge.remote import health, signing, states
from edge.remote.states import UpdateStatus
from edge.remote.update import remote_section_changed

DEFAULT_STATE_DIR = "/var/lib/cabinet-edge/update"
DEFAULT_CONFIG = "/etc/cabinet-edge/config.toml"
DEFAULT_SOCKET = "/run/cabinet-edge/edge.sock"
WORK_DIR = "/var/lib/cabinet-edge-installer"  # root only (0700): verified copies, unpacked bundles
RESTART = "systemctl restart cabinet-edge.service"
PROBE_EVERY_S = 2.0
INSTALL_TIMEOUT_S = 1800.0  # building a venv on a slow SD card, with pip fetching dependencies
CRASH_AT = "CABINET_EDGE_UPDATE_CRASH_AT"  # tests: SIGKILL ourselves at this step (kill -9 at each step)


@dataclass
class Options:
    state_dir: Path
    config: Path
    prefix: str = ""  # install.sh --prefix (tests, images)
    restart_cmd: str = RESTART  # restarts the daemon with the release `current` points at
    health_cmd: str = ""  # prints the daemon's status as JSON; "" = ask the control socket
    socket: str = DEFAULT_SOCKET
    install_args: tuple[str, ...] = ()  # extra install.sh arguments, install and rollback (--pip-arg=..., --settle)
    probe_every_s: float = PROBE_EVERY_S
    work_dir: Path | None = None  # root-only copies; None = <prefix>/var/lib/cabinet-edge-installer
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def _crash_point(step: str) -> None:
    if os.environ.get(CRASH_AT) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def remote_config(path: Path) -> Remote:
    """The ``[remote]`` section alone: an update must not depend on the rest of a config the new version
    may read differently (install.sh checks the whole config with the new version)."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return Remote.model_validate(data.get("remote", {}))


def current_release(opts: Options) -> str:
    link = Path(f"{opts.prefix}/opt/cabinet-edge/current")
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return ""


class Installer:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.dir = opts.state_dir  # the daemon's: its request and downloads, our status for it to report
        # What we verify, unpack and run lives where the daemon cannot write: a file in the daemon's
        # directory could be swapped between our check and its use.
        self.work = opts.work_dir or Path(f"{opts.prefix}{WORK_DIR}")
        self.work.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.work, 0o700)

    # -- bookkeeping -------------------------------------------------------------------------------
    def save(self, status: UpdateStatus) -> UpdateStatus:
        states.save_status(self.dir, status)
        return status

    def finish(self, status: UpdateStatus) -> UpdateStatus:
        """A final state: recorded first, then the request and the unpacked bundle go (a power cut in
        between only makes the next start see a final state and tidy up)."""
        status = self.save(replace(status, phase=states.PHASE_NONE))
        (self.dir / states.REQUEST_FILE).unlink(missing_ok=True)
        leftovers = [
            self.baseline_file(status.id),
            self.config_file(status.id),
            self.private(self.config_file(status.id)),
        ]
        if status.kind == states.RELEASE:
            package = self.package(status.version)
            leftovers = [self.baseline_file(status.id), self.bundle_dir(status.version), package, self.private(package)]
        for leftover in leftovers:
            if leftover.is_dir():
                subprocess.run(["rm", "-rf", "--", str(leftover)], check=False)
            else:
                leftover.unlink(missing_ok=True)
        return status

    def package(self, version: str) -> Path:
        return self.dir / f"cabinet-edge-{version}.tar.gz"

    def bundle_dir(self, version: str) -> Path:
        return self.work / f"bundle-{version}"

    def baseline_file(self, cmd_id: str) -> Path:
        return self.work / f"baseline-{cmd_id}.json"

    def record_baseline(self, cmd_id: str) -> None:
        """What is wrong with the running (old) daemon before we change anything: its faults and the devices
        that do not answer it are the site's, not the new release's (kept across a power cut)."""
        before = health.sample_from_status(self.probe())
        states.write_atomic(
            self.baseline_file(cmd_id),
            {"up": before.up, "faults": sorted(before.faults), "bad_devices": sorted(before.bad_devices)},
        )

    def private(self, inbox: Path) -> Path:
        return self.work / inbox.name

    def take(self, inbox: Path, digest: str) -> Path | None:
        """A private copy of ``inbox`` when it exists and has ``digest``, else None; later steps use only
        the copy."""
        copy = self.private(inbox)
        if not inbox.is_file():
            return None
        tmp = copy.with_name(copy.name + ".tmp")
        shutil.copyfile(inbox, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if signing.file_sha256(tmp) != digest:
            tmp.unlink()
            return None
        os.replace(tmp, copy)
        states.fsync_dir(self.work)
        return copy

    # -- steps -------------------------------------------------------------------------------------
    def run(self) -> UpdateStatus:
        request = states.read_json(self.dir / states.REQUEST_FILE)
        status = states.load_status(self.dir)
        if request is None:
            return status
        if status.id != request.get("id") or status.phase == states.PHASE_NONE:
            if status.id == request.get("id") and status.state in states.FINAL:
                return self.finish(status)  # done before a power cut took the request away
            status = self.begin(request, status)
            if status.state in states.FINAL:
                return status
        if status.phase == states.PHASE_INSTALL:
            status = self.install(status)
        if status.phase == states.PHASE_CONFIG:
            status = self.apply_config(status)
        if status.phase == states.PHASE_HEALTH:
            status = self.watch(status, request)
        if status.phase == states.PHASE_ROLLBACK:
            status = self.rollback(status)
        return status

    def begin(self, request: dict[str, Any], status: UpdateStatus) -> UpdateStatus:
        if request.get("kind") == states.CONFIG:
            return self.begin_config(request, status)
        version, digest, cmd_id = str(request.get("version")), str(request.get("sha256")), str(request.get("id"))
        status = UpdateStatus(id=cmd_id, version=version, history=status.history if status.id == cmd_id else [])
        package = self.package(version)
        if self.take(package, digest) is None:
            return self.finish(status.to(states.INSTALLATION_FAILED, f"package {package.name} missing or changed"))
        why = signing.verify(
            str(request.get("signature")), version, digest, remote_config(self.opts.config).trusted_keys
        )
        if why is not None:
            return self.finish(status.to(states.INVALID_SIGNATURE, why))
        self.record_baseline(cmd_id)
        status = self.save(
            status.to(
                states.INSTALLING,
                "building the release",
                phase=states.PHASE_INSTALL,
                from_version=current_release(self.opts),
            )
        )
        _crash_point("begin")
        return status

    # -- config-apply ------------------------------------------------------------------------------------
    def config_file(self, cmd_id: str) -> Path:
        return self.dir / f"config-{cmd_id}.toml"

    def previous_config(self) -> Path:
        return self.work / "config.previous.toml"

    def begin_config(self, request: dict[str, Any], status: UpdateStatus) -> UpdateStatus:
        cmd_id = str(request.get("id"))
        status = UpdateStatus(
            kind=states.CONFIG,
            id=cmd_id,
            version=str(request.get("version")),
            from_version=str(request.get("version")),
            history=status.history if status.id == cmd_id else [],
        )
        new = self.take(self.config_file(cmd_id), str(request.get("sha256")))
        if new is None:
            return self.finish(
                status.to(states.INSTALLATION_FAILED, f"{self.config_file(cmd_id).name} missing or changed")
            )
        why = remote_section_changed(self.opts.config, new)
        if why:
            return self.finish(status.to(states.INSTALLATION_FAILED, why))
        shutil.copy2(self.opts.config, self.previous_config().with_suffix(".tmp"))
        os.replace(self.previous_config().with_suffix(".tmp"), self.previous_config())
        self.record_baseline(cmd_id)
        status = self.save(status.to(states.INSTALLING, "applying the config", phase=states.PHASE_CONFIG))
        _crash_point("begin")
        return status

    def apply_config(self, status: UpdateStatus) -> UpdateStatus:
        replace_file(self.private(self.config_file(status.id)), self.opts.config)
        _crash_point("installed")
        self.wait_for_idle(status)
        status = self.save(status.to(states.INSTALLING, "restarting with the new config", phase=states.PHASE_HEALTH))
        self.restart()
        _crash_point("restarted")
        return status

    def unpack(self, version: str) -> Path:
        """The bundle unpacked (deploy/, systemd/, docs/, one wheel); tar's "data" filter refuses absolute
        paths, links out of the tree and device files."""
        target = self.bundle_dir(version)
        if (target / "deploy" / "install.sh").is_file():
            return target
        tmp = target.with_name(target.name + ".tmp")
        subprocess.run(["rm", "-rf", "--", str(tmp)], check=False)
        with tarfile.open(self.private(self.package(version))) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, target)
        return target

    def install_sh(self, version: str, *args: str) -> subprocess.CompletedProcess[str]:
        script = self.bundle_dir(version) / "deploy" / "install.sh"
        cmd = ["bash", str(script), *args, "--no-apt"]
        if self.opts.prefix:
            cmd += ["--prefix", self.opts.prefix]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)

    def install(self, status: UpdateStatus) -> UpdateStatus:
        try:
            bundle = self.unpack(status.version)
        except (OSError, tarfile.TarError) as exc:
            return self.finish(status.to(states.INSTALLATION_FAILED, f"bundle cannot be unpacked: {str(exc)[:200]}"))
        wheels = sorted(bundle.glob("*.whl"))
        if len(wheels) != 1:
            return self.finish(status.to(states.INSTALLATION_FAILED, f"bundle holds {len(wheels)} wheels, not 1"))
        _crash_point("unpacked")
        done = self.install_sh(
            status.version,
            "--wheel",
            str(wheels[0]),
            "--version",
            status.version,
            "--no-start",
            *self.opts.install_args,
        )
        if done.returncode != 0:
            why = _last_error(done) or f"install.sh exit status {done.returncode}"
            if current_release(self.opts) != status.from_version and status.from_version:
                self.install_sh(status.version, "--rollback", "--to", status.from_version, "--no-start")
            return self.finish(status.to(states.INSTALLATION_FAILED, why[:300], phase=states.PHASE_NONE))
        _crash_point("installed")
        self.wait_for_idle(status)
        status = self.save(status.to(states.INSTALLING, "restarting into the new release", phase=states.PHASE_HEALTH))
        self.restart()
        _crash_point("restarted")
        return status

    def wait_for_idle(self, status: UpdateStatus) -> None:
        """The daemon waited for idle connectors before the hand-over, but building a release takes minutes:
        a car that plugged in meanwhile finishes its session before the restart. A daemon that does not
        answer is restarted at once (it cannot be charging anyone)."""
        reported = ""
        while busy := health.connectors_in_session(self.probe()):
            why = f"restart waits until no connector is in a session (now: {', '.join(busy)})"
            if why != reported:
                reported = why
                self.save(status.to(states.INSTALLING, why))
            self.opts.sleep(self.opts.probe_every_s)

    def restart(self) -> None:
        subprocess.run(shlex.split(self.opts.restart_cmd), capture_output=True, timeout=120, check=False)

    def probe(self) -> dict[str, Any] | None:
        if self.opts.health_cmd:
            done = subprocess.run(
                ["bash", "-c", self.opts.health_cmd], capture_output=True, text=True, timeout=30, check=False
            )
            if done.returncode != 0:
                return None
            try:
                answer = json.loads(done.stdout)
            except ValueError:
                return None
            return answer if isinstance(answer, dict) else None
        try:
            return Client(self.opts.socket, timeout_s=5.0).request("status")
        except (Unreachable, ApiError, OSError, ValueError):
            return None

    def watch(self, status: UpdateStatus, request: dict[str, Any]) -> UpdateStatus:
        cfg = remote_config(self.opts.config)
        before = states.read_json(self.baseline_file(status.id)) or {}
        window = health.HealthWindow(
            status.version,
            [*(request.get("baseline_faults") or []), *(before.get("faults") or [])],
            cfg.health_window_s,
            cfg.start_timeout_s,
            self.opts.clock(),
            baseline_bad_devices=before.get("bad_devices") or [],
        )
        while True:
            sample = health.sample_from_status(self.probe())
            verdict = window.feed(sample, self.opts.clock())
            if verdict is not None:
                break
            _crash_point("health")
            self.opts.sleep(self.opts.probe_every_s)
        if verdict.healthy:
            return self.finish(status.to(states.INSTALLED, verdict.reason, phase=states.PHASE_NONE))
        status = self.save(status.to(states.INSTALL_VERIFICATION_FAILED, verdict.reason, phase=states.PHASE_ROLLBACK))
        _crash_point("verification_failed")
        return status

    def rollback(self, status: UpdateStatus) -> UpdateStatus:
        failed = status.reason
        if status.kind == states.CONFIG:
            replace_file(self.previous_config(), self.opts.config)
            self.restart()
            return self.finish(status.to(states.ROLLED_BACK, f"{failed}; the previous config is back"[:300]))
        if not status.from_version:
            return self.finish(status.to(states.INSTALLATION_FAILED, f"{failed}; no previous release to go back to"))
        done = self.install_sh(status.version, "--rollback", "--to", status.from_version, *self.opts.install_args)
        if done.returncode != 0:
            why = _last_error(done) or f"exit status {done.returncode}"
            return self.finish(
                status.to(
                    states.INSTALLATION_FAILED, f"{failed}; rollback to {status.from_version} failed: {why}"[:300]
                )
            )
        return self.finish(
            status.to(states.ROLLED_BACK, f"{failed}; {status.from_version} runs again"[:300], phase=states.PHASE_NONE)
        )


def replace_file(src: Path, dst: Path) -> None:
    """``dst`` gets ``src``'s content in one rename, keeping ``dst``'s owner and mode (root:cabinet-edge
    0640 for the config)."""
    st = dst.stat()
    tmp = dst.with_name(f".{dst.name}.new")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, st.st_mode & 0o7777)
    if os.geteuid() == 0:
        os.chown(tmp, st.st_uid, st.st_gid)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    states.fsync_dir(dst.parent)


def _last_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR:")]
    return lines[-1].removeprefix("ERROR:").strip() if lines else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.remote.installer", description=__doc__.split("\n")[0])
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--prefix", default="")
    p.add_argument("--restart-cmd", default=RESTART)
    p.add_argument("--health-cmd", default="")
    p.add_argument("--socket", default=DEFAULT_SOCKET)
    p.add_argument("--install-arg", action="append", default=[], help="passed to install.sh, repeatable")
    p.add_argument("--probe-every-s", type=float, default=PROBE_EVERY_S)
    a = p.parse_args(argv)
    opts = Options(
        Path(a.state_dir),
        Path(a.config),
        a.prefix,
        a.restart_cmd,
        a.health_cmd,
        a.socket,
        tuple(a.install_arg),
        max(0.05, a.probe_every_s),
    )
    status = Installer(opts).run()
    print(json.dumps(status.as_dict()))
    return 0 if status.state in (states.INSTALLED, states.IDLE) else 1


if __name__ == "__main__":
    sys.exit(main())
