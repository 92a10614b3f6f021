"""The 80x24 screen for the simulator's fault knobs merged after the first screen tests (issue 19 item 1):
contactor weld and fail to close, the safety inputs (e-stop, door, water, tilt), the insulation monitor (low
resistance, failed self-test, silent) and, on the power-sharing cabinet (edge/sim/sim-sharing.toml), a stuck
relay and a lost module group; two connectors each, one knob at a time and all at once. Each screen is
checked in English (tests/test_screen.py: header, state, limit and connector lines first, every active
fault named, the hidden lines counted) and in Simplified Chinese and Thai (the same, counted in terminal
cells: CJK characters take two, Thai marks none)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge import i18n
from edge.config import parse_config
from edge.i18n import display_width
from edge.render import HEIGHT, WIDTH, status_line, status_text
from edge.sim.stepper import SimStepper
from tests.conftest import REPO, _drop_tables
from tests.test_screen import KNOBS as FIRST_KNOBS
from tests.test_screen import charge_both, sim_toml

# water and tilt are not wired in sim.toml (e-stop and door are): the screen test adds them
WATER_TILT = """
[[input]]
name = "water"
pin = "water-sensor"
function = "water"
debounce_ms = 0

[[input]]
name = "tilt"
pin = "tilt-switch"
function = "tilt"
debounce_ms = 0
"""


def _replug(sim: SimStepper, connector: str) -> None:
    """A new session on ``connector`` (its cable check runs again)."""
    sim.unplug(connector)
    sim.run(3.0)
    sim.plug_in(connector)


Knob = Callable[[SimStepper], None]
# name -> (knob, a fault it raises while the screen is taken, or None where it shows as a device line only)
KNOBS: dict[str, tuple[Knob, str | None]] = {
    "contactor_weld": (lambda s: (s.weld_contactor("1"), s.unplug("1")) and None, "contactor_welded"),
    "contactor_fail_to_close": (
        lambda s: (s.contactor_fails_to_close("2"), _replug(s, "2")) and None,
        "contactor_failed_to_close",
    ),
    "input_estop": (lambda s: s.set_estop(True), "emergency_stop"),
    "input_door": (lambda s: s.set_door_open(True), "door_open"),
    "input_water": (lambda s: s.set_input("water", True), "water_ingress"),
    "input_tilt": (lambda s: s.set_input("tilt", True), "tilt"),
    "imd_ohm": (lambda s: s.set_imd_resistance(20_000.0, "1"), "isolation_fault"),
    # the self-test runs when the monitor starts: a later failure shows on its device line
    "imd_self_test_fails": (lambda s: (s.set_imd_self_test_fails(True, "2"), _replug(s, "2")) and None, None),
    "imd_silent": (lambda s: s.set_imd_silent(True, "2"), "isolation_monitor_lost"),
}
SHARING_KNOBS: dict[str, tuple[Knob, str | None]] = {
    # stuck while connector 2 ends and its groups may move to connector 1 (a fault, and the group's line)
    "relay_stuck": (lambda s: (s.set_relay_stuck("C", "2"), s.unplug("2")) and None, "relay_stuck_C"),
    "group_lost": (lambda s: s.set_group_lost("A"), "module_lost_1"),
}


def _sharing_toml(tmp: Path) -> str:
    text = (REPO / "edge" / "sim" / "sim-sharing.toml").read_text()
    text = _drop_tables(text, {"[telemetry.mqtt]"}) + "\n[telemetry.mqtt]\nenabled = false\n"
    text = text.replace('socket = ".edge-sim/edge.sock"', f'socket = "{tmp}/edge.sock"')
    return text.replace('data_dir = ".edge-sim"', f'data_dir = "{tmp}/data"')


@pytest.fixture(scope="module")
def charging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[bool], SimStepper]]:
    """A fresh two-connector cabinet (sim.toml with water and tilt, or sim-sharing.toml) charging both cars."""
    made: list[SimStepper] = []

    def make(sharing: bool = False) -> SimStepper:
        tmp = tmp_path_factory.mktemp("knobs")
        text = _sharing_toml(tmp) if sharing else sim_toml(tmp) + WATER_TILT
        sim = SimStepper(parse_config(text), tmp / "data", step_s=0.05)
        made.append(sim)
        return charge_both(sim)

    yield make
    for s in made:
        s.close()


@pytest.fixture
def lang() -> Iterator[Callable[[str], str]]:
    yield i18n.use
    i18n.use("en")


def check_translated(st: dict[str, Any], lang: str) -> list[str]:
    """The screen in ``lang`` (tests/test_screen.py's check_screen in any language, with the e-stop line):
    fits 80x24 in terminal cells, header and state first, the connectors before the faults, every active
    fault named (fault names are never translated), the hidden lines counted."""
    lines = status_text(st, height=HEIGHT).splitlines()
    text = "\n".join(lines)
    assert len(lines) <= HEIGHT, text
    wide = [ln for ln in lines if display_width(ln) > WIDTH]
    assert not wide, f"{lang}: wider than {WIDTH} cells:\n" + "\n".join(wide)
    assert lines[0].startswith(i18n._("cabinet {cabinet} @ {site}   up {uptime}   edge {version}").split("{")[0])
    state = next(i for i, ln in enumerate(lines) if ln.startswith(i18n._("state")))
    # only a pressed e-stop comes before the state: it explains the rest
    assert state == 1 or (lines[1].startswith("E-STOP") and all(ln.startswith(" ") for ln in lines[2:state])), text
    rows = [i for i, ln in enumerate(lines) if re.match(r"[12] ", ln)]
    faults_at = next((i for i, ln in enumerate(lines) if ln.startswith(i18n._("faults"))), len(lines))
    assert len(rows) == 2 and state < rows[0] < rows[1] < faults_at, text  # the connectors before the faults
    full = status_text(st).splitlines()
    for fault in st["faults"]:  # on the screen, or (more faults than rows) among the lines counted as hidden
        where = text if len(full) <= HEIGHT else "\n".join(full)
        assert re.search(rf"\b{re.escape(fault)}\b", where), (lang, fault, text)
    if len(full) > HEIGHT:
        note = i18n._("… {n} more lines hidden: a taller terminal, or edge status --json")
        pattern = re.escape(note).replace(re.escape("{n}"), r"(\d+)")
        m = re.match(pattern, lines[-1])
        assert m and int(m.group(1)) == len(full) - (len(lines) - 1), (lang, lines[-1])
    line = status_line(st)
    assert display_width(line) <= WIDTH, line
    if lang == "en":
        assert re.search(r"\| 1 \S+ [\d.]+ A \| 2 \S+ [\d.]+ A \| limit \d+ A <- ", line), line
    return lines


def _screens(st: dict[str, Any], lang: Callable[[str], str]) -> None:
    check_translated(st, "en")
    for code in ("zh_CN", "th"):
        assert lang(code) == code
        check_translated(st, code)
    lang("en")


def _until_faults(sim: SimStepper, wanted: list[str]) -> dict[str, Any]:
    """The status once every fault in ``wanted`` (a name, or a prefix ending in "_") is active: the screen
    is taken while it is (a door_open, for one, ends the session and goes with it)."""

    def active() -> bool:
        faults = sim.cabinet.status()["faults"]
        return all(any(f == w or (w.endswith("_") and f.startswith(w)) for f in faults) for w in wanted)

    sim.run_until(active, 15.0, f"faults {wanted}")
    return sim.cabinet.status()


@pytest.mark.parametrize("knob", [*KNOBS, "all"])
def test_every_newer_fault_knob_on_two_connectors_fits_80x24_in_english_chinese_and_thai(charging, lang, knob):
    sim = charging(False)
    if knob == "all":  # every knob, also those of the first screen tests: the latched faults stay
        for turn, _fault in KNOBS.values():
            turn(sim)
        for turn in FIRST_KNOBS.values():
            turn(sim)
        sim.run(12.0)
        st = _until_faults(sim, ["contactor_welded", "emergency_stop", "water_ingress", "tilt"])
    else:
        turn, fault = KNOBS[knob]
        turn(sim)
        if fault is None:
            sim.run(12.0)
        st = _until_faults(sim, [fault] if fault else [])
    _screens(st, lang)


@pytest.mark.parametrize("knob", [*SHARING_KNOBS, "all"])
def test_the_power_sharing_knobs_on_two_connectors_fit_80x24_in_english_chinese_and_thai(charging, lang, knob):
    sim = charging(True)
    wanted = []
    for name, (turn, fault) in SHARING_KNOBS.items():
        if knob in (name, "all"):
            turn(sim)
            wanted += [fault] if fault else []
    sim.run(12.0)
    _screens(_until_faults(sim, wanted), lang)


def test_a_trip_on_one_connector_while_the_other_charges_reads_charging(charging, lang) -> None:
    """Connector 2's contactor fails to close in a new session while connector 1 charges at 100 A: the state line
    said TRIPPED (the cabinet's reason is the most limited connector in a session); it says CHARGING, and
    connector 2's row and the fault list say FAULT and LATCHED."""
    sim = charging(False)
    KNOBS["contactor_fail_to_close"][0](sim)
    st = _until_faults(sim, ["contactor_failed_to_close"])
    sim.run(3.0)
    st = sim.cabinet.status()
    assert st["rule"] == "trip" and "contactor_failed_to_close" in st["latched"], st["rule"]
    lines = status_text(st, height=HEIGHT).splitlines()
    assert lines[1].startswith("state    CHARGING"), lines[1]
    assert re.search(r"^2 +FAULT", "\n".join(lines), re.M) and "contactor_failed_to_close  LATCHED" in "\n".join(lines)
    assert status_line(st).startswith("CHARGING | 1 Charging")
