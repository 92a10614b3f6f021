"""The simulated cabinet stepped in simulated time: no thread, no sleep, minutes of charging in a second.

``SimStepper(config, data_dir)`` builds the real cabinet with :func:`edge.build.build` on a
:class:`hal.clock.SimClock`, and the simulated hardware (edge/sim/hardware.py) on the same python-can
``virtual`` channel. :meth:`SimStepper.step` then advances the clock and runs, in order and each when it
is due in simulated time, what the threads and tasks do in real time:

=================  ===================================================  =========================
every              simulator side                                       cabinet side
=================  ===================================================  =========================
step               physics (contactor and pump from the board's pins)
CABLE_PERIOD_S     cable frames, the modules' comms watchdog
CAN_WATCH_PERIOD_S                                                      ``CanLink.watch_step``
command spacing                                                         ``CanLink.poll_step``
meter poll_ms      registers of :class:`edge.sim.meter.SimMeter`        ``MeterPoller.poll``
IMD poll_ms        registers of :class:`edge.sim.imd.SimImd`            ``IsolationLink.poll_once``
control.tick_ms                                                         ``Controller.evaluate_now``
telemetry interval                                                      ``Cabinet.flush_telemetry``
=================  ===================================================  =========================

After each of them the frames are delivered until the bus is quiet: the simulated devices answer what
the cabinet sent (:meth:`SimCanDevices.receive_pending`), the cabinet decodes what the devices sent
(:meth:`CanLink.decode_frames`, which evaluates at once on a safety-relevant frame, as in the daemon).
python-can's virtual bus puts a sent frame into the other bus objects' queues during ``send``, so
``recv(timeout=0)`` sees it at once. The same code runs as in the daemon; only the loops are different.

Events carry the simulated time: their ``t_ms`` is ``WALL_EPOCH_MS`` + simulated ms, and
:meth:`SimStepper.events` returns them with ``t_s`` in simulated seconds.

Not stepped: the local API and the MQTT uplink (disabled), CAN bus-off and re-open (needs the
asyncio supervision task), error frames (read and dropped here; the daemon classifies them in
hal/can.py). docs/SIM.md shows how to write a test with it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can

from drivers.meters.poller import MeterPoller
from drivers.readings import Reading
from edge.build import Backends, build
from edge.cabinet import Cabinet
from edge.can_link import CAN_WATCH_PERIOD_S
from edge.config import Config
from edge.isolation_link import IsolationLink
from edge.sim.can_devices import CABLE_PERIOD_S
from edge.sim.hardware import SimHardware
from edge.sim.imd import InProcessImdLine
from edge.sim.layout import SimConnectorSpec
from edge.sim.meter import InProcessLine
from hal.clock import SimClock

DEFAULT_STEP_S = 0.01
WALL_EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z is simulated time 0
MAX_DELIVERY_ROUNDS = 1000  # frames answered by frames; more rounds than this in one instant is a loop
EPS_S = 1e-9  # float steps: 0.1 s after ten steps of 0.01 s is due


@dataclass
class _Every:
    """A periodic part: runs at the first step at or after ``next_t``; never catches up with a burst."""

    name: str
    period_s: float
    run: Callable[[float], None]
    next_t: float

    def run_if_due(self, now: float) -> bool:
        if now < self.next_t - EPS_S:
            return False
        self.run(now)
        self.next_t += self.period_s
        if self.next_t <= now + EPS_S:
            self.next_t = now + self.period_s
        return True


@dataclass(frozen=True)
class SimEvent:
    t_s: float  # simulated time of the event
    kind: str
    name: str
    data: dict[str, Any]


class SimStepper(SimHardware):
    """A whole simulated cabinet and its controller, advanced only by :meth:`step` / :meth:`run`.

    ``data_dir``: where the cabinet's store goes (a temporary directory, removed by :meth:`close`, when
    None). The config's CAN buses, outputs and watchdog are replaced by simulated ones and MQTT is off.
    """

    def __init__(
        self,
        config: Config,
        data_dir: str | Path | None = None,
        step_s: float = DEFAULT_STEP_S,
        start_s: float = 0.0,
        layout: list[SimConnectorSpec] | None = None,
    ) -> None:
        self.clock = SimClock(start_s)
        super().__init__(config, self.clock.monotonic, layout)
        self.step_s = step_s
        self._own_dir = None if data_dir is not None else tempfile.mkdtemp(prefix="edge-stepper-")
        # only to construct and close the pymodbus clients build() makes (they need a running loop);
        # the stepped meters never use them, nothing runs on this loop between steps
        self._loop = asyncio.new_event_loop()
        cfg = self.stepped_config(str(data_dir if data_dir is not None else self._own_dir))
        self.cabinet: Cabinet = self._on_loop(self._build(cfg))
        for port in self.cabinet.can.ports.values():
            port.inline_tx = True  # the devices must see a command in the instant it is sent
        self._meter_lines = [
            (poller, InProcessLine([self.meters[m.name] for m in poller.meters], poller.line.name))
            for poller in self.cabinet.meters.pollers
        ]
        for poller, _line in self._meter_lines:
            for meter in poller.meters:
                _anchor(meter, self.clock.monotonic())
        link = self.cabinet.isolation
        if link is not None:  # the insulation monitors answer in process, through the real driver
            for mon in link.monitors:
                mon.driver.line = InProcessImdLine([self.imds[mon.config.name]])
        self._parts = self._schedule(self.clock.monotonic())
        self._start()

    async def _build(self, cfg: Config) -> Cabinet:
        return build(
            cfg,
            Backends(
                clock=self.clock,
                wall_ms=self.wall_ms,
                board=self.board,
                api=False,
                relays=self.relays,
                sim_verdict=self.set_cable_check_verdict,  # as edge run --sim does
            ),
        )

    def _on_loop(self, coro: Coroutine[Any, Any, Cabinet]) -> Cabinet:
        return self._loop.run_until_complete(coro)

    def stepped_config(self, data_dir: str) -> Config:
        data: dict[str, Any] = self.config.model_dump()
        for bus in data["can"]:
            bus.update(interface="virtual", channel=self.can_channels[bus["name"]])
        data["outputs"]["backend"] = "sim"
        data["watchdog"]["backend"] = "sim"
        data["telemetry"]["mqtt"]["enabled"] = False
        data["storage"]["data_dir"] = data_dir
        return Config.model_validate(data)

    def _schedule(self, now: float) -> list[_Every]:
        cab = self.cabinet
        parts = [
            _Every("cable frames", CABLE_PERIOD_S, lambda _now: self.can.tick(), now),
            _Every("can watch", CAN_WATCH_PERIOD_S, cab.can.watch_step, now),
            _Every("module poll", cab.bank.codec.command_spacing_s, cab.can.poll_step, now),
        ]
        if self._meter_lines:
            # the poller decides what is due; look as often as the fastest meter polls
            fastest_s = min(m.poll_ms for m in self.config.meters) / 1000.0
            parts.append(_Every("meters", fastest_s, self._meters_step, now))
        if cab.isolation is not None:
            for mon in cab.isolation.monitors:
                period_s = mon.config.poll_ms / 1000.0
                parts.append(_Every(f"imd {mon.config.name}", period_s, _imd_poll(cab.isolation, mon), now))
        parts += [
            _Every("control tick", self.config.control.tick_ms / 1000.0, self._control_tick, now),
            _Every("telemetry", self.config.telemetry.interval_s, self._flush_telemetry, now),
        ]
        parts[-1].next_t = now + parts[-1].period_s
        return parts

    def _start(self) -> None:
        """What the daemon does before its tasks run: modules off whatever they did, one evaluation."""
        self.cabinet.bank.all_off()
        self.cabinet.event("started", "daemon", {"sim": "stepped"})
        self.cabinet.controller.evaluate_now()
        self.cabinet.wdt.ready()
        self.deliver()

    def every(self, name: str, period_s: float, run: Callable[[float], None]) -> None:
        """Run ``run(now)`` every ``period_s`` of simulated time from the next step on, after the parts
        already scheduled (e.g. a request source's task: the built-in charging sessions through
        :meth:`SimHardware.drive_charging`); frames are delivered after it as after every part."""
        self._parts.append(_Every(name, period_s, run, self.now))

    # -- time ----------------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.clock.monotonic()

    def wall_ms(self) -> int:
        return WALL_EPOCH_MS + round(self.clock.monotonic() * 1000.0)

    def step(self, dt_s: float | None = None) -> float:
        """Advance by ``dt_s`` (default ``step_s``) and run everything due; the new simulated time."""
        dt = self.step_s if dt_s is None else dt_s
        self.clock.advance(dt)
        now = self.clock.monotonic()
        self.step_physics(dt)
        for part in self._parts:
            if part.run_if_due(now):
                self.deliver()
        return now

    def run(self, duration_s: float) -> float:
        """Step for ``duration_s`` of simulated time; the new simulated time."""
        end = self.now + duration_s
        while self.now < end - EPS_S:
            self.step(min(self.step_s, end - self.now))
        return self.now

    def run_until(self, condition: Callable[[], Any], timeout_s: float, what: str = "") -> float:
        """Step until ``condition()`` is truthy (checked after every step); the simulated time it first
        held. Fails after ``timeout_s`` of simulated time."""
        end = self.now + timeout_s
        while not condition():
            if self.now >= end - EPS_S:
                raise AssertionError(f"not within {timeout_s} s of simulated time: {what or condition}")
            self.step()
        return self.now

    # -- frames --------------------------------------------------------------------------------------
    def deliver(self) -> int:
        """Hand every waiting frame to its receiver until the buses are quiet; how many were moved."""
        moved = 0
        for _ in range(MAX_DELIVERY_ROUNDS):
            n = self.can.receive_pending()
            for name, port in self.cabinet.can.ports.items():
                n += self.cabinet.can.decode_frames(name, _waiting(port.bus))
            if n == 0:
                return moved
            moved += n
        raise RuntimeError(f"frames still moving after {MAX_DELIVERY_ROUNDS} rounds in one instant")

    # -- the cabinet's periodic parts ----------------------------------------------------------------
    def _control_tick(self, _now: float) -> None:
        self.cabinet.controller.evaluate_now()
        self.cabinet.wdt.feed()

    def _flush_telemetry(self, _now: float) -> None:
        self.cabinet.flush_telemetry()

    def _meters_step(self, now: float) -> None:
        """One turn of each line's poll loop (``LinePoller.run``): the longest-due meter, if it is due.

        ``MeterPoller.check_stale`` is not called: the poller stamps values with time.monotonic(), so its
        staleness cannot be compared with simulated time yet. A silent meter is still caught, by the
        safety core's own age check (``limits.grid.meter_loss_ms``), but it does not come back (its next
        probe is scheduled in real time)."""
        for poller, line in self._meter_lines:
            meter = min(poller.meters, key=lambda m: m.next_due())
            if meter.next_due() <= now:
                readings, events = _run_now(meter.poll(line, now))  # type: ignore[arg-type]
                self._meter_results(meter, _at(readings, now), events)

    def _meter_results(self, meter: MeterPoller, readings: list[Reading], events: list[Any]) -> None:
        link = self.cabinet.meters
        if readings:
            link.take(readings)
        for kind, name, data in events:
            link.on_event(kind, name, data)
        link.status[meter.name] = meter.status()

    # -- what a test looks at ------------------------------------------------------------------------
    def events(self, kind: str | None = None, name: str | None = None) -> list[SimEvent]:
        """The cabinet's recent events (optionally of one kind / name), with their simulated time."""
        out = []
        for line in self.cabinet.events.recent:
            e = json.loads(line)
            if (kind is None or e["kind"] == kind) and (name is None or e["name"] == name):
                data = {k: v for k, v in e.items() if k not in ("seq", "t_ms", "kind", "name")}
                out.append(SimEvent((e["t_ms"] - WALL_EPOCH_MS) / 1000.0, e["kind"], e["name"], data))
        return out

    def decision(self) -> dict[str, Any]:
        return self.cabinet.controller.decision or {}

    def close(self) -> None:
        self.cabinet.fail_safe()
        self.deliver()
        self.cabinet.flush_telemetry()

        async def close() -> None:
            self.cabinet.close()

        self._loop.run_until_complete(close())
        self._loop.close()
        self.close_devices()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def __enter__(self) -> SimStepper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _waiting(bus: can.BusABC) -> Iterator[can.Message]:
    """Frames already received on ``bus``, without waiting. Error frames are dropped: in the daemon the
    CanPort classifies them and they never reach the decoders either."""
    while (msg := bus.recv(timeout=0)) is not None:
        if not msg.is_error_frame:
            yield msg


def _run_now(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (a poll on an :class:`InProcessLine`) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a stepped meter read waited for something; the stepped simulator has no event loop")


def _imd_poll(link: IsolationLink, mon: Any) -> Callable[[float], None]:
    return lambda _now: _run_now(link.poll_once(mon))


def _anchor(meter: MeterPoller, now: float) -> None:
    """Schedule a meter's first poll in simulated time (its poller was made with time.monotonic()).
    Not needed once build() hands the cabinet's clock to drivers/meters/poller.py."""
    for sig in meter.signals.values():
        sig.next_read = now
    meter.next_probe = now


def _at(readings: list[Reading], now: float) -> list[Reading]:
    """The readings of a poll, stamped with the simulated time of the poll (the in-process line answers
    at once). Needed while drivers/meters/poller.py stamps with time.monotonic(); a no-op once it reads
    the cabinet's clock."""
    return [r if r.t == now else Reading(r.signal, r.value, r.unit, now, r.quality) for r in readings]
