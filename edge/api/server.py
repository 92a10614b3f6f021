"""Local control socket: one JSON request per line, one JSON answer per line.

Request ``{"cmd": "status"}``; answer ``{"ok": true, "data": {...}}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any, Protocol

from edge.config.schema import Api

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 64 * 1024


class DaemonView(Protocol):
    def status(self) -> dict[str, Any]: ...


class ApiServer:
    def __init__(self, config: Api, daemon: DaemonView) -> None:
        self.path = config.socket
        self.daemon = daemon
        self._server: asyncio.AbstractServer | None = None

    async def serve(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket from a killed daemon
        self._server = await asyncio.start_unix_server(self._client, path=self.path, limit=MAX_REQUEST_BYTES)
        os.chmod(self.path, 0o660)
        async with self._server:
            await self._server.serve_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                answer = self.handle(line)
                writer.write(json.dumps(answer, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log.info("api client dropped: %s", exc)
        finally:
            writer.close()

    def handle(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object")
        except ValueError as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        cmd = req.get("cmd")
        if cmd == "status":
            return {"ok": True, "data": self.daemon.status()}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
