"""The diagnostics bundle (`edge diag -o FILE.tar.gz`): what a manufacturer's engineer needs, no secrets.

Guarantees:
- every config value whose key names a secret (:func:`edge.redaction.is_secret_key`, the one rule) is
  replaced by ``<redacted>``, in the parsed config and, when the file does not load, in its raw text
  (:func:`edge.redaction.redact_toml_text`: TOML-aware, also when the text is not valid TOML);
- files the config points at (TLS certificates and keys) are never read, only their paths are named;
- the bundle is written even when the daemon is down (then it says so and carries what the CLI can
  see on its own: the config file, versions, the journal).
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from typing import Any

from edge.redaction import REDACTED, SECRET_WORDS, is_secret_key, redact, redact_toml_text

__all__ = ["REDACTED", "SECRET_WORDS", "is_secret_key", "redact", "redact_toml_text"]
PACKAGES = (
    "cabinet-edge",
    "pymodbus",
    "pyserial",
    "python-can",
    "paho-mqtt",
    "cantools",
    "click",
    "pydantic",
    "sdnotify",
)
JOURNAL_LINES = 500


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def system_versions() -> dict[str, Any]:
    os_release = None
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            os_release = dict(line.rstrip().split("=", 1) for line in f if "=" in line)
    except OSError:
        pass
    return {
        "python": sys.version,
        "executable": sys.executable,
        "platform": platform.platform(),
        "uname": list(platform.uname()),
        "os_release": os_release,
        "packages": package_versions(),
    }


def journal(unit: str = "cabinet-edge", lines: int = JOURNAL_LINES) -> str:
    exe = shutil.which("journalctl")
    if exe is None:
        return f"journalctl not available on this system: no logs of unit {unit} collected\n"
    try:
        res = subprocess.run(
            [exe, "-u", unit, "-n", str(lines), "--no-pager", "-o", "short-iso"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"journalctl -u {unit} failed: {exc}\n"
    if res.returncode != 0:
        return f"journalctl -u {unit} exited {res.returncode}: {res.stderr.strip()}\n{res.stdout}"
    return res.stdout or f"journalctl -u {unit}: no entries\n"


def write_bundle(path: str, files: dict[str, str | bytes], top: str) -> list[str]:
    """Write ``files`` (name -> content) under ``top/`` into a gzip tarball; returns the member names."""
    names = []
    tmp = path + ".part"
    with tarfile.open(tmp, "w:gz") as tar:
        now = time.time()
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(data), int(now), 0o640
            tar.addfile(info, io.BytesIO(data))
            names.append(info.name)
    os.replace(tmp, path)
    return names


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"
