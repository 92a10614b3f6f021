"""``edge scan can``: which ids are on a CAN bus, and which configured modules and cable monitors answer.

Listens for a bounded time (``--seconds``), counts frames per id and decodes them with the configured
vendor codec and cable DBC. Unless ``--listen-only`` is given it SENDS the module poll requests (group
discovery, then a read of every configured address, about once a second) so that modules answer;
those are read requests only, never set-points or on/off. Runs beside the daemon on socketcan (both
see every frame); on a serial slcan adapter stop the daemon first (one process per tty).

Exit code: 0 every configured device answered (without a config: some frame was seen), 1 something is silent
or nothing was seen at all, 2 bad usage or config.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import can
import click

from drivers.cable.monitor import CableMonitor
from drivers.power_modules.codec import ModuleCodec
from drivers.power_modules.registry import CODECS
from edge.config import Config, ConfigError, load_config
from edge.i18n import _, clip
from hal.can import CanSettings, classify_error_frame, open_bus

DEFAULT_CONFIG = "/etc/cabinet-edge/config.toml"
POLL_EVERY_S = 1.0
MAX_IDS = 4096  # a scan keeps at most this many distinct ids (a flood of random ids stays bounded)


@dataclass
class IdStats:
    arbitration_id: int
    extended: bool
    count: int = 0
    dlc: int = 0
    decoded: str = ""


@dataclass
class ScanResult:
    bus: str
    seconds: float
    frames: int = 0
    error_frames: int = 0
    errors: list[str] = field(default_factory=list)
    ids: dict[tuple[int, bool], IdStats] = field(default_factory=dict)
    ids_dropped: int = 0
    sent: int = 0
    protocol: str | None = None
    modules: dict[int, dict[str, Any]] = field(default_factory=dict)
    foreign_modules: dict[int, int] = field(default_factory=dict)
    cables: dict[str, dict[str, Any]] = field(default_factory=dict)

    def silent(self) -> list[str]:
        out = [f"module {a}" for a, m in self.modules.items() if not m["answers"]]
        out += [f"cable {n}" for n, c in self.cables.items() if not c["frames"]]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "bus": self.bus,
            "seconds": self.seconds,
            "frames": self.frames,
            "error_frames": self.error_frames,
            "errors": self.errors[:20],
            "sent": self.sent,
            "ids_dropped": self.ids_dropped,
            "ids": [
                {
                    "id": f"0x{s.arbitration_id:0{8 if s.extended else 3}X}",
                    "extended": s.extended,
                    "dlc": s.dlc,
                    "count": s.count,
                    "rate_per_s": round(s.count / self.seconds, 2),
                    "decoded": s.decoded,
                }
                for s in sorted(self.ids.values(), key=lambda s: s.arbitration_id)
            ],
            "protocol": self.protocol,
            "modules": {str(a): m for a, m in self.modules.items()},
            "foreign_modules": {str(a): n for a, n in self.foreign_modules.items()},
            "cables": self.cables,
            "silent": self.silent(),
        }


def scan(
    bus: can.BusABC,
    seconds: float,
    name: str,
    codec: ModuleCodec | None,
    addresses: list[int],
    cables: list[CableMonitor],
    poll: bool,
) -> ScanResult:
    """Listen (and poll) for ``seconds`` on an open bus. Pure bookkeeping apart from the bus calls."""
    res = ScanResult(bus=name, seconds=seconds, protocol=codec.name if codec else None)
    res.modules = {
        a: {"answers": 0, "voltage_v": None, "current_a": None, "temperature_c": None, "alarms": []} for a in addresses
    }
    res.cables = {c.name: {"node_id": c.node_id, "frames": 0, "invalid": 0} for c in cables}
    start = time.monotonic()
    end = start + seconds
    next_poll = start
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if poll and codec is not None and now >= next_poll:
            res.sent += _send_polls(bus, codec, addresses, res)
            next_poll = now + POLL_EVERY_S
        msg = bus.recv(timeout=min(0.05, max(0.0, end - now)))
        if msg is not None:
            _account(res, msg, codec, cables, now)
    return res


def _send_polls(bus: can.BusABC, codec: ModuleCodec, addresses: list[int], res: ScanResult) -> int:
    frames = list(codec.discover())
    for a in addresses:
        frames += codec.poll(a) + codec.identify(a)
    sent = 0
    for f in frames:
        try:
            bus.send(
                can.Message(arbitration_id=f.arbitration_id, data=f.data, is_extended_id=f.is_extended_id), timeout=0.05
            )
            sent += 1
        except can.CanError as exc:
            if len(res.errors) < 100:
                res.errors.append(f"send 0x{f.arbitration_id:X}: {exc}")
        time.sleep(codec.command_spacing_s / 5)  # do not flood a bus that carries the daemon's traffic too
    return sent


def _account(
    res: ScanResult, msg: can.Message, codec: ModuleCodec | None, cables: list[CableMonitor], now: float
) -> None:
    if msg.is_error_frame:
        _error_frame(res, msg)
        return
    res.frames += 1
    st = _id_stats(res, msg)
    if st is None:
        return
    if msg.is_remote_frame or not msg.is_extended_id:
        st.decoded = st.decoded or ("remote frame" if msg.is_remote_frame else "standard id")
        return
    data = bytes(msg.data)
    if codec is not None and _module_frame(res, st, codec, msg.arbitration_id, data):
        return
    _cable_frame(res, st, cables, msg.arbitration_id, data, now)


def _error_frame(res: ScanResult, msg: can.Message) -> None:
    res.error_frames += 1
    _, desc = classify_error_frame(msg.arbitration_id, bytes(msg.data))
    if len(res.errors) < 100:
        res.errors.append(desc)


def _id_stats(res: ScanResult, msg: can.Message) -> IdStats | None:
    """The counters of this id (None once MAX_IDS ids are kept: counted as dropped)."""
    key = (msg.arbitration_id, msg.is_extended_id)
    st = res.ids.get(key)
    if st is None:
        if len(res.ids) >= MAX_IDS:
            res.ids_dropped += 1
            return None
        st = res.ids[key] = IdStats(msg.arbitration_id, msg.is_extended_id)
    st.count += 1
    st.dlc = msg.dlc
    return st


def _module_frame(res: ScanResult, st: IdStats, codec: ModuleCodec, arbitration_id: int, data: bytes) -> bool:
    reply = codec.decode(arbitration_id, data)
    if reply is None:
        return False
    m = res.modules.get(reply.address)
    if m is None:
        res.foreign_modules[reply.address] = res.foreign_modules.get(reply.address, 0) + 1
        st.decoded = f"{codec.name} module {reply.address} (NOT CONFIGURED)"
        return True
    m["answers"] += 1
    for k in ("voltage_v", "current_a", "temperature_c"):
        value = getattr(reply, k)
        if value is not None:
            m[k] = round(float(value), 2)
    if reply.alarms is not None:
        m["alarms"] = sorted(reply.alarms)
    st.decoded = f"{codec.name} module {reply.address} {'ack' if reply.ack else 'reply'}"
    return True


def _cable_frame(
    res: ScanResult, st: IdStats, cables: list[CableMonitor], arbitration_id: int, data: bytes, now: float
) -> None:
    for mon in cables:
        readings = mon.decode(arbitration_id, data, now)
        if not readings:
            continue
        c = res.cables[mon.name]
        c["frames"] += 1
        if any(r.quality != "ok" for r in readings):
            c["invalid"] += 1
        for r in readings:
            c[r.signal.split(".", 1)[1]] = round(r.value, 2)
        st.decoded = f"cable {mon.name} {mon.message_name(arbitration_id)}"
        return


def format_text(res: ScanResult, header: str) -> str:
    """The report, every line at most 80 columns."""
    lines = [
        header,
        _("{seconds} s: {frames} frames, {ids} ids, {errors} error frames").format(
            seconds=f"{res.seconds:.1f}", frames=res.frames, ids=len(res.ids), errors=res.error_frames
        ),
        f"{'ID':<11} {'DLC':>3} {'COUNT':>7} {'RATE/S':>8}  DECODED",
        *_id_lines(res),
        *_module_lines(res),
    ]
    for name, c in res.cables.items():
        state = _("ok {n} frames").format(n=c["frames"]) if c["frames"] else _("SILENT  (check wiring, node id)")
        extra = ", " + _("{n} invalid").format(n=c["invalid"]) if c["invalid"] else ""
        lines.append(
            _("cable {name} (node {node}): {state}").format(name=name, node=f"0x{c['node_id']:02X}", state=state)
            + extra
        )
    if res.sent:
        lines.append(_("sent {n} read requests to provoke answers (--listen-only: none)").format(n=res.sent))
    lines += [_("error: {why}").format(why=e) for e in dict.fromkeys(res.errors[:5])]
    return "\n".join(clip(line, 80) for line in lines)


def _id_lines(res: ScanResult) -> list[str]:
    lines = []
    for s in sorted(res.ids.values(), key=lambda s: s.arbitration_id):
        ident = f"0x{s.arbitration_id:08X}" if s.extended else f"0x{s.arbitration_id:03X}"
        rate = s.count / res.seconds if res.seconds else 0.0
        lines.append(f"{ident:<11} {s.dlc:>3} {s.count:>7} {rate:>8.1f}  {s.decoded}")
    if res.ids_dropped:
        lines.append(f"({res.ids_dropped} frames of further ids not listed: more than {MAX_IDS} ids)")
    return lines


def _module_lines(res: ScanResult) -> list[str]:
    if res.protocol is None:
        return []
    lines = [_("power modules ({protocol}):").format(protocol=res.protocol)]
    lines += [_module_line(a, m) for a, m in res.modules.items()]
    for a, n in sorted(res.foreign_modules.items()):
        lines.append(
            "  " + _("module {address} answers ({n}) but is NOT in power_modules.addresses").format(address=a, n=n)
        )
    return lines


def _module_line(address: int, m: dict[str, Any]) -> str:
    if not m["answers"]:
        return "  " + _("module {address} SILENT  (check power, address, bit rate, termination)").format(
            address=f"{address:<3}"
        )
    parts = ["  " + _("module {address} ok {n} answers").format(address=f"{address:<3}", n=f"{m['answers']:>4}")]
    if m["voltage_v"] is not None:
        parts.append(f"{m['voltage_v']:.0f} V")
    if m["current_a"] is not None:
        parts.append(f"{m['current_a']:.1f} A")
    if m["temperature_c"] is not None:
        parts.append(f"{m['temperature_c']:.0f} °C")
    parts.append(_("alarms: {alarms}").format(alarms=",".join(m["alarms"]) or _("none")))
    return "  ".join(parts)


@click.command("can")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"config file (default {DEFAULT_CONFIG} when it exists)",
)
@click.option("--bus", "bus_name", default=None, help="a [[can]] name from the config (default: the modules' bus)")
@click.option("--interface", default=None, help="python-can interface, overrides the config (socketcan, slcan...)")
@click.option("--channel", default=None, help="channel, overrides the config (can0, /dev/ttyACM0@115200...)")
@click.option(
    "--bitrate",
    type=click.Choice(["125000", "250000", "500000", "1000000"]),
    default=None,
    help="bit/s, overrides the config (default 125000)",
)
@click.option(
    "--seconds", type=click.FloatRange(0.2, 60.0), default=3.0, show_default=True, help="how long to listen, s (0.2-60)"
)
@click.option("--listen-only", is_flag=True, help="do not send the module read requests; only listen")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def can_command(
    config_path: str | None,
    bus_name: str | None,
    interface: str | None,
    channel: str | None,
    bitrate: str | None,
    seconds: float,
    listen_only: bool,
    as_json: bool,
) -> None:
    """List the CAN ids seen for N seconds with counts and rates, and which configured power modules
    and cable monitors answered.

    It SENDS read requests (module discovery and status/output reads, about once a second) so that the
    modules answer; never set-points or on/off. Use --listen-only to send nothing.
    Exit 0: every configured device answered (no config: a frame was seen); 1: something is silent or
    nothing was seen; 2: bad usage.
    """
    cfg, path = _load(config_path)
    if cfg is None and (interface is None or channel is None):
        click.echo(_("no config: give --config FILE or both --interface and --channel"), err=True)
        sys.exit(2)
    name = bus_name or (cfg.power_modules.bus if cfg is not None else "can")
    settings = _settings(cfg, path, name, interface, channel, bitrate)
    codec, addresses, cables = _devices(cfg, name)
    try:
        bus = open_bus(settings)
    except (can.CanError, OSError, ValueError) as exc:
        click.echo(
            _("cannot open CAN {interface} {channel}: {why}").format(
                interface=settings.interface, channel=settings.channel, why=exc
            ),
            err=True,
        )
        sys.exit(1)
    try:
        res = scan(bus, seconds, name, codec, addresses, cables, poll=not listen_only)
    finally:
        bus.shutdown()
    if as_json:
        click.echo(json.dumps(res.as_dict(), indent=2))
    else:
        header = f"CAN {name}: {settings.interface} {settings.channel} {settings.bitrate} bit/s"
        click.echo(format_text(res, header))
    if not res.frames:
        click.echo(
            _("nothing seen on {interface} {channel} in {seconds} s").format(
                interface=settings.interface, channel=settings.channel, seconds=f"{seconds:g}"
            ),
            err=True,
        )
    sys.exit(1 if res.silent() or not res.frames else 0)


def _load(config_path: str | None) -> tuple[Config | None, str | None]:
    """The config named (or the default one when it exists); exit 2 when it is invalid."""
    path = config_path or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if path is None:
        return None, None
    try:
        return load_config(path), path
    except ConfigError as exc:
        click.echo(_("config error:") + f"\n{exc}", err=True)
        sys.exit(2)


def _settings(
    cfg: Config | None, path: str | None, name: str, interface: str | None, channel: str | None, bitrate: str | None
) -> CanSettings:
    """The bus from the config's [[can]] ``name``, each option given on the command line overriding it."""
    bus_cfg = next((b for b in cfg.can if b.name == name), None) if cfg is not None else None
    if cfg is not None and bus_cfg is None and (interface is None or channel is None):
        known = [b.name for b in cfg.can]
        click.echo(
            _("--bus {name} is not a [[can]] name in {path} (have {known})").format(
                name=repr(name), path=path, known=known
            ),
            err=True,
        )
        sys.exit(2)
    base = (
        CanSettings(name) if bus_cfg is None else CanSettings(name, bus_cfg.interface, bus_cfg.channel, bus_cfg.bitrate)
    )
    return replace(
        base,
        interface=interface or base.interface,
        channel=channel or base.channel,
        bitrate=int(bitrate) if bitrate else base.bitrate,
    )


def _devices(cfg: Config | None, name: str) -> tuple[ModuleCodec | None, list[int], list[CableMonitor]]:
    """The module codec and addresses, and the cable monitors, configured on bus ``name``."""
    if cfg is None:
        return None, [], []
    cables = [CableMonitor(c.name, c.node_id) for c in cfg.cable if c.bus == name]
    if cfg.power_modules.bus != name:
        return None, [], cables
    return CODECS[cfg.power_modules.protocol](), list(cfg.power_modules.addresses), cables
