"""Over-voltage monitoring of one connector by IEC 61851-23 Tables 103 and 104 (software part).

Pure and MicroPython-safe like ``core.py``. Called by ``connectors.py`` once per connector and evaluation
with the measured output voltage, the session's negotiated maximum voltage and its own flat state (kept in
the connector's core state under ``"ov"``). Figures are IEC 61851-23:2023 as quoted by EVerest and vendor
code; all are configuration (:data:`DEFAULTS`, schema in edge/config/isolation.py).

- Emergency limit (Table 103), by the negotiated maximum voltage: the first row of ``emergency_table``
  ``[[max_v, emergency_v], ...]`` whose ``max_v`` is at least the negotiated maximum (defaults <= 500 V ->
  550 V, <= 750 V -> 825 V, <= 850 V -> 935 V, <= 1000 V -> 1100 V; above the last row 110 %). The
  standard's 9 ms emergency shutdown is the hardware's (docs/SAFETY.md); this software path is its backup:
  above the limit for ``emergency_time_ms`` -> ``over_voltage_emergency``.
- Error limit (Table 104): the negotiated maximum itself; above it for ``error_time_ms`` (the standard
  allows 200-400 ms) -> ``over_voltage_error``. Only with a negotiated maximum (``ev_max_v`` of the
  connector's snapshot, from the charging controller: EVerest's over_voltage_monitor ``set_limits``
  ``error_limit_V`` while it monitors, its ``emergency_limit_V`` as ``ev_emergency_v``); without one the core's ``over_voltage`` rule (the
  cabinet's configured maximum, limits.over_voltage) is the error rule, and the emergency limit is taken
  from the connector's maximum voltage.

Both stop the output (0 A, contactor open) and latch when ``latch`` (EVerest's MREC5OverVoltage clears
only on an explicit reset); a clear is refused while the output is still above the limit.

Result: ``{"trips": [[name, detail, latch]], "blockers": [[name, why]], "view": {"error_v", "emergency_v"}}``.
"""

try:
    from . import core
except ImportError:  # imported by path as a plain module (safety MCU, tests/vectors/runner.py)
    import core  # type: ignore[import-not-found,no-redef]

fmt_num = core.fmt_num

DEFAULTS = {
    "emergency_table": [[500.0, 550.0], [750.0, 825.0], [850.0, 935.0], [1000.0, 1100.0]],
    "above_table_factor": 1.1,  # emergency limit above the last row: this x the negotiated maximum
    "error_time_ms": 400,  # Table 104: above the negotiated maximum this long -> error shutdown
    "emergency_time_ms": 50,  # software backup of the 9 ms hardware emergency shutdown
    "latch": True,
}


def config_of(config: dict) -> dict:
    """The ``over_voltage_monitor`` section of ``config`` with :data:`DEFAULTS` for what it lacks."""
    out = dict(DEFAULTS)
    given = config.get("over_voltage_monitor") or {}
    for k in given:
        out[k] = given[k]
    return out


def emergency_limit_v(max_v: float, cfg: dict) -> float:
    """Table 103: the emergency limit for a negotiated maximum voltage."""
    for row in cfg["emergency_table"]:
        if max_v <= row[0]:
            return row[1]
    return max_v * cfg["above_table_factor"]


def initial_state() -> dict:
    return {"error_t": None, "emergency_t": None}


def _held(state: dict, key: str, over: bool, t: float, limit_ms: int) -> bool:
    """True when ``over`` has held for ``limit_ms`` (``state[key]``: when it started)."""
    if not over:
        state[key] = None
        return False
    if state[key] is None:
        state[key] = t
    return (t - state[key]) * 1000.0 >= limit_ms - core.EPS_S * 1000.0


def _check(out: dict, state: dict, name: str, volts: float, limit_v: float | None, t: float, time_ms: int,
           latch: bool) -> None:  # fmt: skip
    if limit_v is None:
        _held(state, name + "_t", False, t, time_ms)
        return
    over = volts > limit_v
    if _held(state, name + "_t", over, t, time_ms):
        detail = "output %s V above %s V for %d ms" % (fmt_num(volts), fmt_num(limit_v), time_ms)
        out["trips"].append(["over_voltage_" + name, detail, latch])
    if over:
        out["blockers"].append(
            ["over_voltage_" + name, "output %s V still above %s V" % (fmt_num(volts), fmt_num(limit_v))]
        )


def evaluate(out_v: float | None, ev_max_v: float | None, connector_max_v: float, config: dict, state: dict,
             t: float, ev_emergency_v: float | None = None) -> dict:  # fmt: skip
    """One evaluation of one connector (see the module text); ``state`` is changed in place.
    ``ev_emergency_v``: the charging controller's own emergency limit (EVerest's over_voltage_monitor
    set_limits); it replaces Table 103 when given with a negotiated maximum."""
    cfg = config_of(config)
    negotiated = ev_max_v if ev_max_v is not None and ev_max_v > 0 else None
    error_v = negotiated
    emergency_v = emergency_limit_v(negotiated if negotiated is not None else connector_max_v, cfg)
    if negotiated is not None and ev_emergency_v is not None and ev_emergency_v >= negotiated:
        emergency_v = ev_emergency_v
    out = {"trips": [], "blockers": [], "view": {"error_v": error_v, "emergency_v": emergency_v}}  # type: dict
    volts = out_v if out_v is not None else 0.0
    _check(out, state, "error", volts, error_v, t, cfg["error_time_ms"], cfg["latch"])
    _check(out, state, "emergency", volts, emergency_v, t, cfg["emergency_time_ms"], cfg["latch"])
    return out
