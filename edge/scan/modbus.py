"""``edge scan modbus``: find the meters answering on an RS-485 line or behind a Modbus TCP gateway.

For each device id: read the signature register of every known model (drivers/meters/models.py),
most specific first (ABB model string, Carlo Gavazzi model id, then the Eastron frequency float). An id
that does not answer the first read within ``--timeout`` is absent and costs nothing more, so a scan
of N ids takes at most N x timeout for an empty line plus a few reads per device found. Prints what it
found and a config snippet to paste into the config file (or JSON with ``--json``).

Exit code: 0 something answered, 1 nothing answered or the line/host could not be opened, 2 bad usage.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import click

from drivers.meters.models import MODELS, MeterModel, Signature
from drivers.meters.planner import Block
from drivers.meters.reader import MeterCommError, MeterTimeout, ModbusLine
from drivers.meters.registers import DecodeError, decode_words
from edge.i18n import _, ngettext
from hal.serial import SerialSettings


@dataclass
class Found:
    device_id: int
    model: str | None  # None: answers, but matches no known signature
    detail: str


def parse_ids(text: str) -> list[int]:
    """``1-247``, ``1,3,5-9`` -> sorted unique ids, each 1..247."""
    ids: set[int] = set()
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise click.BadParameter(f"{part!r} is not an id or a range like 1-247") from None
        if not (1 <= a <= b <= 247):
            raise click.BadParameter(f"{part!r}: ids are 1-247, low-high")
        ids.update(range(a, b + 1))
    if not ids:
        raise click.BadParameter("no ids given")
    return sorted(ids)


def _candidates() -> list[tuple[str, MeterModel, Signature]]:
    out = [(name, m, m.signature) for name, m in MODELS.items() if m.name == name and m.signature is not None]
    # exact model registers first; a plausible-range match (SDM630 frequency) is the weakest evidence
    return sorted(out, key=lambda c: c[2].in_range is not None)


async def identify(line: ModbusLine, device_id: int, timeout_s: float) -> Found | None:
    """The model answering at ``device_id``, or None when nothing answers there."""
    answered = False
    for name, _model, sig in _candidates():
        reg = sig.register
        try:
            words = await line.read(device_id, Block(reg.function_code, reg.address, reg.words, (reg,)), timeout_s)
        except MeterTimeout:
            if not answered:
                return None  # silent id: do not spend more time on it
            continue
        except MeterCommError:
            answered = True  # exception response or garbled: someone is there
            continue
        answered = True
        if sig.values:
            raw = sig.raw(words)
            if raw in sig.values:
                variant = dict(sig.variants).get(raw, name)
                return Found(device_id, variant, f"{reg.signal} register {reg.address:#06x} = {raw:#x}")
        elif sig.in_range is not None:
            try:
                value = decode_words(reg, words)
            except DecodeError:
                continue
            lo, hi = sig.in_range
            if lo <= value <= hi:
                return Found(device_id, name, f"{reg.signal} {value:.2f} {reg.unit} at {reg.address:#06x}")
    return Found(device_id, None, "answers, but matches no known model signature") if answered else None


def config_snippet(
    found: list[Found], line_name: str, port: str | None, baud: int, parity: str, host: str | None, tcp_port: int
) -> str:
    lines = ["# paste into the config file; check names and roles"]
    if host:
        lines += ["[[modbus_tcp]]", f'name = "{line_name}"', f'host = "{host}"', f"port = {tcp_port}", ""]
    else:
        lines += [
            "[[serial]]",
            f'name = "{line_name}"',
            f'port = "{port}"',
            f"baudrate = {baud}",
            f'parity = "{parity}"',
            "",
        ]
    grid_done = False
    for f in found:
        if f.model is None:
            lines.append(f'# device id {f.device_id} answers but is no known model: use model = "generic"')
            continue
        lines += [
            "[[meters]]",
            f'name = "meter{f.device_id}"',
            f'model = "{f.model}"',
            f'line = "{line_name}"',
            f"device_id = {f.device_id}",
            f'role = "{"charger" if grid_done else "grid"}"',
            "",
        ]
        grid_done = True
    return "\n".join(lines).rstrip() + "\n"


def _cannot_connect(where: tuple[str, int] | str, why: str) -> str:
    """What failed on which port or host, and what to check (a TCP connect is retried for its errno)."""
    if isinstance(where, str):
        return _(
            "cannot open serial port {port}: {why}; check the device path and that no other program "
            "(the daemon?) holds it"
        ).format(port=where, why=why or _("no connection"))
    host, port = where
    if not why:
        try:
            socket.create_connection((host, port), timeout=2.0).close()
        except OSError as exc:
            why = exc.strerror or str(exc)
    return _(
        "cannot connect to Modbus TCP {host}:{port}: {why}; is the device or gateway on and is the port right? "
        "(edge run --sim prints its Modbus TCP port)"
    ).format(host=host, port=port, why=why or _("no connection"))


async def _scan(
    line: ModbusLine, ids: list[int], timeout_s: float, bar: Any, where: tuple[str, int] | str
) -> list[Found]:
    found: list[Found] = []
    try:
        why = ""
        try:
            connected = await asyncio.wait_for(line.client.connect(), max(1.0, timeout_s))
        except (TimeoutError, OSError) as exc:
            connected, why = False, str(exc) or type(exc).__name__
        if not connected:
            raise click.ClickException(_cannot_connect(where, why))
        for dev in ids:
            f = await identify(line, dev, timeout_s)
            if f is not None:
                found.append(f)
            bar.update(1)
    finally:
        line.close()
    return found


@click.command("modbus")
@click.option("--port", help="serial device of the RS-485 line, e.g. /dev/ttyUSB0")
@click.option(
    "--baud",
    type=click.Choice(["1200", "2400", "4800", "9600", "19200", "38400", "57600", "115200"]),
    default="9600",
    show_default=True,
    help="bit/s",
)
@click.option("--parity", type=click.Choice(["N", "E", "O"]), default="N", show_default=True)
@click.option("--stopbits", type=click.Choice(["1", "2"]), default="1", show_default=True)
@click.option("--host", help="Modbus TCP device or gateway (instead of --port)")
@click.option("--tcp-port", type=click.IntRange(1, 65535), default=502, show_default=True)
@click.option("--ids", "ids_text", default="1-247", show_default=True, help="device ids to try: 1-247, 1,3,10-20")
@click.option(
    "--timeout",
    "timeout_ms",
    type=click.IntRange(20, 5000),
    default=200,
    show_default=True,
    help="ms to wait for each reply",
)
@click.option("--line-name", default="rs485", show_default=True, help="line name used in the config snippet")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of text")
def modbus_command(
    port: str | None,
    baud: str,
    parity: str,
    stopbits: str,
    host: str | None,
    tcp_port: int,
    ids_text: str,
    timeout_ms: int,
    line_name: str,
    as_json: bool,
) -> None:
    """Find meters on a Modbus line and print a config snippet for them."""
    if bool(port) == bool(host):
        raise click.UsageError(_("give either --port (RS-485) or --host (Modbus TCP)"))
    ids = parse_ids(ids_text)
    timeout_s = timeout_ms / 1000.0
    worst = len(ids) * timeout_s + 0.5
    click.echo(
        ngettext(
            "scanning {n} id on {line}; at most ~{seconds} s for an empty line",
            "scanning {n} ids on {line}; at most ~{seconds} s for an empty line",
            len(ids),
        ).format(n=len(ids), line=port or f"{host}:{tcp_port}", seconds=f"{worst:.0f}"),
        err=True,
    )
    t0 = time.monotonic()

    async def main() -> list[Found]:
        # the pymodbus client binds to the running loop: build it inside
        if port:
            line = ModbusLine.serial(SerialSettings(port, int(baud), 8, parity, int(stopbits)), name=line_name)
        else:
            line = ModbusLine.tcp(str(host), tcp_port, name=line_name)
        with click.progressbar(length=len(ids), label="ids", file=sys.stderr) as bar:
            return await _scan(line, ids, timeout_s, bar, (str(host), tcp_port) if host else str(port))

    found = asyncio.run(main())
    elapsed = time.monotonic() - t0
    if as_json:
        click.echo(
            json.dumps(
                {
                    "line": {
                        "port": port,
                        "baudrate": int(baud),
                        "parity": parity,
                        "host": host,
                        "tcp_port": tcp_port if host else None,
                    },
                    "elapsed_s": round(elapsed, 2),
                    "found": [asdict(f) for f in found],
                },
                indent=2,
            )
        )
        sys.exit(0 if found else 1)
    click.echo(
        ngettext("{n} device answered in {seconds} s", "{n} devices answered in {seconds} s", len(found)).format(
            n=len(found), seconds=f"{elapsed:.1f}"
        )
    )
    for f in found:
        model = f.model or _("unknown")
        click.echo(f"  id {f.device_id:3d}  {model:8s}  {f.detail}")
    if found:
        click.echo("")
        click.echo(config_snippet(found, line_name, port, int(baud), parity, host, tcp_port), nl=False)
    else:
        click.echo(_("nothing answered: check wiring, baud rate, parity and the id range (--ids)"), err=True)
        sys.exit(1)
