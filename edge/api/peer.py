"""Who is on the other end of the control socket, and what they may do.

The kernel tells us the peer's uid and gid at connect time (``SO_PEERCRED``); the user's groups come
from the user database (``pwd`` primary group + ``os.getgrouplist``) plus the gid the peer runs with,
so removing someone from the admin group in /etc/group takes effect without waiting for them to log out:
at their next connection, at most ``IDENTITY_TTL_S`` later (:class:`Identities` keeps a looked-up user
and its groups that long, so a burst of connections asks the user database once, not once each; a
served connection's lookup runs in a worker thread; only the connection caps may look up in place, for a
uid over its cap or at the total cap, i.e. after its first connections were looked up). Root is always
admin.
A peer whose uid has no user entry gets only its primary group.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

READ, ADMIN = "read", "admin"
IDENTITY_TTL_S = 5.0  # a group change takes effect at the next connection at most this much later
IDENTITIES_KEPT = 64  # (uid, gid) pairs remembered; the oldest forgotten first
_UCRED = struct.Struct("3i")  # pid, uid, gid (struct ucred)


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    user: str
    groups: frozenset[str]

    def label(self) -> str:
        return f"{self.user} (uid {self.uid})"


def credentials(sock: socket.socket) -> tuple[int, int, int]:
    """pid, uid, gid of the peer as the kernel recorded them at connect (no user database lookup)."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid, gid


def peer_of(sock: socket.socket) -> Peer:
    return describe(*credentials(sock))


def identity(uid: int, gid: int) -> tuple[str, frozenset[str]]:
    """The user name and group names of ``uid`` running with ``gid``, from the user database (blocking:
    files, or NSS modules that may ask a daemon)."""
    try:
        entry = pwd.getpwuid(uid)
        user = entry.pw_name
        # the user's primary group (passwd), the supplementary ones (group), and the gid it runs with now
        gids = set(os.getgrouplist(user, entry.pw_gid)) | {gid}
    except KeyError:
        user, gids = f"uid{uid}", {gid}
    names = set()
    for g in gids:
        try:
            names.add(grp.getgrgid(g).gr_name)
        except KeyError:
            names.add(str(g))
    return user, frozenset(names)


def describe(pid: int, uid: int, gid: int) -> Peer:
    return Peer(pid, uid, gid, *identity(uid, gid))


class Identities:
    """Looked-up identities by (uid, gid), each kept ``ttl_s`` (so a group change counts after at most
    that), at most ``kept`` of them. :meth:`peer` looks up in a worker thread on a miss; :meth:`peer_now`
    and :meth:`user` (for the connection caps, on the loop) look up in place on a miss, which the caps
    make rare: a uid is over its cap only after its first connections were looked up. Thread-safe."""

    def __init__(
        self,
        ttl_s: float = IDENTITY_TTL_S,
        kept: int = IDENTITIES_KEPT,
        clock: Callable[[], float] = time.monotonic,
        lookup: Callable[[int, int], tuple[str, frozenset[str]]] = identity,
    ) -> None:
        self.ttl_s = ttl_s
        self.kept = kept
        self.clock = clock
        self.lookup = lookup
        self.lookups = 0  # user database lookups done (the rest answered from what is kept)
        self._lock = threading.Lock()
        self._known: OrderedDict[tuple[int, int], tuple[float, str, frozenset[str]]] = OrderedDict()
        self._names: OrderedDict[int, str] = OrderedDict()  # uid -> user name, for refusals
        self._pending: dict[tuple[int, int], asyncio.Future[tuple[str, frozenset[str]]]] = {}  # loop only

    def cached(self, uid: int, gid: int) -> tuple[str, frozenset[str]] | None:
        with self._lock:
            hit = self._known.get((uid, gid))
            if hit is None or self.clock() - hit[0] >= self.ttl_s:
                return None
            return hit[1], hit[2]

    def _look_up(self, uid: int, gid: int) -> tuple[str, frozenset[str]]:
        user, groups = self.lookup(uid, gid)
        with self._lock:
            self.lookups += 1
            self._known[(uid, gid)] = (self.clock(), user, groups)
            self._known.move_to_end((uid, gid))
            self._names[uid] = user
            self._names.move_to_end(uid)
            for kept in (self._known, self._names):
                while len(kept) > self.kept:
                    kept.popitem(last=False)
        return user, groups

    async def peer(self, pid: int, uid: int, gid: int) -> Peer:
        """The peer with its user and groups: from what is kept, else looked up in a worker thread (one
        lookup per identity at a time: the connections of a burst wait for the same one)."""
        hit = self.cached(uid, gid)
        if hit is None:
            key = (uid, gid)
            pending = self._pending.get(key)
            if pending is None:
                pending = asyncio.ensure_future(asyncio.to_thread(self._look_up, uid, gid))
                self._pending[key] = pending
                pending.add_done_callback(lambda _done: self._pending.pop(key, None))
            hit = await asyncio.shield(pending)  # one waiter cancelled does not cancel the others' lookup
        user, groups = hit
        return Peer(pid, uid, gid, user, groups)

    def peer_now(self, pid: int, uid: int, gid: int) -> Peer:
        """:meth:`peer` without awaiting: a miss is looked up in place."""
        hit = self.cached(uid, gid)
        user, groups = hit if hit is not None else self._look_up(uid, gid)
        return Peer(pid, uid, gid, user, groups)

    def user(self, uid: int) -> str:
        """The user name of ``uid`` for a message (a name is not an authority: kept beyond ``ttl_s``)."""
        with self._lock:
            name = self._names.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = f"uid{uid}"
            with self._lock:
                self._names[uid] = name
                while len(self._names) > self.kept:
                    self._names.popitem(last=False)
        return name


@dataclass(frozen=True)
class Policy:
    """``group`` may read, ``admin_group`` may read and change; root and the daemon's own user may do all."""

    group: str
    admin_group: str
    own_uid: int

    def allows(self, peer: Peer, need: str) -> bool:
        if peer.uid in (0, self.own_uid) or self.admin_group in peer.groups:
            return True
        return need == READ and self.group in peer.groups

    def why_not(self, peer: Peer, need: str) -> str:
        group = self.admin_group if need == ADMIN else f"{self.group} or {self.admin_group}"
        return (
            f"{peer.label()} is not in group {group}; ask an administrator: "
            f"sudo usermod -aG {self.admin_group if need == ADMIN else self.group} {peer.user}, then log in again"
        )
