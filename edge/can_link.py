"""The cabinet's CAN side: ports, one frame dispatcher per bus (drivers/can_dispatch.py) with the devices
registered on it (the power-module bank, the cable monitors), and the tasks that move frames: receive and
dispatch, periodic device checks (cable staleness, spaced module set-points), module polling.

A burst of frames with an urgent reading (a cable value, a module alarm) asks for an evaluation at once;
silence is caught by the periodic hooks and the control tick. Sends never block the loop (hal/can.py's
transmit thread). A bus that goes off raises ``can_bus_off`` (docs/CAN.md); on the module bus every module
is then lost, so the safety core takes the output to 0 A.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import can

from drivers.cable.monitor import CableMonitor
from drivers.can_dispatch import CanDispatcher, any_urgent
from drivers.power_modules.bank import ModuleBank
from drivers.power_modules.codec import Frame
from drivers.readings import OK, Reading
from edge.config import Config
from edge.faults import ExternalFaults
from hal.can import ACTIVE, BUS_OFF, CanPort
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
        self.dispatchers: dict[str, CanDispatcher] = {}
        self.cables: dict[str, CableMonitor] = {}
        self.bank: ModuleBank
        self.module_port: CanPort

    # -- frames out ----------------------------------------------------------------------------------
    def send_frame(self, frame: Frame) -> None:
        """Queued for the port's transmit thread; never blocks. Off / 0 A frames jump the queue."""
        self.module_port.send(
            can.Message(arbitration_id=frame.arbitration_id, data=frame.data, is_extended_id=frame.is_extended_id),
            priority=frame.priority,
        )

    # -- frames in -----------------------------------------------------------------------------------
    def received(self, readings: list[Reading]) -> None:
        """One drained burst of decoded frames: into the picture, and evaluated at once when urgent."""
        self.take(readings)
        if any_urgent(readings):
            self.evaluate_now()

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

    # -- one step of each periodic job (the async tasks loop over these; the stepped simulator calls them) --
    def decode_frames(self, bus: str, frames: Iterable[can.Message]) -> int:
        """Dispatch a batch of frames received on ``bus`` as the receive task does with one drained burst
        (the stepped simulator's way in); returns the number of frames taken."""
        dispatcher = self.dispatchers[bus]
        before = dispatcher.stats.frames
        readings = dispatcher.dispatch_burst(frames)
        if readings:
            self.received(readings)
        return dispatcher.stats.frames - before

    def watch_step(self, now: float) -> None:
        """The devices' periodic hooks: silent cable values go stale, spaced module set-points go out."""
        for dispatcher in self.dispatchers.values():
            readings = dispatcher.periodic(now)
            if readings:
                self.take(readings)

    def polls_due(self, now: float) -> list[Frame]:
        """The poll frames of every module due at ``now`` (present ones every poll_ms, lost ones with backoff)."""
        return [frame for addr in self.bank.polls_due(now) for frame in self.bank.poll_frames(addr)]

    def report_modules(self, now: float) -> None:
        """Lost modules' values as stale (readings of answering modules come with their replies)."""
        self.take([r for r in self.bank.readings("module", now) if r.quality != OK])

    def poll_step(self, now: float) -> None:
        """One turn of :meth:`poll_modules` without the command spacing (a simulated step is one instant)."""
        for frame in self.polls_due(now):
            self.send_frame(frame)
        self.report_modules(now)

    # -- tasks ---------------------------------------------------------------------------------------
    async def watch(self) -> None:
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
        out: dict[str, Any] = {f"can-rx-{n}": self.dispatchers[n].run(p, self.received) for n, p in self.ports.items()}
        out["can-watch"] = self.watch()
        out["module-poll"] = self.poll_modules()
        out.update({f"can-supervise-{n}": p.supervise() for n, p in self.ports.items()})
        return out

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        for port in self.ports.values():
            port.start(loop)
            if port.health == BUS_OFF:  # could not be opened at all: same fault as a bus-off
                self.on_health(port, ACTIVE, BUS_OFF, port.health_reason)

    def status(self) -> dict[str, Any]:
        return {n: p.status() for n, p in self.ports.items()}

    def cable_status(self) -> dict[str, Any]:
        """Each cable monitor's diagnosis now (silent since when, why a value is invalid)."""
        now = self.clock.monotonic()
        return {name: mon.diagnosis(now) for name, mon in self.cables.items()}

    def frame_counts(self) -> dict[str, Any]:
        """Frames no device claimed and frames a device could not decode, over all buses; the bank's own."""
        unknown = sum(d.stats.unknown for d in self.dispatchers.values())
        errors = sum(d.stats.decode_errors for d in self.dispatchers.values())
        return {"unknown": unknown, "decode_errors": errors, **self.bank.status()}
