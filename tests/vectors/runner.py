"""Run safety-core scenario vectors and print every decision in a canonical text form.

Cases with "connectors" run the whole cabinet through ``connectors.evaluate_cabinet`` (see
:func:`run_cabinet_case`); the others run ``core.evaluate``.

Usage (the same file under both interpreters):
    python      tests/vectors/runner.py edge/limits resolved.json
    micropython -X heapsize=16M tests/vectors/runner.py edge/limits resolved.json

``resolved.json`` is a list of cases with the full limits config already merged in
(tests/test_limits_vectors.py writes it from tests/vectors/*.json). The core is imported by path as a
plain module, exactly as it would be on a safety MCU. Output: one JSON line per evaluation
({"case", "step", "last", "decision"}), keys sorted, floats with 6 decimals via the core's own formatter,
so CPython and MicroPython must print byte-identical text. Written in the subset both interpreters
share (no json.dumps key sorting; MicroPython dicts are unordered).

A case: {"name", "config", "snapshot": {defaults}, "fresh": {input: value}, "steps": [step, ...]}.
A step: {"t": s, "every": s, "until": s,          # one evaluation at t, or t, t+every, ... <= until
         "set": {input: value},                    # change a value that is re-sent fresh each evaluation
         "silent": [input], "revive": [input],     # sent at this step for the last time / again
         "drop": [input],                          # the input disappears
         "raw": {input: [value, t_rx, quality]},   # exact entries, this step only
         "snapshot": {...},                        # sticky changes to the other snapshot fields
         "clear": [fault], "expect": {...}}        # expect is checked by the CPython test only
"""

import json
import sys

sys.path.insert(0, sys.argv[1])
import connectors  # the cabinet with several connectors (imports core and inputs the same way)
import core  # imported by path, like on the MCU
import isolation  # noqa: F401  # connectors' own output rules, imported the same way
import overvoltage  # noqa: F401


def _str(s):
    out = '"'
    for ch in s:
        if ch == '"' or ch == "\\":
            out += "\\" + ch
        elif ord(ch) < 0x20:
            out += "\\u" + "0" * (4 - len(hex(ord(ch))[2:])) + hex(ord(ch))[2:]
        else:
            out += ch
    return out + '"'


def canon(x):
    if x is None:
        return "null"
    if x is True:
        return "true"
    if x is False:
        return "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x != x or x > 1e15 or x < -1e15:
            return _str(core.fmt_num(x, 6))
        return core.fmt_num(x, 6)
    if isinstance(x, str):
        return _str(x)
    if isinstance(x, (list, tuple)):
        return "[" + ",".join([canon(v) for v in x]) + "]"
    if isinstance(x, dict):
        return "{" + ",".join([_str(k) + ":" + canon(x[k]) for k in sorted(x)]) + "}"
    raise ValueError("cannot encode " + repr(x))


def run_case(case, emit):
    config = case["config"]
    snap_base = dict(case.get("snapshot") or {})
    fresh = dict(case.get("fresh") or {})
    silent = {}  # input -> last sample, kept as it was
    held = {}
    state = None
    for index, step in enumerate(case["steps"]):
        for k in step.get("set") or {}:
            fresh[k] = step["set"][k]
        for k in step.get("drop") or []:
            fresh.pop(k, None)
            silent.pop(k, None)
            held.pop(k, None)
        for k in step.get("revive") or []:
            silent.pop(k, None)
        for k in step.get("snapshot") or {}:
            snap_base[k] = step["snapshot"][k]
        times = _times(step)
        for i, t in enumerate(times):
            inputs = {}
            for k, value in fresh.items():
                inputs[k] = silent[k] if k in silent else [value, t, "ok"]
                held[k] = inputs[k]
            for k in step.get("raw") or {}:
                inputs[k] = step["raw"][k]
            snap = dict(snap_base)
            snap["t"] = t
            snap["inputs"] = inputs
            snap["clear"] = (step.get("clear") or []) if i == len(times) - 1 else []
            decision, state = core.evaluate(snap, config, state)
            emit(case["name"], index, i == len(times) - 1, decision)
        for k in step.get("silent") or []:
            if k in held:
                silent[k] = held[k]  # sent at this step, then never again


def _inputs(fresh, silent, held, raw, t):
    out = {}
    for k, value in fresh.items():
        out[k] = silent[k] if k in silent else [value, t, "ok"]
        held[k] = out[k]
    for k in raw or {}:
        out[k] = raw[k]
    return out


class _Part:
    """The sticky inputs and snapshot fields of the cabinet or of one connector in a cabinet case."""

    def __init__(self, spec):
        self.snap = dict(spec.get("snapshot") or {})
        self.fresh = dict(spec.get("fresh") or {})
        self.request = spec.get("request")
        self.refresh = spec.get("refresh", True)
        self.silent = {}
        self.held = {}

    def change(self, step):
        for k in step.get("set") or {}:
            self.fresh[k] = step["set"][k]
        for k in step.get("drop") or []:
            self.fresh.pop(k, None)
            self.silent.pop(k, None)
            self.held.pop(k, None)
        for k in step.get("revive") or []:
            self.silent.pop(k, None)
        for k in step.get("snapshot") or {}:
            self.snap[k] = step["snapshot"][k]
        if "request" in step:
            if step["request"] is None or self.request is None:
                self.request = step["request"]
            else:
                req = dict(self.request)
                for k in step["request"]:
                    req[k] = step["request"][k]
                self.request = req
        if "refresh" in step:
            self.refresh = step["refresh"]

    def build(self, step, t):
        snap = dict(self.snap)
        snap["inputs"] = _inputs(self.fresh, self.silent, self.held, step.get("raw"), t)
        imd = snap.get("imd")
        if imd is not None and "t" not in imd:  # an IMD reading without a time is a fresh one each evaluation
            imd = dict(imd)
            imd["t"] = t
            snap["imd"] = imd
        if self.request is not None and self.refresh:
            self.request = dict(self.request)
            self.request["t_mode"] = t
            self.request["t_setpoint"] = t
        return snap

    def mute(self, step):
        for k in step.get("silent") or []:
            if k in self.held:
                self.silent[k] = self.held[k]


def run_cabinet_case(case, emit):
    """A cabinet case: "connectors": {name: {"snapshot", "fresh", "request", "refresh"}}; a step may
    change each connector the same way under "connectors": {name: {"set", "snapshot", "request" (merged
    into the request; null drops it), "refresh" (false: the request's times stay), "silent", "drop"}}."""
    config = case["config"]
    cabinet = _Part(case)
    parts = {}
    for name in case["connectors"]:
        parts[name] = _Part(case["connectors"][name])
    state = None
    for index, step in enumerate(case["steps"]):
        cabinet.change(step)
        per = step.get("connectors") or {}
        for name in per:
            parts[name].change(per[name])
        times = _times(step)
        for i, t in enumerate(times):
            snap = cabinet.build(step, t)
            snap["t"] = t
            snap["clear"] = (step.get("clear") or []) if i == len(times) - 1 else []
            snap["connectors"] = {}
            for name, part in parts.items():
                conn = part.build(per.get(name) or {}, t)
                conn["request"] = part.request
                snap["connectors"][name] = conn
            decision, state = connectors.evaluate_cabinet(snap, config, state)
            emit(case["name"], index, i == len(times) - 1, decision)
        cabinet.mute(step)
        for name in per:
            parts[name].mute(per[name])


def _times(step):
    t0 = step["t"]
    times = [t0]
    if "every" in step:
        n = 1
        while t0 + n * step["every"] <= step["until"] + 1e-9:
            times.append(t0 + n * step["every"])
            n += 1
    return times


def main():
    with open(sys.argv[2]) as f:
        cases = json.loads(f.read())

    def emit(name, step, last, decision):
        print(canon({"case": name, "step": step, "last": last, "decision": decision}))

    for case in cases:
        if "connectors" in case:
            run_cabinet_case(case, emit)
        else:
            run_case(case, emit)


main()
