"""Pure safety core: ``evaluate(snapshot, config, previous_state) -> (decision, state)``.

Runs unchanged under CPython and MicroPython (so the same rules can run on a safety MCU beside the
Linux board): no I/O, no clock (time comes in the snapshot as ``t``, seconds), only dicts, lists, floats,
ints and strings; annotations use builtin types only (MicroPython never evaluates them). Its one import is
the input table beside it (``inputs.py``), imported as a plain module where the core is one (on the MCU).
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
     "modules_awaited": 0,                         # never heard yet, the start younger than lost_after_ms
     "modules_alarm": [[3, ["over_temperature"]]], # addresses out of the split because of an alarm
     "module_a": [[1, 48.5, 12.3]],                # optional: [address, A, t of its last answer] (over_current)
     "grid_configured": True,
     "ambient_configured": False,                  # a cabinet ambient sensor is named in the config
     "external_faults": [["can_bus_off", "CAN can0 bus off: ...", True]],  # raised outside the core
     "clear": ["coolant_flow_low"],                # explicit clear requests this evaluation
     "limits": [[80.0, "grid", "site fuse ..."]],  # optional: limits decided outside (connectors.py)
     "session": True,                              # optional: contactor wanted (else request_a > 0)
     "uncooled": False}                            # optional: no cable monitor (cable inputs not required)

One output per call; a cabinet with several connectors runs this pipeline once per connector
(``connectors.py``), which also decides the cabinet-wide rules (site fuse) and passes them in ``limits``.

Inputs: every name, label, sensor family, stale class and whether it is required comes from the table in
``inputs.py``. Required inputs (``SAFETY_INPUTS``: missing, stale, invalid -> 0 A and a fault in the same
evaluation); ``module_temp_c`` (hottest answering module), ``ambient_c`` (required when
``ambient_configured``), ``coolant_leak`` (1 = leak; optional), ``output_a`` / ``output_v`` (measured),
``grid_l1_a`` .. ``grid_l3_a`` (site meter).

External faults: ``[name, detail, stops_output]`` for each fault a part outside the core has now (module
bus off, telemetry store cannot write). They join the one fault list; ``stops_output`` true means 0 A and
contactor open. Never latched: gone from the list, gone from the decision (a clear answers "not latched").

Decision::

    {"limit_a", "target_a", "voltage_v", "enable", "contactor", "pump", "fan", "faults", "fault_details",
     "fault_docs", "latched", "rule", "reason", "cleared", "clear_refused"}

``reason`` always names the rule, the value and the threshold, e.g.
``cable DC+ pin 82.4 °C (derating 70-90 °C)`` or ``site fuse: L2 at 61 A of 63 A (margin 3 A)``.

:func:`evaluate` is the pipeline :data:`STEPS`: base limits (hardware, request, external) -> :data:`RULES`
-> the lowest limit -> latches and clears -> trip or stop -> ramp -> contactor, pump, fan -> the voltage
set-point within the configured maximum; then the decision. Each step reads and writes one :class:`_Ctx`
and can be tested on its own.
"""

try:
    from . import inputs
except ImportError:  # imported by path as the plain module "core" (safety MCU, tests/vectors/runner.py)
    import inputs  # type: ignore[import-not-found,no-redef]

SAFETY_INPUTS = inputs.names_where("required", inputs.ALWAYS)
TEMP_RATE_INPUTS = inputs.names_where("rate_check", True)
GRID_INPUTS = inputs.names_where("source", "grid")
PIN_DC_PLUS, PIN_DC_MINUS = inputs.PIN_DC_PLUS, inputs.PIN_DC_MINUS
COOLANT_OUT, COOLANT_FLOW = inputs.COOLANT_OUT, inputs.COOLANT_FLOW
# inputs whose heat the fan removes: name -> the limits section whose derating start turns the fan to full
FAN_INPUTS = (("module_temp_c", "module_temperature"), ("ambient_c", "ambient_temperature"))
DOCS = inputs.DOCS
fault_doc = inputs.fault_doc
PUMP_COOLDOWN_S = 60.0  # keep coolant moving after a session so the pins cool down
EPS_S = 1e-6  # timers: 1.4 - 1.0 is 0.3999999999999999 in binary floating point
# latched faults a clear from the cloud may never lift: cleared on site only, with the condition gone
LOCAL_CLEAR_ONLY = ("contactor_welded", "latch_state_unreadable")


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
        "grid_wait_t": None,  # first evaluation without any good grid reading: the start-up grace counts from here
        "grid_limit_a": None,
        "charger_w": [],  # [t_received, W] of the output measurements within grid.settle_ms
        "pump_until": -1.0,
        "pump_since": None,  # t the pump was commanded on (flow checks count from here)
        "start_t": None,  # the first evaluation: a sensor not heard yet is awaited for its max age from here
        "seen": {},  # safety input -> True once it gave a valid value (a sensor lost later is never "awaited")
    }


class _Ctx:
    """Working data of one evaluation (kept off the state so nothing leaks between calls)."""

    def __init__(self, snapshot: dict, config: dict, state: dict) -> None:
        self.snap = snapshot
        self.cfg = config
        self.state = state
        self.t = snapshot["t"]
        if state.get("start_t") is None:
            state["start_t"] = self.t  # this output's first evaluation
        self.hw_max = config["max_output_current_a"]
        # how old a sample of each stale class (inputs.py) may be, ms
        self.max_age_ms = {
            "fast": config["sensor_stale_ms"],
            "slow": config["slow_input_stale_ms"],
            "grid": config["grid"]["meter_loss_ms"],
        }
        self.inputs = snapshot.get("inputs") or {}
        request = snapshot.get("request_a")
        self.request = 0.0 if request is None or request != request else max(0.0, request)
        self.stop = bool(snapshot.get("stop", False))
        self.limits = []  # type: list  # [amps, rule, reason]
        self.faults = {}  # type: dict  # active now: name -> detail
        self.trips = {}  # type: dict  # name -> [detail, latch]
        self.blockers = {}  # type: dict  # latched fault name -> why it cannot be cleared now
        self.vals = {}  # type: dict  # fresh values of the safety inputs
        self.sensor_fault = False  # a required safety input is missing/stale/invalid
        self.external_stop = False  # a fault raised outside the core stops the output
        # filled by the steps after the rules
        self.target = 0.0
        self.rule = ""
        self.reason = ""
        self.tripped = False
        self.applied = 0.0
        self.cleared = []  # type: list
        self.refused = []  # type: list
        self.contactor = False
        self.enable = False
        self.pump = False
        self.fan = 0.0
        self.voltage = 0.0

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

    def max_age_s(self, name: str) -> float:
        return self.max_age_ms[inputs.entry(name)["stale"]] / 1000.0

    def required(self, name: str) -> bool:
        """True when a loss of ``name`` must stop the output (table ``required``, snapshot ``*_configured``)."""
        e = inputs.entry(name)
        if e["required"] == inputs.CONFIGURED:
            return bool(self.snap.get(e["source"] + "_configured"))
        return e["required"] == inputs.ALWAYS

    def value(self, name: str) -> float | None:
        """Value of an input within the max age of its stale class, or None (see :meth:`fresh`)."""
        return self.fresh(name, self.max_age_s(name))

    def fresh(self, name: str, max_age_s: float) -> float | None:
        """Value of an input, or None when missing, stale, invalid or not a number."""
        entry = self.inputs.get(name)
        if entry is None:
            return None
        value, t_rx, quality = entry[0], entry[1], entry[2]
        if quality != "ok" or value is None or value != value or self.t - t_rx > max_age_s:
            return None
        return value

    def why_not(self, name: str) -> str:
        """``missing``, ``stale`` or ``invalid``: why :meth:`value` gave None."""
        entry = self.inputs.get(name)
        if entry is None:
            return "missing"
        if entry[2] == "invalid" or entry[0] is None or entry[0] != entry[0]:
            return "invalid"
        if entry[2] == "stale" or self.t - entry[1] > self.max_age_s(name):
            return "stale"
        return "invalid"

    def input_lost(self, name: str, why: str, detail: str) -> None:
        """A required input is not valid: 0 A and contactor open now, fault ``<sensor>_<why>`` (not latched)."""
        self.faults[inputs.sensor(name) + "_" + why] = detail
        self.limit(0.0, "sensor", detail)
        self.sensor_fault = True


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
    if s.get("modules_configured") == 0:
        # power sharing (issue 16): no group is allocated to this connector now: 0 A, not a fault
        c.limit(0.0, "modules", "power sharing: no module group allocated")
        return
    c.limit(avail * per, "modules", "power modules: %d of %d available x %s A" % (avail, configured, fmt_num(per, 0)))
    if avail == 0 and not (s.get("modules_awaited", 0) > 0 and not lost):  # awaited at start: 0 A, no fault yet
        _no_module(c, configured, lost)


def _no_module(c: _Ctx, configured: int, lost: list) -> None:
    if configured > 0 and len(lost) >= configured:
        c.faults["all_modules_lost"] = "all %d power modules lost: output stopped" % configured
    else:
        c.faults["no_module_available"] = "no power module available (%d configured): output stopped" % configured


def _rule_sensors(c: _Ctx) -> None:
    # an output the config marks uncooled (``snapshot["uncooled"]``) has no cable monitor: its cable
    # inputs are not required, their rules act on what reports (nothing, normally)
    uncooled = bool(c.snap.get("uncooled"))
    for name in SAFETY_INPUTS:
        v = c.value(name)
        if v is not None:
            c.vals[name] = v
            if name not in c.state["seen"]:
                c.state["seen"][name] = True
        elif not uncooled:
            why = c.why_not(name)
            if why == "missing" and name not in c.state["seen"] and _starting(c, c.max_age_s(name)):
                # at start, before its first reading: 0 A and the contactor open as for a lost input, but no
                # fault yet (every start raised <sensor>_missing and cleared it a frame later)
                c.limit(0.0, "sensor", "%s: waiting for the first reading" % inputs.label(name))
                c.sensor_fault = True
                continue
            c.input_lost(name, why, _loss_detail(c, name, why))


def _starting(c: _Ctx, window_s: float) -> bool:
    """True within ``window_s`` of this output's first evaluation."""
    return c.t - c.state["start_t"] <= window_s + EPS_S


def _loss_detail(c: _Ctx, name: str, why: str) -> str:
    label = inputs.label(name)
    if why == "missing":
        return "%s missing: no reading received" % label
    if why == "stale":
        return "%s stale: no valid value for %s ms (max %d ms)" % (
            label,
            fmt_num((c.t - c.inputs[name][1]) * 1000.0, 0),
            c.max_age_ms[inputs.entry(name)["stale"]],
        )
    return (
        "%s invalid: value unusable (sensor fault, out of range, or the cable monitor stuck or losing frames)" % label
    )


def _rule_rate_of_change(c: _Ctx) -> None:
    for name in TEMP_RATE_INPUTS:
        _rate_check(c, name)


def _rate_check(c: _Ctx, name: str) -> None:
    """Trip ``<sensor>_implausible`` when a temperature moved faster than physics allows."""
    fault = inputs.sensor(name) + "_implausible"
    if name not in c.vals:
        c.block(fault, inputs.label(name) + " not valid: cannot confirm the sensor is sane")
        return
    last = c.state["last"]
    t_rx = c.inputs[name][1]
    prev = last.get(name)
    if prev is not None and t_rx > prev[1]:
        _rate_trip(c, name, fault, abs(c.vals[name] - prev[0]), t_rx - prev[1])
    if prev is None or t_rx > prev[1]:
        last[name] = [c.vals[name], t_rx]


def _rate_trip(c: _Ctx, name: str, fault: str, step: float, dt: float) -> None:
    plaus = c.cfg["plausibility"]
    # the allowance absorbs quantisation and frames that arrive bunched together
    if step > plaus["max_rate_c_per_s"] * dt + plaus["step_allowance_c"]:
        c.trip(
            fault,
            "%s jumped %s °C in %s ms (max %s °C/s + %s °C)"
            % (
                inputs.label(name),
                fmt_num(step),
                fmt_num(dt * 1000.0, 0),
                fmt_num(plaus["max_rate_c_per_s"]),
                fmt_num(plaus["step_allowance_c"]),
            ),
            plaus["latch"],
        )


def _rule_pins_disagree(c: _Ctx) -> None:
    plaus = c.cfg["plausibility"]
    if PIN_DC_PLUS not in c.vals or PIN_DC_MINUS not in c.vals:
        c.block("pins_disagree", "a pin sensor is not valid: cannot compare DC+ and DC-")
        return
    plus, minus = c.vals[PIN_DC_PLUS], c.vals[PIN_DC_MINUS]
    diff = abs(plus - minus)
    if diff > plaus["pin_disagree_c"]:
        c.trip(
            "pins_disagree",
            "DC+ %s °C and DC- %s °C pins differ by %s °C (max %s °C)"
            % (fmt_num(plus), fmt_num(minus), fmt_num(diff), fmt_num(plaus["pin_disagree_c"])),
            plaus["latch"],
        )


def _temperature(c: _Ctx, value: float | None, rule: dict, name: str, fault: str) -> None:
    """Linear derating and trip of one temperature; ``value`` None = not valid (cannot clear)."""
    label = inputs.label(name)
    if value is None:
        c.block(fault, label + " not valid: cannot confirm it is below trip")
        return
    v = value
    c.limit(
        _derate(v, rule["derate_start_c"], rule["derate_end_c"], c.hw_max),
        name,
        "%s %s °C (derating %s-%s °C)"
        % (label, fmt_num(v), fmt_num(rule["derate_start_c"], 0), fmt_num(rule["derate_end_c"], 0)),
    )
    if v > rule["trip_c"]:
        if fault not in c.trips:  # the first (hotter, see callers) pin names the trip
            c.trip(fault, "%s %s °C above trip %s °C" % (label, fmt_num(v), fmt_num(rule["trip_c"])), rule["latch"])


def _rule_pins(c: _Ctx) -> None:
    names = [PIN_DC_PLUS, PIN_DC_MINUS]
    if c.vals.get(PIN_DC_MINUS, -1e9) > c.vals.get(PIN_DC_PLUS, -1e9):
        names = [PIN_DC_MINUS, PIN_DC_PLUS]
    for name in names:
        _temperature(c, c.vals.get(name), c.cfg["pin_temperature"], name, "pin_over_temperature")


def _rule_coolant_temperature(c: _Ctx) -> None:
    _temperature(c, c.vals.get(COOLANT_OUT), c.cfg["coolant_temperature"], COOLANT_OUT, "coolant_over_temperature")


def _slow_temperature(c: _Ctx, name: str, rule: str, fault: str) -> None:
    """A temperature on the slow stale class: required per the table, else its rule acts while it reports."""
    if name not in c.inputs and not c.required(name):
        c.block(fault, inputs.label(name) + " temperature not reported: cannot confirm it is below trip")
        return
    v = c.value(name)
    if v is not None and name not in c.state["seen"]:
        c.state["seen"][name] = True
    if v is None:
        why = c.why_not(name)
        if why != "invalid" and name not in c.state["seen"] and _starting(c, c.max_age_s(name)):
            # at start, not one good value yet (the modules' first answers go out stale until they are found)
            c.limit(0.0, "sensor", "%s temperature: waiting for the first reading" % inputs.label(name))
            c.sensor_fault = True
            return
        detail = "%s temperature %s (max age %d ms)" % (inputs.label(name), why, c.cfg["slow_input_stale_ms"])
        c.input_lost(name, why, detail)
    _temperature(c, v, c.cfg[rule], name, fault)


def _rule_module_temperature(c: _Ctx) -> None:
    # present while at least one module answers; with none available the module rule stops the output
    _slow_temperature(c, "module_temp_c", "module_temperature", "module_over_temperature")


def _rule_ambient(c: _Ctx) -> None:
    _slow_temperature(c, "ambient_c", "ambient_temperature", "ambient_over_temperature")


def _rule_flow(c: _Ctx) -> None:
    rule = c.cfg["coolant_flow"]
    flow = c.vals.get(COOLANT_FLOW)
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
    leak = c.value("coolant_leak")
    if leak is None:
        c.block("coolant_leak", "leak sensor not valid: cannot confirm the leak is gone")
    elif leak >= 0.5:
        c.trip(
            "coolant_leak", "coolant leak detected by the cable monitor (pump stopped)", c.cfg["coolant_flow"]["latch"]
        )


def _rule_over_current(c: _Ctx) -> None:
    oc = c.cfg["over_current"]
    state = c.state
    out_a = c.value("output_a")
    # reference: the limit commanded last time, or the one before a recent reduction for a sample measured
    # while the current still decays towards the new set-point (a legitimate reduction must not look like an
    # over-current). The sample's own time counts, not now: the sum of a module that stopped answering keeps
    # its last reading until the module is lost, and that reading says nothing about a later reduction.
    ref = state["applied_a"]
    hold = state["oc_hold"]
    if hold is not None and _sample_t(c, "output_a") < hold[1] and hold[0] > ref:
        # ... but the modules that did answer after the settle time are held to the new limit on their own
        # (one silent module must not hide another that keeps delivering)
        late_a = _settled_a(c, hold[1])
        if out_a is not None and late_a > ref + oc["tolerance_a"]:
            out_a = late_a
        else:
            ref = hold[0]
    out = out_a if out_a is not None else 0.0
    over = out_a is not None and out > ref + oc["tolerance_a"]
    if _timer(state, "over_current", over, c.t, oc["time_ms"] / 1000.0):
        c.trip(
            "over_current",
            "output %s A above limit %s A + %s A for %d ms%s"
            % (fmt_num(out), fmt_num(ref), fmt_num(oc["tolerance_a"]), oc["time_ms"], _module_shares(c)),
            oc["latch"],
        )
    elif over:
        c.block(
            "over_current",
            "output %s A still above limit %s A + %s A" % (fmt_num(out), fmt_num(ref), fmt_num(oc["tolerance_a"])),
        )


def _module_shares(c: _Ctx) -> str:
    """Which module carries the current (snapshot ``module_a``: [address, A, t of its last answer]), the
    largest first; a module whose last answer is older than the over-current time is named as silent."""
    parts = []
    for item in sorted(c.snap.get("module_a") or [], key=lambda m: (-m[1], m[0])):
        age_ms = int((c.t - item[2]) * 1000.0 + 0.5)
        silent = " (silent for %d ms)" % age_ms if age_ms > c.cfg["over_current"]["time_ms"] else ""
        parts.append("module %d %s A%s" % (item[0], fmt_num(item[1]), silent))
    return ": " + ", ".join(parts) if parts else ""


def _settled_a(c: _Ctx, settled_t: float) -> float:
    """The current of the modules whose last answer came at or after ``settled_t`` (snapshot ``module_a``)."""
    amps = 0.0
    for item in c.snap.get("module_a") or []:
        if item[2] >= settled_t:
            amps += item[1]
    return amps


def _sample_t(c: _Ctx, name: str) -> float:
    """When the sample of ``name`` was measured (now when there is none)."""
    entry = c.inputs.get(name)
    return c.t if entry is None else min(c.t, entry[1])


def _rule_over_voltage(c: _Ctx) -> None:
    ov = c.cfg["over_voltage"]
    out_v = c.value("output_v")
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


def _grid_phases(c: _Ctx) -> list | None:
    """``[[L1, L2, L3] A, t]`` from the grid meter, t the oldest receive time; None unless all three are good."""
    phases = []  # type: list
    t_rx = None
    for name in GRID_INPUTS:
        v = c.value(name)
        if v is None or v < 0.0:
            return None
        phases.append(v)
        t_new = c.inputs[name][1]
        t_rx = t_new if t_rx is None or t_new < t_rx else t_rx
    return [phases, t_rx]


def _dc_a_per_ac_a(c: _Ctx, rule: dict) -> float:
    """DC A at the output per AC A on each phase; the higher DC voltage gives the smaller (safer) figure."""
    out_v = c.value("output_v")
    volts = max(c.snap.get("voltage_v", 0.0), out_v if out_v is not None else 0.0, 50.0)
    return 3.0 * rule["phase_voltage_v"] * rule["efficiency"] / volts


def _worst_phase(phases: list) -> list:
    """``[amps, phase number 1..3]`` of the most loaded phase (the first of equals)."""
    worst, worst_i = phases[0], 1
    for i in (1, 2):
        if phases[i] > worst:
            worst, worst_i = phases[i], i + 1
    return [worst, worst_i]


def _samples_around(hist: list, t_rx: float) -> list:
    """The output samples just before and after ``t_rx`` (empty when none is older)."""
    around = []  # type: list
    for i in range(len(hist)):
        if hist[i][0] <= t_rx and (i + 1 == len(hist) or hist[i + 1][0] > t_rx):
            around = hist[i : i + 2]
    return around


def _charger_w(c: _Ctx, rule: dict, t_rx: float) -> float:
    """Our own output power as the meter saw it at ``t_rx`` (W).

    The meter and the modules are read at different times: take the smaller of the two output samples
    around the meter reading (the smallest in history when none is older), so a meter reading from before
    an increase cannot make room for that increase a second time."""
    state = c.state
    hist = [h for h in state["charger_w"] if c.t - h[0] <= rule["settle_ms"] / 1000.0]
    out_v = c.value("output_v")
    out_a = c.value("output_a")
    if out_v is not None and out_a is not None:
        t_out = c.inputs["output_a"][1]
        if not hist or hist[-1][0] < t_out:
            hist.append([t_out, max(0.0, out_v * out_a)])
    state["charger_w"] = hist
    pick = _samples_around(hist, t_rx) or hist
    return min([h[1] for h in pick]) if pick else 0.0


def _grid_from_meter(c: _Ctx, rule: dict, meter: list, dc_per_ac: float) -> None:
    phases, t_rx = meter[0], meter[1]
    state = c.state
    state["grid_ok_t"] = t_rx
    worst, worst_i = _worst_phase(phases)
    headroom = rule["fuse_a"] - rule["margin_a"] - worst
    # our own share of the metered current, which we may keep
    charger_ac = _charger_w(c, rule, t_rx) / rule["efficiency"] / (3.0 * rule["phase_voltage_v"])
    allowed_ac = max(0.0, charger_ac + headroom)
    state["grid_limit_a"] = allowed_ac * dc_per_ac
    c.limit(
        state["grid_limit_a"],
        "grid",
        "site fuse: L%d at %s A of %s A (margin %s A)"
        % (worst_i, fmt_num(worst, 0), fmt_num(rule["fuse_a"], 0), fmt_num(rule["margin_a"], 0)),
    )


def grid_silence(ok_t: float | None, wait_t: float | None, t: float) -> list:
    """``[since_t, waiting]``: since when the grid meter has been silent, and whether it has never answered.

    A meter never heard counts from ``wait_t``, the first evaluation without a good reading (start-up), so
    it gets the same ``meter_loss_ms`` to answer as a meter that stops; a meter that never answers still
    raises ``grid_meter_lost`` after it. The fallback limit applies from the start (fail safe)."""
    if ok_t is not None:
        return [ok_t, False]
    return [t if wait_t is None else wait_t, True]


def grid_fallback_reason(waiting: bool, fallback_ac_a: float) -> str:
    if waiting:
        return "grid meter not read yet: fallback %s A per phase" % fmt_num(fallback_ac_a, 0)
    return "grid meter lost: fallback %s A per phase" % fmt_num(fallback_ac_a, 0)


def _grid_without_meter(c: _Ctx, rule: dict, dc_per_ac: float) -> None:
    """The last grid limit holds for ``meter_loss_ms``; then the fallback and ``grid_meter_lost``. A meter
    not read yet: the fallback at once, the fault after ``meter_loss_ms`` (:func:`grid_silence`)."""
    state = c.state
    ok_t = state["grid_ok_t"]
    since_t, waiting = grid_silence(ok_t, state.get("grid_wait_t"), c.t)
    if waiting:
        state["grid_wait_t"] = since_t
    lost = c.t - since_t >= rule["meter_loss_ms"] / 1000.0
    if lost:
        c.faults["grid_meter_lost"] = "grid meter: no good reading for %s ms (max %d ms)" % (
            fmt_num((c.t - since_t) * 1000.0, 0),
            rule["meter_loss_ms"],
        )
    if lost or waiting:
        c.limit(
            rule["fallback_ac_a"] * dc_per_ac, "grid_fallback", grid_fallback_reason(waiting, rule["fallback_ac_a"])
        )
    elif state["grid_limit_a"] is not None:
        c.limit(
            state["grid_limit_a"],
            "grid",
            "site fuse: last good meter reading %s ms ago" % fmt_num((c.t - ok_t) * 1000.0, 0),
        )


def _rule_grid(c: _Ctx) -> None:
    if not c.snap.get("grid_configured"):
        return
    rule = c.cfg["grid"]
    dc_per_ac = _dc_a_per_ac_a(c, rule)
    meter = _grid_phases(c)
    if meter is not None:
        _grid_from_meter(c, rule, meter, dc_per_ac)
    else:
        _grid_without_meter(c, rule, dc_per_ac)


def _rule_external_faults(c: _Ctx) -> None:
    """Faults raised outside the core (``snapshot["external_faults"]``) join the one fault list.

    Never latched: each is present while its part reports it. ``stops_output`` -> 0 A, contactor open."""
    items = {}  # type: dict
    for item in c.snap.get("external_faults") or []:
        items[item[0]] = item
    for name in sorted(items):
        detail, stops = items[name][1], items[name][2]
        if name not in c.faults:  # a fault of the core's own keeps its detail
            c.faults[name] = detail
        if stops:
            c.limit(0.0, "external_fault", detail)
            c.external_stop = True


RULES = (
    _rule_modules,
    _rule_sensors,
    _rule_rate_of_change,
    _rule_pins_disagree,
    _rule_pins,
    _rule_coolant_temperature,
    _rule_module_temperature,
    _rule_ambient,
    _rule_flow,
    _rule_leak,
    _rule_over_current,
    _rule_over_voltage,
    _rule_grid,
    _rule_external_faults,
)


# -- the steps after the rules -----------------------------------------------------------------------------


def _base_limits(c: _Ctx) -> None:
    """Hardware rating, the vehicle's request and the operator's limit: limits like any rule's.

    ``snapshot["limits"]`` (optional, ``[[amps, rule, reason], ...]``) are limits decided outside this
    output's pipeline (the cabinet's share of the site fuse, the session rules of a connector); they come
    before the request so that, at equal amps, they name the rule."""
    c.limit(c.hw_max, "hardware", "hardware limit %s A" % fmt_num(c.hw_max, 0))
    for item in c.snap.get("limits") or []:
        c.limit(max(0.0, item[0]), item[1], item[2])
    c.limit(c.request, "request", "vehicle request %s A" % fmt_num(c.request, 0))
    ext = c.snap.get("external_limit_a")
    if ext is not None:
        c.limit(max(0.0, ext), "external", "external limit %s A (CLI/cloud)" % fmt_num(ext, 0))


def _apply_rules(c: _Ctx) -> None:
    for rule in RULES:
        rule(c)


def _lowest_limit(c: _Ctx) -> None:
    """The lowest limit wins (the first of equal ones names the rule), never above the hardware."""
    best = c.limits[0]
    for item in c.limits:
        if item[0] < best[0]:
            best = item
    c.target = max(0.0, min(best[0], c.hw_max))
    c.rule, c.reason = best[1], best[2]


def _latch_trips(c: _Ctx) -> None:
    """Every trip is a fault now; a latching one is kept in the state until cleared."""
    latched = c.state["latched"]
    for name in sorted(c.trips):
        detail, latch = c.trips[name][0], c.trips[name][1]
        c.faults[name] = detail
        if latch and name not in latched:
            latched[name] = detail


def _answer_clears(c: _Ctx) -> None:
    """A clear is granted only for a latched fault whose condition is verifiably gone."""
    latched = c.state["latched"]
    for name in c.snap.get("clear") or []:
        if name not in latched:
            c.refused.append([name, "not latched"])
        elif name in c.blockers:
            c.refused.append([name, c.blockers[name]])
        else:
            del latched[name]
            c.cleared.append(name)


def _list_latched(c: _Ctx) -> None:
    """A latched fault whose condition is gone stays in the fault list, marked as latched."""
    latched = c.state["latched"]
    for name in latched:
        if name not in c.faults:
            c.faults[name] = latched[name] + " (latched)"


def _trip_or_stop(c: _Ctx) -> None:
    """A trip (latched or now) or an operator stop means 0 A, whatever the rules allow."""
    latched = c.state["latched"]
    c.tripped = len(latched) > 0 or len(c.trips) > 0
    if c.tripped:
        names = sorted(list(latched.keys()) + [n for n in c.trips if n not in latched])
        c.target, c.rule = 0.0, "trip"
        c.reason = "tripped: %s: %s" % (names[0], c.faults[names[0]])
        if len(names) > 1:
            c.reason += " (+%d more)" % (len(names) - 1)
    elif c.stop:
        c.target, c.rule, c.reason = 0.0, "stop", "stopped by operator"


def _ramp_limit(c: _Ctx) -> None:
    """Reductions at once, increases after the hold and at the ramp rate (:func:`_ramp`); the reason says so."""
    cfg = c.cfg
    c.applied = _ramp(c.state, c.target, c.t, cfg)
    if c.applied < c.target:
        if c.t - c.state["t_reduced"] < cfg["raise_hold_ms"] / 1000.0 - EPS_S:
            c.reason += "; held %s s after a reduction" % fmt_num(cfg["raise_hold_ms"] / 1000.0)
        else:
            c.reason += "; rising %s A/s" % fmt_num(cfg["ramp_up_a_per_s"], 0)


def _contactor(c: _Ctx) -> None:
    """Closed for a session that may run (even at 0 A while derated); open on any trip, stop, lost safety
    input, stopping external fault or missing modules. Modules enabled only with a current above 0.

    The session is ``snapshot["session"]`` when given (a connector: its charging controller's mode, so a
    request of 0 A inside a session keeps the contactor closed), else a request above 0 A."""
    modules_ok = c.snap.get("modules_available", 0) > 0
    blocked = c.tripped or c.stop or c.sensor_fault or c.external_stop
    session = c.snap.get("session")
    wants = c.request > 0 if session is None else bool(session)
    c.contactor = wants and not blocked and modules_ok
    c.enable = c.contactor and c.applied > 0.0


def _pump(c: _Ctx) -> None:
    """On whenever current is wanted or flowing, and for a cool-down after; never with a leak."""
    state = c.state
    wants = c.request > 0 and not c.tripped and not c.stop
    if wants or c.enable:
        state["pump_until"] = c.t + PUMP_COOLDOWN_S
    leak = "coolant_leak" in state["latched"] or "coolant_leak" in c.trips
    c.pump = c.t < state["pump_until"] and not leak
    if not c.pump:
        state["pump_since"] = None
    elif state["pump_since"] is None:
        state["pump_since"] = c.t  # the flow trip counts from here


def _fan(c: _Ctx) -> None:
    """Full with the output on or a module / the ambient above its derating start; 30 % with the pump only."""
    hot = False
    for name, rule in FAN_INPUTS:
        v = c.value(name)
        if v is not None and v > c.cfg[rule]["derate_start_c"]:
            hot = True
    c.fan = 1.0 if (c.enable or hot) else (0.3 if c.pump else 0.0)


def _voltage_setpoint(c: _Ctx) -> None:
    """The voltage set-point for the modules, within 0 .. the lowest configured maximum (the output's
    hardware limit, the over-voltage trip). The config check refuses a set-point above it, so a clamp here
    means a bug upstream: the reason says so. Missing, NaN or negative: 0 V (the modules deliver nothing)."""
    want = c.snap.get("voltage_v")
    high = min(c.cfg["max_output_voltage_v"], c.cfg["over_voltage"]["max_v"])
    if want is None or want != want or want < 0.0:
        c.voltage = 0.0
        if want is not None:
            c.reason += "; voltage set-point %s V invalid, 0 V sent" % fmt_num(want)
    elif want > high:
        c.voltage = high
        c.reason += "; voltage set-point %s V clamped to %s V" % (fmt_num(want), fmt_num(high))
    else:
        c.voltage = want


STEPS = (
    _base_limits,
    _apply_rules,
    _lowest_limit,
    _latch_trips,
    _answer_clears,
    _list_latched,
    _trip_or_stop,
    _ramp_limit,
    _contactor,
    _pump,
    _fan,
    _voltage_setpoint,
)


def _decision(c: _Ctx) -> dict:
    docs = {}
    for name in c.faults:
        docs[name] = fault_doc(name)
    return {
        "limit_a": c.applied,
        "target_a": c.target,
        "voltage_v": c.voltage,
        "enable": c.enable,
        "contactor": c.contactor,
        "pump": c.pump,
        "fan": c.fan,
        "faults": sorted(c.faults.keys()),
        "fault_details": c.faults,
        "fault_docs": docs,
        "latched": sorted(c.state["latched"].keys()),
        "rule": c.rule,
        "reason": c.reason,
        "cleared": c.cleared,
        "clear_refused": c.refused,
    }


def evaluate(snapshot: dict, config: dict, previous_state: dict | None) -> tuple:
    """One evaluation: the steps of :data:`STEPS` in order on a copy of ``previous_state``."""
    state = _copy_state(previous_state if previous_state is not None else initial_state())
    c = _Ctx(snapshot, config, state)
    for step in STEPS:
        step(c)
    state["t_prev"] = c.t
    return _decision(c), state


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
