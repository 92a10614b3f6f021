"""``cmd/diag``: the diagnostics bundle (secrets redacted, as ``edge diag``) sent to the backend.

With ``url`` the bundle is uploaded with one HTTP PUT (the usual pre-signed URL of an object store; https,
plain http only to loopback); without, it is published over MQTT in chunks on ``diag/<id>/<n>`` (raw bytes,
``CHUNK_BYTES`` each, not retained), then a summary. Either way the summary goes out on ``diag`` and as a
``diag`` event: ``{"id", "result": "uploaded"|"published"|"failed", "size_bytes", "sha256", "chunks",
"reason"}``. The bundle is built and sent in a worker thread, bounded by ``max_bytes``, and never kept.

What goes in is the integrator's ``collect()`` (name -> content); :func:`basic_files` is what is there
without a daemon: the config file redacted, versions, the journal; :func:`daemon_files` adds what `edge
diag` takes from the daemon (the daemon asks its own control socket).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge import diag
from edge.api.client import ApiError, Client, Unreachable
from edge.remote import download
from edge.remote.update import Refused

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
UPLOAD_TIMEOUT_S = 60.0
DIAG_TOPIC = "diag"

Files = dict[str, str | bytes]
Publish = Callable[[str, bytes, bool], None]
EventSink = Callable[[str, str, dict[str, Any]], None]


def daemon_files(socket_path: str, n_events: int = 500) -> Files:
    """What `edge diag` takes from the daemon (redacted config, status, events, store), asked over the
    daemon's own control socket: call it from a worker thread, the API answers on the event loop."""
    try:
        data = Client(socket_path, timeout_s=10.0).request("diag", {"limit": n_events})
    except (Unreachable, ApiError, OSError, ValueError) as exc:
        return {"daemon.error.txt": f"daemon not reachable at {socket_path}: {exc}\n"}
    return {f"{name}.json": diag.to_json(data[name]) for name in ("config", "status", "events", "store", "daemon")}


class DiagArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    url: str = Field("", max_length=2048, description='pre-signed https URL for an HTTP PUT; "" = over MQTT')


def basic_files(config_path: str | None) -> Files:
    files: Files = {"versions.json": diag.to_json(diag.system_versions()), "journal.txt": diag.journal()}
    if config_path:
        try:
            files["config-file.toml.redacted"] = diag.redact_toml_text(Path(config_path).read_text(encoding="utf-8"))
        except OSError as exc:
            files["config-file.error.txt"] = f"{config_path}: {exc}\n"
    return files


class DiagUpload:
    def __init__(
        self,
        collect: Callable[[], Files],
        max_bytes: int,
        *,
        publish: Publish = lambda _leaf, _payload, _retain: None,
        on_event: EventSink = lambda _kind, _name, _data: None,
    ) -> None:
        self.collect = collect
        self.max_bytes = max_bytes
        self.publish = publish
        self.on_event = on_event
        self._thread: threading.Thread | None = None
        self.last: dict[str, Any] | None = None

    def request(self, cmd_id: str, raw: dict[str, Any]) -> str:
        try:
            args = DiagArgs.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise Refused(f"{'.'.join(str(x) for x in err['loc']) or 'payload'}: {err['msg']}") from None
        if args.url:
            why = download.url_allowed(args.url)
            if why is not None:
                raise Refused(why)
        if self._thread is not None and self._thread.is_alive():
            raise Refused("a diagnostics bundle is being sent; one at a time")
        self._thread = threading.Thread(target=self._work, args=(cmd_id, args.url), name="diag", daemon=True)
        self._thread.start()
        how = "uploaded with HTTP PUT" if args.url else f"published in chunks on {DIAG_TOPIC}/{cmd_id}/<n>"
        return f"diagnostics bundle being built; {how}; summary on {DIAG_TOPIC}"

    def wait(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _work(self, cmd_id: str, url: str) -> None:
        summary: dict[str, Any] = {"id": cmd_id, "result": "failed", "size_bytes": 0, "sha256": "", "chunks": 0}
        try:
            with tempfile.TemporaryDirectory(prefix="edge-diag-") as tmp:
                bundle = Path(tmp) / f"edge-diag-{cmd_id}.tar.gz"
                diag.write_bundle(str(bundle), self.collect(), f"edge-diag-{cmd_id}")
                size = bundle.stat().st_size
                digest = hashlib.sha256(bundle.read_bytes()).hexdigest() if size <= self.max_bytes else ""
                summary.update(size_bytes=size, sha256=digest)
                if size > self.max_bytes:
                    summary["reason"] = f"bundle is {size} bytes, above the bound of {self.max_bytes} bytes"
                elif url:
                    self._put(url, bundle, size)
                    summary["result"] = "uploaded"
                else:
                    summary.update(result="published", chunks=self._chunks(cmd_id, bundle))
        except (OSError, urllib.error.URLError, ValueError) as exc:
            summary["reason"] = str(exc)[:300]
        except Exception as exc:  # a bug must still end in an answer
            log.exception("diag worker failed")
            summary["reason"] = f"internal error: {type(exc).__name__}"
        self.last = summary
        self.publish(DIAG_TOPIC, json.dumps(summary, separators=(",", ":")).encode(), False)
        self.on_event("diag", summary["result"], summary)

    def _put(self, url: str, bundle: Path, size: int) -> None:
        with open(bundle, "rb") as f:
            req = urllib.request.Request(
                url, data=f, method="PUT", headers={"Content-Length": str(size), "Content-Type": "application/gzip"}
            )
            with urllib.request.urlopen(req, timeout=UPLOAD_TIMEOUT_S) as resp:
                if not 200 <= resp.status < 300:
                    raise OSError(f"HTTP {resp.status} from the upload URL")

    def _chunks(self, cmd_id: str, bundle: Path) -> int:
        n = 0
        with open(bundle, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                self.publish(f"{DIAG_TOPIC}/{cmd_id}/{n}", chunk, False)
                n += 1
        return n
