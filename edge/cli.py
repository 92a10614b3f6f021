"""The ``edge`` command: daemon start, config check, and the technician's tools.

Exit codes (every command; docs/CLI.md): 0 ok, 1 failure, 2 bad usage or invalid input/config,
3 daemon not reachable, 4 refused (permission, or not allowed in the cabinet's current state).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import sys
from typing import NoReturn

import click

from edge import i18n
from edge.api.protocol import EXIT_DOWN, EXIT_FAIL, EXIT_OK, EXIT_USAGE
from edge.config import Config, ConfigError, load_config, parse_config
from edge.i18n import _, ngettext
from edge.redaction import redact

__all__ = ["EXIT_DOWN", "EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "main"]
DEFAULT_CONFIG = "/etc/cabinet-edge/config.toml"


def _sim_config_text() -> str:
    return importlib.resources.files("edge.sim").joinpath("sim.toml").read_text(encoding="utf-8")


def _load(path: str | None, sim: bool) -> Config:
    if path is None and sim:
        return parse_config(_sim_config_text(), "<built-in sim config>")
    return load_config(path or DEFAULT_CONFIG)


# The technician's commands (edge/cli_ops.py: the API client, the screens, diag) are imported when one is
# used: `edge run` is the daemon, and those modules were 1.5 MB of its resident memory (the soak's 60 MB goal).
_OPS = ("status", "watch", "faults", "events", "whoami", "clear", "limit", "stop", "resume", "selftest", "diag")


class _LazyOps(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_OPS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _OPS and cmd_name not in self.commands:
            from edge.cli_ops import OPS_COMMANDS

            for cmd in OPS_COMMANDS:
                self.add_command(cmd)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyOps, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80})
@click.version_option(package_name="cabinet-edge")
@click.option(
    "--lang",
    default=None,
    metavar="LANG",
    help=f"language of the output: {', '.join(i18n.LANGUAGES)} (default from LANG/LC_MESSAGES; else en)",
)
def main(lang: str | None) -> None:
    """cabinet-edge: DC fast-charger cabinet controller.

    Exit codes: 0 ok, 1 failure, 2 bad usage/invalid input, 3 daemon not
    reachable, 4 refused (permission or cabinet state). See docs/CLI.md.
    """
    used = i18n.use(lang)
    if lang and used == "en" and not lang.startswith(("en", "C", "POSIX")):
        click.echo(
            _("edge: no translation for {lang}; using English (have {have})").format(
                lang=lang, have=", ".join(i18n.LANGUAGES)
            ),
            err=True,
        )


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"config file (default {DEFAULT_CONFIG}; built-in sim config with --sim)",
)
@click.option("--sim", is_flag=True, help="run on the built-in simulated cabinet")
@click.option("--status-line", is_flag=True, help="print a one-line status every second")
@click.option(
    "--scan-access/--no-scan-access",
    default=True,
    help="with --sim: the simulated meters also on Modbus TCP and the CAN buses on slcan, for `edge scan`",
)
def run(config_path: str | None, sim: bool, status_line: bool, scan_access: bool) -> None:
    """Start the daemon (foreground; systemd runs it like this)."""
    from edge.build import Backends
    from edge.daemon import run_daemon
    from edge.logsetup import setup_logging

    try:
        config = _load(config_path, sim)
    except ConfigError as exc:
        click.echo(_("config error:") + "\n" + _problems_text(exc), err=True)
        sys.exit(EXIT_USAGE)
    setup_logging(config.logging.level)
    for note in config.notes():
        logging.getLogger("edge.config").warning("%s", note)
    simulated = [c.name for c in config.resolved_connectors() if c.request == "sim"]
    if simulated and not sim:
        # the simulator's charging controller would drive real hardware: only with the simulated cabinet
        click.echo(
            _('config error: connector(s) {names} have request = "sim": use --sim, or "everest"').format(
                names=simulated
            ),
            err=True,
        )
        sys.exit(EXIT_USAGE)
    if not sim:
        sys.exit(run_daemon(config, Backends(config_path=config_path or DEFAULT_CONFIG), status_line=status_line))
    from edge.sim.cabinet import SimCabinet

    cabinet = SimCabinet(config, scan_access=scan_access)
    cabinet.start()
    sim_file = config_path or str(importlib.resources.files("edge.sim").joinpath("sim.toml"))
    for line in cabinet.scan_access_text(sim_file):  # docs/SIM.md, "Scanning the simulator"
        click.echo(line, err=True)
    try:
        backends = Backends(
            board=cabinet.board,
            sim_charging=cabinet.drive_charging,
            sim_verdict=cabinet.set_cable_check_verdict,
            config_path=config_path,
            relays=cabinet.relays,
        )
        code = run_daemon(cabinet.patched_config(), backends, status_line=status_line)
    finally:
        cabinet.stop()
    sys.exit(code)


def _problems_text(exc: ConfigError) -> str:
    """Every problem, one a line, its message in the technician's language where a catalogue knows it."""
    return "\n".join(str(dataclasses.replace(p, message=i18n.core_text(p.message))) for p in exc.details)


@main.group()
def config() -> None:
    """Configuration tools."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="result as one JSON object: ok, problems, config")
def config_check(file: str, as_json: bool) -> None:
    """Validate FILE: print the effective config (secrets <redacted>) and exit 0, or every problem and exit 2."""
    try:
        cfg = load_config(file)
    except ConfigError as exc:
        if as_json:
            problems = [p.as_json() for p in exc.details]
            click.echo(json.dumps({"file": file, "ok": False, "problems": problems}, indent=2, ensure_ascii=False))
        click.echo(_problems_text(exc), err=True)
        n = len(exc.problems)
        invalid = ngettext("INVALID ({n} problem); see docs/CONFIG.md", "INVALID ({n} problems); see docs/CONFIG.md", n)
        click.echo(f"{file}: " + invalid.format(n=n), err=True)
        sys.exit(EXIT_USAGE)
    effective = redact(cfg.model_dump(mode="json"))  # never a secret on a terminal, in a ticket or a log
    notes = cfg.notes()  # allowed but worth a look (e.g. the old single-output form): exit code stays 0
    if as_json:
        click.echo(
            json.dumps({"file": file, "ok": True, "problems": [], "notes": notes, "config": effective}, indent=2)
        )
    else:
        click.echo(json.dumps(effective, indent=2))
    for note in notes:
        click.echo(f"{file}: " + _("note: {note}").format(note=note), err=True)
    ok = ngettext("OK ({n} note)", "OK ({n} notes)", len(notes)).format(n=len(notes)) if notes else _("OK")
    click.echo(f"{file}: {ok}", err=True)


@main.group()
def telemetry() -> None:
    """Telemetry tools for backends."""


@telemetry.command("decode")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def telemetry_decode(files: tuple[str, ...]) -> None:
    """Decode v2 telemetry (and births, v1 messages) to v1-form JSON lines, duplicates dropped.

    Input: FILES, each one raw MQTT payload; or stdin, one payload per line as hex (mosquitto_sub -F %x)
    or JSON, optionally after the topic and a space (mosquitto_sub -F '%t %x'). Births must come
    first or anywhere; records are printed in seq order. A payload that cannot be read is reported on
    stderr with its reason and the exit code is 2; the others are still decoded.
    """
    from edge.telemetry.v2decode import DecodeError, Decoder

    dec, bad = Decoder(), 0
    payloads = [open(f, "rb").read() for f in files] if files else _stdin_payloads()
    for n, payload in enumerate(payloads, 1):
        try:
            for rec in dec.feed(payload):
                click.echo(json.dumps(rec, ensure_ascii=False, separators=(",", ":")))
        except DecodeError as exc:
            bad += 1
            click.echo(_("payload {n}: {why}").format(n=n, why=exc), err=True)
    for rec in dec.finish():
        click.echo(json.dumps(rec, ensure_ascii=False, separators=(",", ":")))
    if bad:
        sys.exit(EXIT_USAGE)


def _stdin_payloads() -> list[bytes]:
    out = []
    for line in sys.stdin.buffer.read().splitlines():
        text = line.strip()
        if not text:
            continue
        if not text.startswith(b"{") and b" " in text:
            text = text.rsplit(b" ", 1)[1]  # "<topic> <hex>"
        try:
            out.append(text if text.startswith(b"{") else bytes.fromhex(text.decode()))
        except ValueError:
            out.append(text)  # the decoder says why it is not a payload
    return out


# -- scans: written in edge/scan/*.py by the meter and CAN work; registered here when present ----------
_SCANS = (("can", "edge.scan.can", "can_command"), ("modbus", "edge.scan.modbus", "modbus_command"))


class _ScanGroup(click.Group):
    """The scans are imported when one runs (not in the daemon's memory, like the technician's commands)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, _, _ in _SCANS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name not in _scan_errors:
            _register_scan(cmd_name)
        found = super().get_command(ctx, cmd_name)
        if found is None and cmd_name in {name for name, _, _ in _SCANS}:
            return _unavailable(cmd_name)
        return found


def _unavailable(name: str) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def missing() -> NoReturn:
        click.echo(
            _("edge scan {name}: not available in this build ({why})").format(name=name, why=_scan_errors.get(name)),
            err=True,
        )
        sys.exit(EXIT_FAIL)

    return missing


_scan_errors: dict[str, str] = {}


@main.group(cls=_ScanGroup)
def scan() -> None:
    """Find devices for commissioning: `edge scan modbus`, `edge scan can`."""


def _register_scan(name: str) -> None:
    import importlib

    for scan_name, module, attr in _SCANS:
        if scan_name != name:
            continue
        try:
            cmd = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            _scan_errors[name] = f"{module}.{attr} missing: {exc}"
            return
        scan.add_command(cmd, name)


def _scan_found(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


_available = [n for n, module, _ in _SCANS if _scan_found(module)]
scan.help = (
    "Find devices for commissioning. Available: "
    + (", ".join(_available) or "none")
    + (
        "; not in this build: " + ", ".join(n for n, _, _ in _SCANS if n not in _available)
        if len(_available) < 2
        else ""
    )
    + "."
)


if __name__ == "__main__":
    main()
