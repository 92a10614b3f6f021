"""Local control socket: a Unix stream socket speaking :mod:`edge.api.protocol` (JSON lines, v1).

Access is checked twice: the socket file is ``0660`` and owned by ``api.group`` (so only that group
can connect at all), and every request is checked against the peer's credentials from the kernel
(``SO_PEERCRED``, see :mod:`edge.api.peer`): reading needs ``api.group`` or ``api.admin_group``,
changing needs ``api.admin_group`` (root always may). A slow or dead client never blocks the
control loop: each connection is its own task and all work is a quick call or an ``await``.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
from typing import Any

from edge.api.commands import COMMANDS, Context, DaemonView, WatchArgs, full_status, parse_args
from edge.api.peer import Peer, Policy, peer_of
from edge.api.protocol import MAX_LINE_BYTES, ProtocolError, encode, error, ok, parse_request
from edge.config.schema import Api
from edge.operator import Source
from edge.ops import FORBIDDEN, Operations

log = logging.getLogger(__name__)
SOCKET_MODE = 0o660


class ApiServer:
    def __init__(self, config: Api, daemon: DaemonView, ops: Operations | None = None) -> None:
        """``ops``: the cabinet's operations layer; built from ``daemon`` when not given."""
        self.path = config.socket
        self.config = config
        self.daemon = daemon
        self.ops = ops or Operations(
            daemon.config, daemon.controller, daemon.event, daemon.status, daemon.controller.clock
        )
        self.policy = Policy(config.group, config.admin_group, os.getuid())
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[Any]] = set()

    async def serve(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket from a killed daemon
        old = os.umask(0o117)  # no window in which the socket is wider open than 0660
        try:
            self._server = await asyncio.start_unix_server(self._client, path=self.path, limit=MAX_LINE_BYTES)
        finally:
            os.umask(old)
        os.chmod(self.path, SOCKET_MODE)
        self._set_group()
        async with self._server:
            await self._server.serve_forever()

    def _set_group(self) -> None:
        try:
            gid = grp.getgrnam(self.config.group).gr_gid
        except KeyError:
            log.warning(
                "api: group %r does not exist: socket %s stays group %s, so only root and the daemon's "
                "user can use it (create the group, or set api.group)",
                self.config.group,
                self.path,
                os.getgid(),
            )
            return
        try:
            os.chown(self.path, -1, gid)
        except OSError as exc:
            log.warning("api: cannot give socket %s to group %s: %s", self.path, self.config.group, exc)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            peer = peer_of(writer.get_extra_info("socket"))
        except OSError as exc:
            log.warning("api: cannot read peer credentials (%s): connection closed", exc)
            writer.close()
            return
        try:
            while line := await reader.readline():
                await self._one(line, peer, writer)
        except (ConnectionError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as exc:
            log.info("api client %s dropped: %s", peer.label(), exc)
        except ValueError as exc:  # StreamReader: line longer than the limit
            log.info("api client %s dropped: %s", peer.label(), exc)
            writer.write(encode(error(None, "bad_request", f"request longer than {MAX_LINE_BYTES} bytes")))
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()

    async def _one(self, line: bytes, peer: Peer, writer: asyncio.StreamWriter) -> None:
        req_id = None
        try:
            req = parse_request(line)
            req_id = req.id
            cmd = COMMANDS.get(req.cmd)
            if cmd is None:
                raise ProtocolError("unknown_command", f"unknown command {req.cmd!r}; known: {', '.join(COMMANDS)}")
            if not self.policy.allows(peer, cmd.need):
                if cmd.need != "read":
                    source = Source.local(peer.user, peer.uid)
                    self.ops.audit(cmd.name, source, req.args, False, FORBIDDEN, FORBIDDEN)
                raise ProtocolError("forbidden", f"{cmd.name}: " + self.policy.why_not(peer, cmd.need))
            args = parse_args(cmd, req.args)
            if isinstance(args, WatchArgs):
                await self._watch(req_id, args, writer)
                return
            answer = ok(req_id, await cmd.handler(Context(self.daemon, peer, self.policy, self.ops), args))
        except ProtocolError as exc:
            answer = error(req_id, exc.code, exc.message)
        except Exception as exc:
            log.exception("api: request failed")
            answer = error(req_id, "internal", f"{type(exc).__name__}: {exc}")
        writer.write(encode(answer))
        await writer.drain()

    async def _watch(self, req_id: Any, args: WatchArgs, writer: asyncio.StreamWriter) -> None:
        sent = 0
        while args.count is None or sent < args.count:
            writer.write(encode(ok(req_id, full_status(self.daemon))))
            await writer.drain()
            sent += 1
            if args.count is None or sent < args.count:
                await asyncio.sleep(args.interval_s)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
