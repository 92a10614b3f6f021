"""The technician's commands that talk to the running daemon over the control socket.

Each command: human text by default, ``--json`` for scripts (the daemon's answer, or on error
``{"ok": false, "code": ..., "error": ...}``), and the exit codes of :mod:`edge.api.protocol`.
"""

from __future__ import annotations

import datetime as _dt
import grp
import json
import os
import pwd
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from edge import diag, i18n, render
from edge.api.client import ApiError, Client, Unreachable
from edge.api.protocol import EXIT_DOWN, EXIT_FAIL, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, exit_code
from edge.cli_parse import parse_current_a, parse_duration_s, parse_since_ms
from edge.config import ConfigError, load_config
from edge.i18n import N_, _

DEFAULT_CONFIG = "/etc/cabinet-edge/config.toml"
DEFAULT_SOCKET = "/run/cabinet-edge/edge.sock"
F = TypeVar("F", bound=Callable[..., Any])


def client_options(f: F) -> F:
    f = click.option("--json", "as_json", is_flag=True, help="machine-readable output (JSON)")(f)
    f = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help=f"take the socket path from this config (default {DEFAULT_CONFIG})",
    )(f)
    f = click.option(
        "--socket",
        "socket_opt",
        envvar="EDGE_SOCKET",
        default=None,
        metavar="PATH",
        help=f"control socket (or $EDGE_SOCKET; default from the config, else {DEFAULT_SOCKET})",
    )(f)
    return f


def socket_path(socket_opt: str | None, config_path: str | None) -> str:
    if socket_opt:
        return socket_opt
    if config_path:
        try:
            return load_config(config_path).api.socket
        except ConfigError as exc:
            click.echo(
                _("edge: cannot take the socket path from {path}: {problem}").format(
                    path=config_path, problem=exc.problems[0]
                ),
                err=True,
            )
            sys.exit(EXIT_USAGE)
    if os.access(DEFAULT_CONFIG, os.R_OK):
        try:
            return load_config(DEFAULT_CONFIG).api.socket
        except ConfigError:
            pass  # `edge config check` reports it; the default socket may still answer
    return DEFAULT_SOCKET


def _me() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid{os.getuid()}"


def _socket_group(path: str) -> str:
    """The group that owns the socket (api.group of that daemon's config), else the packaged default."""
    try:
        return grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        return "cabinet-edge"


def _configured_group() -> str:
    """api.group of the local config when it can be read, else the packaged default."""
    if os.access(DEFAULT_CONFIG, os.R_OK):
        try:
            return load_config(DEFAULT_CONFIG).api.group
        except ConfigError:
            pass
    return "cabinet-edge"


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def permission_fix(path: str) -> str:
    """How to get access to the socket. A socket of group root means the daemon could not give it to
    api.group (the group does not exist): joining root is never the answer."""
    group, me = _socket_group(path), _me()
    if group != "root":
        return _(
            "{me} is not in the socket's group {group}; fix: sudo usermod -aG {group} {me}, "
            "then log in again (or use sudo)"
        ).format(me=me, group=group)
    wanted = _configured_group()
    if not _group_exists(wanted):
        text = _(
            "the socket belongs to root because group {group} (api.group) does not exist; an administrator: "
            "sudo groupadd {group} && sudo usermod -aG {group} {me} && sudo systemctl restart cabinet-edge "
            "(or use sudo)"
        )
    else:
        text = _(
            "the socket belongs to root, not to group {group} (api.group): restart the daemon "
            "(sudo systemctl restart cabinet-edge), and join the group: sudo usermod -aG {group} {me} (or use sudo)"
        )
    return text.format(group=wanted, me=me)


def unreachable(exc: Unreachable, as_json: bool) -> NoReturn:
    if exc.kind == "permission":
        code = EXIT_REFUSED
        msg = _("edge: permission denied on {path}: {fix}").format(path=exc.path, fix=permission_fix(exc.path))
    else:
        code = EXIT_DOWN
        fix = {
            "missing": N_("is the daemon running? sudo systemctl status cabinet-edge"),
            "refused": N_("the daemon is not running: sudo systemctl start cabinet-edge"),
            "timeout": N_("the daemon is hung or overloaded: sudo journalctl -u cabinet-edge -n 50"),
            "closed": N_("the daemon is restarting? try again, see sudo journalctl -u cabinet-edge -n 50"),
        }.get(exc.kind, "sudo systemctl status cabinet-edge")
        msg = _("edge: daemon not reachable at {path}: {why}; {fix} (or --socket PATH)").format(
            path=exc.path, why=exc.why, fix=_(fix)
        )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": False,
                    "code": "unreachable" if code == EXIT_DOWN else "forbidden",
                    "error": msg,
                    "socket": exc.path,
                }
            )
        )
    click.echo(msg, err=True)
    sys.exit(code)


def failed(exc: ApiError, as_json: bool, what: str) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"ok": False, "code": exc.code, "error": exc.message}))
    click.echo(f"edge {what}: {exc.code.replace('_', ' ')}: {exc.message}", err=True)
    sys.exit(exit_code(exc.code))


def call(
    ctx_args: dict[str, Any], what: str, cmd: str, args: dict[str, Any] | None = None, timeout_s: float | None = None
) -> dict[str, Any]:
    client = Client(socket_path(ctx_args["socket_opt"], ctx_args["config_path"]))
    try:
        return client.request(cmd, args, timeout_s)
    except Unreachable as exc:
        unreachable(exc, ctx_args["as_json"])
    except ApiError as exc:
        failed(exc, ctx_args["as_json"], what)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def screen_rows(reserved: int) -> int:
    """Rows for the status screen on this terminal (24 when it does not say), less ``reserved`` rows for
    what follows it and one for the cursor's line."""
    return max(5, shutil.get_terminal_size((render.WIDTH, render.HEIGHT)).lines - reserved - 1)


def _conn(socket_opt: str | None, config_path: str | None, as_json: bool) -> dict[str, Any]:
    return {"socket_opt": socket_opt, "config_path": config_path, "as_json": as_json}


# -- read -------------------------------------------------------------------------------------------
@click.command()
@client_options
def status(socket_opt: str | None, config_path: str | None, as_json: bool) -> None:
    """One screen: state, limit and WHY, faults, modules, cable, meter, uplink."""
    data = call(_conn(socket_opt, config_path, as_json), "status", "status")
    if as_json:
        emit_json(data)
    else:
        # on a terminal one screen, least important lines hidden (and counted); into a file or pipe all
        click.echo(render.status_text(data, height=screen_rows(0) if sys.stdout.isatty() else None))


@click.command()
@client_options
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(0.2, 60.0),
    default=1.0,
    show_default=True,
    help="seconds between refreshes",
)
@click.option("--count", type=click.IntRange(1, None), default=None, help="stop after N refreshes")
def watch(socket_opt: str | None, config_path: str | None, as_json: bool, interval_s: float, count: int | None) -> None:
    """`edge status`, refreshed in place until Ctrl-C (--json: one object per line)."""
    conn = _conn(socket_opt, config_path, as_json)
    client = Client(socket_path(socket_opt, config_path), timeout_s=max(5.0, interval_s * 3))
    in_place = sys.stdout.isatty() and not as_json
    args: dict[str, Any] = {"interval_s": interval_s}
    if count is not None:
        args["count"] = count
    seen = 0
    try:
        for data in client.stream("watch", args):
            if as_json:
                click.echo(json.dumps(data, ensure_ascii=False))
            elif in_place:
                screen = render.status_text(data, height=screen_rows(1))
                click.echo("\x1b[H\x1b[2J" + screen + "\n" + _("(Ctrl-C to leave)"), nl=False)
            else:
                click.echo(("\n" if seen else "") + render.status_text(data))
            seen += 1
            if count is not None and seen >= count:
                break
    except Unreachable as exc:
        unreachable(exc, conn["as_json"])
    except ApiError as exc:
        failed(exc, as_json, "watch")
    except KeyboardInterrupt:
        pass
    if in_place:
        click.echo()
    sys.exit(EXIT_OK)


@click.command()
@client_options
def faults(socket_opt: str | None, config_path: str | None, as_json: bool) -> None:
    """Active faults, which are latched, and how to clear them."""
    data = call(_conn(socket_opt, config_path, as_json), "faults", "faults")
    if as_json:
        emit_json(data)
    else:
        click.echo(render.faults_text(data))


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_since_ms(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@client_options
@click.option(
    "--since",
    callback=_since,
    default=None,
    metavar="10m|ISO",
    help="only events after this: a duration ago (10m, 2h, 1d) or an ISO time",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=200, show_default=True, help="events in one page")
@click.option("--before", "before_seq", type=click.IntRange(1, None), default=None, help="page back: older than seq N")
@click.option("--after", "after_seq", type=click.IntRange(0, None), default=None, help="page forward: newer than seq N")
def events(
    socket_opt: str | None,
    config_path: str | None,
    as_json: bool,
    since: int | None,
    limit: int,
    before_seq: int | None,
    after_seq: int | None,
) -> None:
    """Events (faults, clears, limit rules, operator commands), oldest first: the newest page, or the page
    before/after a seq. The daemon answers at most 1000 events at a time."""
    if before_seq is not None and after_seq is not None:
        raise click.UsageError(_("give --before or --after, not both"))
    args: dict[str, Any] = {"limit": limit}
    if since is not None:
        args["since_ms"] = max(0, since)
    for key, value in (("before_seq", before_seq), ("after_seq", after_seq)):
        if value is not None:
            args[key] = value
    data = call(_conn(socket_opt, config_path, as_json), "events", "events", args)
    if as_json:
        emit_json(data)
        return
    click.echo(render.events_text(data["events"]))
    if data.get("more") and data["events"]:
        where = (
            f"--after {data['events'][-1]['seq']}" if after_seq is not None else f"--before {data['events'][0]['seq']}"
        )
        click.echo(_("(more: edge events {where})").format(where=where))


@click.command()
@client_options
def whoami(socket_opt: str | None, config_path: str | None, as_json: bool) -> None:
    """Who the daemon thinks you are, and whether you may change things. Anyone may ask: without access
    to the socket the answer comes from this machine, with what to do to get access."""
    path = socket_path(socket_opt, config_path)
    try:
        data = Client(path).request("whoami")
    except Unreachable as exc:
        if exc.kind != "permission":
            unreachable(exc, as_json)
        _whoami_local(path, as_json)
        return
    except ApiError as exc:
        failed(exc, as_json, "whoami")
    if as_json:
        emit_json(data)
        return
    may = (
        _("read and change")
        if data["admin"]
        else _("read only (changing needs group {group})").format(group=data["admin_group"])
    )
    click.echo(f"{data['user']} (uid {data['uid']}), {_('groups')} {', '.join(data['groups'])}: {may}")


def _whoami_local(path: str, as_json: bool) -> None:
    """``whoami`` for a user the socket lets not in: who this process is, and the fix."""
    groups = sorted({g.gr_name for g in grp.getgrall() if g.gr_gid in os.getgroups()} | {_primary_group()})
    fix = permission_fix(path)
    if as_json:
        emit_json(
            {
                "user": _me(),
                "uid": os.getuid(),
                "groups": groups,
                "admin": False,
                "read": False,
                "socket": path,
                "socket_group": _socket_group(path),
                "fix": fix,
                "answered_by": "local",
            }
        )
        return
    click.echo(
        f"{_me()} (uid {os.getuid()}), {_('groups')} {', '.join(groups)}: "
        + _("no access to the daemon at {path}").format(path=path)
    )
    click.echo(fix)


def _primary_group() -> str:
    try:
        return grp.getgrgid(os.getgid()).gr_name
    except KeyError:
        return str(os.getgid())


# -- change -----------------------------------------------------------------------------------------
@click.command()
@client_options
@click.argument("fault")
def clear(socket_opt: str | None, config_path: str | None, as_json: bool, fault: str) -> None:
    """Clear latched FAULT (refused while its condition is still present)."""
    data = call(_conn(socket_opt, config_path, as_json), "clear", "clear", {"fault": fault})
    if as_json:
        emit_json(data)
    else:
        click.echo(_("cleared {fault}; recorded as {user}").format(fault=fault, user=_me()))


def _current(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_current_a(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration_s(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds > 7 * 86400:
        raise click.BadParameter(
            _("{value} is longer than 7 days; use `edge limit set` without --for instead").format(value=repr(value))
        )
    return seconds


@click.group()
def limit() -> None:
    """Set or clear an operator current limit (it can only lower the limit)."""


@limit.command("set", context_settings={"ignore_unknown_options": True})
@client_options
@click.argument("current", metavar="CURRENT", callback=_current)
@click.option(
    "--for",
    "duration_s",
    callback=_duration,
    default=None,
    metavar="DURATION",
    help="expires after this (30m, 2h, 1h30m); until `edge limit clear` when not given",
)
def limit_set(
    socket_opt: str | None, config_path: str | None, as_json: bool, current: float, duration_s: float | None
) -> None:
    """Limit the output to CURRENT (with unit: 120A) for a while.

    Never above the hardware limit; the lowest of all rules always wins.
    """
    conn = _conn(socket_opt, config_path, as_json)
    args: dict[str, Any] = {"amps": current}
    if duration_s is not None:
        args["duration_s"] = duration_s
    data = call(conn, "limit set", "limit_set", args)
    if as_json:
        emit_json(data)
        return
    until = (
        _("until `edge limit clear`")
        if duration_s is None
        else _("for {duration} (until {time})").format(
            duration=render.duration(duration_s), time=render.clock(data["expires_at_ms"])
        )
    )
    click.echo(_("operator limit {amps} A {until}").format(amps=f"{current:g}", until=until))
    st = call(conn, "limit set", "status")
    click.echo(
        _("limit now {amps} A  <- {reason}").format(amps=f"{st['target_a']:.0f}", reason=i18n.core_text(st["reason"]))
    )


@limit.command("clear")
@client_options
def limit_clear(socket_opt: str | None, config_path: str | None, as_json: bool) -> None:
    """Remove the operator current limit."""
    data = call(_conn(socket_opt, config_path, as_json), "limit clear", "limit_clear")
    if as_json:
        emit_json(data)
    else:
        click.echo(data["result"])


@click.command()
@client_options
def stop(socket_opt: str | None, config_path: str | None, as_json: bool) -> None:
    """Stop charging: 0 A, output off, contactor open, until `edge resume`."""
    data = call(_conn(socket_opt, config_path, as_json), "stop", "stop")
    if as_json:
        emit_json(data)
    else:
        click.echo(
            _("stopped: output still on (ramping down), contactor open; `edge resume` to charge again")
            if data["enable"]
            else _("stopped: output off, contactor open; `edge resume` to charge again")
        )


@click.command()
@client_options
def resume(socket_opt: str | None, config_path: str | None, as_json: bool) -> None:
    """Undo `edge stop` (latched faults still hold until cleared)."""
    data = call(_conn(socket_opt, config_path, as_json), "resume", "resume")
    if as_json:
        emit_json(data)
    else:
        click.echo(
            (_("resumed") if data["resumed"] else _("was not stopped"))
            + "; "
            + _("limit {amps} A  <- {reason}").format(
                amps=f"{data['target_a']:.0f}", reason=i18n.core_text(data["reason"])
            )
        )


@click.command()
@client_options
@click.option(
    "--seconds",
    "duration_s",
    type=click.FloatRange(1.0, 60.0),
    default=5.0,
    show_default=True,
    help="how long pump and fan run",
)
def selftest(socket_opt: str | None, config_path: str | None, as_json: bool, duration_s: float) -> None:
    """Run pump and fan with the output off; report flow and temperatures (refused while charging)."""
    # said only once the daemon has not refused at once (permission, charging): a refusal comes back in
    # milliseconds, and "running pump and fan" before it would be untrue
    note = threading.Timer(
        SELFTEST_NOTE_AFTER_S,
        lambda: click.echo(_("running pump and fan for {seconds} s ...").format(seconds=f"{duration_s:g}"), err=True),
    )
    if not as_json:
        note.start()
    try:
        data = call(
            _conn(socket_opt, config_path, as_json),
            "selftest",
            "selftest",
            {"duration_s": duration_s},
            timeout_s=duration_s + 10.0,
        )
    finally:
        note.cancel()
    if as_json:
        emit_json(data)
    else:
        click.echo(render.selftest_text(data))
    sys.exit(EXIT_OK if data["verdict"] in ("pass", "warn") else EXIT_FAIL)


SELFTEST_NOTE_AFTER_S = 0.5
DIAG_MAX_EVENTS = 20_000
PAGE_EVENTS = 1000  # the daemon's most per answer


def _diag_from_daemon(client: Client, n_events: int) -> dict[str, Any]:
    """The daemon's diag answer with its newest ``n_events`` events, paged back with `events`."""
    data = client.request("diag", {"limit": min(n_events, PAGE_EVENTS)})
    events: list[dict[str, Any]] = data["events"]
    more = bool(data.get("events_more"))
    while more and events and len(events) < n_events:
        page = client.request(
            "events", {"before_seq": events[0]["seq"], "limit": min(PAGE_EVENTS, n_events - len(events))}
        )
        events = page["events"] + events
        more = bool(page.get("more")) and bool(page["events"])
    data["events"], data["events_more"] = events, more
    return data


def _daemon_files(daemon: dict[str, Any], files: dict[str, str | bytes], notes: list[str]) -> None:
    files["config.json"] = diag.to_json(daemon["config"])
    files["status.json"] = diag.to_json(daemon["status"])
    files["status.txt"] = render.status_text(daemon["status"]) + "\n"
    files["events.json"] = diag.to_json(daemon["events"])
    files["events.txt"] = render.events_text(daemon["events"]) + "\n"
    files["store.json"] = diag.to_json(daemon["store"])
    files["daemon.json"] = diag.to_json(daemon["daemon"])
    if daemon.get("events_more"):
        notes.append(f"events: the newest {len(daemon['events'])} bundled, older ones left out (--events N)")


def _refuse_overwrite(output: str, as_json: bool) -> NoReturn:
    msg = _("edge diag: {path} exists; choose another name with -o, or --force to overwrite it").format(path=output)
    if as_json:
        click.echo(json.dumps({"ok": False, "code": "exists", "error": msg}))
    click.echo(msg, err=True)
    sys.exit(EXIT_USAGE)


@click.command("diag")
@client_options
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="bundle to write (default edge-diag-<cabinet>-<time>.tar.gz here)",
)
@click.option(
    "--events",
    "n_events",
    type=click.IntRange(1, DIAG_MAX_EVENTS),
    default=500,
    show_default=True,
    help="newest events to bundle (fetched 1000 at a time)",
)
@click.option("--force", is_flag=True, help="overwrite the output file if it exists")
def diag_cmd(
    socket_opt: str | None, config_path: str | None, as_json: bool, output: str | None, n_events: int, force: bool
) -> None:
    """Write a diagnostics bundle for the manufacturer (no passwords or keys)."""
    if output is not None and os.path.exists(output) and not force:
        _refuse_overwrite(output, as_json)
    files: dict[str, str | bytes] = {}
    notes: list[str] = []
    path = socket_path(socket_opt, config_path)
    daemon: dict[str, Any] | None = None
    try:
        daemon = _diag_from_daemon(Client(path, timeout_s=10.0), n_events)
    except (Unreachable, ApiError) as exc:
        notes.append(f"daemon not reachable at {path}: {exc}; status, events and store statistics are missing")
    cabinet = "unknown"
    if daemon is not None:
        cabinet = str(daemon["status"].get("cabinet_id", cabinet))
        _daemon_files(daemon, files, notes)
    cfg_file = config_path or DEFAULT_CONFIG
    try:
        cfg = load_config(cfg_file)
        files["config-file.json"] = diag.to_json(diag.redact(cfg.model_dump(mode="json")))
        cabinet = cfg.cabinet.cabinet_id if cabinet == "unknown" else cabinet
    except ConfigError as exc:
        if daemon is None or config_path is not None or os.path.exists(cfg_file):
            notes.append(f"config file: {exc.problems[0]}")
        try:
            with open(cfg_file, encoding="utf-8", errors="replace") as f:
                files["config-file.toml.redacted"] = diag.redact_toml_text(f.read())
        except OSError:
            pass
    files["versions.json"] = diag.to_json(diag.system_versions())
    files["journal.txt"] = diag.journal()
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%SZ")  # UTC, like every time shown
    output = output or f"edge-diag-{cabinet}-{stamp}.tar.gz"
    manifest = [
        f"cabinet-edge diagnostics of cabinet {cabinet}, {render.clock(time.time() * 1000)}",
        f"made by {_me()} with socket {path}",
        "secrets: values of keys naming a password/secret/token/key passphrase are <redacted>;",
        "         TLS certificate and key files are never read, only their paths appear.",
        "",
        "files:",
    ]
    manifest += [f"  {name}" for name in sorted(files)]
    manifest += ["", "notes:"] + [f"  {n}" for n in notes or ["none"]]
    files["MANIFEST.txt"] = "\n".join(manifest) + "\n"
    top = os.path.basename(output).removesuffix(".tar.gz").removesuffix(".tgz")
    try:
        members = diag.write_bundle(output, files, top)
    except OSError as exc:
        click.echo(f"edge diag: cannot write {output}: {exc}", err=True)
        sys.exit(EXIT_FAIL)
    if as_json:
        emit_json({"ok": True, "output": output, "members": members, "notes": notes})
    else:
        click.echo(f"wrote {output} ({os.path.getsize(output)} bytes, {len(members)} files)")
        for n in notes:
            click.echo(f"note: {n}", err=True)


OPS_COMMANDS: list[click.Command] = [
    status,
    watch,
    faults,
    events,
    whoami,
    clear,
    limit,
    stop,
    resume,
    selftest,
    diag_cmd,
]
