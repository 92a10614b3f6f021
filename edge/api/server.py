"""Local control socket: a Unix stream socket speaking :mod:`edge.api.protocol` (JSON lines, v1).

Access is checked twice: the socket file is ``0660`` and owned by ``api.group`` (so only that group
can connect at all), and every request is checked against the peer's credentials from the kernel
(``SO_PEERCRED``, see :mod:`edge.api.peer`): reading needs ``api.group`` or ``api.admin_group``,
changing needs ``api.admin_group`` (root always may).

No client, however hostile, holds the control loop (docs/RELIABILITY.md, findings 9-12):
- connections are capped per peer uid and in all (:mod:`edge.api.guard`); one over the cap gets one
  ``refused`` line and is closed before anything is read from it;
- the accept loop is our own: out of file descriptors it backs off (up to ``ACCEPT_BACKOFF_MAX_S``) and
  logs once a minute with a count, instead of spinning and logging on every attempt; it lets the loop
  run after each connection (``sock_accept`` returns without yielding while connections are pending, so
  a burst of 900 held the control tick);
- the peer's user and groups are looked up once per uid and ``IDENTITY_TTL_S``, in a worker thread
  (:class:`edge.api.peer.Identities`), not once per connection on the loop;
- ``events`` and ``diag`` read the store, build and encode their (bounded) answers in one worker thread;
- a ``watch`` frame is written only when the reader has read the previous one; frames in between are
  dropped and counted (``data.watch.dropped``), so a slow reader gets the newest frame, not a backlog;
- each connection is its own task, and all its work is a quick call or an ``await``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import grp
import logging
import os
import socket
import struct
import termios
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edge.api.commands import COMMANDS, Command, Context, DaemonView, WatchArgs, full_status, parse_args
from edge.api.guard import Connections, LogLimit
from edge.api.peer import ADMIN, Identities, Peer, Policy, credentials
from edge.api.protocol import MAX_LINE_BYTES, ProtocolError, encode, error, ok, parse_request
from edge.api.reader import EventReader
from edge.config.schema import Api
from edge.operator import Source
from edge.ops import FORBIDDEN, Operations

log = logging.getLogger(__name__)
SOCKET_MODE = 0o660
ACCEPT_BACKLOG = 64
ACCEPT_BACKOFF_MIN_S = 0.05
ACCEPT_BACKOFF_MAX_S = 1.0
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
HOUSEKEEPING_S = 5.0  # how often ended audit windows are reported
WATCH_STALL_S = 60.0  # a watch reader that has read nothing for this long is disconnected
DRAIN_TIMEOUT_S = 10.0
WORKER_NICE = 10  # a reader that takes longer than this for one answer is disconnected


def _unread_bytes(sock: socket.socket | None) -> int:
    """Bytes written to ``sock`` that the peer has not read yet (Linux SIOCOUTQ); 0 when unknown."""
    if sock is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])
    except OSError:
        return 0


def _low_priority() -> None:
    """The worker thread yields the CPU to the control loop (Linux: nice is per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)


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
        self.connections = Connections()
        self.identities = Identities()
        self.logs = LogLimit(log)
        self.watch_frames_dropped = 0
        self._listener: socket.socket | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-read", initializer=_low_priority)
        self._reader: EventReader | None = None  # created and used in the worker thread only

    # -- listening -----------------------------------------------------------------------------------
    async def serve(self) -> None:
        self._listener = self._listen()
        housekeeping = asyncio.create_task(self._housekeeping(), name="api-housekeeping")
        try:
            await self._accept_loop(self._listener)
        finally:
            housekeeping.cancel()

    def _listen(self) -> socket.socket:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket from a killed daemon
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)  # no window in which the socket is wider open than 0660
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, SOCKET_MODE)
        sock.listen(ACCEPT_BACKLOG)
        sock.setblocking(False)
        self._set_group()
        return sock

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

    async def _accept_loop(self, listener: socket.socket) -> None:
        """Accept until cancelled. Out of fds (or memory) the pending connections wait in the backlog while
        we back off; any other accept error is logged (rate-limited) and skipped: never a crash, never a
        busy loop."""
        loop = asyncio.get_running_loop()
        backoff_s = 0.0
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:
                backoff_s = min(ACCEPT_BACKOFF_MAX_S, max(ACCEPT_BACKOFF_MIN_S, backoff_s * 2))
                if exc.errno in OUT_OF_RESOURCES:
                    self.logs.log(
                        logging.ERROR,
                        "accept",
                        "api: cannot accept connections, out of file descriptors or memory (%s); open: %d; "
                        "retrying every %.1f s at most",
                        exc.strerror,
                        self.connections.open,
                        ACCEPT_BACKOFF_MAX_S,
                    )
                else:
                    self.logs.log(logging.WARNING, "accept-other", "api: accept failed: %s", exc)
                await asyncio.sleep(backoff_s)
                continue
            backoff_s = 0.0
            self._admit(conn)
            await asyncio.sleep(0)  # the tick and the served clients run between two accepts

    def _admit(self, conn: socket.socket) -> None:
        """Serve ``conn`` in its own task, or refuse it with one line (nothing read) when over a cap."""
        try:
            pid, uid, gid = credentials(conn)
        except OSError as exc:
            self.logs.log(logging.WARNING, "peercred", "api: cannot read peer credentials (%s): closed", exc)
            conn.close()
            return
        why = self.connections.why_not(
            uid, self.identities.user, lambda: self.policy.allows(self.identities.peer_now(pid, uid, gid), ADMIN)
        )
        if why is not None:
            self.connections.refused += 1
            self.logs.log(logging.WARNING, f"refused:{uid}", "api: %s", why)
            with contextlib.suppress(OSError):
                conn.setblocking(False)
                conn.send(encode(error(None, "refused", why)))  # a fresh socket's buffer takes one line
            conn.close()
            return
        self.connections.add(uid)
        task = asyncio.create_task(self._connection(conn, pid, uid, gid), name=f"api-{uid}")
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            self.ops.flush_suppressed()

    # -- one connection ------------------------------------------------------------------------------
    async def _connection(self, conn: socket.socket, pid: int, uid: int, gid: int) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_LINE_BYTES)
        except OSError:
            conn.close()
            self.connections.remove(uid)
            return
        peer: Peer | None = None
        try:
            peer = await self.identities.peer(pid, uid, gid)
            await self._client(reader, writer, peer)
        finally:
            if peer is None:  # the lookup failed or was cancelled: _client did not close it
                writer.close()
            self.connections.remove(uid)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        try:
            while line := await reader.readline():
                await self._one(line, peer, writer)
        except (ConnectionError, TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as exc:
            self.logs.log(logging.INFO, "dropped", "api client %s dropped: %s", peer.label(), exc)
        except ValueError as exc:  # StreamReader: line longer than the limit
            self.logs.log(logging.INFO, "dropped", "api client %s dropped: %s", peer.label(), exc)
            writer.write(encode(error(None, "bad_request", f"request longer than {MAX_LINE_BYTES} bytes")))
        finally:
            writer.close()

    async def _one(self, line: bytes, peer: Peer, writer: asyncio.StreamWriter) -> None:
        req_id = None
        cmd: Command | None = None
        try:
            req = parse_request(line)
            req_id = req.id
            cmd = COMMANDS.get(req.cmd)
            if cmd is None:
                raise ProtocolError("unknown_command", f"unknown command {req.cmd!r}; known: {', '.join(COMMANDS)}")
            if not self.policy.allows(peer, cmd.need):
                if cmd.need != "read":
                    # audited compactly (summarised args) and at most so often per user: edge.ops
                    source = Source.local(peer.user, peer.uid)
                    self.ops.audit(cmd.name, source, req.args, False, FORBIDDEN, FORBIDDEN)
                raise ProtocolError("forbidden", f"{cmd.name}: " + self.policy.why_not(peer, cmd.need))
            args = parse_args(cmd, req.args)
            if isinstance(args, WatchArgs):
                await self._watch(req_id, args, writer)
                return
            context = Context(self.daemon, peer, self.policy, self.ops, self.offload)
            answer = ok(req_id, await cmd.handler(context, args))
        except ProtocolError as exc:
            answer = error(req_id, exc.code, exc.message)
        except Exception as exc:
            log.exception("api: request failed")
            answer = error(req_id, "internal", f"{type(exc).__name__}: {exc}")
        if cmd is not None and cmd.heavy and answer["ok"]:
            data = await self.offload(lambda _reader: encode(answer))
        else:
            data = encode(answer)
        writer.write(data)
        await asyncio.wait_for(writer.drain(), DRAIN_TIMEOUT_S)

    # -- the worker thread ---------------------------------------------------------------------------
    async def offload(self, fn: Callable[[EventReader], Any]) -> Any:
        """Run ``fn(reader)`` in the API's one worker thread (its own store connection) and await it."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._with_reader, fn)

    def _with_reader(self, fn: Callable[[EventReader], Any]) -> Any:
        if self._reader is None:
            self._reader = EventReader(self.daemon.store.path)
        return fn(self._reader)

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- watch ---------------------------------------------------------------------------------------
    async def _watch(self, req_id: Any, args: WatchArgs, writer: asyncio.StreamWriter) -> None:
        """A frame per interval, written only when the reader has read the last one (else dropped, counted)."""
        sock = writer.get_extra_info("socket")
        sent = dropped = 0
        stalled_s = 0.0
        while args.count is None or sent < args.count:
            if writer.is_closing():
                return
            if writer.transport.get_write_buffer_size() or _unread_bytes(sock):
                dropped += 1
                self.watch_frames_dropped += 1
                stalled_s += args.interval_s
                if stalled_s >= WATCH_STALL_S:
                    self.logs.log(logging.INFO, "watch-stalled", "api: watch reader read nothing for %.0f s", stalled_s)
                    return
            else:
                stalled_s = 0.0
                frame = {**full_status(self.daemon), "watch": {"frame": sent + 1, "dropped": dropped}}
                writer.write(encode(ok(req_id, frame)))
                sent += 1
            if args.count is None or sent < args.count:
                await asyncio.sleep(args.interval_s)
        await asyncio.wait_for(writer.drain(), DRAIN_TIMEOUT_S)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for task in list(self._clients):
            task.cancel()
        self._pool.submit(self._close_reader)
        self._pool.shutdown(wait=False)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
