"""Cabinet safety inputs in the safety core: emergency stop, door, water ingress, tilt.

Pure and MicroPython-safe like ``core.py`` (no I/O, no clock, builtin types only, sorted outputs).
Called by ``connectors.evaluate_cabinet`` once per evaluation, before the connectors' pipelines.

Snapshot (cabinet level)::

    "digital": {"estop": 1, "door": 0, "water": 0, "tilt": 0}   # 1 = ACTIVE (pressed / open / water /
                                                                # tilted), after active level, NC/NO
                                                                # wiring and debounce (a broken NC loop
                                                                # reads ACTIVE); a function not
                                                                # configured is absent
    "digital_names": {"estop": ["estop_front"]}                 # optional: the inputs ACTIVE now, for
                                                                # the fault details

Rules (unit, default, range, latch; config ``[[input]]``, docs/SAFETY.md "Emergency stop, door, water,
tilt"):

- ``estop`` ACTIVE -> fault ``emergency_stop`` on every connector: 0 A, modules off, contactor open, in
  the same evaluation (no off-current wait: see :func:`apply`). Latched (always, not configurable) until
  the e-stop is released AND a clear is given locally; a clear while it is still pressed is refused.
- ``water`` ACTIVE -> ``water_ingress``, ``tilt`` ACTIVE -> ``tilt``: the same stop, latched the same way.
- ``door`` ACTIVE while a connector is in session (its request is live or its contactor is closed) ->
  ``door_open``: ``door_action = "stop"`` (default): the same stop, not latched (the session may go on
  once the door is closed); ``"derate"``: every connector at most ``door_derate_a`` (A, default 50, 0..1000)
  while the door is open. A door opened without a session is shown (``digital``) but is no fault.

Clears: every latched name here is in :data:`LOCAL_CLEAR_ONLY`: the cloud's clear command refuses it before
it reaches the core (edge/ops.py); the core answers a local clear.

Decision additions (cabinet level): ``"estop"``: True while the e-stop is pressed or its latch is held
(every output is off), ``"digital"``: the snapshot's values as seen.
"""

try:
    from . import core
except ImportError:  # imported by path as a plain module (safety MCU, tests/vectors/runner.py)
    import core  # type: ignore[import-not-found,no-redef]

# function -> fault name
FAULTS = {"estop": "emergency_stop", "door": "door_open", "water": "water_ingress", "tilt": "tilt"}
FUNCTIONS = ("door", "estop", "tilt", "water")
LATCHING = ("emergency_stop", "tilt", "water_ingress")
# faults that only a clear given on site may lift (never the cloud's): the cloud's clear path consults this
LOCAL_CLEAR_ONLY = ("emergency_stop", "tilt", "water_ingress")
DEFAULTS = {"door_action": "stop", "door_derate_a": 50.0}

_TEXT = {
    "estop": ["emergency stop pressed", "emergency stop released"],
    "water": ["water detected in the cabinet", "water sensor dry again"],
    "tilt": ["cabinet tilted", "tilt switch level again"],
}


def config_of(config: dict) -> dict:
    """The ``safety_inputs`` section of the limits config with :data:`DEFAULTS` for what it lacks."""
    out = dict(DEFAULTS)
    given = config.get("safety_inputs") or {}
    for k in given:
        out[k] = given[k]
    return out


def initial_state() -> dict:
    return {"latched": {}}  # fault -> detail, kept until cleared locally with the input released


def copy_state(state: dict | None) -> dict:
    if state is None:
        return initial_state()
    latched = {}
    for k in state["latched"]:
        latched[k] = state["latched"][k]
    return {"latched": latched}


def _active(snapshot: dict, function: str) -> bool:
    digital = snapshot.get("digital") or {}
    return bool(digital.get(function, 0))


def _who(snapshot: dict, function: str) -> str:
    names = (snapshot.get("digital_names") or {}).get(function) or []
    return " (input " + ", ".join(sorted(names)) + ")" if names else ""


def _latching(snapshot: dict, result: dict, latched: dict) -> None:
    """e-stop, water, tilt: a stop on every connector while ACTIVE or latched."""
    for function in ("estop", "water", "tilt"):
        name = FAULTS[function]
        texts = _TEXT[function]
        if _active(snapshot, function):
            detail = texts[0] + _who(snapshot, function)
            latched[name] = detail
            result["stops"][name] = detail
            result["blockers"][name] = detail + ": release it first, then clear on site"
        elif name in latched:
            result["stops"][name] = latched[name] + "; " + texts[1] + ", latched until cleared on site"


def _door(snapshot: dict, cfg: dict, result: dict, in_session: bool) -> None:
    if not (_active(snapshot, "door") and in_session):
        return
    detail = "cabinet door open during a session" + _who(snapshot, "door")
    if cfg["door_action"] == "derate":
        amps = max(0.0, cfg["door_derate_a"])
        result["derate"] = [amps, "door", detail + ": derated to " + core.fmt_num(amps, 0) + " A"]
        result["faults"]["door_open"] = result["derate"][2]
    else:
        result["stops"]["door_open"] = detail + ": stopped until it is closed"


def _clears(snapshot: dict, result: dict, latched: dict) -> None:
    for name in snapshot.get("clear") or []:
        if name not in LATCHING or name in result["answered"]:
            continue
        result["answered"].append(name)
        if name in result["blockers"]:
            result["refused"].append([name, result["blockers"][name]])
        elif name in latched:
            del latched[name]
            del result["stops"][name]
            result["cleared"].append(name)
        else:
            result["refused"].append([name, "not latched"])


def evaluate(snapshot: dict, config: dict, state: dict, in_session: bool) -> dict:
    """This evaluation's stops, derating, clears and e-stop flag; updates ``state["latched"]``.

    ``in_session``: a connector's request is live or its contactor is closed (the door rule)."""
    cfg = config_of(config)
    latched = state["latched"]
    result = {  # type: dict
        "stops": {},
        "faults": {},
        "derate": None,
        "blockers": {},
        "answered": [],
        "cleared": [],
        "refused": [],
    }
    _latching(snapshot, result, latched)
    _door(snapshot, cfg, result, in_session)
    _clears(snapshot, result, latched)
    for name in result["stops"]:
        result["faults"][name] = result["stops"][name]
    result["estop"] = _active(snapshot, "estop") or "emergency_stop" in latched
    result["latched"] = sorted(latched.keys())
    return result


def apply(c: core._Ctx, result: dict) -> None:
    """Into one connector's pipeline (a ``core._Ctx`` before its steps): each stop as a trip that this
    module latches (not the connector: ``latch`` False), so the core gives 0 A, modules off and the contactor
    open in this evaluation, mode Fault; the door's derating as a limit.

    The safe order within the evaluation: the decision carries ``enable`` False, ``limit_a`` 0 and
    ``contactor`` False together; the controller applies it modules first (off frames on the bus), then the
    contactor pins (edge/control.py ``_apply``)."""
    for name in sorted(result["stops"]):
        c.trip(name, result["stops"][name], False)
    if result["derate"] is not None:
        d = result["derate"]
        c.limit(d[0], d[1], d[2])
        c.faults["door_open"] = d[2]


def _union(names: list, more: list) -> list:
    out = list(names)
    for name in more:
        if name not in out:
            out.append(name)
    return sorted(out)


def finish(out: dict, result: dict, snapshot: dict) -> None:
    """The cabinet decision's additions: ``estop``, ``digital``, these latches, this module's clear answers
    (the connectors answered "not latched" for them: replaced)."""
    out["estop"] = result["estop"]
    out["digital"] = dict(snapshot.get("digital") or {})
    out["latched"] = _union(out["latched"], result["latched"])
    mine = result["answered"]
    out["clear_refused"] = [r for r in out["clear_refused"] if r[0] not in mine] + result["refused"]
    out["cleared"] = out["cleared"] + [n for n in result["cleared"] if n not in out["cleared"]]
    views = out["connectors"]
    for conn in views:
        views[conn]["latched"] = _union(views[conn]["latched"], result["latched"])
