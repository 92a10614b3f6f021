"""The remote operations as MQTT commands: ``update``, ``config-apply``, ``diag``, ``log-level``,
``config-get``.

:class:`RemoteCommands` is what :func:`edge.telemetry.commands.handle` calls for these names; the channel
has already checked the envelope (size, id, age, retained, replayed id) and records the audit event
with the source. Here: is the command enabled in ``[remote] commands``, is the hourly budget
(``commands_per_hour``, all remote commands together, refusals included) left, then the command itself.
Every answer is immediate; what takes time (an update) reports on the retained ``update`` topic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.config.remote import Remote
from edge.redaction import redact_toml_text
from edge.remote.diag import DiagUpload
from edge.remote.update import Refused, UpdateManager

UPDATE = "update"
LOG_LEVEL = "log-level"
CONFIG_GET = "config-get"
CONFIG_APPLY = "config-apply"
DIAG = "diag"
REMOTE_COMMANDS = (UPDATE, DIAG, CONFIG_GET, CONFIG_APPLY, LOG_LEVEL)
RATE_WINDOW_S = 3600.0
UPDATE_TOPIC = "update"  # retained: the update status (edge/remote/states.py)
CONFIG_TOPIC = "config"  # the answer of config-get (not retained)

Publish = Callable[[str, bytes, bool], None]  # (topic leaf under <prefix>/<site>/<cabinet>/, payload, retain)


class RemoteHandler(Protocol):
    def run(self, name: str, cmd_id: str, args: dict[str, Any]) -> tuple[bool, str]: ...


class LogLevelArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    duration_s: float = Field(gt=0, description="s until the configured level comes back")
    logger: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9_.]*$", description='"" = every logger')


class NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class LogLevel:
    """A log level for a bounded time, then the one before. A second command replaces the first and
    restarts the time; the level to come back to stays the configured one."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._saved: dict[str, int] = {}
        self.until_s: float | None = None

    def set(self, logger: str, level: str, duration_s: float) -> str:
        if duration_s > self.max_s:
            raise Refused(f"duration_s = {duration_s:g} s above [remote] log_level_max_s = {self.max_s:g} s")
        with self._lock:
            target = logging.getLogger(logger or None)
            self._saved.setdefault(logger, target.level)
            target.setLevel(level)
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(duration_s, self.restore)
            self._timer.daemon = True
            self._timer.start()
            self.until_s = time.monotonic() + duration_s
        return f"log level {level} for {logger or 'every logger'} for {duration_s:g} s, then back"

    def restore(self) -> None:
        with self._lock:
            for name, level in self._saved.items():
                logging.getLogger(name or None).setLevel(level)
            self._saved.clear()
            self._timer = None
            self.until_s = None


class RemoteCommands:
    """The remote commands of one daemon. ``publish`` sends on the daemon's MQTT session (paho's publish is
    thread-safe); ``config_path`` is the config file the daemon runs with."""

    def __init__(
        self,
        cfg: Remote,
        *,
        update: UpdateManager | None = None,
        diag: DiagUpload | None = None,
        config_path: str | None = None,
        publish: Publish = lambda _leaf, _payload, _retain: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.update = update
        self.diag = diag
        self.config_path = config_path
        self.publish = publish
        self.clock = clock
        self.log_level = LogLevel(cfg.log_level_max_s)
        self._recent: deque[float] = deque()

    def _within_budget(self) -> bool:
        now = self.clock()
        while self._recent and now - self._recent[0] >= RATE_WINDOW_S:
            self._recent.popleft()
        if len(self._recent) >= self.cfg.commands_per_hour:
            return False
        self._recent.append(now)
        return True

    def run(self, name: str, cmd_id: str, args: dict[str, Any]) -> tuple[bool, str]:
        """(accepted, what was done or why not); never raises for a bad command."""
        if name not in self.cfg.commands:
            return False, f"{name} is not enabled on this cabinet ([remote] commands)"
        if not self._within_budget():
            return (
                False,
                f"more than {self.cfg.commands_per_hour} remote commands in an hour ([remote] commands_per_hour)",
            )
        try:
            return True, self._dispatch(name, cmd_id, args)
        except Refused as exc:
            return False, exc.reason
        except ValidationError as exc:
            err = exc.errors()[0]
            return False, f"{'.'.join(str(x) for x in err['loc']) or 'payload'}: {err['msg']}"

    def _dispatch(self, name: str, cmd_id: str, args: dict[str, Any]) -> str:
        if name == UPDATE:
            if self.update is None:
                raise Refused("updates are not set up in this daemon")
            return self.update.request(cmd_id, args)
        if name == CONFIG_APPLY:
            if self.update is None:
                raise Refused("config-apply is not set up in this daemon")
            return self.update.request_config(cmd_id, args)
        if name == DIAG:
            if self.diag is None:
                raise Refused("diag is not set up in this daemon")
            return self.diag.request(cmd_id, args)
        if name == LOG_LEVEL:
            a = LogLevelArgs.model_validate(args)
            return self.log_level.set(a.logger, a.level, a.duration_s)
        if name == CONFIG_GET:
            NoArgs.model_validate(args)
            return self._config_get(cmd_id)
        raise Refused(f"{name} is not available in this version")

    def _config_get(self, cmd_id: str) -> str:
        if not self.config_path:
            raise Refused("this daemon runs without a config file")
        text = redact_toml_text(Path(self.config_path).read_text(encoding="utf-8"))
        digest = hashlib.sha256(text.encode()).hexdigest()
        body = {"id": cmd_id, "path": self.config_path, "sha256": digest, "toml": text}
        self.publish(CONFIG_TOPIC, json.dumps(body, separators=(",", ":")).encode(), False)
        return f"redacted config ({len(text)} characters, sha256 {digest[:12]}...) published on {CONFIG_TOPIC}"


def audit_args(args: dict[str, Any]) -> dict[str, Any]:
    """The arguments as the audit event keeps them: a URL without its query string (a pre-signed URL's
    signature is a credential for whoever reads the event log)."""
    url = args.get("url")
    if isinstance(url, str) and "?" in url:
        return {**args, "url": url.split("?", 1)[0] + "?<redacted>"}
    return args


def update_message(status: Any) -> bytes:
    """The retained ``update`` payload for a status (edge/schemas: see docs/TELEMETRY.md)."""
    return json.dumps(status.as_dict(), separators=(",", ":")).encode()
