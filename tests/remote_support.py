"""Helpers for the remote-operations tests and bench/update.py: a loopback HTTP server with Range support
(and ways to misbehave), signed release bundles built from this tree, and a cabinet in a --prefix root
where the real deploy/install.sh and the real installer (edge.remote.installer) run."""

from __future__ import annotations

import base64
import configparser
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.remote import signing, states

REPO = Path(__file__).resolve().parents[1]
PYTHON = getattr(sys, "_base_executable", sys.executable)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # an updater killed mid-download (what the kill -9 tests do) leaves a broken pipe: expected, not printed
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


# ---- HTTP on loopback ---------------------------------------------------------------------------------
@dataclass
class Served:
    body: bytes
    cut_after: int | None = None  # close the connection after this many bytes of the file (Content-Length stays whole)
    cuts_left: int = 0  # how many responses are cut (then the rest is served whole)
    ignore_range: bool = False
    no_length: bool = False


@dataclass
class FileServer:
    files: dict[str, Served] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    uploads: dict[str, bytes] = field(default_factory=dict)  # what was PUT, by path
    server: ThreadingHTTPServer | None = None

    def url(self, name: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def start(self) -> FileServer:
        files, requests, uploads = self.files, self.requests, self.uploads

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                uploads[self.path.lstrip("/")] = self.rfile.read(length)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                requests.append((name, self.headers.get("Range")))
                served = files.get(name)
                if served is None:
                    self.send_error(404)
                    return
                body, start = served.body, 0
                rng = self.headers.get("Range")
                if rng and not served.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                if not served.no_length:
                    self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                part = body[start:]
                if served.cuts_left > 0 and served.cut_after is not None:
                    served.cuts_left -= 1
                    part = part[: max(0, served.cut_after - start)]
                    self.wfile.write(part)
                    self.close_connection = True
                    return
                for i in range(0, len(part), 256 * 1024):
                    self.wfile.write(part[i : i + 256 * 1024])

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


# ---- releases -------------------------------------------------------------------------------------------
def build_wheel(out: Path, version: str, *, crash: bool = False, faults: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel of this checkout named ``version`` (standard library only, as in
    tests/test_deploy.py). ``crash``: its ``edge`` package raises on import (a release that cannot start);
    ``faults``: it ships edge/HEALTH_FAULTS, which the test health probe reports as active faults."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    name = cfg["metadata"]["name"]
    dist = f"{name.replace('-', '_')}-{version}"
    wheel = out / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for package in ("edge", "drivers", "hal"):
            for file in sorted((REPO / package).rglob("*")):
                rel = str(file.relative_to(REPO))
                if file.is_file() and "__pycache__" not in file.parts and not (crash and rel == "edge/__init__.py"):
                    zf.write(file, rel)
        if crash:
            zf.writestr("edge/__init__.py", 'raise SystemExit("this release crashes at start")\n')
        if faults:
            zf.writestr("edge/HEALTH_FAULTS", "\n".join(faults) + "\n")
        zf.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(
            f"{dist}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(
            f"{dist}.dist-info/entry_points.txt",
            "[console_scripts]\n" + cfg["options.entry_points"]["console_scripts"].strip() + "\n",
        )
        records = [*zf.namelist(), f"{dist}.dist-info/RECORD"]
        zf.writestr(f"{dist}.dist-info/RECORD", "".join(f"{r},,\n" for r in records))
    return wheel


def build_bundle(out: Path, version: str, **kw: Any) -> bytes:
    """The release bundle a backend serves: deploy/, systemd/, docs/DEPLOY.md and the wheel, as tar.gz."""
    work = out / f"wheel-{version}"
    work.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(work, version, **kw)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for part in ("deploy", "systemd"):
            tar.add(REPO / part, arcname=part, filter=lambda ti: None if "__pycache__" in ti.name else ti)
        tar.add(REPO / "docs" / "DEPLOY.md", arcname="docs/DEPLOY.md")
        tar.add(wheel, arcname=wheel.name)
    return buf.getvalue()


@dataclass(frozen=True)
class Signer:
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_b64(self) -> str:
        return signing.public_key_b64(self.key)

    def command(self, version: str, body: bytes, url: str, **extra: Any) -> dict[str, Any]:
        digest = hashlib.sha256(body).hexdigest()
        return {
            "version": version,
            "url": url,
            "sha256": digest,
            "signature": signing.sign(self.key, version, digest),
            **extra,
        }


def bad_signature() -> str:
    return base64.b64encode(b"\x01" * 64).decode()


# ---- a cabinet in a --prefix root -------------------------------------------------------------------------
SITE_CONFIG = '# site config\n[cabinet]\nsite_id = "site-1"\ncabinet_id = "cab-1"\n[[can]]\nname = "can0"\n'

HEALTH_PROBE = r"""
import json, pathlib, sys, time
import edge  # a release that crashes at start fails here: no answer
prefix = pathlib.Path(sys.prefix).resolve()
version = (prefix / ".cabinet-edge-release").read_text().strip().split("=", 1)[1]
marker = pathlib.Path(edge.__file__).parent / "HEALTH_FAULTS"
faults = marker.read_text().split() if marker.exists() else []
# a config can make the "daemon" report a fault too (config-apply's health window)
faults += [l.split(":", 1)[1].strip() for l in open(sys.argv[1]) if l.startswith("# health-test-fault:")]
# the test's connectors (a session in progress), as the daemon's status lists them
sessions = pathlib.Path(sys.argv[0]).with_name("connectors.json")
connectors = json.loads(sessions.read_text()) if sessions.exists() else []
print(json.dumps({"version": version, "uptime_s": time.monotonic(), "faults": {f: "test" for f in faults},
                  "connectors": connectors,
                  "modules": {"1": {"lost": False}}, "meters": {"grid": {"ok": True}},
                  "readings": {}, "telemetry": {"uplink": {"connected": True}}}))
"""


def fake_edge(directory: Path) -> str:
    """`edge config check` stand-in (the test releases are built without their dependencies)."""
    script = directory / "edge-check"
    script.write_text(
        '#!/bin/sh\n[ "$1 $2" = "config check" ] || exit 64\n[ "$3" = "--help" ] && exit 0\necho "$3: ok"; exit 0\n'
    )
    script.chmod(0o755)
    return str(script)


class Cabinet:
    """A --prefix root with release ``base_version`` installed by deploy/install.sh (a real venv), the update
    state directory, and the installer command as cabinet-edge-update.service would run it."""

    def __init__(self, root: Path, health_window_s: float = 1.0, start_timeout_s: float = 3.0) -> None:
        self.root = root
        self.state_dir = root / "var/lib/cabinet-edge/update"
        self.config = root / "etc/cabinet-edge/config.toml"
        self.health_window_s = health_window_s
        self.start_timeout_s = start_timeout_s
        self.tools = root.parent / f"{root.name}-tools"
        self.tools.mkdir(parents=True, exist_ok=True)
        self.probe = self.tools / "probe.py"
        self.probe.write_text(HEALTH_PROBE)
        self.edge_check = fake_edge(self.tools)
        self.restart_cmd = "true"
        # install.sh --settle for the installer's rollback: the tests need none (our health window decides),
        # bench/update.py keeps install.sh's default so its time to RolledBack is a cabinet's
        self.settle_s = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CABINET_EDGE_")}
        env.update(CABINET_EDGE_READY_CMD="true", CABINET_EDGE_EDGE=self.edge_check, PYTHONPATH=str(REPO), **extra)
        return env

    def write_config(self, trusted: list[str]) -> None:
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.unlink(missing_ok=True)  # a clone's config is a hard link to the base cabinet's
        self.config.write_text(
            SITE_CONFIG + "[remote]\n"
            f'commands = ["update", "log-level", "config-get"]\ntrusted_keys = {json.dumps(trusted)}\n'
            f"health_window_s = {self.health_window_s}\nstart_timeout_s = {self.start_timeout_s}\n"
        )

    def install_base(self, version: str, work: Path) -> None:
        wheel = build_wheel(work, version)
        subprocess.run(
            [
                "bash",
                str(REPO / "deploy" / "install.sh"),
                "--prefix",
                str(self.root),
                "--wheel",
                str(wheel),
                "--version",
                version,
                "--python",
                PYTHON,
                "--no-apt",
                "--pip-arg=--no-deps",
                "--pip-arg=--no-index",
                "--settle",
                "0",
                "--ready-timeout",
                "0",
            ],
            check=True,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=300,
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def clone(self, root: Path) -> Cabinet:
        # hard links: nothing here changes a file in place (install.sh, the installer and write_atomic
        # replace files by rename; write_config unlinks first), and a copy of the venv took seconds
        root.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-al", str(self.root), str(root)], check=True)
        other = Cabinet(root, self.health_window_s, self.start_timeout_s)
        other.settle_s = self.settle_s
        return other

    def installer_cmd(self) -> list[str]:
        current_python = self.root / "opt/cabinet-edge/current/bin/python"
        return [
            sys.executable,
            "-m",
            "edge.remote.installer",
            "--state-dir",
            str(self.state_dir),
            "--config",
            str(self.config),
            "--prefix",
            str(self.root),
            "--restart-cmd",
            self.restart_cmd,
            "--health-cmd",
            f"env -u PYTHONPATH {current_python} {self.probe} {self.config}",
            "--probe-every-s",
            "0.1",
            f"--install-arg=--python={PYTHON}",
            "--install-arg=--pip-arg=--no-deps",
            "--install-arg=--pip-arg=--no-index",
            f"--install-arg=--settle={self.settle_s}",
        ]

    def run_installer(self, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.installer_cmd(),
            capture_output=True,
            text=True,
            env=self.env(**env),
            timeout=300 + self.health_window_s + self.start_timeout_s,
            check=False,
        )

    def current(self) -> str:
        return os.path.basename(os.readlink(self.root / "opt/cabinet-edge/current"))

    def runnable(self) -> str:
        """The release `current` names, after checking it is complete and its Python starts and imports
        this project's packages (the daemon's own start needs its dependencies, absent in tests)."""
        release = (self.root / "opt/cabinet-edge/current").resolve()
        assert (release / ".cabinet-edge-release").is_file(), f"{release} is not a complete release"
        done = subprocess.run(
            [str(release / "bin/python"), "-c", "import hal, drivers"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return release.name

    def status(self) -> states.UpdateStatus:
        return states.load_status(self.state_dir)


def wait_until(cond: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
