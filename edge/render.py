"""Human output of the CLI: plain text that fits an 80-column terminal, most important line first.

Pure functions from the daemon's JSON answers to text, so what `edge status` shows is testable without
a terminal. Missing values print as ``--``; a value whose quality is not ``ok`` carries the quality in
capitals (``41.2 STALE``), so a frozen sensor never looks like a good one.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import sys
import time
from collections.abc import Iterable
from typing import Any

from edge.i18n import _, clip, core_text, display_width
from edge.limits import inputs as table
from edge.status import shown_phase

WIDTH = 80
HEIGHT = 24
LABEL = 9  # width of the left label column
ELLIPSIS = "…"  # one column (East Asian "ambiguous": one column in wcwidth)

__all__ = ["HEIGHT", "WIDTH", "clip", "display_width", "fit_screen", "status_line", "status_text"]


def pad(text: str, cols: int, right: bool = False) -> str:
    """``text`` clipped and padded to exactly ``cols`` display columns (left-aligned unless ``right``)."""
    text = clip(text, cols)
    fill = " " * (cols - display_width(text))
    return fill + text if right else text + fill


def wrap_cells(text: str, width: int, first: str = "", rest: str = "") -> list[str]:
    """``text`` broken at spaces into lines of at most ``width`` terminal cells (CJK counts two), the first
    line after ``first``, the others after ``rest``; runs of spaces inside a line are kept (``;  ``), a
    word longer than a line is clipped."""
    out: list[str] = []
    line, empty, gap = first, True, ""  # empty: nothing after the line's lead yet; gap: spaces before the next word
    for token in re.findall(r"\S+|\s+", text):
        if token.isspace():
            gap = "" if empty else token
            continue
        if empty or display_width(line + gap + token) <= width:
            line, empty = line + gap + token, False
        else:
            out.append(clip(line, width))
            line = rest + token
        gap = ""
    out.append(line.rstrip() if empty else clip(line, width))
    return out


def _label(label: str, indent: int = LABEL) -> str:
    """A left label padded to ``indent`` cells (a translated label may be wider: then one space after it)."""
    return pad(label, indent) if display_width(label) < indent else label + " "


def _wrap(label: str, text: str, indent: int = LABEL) -> list[str]:
    return wrap_cells(text, WIDTH, _label(label, indent), " " * (indent + 2))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    s = int(max(0, seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return _("{d} d {h} h").format(d=d, h=h)
    if h:
        return _("{h} h {m:02d} m").format(h=h, m=m)
    if m:
        return _("{m} m {s:02d} s").format(m=m, s=s)
    return _("{s} s").format(s=s)


def countdown(seconds: float | None) -> str:
    """A wait until a deadline: whole seconds rounded up (``0.2`` s is ``1 s``, never a stuck ``0 s``)."""
    return "--" if seconds is None else duration(math.ceil(max(0.0, seconds)))


def _retry(wait_s: float, waiting: str, trying: str) -> str:
    """``retry in 4 s`` while the next try is ahead, ``retrying now`` once it is due (being made)."""
    return waiting.format(time=countdown(wait_s)) if wait_s > 0 else trying


def clock(t_ms: int | float) -> str:
    """A wall-clock time in UTC, with the zone (events, expiries and the status header say the same)."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t_ms / 1000.0))


def _quality(q: Any) -> str:
    return _(str(q)).upper()


def _reading(st: dict[str, Any], signal: str, fmt: str = "{:.1f}") -> str:
    r = st.get("readings", {}).get(signal)
    if not r or r.get("value") is None:
        return "--" if not r else f"-- {_quality(r.get('quality', ''))}"
    text = fmt.format(r["value"])
    return text if r.get("quality") == "ok" else f"{text} {_quality(r.get('quality'))}"


def machine_state(st: dict[str, Any]) -> str:
    rule = st.get("rule")
    # a trip on one connector while another delivers: the cabinet charges (that connector's row and the faults
    # say FAULT and LATCHED); TRIPPED is for a cabinet whose trip holds every output off
    if rule == "trip" and not (st.get("enable") and _output(st)[1] > 1.0):
        return _("TRIPPED")
    if rule == "stop" or st.get("stopped_by"):
        return _("STOPPED")
    if st.get("selftest", {}).get("active"):
        return _("SELF-TEST")
    if st.get("enable"):
        return _("CHARGING") if _output(st)[1] > 1.0 else _("READY")
    if (st.get("target_a") or 0) <= 0:
        return _("OFF (fault)") if st.get("faults") else _("OFF")
    return _("STARTING")


def _who(source: str | None) -> str:
    if not source:
        return "?"
    return source.split(":", 1)[1] if source.startswith("cli:") else source


def _reason(text: Any) -> str:
    return core_text(str(text)) if text else _("starting")


def limit_lines(st: dict[str, Any]) -> list[str]:
    target = st.get("target_a") or 0.0
    lines = _wrap(_("limit"), f"{target:.0f} A  <- {_reason(st.get('reason'))}")
    applied = st.get("limit_a") or 0.0
    indent = " " * LABEL
    if abs(applied - target) >= 1.0:
        way = _("ramping up") if applied < target else _("going down")
        lines.append(indent + _("now {amps} A, {way}").format(amps=f"{applied:.0f}", way=way))
    ext = st.get("external_limit")
    if ext:
        left = (
            _("until cleared")
            if ext.get("remaining_s") is None
            else _("{time} left").format(time=duration(ext["remaining_s"]))
        )
        text = _("operator limit {amps} A by {who}, {left}  (edge limit clear)")
        lines += wrap_cells(
            text.format(amps=f"{ext['amps']:.0f}", who=_who(ext.get("source")), left=left), WIDTH, indent, indent
        )
    if st.get("stopped_by"):
        lines.append(indent + _("stopped by {who}  (edge resume)").format(who=_who(st["stopped_by"])))
    return [clip(ln, WIDTH) for ln in lines]


# the connector table: name, phase, request V and A, output V and A, limit, and its reason in the rest
CONNECTOR_COLUMNS = (("connector", 10, False), ("phase", 11, False), ("V req", 6, True), ("A req", 6, True),
                     ("V out", 7, True), ("A out", 7, True), ("limit", 6, True))  # fmt: skip
REASON_COLUMN = sum(w for _t, w, _r in CONNECTOR_COLUMNS) + 1


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
    head = "".join(_cell(_(title), w, right) for title, w, right in CONNECTOR_COLUMNS) + " " + _("why")
    out = [clip(head, WIDTH)]
    for c in conns:
        asked = c.get("request_age_s") is not None
        values = (
            str(c.get("name")),
            _(shown_phase(c.get("mode"), c.get("phase"))),
            _num(c.get("request_v"), 0) if asked else "--",
            _amps(c.get("request_a")) if asked else "--",
            _num(c.get("output_v"), 1),
            _num(c.get("output_a"), 1),
            _amps(c.get("limit_a")),
        )
        row = "".join(_cell(v, w, right) for v, (_t, w, right) in zip(values, CONNECTOR_COLUMNS, strict=True))
        out.append(row + " " + clip(_reason(c.get("reason")), WIDTH - REASON_COLUMN))
        if c.get("out_of_service"):  # a welded contactor: what the technician must do, under its row
            indent = " " * CONNECTOR_COLUMNS[0][1]
            out += wrap_cells(_("OUT OF SERVICE: contactor welded, clear on site after repair"), WIDTH, indent, indent)
    return out


# what each line of the screen is worth when the terminal is too short: lower numbers stay
P_HEAD, P_LIMIT, P_FAULT, P_DETAIL, P_DEVICE, P_LINK = 0, 1, 2, 3, 4, 5
Tagged = list[tuple[float, str]]  # a fractional priority: a group of lines kept whole or not at all


def _tag(priority: float, lines: Iterable[str]) -> Tagged:
    return [(priority, ln) for ln in lines]


def fault_lines_tagged(faults: dict[str, str], latched: Iterable[str]) -> Tagged:
    """Each active fault's name (kept on a short screen) and its detail and clear hint (dropped first)."""
    if not faults:
        return [(P_FAULT, _label(_("faults")) + _("none"))]
    latched = set(latched)
    out: Tagged = []
    for i, (name, detail) in enumerate(sorted(faults.items())):
        mark = "  " + _("LATCHED") if name in latched else ""
        out.append((P_FAULT, clip(_label(_("faults") if i == 0 else "") + name + mark, WIDTH)))
        body = wrap_cells(core_text(detail.removesuffix(" (latched)")), WIDTH, " " * (LABEL + 2), " " * (LABEL + 4))
        group = P_DETAIL + (i + 1) / 1000  # one fault's detail is shown whole or not at all
        out += _tag(group, body)
        if name in latched:
            hint = _("-> fix the cause, then: edge clear {fault}").format(fault=name)
            out.append((group, clip(" " * (LABEL + 2) + hint, WIDTH)))
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
    out += [clip(f"  {c}: {core_text(why)}", WIDTH) for c, why in sharing.get("reasons", {}).items()]
    return out


def fault_lines(faults: dict[str, str], latched: Iterable[str]) -> list[str]:
    return [ln for _p, ln in fault_lines_tagged(faults, latched)]


def meter_lines(st: dict[str, Any]) -> list[str]:
    meters = st.get("meters", {})
    if not meters:
        return [_label(_("meter")) + _("none configured")]
    out = []
    for name, ms in meters.items():
        if ms.get("ok"):
            health = _("ok")
        else:
            health = _("NO ANSWER ({errors} errors: {error}").format(
                errors=ms.get("errors", 0), error=ms.get("last_error")
            )
            wait = ms.get("retry_in_s", ms.get("backoff_s")) if ms.get("absent") else None
            health += ("; " + _retry(wait, _("retry in {time}"), _("retrying now")) if wait is not None else "") + ")"
        # an absent meter's last values are history: dashes, not numbers that look live
        gone = bool(ms.get("absent"))

        def value(signal: str, fmt: str, gone: bool = gone) -> str:
            return "--" if gone else _reading(st, signal, fmt)

        v = "/".join(value(f"{name}.Voltage.L{i}", "{:.0f}") for i in (1, 2, 3))
        a = "/".join(value(f"{name}.Current.Import.L{i}", "{:.1f}") for i in (1, 2, 3))
        e = value(f"{name}.Energy.Active.Import.Register", "{:.2f}")
        kw = "-- kW" if gone else _kw(st, f"{name}.Power.Active.Import")
        out += _wrap(_("meter"), f"{name} {health}  {v} V  {a} A")
        out.append(clip(f"{'':<{LABEL + 2}}P {kw}  E {e} kWh", WIDTH))
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
    return text if r.get("quality") == "ok" else f"{text} {_quality(r.get('quality'))}"


def module_lines(st: dict[str, Any]) -> list[str]:
    mods = st.get("modules", {})
    if not mods:
        return [_label(_("modules")) + _("none configured")]
    head = f"{pad(_('modules'), LABEL)}{'#':>3}  {pad(_('state'), 6)}{'V':>7}{'A':>8}{'°C':>7}  " + _("alarms")
    out = [clip(head, WIDTH)]
    for addr, m in sorted(mods.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0):
        lost = bool(m.get("lost"))
        state = _("LOST") if lost else (_("on") if m.get("on") else _("off"))
        alarms = ",".join(m.get("alarms") or []) or ("-" if not lost else _("no answer"))
        if lost and m.get("retry_in_s") is not None:
            alarms += ", " + _retry(m["retry_in_s"], _("re-poll in {time}"), _("re-polling now"))
        # a lost module's last values are history, not measurements: never show them as if live
        v_txt, a_txt, t_txt = (
            ("--", "--", "--")
            if lost
            else (_num(m.get("voltage_v"), 1), _num(m.get("current_a"), 1), _num(m.get("temperature_c"), 1))
        )
        line = f"{'':<{LABEL}}{addr:>3}  {pad(state, 6)}{v_txt:>7}{a_txt:>8}{t_txt:>7}  {alarms}"
        out.append(clip(line, WIDTH))
    return out


def _cable_value(st: dict[str, Any], cable: str, name: str) -> str:
    """``40.0 °C``: the cable reading that feeds input ``name``, with its unit and decimals from the table."""
    e = table.entry(name)
    signal = f"{cable}.{e['reading']}"
    return f"{_reading(st, signal, '{:.' + str(e['digits']) + 'f}')} {e['unit']}"


def _short(name: str) -> str:
    return _(table.entry(name)["short"])


def cable_lines(st: dict[str, Any], cable: str | None, label_name: bool = False) -> list[str]:
    """The cable monitor's pins and coolant (``label_name``: say which cable, when there are several)."""
    if cable is None:
        return [_label(_("cable")) + _("none configured")]

    def v(name: str) -> str:
        return _cable_value(st, cable, name)

    def coolant(name: str) -> str:
        return f"{_short(name).removeprefix(_('coolant') + ' ')} {v(name)}"

    leak = st.get("readings", {}).get(f"{cable}.{table.reading(table.COOLANT_LEAK)}")
    leak_txt = "" if not leak else ("  " + _("LEAK DETECTED") if leak.get("value") else "")
    pins = "   ".join(f"{_short(n)} {v(n)}" for n in (table.PIN_DC_PLUS, table.PIN_DC_MINUS))
    name = f"{cable}: " if label_name else ""
    parts = [coolant(table.COOLANT_IN), coolant(table.COOLANT_OUT), coolant(table.COOLANT_FLOW)]
    parts.append(v(table.COOLANT_PRESSURE))
    return _wrap(_("cable"), f"{name}{pins}{leak_txt}") + _wrap(_("coolant"), "  ".join(parts))


def _reading_label(reading: str) -> str:
    """``pin DC+`` for ``pin_dc_plus_c``: the short name a technician knows, else the reading's own."""
    for e in table.INPUTS:
        if e.get("reading") == reading:
            return _(e["short"])
    return reading


def _check_texts(cable: str, diag: dict[str, Any]) -> list[str]:
    """What to check for one cable monitor: silence, a stuck or lossy sender, a faulty or out-of-range
    sensor each name a different part."""
    if diag.get("last_frame_s") is None:
        text = _(
            "{cable}: no frame from its cable monitor (node {node}) since start: "
            "check the monitor's CAN wiring, node id and power"
        )
        return [text.format(cable=cable, node=diag.get("node_id"))]
    if diag.get("silent"):
        text = _("{cable}: cable monitor silent for {time}: check its CAN cable, termination and power supply")
        return [text.format(cable=cable, time=duration(diag["last_frame_s"]))]
    by_cause: dict[str, list[str]] = {}
    for reading, cause in (diag.get("invalid") or {}).items():
        by_cause.setdefault(cause, []).append(_reading_label(reading))
    texts = {
        "frozen": _(
            "{cable}: the cable monitor repeats the same frame (counter stuck): "
            "restart or replace the cable monitor unit"
        ),
        "counter_jump": _(
            "{cable}: frames lost on the way (counter skipped): check the CAN bus (errors, bus-off, termination)"
        ),
        "fault_bit": _(
            "{cable}: the cable monitor flags {sensors} faulty: check that sensor and its plug (open or short)"
        ),
        "out_of_range": _("{cable}: {sensors} out of range: check that sensor and its wiring in the connector"),
        "bad_length": _("{cable}: frames of the wrong length: the cable monitor's firmware does not match its DBC"),
    }
    return [
        texts.get(cause, "{cable}: {sensors} " + cause).format(cable=cable, sensors=", ".join(sensors))
        for cause, sensors in sorted(by_cause.items())
    ]


def check_lines(st: dict[str, Any]) -> list[str]:
    """``check`` lines: the part to look at for each cable monitor that is silent or sends invalid values."""
    out: list[str] = []
    for cable, diag in sorted((st.get("cable_status") or {}).items()):
        for text in _check_texts(cable, diag):
            out += _wrap(_("check"), text)
    return out


def outputs_line(st: dict[str, Any]) -> str:
    o = st.get("outputs", {})
    text = _("contactor {contactor}  pump {pump}  fan {fan}").format(
        contactor=_("CLOSED") if o.get("contactor") else _("open"),
        pump=_("on") if o.get("pump") else _("off"),
        fan=_("on") if o.get("fan") else _("off"),
    )
    return clip(_label(_("outputs")) + text, WIDTH)


def uplink_state(tel: dict[str, Any]) -> str:
    """Whatever the telemetry side reports; its keys may grow, so read them defensively."""
    nested = tel.get("uplink")
    up: dict[str, Any] = nested if isinstance(nested, dict) else tel
    if up.get("enabled") is False:
        return _("disabled (telemetry.mqtt.enabled = false)")
    state = up.get("state")
    if state is None and "connected" in up:
        state = _("connected") if up.get("connected") else _("DISCONNECTED")
    if state is None:
        return _("state not reported")
    text = str(state)
    if up.get("broker") or up.get("host"):
        text += " " + _("to {broker}").format(broker=up.get("broker") or up.get("host"))
    if not up.get("connected", True) and up.get("last_error"):
        text += f": {up['last_error']}"
        if up.get("next_reconnect_s") is not None:
            text += ", " + _retry(up["next_reconnect_s"], _("retry in {time}"), _("retrying now"))
    return text


def uplink_lines(st: dict[str, Any]) -> list[str]:
    tel = st.get("telemetry") or {}
    text = (
        uplink_state(tel)
        + ";  "
        + _("backlog {backlog} records, last seq {seq}").format(
            backlog=tel.get("backlog", "--"), seq=tel.get("last_seq", "--")
        )
    )
    if tel.get("write_errors"):
        text += ";  " + _("STORE WRITE ERRORS {n}").format(n=tel["write_errors"])
    if tel.get("degraded"):
        text += ";  " + _("STORE DEGRADED")
    if tel.get("evicted"):
        text += ";  " + _("{n} records evicted (store full)").format(n=tel["evicted"])
    return _wrap(_("uplink"), text) + _wrap(_("traffic"), traffic_text(tel))


def _mb(n: Any) -> str:
    return "--" if not isinstance(n, int | float) else f"{n / 1e6:.1f} MB"


def traffic_text(tel: dict[str, Any]) -> str:
    """Bytes sent today / this month / per day (estimate), and days of store capacity at the current rate."""
    nested = tel.get("uplink")
    up: dict[str, Any] = nested if isinstance(nested, dict) else {}
    text = _("sent {today} today, {month} this month, ~{day}/day ({format})").format(
        today=_mb(up.get("bytes_today")),
        month=_mb(up.get("bytes_month")),
        day=_mb(up.get("bytes_per_day_est")),
        format=up.get("format", "--"),
    )
    days = tel.get("store_days_left")
    if days is not None:
        return text + ";  " + _("store full in {days} days at this rate").format(days=days)
    return text + ";  " + _("store rate: measuring")


CAN_COUNTERS = (
    ("dropped", "dropped"),
    ("error_frames", "error frames"),
    ("rx_errors", "malformed frames"),
    ("send_errors", "send errors"),
    ("bus_off", "bus-off"),
    ("reopens", "reopens"),
)
FRAME_COUNTERS = (("unknown", "unknown frames"), ("decode_errors", "decode errors"))


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
        for key, label in CAN_COUNTERS:
            if b.get(key):
                text += f" {_(label)} {b[key]}"
        parts.append(text)
    frames = st.get("can_frames") or {}
    for key, label in FRAME_COUNTERS:
        if frames.get(key):
            parts.append(f"{_(label)} {frames[key]}")
    return _wrap(_("can"), ";  ".join(parts))


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
        volts = max([_finite(m.get("voltage_v")) for m in mods], default=0.0)
        pairs = [(volts, sum(_finite(m.get("current_a")) for m in mods))]
    return max(v for v, _a in pairs), sum(a for _v, a in pairs), sum(v * a for v, a in pairs) / 1000


def output_line(st: dict[str, Any]) -> str:
    volts, amps, kw = _output(st)
    text = _("output {volts} V  {amps} A  {kw} kW").format(volts=f"{volts:.0f}", amps=f"{amps:.1f}", kw=f"{kw:.1f}")
    return clip(_label(_("state")) + pad(machine_state(st), 12) + text, WIDTH)


def _cables(st: dict[str, Any], cable: str | None) -> list[str | None]:
    """The cable monitors to show: given, configured (the daemon says which), else the ones that report."""
    if cable is not None:
        return [cable]
    if st.get("cables"):
        return list(st["cables"])
    pin = "." + table.reading(table.PIN_DC_PLUS)
    found = sorted({s.split(".", 1)[0] for s in st.get("readings", {}) if s.endswith(pin)})
    return list(found) or [None]


def header_line(st: dict[str, Any]) -> str:
    head = _("cabinet {cabinet} @ {site}   up {uptime}   edge {version}").format(
        cabinet=st.get("cabinet_id"),
        site=st.get("site_id"),
        uptime=duration(st.get("uptime_s")),
        version=st.get("version"),
    )
    if st.get("time_ms"):
        head += "   " + time.strftime("%H:%M:%S UTC", time.gmtime(st["time_ms"] / 1000))
    return clip(head, WIDTH)


def status_tagged(st: dict[str, Any], cable: str | None = None) -> Tagged:
    """Every line of the status screen in screen order, each with its worth (:data:`P_HEAD` .. :data:`P_LINK`)."""
    cables = _cables(st, cable)
    device: list[str] = [*module_lines(st)]
    for c in cables:
        device += cable_lines(st, c, label_name=len(cables) > 1)
    device += [outputs_line(st), *meter_lines(st), *isolation_lines(st)]
    estop = st.get("estop")
    return [
        (P_HEAD, header_line(st)),
        *_tag(P_HEAD, _wrap("E-STOP", estop) if estop and estop != "ok" else []),  # before all it explains
        (P_HEAD, output_line(st)),
        *_tag(P_HEAD, door_lines(st)),
        *_tag(P_LIMIT, limit_lines(st)),
        *_tag(P_LIMIT, connector_lines(st)),
        *_tag(P_DETAIL, sharing_lines(st)),
        *fault_lines_tagged(st.get("faults", {}), st.get("latched", [])),
        *_tag(P_FAULT, check_lines(st)),
        *_tag(P_DEVICE, device),
        *_tag(P_LINK, can_lines(st)),
        *_tag(P_LINK, uplink_lines(st)),
    ]


def door_lines(st: dict[str, Any]) -> list[str]:
    """An open door while it is open: door_open is no latched fault and goes with the session it stopped, so
    without this line the screen would not say why no session charges."""
    names = sorted(n for n, i in (st.get("inputs") or {}).items() if i.get("function") == "door" and i.get("active"))
    if not names:
        return []
    return _wrap(
        _("DOOR"), _("open ({names}): charging is stopped or derated until it is closed").format(names=", ".join(names))
    )


def fit_screen(tagged: Tagged, height: int | None, width: int = WIDTH) -> list[str]:
    """The lines that fit ``height`` rows, most important kept, in screen order; when some do not fit the
    last row says how many are hidden. Every line is clipped to ``width`` terminal cells."""
    lines = [clip(ln, width) for _p, ln in tagged]
    if height is None or len(lines) <= height:
        return lines
    room = max(1, height - 1)
    order = sorted(range(len(tagged)), key=lambda i: (tagged[i][0], i))
    keep = sorted(order[:room])
    cut = tagged[order[room]][0]
    if cut != int(cut):  # the last group kept would be cut in half: leave it out
        keep = [i for i in keep if tagged[i][0] != cut]
    hidden = len(lines) - len(keep)
    note = _("… {n} more lines hidden: a taller terminal, or edge status --json").format(n=hidden)
    return [lines[i] for i in keep] + [clip(note, width)]


def status_text(st: dict[str, Any], cable: str | None = None, height: int | None = None) -> str:
    """The status screen: at most :data:`WIDTH` cells a line, and at most ``height`` lines (None: all)."""
    return "\n".join(fit_screen(status_tagged(st, cable), height))


STATUS_LINE_SEP = " | "


def status_line(st: dict[str, Any], width: int = WIDTH) -> str:
    """The one line of ``edge run --status-line``: state, each connector's current, the limit and why
    first (clipped if even they do not fit), then faults, grid, pins and backlog as long as they fit."""
    first = [machine_state(st)]
    first += [
        f"{c.get('name')} {_(shown_phase(c.get('mode'), c.get('phase')))} {_amps(c.get('output_a'))} A"
        for c in st.get("connectors") or []
    ]
    # the cabinet's reason names its connector as "connector 2: ...": "2: ..." here, where room is short
    why = re.sub(r"^connector (\S+): ", r"\1: ", _reason(st.get("reason")))
    first.append(_("limit {amps} A <- {why}").format(amps=f"{st.get('limit_a') or 0:.0f}", why=why))
    faults = sorted(st.get("faults") or {})
    rest = [_("faults {names}").format(names=",".join(faults) or _("none"))]
    grid = st.get("grid_meter")
    if grid:
        rest.append(_("grid {kw}").format(kw=_kw(st, f"{grid}.Power.Active.Import")))
    for c in _cables(st, None):
        if c is not None:
            pins = "/".join(
                _reading(st, f"{c}.{table.reading(n)}", "{:.0f}") for n in (table.PIN_DC_PLUS, table.PIN_DC_MINUS)
            )
            rest.append(f"{c} {pins} °C")
    rest.append(_("backlog {n}").format(n=st.get("backlog", (st.get("telemetry") or {}).get("backlog", "--"))))
    line = STATUS_LINE_SEP.join(first)
    if display_width(line) >= width:
        # the reason is the part to cut: the state and the currents are short and always whole
        return clip(line, width)
    for part in rest:
        if display_width(line + STATUS_LINE_SEP + part) <= width:
            line += STATUS_LINE_SEP + part
    return line


def faults_text(data: dict[str, Any]) -> str:
    faults = data.get("faults", {})
    lines = []
    if not faults:
        lines.append(_("no active faults"))
    for name, f in faults.items():
        # the core's detail and hint in the technician's language, as on the status screen
        detail = core_text(str(f.get("detail")).removesuffix(" (latched)"))
        text = (_("LATCHED:") + " " if f.get("latched") else "") + detail
        lines += _wrap(name, text, indent=max(LABEL, display_width(name) + 2))
        lines.append(clip(f"{'':<4}-> {core_text(str(f.get('hint')))}", WIDTH))
    for addr, alarms in (data.get("module_alarms") or {}).items():
        lines.append(clip(_("module {addr} alarms: {alarms}").format(addr=addr, alarms=", ".join(alarms)), WIDTH))
    lines += _wrap(_("limit"), f"{(data.get('limit_a') or 0):.0f} A  <- {_reason(data.get('reason'))}")
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
        return _("no events in that period")
    lines = []
    for ev in events:
        head = f"{clock(ev['t_ms'])} {ev.get('kind')} {ev.get('name')}"
        detail = event_detail(ev)
        lines += wrap_cells(f"{head}: {detail}" if detail else head, WIDTH, "", " " * 24)
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


class LiveLine:
    """Where ``edge run --status-line`` writes: on a terminal one line rewritten in place (carriage return,
    the line, clear to the end of the line) at most the terminal's width; otherwise (a pipe, a journal)
    plain lines of at most :data:`WIDTH` cells, one per update. On a terminal a log line first wipes the
    status line, so it is printed on a clean line (the status comes back below it at the next update)."""

    def __init__(self, stream: Any = None, tty: bool | None = None, columns: int | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(self.stream.isatty()) if tty is None else tty
        self.columns = columns  # None: ask the terminal each time (it may be resized)
        self.shown = False
        self._filter = _WipeBeforeLog(self)
        self._handlers: list[logging.Handler] = []

    def width(self) -> int:
        if not self.tty:
            return WIDTH
        cols = self.columns or shutil.get_terminal_size((WIDTH, HEIGHT)).columns
        return max(20, cols - 1)  # the last cell: a full row would wrap on some terminals

    def show(self, text: str) -> None:
        self.stream.write(f"\r{text}\x1b[K" if self.tty else text + "\n")
        self.stream.flush()
        self.shown = self.tty

    def wipe(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def attach_logging(self, logger: logging.Logger | None = None) -> None:
        """Wipe the status line before each record the handlers of ``logger`` (root) print."""
        if self.tty:
            self._handlers = list((logger or logging.getLogger()).handlers)
            for h in self._handlers:
                h.addFilter(self._filter)

    def close(self) -> None:
        for h in self._handlers:
            h.removeFilter(self._filter)
        if self.shown:
            self.stream.write("\n")  # leave the last status on its own line for the shell prompt
            self.stream.flush()
            self.shown = False


class _WipeBeforeLog(logging.Filter):
    def __init__(self, live: LiveLine) -> None:
        super().__init__()
        self.live = live

    def filter(self, record: logging.LogRecord) -> bool:
        self.live.wipe()
        return True
