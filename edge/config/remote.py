"""Config of the remote operations from the backend (``[remote]``, docs/TELEMETRY.md "Remote operations").

Nothing remote is allowed unless listed in ``commands``; an update is refused unless ``trusted_keys`` holds
the Ed25519 public key its signature was made with (edge/remote/signing.py)."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import Field, field_validator

from edge.config.base import Section

RemoteCommand = Literal["update", "diag", "config-get", "config-apply", "log-level"]
ED25519_PUBLIC_KEY_BYTES = 32


class Remote(Section):
    commands: list[RemoteCommand] = Field(
        [], description="remote operations the backend may run (none by default): update, diag, config-get, ..."
    )
    trusted_keys: list[str] = Field(
        [], max_length=8, description="Ed25519 public keys (base64 of the 32 raw bytes) that may sign a release"
    )
    health_window_s: float = Field(
        300.0, ge=1, le=3600, description="s a new release or config must stay healthy before it is kept"
    )
    start_timeout_s: float = Field(
        90.0, ge=1, le=600, description="s a new release may take to report up; longer counts as a failed start"
    )
    allow_downgrade: bool = Field(
        False, description="an update to an older version is refused unless this is true and the command says so"
    )
    max_download_mb: float = Field(200.0, ge=1, le=4096, description="largest release or config accepted, MB")
    log_level_max_s: float = Field(3600.0, ge=10, le=86400, description="longest a remote log level holds, s")
    commands_per_hour: int = Field(30, ge=1, le=3600, description="remote operations accepted per hour (all kinds)")
    install_window: str = Field(
        "",
        pattern=r"^$|^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$",
        description='local time an update or config may be installed, e.g. "01:00-05:00" (may span midnight); '
        '"" = any time. Always only while no connector is in a session',
    )
    state_dir: str = Field("", description='downloads and update state; "" = <storage.data_dir>/update')

    @field_validator("trusted_keys")
    @classmethod
    def _ed25519_keys(cls, keys: list[str]) -> list[str]:
        for i, key in enumerate(keys):
            try:
                raw = base64.b64decode(key, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"trusted_keys[{i}] is not base64") from None
            if len(raw) != ED25519_PUBLIC_KEY_BYTES:
                raise ValueError(f"trusted_keys[{i}] is {len(raw)} bytes, an Ed25519 public key is 32")
        return keys
