"""Watchdogs with MicroPython ``machine.WDT`` semantics: ``WDT(timeout=ms)`` then ``feed()``.

Once started a watchdog cannot be stopped (as on an MCU). The control loop is the only caller of
``feed()``: if the loop stalls, the watchdog fires and systemd (or the hardware) restarts us.

Backends:
- ``systemd``: ``WATCHDOG=1`` over the notify socket (sdnotify); systemd's ``WatchdogSec`` is the
  timeout. Also carries ``READY=1`` and ``STATUS=...`` so the daemon has one object for the service
  manager. Without ``$NOTIFY_SOCKET`` (run by hand) the messages go nowhere, which is what we want.
- ``dev``: the kernel watchdog device (``/dev/watchdog``): any write feeds it; "magic close" ('V')
  is deliberately never written, so an exiting daemon still gets the board reset if it is not restarted.
- ``sim``: records feeds; :meth:`SimWDT.expired` tells whether the timeout passed without one.
"""

from __future__ import annotations

import os
import socket
import time
from abc import ABC, abstractmethod
from collections import deque


class WDT(ABC):
    def __init__(self, id: int = 0, timeout: int = 5000) -> None:  # noqa: A002 - MicroPython name
        if timeout <= 0:
            raise ValueError("watchdog timeout must be > 0 ms")
        self.id = id
        self.timeout_ms = timeout

    @abstractmethod
    def feed(self) -> None: ...

    def ready(self) -> None:
        """Tell the service manager start-up is complete (no-op where there is none)."""

    def status(self, text: str) -> None:
        """One line of status for the service manager (``systemctl status``)."""

    def stopping(self) -> None:
        """Tell the service manager a clean stop has begun."""


class _Notifier:
    """sd_notify(3) over ``$NOTIFY_SOCKET``.

    Why not the ``sdnotify`` package: version 0.3 encodes messages as latin-1 and silently drops
    what latin-1 cannot hold; systemd ignores a ``STATUS=`` that is not valid UTF-8, so a status like
    "cable DC+ pin 82.4 °C" never reached ``systemctl status`` (tests/test_sdnotify.py shows it).
    The protocol is one datagram per message, so this is the whole implementation.
    """

    def __init__(self) -> None:
        path = os.environ.get("NOTIFY_SOCKET", "")
        if path.startswith("@"):
            path = "\0" + path[1:]  # abstract namespace socket
        self._addr = path
        self._sock: socket.socket | None = None
        if path:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def notify(self, message: str) -> None:
        if self._sock is None:
            return  # not started by systemd: nothing to tell
        try:
            self._sock.sendto(message.encode("utf-8"), self._addr)
        except OSError:
            pass  # the service manager going away must never stop the control loop


class SystemdWDT(WDT):
    def __init__(self, id: int = 0, timeout: int = 5000) -> None:  # noqa: A002
        super().__init__(id, timeout)
        self._notifier = _Notifier()

    def feed(self) -> None:
        self._notifier.notify("WATCHDOG=1")

    def ready(self) -> None:
        self._notifier.notify("READY=1")

    def status(self, text: str) -> None:
        self._notifier.notify("STATUS=" + text.replace("\n", " "))

    def stopping(self) -> None:
        self._notifier.notify("STOPPING=1")


class DevWDT(SystemdWDT):
    """Kernel watchdog device plus the systemd messages."""

    def __init__(self, id: int = 0, timeout: int = 5000, path: str = "/dev/watchdog") -> None:  # noqa: A002
        super().__init__(id, timeout)
        self._fd = os.open(path, os.O_WRONLY)

    def feed(self) -> None:
        os.write(self._fd, b"\0")
        super().feed()


SIM_MESSAGES_KEPT = 100


class SimWDT(WDT):
    def __init__(self, id: int = 0, timeout: int = 5000) -> None:  # noqa: A002
        super().__init__(id, timeout)
        self.feeds = 0
        self.last_feed = time.monotonic()
        # the last messages only: the daemon sends a STATUS line every telemetry interval, and a list
        # grew 0.5 MB per hour in the soak (docs/RELIABILITY.md)
        self.messages: deque[str] = deque(maxlen=SIM_MESSAGES_KEPT)

    def feed(self) -> None:
        self.feeds += 1
        self.last_feed = time.monotonic()

    def expired(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return (now - self.last_feed) * 1000 > self.timeout_ms

    def ready(self) -> None:
        self.messages.append("READY=1")

    def status(self, text: str) -> None:
        self.messages.append("STATUS=" + text)

    def stopping(self) -> None:
        self.messages.append("STOPPING=1")


WDT_BACKENDS: dict[str, type[WDT]] = {"systemd": SystemdWDT, "dev": DevWDT, "sim": SimWDT}


def make_wdt(backend: str, timeout_ms: int) -> WDT:
    try:
        cls = WDT_BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown watchdog backend {backend!r}; allowed: {sorted(WDT_BACKENDS)}") from None
    return cls(0, timeout_ms)
