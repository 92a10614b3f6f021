"""Pure safety core: ``evaluate(snapshot, config, previous_state) -> (decision, state)``.

Runs unchanged under CPython and MicroPython (so the same rules can run on a safety MCU beside the
Linux board): no imports, no I/O, no clock (time comes in the snapshot as ``t``, seconds), only dicts,
lists, floats, ints and strings; annotations use builtin types only (MicroPython never evaluates them).
MicroPython dicts are unordered, so every output that depends on order is sorted. Numbers in texts are
formatted by :func:`fmt_num` (integer arithmetic), never by ``%f``, so both interpreters print the same.
The test suite runs the scenario vectors in ``tests/vectors`` under both and compares the decisions.

Snapshot (temperatures °C, currents A, voltages V, flow l/min, times s)::

    {"t": 12.3,                                    # monotonic seconds
     "inputs": {"pin_dc_plus_c": [value, t_received, "ok"|"stale"|"invalid"], ...},
     "request_a": 200.0,                           # what the vehicle / charging controller asks for
     "external_limit_a": None or A,                # CLI / cloud limit (can only lower)
     "stop": False,                                # CLI / cloud stop
     "voltage_v": 400.0,                           # output voltage set-point (grid power balance)
     "modules_available": 4, "module_max_a": 50.0,
     "modules_configured": 4,                      # how many the config names
     "modules_lost": [2],                          # addresses not answering in time
     "modules_alarm": [[3, ["over_temperature"]]], # addresses out of the split because of an alarm
     "grid_configured": True,
     "ambient_configured": False,                  # a cabinet ambient sensor is named in the config
     "clear": ["coolant_flow_low"]}                # explicit clear requests this evaluation

Inputs: required safety inputs :data:`SAFETY_INPUTS` (missing, stale, invalid -> 0 A and a fault in the
same evaluation); ``module_temp_c`` (hottest answering module), ``ambient_c`` (required when
``ambient_configured``), ``coolant_leak`` (1 = leak; optional), ``output_a`` / ``output_v`` (measured),
``grid_l1_a`` .. ``grid_l3_a`` (site meter).

Decision::

    {"limit_a", "target_a", "enable", "contactor", "pump", "fan", "faults", "fault_details",
     "fault_docs", "latched", "rule", "reason", "cleared", "clear_refused"}

``reason`` always names the rule, the value and the threshold, e.g.
``cable DC+ pin 82.4 °C (derating 70-90 °C)`` or ``site fuse: L2 at 61 A of 63 A (margin 3 A)``.
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
LABELS = {
    "pin_dc_plus_c": "cable DC+ pin",
    "pin_dc_minus_c": "cable DC- pin",
    "coolant_out_c": "coolant outlet",
    "coolant_flow_lpm": "coolant flow",
    "module_temp_c": "power module",
    "ambient_c": "cabinet ambient",
}
GRID_INPUTS = ("grid_l1_a", "grid_l2_a", "grid_l3_a")
PUMP_COOLDOWN_S = 60.0  # keep coolant moving after a session so the pins cool down
EPS_S = 1e-6  # timers: 1.4 - 1.0 is 0.3999999999999999 in binary floating point

# Fault name (or its family prefix) -> section of docs/SAFETY.md. Every fault the core can raise is here;
# the vector test checks that each one is exercised.
DOCS = "docs/SAFETY.md#"
FAULT_DOCS = {
    "pin_over_temperature": "pin_over_temperature",
    "coolant_over_temperature": "coolant_over_temperature",
    "module_over_temperature": "module_over_temperature",
    "ambient_over_temperature": "ambient_over_temperature",
    "coolant_flow_low": "coolant_flow_low",
    "coolant_leak": "coolant_leak",
    "over_current": "over_current",
    "over_voltage": "over_voltage",
    "grid_meter_lost": "grid_meter_lost",
    "pins_disagree": "pins_disagree",
    "_missing": "sensor_missing",  # suffix families: pin_dc_plus_missing, ...
    "_stale": "sensor_stale",
    "_invalid": "sensor_invalid",
    "_implausible": "sensor_implausible",
    "module_lost_": "module_lost",  # prefix family: module_lost_2
    "module_alarm_": "module_alarm",
    "all_modules_lost": "all_modules_lost",
    "no_module_available": "all_modules_lost",
}


def fault_doc(name: str) -> str:
    """docs/SAFETY.md section of a fault name (``pin_dc_plus_stale`` -> ``...#sensor_stale``)."""
    if name in FAULT_DOCS:
        return DOCS + FAULT_DOCS[name]
    for key in sorted(FAULT_DOCS):
        if (key.startswith("_") and name.endswith(key)) or (key.endswith("_") and name.startswith(key)):
            return DOCS + FAULT_DOCS[key]
    return DOCS + "faults"


def fmt_num(x: float, digits: int = 1) -> str:
    """``x`` with ``digits`` decimals, rounded half up, identical under CPython and MicroPython."""
    if x != x:
        return "nan"
    if x > 1e15 or x < -1e15:
        return "inf" if x > 0 else "-inf"
    scale = 1
    for _ in range(digits):
        scale *= 10
    n = int(abs(x) * scale + 0.5)
    ip, fp = n // scale, n % scale
    s = str(ip)
    if digits > 0:
        f = str(fp)
        s = s + "." + "0" * (digits - len(f)) + f
    return "-" + s if (x < 0 and n != 0) else s


def initial_state() -> dict:
    return {
        "latched": {},  # fault -> detail, kept until cleared with the condition gone
        "applied_a": 0.0,  # limit commanded last time
        "t_prev": None,
        "t_reduced": None,  # last significant reduction (hold timer for increases)
        "peak_a": 0.0,  # highest applied limit since the hold timer was last started
        "oc_hold": None,  # [amps, until_t]: limit before a reduction, still the over-current reference
        "timers": {},  # condition -> t it started (over-current, over-voltage, flow low)
        "last": {},  # input -> [value, t_received] of the last accepted sample (rate of change)
        "grid_ok_t": None,  # receive time of the last good grid reading
        "grid_limit_a": None,
        "charger_w": [],  # [t_received, W] of the output measurements within grid.settle_ms
        "pump_until": -1.0,
        "pump_since": None,  # t the pump was commanded on (flow checks count from here)
    }


class _Ctx:
    """Working data of one evaluation (kept off the state so nothing leaks between calls)."""

    def __init__(self, snapshot: dict, config: dict, state: dict) -> None:
        self.snap = snapshot
        self.cfg = config
        self.state = state
        self.t = snapshot["t"]
        self.hw_max = config["max_output_current_a"]
        self.stale_s = config["sensor_stale_ms"] / 1000.0
        self.slow_stale_s = config["slow_input_stale_ms"] / 1000.0
        self.inputs = snapshot.get("inputs") or {}
        self.limits = []  # type: list  # [amps, rule, reason]
        self.faults = {}  # type: dict  # active now: name -> detail
        self.trips = {}  # type: dict  # name -> [detail, latch]
        self.blockers = {}  # type: dict  # latched fault name -> why it cannot be cleared now
        self.vals = {}  # type: dict  # fresh values of the safety inputs
        self.sensor_fault = False  # a required safety input is missing/stale/invalid

    def limit(self, amps: float, rule: str, reason: str) -> None:
        if amps != amps:  # NaN never means "no limit"
            amps = 0.0
        self.limits.append([amps, rule, reason])

    def trip(self, name: str, detail: str, latch: bool) -> None:
        self.trips[name] = [detail, latch]
        self.blockers[name] = "condition still present: " + detail

    def block(self, name: str, why: str) -> None:
        if name not in self.blockers:
            self.blockers[name] = why

    def fresh(self, name: str, max_age_s: float) -> float | None:
        """Value of an input, or None when missing, stale, invalid or not a number."""
        entry = self.inputs.get(name)
        if entry is None:
            return None
        value, t_rx, quality = entry[0], entry[1], entry[2]
        if quality != "ok" or value is None or value != value or self.t - t_rx > max_age_s:
            return None
        return value

    def why_not(self, name: str, max_age_s: float) -> str:
        entry = self.inputs.get(name)
        if entry is None:
            return "missing"
        if entry[2] == "invalid" or entry[0] is None or entry[0] != entry[0]:
            return "invalid"
        if entry[2] == "stale" or self.t - entry[1] > max_age_s:
            return "stale"
        return "invalid"


def _derate(value: float, start: float, end: float, full_a: float) -> float:
    """Linear from ``full_a`` at ``start`` to 0 A at ``end`` (temperatures: rising is worse)."""
    if value <= start:
        return full_a
    if value >= end:
        return 0.0
    return full_a * (end - value) / (end - start)


def _derate_low(value: float, start: float, end: float, full_a: float) -> float:
    """Linear from ``full_a`` at ``start`` down to 0 A at ``end`` < start (flow: falling is worse)."""
    if value >= start:
        return full_a
    if value <= end:
        return 0.0
    return full_a * (value - end) / (start - end)


def _timer(state: dict, key: str, active: bool, t: float, limit_s: float) -> bool:
    """True when ``active`` has held for at least ``limit_s``."""
    timers = state["timers"]
    if not active:
        if key in timers:
            del timers[key]
        return False
    if key not in timers:
        timers[key] = t
    return t - timers[key] >= limit_s - EPS_S


# -- rules: each reads the context and adds limits, faults, trips and clear blockers --------------------


def _rule_modules(c: _Ctx) -> None:
    s = c.snap
    avail = s.get("modules_available", 0)
    per = s.get("module_max_a", 0.0)
    configured = s.get("modules_configured", avail)
    lost = sorted(s.get("modules_lost") or [])
    for addr in lost:
        c.faults["module_lost_" + str(addr)] = "power module %d not answering; its share removed" % addr
    for item in sorted(s.get("modules_alarm") or []):
        c.faults["module_alarm_" + str(item[0])] = "power module %d alarm: %s; its share removed" % (
            item[0],
            ", ".join(sorted(item[1])),
        )
    c.limit(avail * per, "modules", "power modules: %d of %d available x %s A" % (avail, configured, fmt_num(per, 0)))
    if avail == 0:
        if configured > 0 and len(lost) >= configured:
            c.faults["all_modules_lost"] = "all %d power modules lost: output stopped" % configured
        else:
            c.faults["no_module_available"] = "no power module available (%d configured): output stopped" % configured


def _rule_sensors(c: _Ctx) -> None:
    for name in SAFETY_INPUTS:
        v = c.fresh(name, c.stale_s)
        if v is None:
            why = c.why_not(name, c.stale_s)
            entry = c.inputs.get(name)
            if entry is None:
                detail = "%s missing: no reading received" % LABELS[name]
            elif why == "stale":
                detail = "%s stale: no valid value for %s ms (max %d ms)" % (
                    LABELS[name],
                    fmt_num((c.t - entry[1]) * 1000.0, 0),
                    c.cfg["sensor_stale_ms"],
                )
            else:
                detail = "%s invalid: sensor reports a fault or an out-of-range value" % LABELS[name]
            c.faults[SENSOR[name] + "_" + why] = detail
            c.limit(0.0, "sensor", detail)
            c.sensor_fault = True
        else:
            c.vals[name] = v


def _rule_plausibility(c: _Ctx) -> None:
    plaus = c.cfg["plausibility"]
    last = c.state["last"]
    for name in TEMP_RATE_INPUTS:
        fault = SENSOR[name] + "_implausible"
        if name not in c.vals:
            c.block(fault, LABELS[name] + " not valid: cannot confirm the sensor is sane")
            continue
        t_rx = c.inputs[name][1]
        prev = last.get(name)
        if prev is not None and t_rx > prev[1]:
            dt = t_rx - prev[1]
            step = abs(c.vals[name] - prev[0])
            # the allowance absorbs quantisation and frames that arrive bunched together
            if step > plaus["max_rate_c_per_s"] * dt + plaus["step_allowance_c"]:
                c.trip(
                    fault,
                    "%s jumped %s °C in %s ms (max %s °C/s + %s °C)"
                    % (
                        LABELS[name],
                        fmt_num(step),
                        fmt_num(dt * 1000.0, 0),
                        fmt_num(plaus["max_rate_c_per_s"]),
                        fmt_num(plaus["step_allowance_c"]),
                    ),
                    plaus["latch"],
                )
        if prev is None or t_rx > prev[1]:
            last[name] = [c.vals[name], t_rx]
    if "pin_dc_plus_c" in c.vals and "pin_dc_minus_c" in c.vals:
        diff = abs(c.vals["pin_dc_plus_c"] - c.vals["pin_dc_minus_c"])
        if diff > plaus["pin_disagree_c"]:
            c.trip(
                "pins_disagree",
                "DC+ %s °C and DC- %s °C pins differ by %s °C (max %s °C)"
                % (
                    fmt_num(c.vals["pin_dc_plus_c"]),
                    fmt_num(c.vals["pin_dc_minus_c"]),
                    fmt_num(diff),
                    fmt_num(plaus["pin_disagree_c"]),
                ),
                plaus["latch"],
            )
    else:
        c.block("pins_disagree", "a pin sensor is not valid: cannot compare DC+ and DC-")


def _temperature(c: _Ctx, value: float | None, rule: dict, name: str, fault: str) -> None:
    """Linear derating and trip of one temperature; ``value`` None = not valid (cannot clear)."""
    if value is None:
        c.block(fault, LABELS[name] + " not valid: cannot confirm it is below trip")
        return
    v = value
    c.limit(
        _derate(v, rule["derate_start_c"], rule["derate_end_c"], c.hw_max),
        name,
        "%s %s °C (derating %s-%s °C)"
        % (LABELS[name], fmt_num(v), fmt_num(rule["derate_start_c"], 0), fmt_num(rule["derate_end_c"], 0)),
    )
    if v > rule["trip_c"]:
        if fault not in c.trips:  # the first (hotter, see callers) pin names the trip
            c.trip(
                fault, "%s %s °C above trip %s °C" % (LABELS[name], fmt_num(v), fmt_num(rule["trip_c"])), rule["latch"]
            )


def _rule_pins(c: _Ctx) -> None:
    names = ["pin_dc_plus_c", "pin_dc_minus_c"]
    if c.vals.get("pin_dc_minus_c", -1e9) > c.vals.get("pin_dc_plus_c", -1e9):
        names = ["pin_dc_minus_c", "pin_dc_plus_c"]
    for name in names:
        _temperature(c, c.vals.get(name), c.cfg["pin_temperature"], name, "pin_over_temperature")


def _rule_coolant_temperature(c: _Ctx) -> None:
    _temperature(
        c, c.vals.get("coolant_out_c"), c.cfg["coolant_temperature"], "coolant_out_c", "coolant_over_temperature"
    )


def _optional_temperature(c: _Ctx, name: str, rule: str, fault: str, required: bool) -> None:
    if name not in c.inputs and not required:
        c.block(fault, LABELS[name] + " temperature not reported: cannot confirm it is below trip")
        return
    v = c.fresh(name, c.slow_stale_s)
    if v is None:
        why = c.why_not(name, c.slow_stale_s)
        detail = "%s temperature %s (max age %d ms)" % (LABELS[name], why, c.cfg["slow_input_stale_ms"])
        c.faults[SENSOR[name] + "_" + why] = detail
        c.limit(0.0, "sensor", detail)
        c.sensor_fault = True
    _temperature(c, v, c.cfg[rule], name, fault)


def _rule_module_temperature(c: _Ctx) -> None:
    # present while at least one module answers; with none available the module rule stops the output
    _optional_temperature(c, "module_temp_c", "module_temperature", "module_over_temperature", False)


def _rule_ambient(c: _Ctx) -> None:
    _optional_temperature(
        c, "ambient_c", "ambient_temperature", "ambient_over_temperature", bool(c.snap.get("ambient_configured"))
    )


def _rule_flow(c: _Ctx) -> None:
    rule = c.cfg["coolant_flow"]
    flow = c.vals.get("coolant_flow_lpm")
    state = c.state
    if flow is None:
        state["timers"].pop("flow_low", None)
        c.block("coolant_flow_low", "coolant flow not valid: cannot confirm it is back in range")
        return
    # no current without coolant: the derating applies whether or not the pump runs
    c.limit(
        _derate_low(flow, rule["derate_start_lpm"], rule["derate_end_lpm"], c.hw_max),
        "coolant_flow",
        "coolant flow %s l/min (derating %s-%s l/min)"
        % (fmt_num(flow, 2), fmt_num(rule["derate_start_lpm"]), fmt_num(rule["derate_end_lpm"])),
    )
    # the trip counts only while the pump is commanded on; the delay covers its spin-up
    pumping = state["pump_since"] is not None
    if _timer(state, "flow_low", pumping and flow < rule["trip_lpm"], c.t, rule["trip_delay_ms"] / 1000.0):
        c.trip(
            "coolant_flow_low",
            "coolant flow %s l/min below %s l/min for %d ms"
            % (fmt_num(flow, 2), fmt_num(rule["trip_lpm"], 2), rule["trip_delay_ms"]),
            rule["latch"],
        )
    elif flow < rule["derate_start_lpm"]:
        c.block(
            "coolant_flow_low",
            "coolant flow %s l/min below %s l/min: run the pump and check the level"
            % (fmt_num(flow, 2), fmt_num(rule["derate_start_lpm"], 2)),
        )


def _rule_leak(c: _Ctx) -> None:
    if "coolant_leak" not in c.inputs:
        return  # optional sensor; a latched leak can then be cleared only with the sensor reporting
    leak = c.fresh("coolant_leak", c.stale_s)
    if leak is None:
        c.block("coolant_leak", "leak sensor not valid: cannot confirm the leak is gone")
    elif leak >= 0.5:
        c.trip(
            "coolant_leak", "coolant leak detected by the cable monitor (pump stopped)", c.cfg["coolant_flow"]["latch"]
        )


def _rule_over_current(c: _Ctx) -> None:
    oc = c.cfg["over_current"]
    state = c.state
    out_a = c.fresh("output_a", c.slow_stale_s)
    # reference: the limit commanded last time, or the one before a recent reduction while the current
    # still decays towards the new set-point (a legitimate reduction must not look like an over-current)
    ref = state["applied_a"]
    hold = state["oc_hold"]
    if hold is not None and c.t < hold[1] and hold[0] > ref:
        ref = hold[0]
    out = out_a if out_a is not None else 0.0
    over = out_a is not None and out > ref + oc["tolerance_a"]
    if _timer(state, "over_current", over, c.t, oc["time_ms"] / 1000.0):
        c.trip(
            "over_current",
            "output %s A above limit %s A + %s A for %d ms"
            % (fmt_num(out), fmt_num(ref), fmt_num(oc["tolerance_a"]), oc["time_ms"]),
            oc["latch"],
        )
    elif over:
        c.block(
            "over_current",
            "output %s A still above limit %s A + %s A" % (fmt_num(out), fmt_num(ref), fmt_num(oc["tolerance_a"])),
        )


def _rule_over_voltage(c: _Ctx) -> None:
    ov = c.cfg["over_voltage"]
    out_v = c.fresh("output_v", c.slow_stale_s)
    max_v = min(ov["max_v"], c.cfg["max_output_voltage_v"])
    volts = out_v if out_v is not None else 0.0
    over = out_v is not None and volts > max_v
    if _timer(c.state, "over_voltage", over, c.t, ov["time_ms"] / 1000.0):
        c.trip(
            "over_voltage",
            "output %s V above %s V for %d ms" % (fmt_num(volts), fmt_num(max_v), ov["time_ms"]),
            ov["latch"],
        )
    elif over:
        c.block("over_voltage", "output %s V still above %s V" % (fmt_num(volts), fmt_num(max_v)))


def _rule_grid(c: _Ctx) -> None:
    if not c.snap.get("grid_configured"):
        return
    rule = c.cfg["grid"]
    state = c.state
    loss_s = rule["meter_loss_ms"] / 1000.0
    phases = []  # type: list
    t_rx = None
    for name in GRID_INPUTS:
        v = c.fresh(name, loss_s)
        if v is None or v < 0.0:
            phases = []
            break
        phases.append(v)
        t_new = c.inputs[name][1]
        t_rx = t_new if t_rx is None or t_new < t_rx else t_rx
    out_v = c.fresh("output_v", c.slow_stale_s)
    out_a = c.fresh("output_a", c.slow_stale_s)
    volts = max(c.snap.get("voltage_v", 0.0), out_v if out_v is not None else 0.0, 50.0)
    # AC A per phase -> DC A at the output; the higher DC voltage gives the smaller (safer) figure
    per_phase_to_dc = 3.0 * rule["phase_voltage_v"] * rule["efficiency"] / volts
    if phases:
        state["grid_ok_t"] = t_rx
        worst = phases[0]
        worst_i = 1
        for i in (1, 2):
            if phases[i] > worst:
                worst, worst_i = phases[i], i + 1
        headroom = rule["fuse_a"] - rule["margin_a"] - worst
        # our own share of the metered current, which we may keep. The meter and the modules are read
        # at different times: take the output power the meter saw, i.e. the smaller of the two output
        # samples around the meter reading (the smallest in history when none is older), so a meter
        # reading from before an increase cannot make room for that increase a second time.
        hist = [h for h in state["charger_w"] if c.t - h[0] <= rule["settle_ms"] / 1000.0]
        if out_v is not None and out_a is not None:
            t_out = c.inputs["output_a"][1]
            if not hist or hist[-1][0] < t_out:
                hist.append([t_out, max(0.0, out_v * out_a)])
        state["charger_w"] = hist
        around = []  # type: list
        for i in range(len(hist)):
            if hist[i][0] <= t_rx and (i + 1 == len(hist) or hist[i + 1][0] > t_rx):
                around = hist[i : i + 2]
        pick = around or hist
        charger_w = min([h[1] for h in pick]) if pick else 0.0
        charger_ac = charger_w / rule["efficiency"] / (3.0 * rule["phase_voltage_v"])
        allowed_ac = max(0.0, charger_ac + headroom)
        state["grid_limit_a"] = allowed_ac * per_phase_to_dc
        c.limit(
            state["grid_limit_a"],
            "grid",
            "site fuse: L%d at %s A of %s A (margin %s A)"
            % (worst_i, fmt_num(worst, 0), fmt_num(rule["fuse_a"], 0), fmt_num(rule["margin_a"], 0)),
        )
        return
    ok_t = state["grid_ok_t"]
    if ok_t is None or c.t - ok_t >= loss_s:
        c.faults["grid_meter_lost"] = "grid meter: no good reading for %s ms (max %d ms)" % (
            "-" if ok_t is None else fmt_num((c.t - ok_t) * 1000.0, 0),
            rule["meter_loss_ms"],
        )
        c.limit(
            rule["fallback_ac_a"] * per_phase_to_dc,
            "grid_fallback",
            "grid meter lost: fallback %s A per phase" % fmt_num(rule["fallback_ac_a"], 0),
        )
    elif state["grid_limit_a"] is not None:
        c.limit(
            state["grid_limit_a"],
            "grid",
            "site fuse: last good meter reading %s ms ago" % fmt_num((c.t - ok_t) * 1000.0, 0),
        )


RULES = (
    _rule_modules,
    _rule_sensors,
    _rule_plausibility,
    _rule_pins,
    _rule_coolant_temperature,
    _rule_module_temperature,
    _rule_ambient,
    _rule_flow,
    _rule_leak,
    _rule_over_current,
    _rule_over_voltage,
    _rule_grid,
)


def evaluate(snapshot: dict, config: dict, previous_state: dict | None) -> tuple:
    state = _copy_state(previous_state if previous_state is not None else initial_state())
    c = _Ctx(snapshot, config, state)
    t = c.t

    request = snapshot.get("request_a")
    request = 0.0 if request is None or request != request else max(0.0, request)
    c.limit(c.hw_max, "hardware", "hardware limit %s A" % fmt_num(c.hw_max, 0))
    c.limit(request, "request", "vehicle request %s A" % fmt_num(request, 0))
    ext = snapshot.get("external_limit_a")
    if ext is not None:
        c.limit(max(0.0, ext), "external", "external limit %s A (CLI/cloud)" % fmt_num(ext, 0))
    for check in RULES:
        check(c)

    # -- latches and clears -------------------------------------------------------------------------
    latched = state["latched"]
    for name in sorted(c.trips):
        detail, latch = c.trips[name]
        c.faults[name] = detail
        if latch and name not in latched:
            latched[name] = detail
    cleared, refused = [], []
    for name in snapshot.get("clear") or []:
        if name not in latched:
            refused.append([name, "not latched"])
        elif name in c.blockers:
            refused.append([name, c.blockers[name]])
        else:
            del latched[name]
            cleared.append(name)
    for name in latched:
        if name not in c.faults:
            c.faults[name] = latched[name] + " (latched)"

    # -- combine: the lowest limit wins; a trip or a stop means 0 A -----------------------------------
    tripped = len(latched) > 0 or len(c.trips) > 0
    stop = bool(snapshot.get("stop", False))
    best = c.limits[0]
    for item in c.limits:
        if item[0] < best[0]:
            best = item
    target = max(0.0, min(best[0], c.hw_max))
    rule_name, reason = best[1], best[2]
    if tripped:
        names = sorted(list(latched.keys()) + [n for n in c.trips if n not in latched])
        target, rule_name = 0.0, "trip"
        reason = "tripped: %s: %s" % (names[0], c.faults[names[0]])
        if len(names) > 1:
            reason += " (+%d more)" % (len(names) - 1)
    elif stop:
        target, rule_name, reason = 0.0, "stop", "stopped by operator"

    applied = _ramp(state, target, t, config)
    if applied < target:
        if t - state["t_reduced"] < config["raise_hold_ms"] / 1000.0 - EPS_S:
            reason += "; held %s s after a reduction" % fmt_num(config["raise_hold_ms"] / 1000.0)
        else:
            reason += "; rising %s A/s" % fmt_num(config["ramp_up_a_per_s"], 0)

    # contactor: closed for a session that may run (even at 0 A while derated), open on any trip, stop,
    # lost safety input or missing modules; modules enabled only with a current above 0
    modules_ok = snapshot.get("modules_available", 0) > 0
    contactor = request > 0 and not tripped and not stop and not c.sensor_fault and modules_ok
    enable = contactor and applied > 0.0

    # pump: whenever current is wanted or flowing, and for a cool-down after; never with a leak
    wants = request > 0 and not tripped and not stop
    if wants or enable:
        state["pump_until"] = t + PUMP_COOLDOWN_S
    leak = "coolant_leak" in latched or "coolant_leak" in c.trips
    pump = (wants or enable or t < state["pump_until"]) and not leak
    if pump and state["pump_since"] is None:
        state["pump_since"] = t
    elif not pump:
        state["pump_since"] = None
    hot = False
    for name, rule in (("module_temp_c", "module_temperature"), ("ambient_c", "ambient_temperature")):
        v = c.fresh(name, c.slow_stale_s)
        if v is not None and v > config[rule]["derate_start_c"]:
            hot = True
    fan = 1.0 if (enable or hot) else (0.3 if pump else 0.0)

    state["t_prev"] = t
    docs = {}
    for name in c.faults:
        docs[name] = fault_doc(name)
    decision = {
        "limit_a": applied,
        "target_a": target,
        "enable": enable,
        "contactor": contactor,
        "pump": pump,
        "fan": fan,
        "faults": sorted(c.faults.keys()),
        "fault_details": c.faults,
        "fault_docs": docs,
        "latched": sorted(latched.keys()),
        "rule": rule_name,
        "reason": reason,
        "cleared": cleared,
        "clear_refused": refused,
    }
    return decision, state


def _ramp(state: dict, target: float, t: float, config: dict) -> float:
    """Reductions at once; increases only after the hold time, at most ``ramp_up_a_per_s``."""
    applied = state["applied_a"]
    if state["t_reduced"] is None:
        state["t_reduced"] = t  # start-up counts as a reduction: hold before the first rise
    if target < applied:
        # a significant drop restarts the hold; sensor noise (small drops) is followed at once but
        # does not, or a noisy input would ratchet the limit down for good
        if state["peak_a"] - target > config["hold_reset_a"]:
            state["t_reduced"] = t
            state["peak_a"] = target
        hold = state["oc_hold"]
        keep = applied if hold is None or t >= hold[1] else max(applied, hold[0])
        state["oc_hold"] = [keep, t + config["over_current"]["settle_ms"] / 1000.0]
        state["applied_a"] = target
        return target
    if target > applied:
        if t - state["t_reduced"] < config["raise_hold_ms"] / 1000.0 - EPS_S:
            return applied
        dt = t - state["t_prev"] if state["t_prev"] is not None else 0.0
        applied = min(target, applied + config["ramp_up_a_per_s"] * max(0.0, dt))
        state["applied_a"] = applied
        state["peak_a"] = max(state["peak_a"], applied)
    return applied


def _copy_state(state: dict) -> dict:
    """Copy two levels deep: evaluate() never changes the state it was given."""
    out = {}  # type: dict
    for k in state:
        v = state[k]
        if isinstance(v, dict):
            v2 = {}
            for k2 in v:
                v2[k2] = list(v[k2]) if isinstance(v[k2], list) else v[k2]
            out[k] = v2
        elif isinstance(v, list):
            out[k] = list(v)
        else:
            out[k] = v
    return out
