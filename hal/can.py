"""CAN buses through python-can, received into a bounded queue on the asyncio loop.

The interface is a configuration string handed to python-can: ``socketcan`` on the device, ``slcan``
for a USB-serial adapter (or a pseudo-terminal in cross-process tests), ``virtual`` in-process for the
simulated cabinet, or any other python-can interface. No caller branches on which one it is.

Guarantees:
- Reception never blocks the bus thread: frames go into a bounded queue; when it is full the oldest
  frame is dropped and counted (a flood cannot grow memory, and fresh frames win over stale ones).
- ``send`` has a timeout; a failed send is counted and raised as :class:`CanSendError` so callers
  can treat it as a fault instead of a crash.
- Error frames are counted and never handed to protocol decoders.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field
from typing import Any

import can

log = logging.getLogger(__name__)


class CanSendError(RuntimeError):
    pass


@dataclass(frozen=True)
class CanSettings:
    name: str
    interface: str = "socketcan"
    channel: str = "can0"
    bitrate: int = 125_000
    rx_queue: int = 2048
    send_timeout_s: float = 0.05
    extra: dict[str, Any] = field(default_factory=dict)
    filters: tuple[tuple[int, int, bool], ...] = ()  # (can_id, can_mask, extended)


@dataclass
class CanStats:
    rx: int = 0
    tx: int = 0
    dropped: int = 0
    error_frames: int = 0
    send_errors: int = 0


class CanPort:
    """One CAN bus: python-can bus + Notifier thread + bounded asyncio queue."""

    def __init__(self, settings: CanSettings, bus: can.BusABC | None = None) -> None:
        self.settings = settings
        self.stats = CanStats()
        self._bus = bus if bus is not None else open_bus(settings)
        self._queue: collections.deque[can.Message] = collections.deque(maxlen=settings.rx_queue)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._notifier: can.Notifier | None = None

    @property
    def bus(self) -> can.BusABC:
        return self._bus

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._notifier = can.Notifier(self._bus, [self._on_frame], timeout=0.1)

    def _on_frame(self, msg: can.Message) -> None:
        # Runs in the Notifier thread; hand over to the loop thread without blocking.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._enqueue, msg)
        except RuntimeError:  # loop closing during shutdown
            pass

    def _enqueue(self, msg: can.Message) -> None:
        if msg.is_error_frame:
            self.stats.error_frames += 1
            return
        if len(self._queue) == self._queue.maxlen:
            self.stats.dropped += 1
        self._queue.append(msg)
        self.stats.rx += 1
        self._wake.set()

    async def recv(self) -> can.Message:
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        return self._queue.popleft()

    def recv_nowait(self) -> can.Message | None:
        return self._queue.popleft() if self._queue else None

    def send(self, msg: can.Message) -> None:
        try:
            self._bus.send(msg, timeout=self.settings.send_timeout_s)
        except can.CanError as exc:
            self.stats.send_errors += 1
            raise CanSendError(f"CAN {self.settings.name}: send of id 0x{msg.arbitration_id:X} failed: {exc}") from exc
        self.stats.tx += 1

    def close(self) -> None:
        if self._notifier is not None:
            self._notifier.stop(timeout=0.5)
            self._notifier = None
        self._bus.shutdown()


def open_bus(settings: CanSettings) -> can.BusABC:
    kwargs: dict[str, Any] = dict(settings.extra)
    if settings.interface not in ("virtual",):
        kwargs.setdefault("bitrate", settings.bitrate)
    else:
        # virtual buses deliver our own frames to other virtual clients only; keep sim traffic local
        kwargs.setdefault("receive_own_messages", False)
    if settings.filters:
        kwargs["can_filters"] = [
            {"can_id": cid, "can_mask": mask, "extended": ext} for cid, mask, ext in settings.filters
        ]
    return can.Bus(interface=settings.interface, channel=settings.channel, **kwargs)
