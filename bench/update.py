"""cmd/update on loopback: time to Installed, time from a failing release's start to RolledBack, and the
download's memory.

    python -m bench.update                     # from the repository root; about a minute
    python -m bench.update --health-window-s 300   # with the default window (then ~6 min)

What runs is what a cabinet runs, in a temporary --prefix root: a release bundle built from this tree
(tests/remote_support.py) served over HTTP on 127.0.0.1, the command through the MQTT command channel
(edge.telemetry.commands.handle), the daemon side's worker thread (download, sha256, Ed25519), the real
installer (edge.remote.installer) and the real deploy/install.sh building a venv. The daemon itself is
not started (the health probe asks the new release's Python instead; see tests/remote_support.py), so the
time to Installed is the install's own plus the health window.

Goals (issue 20): a failing release is RolledBack within the health window + 30 s of its start; the RSS
of a process downloading a 50 MB package grows by < 5 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from bench.report import goals, table
from edge.ops import Operations
from edge.remote import installer, signing, states
from edge.remote.commands import RemoteCommands
from edge.remote.update import UpdateManager
from edge.telemetry import commands
from tests.remote_support import Cabinet, FileServer, Served, Signer, build_bundle, wait_until

BASE = "1.0"
RSS_GOAL_MB = 5.0
INSTALL_SH_SETTLE_S = 10  # deploy/install.sh's default --settle
ROLLBACK_MARGIN_S = 30.0
DOWNLOAD_MB = 50

RSS_PROBE = r"""
import hashlib, sys, threading
from pathlib import Path
from edge.remote import download

def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

url, digest, dest = sys.argv[1:4]
before = kb("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM: the peak from here on
got = download.download(url, Path(dest), digest, 200 * 1024 * 1024)
print(before, kb("VmHWM:"), got.size_bytes)
"""


def run_update(cab: Cabinet, server: FileServer, signer: Signer, name: str, version: str) -> dict[str, float]:
    """One cmd/update through the command channel; seconds from the command to each state."""
    done: list[subprocess.CompletedProcess[str]] = []
    manager = UpdateManager(
        installer.remote_config(cab.config),
        cab.state_dir,
        cab.current(),
        trigger=lambda _r: threading.Thread(target=lambda: done.append(cab.run_installer()), daemon=True).start(),
        poll_s=0.02,
    )
    remote = RemoteCommands(installer.remote_config(cab.config), update=manager)
    ops = Operations(SimpleNamespace(), None, None, dict)  # type: ignore[arg-type]
    cmd = {"id": f"bench-{version}", **signer.command(version, server.files[name].body, server.url(name))}
    t0 = time.time()
    result = commands.handle("update", json.dumps(cmd).encode(), ops, int(t0 * 1000), remote=remote)
    assert result.result == commands.ACCEPTED, result.reason
    wait_until(lambda: manager.status.state in states.FINAL and done, 900, "the update to end")
    manager.close()
    final = cab.status()
    assert final.state in (states.INSTALLED, states.ROLLED_BACK), final
    marks = (
        json.loads((cab.root.parent / "marks.json").read_text()) if (cab.root.parent / "marks.json").exists() else {}
    )
    return {"total_s": final.t_ms / 1000 - t0, "final": final.state == states.INSTALLED, **marks}


def restart_time_hook(cab: Cabinet) -> None:
    """The installer's restart command also notes when the new release was started."""
    marks = cab.root.parent / "marks.json"
    hook = cab.tools / "restart.sh"
    note = f'import json, time; json.dump({{"start_s": time.time()}}, open("{marks}", "w"))'
    hook.write_text(f"#!/bin/sh\nexec {sys.executable} -c '{note}'\n")
    hook.chmod(0o755)
    cab.restart_cmd = str(hook)


def rss_growth_mb(work: Path) -> tuple[float, int]:
    work.mkdir(parents=True, exist_ok=True)
    package = work / "big.bin"
    with open(package, "wb") as f:
        for _ in range(DOWNLOAD_MB):
            f.write(os.urandom(1024 * 1024))
    digest = signing.file_sha256(package)
    srv = subprocess.Popen(
        [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert srv.stdout is not None
        port = int(srv.stdout.readline().split("port ")[1].split()[0])
        out = subprocess.run(
            [sys.executable, "-c", RSS_PROBE, f"http://127.0.0.1:{port}/big.bin", digest, str(work / "got.bin")],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout.split()
    finally:
        srv.terminate()
        srv.wait(10)
    before_kb, peak_kb, size = int(out[0]), int(out[1]), int(out[2])
    return (peak_kb - before_kb) / 1024, size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--health-window-s", type=float, default=5.0)
    p.add_argument("--start-timeout-s", type=float, default=10.0)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        work = Path(tmp)
        signer = Signer()
        server = FileServer()
        server.files["good"] = Served(build_bundle(work, "2.0"))
        server.files["crash"] = Served(build_bundle(work, "2.1", crash=True))
        server.start()
        try:
            base = Cabinet(work / "base" / "root", a.health_window_s, a.start_timeout_s)
            base.install_base(BASE, work / "base")
            base.settle_s = INSTALL_SH_SETTLE_S  # the rollback waits as on a cabinet
            good = base.clone(work / "good" / "root")
            good.write_config([signer.public_b64])
            restart_time_hook(good)
            ok = run_update(good, server, signer, "good", "2.0")
            bad = base.clone(work / "bad" / "root")
            bad.write_config([signer.public_b64])
            restart_time_hook(bad)
            t_bad0 = time.time()
            rolled = run_update(bad, server, signer, "crash", "2.1")
            rollback_s = t_bad0 + rolled["total_s"] - rolled["start_s"]
        finally:
            server.stop()
        growth_mb, size = rss_growth_mb(work / "rss")
    bundle_mb = len(server.files["good"].body) / 1e6
    rollback_limit_s = a.health_window_s + ROLLBACK_MARGIN_S
    table(
        [
            ("release bundle", f"{bundle_mb:.2f} MB", "", ""),
            ("cmd/update -> Installed", f"{ok['total_s']:.1f} s", f"health window {a.health_window_s:g} s", ""),
            ("  of which install + restart", f"{ok['total_s'] - a.health_window_s:.1f} s", "", ""),
            (
                "failing release start -> RolledBack",
                f"{rollback_s:.1f} s",
                f"{rollback_limit_s:g} s",
                f"{rollback_s / rollback_limit_s:.2f}",
            ),
            (
                f"RSS growth, {size / 1e6:.0f} MB download",
                f"{growth_mb:.2f} MB",
                f"{RSS_GOAL_MB:g} MB",
                f"{growth_mb / RSS_GOAL_MB:.2f}",
            ),
        ]
    )
    met = goals(
        [
            ("update_installed", bool(ok["final"]), "not Installed", "Installed"),
            (
                "update_rollback_within_window",
                (not rolled["final"]) and rollback_s <= rollback_limit_s,
                f"{rollback_s:.1f} s",
                f"{rollback_limit_s:g} s",
            ),
            ("update_download_rss", growth_mb < RSS_GOAL_MB, f"{growth_mb:.2f} MB", f"< {RSS_GOAL_MB:g} MB"),
        ]
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
