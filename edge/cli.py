"""The ``edge`` command: daemon start, config check, and the technician's tools.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or invalid configuration, 3 daemon not reachable.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import socket
import sys
from typing import Any

import click

from edge.config import Config, ConfigError, load_config, parse_config

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DOWN = 0, 1, 2, 3
DEFAULT_CONFIG = "/etc/cabinet-edge/config.toml"


def _sim_config_text() -> str:
    return importlib.resources.files("edge.sim").joinpath("sim.toml").read_text(encoding="utf-8")


def _load(path: str | None, sim: bool) -> Config:
    if path is None and sim:
        return parse_config(_sim_config_text(), "<built-in sim config>")
    return load_config(path or DEFAULT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cabinet-edge")
def main() -> None:
    """cabinet-edge: DC fast-charger cabinet controller."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help=f"config file (default {DEFAULT_CONFIG}; built-in sim config with --sim)")
@click.option("--sim", is_flag=True, help="run on the built-in simulated cabinet")
@click.option("--status-line", is_flag=True, help="print a one-line status every second")
def run(config_path: str | None, sim: bool, status_line: bool) -> None:
    """Start the daemon (foreground; systemd runs it like this)."""
    from edge.daemon import run_daemon
    from edge.logsetup import setup_logging

    try:
        config = _load(config_path, sim)
    except ConfigError as exc:
        click.echo(f"config error:\n{exc}", err=True)
        sys.exit(EXIT_USAGE)
    setup_logging(config.logging.level)
    if not sim:
        sys.exit(run_daemon(config, status_line=status_line))
    from edge.sim.cabinet import SimCabinet

    cabinet = SimCabinet(config)
    cabinet.start()
    try:
        code = run_daemon(cabinet.patched_config(), board=cabinet.board, status_line=status_line)
    finally:
        cabinet.stop()
    sys.exit(code)


@main.group()
def config() -> None:
    """Configuration tools."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file: str) -> None:
    """Validate FILE: print the effective config and exit 0, or every problem and exit 2."""
    try:
        cfg = load_config(file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        click.echo(f"{file}: INVALID ({len(exc.problems)} problem(s)); see docs/CONFIG.md", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
    click.echo(f"{file}: OK", err=True)


def _request(socket_path: str, req: dict[str, Any], timeout_s: float = 3.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(socket_path)
        except FileNotFoundError:
            _down(socket_path, "socket does not exist")
        except PermissionError:
            _down(socket_path, "permission denied (are you in group cabinet-edge?)")
        except OSError as exc:
            _down(socket_path, str(exc))
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return dict(json.loads(buf))


def _down(path: str, why: str) -> None:
    click.echo(f"daemon not reachable at {path}: {why}; is it running? "
               "try: systemctl status cabinet-edge (or --socket PATH)", err=True)
    sys.exit(EXIT_DOWN)


def _socket_path(socket_opt: str | None, config_path: str | None) -> str:
    if socket_opt:
        return socket_opt
    if env := os.environ.get("EDGE_SOCKET"):
        return env
    if config_path or os.path.exists(DEFAULT_CONFIG):
        try:
            return load_config(config_path or DEFAULT_CONFIG).api.socket
        except ConfigError:
            pass
    return "/run/cabinet-edge/edge.sock"


@main.command()
@click.option("--socket", "socket_opt", default=None, help="control socket path (or $EDGE_SOCKET)")
@click.option("--config", "config_path", default=None, help="read the socket path from this config")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(socket_opt: str | None, config_path: str | None, as_json: bool) -> None:
    """One screen: limit and why, faults, modules, cable, meters, uplink."""
    answer = _request(_socket_path(socket_opt, config_path), {"cmd": "status"})
    if not answer.get("ok"):
        click.echo(f"error: {answer.get('error')}", err=True)
        sys.exit(EXIT_FAIL)
    data = answer["data"]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"cabinet {data['cabinet_id']} (site {data['site_id']})  up {data['uptime_s']:.0f} s")
    click.echo(f"limit {data['limit_a']:.0f} A  <- {data['reason']}")
    faults = data["faults"]
    click.echo("faults: " + (", ".join(f"{k} ({v})" for k, v in faults.items()) if faults else "faults: none"))
    for addr, m in data["modules"].items():
        state = "LOST" if m["lost"] else "ok"
        click.echo(f"  module {addr}: {m['voltage_v']:.0f} V {m['current_a']:.1f} A  {state}")
    click.echo(f"telemetry backlog {data['telemetry']['backlog']}")


if __name__ == "__main__":
    main()
