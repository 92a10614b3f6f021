"""Blocking client of the control socket, for the CLI (one connection per command)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

from edge.api.protocol import MAX_LINE_BYTES, VERSION


class Unreachable(Exception):
    """Could not talk to the daemon. ``kind``: missing, permission, refused, timeout, closed, other."""

    def __init__(self, path: str, kind: str, why: str) -> None:
        self.path, self.kind, self.why = path, kind, why
        super().__init__(f"{path}: {why}")


class ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message
        super().__init__(f"{code}: {message}")


class Client:
    def __init__(self, path: str, timeout_s: float = 5.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._next_id = 0

    def _connect(self, timeout_s: float) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout_s)
        try:
            s.connect(self.path)
        except FileNotFoundError:
            s.close()
            raise Unreachable(self.path, "missing", "socket does not exist") from None
        except PermissionError:
            s.close()
            raise Unreachable(self.path, "permission", "permission denied") from None
        except ConnectionRefusedError:
            s.close()
            raise Unreachable(self.path, "refused", "connection refused (stale socket: daemon not running)") from None
        except TimeoutError:
            s.close()
            raise Unreachable(self.path, "timeout", f"no answer within {timeout_s:g} s") from None
        except OSError as exc:
            s.close()
            raise Unreachable(self.path, "other", exc.strerror or str(exc)) from None
        return s

    def _send(self, s: socket.socket, cmd: str, args: dict[str, Any] | None) -> int:
        self._next_id += 1
        req = {"v": VERSION, "id": self._next_id, "cmd": cmd, "args": args or {}}
        s.sendall(json.dumps(req).encode() + b"\n")
        return self._next_id

    def _lines(self, s: socket.socket) -> Iterator[dict[str, Any]]:
        buf = b""
        while True:
            while b"\n" not in buf:
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    raise Unreachable(self.path, "timeout", "daemon did not answer in time") from None
                if not chunk:
                    raise Unreachable(self.path, "closed", "daemon closed the connection (stopping?)")
                buf += chunk
                if len(buf) > 64 * MAX_LINE_BYTES:
                    raise ApiError("bad_request", "answer too long")
            line, buf = buf.split(b"\n", 1)
            yield dict(json.loads(line))

    @staticmethod
    def _data(answer: dict[str, Any]) -> dict[str, Any]:
        if not answer.get("ok"):
            raise ApiError(str(answer.get("code", "internal")), str(answer.get("error", answer)))
        return dict(answer.get("data") or {})

    def request(self, cmd: str, args: dict[str, Any] | None = None, timeout_s: float | None = None) -> dict[str, Any]:
        with self._connect(timeout_s or self.timeout_s) as s:
            self._send(s, cmd, args)
            return self._data(next(self._lines(s)))

    def stream(self, cmd: str, args: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        with self._connect(self.timeout_s) as s:
            self._send(s, cmd, args)
            for answer in self._lines(s):
                yield self._data(answer)
