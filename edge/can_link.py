"""The cabinet's CAN side: ports, the power-module bank and the cable monitors, and the tasks that move
frames between them (receive and decode, module polling, staleness of silent cable monitors).

A decoded safety-relevant frame (a cable value, a module alarm) asks for an evaluation at once; silence
is caught by :meth:`CanLink.watch`. A bus that goes off raises ``can_bus_off`` (docs/CAN.md); on the
module bus every module is then lost, so the safety core takes the output to 0 A.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import can

from drivers.cable.monitor import CableMonitor
from drivers.power_modules.bank import ModuleBank
from drivers.power_modules.codec import Frame
from drivers.readings import OK, Reading
from edge.config import Config
from edge.faults import ExternalFaults
from hal.can import ACTIVE, BUS_OFF, CanPort, CanSendError
from hal.clock import Clock

log = logging.getLogger("edge.can")
CAN_WATCH_PERIOD_S = 0.05  # cable staleness and spaced module set-points are checked this often
ReadingSink = Callable[[list[Reading]], None]


class CanLink:
    def __init__(self, config: Config, clock: Clock, faults: ExternalFaults, take: ReadingSink) -> None:
        self.config = config
        self.clock = clock
        self.faults = faults
        self.take = take
        self.evaluate_now: Callable[[], Any] = lambda: None  # bound to the controller by build()
        self.ports: dict[str, CanPort] = {}
        self.send_errors = 0
        self.unknown_frames = 0
        self.decode_errors = 0
        self.cables: dict[str, CableMonitor] = {}
        self.cable_bus: dict[str, str] = {}
        self.bank: ModuleBank
        self.module_port: CanPort

    # -- frames out ----------------------------------------------------------------------------------
    def send_frame(self, frame: Frame) -> None:
        try:
            self.module_port.send(
                can.Message(arbitration_id=frame.arbitration_id, data=frame.data, is_extended_id=frame.is_extended_id)
            )
        except CanSendError as exc:
            # Not fatal here: the modules fall back to off on their own when we cannot reach them.
            self.send_errors += 1
            if self.send_errors in (1, 10, 100) or self.send_errors % 1000 == 0:
                log.error("%s (%d send errors so far)", exc, self.send_errors)

    # -- bus health (hal/can.py) ---------------------------------------------------------------------
    def on_health(self, port: CanPort, old: str, new: str, reason: str) -> None:
        name = f"can_bus_off.{port.settings.name}" if port is not self.module_port else "can_bus_off"
        if new == BUS_OFF:
            detail = f"CAN {port.settings.name} bus off: {reason}; re-opening with backoff (docs/CAN.md)"
            self.faults.set(name, detail, stops_output=port is self.module_port)
            if port is self.module_port:
                # We cannot reach the modules: they are lost, so the limit goes to 0 A and the contactor
                # opens. Deferred to the next loop turn: this can be called from inside a send of an
                # evaluation in progress, which must not be re-entered.
                asyncio.get_running_loop().call_soon(self._module_bus_off, port.settings.name)
        elif old == BUS_OFF:
            self.faults.clear(name, reason)
        elif new != old:
            self.faults.on_event("can_state", port.settings.name, {"state": new, "reason": reason})

    def _module_bus_off(self, bus: str) -> None:
        self.bank.force_lost(self.clock.monotonic(), f"CAN {bus} bus off")
        self.evaluate_now()

    # -- one step of each task (the async tasks below loop over these; edge/sim/stepper.py calls them) ----
    def decode_frames(self, bus: str, frames: Iterable[can.Message]) -> int:
        """Decode a batch of frames received on ``bus``; one evaluation at once if any was safety-relevant.

        ``frames`` is consumed lazily, so a receive queue can be drained while the batch is decoded.
        Returns the number of frames taken.
        """
        cables = [mon for cname, mon in self.cables.items() if self.cable_bus[cname] == bus]
        is_module_bus = self.ports.get(bus) is self.module_port
        safety = False
        n = 0
        for msg in frames:
            safety = self._one(bus, msg, cables, is_module_bus) or safety
            n += 1
        if safety:
            self.evaluate_now()
        return n

    def watch_step(self, now: float) -> None:
        """Cable values silent for too long go stale; module set-points whose spacing is over go out."""
        for mon in self.cables.values():
            stale = mon.stale(now)
            if stale:
                self.take(stale)
        self.bank.flush(now)

    def polls_due(self, now: float) -> list[Frame]:
        """The poll frames of every module due at ``now`` (present ones every poll_ms, lost ones with backoff)."""
        return [frame for addr in self.bank.polls_due(now) for frame in self.bank.poll_frames(addr)]

    def report_modules(self, now: float) -> None:
        """Lost modules' values as stale and their presence as 0 (readings of answering modules come with
        their replies)."""
        self.take([r for r in self.bank.readings("module", now) if r.quality != OK])

    def poll_step(self, now: float) -> None:
        """One turn of :meth:`poll_modules` without the command spacing (a simulated step is one instant)."""
        for frame in self.polls_due(now):
            self.send_frame(frame)
        self.report_modules(now)

    # -- tasks ---------------------------------------------------------------------------------------
    async def receive(self, name: str, port: CanPort) -> None:
        while True:
            first: can.Message = await port.recv()
            self.decode_frames(name, _queued(first, port))

    def _one(self, bus: str, msg: can.Message, cables: list[CableMonitor], is_module_bus: bool) -> bool:
        """Decode one frame; True when it carried something safety-relevant."""
        if msg.is_remote_frame or not msg.is_extended_id:
            self.unknown_frames += 1  # none of our protocols uses them
            return False
        now = self.clock.monotonic()
        data = bytes(msg.data)
        known = safety = False
        try:
            if is_module_bus:
                reply = self.bank.handle(msg.arbitration_id, data, now)
                if reply is not None:
                    known = True
                    self.take(self.bank.module_readings("module", reply.address, now))
                    safety = reply.alarms is not None
            for mon in cables:
                readings = mon.decode(msg.arbitration_id, data, now)
                if readings:
                    known = safety = True
                    self.take(readings)
        except (ValueError, KeyError, IndexError, TypeError, ArithmeticError) as exc:
            # a decoder bug or a frame nobody foresaw must not stop the safety path
            self.decode_errors += 1
            if self.decode_errors in (1, 10, 100) or self.decode_errors % 1000 == 0:
                log.error("CAN %s: frame 0x%X %s not decoded: %r", bus, msg.arbitration_id, data.hex(), exc)
        if not known:
            self.unknown_frames += 1
        return safety

    async def watch(self) -> None:
        """Cable values go stale when their frames stop; module set-points wait for their spacing."""
        while True:
            self.watch_step(self.clock.monotonic())
            await asyncio.sleep(CAN_WATCH_PERIOD_S)

    async def poll_modules(self) -> None:
        """Poll present modules every poll_ms, lost ones with backoff; requests spaced by the codec."""
        spacing = self.bank.codec.command_spacing_s
        while True:
            for frame in self.polls_due(self.clock.monotonic()):
                self.send_frame(frame)
                await asyncio.sleep(spacing)
            self.report_modules(self.clock.monotonic())
            await asyncio.sleep(spacing)

    def tasks(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"can-rx-{n}": self.receive(n, p) for n, p in self.ports.items()}
        out["module-poll"] = self.poll_modules()
        out["can-watch"] = self.watch()
        out.update({f"can-supervise-{n}": p.supervise() for n, p in self.ports.items()})
        return out

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        for port in self.ports.values():
            port.start(loop)
            if port.health == BUS_OFF:  # could not be opened at all: same fault as a bus-off
                self.on_health(port, ACTIVE, BUS_OFF, port.health_reason)

    def status(self) -> dict[str, Any]:
        return {n: p.status() for n, p in self.ports.items()}

    def frame_counts(self) -> dict[str, Any]:
        return {"unknown": self.unknown_frames, "decode_errors": self.decode_errors, **self.bank.status()}


def _queued(first: can.Message, port: CanPort) -> Iterator[can.Message]:
    """``first``, then whatever is already queued at ``port`` (without waiting)."""
    msg: can.Message | None = first
    while msg is not None:
        yield msg
        msg = port.recv_nowait()


def can_filters(
    config: Config, bus: str, module_reply: tuple[int, int], cables: dict[str, CableMonitor]
) -> tuple[tuple[int, int, bool], ...]:
    """The ids this bus needs (module replies, cable frames): kernel/hardware filters where supported."""
    out: list[tuple[int, int, bool]] = []
    if config.power_modules.bus == bus:
        out.append((module_reply[0], module_reply[1], True))
    for c in config.cable:
        if c.bus == bus:
            out += [(fid, 0x1FFFFFFF, True) for fid in sorted(cables[c.name].frame_ids)]
    return tuple(out)
