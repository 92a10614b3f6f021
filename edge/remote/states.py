"""Update states and the status file both processes share.

The names are those of OCPP 2.0.1 ``FirmwareStatusEnumType`` and EVerest's firmware update status, so a
backend maps them one to one; ``RolledBack`` is ours (the release was installed, failed its health window
or did not start, and the previous one runs again).

The status file (``<state_dir>/status.json``) is written atomically (temporary file, fsync, rename, fsync of
the directory): after a power cut it holds the last state completely or the one before, never half of
one. It is the one record of an update: the installer writes it as it goes, the daemon (old or new
release, whichever runs) reads it and publishes it retained on ``.../update``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

IDLE = "Idle"
DOWNLOADING = "Downloading"
DOWNLOADED = "Downloaded"
DOWNLOAD_FAILED = "DownloadFailed"
INVALID_SIGNATURE = "InvalidSignature"
SCHEDULED = "Scheduled"
INSTALLING = "Installing"
INSTALLED = "Installed"
INSTALL_VERIFICATION_FAILED = "InstallVerificationFailed"
ROLLED_BACK = "RolledBack"
INSTALLATION_FAILED = "InstallationFailed"

STATES = (
    IDLE,
    DOWNLOADING,
    DOWNLOADED,
    DOWNLOAD_FAILED,
    INVALID_SIGNATURE,
    SCHEDULED,
    INSTALLING,
    INSTALLED,
    INSTALL_VERIFICATION_FAILED,
    ROLLED_BACK,
    INSTALLATION_FAILED,
)
# An update in one of these is over: a new cmd/update may start.
FINAL = frozenset({IDLE, DOWNLOAD_FAILED, INVALID_SIGNATURE, INSTALLED, ROLLED_BACK, INSTALLATION_FAILED})

# Installer phases (what to resume after a power cut), kept in the status file beside the state.
PHASE_NONE = ""
PHASE_INSTALL = "install"  # install.sh builds the release and switches `current`
PHASE_HEALTH = "health"  # the new release runs its health window
PHASE_ROLLBACK = "rollback"  # install.sh switches back to from_version (a config: the previous file back)
PHASE_CONFIG = "config"  # config-apply: the new config file replaces the old one

RELEASE = "release"  # what an update changes: a release (cmd/update) ...
CONFIG = "config"  # ... or the config file (cmd/config-apply); one at a time, same states and topic

STATUS_FILE = "status.json"
REQUEST_FILE = "request.json"  # the daemon's hand-over; cabinet-edge-update.path starts the installer on it


@dataclass(frozen=True)
class UpdateStatus:
    state: str = IDLE
    kind: str = RELEASE
    id: str = ""  # the cmd/update id
    version: str = ""  # the version being installed
    from_version: str = ""  # the version that ran when it started
    reason: str = ""  # why (failures), or what happens next
    phase: str = PHASE_NONE
    progress_bytes: int = 0
    size_bytes: int | None = None
    t_ms: int = 0  # when the state was entered (UTC ms)
    history: list[str] = field(default_factory=list)  # the states passed through, oldest first

    def to(self, state: str, reason: str = "", **changes: Any) -> UpdateStatus:
        """The next status: ``state`` entered now, appended to the history when it is a new state."""
        history = self.history if self.history[-1:] == [state] else [*self.history, state][-20:]
        return replace(self, state=state, reason=reason, t_ms=int(time.time() * 1000), history=history, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UpdateStatus:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    """``data`` as JSON at ``path``, all or nothing across a power cut."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"), sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``; None when there is none (or it is not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_status(state_dir: Path) -> UpdateStatus:
    data = read_json(state_dir / STATUS_FILE)
    if data is None:
        return UpdateStatus()
    try:
        return UpdateStatus.from_dict(data)
    except TypeError:
        return UpdateStatus()


def save_status(state_dir: Path, status: UpdateStatus) -> None:
    write_atomic(state_dir / STATUS_FILE, status.as_dict())
