"""Pure safety core: ``evaluate(snapshot, config, previous_state) -> (decision, state)``.

Runs unchanged under CPython and MicroPython: no imports, no I/O, no clock (time comes in the
snapshot as ``t``, seconds), only dicts, lists, floats and strings. The same scenario vectors are run
under both interpreters by the test suite and must give identical decisions.

Snapshot (all temperatures in °C, currents in A, voltages in V, flow in l/min)::

    {"t": 12.3,                                # monotonic seconds
     "inputs": {"pin_dc_plus_c": [value, t_received, "ok"|"stale"|"invalid"], ...},
     "request_a": 200.0,                       # current the vehicle/charging controller asks for
     "external_limit_a": None or A,            # CLI/cloud limit (can only lower)
     "stop": False,                            # CLI/cloud stop
     "voltage_v": 400.0,                       # output voltage set-point, for the grid power balance
     "modules_available": 4, "module_max_a": 50.0,
     "grid_configured": True,
     "clear": ["coolant_flow_low"]}            # explicit clear requests this tick

Safety inputs (``pin_dc_plus_c``, ``pin_dc_minus_c``, ``coolant_out_c``, ``coolant_flow_lpm``) that are
missing, stale (older than ``sensor_stale_ms``) or invalid force 0 A in the same evaluation.
Optional inputs (``module_temp_c``, ``ambient_c``) only count when present.
Grid inputs: ``grid_l1_a``, ``grid_l2_a``, ``grid_l3_a``; output measurements ``output_v``, ``output_a``.

Decision::

    {"limit_a", "enable", "contactor", "pump", "fan", "faults", "reason", "rule", "cleared", "clear_refused"}
"""

SAFETY_INPUTS = ("pin_dc_plus_c", "pin_dc_minus_c", "coolant_out_c", "coolant_flow_lpm")
TEMP_RATE_INPUTS = ("pin_dc_plus_c", "pin_dc_minus_c", "coolant_out_c")
SENSOR = {
    "pin_dc_plus_c": "pin_dc_plus",
    "pin_dc_minus_c": "pin_dc_minus",
    "coolant_out_c": "coolant_out",
    "coolant_flow_lpm": "coolant_flow",
    "module_temp_c": "module_temp",
    "ambient_c": "ambient",
}
PUMP_COOLDOWN_S = 60.0  # keep coolant moving after a session so pins cool down

LABELS = {
    "pin_dc_plus_c": "cable DC+ pin",
    "pin_dc_minus_c": "cable DC- pin",
    "coolant_out_c": "coolant outlet",
    "coolant_flow_lpm": "coolant flow",
    "module_temp_c": "power module",
    "ambient_c": "cabinet ambient",
}


def initial_state():
    return {
        "latched": {},  # fault -> detail, kept until cleared with the condition gone
        "applied_a": 0.0,
        "t_prev": None,
        "t_reduced": None,  # last time the limit went down (hold timer for increases)
        "timers": {},  # condition -> t it started (over-current, over-voltage, flow low)
        "last": {},  # input -> [value, t] of the last accepted sample (rate of change)
        "grid_ok_t": None,
        "grid_limit_a": None,
        "pump_until": -1.0,
        "pump_since": None,
    }


def _fresh(snapshot, name, stale_s):
    """Value of a safety input, or None when missing, stale or invalid."""
    entry = snapshot["inputs"].get(name)
    if entry is None:
        return None
    value, t_rx, quality = entry[0], entry[1], entry[2]
    if quality != "ok" or snapshot["t"] - t_rx > stale_s or value != value:  # NaN check
        return None
    return value


def _derate(value, start, end, full_a):
    """Linear from ``full_a`` at ``start`` to 0 A at ``end`` (temperatures: rising is worse)."""
    if value <= start:
        return full_a
    if value >= end:
        return 0.0
    return full_a * (end - value) / (end - start)


def _derate_low(value, start, end, full_a):
    """Linear from ``full_a`` at ``start`` down to 0 A at ``end`` < start (flow: falling is worse)."""
    if value >= start:
        return full_a
    if value <= end:
        return 0.0
    return full_a * (value - end) / (start - end)


def _timer(state, key, active, t, limit_s):
    """True when ``active`` has held for longer than ``limit_s``."""
    timers = state["timers"]
    if not active:
        if key in timers:
            del timers[key]
        return False
    if key not in timers:
        timers[key] = t
    return t - timers[key] >= limit_s


def evaluate(snapshot, config, previous_state):
    state = previous_state if previous_state is not None else initial_state()
    state = _copy_state(state)
    t = snapshot["t"]
    hw_max = config["max_output_current_a"]
    stale_s = config["sensor_stale_ms"] / 1000.0
    faults = {}  # active now: name -> detail
    trips = {}  # conditions that latch when their rule says so: name -> (detail, latch)
    limits = []  # (amps, rule, reason)

    # -- requested and external limits ------------------------------------------------------------
    request = snapshot.get("request_a", 0.0)
    limits.append((hw_max, "hardware", "hardware limit %.0f A" % hw_max))
    limits.append((request, "request", "vehicle request %.0f A" % request))
    ext = snapshot.get("external_limit_a")
    if ext is not None:
        limits.append((max(0.0, ext), "external", "external limit %.0f A (CLI/cloud)" % ext))
    cap = snapshot.get("modules_available", 0) * snapshot.get("module_max_a", 0.0)
    limits.append((cap, "modules", "%d power module(s) available" % snapshot.get("modules_available", 0)))
    if snapshot.get("modules_available", 0) == 0:
        faults["all_modules_lost"] = "no power module available"

    # -- safety inputs: presence, freshness, plausibility -----------------------------------------
    vals = {}
    for name in SAFETY_INPUTS:
        v = _fresh(snapshot, name, stale_s)
        if v is None:
            entry = snapshot["inputs"].get(name)
            why = "missing" if entry is None else ("invalid" if entry[2] == "invalid" else "stale")
            faults[SENSOR[name] + "_" + why] = "%s %s (no valid value within %d ms)" % (LABELS[name], why, config["sensor_stale_ms"])
            limits.append((0.0, "sensor", "%s %s" % (LABELS[name], why)))
        else:
            vals[name] = v
    plaus = config["plausibility"]
    for name in TEMP_RATE_INPUTS:
        if name in vals:
            last = state["last"].get(name)
            if last is not None and t > last[1]:
                rate = abs(vals[name] - last[0]) / (t - last[1])
                if rate > plaus["max_rate_c_per_s"]:
                    trips[SENSOR[name] + "_implausible"] = (
                        "%s changed %.1f °C/s (max %.1f)" % (LABELS[name], rate, plaus["max_rate_c_per_s"]),
                        plaus["latch"])
            state["last"][name] = [vals[name], t]
    if "pin_dc_plus_c" in vals and "pin_dc_minus_c" in vals:
        diff = abs(vals["pin_dc_plus_c"] - vals["pin_dc_minus_c"])
        if diff > plaus["pin_disagree_c"]:
            trips["pins_disagree"] = ("DC+ and DC- pins differ by %.1f °C (max %.1f)" % (diff, plaus["pin_disagree_c"]),
                                      plaus["latch"])

    # -- temperature rules ------------------------------------------------------------------------
    pin = config["pin_temperature"]
    for name in ("pin_dc_plus_c", "pin_dc_minus_c"):
        if name in vals:
            _temperature(vals[name], pin, hw_max, name, "pin_over_temperature", limits, trips)
    if "coolant_out_c" in vals:
        _temperature(vals["coolant_out_c"], config["coolant_temperature"], hw_max, "coolant_out_c",
                     "coolant_over_temperature", limits, trips)
    for name, rule, fault in (("module_temp_c", "module_temperature", "module_over_temperature"),
                              ("ambient_c", "ambient_temperature", "ambient_over_temperature")):
        if name in snapshot["inputs"]:
            v = _fresh(snapshot, name, max(stale_s, 5.0))
            if v is None:
                faults[SENSOR[name] + "_stale"] = "%s temperature not available" % LABELS[name]
                limits.append((0.0, "sensor", "%s temperature not available" % LABELS[name]))
            else:
                _temperature(v, config[rule], hw_max, name, fault, limits, trips)

    # -- coolant flow (only meaningful while the pump runs) -----------------------------------------
    flow_rule = config["coolant_flow"]
    if "coolant_flow_lpm" in vals:
        flow = vals["coolant_flow_lpm"]
        pumping = state["pump_since"] is not None
        if pumping:
            limits.append((_derate_low(flow, flow_rule["derate_start_lpm"], flow_rule["derate_end_lpm"], hw_max),
                           "coolant_flow", "coolant flow %.2f l/min (derating %.1f-%.1f l/min)"
                           % (flow, flow_rule["derate_start_lpm"], flow_rule["derate_end_lpm"])))
        if _timer(state, "flow_low", pumping and flow < flow_rule["trip_lpm"], t, flow_rule["trip_delay_ms"] / 1000.0):
            trips["coolant_flow_low"] = ("coolant flow %.2f l/min below %.2f for %d ms"
                                         % (flow, flow_rule["trip_lpm"], flow_rule["trip_delay_ms"]), flow_rule["latch"])

    # -- output over-current / over-voltage ---------------------------------------------------------
    oc = config["over_current"]
    out_a = _fresh(snapshot, "output_a", max(stale_s, 2.0))
    if out_a is not None and _timer(state, "over_current", out_a > state["applied_a"] + oc["tolerance_a"], t,
                                    oc["time_ms"] / 1000.0):
        trips["over_current"] = ("output %.1f A above limit %.1f A + %.1f A for %d ms"
                                 % (out_a, state["applied_a"], oc["tolerance_a"], oc["time_ms"]), oc["latch"])
    ov = config["over_voltage"]
    out_v = _fresh(snapshot, "output_v", max(stale_s, 2.0))
    max_v = min(ov["max_v"], config["max_output_voltage_v"])
    if out_v is not None and _timer(state, "over_voltage", out_v > max_v, t, ov["time_ms"] / 1000.0):
        trips["over_voltage"] = ("output %.1f V above %.1f V for %d ms" % (out_v, max_v, ov["time_ms"]), ov["latch"])

    # -- grid: dynamic load management --------------------------------------------------------------
    if snapshot.get("grid_configured"):
        _grid(snapshot, config["grid"], state, t, out_v, out_a, limits, faults)

    # -- latches and clears -------------------------------------------------------------------------
    latched = state["latched"]
    for name in trips:
        detail, latch = trips[name]
        faults[name] = detail
        if latch and name not in latched:
            latched[name] = detail
    cleared, refused = [], []
    for name in snapshot.get("clear", []):
        if name not in latched:
            refused.append([name, "not latched"])
        elif name in trips:
            refused.append([name, "condition still present: " + trips[name][0]])
        else:
            del latched[name]
            cleared.append(name)
    for name in latched:
        if name not in faults:
            faults[name] = latched[name] + " (latched)"

    # -- combine ------------------------------------------------------------------------------------
    stop = snapshot.get("stop", False)
    tripped = len(latched) > 0 or len(trips) > 0
    best = limits[0]
    for item in limits:
        if item[0] < best[0]:
            best = item
    target = max(0.0, best[0])
    rule, reason = best[1], best[2]
    if tripped:
        target, rule = 0.0, "trip"
        names = sorted(list(latched.keys()) + [n for n in trips if n not in latched])
        reason = "tripped: " + ", ".join(names)
    elif stop:
        target, rule, reason = 0.0, "stop", "stopped by operator"

    applied = _ramp(state, target, t, config)
    enable = applied > 0.0 and not tripped and not stop
    # pump: whenever current is wanted or flowing, and for a cool-down after
    wants = request > 0 and not tripped and not stop
    if wants or enable:
        state["pump_until"] = t + PUMP_COOLDOWN_S
    pump = wants or enable or t < state["pump_until"]
    if pump and state["pump_since"] is None:
        state["pump_since"] = t
    elif not pump:
        state["pump_since"] = None
    fan = 1.0 if enable else (0.3 if pump else 0.0)

    state["t_prev"] = t
    decision = {
        "limit_a": applied,
        "target_a": target,
        "enable": enable,
        "contactor": enable,
        "pump": pump,
        "fan": fan,
        "faults": sorted(faults.keys()),
        "fault_details": faults,
        "latched": sorted(latched.keys()),
        "rule": rule,
        "reason": reason,
        "cleared": cleared,
        "clear_refused": refused,
    }
    return decision, state


def _temperature(value, rule, hw_max, name, fault, limits, trips):
    limits.append((_derate(value, rule["derate_start_c"], rule["derate_end_c"], hw_max), name,
                   "%s %.1f °C (derating %.0f-%.0f °C)" % (LABELS[name], value, rule["derate_start_c"],
                                                           rule["derate_end_c"])))
    if value > rule["trip_c"]:
        trips[fault] = ("%s %.1f °C above trip %.1f °C" % (LABELS[name], value, rule["trip_c"]), rule["latch"])


def _grid(snapshot, rule, state, t, out_v, out_a, limits, faults):
    phases = []  # type: list
    valid = True
    for name in ("grid_l1_a", "grid_l2_a", "grid_l3_a"):
        entry = snapshot["inputs"].get(name)
        if entry is None or entry[2] != "ok" or entry[0] != entry[0]:
            valid = False
            break
        phases.append(entry[0])
    volts = max(snapshot.get("voltage_v", 0.0), out_v if out_v is not None else 0.0, 50.0)
    per_phase_to_dc = 3.0 * rule["phase_voltage_v"] * rule["efficiency"] / volts
    if valid:
        state["grid_ok_t"] = t
        worst = max(phases)
        headroom = rule["fuse_a"] - rule["margin_a"] - worst
        charger_ac = 0.0
        if out_v is not None and out_a is not None:
            charger_ac = out_v * out_a / rule["efficiency"] / (3.0 * rule["phase_voltage_v"])
        allowed_ac = max(0.0, charger_ac + headroom)
        state["grid_limit_a"] = allowed_ac * per_phase_to_dc
        worst_i = phases.index(worst) + 1
        limits.append((state["grid_limit_a"], "grid", "site fuse: L%d at %.0f A of %.0f A" % (worst_i, worst, rule["fuse_a"])))
        return
    lost_for = t - state["grid_ok_t"] if state["grid_ok_t"] is not None else None
    if lost_for is None or lost_for * 1000.0 >= rule["meter_loss_ms"]:
        faults["grid_meter_lost"] = "grid meter silent; fallback %.0f A per phase" % rule["fallback_ac_a"]
        limits.append((rule["fallback_ac_a"] * per_phase_to_dc, "grid_fallback",
                       "grid meter lost: fallback %.0f A per phase" % rule["fallback_ac_a"]))
    elif state["grid_limit_a"] is not None:
        limits.append((state["grid_limit_a"], "grid", "site fuse (last good meter reading)"))


def _ramp(state, target, t, config):
    applied = state["applied_a"]
    if state["t_reduced"] is None:
        state["t_reduced"] = t
    if target < applied:
        state["applied_a"] = target
        state["t_reduced"] = t
        return target
    if target > applied:
        if t - state["t_reduced"] < config["raise_hold_ms"] / 1000.0:
            return applied
        dt = t - state["t_prev"] if state["t_prev"] is not None else 0.0
        applied = min(target, applied + config["ramp_up_a_per_s"] * max(0.0, dt))
        state["applied_a"] = applied
    return applied


def _copy_state(state):
    out = {}
    for k in state:
        v = state[k]
        if isinstance(v, dict):
            v2 = {}
            for k2 in v:
                v2[k2] = list(v[k2]) if isinstance(v[k2], list) else v[k2]
            out[k] = v2
        else:
            out[k] = v
    return out
