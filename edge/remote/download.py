"""Download a release with resume, a size bound and its SHA-256, in constant memory.

- HTTPS with the system CAs; plain HTTP only to a loopback address (tests, a local cache on the board);
  a redirect is held to the same rule.
- Resume: the file grows as ``<dest>.part``; a later call (after a broken connection, a restart of the
  daemon or a power cut) asks for the rest with ``Range:`` and goes on; a server that ignores the range
  (200 instead of 206) sends the whole file again and the part is started over.
- Bound: a ``Content-Length`` above ``max_bytes`` is refused before the first byte, and so is the first
  byte beyond it when the server sends no length.
- The hash covers the whole file, the bytes already on disk read back in chunks; on a mismatch the part is
  deleted (a wrong file must not be resumed). Only a complete, matching file is renamed to ``dest``.
- Memory: one chunk (64 KiB) at a time, whatever the size (bench/update.py measures it).
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CHUNK_BYTES = 64 * 1024
TIMEOUT_S = 30.0
ATTEMPTS = 5  # connections per download: each broken one resumes where it stopped


class DownloadError(Exception):
    """Not downloaded; ``retry`` says whether a later attempt may succeed (a broken connection) or not
    (wrong hash, too large, not allowed)."""

    def __init__(self, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size_bytes: int
    sha256: str
    resumed_from: int  # bytes already on disk when this call started
    connections: int


def url_allowed(url: str) -> str | None:
    """None when ``url`` may be fetched, else why not."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return None if parts.hostname else "URL has no host"
    if parts.scheme != "http":
        return f"URL scheme {parts.scheme!r} not allowed (https)"
    host = parts.hostname or ""
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return "plain http is allowed to a loopback address only (use https)"


class _SameRules(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        why = url_allowed(newurl)
        if why is not None:
            raise DownloadError(f"redirect to {newurl[:80]} refused: {why}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SameRules())


def _hash_of(path: Path) -> tuple[hashlib._Hash, int]:
    h = hashlib.sha256()
    size = 0
    if path.exists():
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                h.update(chunk)
                size += len(chunk)
    return h, size


def _total_from(resp: http.client.HTTPResponse, have: int) -> int | None:
    """The whole file's size as the server states it (Content-Range of a 206, Content-Length of a 200)."""
    if resp.status == 206:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _one_connection(
    url: str,
    part: Path,
    max_bytes: int,
    cancel: threading.Event,
    progress: Callable[[int, int | None], None],
) -> bool:
    """Fetch what is missing of ``part``; True when the server says the file is complete."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = _OPENER.open(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after `have`: the part is the whole file
            return True
        raise DownloadError(f"HTTP {exc.code} {exc.reason}", retry=exc.code >= 500) from None
    with resp:
        if resp.status == 200 and have:  # range ignored: the whole file comes again
            have = 0
            part.unlink(missing_ok=True)
        total = _total_from(resp, have)
        if total is not None and total > max_bytes:
            raise DownloadError(f"release is {total} bytes, more than the bound of {max_bytes} bytes")
        with open(part, "ab") as f:
            while chunk := resp.read(CHUNK_BYTES):
                if cancel.is_set():
                    raise DownloadError("cancelled", retry=True)
                have += len(chunk)
                if have > max_bytes:
                    raise DownloadError(f"release exceeds the bound of {max_bytes} bytes")
                f.write(chunk)
                progress(have, total)
            f.flush()
            os.fsync(f.fileno())
        return total is None or have >= total


def download(
    url: str,
    dest: Path,
    sha256_hex: str,
    max_bytes: int,
    *,
    cancel: threading.Event | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    attempts: int = ATTEMPTS,
) -> Downloaded:
    """``url`` into ``dest`` (resuming ``dest.part``), checked against ``sha256_hex``; raises
    :class:`DownloadError`."""
    why = url_allowed(url)
    if why is not None:
        raise DownloadError(why)
    cancel = cancel or threading.Event()
    progress = progress or (lambda _have, _total: None)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    last: DownloadError | None = None
    for n in range(1, attempts + 1):
        try:
            complete = _one_connection(url, part, max_bytes, cancel, progress)
        except DownloadError as exc:
            if not exc.retry or exc.message == "cancelled":
                if not exc.retry:
                    part.unlink(missing_ok=True)
                raise
            last = exc
            continue
        except (OSError, http.client.HTTPException) as exc:  # broken connection, timeout: resume
            last = DownloadError(f"connection broke: {str(exc)[:120]}", retry=True)
            continue
        if not complete:
            last = DownloadError("the server closed before the end of the file", retry=True)
            continue
        h, size = _hash_of(part)
        if h.hexdigest() != sha256_hex.lower():
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"sha256 of the {size} bytes received is {h.hexdigest()[:12]}..., not {sha256_hex[:12]}..."
            )
        os.replace(part, dest)
        return Downloaded(dest, size, sha256_hex.lower(), start, n)
    assert last is not None
    raise DownloadError(f"{last.message} ({attempts} connections)", retry=True)
