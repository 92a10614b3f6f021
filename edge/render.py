"""Human output of the CLI: plain text that fits an 80-column terminal, most important line first.

Pure functions from the daemon's JSON answers to text, so what `edge status` shows is testable without
a terminal. Missing values print as ``--``; a value whose quality is not ``ok`` carries the quality in
capitals (``41.2 STALE``), so a frozen sensor never looks like a good one.
"""

from __future__ import annotations

import math
import textwrap
import time
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

from edge.limits import inputs as table
from edge.status import shown_phase

WIDTH = 80
LABEL = 9  # width of the left label column
ELLIPSIS = "…"  # one column (East Asian "ambiguous": one column in wcwidth and in our fallback)


def _stdlib_width(text: str) -> int:
    """Display columns without wcwidth: wide and full-width characters (CJK) take two, combining marks
    (Thai vowels and tone marks) and control characters none."""
    cols = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf", "Cc"):
            continue
        cols += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return cols


def _wcwidth_or_none() -> Callable[[str], int] | None:
    try:
        from wcwidth import wcswidth  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None

    def width(text: str) -> int:
        n = int(wcswidth(text))
        return n if n >= 0 else _stdlib_width(text)  # -1: a control character somewhere

    return width


display_width: Callable[[str], int] = _wcwidth_or_none() or _stdlib_width


def clip(text: str, cols: int) -> str:
    """``text`` cut to at most ``cols`` display columns, ending in an ellipsis when something was cut."""
    if display_width(text) <= cols:
        return text
    out, used = "", 0
    for ch in text:
        w = display_width(ch)
        if used + w > cols - 1:
            break
        out, used = out + ch, used + w
    return out + ELLIPSIS if cols > 0 else ""


def pad(text: str, cols: int, right: bool = False) -> str:
    """``text`` clipped and padded to exactly ``cols`` display columns (left-aligned unless ``right``)."""
    text = clip(text, cols)
    fill = " " * (cols - display_width(text))
    return fill + text if right else text + fill


def _wrap(label: str, text: str, indent: int = LABEL) -> list[str]:
    first = f"{label:<{indent}}"
    return textwrap.wrap(
        text, WIDTH, initial_indent=first, subsequent_indent=" " * (indent + 2), break_on_hyphens=False
    ) or [first.rstrip()]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    s = int(max(0, seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d} d {h} h"
    if h:
        return f"{h} h {m:02d} m"
    if m:
        return f"{m} m {s:02d} s"
    return f"{s} s"


def clock(t_ms: int | float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t_ms / 1000.0))


def _reading(st: dict[str, Any], signal: str, fmt: str = "{:.1f}") -> str:
    r = st.get("readings", {}).get(signal)
    if not r or r.get("value") is None:
        return "--" if not r else f"-- {str(r.get('quality', '')).upper()}"
    text = fmt.format(r["value"])
    return text if r.get("quality") == "ok" else f"{text} {str(r.get('quality')).upper()}"


def machine_state(st: dict[str, Any]) -> str:
    rule = st.get("rule")
    if rule == "trip":
        return "TRIPPED"
    if rule == "stop" or st.get("stopped_by"):
        return "STOPPED"
    if st.get("selftest", {}).get("active"):
        return "SELF-TEST"
    if st.get("enable"):
        return "CHARGING" if _output(st)[1] > 1.0 else "READY"
    if (st.get("target_a") or 0) <= 0:
        return "OFF (fault)" if st.get("faults") else "OFF"
    return "STARTING"


def _who(source: str | None) -> str:
    if not source:
        return "?"
    return source.split(":", 1)[1] if source.startswith("cli:") else source


def limit_lines(st: dict[str, Any]) -> list[str]:
    target = st.get("target_a") or 0.0
    lines = _wrap("limit", f"{target:.0f} A  <- {st.get('reason') or 'starting'}")
    applied = st.get("limit_a") or 0.0
    if abs(applied - target) >= 1.0:
        lines.append(f"{'':<{LABEL}}now {applied:.0f} A, " + ("ramping up" if applied < target else "going down"))
    ext = st.get("external_limit")
    if ext:
        left = "until cleared" if ext.get("remaining_s") is None else f"{duration(ext['remaining_s'])} left"
        lines.append(
            f"{'':<{LABEL}}operator limit {ext['amps']:.0f} A by {_who(ext.get('source'))}, {left}  (edge limit clear)"
        )
    if st.get("stopped_by"):
        lines.append(f"{'':<{LABEL}}stopped by {_who(st['stopped_by'])}  (edge resume)")
    return lines


# the connector table: name, phase, request V and A, output V and A, limit, and its reason in the rest
CONNECTOR_COLUMNS = (("connector", 10, False), ("phase", 11, False), ("V req", 6, True), ("A req", 6, True),
                     ("V out", 7, True), ("A out", 7, True), ("limit", 6, True))  # fmt: skip
REASON_COLUMN = sum(w for _, w, _ in CONNECTOR_COLUMNS) + 1


def _num(v: Any, digits: int) -> str:
    """A measured or requested value, ``--`` when there is none (null, NaN)."""
    return f"{v:.{digits}f}" if isinstance(v, int | float) and math.isfinite(v) else "--"


def _amps(a: Any) -> str:
    """Amps to the precision that matters: 2.0 A in pre-charge, 200 A while charging."""
    return _num(a, 1 if isinstance(a, int | float) and abs(a) < 10 else 0)


def _cell(text: str, width: int, right: bool) -> str:
    """One table cell: ``width`` columns including the one space that separates it from its neighbour."""
    return " " + pad(text, width - 1, right=True) if right else pad(text, width - 1) + " "


def connector_lines(st: dict[str, Any]) -> list[str]:
    """One line per connector, at most :data:`WIDTH` display columns, the reason cut with an ellipsis (its
    whole text is in ``--json``; the limiting connector's reason is also the cabinet's ``limit`` line)."""
    conns = st.get("connectors") or []
    if not conns:
        return []
    out = ["".join(_cell(title, w, right) for title, w, right in CONNECTOR_COLUMNS) + " why"]
    for c in conns:
        asked = c.get("request_age_s") is not None
        values = (
            str(c.get("name")),
            shown_phase(c.get("mode"), c.get("phase")),
            _num(c.get("request_v"), 0) if asked else "--",
            _amps(c.get("request_a")) if asked else "--",
            _num(c.get("output_v"), 1),
            _num(c.get("output_a"), 1),
            _amps(c.get("limit_a")),
        )
        row = "".join(_cell(v, w, right) for v, (_, w, right) in zip(values, CONNECTOR_COLUMNS, strict=True))
        out.append(row + " " + clip(str(c.get("reason") or "starting"), WIDTH - REASON_COLUMN))
    return out


def sharing_lines(st: dict[str, Any]) -> list[str]:
    """Power sharing: the policy, then one line per module group (where it is, its modules, what it does)."""
    sharing = st.get("sharing")
    if not sharing:
        return []
    shares = ", ".join(f"{c} {_num(kw, 0)} kW" for c, kw in sharing.get("limit_kw", {}).items())
    out = [clip(f"sharing  {sharing.get('policy')}: {shares}", WIDTH)]
    for name, g in sharing.get("groups", {}).items():
        where = g.get("connector") or "-"
        mods = ",".join(str(m) for m in g.get("modules", []))
        out.append(clip(f"  group {name} -> {where}  modules {mods}  {g.get('state')}", WIDTH))
    return out


def fault_lines(faults: dict[str, str], latched: Iterable[str]) -> list[str]:
    if not faults:
        return ["faults   none"]
    latched = set(latched)
    out: list[str] = []
    for i, (name, detail) in enumerate(sorted(faults.items())):
        out.append(f"{'faults' if i == 0 else '':<{LABEL}}{name}" + ("  LATCHED" if name in latched else ""))
        out += textwrap.wrap(
            detail.removesuffix(" (latched)"),
            WIDTH,
            initial_indent=" " * (LABEL + 2),
            subsequent_indent=" " * (LABEL + 4),
            break_on_hyphens=False,
        )
        if name in latched:
            out.append(f"{'':<{LABEL + 2}}-> fix the cause, then: edge clear {name}")
    return out


def meter_lines(st: dict[str, Any]) -> list[str]:
    meters = st.get("meters", {})
    if not meters:
        return ["meter    none configured"]
    out = []
    for name, ms in meters.items():
        health = "ok" if ms.get("ok") else f"NO ANSWER ({ms.get('errors', 0)} errors: {ms.get('last_error')}"
        if not ms.get("ok"):
            health += f"; retry in {duration(ms['backoff_s'])})" if ms.get("absent") and ms.get("backoff_s") else ")"
        v = "/".join(_reading(st, f"{name}.Voltage.L{i}", "{:.0f}") for i in (1, 2, 3))
        a = "/".join(_reading(st, f"{name}.Current.Import.L{i}", "{:.1f}") for i in (1, 2, 3))
        e = _reading(st, f"{name}.Energy.Active.Import.Register", "{:.2f}")
        out += _wrap("meter", f"{name} {health}  {v} V  {a} A")
        out.append(f"{'':<{LABEL + 2}}P {_kw(st, f'{name}.Power.Active.Import')}  E {e} kWh")
    return out


def isolation_lines(st: dict[str, Any]) -> list[str]:
    """One line per insulation monitor: its health, the resistance it reads and its self-test."""
    out = []
    for name, m in st.get("isolation", {}).items():
        health = "ok" if m.get("ok") else f"NO ANSWER ({m.get('errors', 0)} errors: {m.get('last_error')})"
        ohm = m.get("ohm")
        value = "--" if ohm is None else f"{ohm / 1000.0:.0f} kOhm"
        test = m.get("self_test") or "-"
        out += _wrap("imd", f"{name} {health}  R {value}  {m.get('status') or '-'}  self-test {test}")
    return out


def _kw(st: dict[str, Any], signal: str) -> str:
    r = st.get("readings", {}).get(signal)
    if not r or r.get("value") is None:
        return "-- kW"
    text = f"{r['value'] / 1000.0:.1f} kW"
    return text if r.get("quality") == "ok" else f"{text} {str(r.get('quality')).upper()}"


def module_lines(st: dict[str, Any]) -> list[str]:
    mods = st.get("modules", {})
    if not mods:
        return ["modules  none configured"]
    out = [f"{'modules':<{LABEL}}{'#':>3}  {'state':<6}{'V':>7}{'A':>8}{'°C':>7}  alarms"]
    for addr, m in sorted(mods.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0):
        lost = bool(m.get("lost"))
        state = "LOST" if lost else ("on" if m.get("on") else "off")
        temp = m.get("temperature_c")
        alarms = ",".join(m.get("alarms") or []) or ("no answer" if lost else "-")
        v, a = m.get("voltage_v") or 0.0, m.get("current_a") or 0.0
        # a lost module's last values are history, not measurements: never show them as if live
        v_txt, a_txt = ("--", "--") if lost else (f"{v:.1f}", f"{a:.1f}")
        t_txt = "--" if lost or temp is None else f"{temp:.1f}"
        line = f"{'':<{LABEL}}{addr:>3}  {state:<6}{v_txt:>7}{a_txt:>8}{t_txt:>7}  {alarms}"
        out.append(line[:WIDTH])
    return out


def _cable_value(st: dict[str, Any], cable: str, name: str) -> str:
    """``40.0 °C``: the cable reading that feeds input ``name``, with its unit and decimals from the table."""
    e = table.entry(name)
    signal = f"{cable}.{e['reading']}"
    return f"{_reading(st, signal, '{:.' + str(e['digits']) + 'f}')} {e['unit']}"


def cable_lines(st: dict[str, Any], cable: str | None) -> list[str]:
    if cable is None:
        return ["cable    none configured"]

    def v(name: str) -> str:
        return _cable_value(st, cable, name)

    def coolant(name: str) -> str:
        return f"{table.entry(name)['short'].removeprefix('coolant ')} {v(name)}"

    leak = st.get("readings", {}).get(f"{cable}.{table.reading(table.COOLANT_LEAK)}")
    leak_txt = "" if not leak else ("  LEAK DETECTED" if leak.get("value") else "")
    pins = "   ".join(f"{table.entry(n)['short']} {v(n)}" for n in (table.PIN_DC_PLUS, table.PIN_DC_MINUS))
    o = st.get("outputs", {})
    return [
        f"{'cable':<{LABEL}}{pins}{leak_txt}",
        f"{'coolant':<{LABEL}}{coolant(table.COOLANT_IN)}  {coolant(table.COOLANT_OUT)}"
        f"  {coolant(table.COOLANT_FLOW)}  {v(table.COOLANT_PRESSURE)}",
        f"{'outputs':<{LABEL}}contactor {'CLOSED' if o.get('contactor') else 'open'}"
        f"  pump {'on' if o.get('pump') else 'off'}  fan {'on' if o.get('fan') else 'off'}",
    ]


def uplink_state(tel: dict[str, Any]) -> str:
    """Whatever the telemetry side reports; its keys may grow, so read them defensively."""
    nested = tel.get("uplink")
    up: dict[str, Any] = nested if isinstance(nested, dict) else tel
    if up.get("enabled") is False:
        return "disabled (telemetry.mqtt.enabled = false)"
    state = up.get("state")
    if state is None and "connected" in up:
        state = "connected" if up.get("connected") else "DISCONNECTED"
    if state is None:
        return "state not reported"
    text = str(state)
    if up.get("broker") or up.get("host"):
        text += f" to {up.get('broker') or up.get('host')}"
    if not up.get("connected", True) and up.get("last_error"):
        text += f": {up['last_error']}"
        if up.get("next_reconnect_s") is not None:
            text += f", retry in {duration(up['next_reconnect_s'])}"
    return text


def uplink_lines(st: dict[str, Any]) -> list[str]:
    tel = st.get("telemetry") or {}
    text = f"{uplink_state(tel)};  backlog {tel.get('backlog', '--')} records, last seq {tel.get('last_seq', '--')}"
    if tel.get("write_errors"):
        text += f";  STORE WRITE ERRORS {tel['write_errors']}"
    if tel.get("degraded"):
        text += ";  STORE DEGRADED"
    if tel.get("evicted"):
        text += f";  {tel['evicted']} records evicted (store full)"
    return _wrap("uplink", text) + _wrap("traffic", traffic_text(tel))


def _mb(n: Any) -> str:
    return "--" if not isinstance(n, int | float) else f"{n / 1e6:.1f} MB"


def traffic_text(tel: dict[str, Any]) -> str:
    """Bytes sent today / this month / per day (estimate), and days of store capacity at the current rate."""
    nested = tel.get("uplink")
    up: dict[str, Any] = nested if isinstance(nested, dict) else {}
    text = (
        f"sent {_mb(up.get('bytes_today'))} today, {_mb(up.get('bytes_month'))} this month, "
        f"~{_mb(up.get('bytes_per_day_est'))}/day ({up.get('format', '--')})"
    )
    days = tel.get("store_days_left")
    return text + (f";  store full in {days} days at this rate" if days is not None else ";  store rate: measuring")


def can_lines(st: dict[str, Any]) -> list[str]:
    """One line for the CAN buses: health (bus-off, error-passive) and any loss, from the CAN side's keys."""
    buses = st.get("can") or {}
    if not buses:
        return []
    parts = []
    for name, b in buses.items():
        text = f"{name} {b.get('health', 'ok')}"
        if b.get("reason"):
            text += f" ({b['reason']})"
        for key, label in (
            ("dropped", "dropped"),
            ("error_frames", "error frames"),
            ("rx_errors", "malformed frames"),
            ("send_errors", "send errors"),
            ("bus_off", "bus-off"),
            ("reopens", "reopens"),
        ):
            if b.get(key):
                text += f" {label} {b[key]}"
        parts.append(text)
    frames = st.get("can_frames") or {}
    for key, label in (("unknown", "unknown frames"), ("decode_errors", "decode errors")):
        if frames.get(key):
            parts.append(f"{label} {frames[key]}")
    return _wrap("can", ";  ".join(parts))


def _finite(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else 0.0


def _output(st: dict[str, Any]) -> tuple[float, float, float]:
    """Highest output voltage, total current and total power (kW): measured at the connectors when the
    daemon reports them, else from the modules that answer."""
    conns = st.get("connectors") or []
    if conns:
        pairs = [(_finite(c.get("output_v")), _finite(c.get("output_a"))) for c in conns]
    else:
        mods = [m for m in st.get("modules", {}).values() if not m.get("lost")]
        volts = max([(m.get("voltage_v") or 0.0) for m in mods], default=0.0)
        pairs = [(volts, sum((m.get("current_a") or 0.0) for m in mods))]
    return max(v for v, _ in pairs), sum(a for _, a in pairs), sum(v * a for v, a in pairs) / 1000


def output_line(st: dict[str, Any]) -> str:
    volts, amps, kw = _output(st)
    return f"{'state':<{LABEL}}{machine_state(st):<12}output {volts:.0f} V  {amps:.1f} A  {kw:.1f} kW"


def status_text(st: dict[str, Any], cable: str | None = None) -> str:
    if cable is None:
        pin = "." + table.reading(table.PIN_DC_PLUS)
        cable = next((s.split(".", 1)[0] for s in st.get("readings", {}) if s.endswith(pin)), None)
    head = (
        f"cabinet {st.get('cabinet_id')} @ {st.get('site_id')}   up {duration(st.get('uptime_s'))}"
        f"   edge {st.get('version')}"
    )
    if st.get("time_ms"):
        head += f"   {time.strftime('%H:%M:%S %Z', time.localtime(st['time_ms'] / 1000))}"
    estop = st.get("estop")
    lines = [
        head[:WIDTH],
        *(_wrap("E-STOP", estop) if estop and estop != "ok" else []),  # before anything else it explains
        output_line(st),
        *limit_lines(st),
        *connector_lines(st),
        *sharing_lines(st),
        *fault_lines(st.get("faults", {}), st.get("latched", [])),
        *module_lines(st),
        *cable_lines(st, cable),
        *meter_lines(st),
        *isolation_lines(st),
        *can_lines(st),
        *uplink_lines(st),
    ]
    # the 80-column promise holds for whatever a device or the core puts in a text (wrapped by len above)
    return "\n".join(clip(ln, WIDTH) for ln in lines)


def faults_text(data: dict[str, Any]) -> str:
    faults = data.get("faults", {})
    lines = []
    if not faults:
        lines.append("no active faults")
    for name, f in faults.items():
        detail = str(f.get("detail")).removesuffix(" (latched)")
        lines += _wrap(name, ("LATCHED: " if f.get("latched") else "") + detail, indent=max(LABEL, len(name) + 2))
        lines.append(f"{'':<4}-> {f.get('hint')}")
    for addr, alarms in (data.get("module_alarms") or {}).items():
        lines.append(f"module {addr} alarms: {', '.join(alarms)}")
    lines += _wrap("limit", f"{(data.get('limit_a') or 0):.0f} A  <- {data.get('reason')}")
    return "\n".join(lines)


def event_detail(ev: dict[str, Any]) -> str:
    if ev.get("kind") == "command":
        args = " ".join(f"{k}={v}" for k, v in (ev.get("args") or {}).items() if v is not None)
        return f"by {ev.get('user')} (uid {ev.get('uid')}){': ' + args if args else ''} -> {ev.get('result')}"
    skip = {"seq", "t_ms", "kind", "name"}
    for key in ("detail", "reason", "result"):
        if ev.get(key):
            rest = {k: v for k, v in ev.items() if k not in skip and k != key}
            return str(ev[key]) + ("  " + " ".join(f"{k}={v}" for k, v in rest.items()) if rest else "")
    return " ".join(f"{k}={v}" for k, v in ev.items() if k not in skip)


def events_text(events: list[dict[str, Any]]) -> str:
    if not events:
        return "no events in that period"
    lines = []
    for ev in events:
        head = f"{clock(ev['t_ms'])} {ev.get('kind')} {ev.get('name')}"
        detail = event_detail(ev)
        lines += textwrap.wrap(
            f"{head}: {detail}" if detail else head, WIDTH, subsequent_indent=" " * 20, break_on_hyphens=False
        )
    return "\n".join(lines)


def selftest_text(r: dict[str, Any]) -> str:
    def fmt(v: float | None, spec: str = "{:.1f}") -> str:
        return "--" if v is None else spec.format(v)

    b, a = r.get("before", {}), r.get("after", {})
    rows = [(e["short"], e["name"], e["unit"], f"{{:.{e['digits']}f}}") for e in map(table.entry, table.SELFTEST)]
    out = [
        f"self-test: pump and fan on for {r.get('duration_s'):g} s with the output off",
        f"{'':<18}{'before':>10}{'after':>10}",
    ]
    for label, key, unit, spec in rows:
        out.append(f"{label:<18}{fmt(b.get(key), spec):>10}{fmt(a.get(key), spec):>10}  {unit}")
    lo, hi = fmt(r.get("flow_min_lpm"), "{:.2f}"), fmt(r.get("flow_max_lpm"), "{:.2f}")
    held = fmt(r.get("flow_settled_lpm"), "{:.2f}")
    out.append(
        f"flow during test  held {held}  min {lo}  max {hi} l/min "
        f"(full current needs {r.get('flow_full_current_lpm'):g})"
    )
    seen = r.get("outputs_seen", {})
    pump, fan = ("yes" if seen.get(k) else "NO" for k in ("pump", "fan"))
    out.append(f"outputs seen on   pump {pump}  fan {fan}")
    out += _wrap("result", f"{str(r.get('verdict')).upper()}: {r.get('why')}", indent=18)
    return "\n".join(out)
