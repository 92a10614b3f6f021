"""Regenerate the captures of docs/CLI.md from the real simulator: what the CLI prints today.

Starts `edge run --sim` (the built-in two-connector cabinet of `make run`, no broker needed) in a scratch
directory, waits until both connectors charge (`edge status` once), turns two fault knobs on its sim-control
socket (the pump fails, power module 2 goes silent), waits for the trip, then runs `edge status`, `edge
faults` and one `edge watch` screen in a pseudo-terminal of 80x24, in English and in Simplified Chinese.
Prints the captures as Markdown blocks; run from the checkout with its venv:

    .venv/bin/python tools/cli_captures.py > /tmp/captures.md

With ``--many`` it turns four knobs instead (the pump fails, gun2's cable monitor freezes, power module 3
goes silent, the grid meter goes silent) and prints `edge status | cat` (every line) and one 80x24 `edge watch`
screen, the captures of docs/CLI.md "reading the screen".

Takes about a minute (the simulator runs in real time).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

BIN = Path(sys.executable).parent
EDGE = str(BIN / "edge")


def _knob(sock: Path, **knob: object) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(json.dumps(knob).encode() + b"\n")
        answer = json.loads(s.makefile().readline())
        if not answer.get("ok"):
            raise SystemExit(f"knob {knob}: {answer}")


def _status(cwd: Path) -> dict:
    out = subprocess.run([EDGE, "status", "--json", "--socket", ".edge-sim/edge.sock"], cwd=cwd, capture_output=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _wait(cwd: Path, what: str, ok, timeout_s: float) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        st = _status(cwd)
        if st and ok(st):
            return st
        time.sleep(0.5)
    raise SystemExit(f"not within {timeout_s} s: {what}")


def _run(cwd: Path, lang: str, *args: str) -> str:
    cmd = [EDGE, "--lang", lang, *args, "--socket", ".edge-sim/edge.sock"]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    return out.stdout + out.stderr + f"[exit {out.returncode}]"


def _watch_screen(cwd: Path, lang: str) -> str:
    """One `edge watch` screen as an 80x24 terminal shows it (the in-place redraw codes removed)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on the pty
        os.chdir(cwd)
        os.execv(EDGE, [EDGE, "--lang", lang, "watch", "--count", "1", "--socket", ".edge-sim/edge.sock"])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    raw = b""
    end = time.monotonic() + 20
    while time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            raw += chunk
    os.waitpid(pid, 0)
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n").split("\x1b[H\x1b[2J")[-1]
    return text.rstrip("\n")


def _many(work: Path) -> None:
    knobs = work / ".edge-sim" / "sim-control.sock"
    _knob(knobs, knob="pump_failed", value=True)
    _knob(knobs, knob="cable_frozen", cable="gun2", value=True)
    _knob(knobs, knob="module_silent", address=3, value=True)
    _knob(knobs, knob="meter_silent", meter="grid", value=True)
    wanted = ("coolant_flow_low", "grid_meter_lost", "module_lost_3", "pin_dc_plus_invalid")
    _wait(work, "the four faults", lambda st: all(f in st["faults"] for f in wanted), 60)
    time.sleep(2)
    print(f"```\n$ edge status | cat\n{_run(work, 'en', 'status')}\n```\n")
    print(f"```\n$ edge watch                (an 80x24 terminal)\n{_watch_screen(work, 'en')}\n```\n")


def main() -> None:
    many = "--many" in sys.argv[1:]
    work = Path(tempfile.mkdtemp(prefix="edge-captures-"))
    daemon = subprocess.Popen(
        [EDGE, "run", "--sim"], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait(work, "the daemon answers", lambda st: True, 30)
        _wait(work, "both connectors charge", lambda st: all(c["output_a"] > 10 for c in st["connectors"]), 90)
        if many:
            _many(work)
            return
        print(f"```\n$ edge status\n{_run(work, 'en', 'status')}\n```\n")
        knobs = work / ".edge-sim" / "sim-control.sock"
        _knob(knobs, knob="pump_failed", value=True)
        _knob(knobs, knob="module_silent", address=2, value=True)
        _wait(work, "the coolant trip", lambda st: "coolant_flow_low" in st["faults"], 60)
        time.sleep(2)
        for lang in ("en", "zh_CN"):
            print(f"### {lang}\n")
            for title, text in (
                ("status", _run(work, lang, "status")),
                ("faults", _run(work, lang, "faults")),
                ("watch                (an 80x24 terminal)", _watch_screen(work, lang)),
            ):
                print(f"```\n$ edge --lang {lang} {title}\n{text}\n```\n")
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
