"""``cmd/update`` in the daemon: check, download, verify, wait for idle connectors, hand over.

Everything slow runs in one worker thread (:class:`UpdateManager`), never on the event loop: the safety
loop never waits on a download. The hand-over to the root installer (:mod:`edge.remote.installer`) is a file,
``<state_dir>/request.json``; from then on the installer writes the status file and this side only reads
and reports it, in whichever release runs (the old one until the restart, the new one after, the old one
again after a rollback).

Order of the checks, cheapest first, so a refused update changes nothing on the cabinet:

1. arguments (version, https URL, sha256, signature), not the running version, no downgrade unless
   ``[remote] allow_downgrade`` and the command's ``downgrade: true``;
2. the Ed25519 signature over (version, sha256) against ``[remote] trusted_keys``: ``InvalidSignature``
   before a byte is downloaded;
3. the download (resumable, bounded by ``max_download_mb``), then its SHA-256: ``DownloadFailed``;
4. while ``sessions_active()``: ``Scheduled``; installed when every connector is idle.

A daemon restart (or power cut) during 1-4 resumes the download where it stopped (``pending.json`` keeps
the command).
"""

from __future__ import annotations

import datetime
import logging
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.config import ConfigError, parse_config
from edge.config.remote import Remote
from edge.remote import download, signing, states
from edge.remote.states import UpdateStatus

log = logging.getLogger(__name__)

PENDING_FILE = "pending.json"
PROGRESS_EVERY_S = 1.0  # Downloading progress reports, at most this often
POLL_S = 2.0  # while Scheduled or installing: how often idle connectors / the installer's status are read

Report = Callable[[UpdateStatus, bool], None]  # (status, True when it entered a new state)


class UpdateArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    version: str = Field(pattern=signing.VERSION_RE.pattern, description="release name, e.g. 0.3.1")
    url: str = Field(max_length=2048, description="https URL of the release bundle (http only to loopback)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the bundle, lower-case hex")
    signature: str = Field(max_length=128, description="base64 Ed25519 signature (edge/remote/signing.py)")
    downgrade: bool = Field(False, description="true to install an older version ([remote] allow_downgrade)")


class ConfigApplyArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    url: str = Field(max_length=2048, description="https URL of the complete config.toml (http only to loopback)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the file, lower-case hex")


_Args = TypeVar("_Args", UpdateArgs, ConfigApplyArgs)
MAX_CONFIG_BYTES = 1024 * 1024


class Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def version_key(version: str) -> tuple[tuple[int, str], ...]:
    """Orders release names numerically where they are numbers: 0.10.0 > 0.9.2, 1.0 > 1.0rc1 is not
    attempted (pre-releases compare by text)."""
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.+-]", version))


def in_window(window: str, now: datetime.datetime) -> bool:
    """True when ``now`` (local time) is within ``"HH:MM-HH:MM"`` (which may span midnight); "" is always."""
    if not window:
        return True
    start, end = (datetime.time.fromisoformat(t) for t in window.split("-"))
    t = now.time()
    return start <= t < end if start <= end else (t >= start or t < end)


def check_config_text(text: str) -> str:
    """ "" when ``text`` is a valid config, else its problems as `edge config check` prints them (line and
    key), joined by "; "."""
    try:
        parse_config(text, "config.toml")
    except ConfigError as exc:
        return "; ".join(exc.problems)
    return ""


def remote_section_changed(current: Path, new: Path) -> str:
    """Why ``new`` may not replace ``current`` remotely: the ``[remote]`` section is the cabinet's trust
    (who may sign, what the backend may do) and changes on site only."""
    try:
        with open(new, "rb") as f:
            new_remote = tomllib.load(f).get("remote")
        with open(current, "rb") as f:
            old_remote = tomllib.load(f).get("remote")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return f"config cannot be read: {str(exc)[:200]}"
    if new_remote != old_remote:
        return "the [remote] section differs from the running config: it changes on site only"
    return ""


def _problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(x) for x in err["loc"]) or "payload"
    return f"{where}: {err['msg']}"


class UpdateManager:
    def __init__(
        self,
        cfg: Remote,
        state_dir: Path,
        running_version: str,
        *,
        sessions_active: Callable[[], bool] = lambda: False,
        active_faults: Callable[[], Iterable[str]] = tuple,
        report: Report = lambda _status, _new: None,
        trigger: Callable[[Path], None] = lambda _request: None,
        poll_s: float = POLL_S,
        config_path: str | None = None,
        now: Callable[[], datetime.datetime] = datetime.datetime.now,
    ) -> None:
        """``sessions_active`` and ``active_faults`` are called from the worker thread (reads only);
        ``report`` too: hop onto the loop there if what it does is not thread-safe. ``trigger`` starts the
        installer for a request file; on a cabinet cabinet-edge-update.path does that, so it does nothing."""
        self.cfg = cfg
        self.dir = state_dir
        self.running_version = running_version
        self.sessions_active = sessions_active
        self.active_faults = active_faults
        self.report = report
        self.trigger = trigger
        self.poll_s = poll_s
        self.config_path = config_path  # the running config: config-apply may not change its [remote]
        self.now = now  # local wall-clock time, for [remote] install_window
        self._lock = threading.Lock()
        self._status = states.load_status(state_dir)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what others read ------------------------------------------------------------------------------
    @property
    def status(self) -> UpdateStatus:
        with self._lock:
            return self._status

    @property
    def installing(self) -> bool:
        """True from the hand-over to the installer until the update is over: a new session should not
        start then (the daemon is about to restart)."""
        return (self.dir / states.REQUEST_FILE).exists()

    # -- the command -------------------------------------------------------------------------------
    def _arguments(self, model: type[_Args], raw: dict[str, Any]) -> _Args:
        """A command's arguments, checked (schema, URL) while the cabinet is idle; raises :class:`Refused`."""
        try:
            args = model.model_validate(raw)
        except ValidationError as exc:
            raise Refused(_problem(exc)) from None
        why = download.url_allowed(args.url)
        if why is not None:
            raise Refused(why)
        self._check_idle()
        return args

    def request(self, cmd_id: str, raw: dict[str, Any]) -> str:
        """Check ``cmd/update`` and start it in the worker; raises :class:`Refused`. Returns at once."""
        args = self._arguments(UpdateArgs, raw)
        self._check_version(args)
        self.dir.mkdir(parents=True, exist_ok=True)
        start = UpdateStatus(id=cmd_id, version=args.version, from_version=self.running_version)
        bad = signing.verify(args.signature, args.version, args.sha256, self.cfg.trusted_keys)
        if bad is not None:
            refused = start.to(states.INVALID_SIGNATURE, bad)
            self._set(refused, save=False)
            threading.Thread(target=states.save_status, args=(self.dir, refused), daemon=True).start()
            raise Refused(f"InvalidSignature: {bad}")
        pending = {"id": cmd_id, **args.model_dump()}
        self._begin(pending, start.to(states.DOWNLOADING, f"from {args.url[:200]}"), self._work, cmd_id, args)
        return f"update to {args.version} started (Downloading); progress on the update topic"

    def request_config(self, cmd_id: str, raw: dict[str, Any]) -> str:
        """Check ``cmd/config-apply`` and start it in the worker; raises :class:`Refused`."""
        args = self._arguments(ConfigApplyArgs, raw)
        self.dir.mkdir(parents=True, exist_ok=True)
        pending = {"id": cmd_id, "kind": states.CONFIG, **args.model_dump()}
        start = UpdateStatus(
            kind=states.CONFIG, id=cmd_id, version=self.running_version, from_version=self.running_version
        )
        self._begin(
            pending, start.to(states.DOWNLOADING, f"config from {args.url[:200]}"), self._work_config, cmd_id, args
        )
        return "config download started; checked like `edge config check`, progress on the update topic"

    def _check_idle(self) -> None:
        busy = self.status
        if busy.state not in states.FINAL or self.installing or (self._thread and self._thread.is_alive()):
            raise Refused(f"{busy.kind} update {busy.id} is {busy.state}; one update at a time")

    def _check_version(self, args: UpdateArgs) -> None:
        if args.version == self.running_version:
            raise Refused(f"version {args.version} is already running")
        if version_key(args.version) < version_key(self.running_version):
            if not (self.cfg.allow_downgrade and args.downgrade):
                raise Refused(
                    f"{args.version} is older than the running {self.running_version}: a downgrade needs "
                    '"downgrade": true in the command and [remote] allow_downgrade = true'
                )

    # -- start-up and shut-down -----------------------------------------------------------------------
    def resume(self) -> None:
        """At daemon start: report the status as it is (retained), and carry on an update this daemon had
        not handed over yet, or follow the installer's."""
        status = self.status
        self.report(status, False)
        if status.state in states.FINAL and not self.installing:
            return
        pending = states.read_json(self.dir / PENDING_FILE)
        if self.installing or pending is None or pending.get("id") != status.id:
            self._thread = threading.Thread(target=self._follow, name="update", daemon=True)
            self._thread.start()
            return
        fields = {k: v for k, v in pending.items() if k not in ("id", "kind")}
        if pending.get("kind") == states.CONFIG:
            self._thread = threading.Thread(
                target=self._work_config, args=(status.id, ConfigApplyArgs.model_validate(fields)), daemon=True
            )
            self._thread.start()
            return
        try:
            args = UpdateArgs.model_validate(fields)
        except ValidationError:
            self._set(status.to(states.DOWNLOAD_FAILED, "the pending update could not be read again"), save=True)
            return
        self._start(status.id, args)

    def republish(self) -> None:
        """Report the status again (no event): for the uplink's on_connected, so the retained ``update``
        topic is right after a broker outage."""
        self.report(self.status, False)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker (a download stops after its current chunk, and resumes after the restart)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- the worker --------------------------------------------------------------------------------
    def _begin(self, pending: dict[str, Any], first: UpdateStatus, work: Callable[..., None], *args: Any) -> None:
        """Report ``first`` at once; the worker records it (fsync: never on the event loop) and goes on."""
        self._set(first, save=False)

        def record_then_work() -> None:
            states.write_atomic(self.dir / PENDING_FILE, pending)
            states.save_status(self.dir, first)
            work(*args)

        self._thread = threading.Thread(target=record_then_work, name="update", daemon=True)
        self._thread.start()

    def _start(self, cmd_id: str, args: UpdateArgs) -> None:
        self._thread = threading.Thread(target=self._work, args=(cmd_id, args), name="update", daemon=True)
        self._thread.start()

    def _set(self, status: UpdateStatus, save: bool) -> None:
        with self._lock:
            new_state = status.state != self._status.state or status.id != self._status.id
            self._status = status
        if save:
            states.save_status(self.dir, status)
        self.report(status, new_state)

    def _work(self, cmd_id: str, args: UpdateArgs) -> None:
        try:
            if not self._download(args):
                return
            self._wait_for_idle()
            if self._stop.is_set():
                return
            self._hand_over(cmd_id, args)
            self._follow()
        except Exception:  # a bug here must end in a reported state, not a silent thread
            log.exception("update worker failed")
            self._set(self.status.to(states.INSTALLATION_FAILED, "internal error in the update worker"), save=True)

    def _work_config(self, cmd_id: str, args: ConfigApplyArgs) -> None:
        try:
            target = self.dir / f"config-{cmd_id}.toml"
            try:
                got = download.download(args.url, target, args.sha256, MAX_CONFIG_BYTES, cancel=self._stop)
            except download.DownloadError as exc:
                if not self._stop.is_set():
                    (self.dir / PENDING_FILE).unlink(missing_ok=True)
                    self._set(self.status.to(states.DOWNLOAD_FAILED, exc.message[:300]), save=True)
                return
            problems = check_config_text(got.path.read_text(encoding="utf-8", errors="replace"))
            if not problems and self.config_path:
                problems = remote_section_changed(Path(self.config_path), got.path)
            if problems:
                got.path.unlink(missing_ok=True)
                (self.dir / PENDING_FILE).unlink(missing_ok=True)
                self._set(self.status.to(states.INSTALLATION_FAILED, problems[:600]), save=True)
                return
            self._set(
                self.status.to(states.DOWNLOADED, f"{got.size_bytes} bytes, valid (edge config check)"), save=True
            )
            self._wait_for_idle()
            if self._stop.is_set():
                return
            extra = {"kind": states.CONFIG, "file": target.name}
            self._write_request(cmd_id, self.running_version, args.sha256, "", extra)
            self._follow()
        except Exception:  # a bug here must end in a reported state, not a silent thread
            log.exception("config-apply worker failed")
            self._set(self.status.to(states.INSTALLATION_FAILED, "internal error in the update worker"), save=True)

    def _download(self, args: UpdateArgs) -> bool:
        last = [0.0]

        def progress(have: int, total: int | None) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                self._set(
                    self.status.to(states.DOWNLOADING, self.status.reason, progress_bytes=have, size_bytes=total),
                    save=False,
                )

        package = self.dir / f"cabinet-edge-{args.version}.tar.gz"
        if package.is_file() and signing.file_sha256(package) == args.sha256:  # downloaded before a restart
            self._set(self.status.to(states.DOWNLOADED, "downloaded before the restart; sha256 ok"), save=True)
            return True
        try:
            got = download.download(
                args.url,
                package,
                args.sha256,
                int(self.cfg.max_download_mb * 1024 * 1024),
                cancel=self._stop,
                progress=progress,
            )
        except download.DownloadError as exc:
            if self._stop.is_set():
                return False  # shutting down: the part stays and the download resumes after the restart
            (self.dir / PENDING_FILE).unlink(missing_ok=True)
            package.with_name(package.name + ".part").unlink(missing_ok=True)  # a refused update leaves nothing
            self._set(self.status.to(states.DOWNLOAD_FAILED, exc.message[:300]), save=True)
            return False
        resumed = f", resumed at {got.resumed_from} bytes" if got.resumed_from else ""
        self._set(
            self.status.to(
                states.DOWNLOADED,
                f"{got.size_bytes} bytes, sha256 and signature ok{resumed}",
                progress_bytes=got.size_bytes,
                size_bytes=got.size_bytes,
            ),
            save=True,
        )
        return True

    def _wait_for_idle(self) -> None:
        while not self._stop.is_set():
            if self.sessions_active():
                why = "waiting until no connector is in a session"
            elif not in_window(self.cfg.install_window, self.now()):
                why = f"waiting for the install window {self.cfg.install_window} ([remote] install_window)"
            else:
                return
            if self.status.state != states.SCHEDULED or self.status.reason != why:
                self._set(self.status.to(states.SCHEDULED, why), save=True)
            self._stop.wait(self.poll_s)

    def _hand_over(self, cmd_id: str, args: UpdateArgs) -> None:
        self._write_request(cmd_id, args.version, args.sha256, args.signature, {"kind": states.RELEASE})

    def _write_request(self, cmd_id: str, version: str, digest: str, signature: str, extra: dict[str, Any]) -> None:
        request = {
            "id": cmd_id,
            "version": version,
            "sha256": digest,
            "signature": signature,
            "from_version": self.running_version,
            "baseline_faults": sorted(self.active_faults()),
            "t_ms": int(time.time() * 1000),
            **extra,
        }
        states.write_atomic(self.dir / states.REQUEST_FILE, request)
        (self.dir / PENDING_FILE).unlink(missing_ok=True)
        self.trigger(self.dir / states.REQUEST_FILE)

    def _follow(self) -> None:
        """Report the installer's status file until the update is over (or this daemon stops)."""
        while not self._stop.is_set():
            status = states.load_status(self.dir)
            if status != self.status:
                self._set(status, save=False)
            if status.state in states.FINAL and not self.installing:
                return
            self._stop.wait(self.poll_s)
