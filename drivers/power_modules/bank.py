"""ModuleBank: the controller's view of every configured power module on one CAN bus.

- Presence: a module is ``lost`` when it has not answered for ``lost_after_s``, which must be shorter
  than the module's own comms watchdog so the controller knows before the module switches itself off.
  A lost module is told 0 A and off at once (it may still hear us even if we cannot hear it) and is
  re-polled with a doubling backoff (``poll_period_s`` .. ``max_backoff_s``) until it answers again.
- Recovery: a module that answers again is first sent the set-points the controller wants for it now
  (0 A and off until it is back in the split), then its ``lost`` fault is cleared and it rejoins the
  split at the next :meth:`apply`. A replaced module therefore never runs on its power-on defaults.
- Frames from addresses that are not configured are counted and ignored; they never touch state.
- Demand is split equally across the modules that are present and free of blocking alarms. A module
  that was ON when it was lost keeps its place in the divisor until the module's own comms watchdog
  (``codec.module_comms_timeout_s``) has passed since its last answer: if it lost only its transmitter
  and still delivers, the others must not take over its share on top (EVerest's driver keeps a silent
  module in its capabilities for 15 s for the same reason). The output is lower meanwhile, never higher.
- Command spacing: a change that raises or keeps the output (higher current, switching on, a new
  voltage) waits until ``codec.command_spacing_s`` has passed since the previous command to that module
  (latest value wins). A REDUCTION (lower current, switching off) is sent at once together with
  everything else pending for that module: when safety and the protocol's pacing disagree, safety wins.
- Priority: frames of a reduction, of switching off and of a lost module's 0 A carry
  ``Frame.priority`` so the port sends them before queued raises and polls.
- Module alarms and presence changes are reported through ``on_event`` (kind, name, data).
- Acknowledgements of our set commands are counted (``acks``); a set command the module refused (an
  acknowledgement with an error code) is counted in ``rejected`` and logged (rate-limited). Neither proves
  presence (only read replies do) nor changes state, and neither is an unknown frame.
- Capabilities: what a module reports about itself (``codec.identify``; InfyPower 0x0A: voltage range,
  current, rated power) is asked for when it appears (start-up) and each time it comes back, then again
  every ``IDENTIFY_RETRY_S`` only while no answer has come since; never on every poll. It is kept in
  ``ModuleState.capabilities`` (empty: nothing reported, e.g. UUGreen, whose protocol has no such
  command). A change is an event ``module_capabilities`` and takes effect at once (a set-point above the
  new figures is reduced now, not at the next :meth:`apply`). Until a module's first report the configured
  maxima stand alone.
- Per-module current: never more than ``module_limit_a`` = min(``max_current_a_per_module``, reported
  current, reported power / commanded voltage).
- Set-point bounds: no set-output frame carries more than ``max_voltage_v`` (the configured output /
  module maximum) or the module's reported maximum voltage, nor more than ``module_limit_a``, nor more
  than the codec can encode (``CODEC_MAX_SETPOINT``); NaN and negative values become 0. A voltage below a
  module's reported minimum is not raised to it (that would put more voltage on the output than was
  asked for): that module gets 0 A and sits out. Upstream (config check, safety core fed by
  :meth:`module_max_a` and :meth:`capabilities`) keeps set-points within these already, so each clamp here
  is counted (``setpoints_clamped``) and logged (at most once per ``CLAMP_LOG_EVERY_S``): it means a bug
  upstream.
- Groups (one per connector): :meth:`apply`, :meth:`available`, :meth:`possibly_delivering`,
  :meth:`module_max_a`, :meth:`capabilities` take the group's ``addresses`` (None = every module) and
  leave the other modules untouched; :meth:`off` switches one group off with per-module priority frames;
  :meth:`all_off` (group/broadcast frames) is for the fail-safe and cabinet-wide stops only.
The bank does not own a bus: frames go out through ``send``; frames come in through :meth:`on_frame`,
registered with a :class:`~drivers.can_dispatch.CanDispatcher` by :meth:`register`; time comes from
``clock``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from drivers.power_modules.codec import Frame, ModuleCodec, ModuleReply
from drivers.readings import OK, STALE, Reading

if TYPE_CHECKING:
    from drivers.can_dispatch import CanDispatcher

log = logging.getLogger(__name__)
EventSink = Callable[[str, str, dict[str, Any]], None]
# both codecs encode set-points as u32 milli-units (mV, mA): the most any set-output frame can carry
CODEC_MAX_SETPOINT = 0xFFFFFFFF / 1000.0
CLAMP_LOG_EVERY_S = 60.0
REJECT_LOG_EVERY_S = 60.0
# a present module whose capabilities have not come since it appeared is asked again this often: one
# lost reply must not leave it on the configured figures for good, and a module that never answers the
# request (a firmware without it) costs one frame per interval, not one per poll
IDENTIFY_RETRY_S = 5.0
MAX_FOREIGN_ADDRESSES = 256  # remembered for diagnostics; the count itself is unbounded
READINGS_PREFIX = "module"  # readings are module.<address>.voltage_v, ...


def _no_events(kind: str, name: str, data: dict[str, Any]) -> None:
    return None


@dataclass
class ModuleState:
    address: int
    last_seen: float | None = None
    voltage_v: float = 0.0
    current_a: float = 0.0
    temperature_c: float | None = None
    alarms: frozenset[str] = frozenset()
    blocking_alarms: frozenset[str] = frozenset()
    lost: bool = True
    lost_reported: bool = False  # a "lost" fault was raised and must be cleared on recovery
    set_voltage_v: float = 0.0
    set_current_a: float = 0.0
    output_on: bool = False
    restored: bool = False  # set-points re-sent since the last time it was lost
    on_at_loss: bool = False  # it was switched on when it went silent: it may still be delivering
    wanted: tuple[float, float, bool] | None = None  # set-points waiting for the command spacing
    last_command_t: float = float("-inf")
    next_poll_t: float = 0.0
    backoff_s: float = 0.0
    capabilities: dict[str, float] = field(default_factory=dict)  # as reported; empty: nothing reported
    appeared_t: float | None = None  # when it was last found or came back
    capabilities_t: float | None = None  # when it last reported its capabilities
    identify_t: float = float("-inf")  # when its capabilities were last asked for

    @property
    def available(self) -> bool:
        return not self.lost and self.restored and not (self.alarms & self.blocking_alarms) and self.can_deliver

    @property
    def can_deliver(self) -> bool:
        """False when the module reports it can give nothing (0 A, 0 W, or a voltage range that is empty):
        it is out of the split like a module with a blocking alarm, rather than pull every module of its
        connector down to 0 A as the lowest per-module figure."""
        caps = self.capabilities
        return (
            caps.get("max_current_a", 1.0) > 0.0
            and caps.get("rated_power_w", 1.0) > 0.0
            and caps.get("max_voltage_v", math.inf) > max(0.0, caps.get("min_voltage_v", 0.0))
        )


@dataclass
class BankEvents:
    lost: list[int] = field(default_factory=list)
    recovered: list[int] = field(default_factory=list)


def _bound(configured: float, codec_max: float) -> float:
    return min(configured, codec_max) if configured >= 0.0 else 0.0


def _clamp(value: float, high: float) -> float:
    """``value`` within 0..``high``; NaN and negative values are 0 (nothing delivered)."""
    if not value > 0.0:
        return 0.0
    return high if value > high else value


class ModuleBank:
    def __init__(
        self,
        codec: ModuleCodec,
        addresses: list[int],
        lost_after_s: float,
        send: Callable[[Frame], None],
        max_current_a_per_module: float,
        *,
        poll_period_s: float = 1.0,
        max_backoff_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_event: EventSink | None = None,
        max_voltage_v: float = CODEC_MAX_SETPOINT,
    ) -> None:
        if lost_after_s >= codec.module_comms_timeout_s:
            raise ValueError(
                f"lost_after_s ({lost_after_s} s) must be shorter than the module's own comms timeout "
                f"({codec.module_comms_timeout_s} s) so the controller notices first"
            )
        if not addresses:
            raise ValueError("a module bank needs at least one module address")
        self.codec = codec
        self.lost_after_s = lost_after_s
        self.started_t: float | None = None  # the first check(): a module never heard is awaited until lost_after_s
        self.max_current_a_per_module = max_current_a_per_module
        # what a set-output frame may carry: the config's maximum within the codec's range
        self.max_voltage_v = _bound(max_voltage_v, CODEC_MAX_SETPOINT)
        self.max_setpoint_a = _bound(max_current_a_per_module, CODEC_MAX_SETPOINT)
        self.setpoints_clamped = 0
        self._clamp_logged_t = -math.inf
        self.poll_period_s = poll_period_s
        self.max_backoff_s = max(max_backoff_s, poll_period_s)
        self._send = send
        self._clock = clock
        self._event = on_event or _no_events
        blocking = frozenset(codec.blocking_alarms)
        self.modules: dict[int, ModuleState] = {
            a: ModuleState(a, blocking_alarms=blocking, backoff_s=poll_period_s) for a in addresses
        }
        self.foreign_frames = 0
        self.foreign_addresses: set[int] = set()
        self.frames_sent = 0
        self.acks = 0
        self.rejected = 0
        self._reject_logged_t = -math.inf

    def register(self, dispatcher: CanDispatcher) -> None:
        """Receive the codec's replies and send spaced set-points on time, through ``dispatcher``."""
        dispatcher.register("power modules", self.on_frame, masks=[self.codec.reply_mask()], periodic=self._periodic)

    def _periodic(self, now: float) -> list[Reading]:
        self.flush(now)
        return []

    def on_frame(self, arbitration_id: int, data: bytes, now: float) -> list[Reading] | None:
        """Dispatcher handler: the module's readings (urgent when the reply carried alarms), ``[]`` for an
        acknowledgement, None for a frame that is not a reply of a configured module."""
        reply = self.handle(arbitration_id, data, now)
        if reply is None:
            return None
        if reply.ack:
            return []
        return self.module_readings(READINGS_PREFIX, reply.address, now, urgent=reply.alarms is not None)

    # -- receive -------------------------------------------------------------------------------------
    def handle(self, arbitration_id: int, data: bytes, now: float) -> ModuleReply | None:
        """Decode one frame; None when it is not a reply of a configured module. Never raises on bad data."""
        reply = self.codec.decode(arbitration_id, bytes(data))
        if reply is None:
            return None
        mod = self.modules.get(reply.address)
        if mod is None:
            self.foreign_frames += 1
            if len(self.foreign_addresses) < MAX_FOREIGN_ADDRESSES:
                self.foreign_addresses.add(reply.address)
            return None
        if reply.ack:
            self._acknowledged(mod, reply, now)
        else:
            self._update(mod, reply, now)
        return reply

    def _acknowledged(self, mod: ModuleState, reply: ModuleReply, now: float) -> None:
        if not reply.error:
            self.acks += 1
            return
        self.rejected += 1
        if now - self._reject_logged_t >= REJECT_LOG_EVERY_S:
            self._reject_logged_t = now
            log.warning(
                "power module %d refused a set command (error code %d; %d refusals so far): it keeps its previous "
                "set-point",
                mod.address,
                reply.error,
                self.rejected,
            )

    def _update(self, mod: ModuleState, reply: ModuleReply, now: float) -> None:
        mod.last_seen = now
        if reply.voltage_v is not None:
            mod.voltage_v = reply.voltage_v
        if reply.current_a is not None:
            mod.current_a = reply.current_a
        if reply.temperature_c is not None:
            mod.temperature_c = reply.temperature_c
        if reply.capabilities is not None:
            self._take_capabilities(mod, reply.capabilities, now)
        if reply.alarms is not None and reply.alarms != mod.alarms:
            self._alarm_events(mod, reply.alarms)
            mod.alarms = reply.alarms

    def _take_capabilities(self, mod: ModuleState, caps: dict[str, float], now: float) -> None:
        mod.capabilities_t = now
        if caps == mod.capabilities:
            return
        mod.capabilities = dict(caps)
        figures = ", ".join(f"{k} {v:g}" for k, v in sorted(caps.items()))
        if mod.can_deliver:
            log.info("power module %d reports %s", mod.address, figures)
        else:
            log.warning("power module %d reports %s: it can give nothing and is out of the split", mod.address, figures)
        self._event("module_capabilities", f"module_{mod.address}", {"module": mod.address, **caps})
        if mod.lost:
            return
        # lower figures take effect now, not at the next apply (and are not a clamp: nothing upstream knew)
        if mod.wanted is not None:
            volts, amps, on = mod.wanted
            mod.wanted = (*self._fit(mod, volts, amps), on)
        volts, amps = self._fit(mod, mod.set_voltage_v, mod.set_current_a)
        if (volts, amps) != (mod.set_voltage_v, mod.set_current_a):
            self._command(mod, volts, amps, mod.output_on and amps > 0.0, now)

    def _alarm_events(self, mod: ModuleState, new: frozenset[str]) -> None:
        for name in sorted(new - mod.alarms):
            self._event(
                "module_alarm_raised",
                f"module_{mod.address}_{name}",
                {"module": mod.address, "alarm": name, "blocking": name in mod.blocking_alarms},
            )
        for name in sorted(mod.alarms - new):
            self._event(
                "module_alarm_cleared",
                f"module_{mod.address}_{name}",
                {"module": mod.address, "alarm": name, "blocking": name in mod.blocking_alarms},
            )

    def check(self, now: float) -> BankEvents:
        """Mark silent modules lost and returning ones recovered; send set-points whose spacing is over."""
        ev = BankEvents()
        if self.started_t is None:
            self.started_t = now
        for mod in self.modules.values():
            silent = mod.last_seen is None or now - mod.last_seen > self.lost_after_s
            if silent and not mod.lost:
                self._lose(mod, now, f"no answer for {self.lost_after_s:.1f} s")
                ev.lost.append(mod.address)
            elif not silent and mod.lost:
                mod.lost = False
                mod.backoff_s = 0.0
                mod.next_poll_t = now  # poll at the normal rate again, starting now
                mod.appeared_t = now
                self._restore(mod, now)
                self._identify(mod, now)
                if mod.lost_reported:
                    mod.lost_reported = False
                    self._event("module_recovered", f"module_{mod.address}", {"module": mod.address})
                else:
                    self._event("module_found", f"module_{mod.address}", {"module": mod.address})
                ev.recovered.append(mod.address)
        self.flush(now)
        return ev

    def awaited(self, address: int, now: float) -> bool:
        """True for a module never heard while the start is younger than ``lost_after_s``: not available, and
        not yet lost either (every start would otherwise report the modules that answer after the first
        evaluation as lost, then found)."""
        mod = self.modules[address]
        return mod.last_seen is None and (self.started_t is None or now - self.started_t <= self.lost_after_s)

    def force_lost(self, now: float, reason: str) -> list[int]:
        """Mark every module lost at once (the bus is off: we cannot reach them). Returns the addresses."""
        out = []
        for mod in self.modules.values():
            if not mod.lost:
                self._lose(mod, now, reason)
                out.append(mod.address)
            mod.last_seen = None  # only a new answer after this brings it back
        return out

    def _lose(self, mod: ModuleState, now: float, reason: str) -> None:
        mod.lost, mod.restored = True, False
        mod.on_at_loss = mod.output_on and mod.set_current_a > 0
        mod.backoff_s = self.poll_period_s
        mod.next_poll_t = now
        mod.lost_reported = True
        # The fault itself (module_lost_<addr>) is raised by the safety core from the lost list; this
        # event carries the bank's own detail (why, when) for the event log.
        self._event(
            "module_lost",
            f"module_{mod.address}",
            {"module": mod.address, "detail": f"power module {mod.address} lost: {reason}"},
        )
        # It may still hear us: tell it 0 A and off now rather than wait for its own watchdog.
        self._command(mod, 0.0, 0.0, False, now, force=True)

    def _restore(self, mod: ModuleState, now: float) -> None:
        volts, amps, on = (
            mod.wanted if mod.wanted is not None else (mod.set_voltage_v, mod.set_current_a, mod.output_on)
        )
        self._command(mod, volts, amps, on, now, force=True)
        mod.restored = True

    # -- capabilities ---------------------------------------------------------------------------------
    def _identify(self, mod: ModuleState, now: float) -> None:
        frames = self.codec.identify(mod.address)
        for frame in frames:
            self._tx(frame)
        if frames:
            mod.identify_t = now

    def _identify_due(self, mod: ModuleState, now: float) -> bool:
        """Present, nothing reported since it last appeared, and not asked within ``IDENTIFY_RETRY_S``."""
        if mod.lost or now - mod.identify_t < IDENTIFY_RETRY_S:
            return False
        answered = mod.capabilities_t is not None and (mod.appeared_t is None or mod.capabilities_t >= mod.appeared_t)
        return not answered

    def _voltage_range(self, mod: ModuleState) -> tuple[float, float]:
        """(lowest, highest) voltage one module may be commanded: its reported range within the configured."""
        low = mod.capabilities.get("min_voltage_v", 0.0)
        return low, min(self.max_voltage_v, mod.capabilities.get("max_voltage_v", math.inf))

    def module_limit_a(self, mod: ModuleState, voltage_v: float | None = None) -> float:
        """The most one module may be commanded: min(configured, reported current, reported power / voltage);
        0 A when ``voltage_v`` is below the module's reported minimum (it cannot regulate there), negative or
        NaN. ``voltage_v`` None or 0: without the power limit (no voltage to divide by)."""
        amps = min(self.max_setpoint_a, mod.capabilities.get("max_current_a", math.inf))
        power_w = mod.capabilities.get("rated_power_w")
        if voltage_v is not None and not voltage_v >= 0.0:
            return 0.0
        if voltage_v is not None and voltage_v > 0.0:
            if voltage_v < self._voltage_range(mod)[0]:
                return 0.0
            if power_w is not None:
                amps = min(amps, power_w / voltage_v)
        return max(0.0, amps)

    def _fit(self, mod: ModuleState, volts: float, amps: float) -> tuple[float, float]:
        """``volts`` / ``amps`` within what this module may be commanded (see the module docstring)."""
        low, high = self._voltage_range(mod)
        v = _clamp(volts, high)
        a = _clamp(amps, self.module_limit_a(mod, v))
        if a > 0.0 and v < low:  # never raise the voltage to the module's minimum: it sits out
            return 0.0, 0.0
        return v, a

    def module_max_a(self, addresses: list[int] | None = None, voltage_v: float | None = None) -> float:
        """Per module, what the safety core may count on: the lowest :meth:`module_limit_a` over the group's
        available modules at ``voltage_v`` (None: without the power limit); 0 A when none is available."""
        limits = [self.module_limit_a(m, voltage_v) for m in self._group(addresses) if m.available]
        return min(limits, default=0.0)

    def capabilities(self, addresses: list[int] | None = None) -> dict[str, float]:
        """What the group's available modules can give together: ``max_current_a`` and ``max_power_w`` (sums;
        a module without a reported power counts its current limit at its highest voltage), ``min_voltage_v``
        and ``max_voltage_v`` (the range every one of them covers). All 0 when none is available."""
        mods = [m for m in self._group(addresses) if m.available]
        if not mods:
            return {"max_current_a": 0.0, "max_power_w": 0.0, "min_voltage_v": 0.0, "max_voltage_v": 0.0}
        ranges = [self._voltage_range(m) for m in mods]
        power_w = 0.0
        for mod, (_low, high) in zip(mods, ranges, strict=True):
            amps = self.module_limit_a(mod)
            power_w += min(mod.capabilities.get("rated_power_w", math.inf), amps * high)
        return {
            "max_current_a": sum(self.module_limit_a(m) for m in mods),
            "max_power_w": power_w,
            "min_voltage_v": max(low for low, _high in ranges),
            "max_voltage_v": min(high for _low, high in ranges),
        }

    # -- command -------------------------------------------------------------------------------------
    def _group(self, addresses: list[int] | None) -> list[ModuleState]:
        """The configured modules among ``addresses`` (None: all), each once; others are ignored (the config
        check refuses a connector with an address that is not a configured module)."""
        if addresses is None:
            return list(self.modules.values())
        return [self.modules[a] for a in dict.fromkeys(addresses) if a in self.modules]

    def available(self, addresses: list[int] | None = None) -> list[int]:
        return [m.address for m in self._group(addresses) if m.available]

    def possibly_delivering(self, now: float, addresses: list[int] | None = None) -> list[int]:
        """Lost modules that were on and whose own comms watchdog may not have switched them off yet."""
        timeout = self.codec.module_comms_timeout_s
        return [
            m.address
            for m in self._group(addresses)
            if m.lost and m.on_at_loss and m.last_seen is not None and now - m.last_seen < timeout
        ]

    def capacity_a(self, addresses: list[int] | None = None, voltage_v: float | None = None) -> float:
        return sum(self.module_limit_a(m, voltage_v) for m in self._group(addresses) if m.available)

    def apply(self, enable: bool, voltage_v: float, total_current_a: float, addresses: list[int] | None = None) -> None:
        """Split ``total_current_a`` equally across the group's available modules, each within its own
        :meth:`module_limit_a`; the group's other modules get 0 A and off. ``addresses``: the group (one
        connector's modules); None = every module. Modules outside the group are not touched."""
        now = self._clock()
        if not total_current_a >= 0.0:  # NaN or negative: min() below would pass NaN over as the maximum
            self._clamped(f"total current {total_current_a} A", 0.0, 0.0)
            total_current_a = 0.0
        group = self._group(addresses)
        avail = {m.address for m in group if m.available and self._reaches(m, voltage_v, enable)}
        ghosts = len(self.possibly_delivering(now, [m.address for m in group]))
        share = max(0.0, total_current_a / (len(avail) + ghosts)) if avail and enable else 0.0
        for mod in group:
            amps = self._module_share(mod, share, voltage_v) if mod.address in avail else 0.0
            on = amps > 0.0
            volts = voltage_v if on else 0.0
            if mod.lost:
                # remember for the restore; a lost module is not addressed
                mod.wanted = (volts, amps, on)
                mod.set_voltage_v, mod.set_current_a, mod.output_on = volts, amps, on
                continue
            self._command(mod, volts, amps, on, now)

    def _module_share(self, mod: ModuleState, share: float, voltage_v: float) -> float:
        """``share`` within the module's own limit at the voltage it will be sent (its highest at most)."""
        return min(share, self.module_limit_a(mod, min(voltage_v, self._voltage_range(mod)[1])))

    def _reaches(self, mod: ModuleState, voltage_v: float, enable: bool) -> bool:
        """False (counted and logged as a clamp) when ``voltage_v`` is below the module's reported minimum."""
        low = self._voltage_range(mod)[0]
        if not enable or voltage_v >= low:
            return True
        self._clamped(f"{voltage_v} V below module {mod.address}'s minimum {low:g} V", 0.0, 0.0)
        return False

    def _command(self, mod: ModuleState, volts: float, amps: float, on: bool, now: float, force: bool = False) -> None:
        volts, amps = self._bounded(mod, volts, amps)  # what is stored is what can be sent
        reduction = amps < mod.set_current_a or (mod.output_on and not on)
        if force or reduction:
            self._send_now(mod, volts, amps, on, now, force, priority=reduction or (amps == 0.0 and not on))
            return
        if (volts, amps, on) == (mod.set_voltage_v, mod.set_current_a, mod.output_on):
            mod.wanted = None
            return
        mod.wanted = (volts, amps, on)
        self._service(mod, now)

    def _send_now(
        self, mod: ModuleState, volts: float, amps: float, on: bool, now: float, force: bool, priority: bool
    ) -> None:
        """Everything that differs (all of it when ``force``), without waiting for the command spacing.
        ``priority`` for reductions and off; a forced restore may be a raise and then is not."""
        frames: list[Frame] = []
        if force or (volts, amps) != (mod.set_voltage_v, mod.set_current_a):
            frames += self._set_output(mod, volts, amps)
        if force or on != mod.output_on:
            frames += self.codec.output_on(mod.address, on)
        for frame in frames:
            self._tx(replace(frame, priority=True) if priority else frame)
        mod.set_voltage_v, mod.set_current_a, mod.output_on = volts, amps, on
        mod.wanted = None
        mod.last_command_t = now

    def _service(self, mod: ModuleState, now: float) -> None:
        """Send the next step towards ``mod.wanted`` if the command spacing allows it."""
        if mod.wanted is None or mod.lost or now - mod.last_command_t < self.codec.command_spacing_s - 1e-9:
            return
        volts, amps, on = mod.wanted
        if (volts, amps) != (mod.set_voltage_v, mod.set_current_a):
            for frame in self._set_output(mod, volts, amps):
                self._tx(frame)
            mod.set_voltage_v, mod.set_current_a = volts, amps
        elif on != mod.output_on:
            for frame in self.codec.output_on(mod.address, on):
                self._tx(frame)
            mod.output_on = on
        mod.last_command_t = now
        if (volts, amps, on) == (mod.set_voltage_v, mod.set_current_a, mod.output_on):
            mod.wanted = None

    # -- set-point bounds ------------------------------------------------------------------------------
    def _set_output(self, mod: ModuleState, volts: float, amps: float) -> list[Frame]:
        """The encoding boundary: every per-module set-output frame is made here, within the bounds."""
        volts, amps = self._bounded(mod, volts, amps)
        return self.codec.set_output(mod.address, volts, amps)

    def _bounded(self, mod: ModuleState, volts: float, amps: float) -> tuple[float, float]:
        v, a = self._fit(mod, volts, amps)
        if v != volts or a != amps:  # NaN != NaN: counted as well
            self._clamped(f"{volts} V / {amps} A to module {mod.address}", v, a)
        return v, a

    def _clamped(self, asked: str, volts: float, amps: float) -> None:
        self.setpoints_clamped += 1
        now = self._clock()
        if now - self._clamp_logged_t >= CLAMP_LOG_EVERY_S:
            self._clamp_logged_t = now
            log.error(
                "module set-point %s outside 0..%g V / 0..%g A per module or the module's reported capabilities, "
                "sent %g V / %g A (bug upstream; %d so far)",
                asked,
                self.max_voltage_v,
                self.max_setpoint_a,
                volts,
                amps,
                self.setpoints_clamped,
            )

    def flush(self, now: float) -> None:
        for mod in self.modules.values():
            self._service(mod, now)

    def pending(self) -> int:
        return sum(1 for m in self.modules.values() if m.wanted is not None and not m.lost)

    def off(self, addresses: list[int]) -> None:
        """The group's modules off and 0 A, whatever we think their state is, with per-module priority frames
        (a group or broadcast frame would switch the other connectors' modules off too). Lost ones are told
        as well (they may still hear us) and come back off. For a connector's normal end of session
        ``apply(False, 0.0, 0.0, addresses)`` does the same with only the frames that change something."""
        now = self._clock()
        for mod in self._group(addresses):
            for frame in self.codec.set_output(mod.address, 0.0, 0.0) + self.codec.output_on(mod.address, False):
                self._tx(replace(frame, priority=True))
            mod.set_voltage_v, mod.set_current_a, mod.output_on = 0.0, 0.0, False
            mod.wanted = None
            mod.last_command_t = now

    def all_off(self) -> None:
        """Group command: every module off and 0 A, whatever we think their state is (the fail-safe and
        cabinet-wide stops; one connector's modules go off with :meth:`off`)."""
        for frame in self.codec.set_output(None, 0.0, 0.0) + self.codec.output_on(None, False):
            self._tx(replace(frame, priority=True))
        now = self._clock()
        for mod in self.modules.values():
            mod.set_voltage_v, mod.set_current_a, mod.output_on = 0.0, 0.0, False
            mod.wanted = None
            mod.last_command_t = now

    def _tx(self, frame: Frame) -> None:
        self.frames_sent += 1
        self._send(frame)

    # -- polling -------------------------------------------------------------------------------------
    def poll_frames(self, address: int, now: float | None = None) -> list[Frame]:
        """The poll requests of one module, with its capabilities request when that is due (see
        ``IDENTIFY_RETRY_S``)."""
        frames = self.codec.poll(address)
        mod = self.modules.get(address)
        t = self._clock() if now is None else now
        if mod is not None and self._identify_due(mod, t):
            identify = self.codec.identify(address)
            if identify:
                mod.identify_t = t
                frames = frames + identify
        return frames

    def polls_due(self, now: float) -> list[int]:
        """Addresses to poll now: present modules every ``poll_period_s``, lost ones with backoff."""
        due = []
        for mod in self.modules.values():
            if now < mod.next_poll_t:
                continue
            due.append(mod.address)
            if mod.lost:
                mod.next_poll_t = now + mod.backoff_s
                mod.backoff_s = min(self.max_backoff_s, mod.backoff_s * 2)
            else:
                mod.next_poll_t = now + self.poll_period_s
        return due

    # -- readings ------------------------------------------------------------------------------------
    def readings(self, prefix: str, now: float) -> list[Reading]:
        out: list[Reading] = []
        for addr in self.modules:
            out += self.module_readings(prefix, addr, now)
        return out

    def module_readings(self, prefix: str, addr: int, now: float, urgent: bool = False) -> list[Reading]:
        mod = self.modules[addr]
        t = mod.last_seen if mod.last_seen is not None else now
        q = STALE if mod.lost else OK
        p = f"{prefix}.{addr}"
        out = [
            Reading(f"{p}.voltage_v", mod.voltage_v, "V", t, q, urgent),
            Reading(f"{p}.current_a", mod.current_a, "A", t, q, urgent),
        ]
        if mod.temperature_c is not None:
            out.append(Reading(f"{p}.temperature_c", mod.temperature_c, "°C", t, q, urgent))
        out.append(Reading(f"{p}.present", 0.0 if mod.lost else 1.0, "", now, OK, urgent))
        return out

    def status(self) -> dict[str, Any]:
        return {
            "foreign_frames": self.foreign_frames,
            "foreign_addresses": sorted(self.foreign_addresses),
            "frames_sent": self.frames_sent,
            "acks": self.acks,
            "rejected": self.rejected,
            "setpoints_clamped": self.setpoints_clamped,
            "pending": self.pending(),
            "possibly_delivering": self.possibly_delivering(self._clock()),
            # per module as reported ({} = nothing reported), and what the available modules give together
            "capabilities": {str(a): dict(m.capabilities) for a, m in self.modules.items()},
            "capabilities_total": self.capabilities(),
        }
