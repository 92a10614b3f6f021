"""Contactor feedback (weld, fail to close) and the pre-charge check of one connector.

Pure and MicroPython-safe like ``core.py`` (no I/O, no clock, builtin types only). ``connectors.py`` calls
:func:`check` on a connector's core context before the core's steps (so a trip here is latched, opens the
contactor and sets 0 A exactly like any rule of the core) and :func:`record` after them (the command that
goes out, with the time it changed, is what the next evaluation checks the mirror contact against).

Inputs: the connector's ``"contactor_fb"`` in the snapshot (1 = the mirror contact says closed, 0 = open,
None = no feedback wired: nothing is checked), its request (phase, requested voltage) and the measured
``output_v``. State (in the connector's core state, lists only, so the core's copy copies them):
``contactor_cmd`` = [commanded closed, t of the last change, closed at least once since start-up] and
``precharge`` = [t PreCharge began or None, target reached, timeout detail or None, target V].

Rules (units: ms in the config, V, A; defaults and ranges in :data:`DEFAULTS` and the config schema):

- ``contactor_welded``: the mirror contact still reads closed ``open_timeout_ms`` after the open command
  (or since start-up, never commanded closed: welded before any session). Latched; the connector is out
  of service (0 A, modules off, contactor never commanded closed again) until cleared LOCALLY with the
  mirror contact reading open (:data:`LOCAL_CLEAR`). The other connectors go on.
- ``contactor_failed_to_close``: the mirror contact reads open ``close_timeout_ms`` after the close command
  (it never closed, or it dropped out during the session). Latched: a coil, driver or feedback that does
  not work would fail the next session the same way, and a feedback that never reads closed could not see
  a weld either; cleared (also remotely) once the contactor is commanded open and reads open.
- ``precharge_timeout``: the output was not seen within ``session.precharge_tolerance_v`` of the
  pre-charge voltage (the voltage requested in PreCharge) ``session.precharge_timeout_ms`` after PreCharge
  began (in PreCharge, or after it when the vehicle moved on without it). Held for the rest of the
  session (0 A, contactor open), not latched: the next session starts afresh. And a session that was in
  PreCharge gets no more than ``precheck_current_a`` after it until the output was seen within the
  tolerance of the pre-charge target (in PreCharge, or after it with the vehicle's battery connected).
"""

try:
    from . import core
except ImportError:  # imported by path as a plain module (safety MCU, tests/vectors/runner.py)
    import core  # type: ignore[import-not-found,no-redef]

WELDED = "contactor_welded"
FAILED_TO_CLOSE = "contactor_failed_to_close"
PRECHARGE_TIMEOUT = "precharge_timeout"
LOCAL_CLEAR = (WELDED,)  # cleared on site only (joins the core's LOCAL_CLEAR_ONLY)

DEFAULTS = {
    "close_timeout_ms": 200,  # the mirror contact reads closed within this after the close command
    "open_timeout_ms": 200,  # ... and open within this after the open command, else welded
}
PRECHARGE_TIMEOUT_MS = 5000  # DIN 70121: the station's PreCharge timeout (the EV gives up after 7 s)
EPS_S = core.EPS_S
fmt_num = core.fmt_num


def settings(config: dict) -> dict:
    """The ``contactor`` section of the core's config with :data:`DEFAULTS` for what it lacks."""
    out = dict(DEFAULTS)
    given = config.get("contactor") or {}
    for k in given:
        out[k] = given[k]
    return out


def out_of_service(latched: list) -> bool:
    """True while the connector must never be energised (a welded contactor is latched)."""
    return WELDED in latched


# -- contactor feedback -------------------------------------------------------------------------------------


def _command(c: core._Ctx, t: float) -> list:
    state = c.state
    cmd = state.get("contactor_cmd")
    if cmd is None:
        cmd = [False, t, False]  # start-up: open since now
        state["contactor_cmd"] = cmd
    return cmd


def _welded(c: core._Ctx, cmd: list, fb: int, cfg: dict) -> None:
    """Commanded open: a mirror contact that still reads closed after ``open_timeout_ms`` is a weld."""
    if fb != 1:
        return
    if c.t - cmd[1] >= cfg["open_timeout_ms"] / 1000.0 - EPS_S:
        since = "the open command" if cmd[2] else "start-up (never commanded closed)"
        detail = "mirror contact still reads closed %d ms after %s: contactor welded, connector out of service" % (
            cfg["open_timeout_ms"],
            since,
        )
        c.trip(WELDED, detail, True)
    elif WELDED in c.state["latched"]:
        c.block(WELDED, "mirror contact still reads closed")


def _failed_to_close(c: core._Ctx, cmd: list, fb: int, cfg: dict) -> None:
    """Commanded closed: a mirror contact that reads open after ``close_timeout_ms`` failed to close."""
    if fb == 0 and c.t - cmd[1] >= cfg["close_timeout_ms"] / 1000.0 - EPS_S:
        detail = (
            "mirror contact reads open %d ms after the close command: contactor failed to close"
            % (cfg["close_timeout_ms"])
        )
        c.trip(FAILED_TO_CLOSE, detail, True)


def _check_feedback(c: core._Ctx, fb: object, cfg: dict) -> None:
    cmd = _command(c, c.t)
    if fb not in (0, 1):
        if WELDED in c.state["latched"]:
            c.block(WELDED, "mirror contact not readable: cannot confirm the contactor is open")
        return
    if cmd[0]:
        _failed_to_close(c, cmd, fb, cfg)
    else:
        _welded(c, cmd, fb, cfg)


# -- pre-charge ---------------------------------------------------------------------------------------------


def _num(x: object) -> float | None:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and x == x:
        return float(x)
    return None


def _reached(c: core._Ctx, target: float | None, scfg: dict) -> bool:
    out_v = c.value("output_v")
    return target is not None and out_v is not None and abs(out_v - target) <= scfg["precharge_tolerance_v"]


def _timeout_detail(c: core._Ctx, pc: list, scfg: dict) -> str:
    out_v = c.value("output_v")
    return "output %s V not within %s V of the pre-charge target %s V after %d ms" % (
        "not measured" if out_v is None else fmt_num(out_v),
        fmt_num(scfg["precharge_tolerance_v"]),
        "-" if pc[3] is None else fmt_num(pc[3]),
        scfg["precharge_timeout_ms"],
    )


def _precharge_state(c: core._Ctx, req: dict, scfg: dict, pc: list) -> list:
    """Start the timer when PreCharge begins (its target: the requested voltage), note the target reached
    (in PreCharge, or after it once the vehicle's battery is on the output: measurements come in periods
    and the vehicle may move on between two), or time out; all afresh when the session ends."""
    if not req["live"]:
        return [None, False, None, None]
    if req["phase"] == "PreCharge":
        if pc[0] is None:
            pc = [c.t, False, None, None]
        pc[3] = _num(req.get("voltage_v"))
    if pc[0] is None or pc[1] or pc[2] is not None:
        return pc
    if _reached(c, pc[3], scfg):
        pc[1] = True
    elif c.t - pc[0] >= scfg["precharge_timeout_ms"] / 1000.0 - EPS_S:
        pc[2] = _timeout_detail(c, pc, scfg)
    return pc


def _check_precharge(c: core._Ctx, req: dict, scfg: dict) -> None:
    state = c.state
    pc = _precharge_state(c, req, scfg, state.get("precharge") or [None, False, None, None])
    if pc[2] is not None:
        c.trip(PRECHARGE_TIMEOUT, pc[2], False)
    elif pc[0] is not None and not pc[1] and req["phase"] != "PreCharge":
        c.limit(
            scfg["precheck_current_a"],
            "precharge",
            "pre-charge target not reached: at most %s A" % fmt_num(scfg["precheck_current_a"]),
        )
    state["precharge"] = pc


# -- the two calls of connectors.py ------------------------------------------------------------------------


def check(c: core._Ctx, conn: dict, req: dict, scfg: dict, cfg: dict) -> None:
    """Before the core's steps: the feedback and pre-charge rules as trips, limits and clear blockers on
    the connector's core context ``c``; ``conn`` its snapshot, ``req`` its request as connectors.py read it,
    ``scfg`` the session rules, ``cfg`` :func:`settings`."""
    _check_feedback(c, conn.get("contactor_fb"), cfg)
    _check_precharge(c, req, scfg)


def record(state: dict, closed: bool, t: float) -> None:
    """After the core's steps: the contactor command that goes out; its time when it changed."""
    cmd = state.get("contactor_cmd")
    if cmd is None or cmd[0] != closed:
        state["contactor_cmd"] = [closed, t, closed or (cmd is not None and cmd[2])]
