"""Latched faults that survive a restart: ``<data_dir>/latches.json`` (docs/SAFETY.md, Latches that survive
a restart).

The safety core keeps each connector's latched faults in its state (``state["connectors"][name]["latched"]``:
fault -> detail) and the cabinet's own (the e-stop, water and tilt latches of ``safety_inputs.py``:
``state["safety"]["latched"]``). :class:`LatchFile` writes both whenever either latched set changes (the
controller's ``after_evaluate`` hook: a trip latched, a clear granted) with the crash-safe writer of the
operator state (:func:`edge.operator.write_atomic`), and :meth:`LatchFile.restore` reads them back at
start-up; :func:`core_state_with` turns them into the core state the first evaluation starts from. A clear
is still the only way out.

Format (version 2; UTF-8 JSON, one object, written whole; a version 1 file, without ``cabinet``, is read)::

    {"version": 2, "saved_at_ms": 1764170000000,
     "latched": {"1": {"contactor_welded": "mirror contact still reads closed ..."}},
     "cabinet": {"emergency_stop": "emergency stop pressed (input estop)"}}

A file that cannot be read or does not validate fails safe: every connector starts with
``latch_state_unreadable`` latched (cleared on site only, ``LOCAL_CLEAR_ONLY``), the bad file is kept as
``latches.json.unreadable`` and the fail-safe state is written in its place.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from edge.limits import connectors, core
from edge.operator import FaultSink, write_atomic

STATE_FILE = "latches.json"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)  # version 1 (session 23) had no cabinet latches
UNREADABLE_FAULT = "latch_state_unreadable"
NOT_SAVED_FAULT = "latch_state_not_saved"
RETRY_S = 5.0  # a failed write is tried again at the next change, or after this long
_FAULT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.]{0,79}$")
MAX_DETAIL = 1000
EventSink = Callable[[str, str, dict[str, Any]], None]
Latched = dict[str, dict[str, str]]  # connector -> fault -> detail
CabinetLatched = dict[str, str]  # fault -> detail: the cabinet's own (e-stop, water, tilt)


def latched_of(core_state: dict[str, Any] | None) -> Latched:
    """Every connector's latched faults in a cabinet core state (connectors with none left out)."""
    conns = (core_state or {}).get("connectors") or {}
    out: Latched = {}
    for name in sorted(conns):
        faults = conns[name].get("latched") or {}
        if faults:
            out[name] = {f: str(faults[f]) for f in sorted(faults)}
    return out


def cabinet_latched_of(core_state: dict[str, Any] | None) -> CabinetLatched:
    """The cabinet's own latched faults in a cabinet core state (the safety inputs' latches)."""
    faults = ((core_state or {}).get("safety") or {}).get("latched") or {}
    return {f: str(faults[f]) for f in sorted(faults)}


def core_state_with(latched: Latched, cabinet: CabinetLatched | None = None) -> dict[str, Any] | None:
    """The cabinet core state to start from with ``latched`` (per connector) and ``cabinet`` (the cabinet's
    own) in force (None when nothing is latched)."""
    if not latched and not cabinet:
        return None
    state = connectors.initial_state()
    for name, faults in latched.items():
        cstate = core.initial_state()
        cstate["latched"] = dict(faults)
        state["connectors"][name] = cstate
    state["safety"]["latched"] = dict(cabinet or {})
    return state


class LatchFile:
    def __init__(
        self,
        data_dir: str,
        monotonic: Callable[[], float],
        wall_ms: Callable[[], int],
        on_event: EventSink,
        faults: FaultSink,
    ) -> None:
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, STATE_FILE)
        self.monotonic = monotonic
        self.wall_ms = wall_ms
        self.on_event = on_event
        self.faults = faults
        self.saved: tuple[Latched, CabinetLatched] = ({}, {})  # what the file holds
        self.saves = 0
        self.save_errors = 0
        self._failed_at: float | None = None
        self._failed: tuple[Latched, CabinetLatched] = ({}, {})

    # -- writing -------------------------------------------------------------------------------------
    def write(self, latched: Latched, cabinet: CabinetLatched | None = None) -> None:
        cab = dict(cabinet or {})
        doc = {"version": FORMAT_VERSION, "saved_at_ms": self.wall_ms(), "latched": latched, "cabinet": cab}
        write_atomic(self.path, json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
        self.saved = (latched, cab)
        self.saves += 1

    def save_if_changed(self, core_state: dict[str, Any] | None) -> None:
        """After an evaluation: write when a latched set differs from the file's; never raises."""
        now = (latched_of(core_state), cabinet_latched_of(core_state))
        if now == self.saved:
            return
        if self._failed_at is not None and self.monotonic() - self._failed_at < RETRY_S and now == self._failed:
            return
        try:
            self.write(*now)
        except OSError as exc:
            self.save_errors += 1
            self._failed_at, self._failed = self.monotonic(), now
            self.faults.set(
                NOT_SAVED_FAULT, f"latched faults not saved to {self.path} ({exc}): in force now, lost on a restart"
            )
            return
        if self._failed_at is not None:
            self._failed_at = None
            self.faults.clear(NOT_SAVED_FAULT, "latched faults saved")

    # -- reading -------------------------------------------------------------------------------------
    def restore(self, names: Iterable[str]) -> tuple[Latched, CabinetLatched]:
        """The latches to start with: each connector's, for the connectors ``names`` of the config, and the
        cabinet's own; one ``latches_restored`` event listing what was restored (a cabinet latch with
        ``"connector": None``) and what was dropped (no event when there was no file: a first start)."""
        names = list(names)
        raw = b""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
            doc = _parse(raw)
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError) as exc:
            return self._fail_safe(names, raw, f"{type(exc).__name__}: {exc}"), {}
        cabinet: CabinetLatched = doc.get("cabinet", {})
        self.saved = (doc["latched"], cabinet)
        kept = {n: faults for n, faults in doc["latched"].items() if n in names}
        restored: list[dict[str, Any]] = [{"connector": None, "fault": f, "detail": d} for f, d in cabinet.items()]
        restored += [{"connector": n, "fault": f, "detail": d} for n, faults in kept.items() for f, d in faults.items()]
        dropped = [
            {"connector": n, "fault": f, "note": "connector no longer in the config"}
            for n, faults in doc["latched"].items()
            if n not in names
            for f in faults
        ]
        self.on_event("latches_restored", "latches", {"file": self.path, "restored": restored, "dropped": dropped})
        return kept, cabinet

    def _fail_safe(self, names: list[str], raw: bytes, error: str) -> Latched:
        kept = self.path + ".unreadable"
        detail = (
            f"latched faults {self.path} unreadable ({error[:200]}); every connector stays off until cleared "
            f"on site (edge clear {UNREADABLE_FAULT}) after checking the cabinet; the bad file is kept as {kept}"
        )[:MAX_DETAIL]
        latched = {n: {UNREADABLE_FAULT: detail} for n in names}
        try:
            with open(kept, "wb") as f:
                f.write(raw)
            self.write(latched)
        except OSError:
            self.save_errors += 1
        self.on_event(
            "latches_restored",
            "latches",
            {
                "file": self.path,
                "error": error[:200],
                "restored": [{"connector": n, "fault": UNREADABLE_FAULT, "detail": detail} for n in names],
                "dropped": [],
            },
        )
        return latched


def _parse(raw: bytes) -> dict[str, Any]:
    """The file's object, checked field by field; ValueError (with what is wrong) for anything else."""
    doc = json.loads(raw.decode("utf-8"))
    if not isinstance(doc, dict) or doc.get("version") not in READ_VERSIONS:
        raise ValueError(f"not a version {' or '.join(map(str, READ_VERSIONS))} latch file")
    keys = {"version", "saved_at_ms", "latched"} | ({"cabinet"} if doc["version"] >= 2 else set())
    if set(doc) != keys:
        raise ValueError(f"unexpected keys {sorted(doc)}")
    latched = doc["latched"]
    if not isinstance(latched, dict):
        raise ValueError("latched must be an object")
    for name, faults in latched.items():
        if not isinstance(faults, dict) or not faults:
            raise ValueError(f"connector {name!r}: latched faults must be a non-empty object")
        _check_faults(faults, f"connector {name!r}")
    cabinet = doc.get("cabinet", {})
    if not isinstance(cabinet, dict):
        raise ValueError("cabinet must be an object")
    _check_faults(cabinet, "cabinet")
    return doc


def _check_faults(faults: dict[str, Any], where: str) -> None:
    for fault, detail in faults.items():
        if not _FAULT_NAME.match(fault) or not isinstance(detail, str) or len(detail) > MAX_DETAIL:
            raise ValueError(f"{where}: {fault!r} is not a fault name with a detail text")
