"""Who is on the other end of the control socket, and what they may do.

The kernel tells us the peer's uid and gid at connect time (``SO_PEERCRED``); the user's groups come
from the user database (``pwd`` primary group + ``os.getgrouplist``) plus the gid the peer runs with,
so removing someone from the admin group in /etc/group takes effect at their next request, without
waiting for them to log out. Root is always admin.
A peer whose uid has no user entry gets only its primary group.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass

READ, ADMIN = "read", "admin"
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


def describe(pid: int, uid: int, gid: int) -> Peer:
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
    return Peer(pid, uid, gid, user, frozenset(names))


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
