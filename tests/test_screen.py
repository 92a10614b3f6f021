"""The technician's screen at 80x24 on the built-in two-connector simulated cabinet, for every simulator
fault knob (one at a time and all at once): `edge status` / `edge watch` keep the header, the state, each
connector's limit and why, and the active faults, hide the least important lines (saying how many), and
no line is wider than 80 terminal cells, also with every text twice as long (a pseudo-locale)."""

from __future__ import annotations

import fcntl
import gettext
import json
import logging
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge import i18n
from edge.config import parse_config
from edge.i18n import display_width
from edge.render import HEIGHT, WIDTH, LiveLine, status_line, status_text
from edge.sim.stepper import SimStepper
from tests.conftest import REPO, _drop_tables

SIM_TOML = (REPO / "edge" / "sim" / "sim.toml").read_text()


def sim_toml(tmp: Path) -> str:
    text = _drop_tables(SIM_TOML, {"[telemetry.mqtt]"})
    text = text.replace('socket = ".edge-sim/edge.sock"', f'socket = "{tmp}/edge.sock"')
    return text.replace('data_dir = ".edge-sim"', f'data_dir = "{tmp}/data"') + "\n[telemetry.mqtt]\nenabled = false\n"


KNOBS: dict[str, Callable[[SimStepper], None]] = {
    "pump_failed": lambda s: s.set_pump_failed(True),
    "cable_silent": lambda s: s.set_cable_silent(True, "gun1"),
    "cable_frozen": lambda s: s.set_cable_frozen(True, "gun2"),
    "module_silent": lambda s: s.set_module_silent(3, True),
    "module_alarm": lambda s: s.set_module_alarm(1, "over_temperature", True),
    "meter_silent": lambda s: s.set_meter_silent("grid", True),
    "hot_pin_c": lambda s: s.set_hot_pin(60.0, "2"),
    "unplug": lambda s: s.unplug("1"),
    "soc_full": lambda s: s.set_soc(0.999, "2"),
}


def charge_both(sim: SimStepper) -> SimStepper:
    """The simulator's charging controller drives both connectors of ``sim`` until both cars charge."""
    ctl = sim.cabinet.controller
    caps = lambda: {n: r.capabilities for n, r in ctl.reports().items()}  # noqa: E731
    sim.every("sim charging", 0.25, lambda now: sim.drive_charging(ctl.demands, now, caps()))
    sim.run_until(lambda: all(c.output_a > 10 for c in sim.cabinet.connector_views()), 60.0, "both charging")
    return sim


@pytest.fixture(scope="module")
def charging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], SimStepper]]:
    """A fresh two-connector cabinet charging both cars (about 0.1 s of wall time each)."""
    made: list[SimStepper] = []

    def make() -> SimStepper:
        tmp = tmp_path_factory.mktemp("screen")
        sim = SimStepper(parse_config(sim_toml(tmp)), tmp / "data", step_s=0.05)
        made.append(sim)
        return charge_both(sim)

    yield make
    for s in made:
        s.close()


def _index(lines: list[str], pattern: str) -> int:
    return next(i for i, ln in enumerate(lines) if re.match(pattern, ln))


def check_screen(st: dict[str, Any]) -> list[str]:
    lines = status_text(st, height=HEIGHT).splitlines()
    text = "\n".join(lines)
    assert len(lines) <= HEIGHT, text
    assert all(display_width(ln) <= WIDTH for ln in lines), text
    assert lines[0].startswith("cabinet sim-cab") and lines[1].startswith("state"), text
    assert _index(lines, "limit ") < _index(lines, "connector +phase") < _index(lines, "1 ") < _index(lines, "2 ")
    for fault in st["faults"]:
        assert re.search(rf"\b{re.escape(fault)}\b", text), (fault, text)
    full = status_text(st).splitlines()
    if len(full) > HEIGHT:
        hidden = int(re.match(r"… (\d+) more lines hidden", lines[-1]).group(1))  # type: ignore[union-attr]
        assert hidden == len(full) - (len(lines) - 1) and len(lines) >= HEIGHT - 3  # a cut fault text leaves rows
    line = status_line(st)
    assert display_width(line) <= WIDTH and line.split(" | ")[0] in lines[1], line
    assert re.search(r"\| 1 \S+ [\d.]+ A \| 2 \S+ [\d.]+ A \| limit \d+ A <- ", line), line
    return lines


@pytest.mark.parametrize("knob", [*KNOBS, "all"])
def test_every_fault_knob_on_two_connectors_fits_80x24_most_important_first(charging, knob):
    sim = charging()
    for name, turn in KNOBS.items():
        if knob in (name, "all"):
            turn(sim)
    sim.run(12.0)
    st = sim.cabinet.status()
    if knob != "unplug":
        assert st["faults"] or knob == "soc_full", st["reason"]
    lines = check_screen(st)
    if knob == "all":
        assert lines[-1].startswith("… ") and "more lines hidden" in lines[-1]


class Doubled(gettext.NullTranslations):
    """A pseudo-locale: every text twice as long (``{placeholders}`` still work)."""

    def gettext(self, message: str) -> str:
        return message + message


def test_a_pseudo_locale_with_every_text_doubled_still_fits_80_columns(charging, monkeypatch):
    sim = charging()
    for turn in KNOBS.values():
        turn(sim)
    sim.run(12.0)
    st = sim.cabinet.status()
    monkeypatch.setattr(i18n, "_translations", Doubled())
    lines = status_text(st, height=HEIGHT).splitlines()
    assert len(lines) <= HEIGHT and all(display_width(ln) <= WIDTH for ln in lines), "\n".join(lines)
    assert lines[1].startswith("statestate") and lines[0].startswith("cabinet"), lines[:2]
    assert all(display_width(ln) <= WIDTH for ln in status_text(st).splitlines())
    assert display_width(status_line(st)) <= WIDTH


class _Tty:
    def __init__(self) -> None:
        self.out = ""

    def write(self, s: str) -> None:
        self.out += s

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_the_run_status_line_rewrites_one_line_on_a_terminal_and_prints_lines_into_a_pipe(charging):
    sim = charging()
    tty = _Tty()
    live = LiveLine(tty, columns=80)
    for _ in range(3):
        sim.run(1.0)
        live.show(sim.cabinet.view().line(live.width()))
    live.close()
    assert "\n" not in tty.out.rstrip("\n") and tty.out.count("\r") == 3 and tty.out.count("\x1b[K") == 3
    shown = [s.removesuffix("\x1b[K") for s in tty.out.strip("\n").split("\r") if s]
    assert all(display_width(s) <= 79 for s in shown) and all(s.startswith("CHARGING | 1 ") for s in shown)
    # a log line on the same terminal wipes the status line first, so it starts on a clean line
    logger = logging.getLogger("test.screen.live")
    handler = logging.StreamHandler(tty)  # type: ignore[arg-type]
    logger.addHandler(handler)
    try:
        live.show("CHARGING | 1 Charging 10 A")
        live.attach_logging(logger)
        logger.warning("fault_raised x")
        assert tty.out.endswith("\rCHARGING | 1 Charging 10 A\x1b[K\r\x1b[Kfault_raised x\n"), repr(tty.out[-80:])
        live.close()
        assert not handler.filters  # detached
    finally:
        logger.removeHandler(handler)
    pipe = _Tty()
    pipe.isatty = lambda: False  # type: ignore[method-assign]
    plain = LiveLine(pipe)
    plain.show(sim.cabinet.view().line(plain.width()))
    assert pipe.out.endswith("\n") and "\r" not in pipe.out and "\x1b" not in pipe.out


def _serve_watch(path: Path, status: dict[str, Any], n: int) -> threading.Thread:
    """A socket that answers ``watch`` with ``n`` copies of ``status`` (the daemon's side, without one)."""
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen()

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            conn.makefile().readline()
            for _i in range(n):
                conn.sendall((json.dumps({"v": 1, "id": None, "ok": True, "data": status}) + "\n").encode())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def _rows_on_screen(raw: str) -> list[str]:
    """What an 80x24 terminal shows after ``raw``: the part after the last clear-screen, escapes removed."""
    last = raw.rsplit("\x1b[H\x1b[2J", 1)[-1]
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", last).replace("\r", "").split("\n")


def test_edge_watch_in_a_pseudo_terminal_of_80x24_shows_one_screen_that_fits(charging, tmp_path):
    sim = charging()
    for turn in KNOBS.values():
        turn(sim)
    sim.run(12.0)
    st = json.loads(json.dumps(sim.cabinet.status()))
    sock = tmp_path / "w.sock"
    server = _serve_watch(sock, st, 2)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "COLUMNS": "80", "LINES": "24", "LANG": "C"}
    cmd = [sys.executable, "-m", "edge.cli", "watch", "--count", "2", "--interval", "0.2", "--socket", str(sock)]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO)
    os.close(slave)
    raw = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _w, _x = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            raw += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(10) == 0, raw.decode(errors="replace")
    server.join(5)
    rows = _rows_on_screen(raw.decode())
    shown = [r for r in rows if r.strip()]
    assert len(rows) <= HEIGHT and all(display_width(r) <= WIDTH for r in rows), "\n".join(rows)
    assert shown[0].startswith("cabinet sim-cab") and shown[1].startswith("state")
    assert any(r.startswith("limit ") for r in shown) and any(r.startswith("faults ") for r in shown)
    assert "more lines hidden" in "\n".join(shown) and shown[-1] == "(Ctrl-C to leave)"
