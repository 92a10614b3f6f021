"""Safety core of a cabinet with several connectors: ``evaluate_cabinet(snapshot, config, previous_state)``.

Pure and MicroPython-safe like ``core.py`` (same rules: no I/O, no clock, builtin types only, sorted output;
imports only ``core``, ``inputs`` and ``contactor``, as plain modules on the MCU). Each connector runs the single-output
pipeline of ``core.py`` (its cable, its output, its modules, its hardware maxima, its own state and
latches); this module adds what belongs to the cabinet or to a charging session:

- the session rules of each connector: its charging controller's request is a reading (mode, phase,
  voltage, current, optional power, receive times); no live Export request -> 0 A; CableCheck and
  PreCharge at most ``precheck_current_a``; a power request and the connector's power rating as A at the
  voltage; a voltage below the connector's minimum -> 0 A;
- the end of a session: the modules go to 0 A at once, the contactor opens once the output is below
  ``off_current_a`` or ``off_timeout_ms`` after the end, whichever comes first (a trip, stop, lost safety
  input or stopping external fault opens it at once, as in the core);
- the site fuse, decided once for the cabinet from the total output power and shared evenly between the
  connectors in session; the operator's cabinet limit is shared the same way;
- one fault list for the cabinet: a fault of a cabinet input (module temperature, ambient, grid meter) or a
  cabinet external fault appears once; a connector's own fault's detail names the connector.

Snapshot (units as in core.py)::

    {"t": s, "inputs": {cabinet inputs: grid_l1_a.., ambient_c, module_temp_c},
     "grid_configured", "ambient_configured", "external_faults", "clear", "external_limit_a", "stop",
     "connectors": {"1": {"inputs": {pin_dc_plus_c.., coolant.., output_a, output_v},
                          "request": {"mode", "phase", "voltage_v", "current_a", "power_w",
                                      "t_mode", "t_setpoint"} or None,
                          "hw_max_a", "hw_max_v", "hw_min_v", "hw_max_w", "uncooled",
                          "modules_available", "module_max_a", "modules_configured", "modules_lost",
                          "modules_awaited" (never heard, start younger than lost_after), "modules_alarm", "module_a", "external_limit_a", "stop", "external_faults",
                          "contactor_fb": 1|0|None (mirror contact, contactor.py)}}}

Config: the core's limits dict plus ``session`` (:data:`SESSION_DEFAULTS` fill what it lacks) and
``contactor`` (``contactor.DEFAULTS`` fill what it lacks). Contactor feedback (weld, fail to close) and the
pre-charge check are ``contactor.py``'s rules, run inside each connector's pipeline.

Decision: the core's cabinet-wide fields (``limit_a`` and ``target_a`` summed, ``enable`` and ``contactor``
any, ``voltage_v`` the highest, ``rule``/``reason`` of the most limited connector in session, ``pump``,
``fan``, ``faults``, ``fault_details``, ``fault_docs``, ``latched``, ``cleared``, ``clear_refused``) plus
``events`` (texts of this evaluation: a session ended and why the contactor opened), ``grid_allowed_w``
(the site fuse's allowance for the cabinet's DC output, W; None without a grid meter), ``estop`` and
``digital`` (e-stop, door, water, tilt: ``safety_inputs.py``, which also reads the snapshot's ``digital``) and
``connectors``:
{name: {"limit_a", "target_a", "voltage_v", "enable", "contactor", "phase", "mode", "ending", "rule",
"reason", "faults", "latched", "max_current_a", "max_power_w", "voltage_reached", "request_age_s",
"out_of_service"}}.
"""

try:
    from . import contactor, core, inputs, isolation, overvoltage, safety_inputs
except ImportError:  # imported by path as a plain module (safety MCU, tests/vectors/runner.py)
    import contactor  # type: ignore[import-not-found,no-redef]
    import core  # type: ignore[import-not-found,no-redef]
    import inputs  # type: ignore[import-not-found,no-redef]
    import isolation  # type: ignore[import-not-found,no-redef]
    import overvoltage  # type: ignore[import-not-found,no-redef]
    import safety_inputs  # type: ignore[import-not-found,no-redef]

fmt_num = core.fmt_num
EPS_S = core.EPS_S
MIN_CONVERSION_V = 50.0  # A from W never at a lower voltage than this (no division by ~0 V)

SESSION_DEFAULTS = {
    "request_stale_ms": 3000,  # Export without a fresh mode or set-point for this long: 0 A
    "precheck_current_a": 2.0,  # most current in CableCheck and PreCharge
    "off_current_a": 1.0,  # the contactor opens at the end of a session only below this current
    "off_timeout_ms": 2000,  # ... or this long after the end anyway
    "precharge_tolerance_v": 20.0,  # PreCharge is done within this of the target voltage
    "precharge_timeout_ms": contactor.PRECHARGE_TIMEOUT_MS,  # ... or precharge_timeout (contactor.py)
}
PRECHECK_PHASES = ("CableCheck", "PreCharge")

# limits that come from the request, not from what the connector can give (kept out of max_current_a);
# the power rating is in max_power_w instead
REQUEST_RULES = (
    "session",
    "request",
    "request_stale",
    "precheck",
    "precharge",
    "request_power",
    "voltage_range",
    "hardware_power",
    "cable_check",
)

# faults of the cabinet's inputs (one ambient sensor, the modules' temperature, one grid meter) -> the input:
# listed once with no connector named, unless that connector sent the input itself
_CABINET_SENSORS = tuple(
    [[e["sensor"] + "_", e["name"]] for e in inputs.INPUTS if e["source"] in ("module", "ambient", "grid")]
)
_CABINET_FAULTS = {
    "module_over_temperature": "module_temp_c",
    "ambient_over_temperature": "ambient_c",
    "grid_meter_lost": "grid_l1_a",
}

# when several connectors are equally limited, the cabinet's reason names the most serious cause
_RULE_RANK = {"trip": 0, "stop": 1, "sensor": 2, "external_fault": 3}


def session_config(config: dict) -> dict:
    """The ``session`` section of ``config`` with :data:`SESSION_DEFAULTS` for what it lacks."""
    out = dict(SESSION_DEFAULTS)
    given = config.get("session") or {}
    for k in given:
        out[k] = given[k]
    return out


def initial_state() -> dict:
    return {
        "connectors": {},  # name -> core state (latches, ramp, timers of that output)
        "sessions": {},  # name -> {"contactor": closed last time, "t_end": session end or None, "cause"}
        # the cabinet's site-fuse rule; wait_t: first evaluation without a good reading (start-up grace)
        "grid": {"ok_t": None, "wait_t": None, "allowed_ac": None, "charger_w": []},
        "safety": safety_inputs.initial_state(),  # e-stop, water, tilt latches (safety_inputs.py)
    }


def is_cabinet_fault(name: str, cabinet_external: dict, own_inputs: dict) -> bool:
    """True for a fault of the cabinet (listed once, detail without a connector name): an external fault
    given for the cabinet, or the fault of a cabinet input the connector did not send itself."""
    if name in cabinet_external:
        return True
    source = _CABINET_FAULTS.get(name)
    for item in _CABINET_SENSORS:
        if source is None and name.startswith(item[0]):
            source = item[1]
    return source is not None and source not in own_inputs


def _copy_state(state: dict, names: list) -> dict:
    """The state of the connectors in ``names`` (one no longer configured is forgotten) and the cabinet's."""
    out = initial_state()
    conns = state.get("connectors") or {}
    sessions = state.get("sessions") or {}
    for name in names:
        if name in conns:
            out["connectors"][name] = conns[name]  # the core copies it before changing it
        if name in sessions:
            out["sessions"][name] = dict(sessions[name])
    grid = state.get("grid")
    if grid is not None:
        out["grid"] = {"ok_t": grid["ok_t"], "wait_t": grid.get("wait_t"), "allowed_ac": grid["allowed_ac"]}
        out["grid"]["charger_w"] = list(grid["charger_w"])
    out["safety"] = safety_inputs.copy_state(state.get("safety"))
    return out


def _num(x: object) -> float | None:
    """A usable number or None (None, NaN, not a number)."""
    if isinstance(x, (int, float)) and not isinstance(x, bool) and x == x:
        return float(x)
    return None


# -- the request of one connector -------------------------------------------------------------------------


def _request_age_s(req: dict, t: float) -> float | None:
    times = [x for x in (_num(req.get("t_mode")), _num(req.get("t_setpoint"))) if x is not None]
    return t - max(times) if times else None


def _request(conn: dict, scfg: dict, t: float) -> dict:
    """What the request allows: ``live`` (an Export request fresh enough), the cause when it is not, the
    stale fault, the requested voltage, current and power, the phase and the age."""
    req = conn.get("request")
    out = {"live": False, "cause": "no request", "stale": None, "phase": "Other", "age_s": None}  # type: dict
    out.update({"voltage_v": 0.0, "current_a": 0.0, "power_w": None})
    if req is None:
        return out
    age = _request_age_s(req, t)
    out["phase"] = req.get("phase") or "Other"
    out["age_s"] = age
    mode = req.get("mode")
    if mode != "Export":
        out["cause"] = "mode " + str(mode)
        return out
    if age is None or age * 1000.0 > scfg["request_stale_ms"] + EPS_S * 1000.0:
        out["cause"] = "request stale"
        out["stale"] = "request stale: no mode or set-point for %s ms (max %d ms)" % (
            "-" if age is None else fmt_num(age * 1000.0, 0),
            scfg["request_stale_ms"],
        )
        return out
    out["live"] = True
    out["cause"] = ""
    out["voltage_v"] = req.get("voltage_v")
    out["current_a"] = req.get("current_a")
    out["power_w"] = req.get("power_w")
    return out


def _conversion_v(req: dict, ctx: core._Ctx) -> float:
    """Voltage at which W become A: the higher of the requested and the measured (fewer A)."""
    out_v = ctx.value("output_v")
    req_v = _num(req["voltage_v"])
    return max(req_v if req_v is not None else 0.0, out_v if out_v is not None else 0.0, MIN_CONVERSION_V)


def _session_limits(conn: dict, req: dict, scfg: dict, volts: float) -> list:
    """The session rules as limits ``[amps, rule, reason]`` (see the module text)."""
    if not req["live"]:
        if req["stale"] is not None:
            return [[0.0, "request_stale", req["stale"]]]
        return [[0.0, "session", "no session (%s)" % req["cause"]]]
    out = []  # type: list
    req_v = _num(req["voltage_v"])
    min_v = _num(conn.get("hw_min_v"))
    if min_v is not None and req_v is not None and req_v < min_v:
        out.append(
            [0.0, "voltage_range", "requested %s V below the connector minimum %s V" % (fmt_num(req_v), fmt_num(min_v))]
        )
    if req["phase"] in PRECHECK_PHASES:
        out.append(
            [
                scfg["precheck_current_a"],
                "precheck",
                "%s: at most %s A" % (req["phase"], fmt_num(scfg["precheck_current_a"])),
            ]
        )
    power = _num(req["power_w"])
    if power is not None:
        out.append(
            [
                max(0.0, power) / volts,
                "request_power",
                "requested power %s kW at %s V" % (fmt_num(power / 1000.0), fmt_num(volts)),
            ]
        )
    return out


def _hardware_power_limit(conn: dict, volts: float) -> list:
    hw_w = _num(conn.get("hw_max_w"))
    if hw_w is None:
        return []
    return [[hw_w / volts, "hardware_power", "hardware power %s kW at %s V" % (fmt_num(hw_w / 1000.0), fmt_num(volts))]]


# -- the site fuse, once for the cabinet ------------------------------------------------------------------


def _total_output(snapshot: dict, ctxs: dict, names: list) -> list | None:
    """``[t_received, W]``: the cabinet's output power (every connector with a valid measurement of its
    own; a measurement given for the whole cabinet would count once per connector and make room twice)."""
    total_w, t_out = 0.0, None
    for name in names:
        c = ctxs[name]
        own = snapshot["connectors"][name].get("inputs") or {}
        if "output_a" not in own or "output_v" not in own:
            continue
        out_v, out_a = c.value("output_v"), c.value("output_a")
        if out_v is None or out_a is None:
            continue
        total_w += max(0.0, out_v * out_a)
        t_rx = c.inputs["output_a"][1]
        t_out = t_rx if t_out is None or t_rx > t_out else t_out
    return None if t_out is None else [t_out, total_w]


def _charger_w(gstate: dict, rule: dict, t: float, sample: list | None, t_meter: float) -> float:
    """Our own output power as the meter saw it (core ``_charger_w``, for the cabinet's total)."""
    hist = [h for h in gstate["charger_w"] if t - h[0] <= rule["settle_ms"] / 1000.0]
    if sample is not None and (not hist or hist[-1][0] < sample[0]):
        hist.append(sample)
    gstate["charger_w"] = hist
    pick = core._samples_around(hist, t_meter) or hist
    return min([h[1] for h in pick]) if pick else 0.0


def _grid(c: core._Ctx, config: dict, gstate: dict, sample: list | None) -> list | None:
    """``[allowed AC A per phase for the whole cabinet, rule, reason, fault detail or None]``; None without
    a grid meter configured."""
    if not c.snap.get("grid_configured"):
        return None
    rule = config["grid"]
    t = c.t
    meter = core._grid_phases(c)
    if meter is not None:
        phases, t_rx = meter[0], meter[1]
        gstate["ok_t"] = t_rx
        worst, worst_i = core._worst_phase(phases)
        headroom = rule["fuse_a"] - rule["margin_a"] - worst
        charger_ac = _charger_w(gstate, rule, t, sample, t_rx) / rule["efficiency"] / (3.0 * rule["phase_voltage_v"])
        gstate["allowed_ac"] = max(0.0, charger_ac + headroom)
        reason = "site fuse: L%d at %s A of %s A (margin %s A)" % (
            worst_i,
            fmt_num(worst, 0),
            fmt_num(rule["fuse_a"], 0),
            fmt_num(rule["margin_a"], 0),
        )
        return [gstate["allowed_ac"], "grid", reason, None]
    _charger_w(gstate, rule, t, sample, t)  # keep the history current while the meter is silent
    ok_t = gstate["ok_t"]
    since_t, waiting = core.grid_silence(ok_t, gstate.get("wait_t"), t)
    if waiting:
        gstate["wait_t"] = since_t  # the start-up grace: the fault only after meter_loss_ms (core.py)
    lost = t - since_t >= rule["meter_loss_ms"] / 1000.0
    if lost or waiting:
        detail = None
        if lost:
            detail = "grid meter: no good reading for %s ms (max %d ms)" % (
                fmt_num((t - since_t) * 1000.0, 0),
                rule["meter_loss_ms"],
            )
        return [
            rule["fallback_ac_a"],
            "grid_fallback",
            core.grid_fallback_reason(waiting, rule["fallback_ac_a"]),
            detail,
        ]
    if gstate["allowed_ac"] is None:
        return None
    return [
        gstate["allowed_ac"],
        "grid",
        "site fuse: last good meter reading %s ms ago" % fmt_num((t - ok_t) * 1000.0, 0),
        None,
    ]


def _grid_share(grid: list, config: dict, n_share: int, volts: float) -> list:
    """One connector's share of the cabinet's grid allowance, in A at ``volts``."""
    rule = config["grid"]
    share_w = grid[0] * 3.0 * rule["phase_voltage_v"] * rule["efficiency"] / n_share
    reason = grid[2]
    if n_share > 1:
        reason += "; shared by %d connectors" % n_share
    return [share_w / volts, grid[1], reason]


# -- one connector ----------------------------------------------------------------------------------------


def _connector_config(config: dict, conn: dict) -> dict:
    """The limits dict with this connector's hardware maxima (current replaces, voltage at most)."""
    cfg = dict(config)
    hw_a = _num(conn.get("hw_max_a"))
    if hw_a is not None:
        cfg["max_output_current_a"] = hw_a
    hw_v = _num(conn.get("hw_max_v"))
    if hw_v is not None:
        cfg["max_output_voltage_v"] = min(hw_v, config["max_output_voltage_v"])
    return cfg


def _merged_inputs(snapshot: dict, conn: dict) -> dict:
    out = {}
    cab = snapshot.get("inputs") or {}
    for k in cab:
        out[k] = cab[k]
    own = conn.get("inputs") or {}
    for k in own:
        out[k] = own[k]
    return out


def _external_limit(snapshot: dict, conn: dict, n_share: int) -> float | None:
    """The connector's operator limit and its share of the cabinet's."""
    limits = []
    cab = _num(snapshot.get("external_limit_a"))
    if cab is not None:
        limits.append(cab / n_share)
    own = _num(conn.get("external_limit_a"))
    if own is not None:
        limits.append(own)
    return min(limits) if limits else None


def _external_faults(snapshot: dict, conn: dict, req: dict) -> list:
    out = list(snapshot.get("external_faults") or [])
    out.extend(conn.get("external_faults") or [])
    if req["stale"] is not None:
        out.append(["request_stale", req["stale"], False])  # the off-current wait opens the contactor
    return out


def _off_wait(sess: dict, req: dict, ctx: core._Ctx, scfg: dict, t: float) -> str | None:
    """After a session with the contactor closed: None while waiting for the current to fall (the
    contactor stays closed, the modules are off), else the text saying why it may open now."""
    if sess["t_end"] is None:
        sess["t_end"] = t
        sess["cause"] = req["cause"]
    out_a = ctx.value("output_a")
    waited_s = t - sess["t_end"]
    if out_a is not None and out_a < scfg["off_current_a"]:
        return "session ended (%s): output %s A below %s A, contactor opened" % (
            sess["cause"],
            fmt_num(out_a),
            fmt_num(scfg["off_current_a"]),
        )
    if waited_s >= scfg["off_timeout_ms"] / 1000.0 - EPS_S:
        return "session ended (%s): output %s after %d ms (off current %s A), contactor opened anyway" % (
            sess["cause"],
            "not measured" if out_a is None else "still " + fmt_num(out_a) + " A",
            scfg["off_timeout_ms"],
            fmt_num(scfg["off_current_a"]),
        )
    return None


def _session_flag(sess: dict, req: dict, ctx: core._Ctx, scfg: dict, t: float) -> list:
    """``[contactor wanted, ending, event text or None]`` for this evaluation."""
    if req["live"]:
        sess["t_end"] = None
        return [True, False, None]
    if not sess.get("contactor"):
        sess["t_end"] = None
        return [False, False, None]
    done = _off_wait(sess, req, ctx, scfg, t)
    if done is None:
        return [True, True, None]
    sess["t_end"] = None
    return [False, False, done]


def _capability(c: core._Ctx, snap: dict, cfg: dict, volts_max: float) -> list:
    """``[max_current_a, max_power_w]``: what the connector could give now, whatever is requested."""
    blocked = c.tripped or c.stop or c.sensor_fault or c.external_stop
    amps = 0.0 if blocked else _capability_a(c, cfg["max_output_current_a"])
    watts = amps * volts_max
    hw_w = _num(snap.get("hw_max_w"))
    if hw_w is not None and hw_w < watts:
        watts = hw_w
    return [amps, watts]


def _capability_a(c: core._Ctx, amps: float) -> float:
    """The lowest limit of the connector's own rules (not the request's), at most ``amps``."""
    # with the pump off (no session yet) the flow is 0 and derates to 0 A: not what a session would get,
    # since the session starts the pump (its flow trip still guards the session)
    pumping = c.state["pump_since"] is not None
    for item in c.limits:
        if item[1] in REQUEST_RULES or (item[1] == "coolant_flow" and not pumping):
            continue
        if item[0] < amps:
            amps = max(0.0, item[0])
    return amps


def _requested_v(req: dict) -> float | None:
    """The voltage set-point asked for: 0 V outside a session; as received in one (the core clamps it,
    and sends 0 V with a reason for NaN or a negative value)."""
    if not req["live"]:
        return 0.0
    return req["voltage_v"]


def _core_snapshot(name: str, cab: dict, limits: list, flag: list, n_share: int) -> dict:
    """The single-output snapshot of one connector (core.py's shape)."""
    snapshot = cab["snapshot"]
    conn = snapshot["connectors"][name]
    req = cab["requests"][name]
    current = _num(req["current_a"])
    available = conn.get("modules_available", 0)
    return {
        "t": snapshot["t"],
        "inputs": cab["ctxs"][name].inputs,
        "request_a": current if current is not None else 0.0,
        "external_limit_a": _external_limit(snapshot, conn, n_share),
        "stop": bool(snapshot.get("stop")) or bool(conn.get("stop")),
        "voltage_v": _requested_v(req),
        "modules_available": available,
        "module_max_a": conn.get("module_max_a", 0.0),
        "modules_configured": conn.get("modules_configured", available),
        "modules_lost": conn.get("modules_lost") or [],
        "modules_awaited": conn.get("modules_awaited", 0),
        "module_a": conn.get("module_a") or [],
        "modules_alarm": conn.get("modules_alarm") or [],
        "grid_configured": False,  # decided once for the cabinet, passed in ``limits``
        "ambient_configured": snapshot.get("ambient_configured", False),
        "external_faults": _external_faults(snapshot, conn, req),
        "clear": snapshot.get("clear") or [],
        "limits": limits,
        "session": flag[0],
        "uncooled": bool(conn.get("uncooled")),
    }


def _connector(name: str, cab: dict, config: dict, state: dict, grid: list | None, n_live: int) -> dict:
    """One connector through the core's pipeline; returns its decision and working data. Shares (site
    fuse, cabinet limit) are split between the connectors in session; one that is not gets the share it
    would have if it joined (its request keeps it at 0 A; what it could give is its capability)."""
    conn = cab["snapshot"]["connectors"][name]
    t = cab["snapshot"]["t"]
    req = cab["requests"][name]
    ctx_in = cab["ctxs"][name]
    volts = _conversion_v(req, ctx_in)
    limits = _session_limits(conn, req, cab["session"], volts) + _hardware_power_limit(conn, volts)
    n_share = n_live if req["live"] else n_live + 1
    if grid is not None:
        limits.append(_grid_share(grid, config, n_share, volts))
    sess = state["sessions"].get(name)
    sess = dict(sess) if sess is not None else {"contactor": False, "t_end": None, "cause": ""}
    flag = _session_flag(sess, req, ctx_in, cab["session"], t)
    cfg = _connector_config(config, conn)
    cstate = core._copy_state(state["connectors"].get(name) or core.initial_state())
    c = core._Ctx(_core_snapshot(name, cab, limits, flag, n_share), cfg, cstate)
    contactor.check(c, conn, req, cab["session"], contactor.settings(config))  # feedback, pre-charge
    safety_inputs.apply(c, cab["safety"])  # e-stop, door, water, tilt: trips and derating of the cabinet
    extra = {}  # type: dict
    for step in core.STEPS:
        step(c)
        if step is core._apply_rules:
            extra = _output_rules(c, conn, req, config)
    contactor.record(cstate, c.contactor, t)
    cstate["t_prev"] = t
    state["connectors"][name] = cstate
    sess["contactor"] = c.contactor
    state["sessions"][name] = sess
    return {"ctx": c, "decision": core._decision(c), "req": req, "flag": flag, "cfg": cfg, "conn": conn, "extra": extra}


def _output_rules(c: core._Ctx, conn: dict, req: dict, config: dict) -> dict:
    """The connector's own output rules outside the core (isolation.py, overvoltage.py), run right after
    the core's rules: their limits, trips, stops and clear blockers join the core's before the lowest limit
    is taken. Their state lives in the connector's core state (flat dicts, copied with it)."""
    out_v = c.value("output_v")
    iso_state = c.state.get("isolation") or isolation.initial_state()
    ov_state = c.state.get("ov") or overvoltage.initial_state()
    iso = isolation.evaluate(conn.get("imd"), req, out_v, config, iso_state, c.t)
    ov_limits = (_num(conn.get("ev_max_v")), c.cfg["max_output_voltage_v"])
    ov = overvoltage.evaluate(
        out_v, ov_limits[0], ov_limits[1], config, ov_state, c.t, _num(conn.get("ev_emergency_v"))
    )
    c.state["isolation"] = iso_state
    c.state["ov"] = ov_state
    for item in iso["limits"]:
        c.limit(item[0], item[1], item[2])
    for item in iso["trips"] + ov["trips"]:
        c.trip(item[0], item[1], item[2])
    for item in iso["stops"]:  # the IMD lost or faulty in a session: like a lost safety input
        c.faults[item[0]] = item[1]
        c.limit(0.0, "isolation", item[1])
        c.external_stop = True
    for item in iso["warnings"]:
        c.faults[item[0]] = item[1]
    for item in iso["blockers"] + ov["blockers"]:
        c.block(item[0], item[1])
    return {
        "imd": iso["view"],
        "events": iso["events"],
        "over_voltage_v": [ov["view"]["error_v"], ov["view"]["emergency_v"]],
    }


def _mode(r: dict) -> str:
    if r["ctx"].tripped:
        return "Fault"
    return "Export" if r["req"]["live"] or r["flag"][1] else "Off"


def _voltage_reached(r: dict, scfg: dict) -> bool:
    out_v = r["ctx"].value("output_v")
    target = r["decision"]["voltage_v"]
    return out_v is not None and target > 0 and abs(out_v - target) <= scfg["precharge_tolerance_v"]


def _connector_view(r: dict, scfg: dict) -> dict:
    d = r["decision"]
    c = r["ctx"]
    cfg = r["cfg"]
    volts_max = min(cfg["max_output_voltage_v"], cfg["over_voltage"]["max_v"])
    cap = _capability(c, r["conn"], cfg, volts_max)
    reason = d["reason"]
    if r["flag"][2] is not None:
        reason += "; " + r["flag"][2]
    return {
        "limit_a": d["limit_a"],
        "target_a": d["target_a"],
        "voltage_v": d["voltage_v"],
        "enable": d["enable"],
        "contactor": d["contactor"],
        "phase": r["req"]["phase"],
        "mode": _mode(r),
        "ending": r["flag"][1] and d["contactor"],
        "rule": d["rule"],
        "reason": reason,
        "faults": d["faults"],
        "latched": d["latched"],
        "max_current_a": cap[0],
        "max_power_w": cap[1],
        "voltage_reached": _voltage_reached(r, scfg),
        "request_age_s": r["req"]["age_s"],
        "out_of_service": contactor.out_of_service(d["latched"]),
        "imd": r["extra"].get("imd"),
        "over_voltage_v": r["extra"].get("over_voltage_v"),
    }


# -- the cabinet's decision from the connectors' ------------------------------------------------------------


def _merge_faults(results: dict, names: list, cabinet_external: dict, out: dict) -> None:
    """One entry per fault name; a connector's own detail names the connector; equal details once."""
    details = {}  # type: dict  # name -> [detail, ...]
    for name in names:
        c = results[name]["ctx"]
        for fault in sorted(c.faults):
            text = c.faults[fault]
            own = not is_cabinet_fault(fault, cabinet_external, results[name]["conn"].get("inputs") or {})
            if own and len(names) > 1:
                text = "connector %s: %s" % (name, text)
            seen = details.setdefault(fault, [])
            if text not in seen:
                seen.append(text)
    fault_details = {}
    docs = {}
    for fault in details:
        fault_details[fault] = "; ".join(details[fault])
        docs[fault] = core.fault_doc(fault)
    out["faults"] = sorted(fault_details.keys())
    out["fault_details"] = fault_details
    out["fault_docs"] = docs


def _clear_outcome(fault: str, results: dict, names: list) -> list:
    """``[cleared on some connector, [why it stays on each connector where it is latched]]``."""
    why = []
    done = False
    for name in names:
        c = results[name]["ctx"]
        done = done or fault in c.cleared
        for item in c.refused:
            if item[0] == fault and item[1] != "not latched":
                why.append("connector %s: %s" % (name, item[1]) if len(names) > 1 else item[1])
    return [done, why]


def _merge_clears(snapshot: dict, results: dict, names: list, out: dict) -> None:
    """Cleared where the condition is gone; refused where it is latched and still present; "not latched"
    only when no connector had it latched."""
    cleared = []  # type: list
    refused = []  # type: list
    asked = []  # type: list
    for fault in snapshot.get("clear") or []:
        if fault in asked:
            continue
        asked.append(fault)
        done, why = _clear_outcome(fault, results, names)
        if done:
            cleared.append(fault)
        if why:
            refused.append([fault, "; ".join(why)])
        elif not done:
            refused.append([fault, "not latched"])
    out["cleared"] = cleared
    out["clear_refused"] = refused


def _most_limited(results: dict, names: list) -> str | None:
    live = [n for n in names if results[n]["req"]["live"]]
    pool = live if live else names
    best = None
    best_key = None
    for n in pool:
        d = results[n]["decision"]
        key = [d["target_a"], _RULE_RANK.get(d["rule"], 9)]
        if best_key is None or key < best_key:
            best, best_key = n, key
    return best


def _pump(results: dict, names: list) -> bool:
    """On while a cooled connector's pipeline wants it (session or cool-down); one pump serves every cable,
    so a leak on any of them stops it (the core's rule, cabinet-wide)."""
    wanted = False
    for n in names:
        r = results[n]
        if "coolant_leak" in r["decision"]["latched"] or "coolant_leak" in r["ctx"].trips:
            return False
        # a connector without a cable monitor does not need coolant
        wanted = wanted or (r["decision"]["pump"] and not r["conn"].get("uncooled"))
    return wanted


def _sum_outputs(results: dict, names: list) -> dict:
    """The cabinet's outputs from the connectors': sums, any, the highest, the union of the latches."""
    out = {"limit_a": 0.0, "target_a": 0.0, "voltage_v": 0.0, "fan": 0.0}  # type: dict
    out.update({"enable": False, "contactor": False, "pump": _pump(results, names)})
    latched = []  # type: list
    for n in names:
        d = results[n]["decision"]
        out["limit_a"] += d["limit_a"]
        out["target_a"] += d["target_a"]
        out["voltage_v"] = max(out["voltage_v"], d["voltage_v"])
        out["fan"] = max(out["fan"], d["fan"])
        out["enable"] = out["enable"] or d["enable"]
        out["contactor"] = out["contactor"] or d["contactor"]
        latched.extend([f for f in d["latched"] if f not in latched])
    out["latched"] = sorted(latched)
    return out


def _cabinet_fields(results: dict, names: list, views: dict, out: dict) -> None:
    out.update(_sum_outputs(results, names))
    best = _most_limited(results, names)
    if best is None:
        out["rule"], out["reason"] = "session", "no connector"
    else:
        out["rule"] = views[best]["rule"]
        # one connector: the cabinet's reason is the connector's (no name to tell apart)
        reason = views[best]["reason"]
        out["reason"] = "connector %s: %s" % (best, reason) if len(names) > 1 else reason


def _prepare(snapshot: dict, config: dict) -> dict:
    """Per connector: the request as read now and a reader of its inputs (cabinet's merged under its own)."""
    scfg = session_config(config)
    names = sorted((snapshot.get("connectors") or {}).keys())
    requests = {}
    ctxs = {}
    for name in names:
        conn = snapshot["connectors"][name]
        requests[name] = _request(conn, scfg, snapshot["t"])
        reader = {"t": snapshot["t"], "inputs": _merged_inputs(snapshot, conn)}
        ctxs[name] = core._Ctx(reader, _connector_config(config, conn), core.initial_state())
    return {"snapshot": snapshot, "session": scfg, "names": names, "requests": requests, "ctxs": ctxs}


def evaluate_cabinet(snapshot: dict, config: dict, previous_state: dict | None) -> tuple:
    """One evaluation of the whole cabinet: every connector in name order, then the merge (module text)."""
    cab = _prepare(snapshot, config)
    names = cab["names"]
    state = _copy_state(previous_state if previous_state is not None else initial_state(), names)
    n_live = len([n for n in names if cab["requests"][n]["live"]])
    closed = [n for n in names if (state["sessions"].get(n) or {}).get("contactor")]
    cab["safety"] = safety_inputs.evaluate(snapshot, config, state["safety"], n_live > 0 or len(closed) > 0)
    cab_snap = {"t": snapshot["t"], "inputs": snapshot.get("inputs") or {}}
    cab_snap["grid_configured"] = snapshot.get("grid_configured", False)
    grid = _grid(core._Ctx(cab_snap, config, {}), config, state["grid"], _total_output(snapshot, cab["ctxs"], names))
    results = {}
    for name in names:
        results[name] = _connector(name, cab, config, state, grid, n_live)
    return _decision(snapshot, config, cab, results, grid), state


def _decision(snapshot: dict, config: dict, cab: dict, results: dict, grid: list | None) -> dict:
    names = cab["names"]
    cabinet_external = {}  # type: dict
    for item in snapshot.get("external_faults") or []:
        cabinet_external[item[0]] = True
    for name in cab["safety"]["faults"]:
        cabinet_external[name] = True  # the cabinet's inputs: listed once, no connector named
    views = {}
    events = []
    for name in names:
        views[name] = _connector_view(results[name], cab["session"])
        if results[name]["flag"][2] is not None:
            events.append("connector %s: %s" % (name, results[name]["flag"][2]))
        for text in results[name]["extra"].get("events") or []:
            events.append("connector %s: %s" % (name, text))
    out = {"connectors": views, "events": events, "grid_allowed_w": None}  # type: dict
    _merge_faults(results, names, cabinet_external, out)
    _merge_clears(snapshot, results, names, out)
    _cabinet_fields(results, names, views, out)
    if grid is not None:
        rule = config["grid"]
        out["grid_allowed_w"] = grid[0] * 3.0 * rule["phase_voltage_v"] * rule["efficiency"]
        if grid[3] is not None:
            _add_cabinet_fault(out, "grid_meter_lost", grid[3])
    safety_inputs.finish(out, cab["safety"], snapshot)
    return out


def _add_cabinet_fault(out: dict, name: str, detail: str) -> None:
    """A fault the cabinet raises itself (not a connector's pipeline): in the list and every connector's."""
    if name not in out["fault_details"]:
        out["faults"] = sorted(out["faults"] + [name])
    out["fault_details"][name] = detail
    out["fault_docs"][name] = core.fault_doc(name)
    views = out["connectors"]
    for conn in views:
        if name not in views[conn]["faults"]:
            views[conn]["faults"] = sorted(views[conn]["faults"] + [name])
