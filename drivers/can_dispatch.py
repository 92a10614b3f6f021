"""CAN frame dispatch by registration (python-can's Listener/Notifier idea, on the asyncio loop).

A CAN device driver registers, once, the frames it handles and a handler for them::

    dispatcher.register("cable left", monitor.decode, ids=monitor.frame_ids, urgent=True, periodic=monitor.stale)
    dispatcher.register("modules", bank.on_frame, masks=[codec.reply_mask()])

Each driver does this in its own ``register(dispatcher)`` method, so wiring a device is one line
(``bank.register(dispatcher)``) and adding a CAN device is one driver module plus that line.

- ``handler(arbitration_id, data, now) -> list[Reading] | None``: the readings of one frame, ``[]`` for a
  frame of the device that carries no reading (an acknowledgement of our command), ``None`` when a mask
  registration matched a frame the device does not know after all. Only 29-bit data frames are handed to
  handlers; remote and 11-bit frames are counted as unknown (none of our devices uses them).
- ``urgent=True``: every reading from these frames is a safety input; the dispatcher makes sure it carries
  ``Reading.urgent`` so the owner evaluates at once. A handler may also mark single readings urgent
  (the module bank does for status replies only).
- ``periodic(now) -> list[Reading]``: asked by :meth:`CanDispatcher.periodic` (staleness: silence
  produces no frame) and for a driver's own timed work (the module bank's spaced set-points).
- Bus filters come from the registrations (:meth:`CanDispatcher.filters`, for ``CanSettings.filters``).
- A frame no handler claims is counted in ``unknown``; a handler that raises is counted in
  ``decode_errors`` and logged (1st, 10th, 100th, then every 1000th) and never stops the receive path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import can

from drivers.readings import Reading

log = logging.getLogger(__name__)

EXACT = 0x1FFFFFFF  # all 29 id bits must match
Handler = Callable[[int, bytes, float], list[Reading] | None]
Periodic = Callable[[float], list[Reading]]
Sink = Callable[[list[Reading]], None]


class FramePort(Protocol):
    """What :meth:`CanDispatcher.run` needs of a port (``hal.can.CanPort`` provides it)."""

    async def recv(self) -> can.Message: ...

    def recv_nowait(self) -> can.Message | None: ...


@dataclass(frozen=True)
class Registration:
    device: str
    handler: Handler
    filters: tuple[tuple[int, int], ...]  # (29-bit id, mask)
    urgent: bool = False
    periodic: Periodic | None = None


@dataclass
class DispatchStats:
    frames: int = 0
    unknown: int = 0
    decode_errors: int = 0
    urgent_bursts: int = 0
    per_device: dict[str, int] = field(default_factory=dict)


def any_urgent(readings: Iterable[Reading]) -> bool:
    """True when the controller must evaluate these readings at once."""
    return any(r.urgent for r in readings)


def _log_now(count: int) -> bool:
    return count in (1, 10, 100) or count % 1000 == 0


class CanDispatcher:
    """The registered devices of one bus: frame -> handler, filters, counters, the receive loop."""

    def __init__(self, bus: str = "can", clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.clock = clock
        self.registrations: list[Registration] = []
        self.stats = DispatchStats()
        self._exact: dict[int, list[Registration]] = {}
        self._masked: list[tuple[int, int, Registration]] = []

    def register(
        self,
        device: str,
        handler: Handler,
        *,
        ids: Iterable[int] = (),
        masks: Iterable[tuple[int, int]] = (),
        urgent: bool = False,
        periodic: Periodic | None = None,
    ) -> Registration:
        """Hand the 29-bit frames with one of ``ids`` (or matching an ``(id, mask)``) to ``handler``."""
        filters = tuple((i, EXACT) for i in sorted(ids)) + tuple(masks)
        if not filters:
            raise ValueError(f"CAN device {device!r} registers no frame id")
        reg = Registration(device, handler, filters, urgent, periodic)
        self.registrations.append(reg)
        self.stats.per_device.setdefault(device, 0)
        for can_id, mask in filters:
            if mask == EXACT:
                self._exact.setdefault(can_id, []).append(reg)
            else:
                self._masked.append((can_id & mask, mask, reg))
        return reg

    def filters(self) -> tuple[tuple[int, int, bool], ...]:
        """``(can_id, can_mask, extended)`` for every registration: the bus needs nothing else."""
        return tuple((can_id, mask, True) for reg in self.registrations for can_id, mask in reg.filters)

    # -- receive ------------------------------------------------------------------------------------
    def dispatch(self, arbitration_id: int, data: bytes, now: float) -> list[Reading]:
        """The readings of one 29-bit data frame from every handler that claims it."""
        self.stats.frames += 1
        out: list[Reading] = []
        known = False
        for reg in self._matching(arbitration_id):
            readings = self._call(reg, arbitration_id, data, now)
            if readings is not None:
                known = True
                out += self._claimed(reg, readings)
        if not known:
            self.stats.unknown += 1
        return out

    def _matching(self, arbitration_id: int) -> list[Registration]:
        regs = self._exact.get(arbitration_id, [])
        if self._masked:
            regs = regs + [r for cid, mask, r in self._masked if arbitration_id & mask == cid]
        return regs

    def _claimed(self, reg: Registration, readings: list[Reading]) -> list[Reading]:
        self.stats.per_device[reg.device] += 1
        if reg.urgent and not all(r.urgent for r in readings):
            return [r if r.urgent else replace(r, urgent=True) for r in readings]
        return readings

    def _call(self, reg: Registration, arbitration_id: int, data: bytes, now: float) -> list[Reading] | None:
        try:
            return reg.handler(arbitration_id, data, now)
        except Exception as exc:  # noqa: BLE001 - a decoder bug or an unforeseen frame must not stop the safety path
            self.stats.decode_errors += 1
            if _log_now(self.stats.decode_errors):
                log.error(
                    "CAN %s: %s: frame 0x%X %s not decoded (%d so far): %r",
                    self.bus,
                    reg.device,
                    arbitration_id,
                    data.hex(),
                    self.stats.decode_errors,
                    exc,
                )
            return None

    def dispatch_message(self, msg: can.Message, now: float) -> list[Reading]:
        if msg.is_remote_frame or not msg.is_extended_id or msg.is_error_frame:
            self.stats.frames += 1
            self.stats.unknown += 1  # none of our devices uses them
            return []
        return self.dispatch(msg.arbitration_id, bytes(msg.data), now)

    def dispatch_burst(self, frames: Iterable[can.Message]) -> list[Reading]:
        """The readings of a burst of frames (consumed lazily); a burst with an urgent reading is counted."""
        out: list[Reading] = []
        for msg in frames:
            out += self.dispatch_message(msg, self.clock())
        if any_urgent(out):
            self.stats.urgent_bursts += 1
        return out

    def drain(self, first: can.Message, port: FramePort) -> list[Reading]:
        """``first`` and every frame already queued behind it: one burst."""
        return self.dispatch_burst(_queued(first, port))

    async def run(self, port: FramePort, sink: Sink) -> None:
        """Forever: wait for frames, dispatch the burst, hand its readings to ``sink`` once per burst.

        ``sink`` is not called for a burst without readings; ``any_urgent(readings)`` says whether the
        owner must evaluate at once.
        """
        while True:
            readings = self.drain(await port.recv(), port)
            if readings:
                sink(readings)

    # -- periodic -----------------------------------------------------------------------------------
    def periodic(self, now: float) -> list[Reading]:
        out: list[Reading] = []
        for reg in self.registrations:
            if reg.periodic is not None:
                out += reg.periodic(now)
        return out

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {
            "frames": s.frames,
            "unknown": s.unknown,
            "decode_errors": s.decode_errors,
            "urgent_bursts": s.urgent_bursts,
            "devices": dict(s.per_device),
        }


def _queued(first: can.Message, port: FramePort) -> Iterator[can.Message]:
    """``first``, then every frame already waiting at ``port``, without waiting for more."""
    msg: can.Message | None = first
    while msg is not None:
        yield msg
        msg = port.recv_nowait()
