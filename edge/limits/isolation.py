"""Insulation monitoring of one connector: the cable check of a session and the insulation while charging.

Pure and MicroPython-safe like ``core.py`` (no I/O, no clock, builtin types only). Called by
``connectors.py`` once per connector and evaluation with that connector's IMD reading, the phase of its
charging controller's request, the measured output voltage and its own flat state (kept in the
connector's core state under ``"isolation"``). Numbers are IEC 61851-23 figures as quoted by EVerest and
vendor code; every one is configuration (:data:`DEFAULTS`, schema in edge/config/isolation.py).

Snapshot per connector: ``"imd": {"ohm": float|None, "t": s of the reading, "status": "ok"|"fault"|
"stale"|"self_test", "self_test": None|"running"|"passed"|"failed", "voltage_v": float|None (optional: the
voltage the IMD measures)}``; absent when no IMD watches the
connector (then nothing here runs: the charging controller's own IMD does the cable check). With
``"everest": True`` the IMD is served to EVerest (isolation_monitor API): EVerest runs the cable check and
decides, so the cable-check rules here are off; the IMD-lost / device-fault stop and the Charging rules
still apply.

Cable check (phase ``CableCheck``, request live): the IMD's self-test (``self_test``), then
``samples`` readings taken while the output is within ``check_tolerance_v`` of the requested check voltage
(:func:`cable_check_voltage`), each at least ``cable_check_min_ohm``. One reading below it or a failed
self-test: ``cable_check_failed`` (0 A, contactor open) for the rest of the session. PreCharge and
Charging need a passed check of this session and, before the first ampere of PreCharge, the output once
below ``safe_voltage_v`` after it.

Charging: a reading below ``fault_ohm_per_v`` x the output voltage stops the session with
``isolation_fault`` (latched by ``latch``; a clear is refused while the insulation is still below
``cable_check_min_ohm``); below ``warning_ohm_per_v`` x V: ``isolation_warning`` (listed, no stop).
The IMD silent for ``stale_ms`` or reporting a device fault in a session: ``isolation_monitor_lost`` /
``isolation_monitor_fault`` (0 A, contactor open, not latched).

Result: ``{"limits": [[amps, rule, reason]], "trips": [[name, detail, latch]], "stops": [[name, detail]],
"warnings": [[name, detail]], "blockers": [[name, why]], "events": [text], "view": dict}``; ``view`` also
carries the commands for the IMD: ``measure`` (in a session) and ``self_test`` (run one now).
"""

try:
    from . import core
except ImportError:  # imported by path as a plain module (safety MCU, tests/vectors/runner.py)
    import core  # type: ignore[import-not-found,no-redef]

fmt_num = core.fmt_num

DEFAULTS = {
    "cable_check_min_ohm": 100000.0,  # cable check fault below this (IEC 61851-23:2023: 100 kOhm)
    "fault_ohm_per_v": 100.0,  # Charging: stop below this x output voltage
    "warning_ohm_per_v": 500.0,  # Charging: warning below this x output voltage
    "samples": 3,  # good readings at the check voltage for a passed cable check
    "self_test": True,  # run the IMD's self-test at the start of each cable check
    "self_test_timeout_ms": 30000,  # Bender units take up to ~20 s
    "stale_ms": 3000,  # an IMD reading older than this in a session: isolation_monitor_lost
    "check_tolerance_v": 20.0,  # readings count only with the output this close to the check voltage
    "safe_voltage_v": 60.0,  # before PreCharge (and unlocking) the output must have been below this
    "latch": True,  # isolation_fault stays until cleared with the insulation good again
}
SESSION_PHASES = ("CableCheck", "PreCharge", "Charging")
IDLE, SELF_TEST, SAMPLING, PASSED, FAILED = "idle", "self_test", "sampling", "passed", "failed"


def config_of(config: dict) -> dict:
    """The ``isolation`` section of ``config`` with :data:`DEFAULTS` for what it lacks."""
    out = dict(DEFAULTS)
    given = config.get("isolation") or {}
    for k in given:
        out[k] = given[k]
    return out


def cable_check_voltage(ev_max_v: float, supply_max_v: float) -> float:
    """The IEC 61851-23 cable-check voltage for a vehicle's maximum voltage, within the supply's maximum:
    EV max <= 500 V: min(EV max + 50 V, 500 V); above: 1.1 x EV max."""
    volts = min(ev_max_v + 50.0, 500.0) if ev_max_v <= 500.0 else 1.1 * ev_max_v
    return min(volts, supply_max_v)


def initial_state() -> dict:
    return {
        "phase": "Other",
        "check": IDLE,
        "n": 0,
        "t0": 0.0,
        "t_last": None,
        "detail": "",
        "discharged": False,
        "test_seen": False,
        "start_t": None,  # the first evaluation: a monitor not heard yet is awaited for stale_ms from here
    }


def _kohm(ohm: float) -> str:
    return fmt_num(ohm / 1000.0) + " kOhm"


def _result() -> dict:
    return {"limits": [], "trips": [], "stops": [], "warnings": [], "blockers": [], "events": []}


def _fresh_ohm(imd: dict, cfg: dict, t: float) -> float | None:
    """The resistance when the reading is fresh, valid and from a device without a fault."""
    ohm = imd.get("ohm")
    rx = imd.get("t")
    if imd.get("status") != "ok" or ohm is None or ohm != ohm or rx is None:
        return None
    if (t - rx) * 1000.0 > cfg["stale_ms"] + core.EPS_S * 1000.0:
        return None
    return float(ohm)


def _lowest_v(imd: dict, out_v: float | None, cfg: dict, t: float) -> float:
    """The lower of the measured output voltage and the IMD's own (fresh) voltage reading: the IMD is often
    read more often than the modules, so the output's short dip below the safe voltage is seen sooner."""
    low = out_v if out_v is not None else 1e9
    imd_v = imd.get("voltage_v")
    rx = imd.get("t")
    if imd_v is not None and imd_v == imd_v and rx is not None and (t - rx) * 1000.0 <= cfg["stale_ms"]:
        low = min(low, imd_v)
    return low


def _device_problem(imd: dict, cfg: dict, t: float, start_t: float) -> list | None:
    """``[fault, detail]`` when the IMD cannot be trusted now (silent, stale, device fault), else None. Not heard
    yet within ``stale_ms`` of the first evaluation: awaited, no fault (a cable check needs its readings anyway)."""
    rx = imd.get("t")
    if imd.get("status") == "fault":
        return ["isolation_monitor_fault", "isolation monitor reports a device fault"]
    if rx is None and (t - start_t) * 1000.0 <= cfg["stale_ms"] + core.EPS_S * 1000.0:
        return None
    if rx is None or imd.get("status") == "stale" or (t - rx) * 1000.0 > cfg["stale_ms"] + core.EPS_S * 1000.0:
        age = "no reading" if rx is None else "last reading %s ms ago" % fmt_num((t - rx) * 1000.0, 0)
        return ["isolation_monitor_lost", "isolation monitor silent: %s (max %d ms)" % (age, cfg["stale_ms"])]
    return None


def _follow_phase(st: dict, phase: str, t: float, cfg: dict) -> None:
    """A new CableCheck starts a new check; leaving the session phases forgets it."""
    if phase == "CableCheck" and st["phase"] != "CableCheck" and st["check"] != FAILED:
        st["check"] = SELF_TEST if cfg["self_test"] else SAMPLING
        st["n"], st["t0"], st["t_last"], st["detail"], st["discharged"] = 0, t, None, "", False
        st["test_seen"] = False
    if phase not in SESSION_PHASES:
        st["check"], st["n"], st["t_last"], st["detail"], st["discharged"] = IDLE, 0, None, "", False
    st["phase"] = phase


def _fail(st: dict, detail: str, out: dict) -> None:
    st["check"], st["detail"] = FAILED, detail
    out["events"].append("cable check failed: " + detail)


def _self_test(st: dict, imd: dict, cfg: dict, t: float, out: dict) -> None:
    """A result counts only after the IMD reported no result or a running test in this check (a result
    left from the last session's test is not this session's)."""
    result = imd.get("self_test")
    if result not in ("passed", "failed"):
        st["test_seen"] = True
        result = None
    elif not st["test_seen"]:
        result = None
    if result == "passed":
        st["check"] = SAMPLING
    elif result == "failed":
        _fail(st, "isolation monitor self-test failed", out)
    elif (t - st["t0"]) * 1000.0 >= cfg["self_test_timeout_ms"] - core.EPS_S * 1000.0:
        _fail(st, "isolation monitor self-test not done within %d ms" % cfg["self_test_timeout_ms"], out)


def _sample(st: dict, imd: dict, ohm: float | None, out_v: float | None, check_v: float | None, cfg: dict) -> None:
    """Count one new reading taken at the check voltage."""
    rx = imd.get("t")
    if ohm is None or out_v is None or check_v is None or (st["t_last"] is not None and rx <= st["t_last"]):
        return
    if abs(out_v - check_v) > cfg["check_tolerance_v"]:
        return
    st["t_last"] = rx
    if ohm < cfg["cable_check_min_ohm"]:
        st["check"] = FAILED
        st["detail"] = "insulation %s below %s at %s V" % (
            _kohm(ohm),
            _kohm(cfg["cable_check_min_ohm"]),
            fmt_num(out_v),
        )
        return
    st["n"] += 1
    if st["n"] >= cfg["samples"]:
        st["check"] = PASSED


def _cable_check(st: dict, imd: dict, ohm: float | None, out_v: float | None, check_v: float | None, cfg: dict,
                 t: float, out: dict) -> None:  # fmt: skip
    if st["check"] == SELF_TEST:
        _self_test(st, imd, cfg, t, out)
    if st["check"] == SAMPLING:
        _sample(st, imd, ohm, out_v, check_v, cfg)
        if st["check"] == FAILED:
            out["events"].append("cable check failed: " + st["detail"])
        elif st["check"] == PASSED:
            out["events"].append(
                "cable check passed: %d readings of at least %s at %s V"
                % (cfg["samples"], _kohm(cfg["cable_check_min_ohm"]), fmt_num(check_v if check_v else 0.0))
            )


def _before_current(st: dict, phase: str, out_v: float | None, cfg: dict, out: dict) -> None:
    """PreCharge and Charging only after a passed check and the output once below the safe voltage."""
    if st["check"] != PASSED:
        out["limits"].append([0.0, "cable_check", "%s without a passed cable check this session" % phase])
    elif not st["discharged"] and phase == "PreCharge":
        shown = "not measured" if out_v is None else fmt_num(out_v) + " V"
        out["limits"].append(
            [
                0.0,
                "cable_check",
                "output %s not yet below %s V after the cable check" % (shown, fmt_num(cfg["safe_voltage_v"])),
            ]
        )


def _charging(ohm: float | None, out_v: float | None, cfg: dict, out: dict) -> None:
    if ohm is None or out_v is None or out_v < 1.0:
        return
    fault_ohm = cfg["fault_ohm_per_v"] * out_v
    warn_ohm = cfg["warning_ohm_per_v"] * out_v
    if ohm < fault_ohm:
        out["trips"].append(
            [
                "isolation_fault",
                "insulation %s below %s Ohm/V x %s V = %s"
                % (_kohm(ohm), fmt_num(cfg["fault_ohm_per_v"], 0), fmt_num(out_v), _kohm(fault_ohm)),
                cfg["latch"],
            ]
        )
    elif ohm < warn_ohm:
        out["warnings"].append(
            [
                "isolation_warning",
                "insulation %s below %s Ohm/V x %s V = %s"
                % (_kohm(ohm), fmt_num(cfg["warning_ohm_per_v"], 0), fmt_num(out_v), _kohm(warn_ohm)),
            ]
        )


def _in_session(st: dict, imd: dict, request: dict, phase: str, ohm: float | None, out_v: float | None,
                cfg: dict, t: float, out: dict) -> None:  # fmt: skip
    """The rules of a live request in a session phase."""
    problem = _device_problem(imd, cfg, t, st["start_t"])
    if problem is not None:
        out["stops"].append(problem)
    if imd.get("everest"):
        pass  # served to EVerest (isolation_monitor API): its cable check, its verdict
    elif phase == "CableCheck":
        _cable_check(st, imd, ohm, out_v, request.get("voltage_v"), cfg, t, out)
    else:
        _before_current(st, phase, out_v, cfg, out)
    if phase == "Charging":
        _charging(ohm, out_v, cfg, out)


def _held(st: dict, ohm: float | None, cfg: dict, out: dict) -> None:
    """A failed check holds for the rest of the session; a low insulation keeps isolation_fault latched."""
    if st["check"] == FAILED:
        out["trips"].append(["cable_check_failed", st["detail"], False])
    if ohm is not None and ohm < cfg["cable_check_min_ohm"]:
        why = "insulation still %s (below %s)" % (_kohm(ohm), _kohm(cfg["cable_check_min_ohm"]))
        out["blockers"].append(["isolation_fault", why])


def _view(st: dict, imd: dict, phase: str) -> dict:
    return {
        "ohm": imd.get("ohm"),
        "status": imd.get("status"),
        "cable_check": st["check"],
        "samples": st["n"],
        "measure": phase in SESSION_PHASES,
        "self_test": st["check"] == SELF_TEST and phase == "CableCheck" and not imd.get("everest"),
    }


def evaluate(imd: dict | None, request: dict, out_v: float | None, config: dict, state: dict, t: float) -> dict:
    """One evaluation of one connector (see the module text). ``request``: connectors.py's reading of the
    request (``live``, ``phase``, ``voltage_v``); ``state`` is changed in place."""
    out = _result()
    out["view"] = None
    if imd is None:
        return out
    cfg = config_of(config)
    if state.get("start_t") is None:
        state["start_t"] = t
    phase = request["phase"] if request["phase"] in SESSION_PHASES else "Other"
    _follow_phase(state, phase, t, cfg)
    ohm = _fresh_ohm(imd, cfg, t)
    if _lowest_v(imd, out_v, cfg, t) < cfg["safe_voltage_v"]:
        state["discharged"] = state["check"] == PASSED or state["discharged"]
    if request["live"] and phase in SESSION_PHASES:
        _in_session(state, imd, request, phase, ohm, out_v, cfg, t, out)
    _held(state, ohm, cfg, out)
    out["view"] = _view(state, imd, phase)
    return out
