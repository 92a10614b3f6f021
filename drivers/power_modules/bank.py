"""ModuleBank: the controller's view of every configured power module on one CAN bus.

- Presence: a module is ``lost`` when it has not answered for ``lost_after_s``, which must be shorter
  than the module's own comms watchdog so the controller knows before the module switches itself off.
- Frames from addresses that are not configured are counted and ignored; they never touch state.
- Demand is split equally across the modules that are present and free of alarms.
- A module that comes back gets its last set-points and on/off state re-sent before it is counted as
  available again.
The bank does not own a clock or a bus: time is passed in and frames go out through ``send``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.power_modules.codec import Frame, ModuleCodec, ModuleReply
from drivers.readings import OK, STALE, Reading

# Alarms that take a module out of the split (the module cannot deliver its share).
BLOCKING_ALARMS = frozenset({
    "output_short", "fault", "protection", "over_temperature", "output_over_voltage", "discharge_abnormal",
    "fan_fault", "comms_interrupted", "phase_lost", "input_under_voltage", "input_over_voltage", "pfc_off",
})


@dataclass
class ModuleState:
    address: int
    last_seen: float | None = None
    voltage_v: float = 0.0
    current_a: float = 0.0
    temperature_c: float | None = None
    alarms: frozenset[str] = frozenset()
    lost: bool = True
    set_voltage_v: float = 0.0
    set_current_a: float = 0.0
    output_on: bool = False
    restored: bool = False  # set-points re-sent since the last time it was lost

    @property
    def available(self) -> bool:
        return not self.lost and self.restored and not (self.alarms & BLOCKING_ALARMS)


@dataclass
class BankEvents:
    lost: list[int] = field(default_factory=list)
    recovered: list[int] = field(default_factory=list)


class ModuleBank:
    def __init__(self, codec: ModuleCodec, addresses: list[int], lost_after_s: float,
                 send: Callable[[Frame], None], max_current_a_per_module: float) -> None:
        if lost_after_s >= codec.module_comms_timeout_s:
            raise ValueError(
                f"lost_after_s ({lost_after_s} s) must be shorter than the module's own comms timeout "
                f"({codec.module_comms_timeout_s} s) so the controller notices first"
            )
        self.codec = codec
        self.lost_after_s = lost_after_s
        self.max_current_a_per_module = max_current_a_per_module
        self._send = send
        self.modules: dict[int, ModuleState] = {a: ModuleState(a) for a in addresses}
        self.foreign_frames = 0
        self.foreign_addresses: set[int] = set()

    # -- receive -------------------------------------------------------------------------------------
    def handle(self, arbitration_id: int, data: bytes, now: float) -> ModuleReply | None:
        reply = self.codec.decode(arbitration_id, bytes(data))
        if reply is None:
            return None
        mod = self.modules.get(reply.address)
        if mod is None:
            self.foreign_frames += 1
            self.foreign_addresses.add(reply.address)
            return None
        mod.last_seen = now
        if reply.voltage_v is not None:
            mod.voltage_v = reply.voltage_v
        if reply.current_a is not None:
            mod.current_a = reply.current_a
        if reply.temperature_c is not None:
            mod.temperature_c = reply.temperature_c
        if reply.alarms is not None:
            mod.alarms = reply.alarms
        return reply

    def check(self, now: float) -> BankEvents:
        """Mark silent modules lost and returning ones recovered (after restoring their set-points)."""
        ev = BankEvents()
        for mod in self.modules.values():
            silent = mod.last_seen is None or now - mod.last_seen > self.lost_after_s
            if silent and not mod.lost:
                mod.lost, mod.restored = True, False
                ev.lost.append(mod.address)
            elif not silent and mod.lost:
                mod.lost = False
                self._restore(mod)
                ev.recovered.append(mod.address)
        return ev

    def _restore(self, mod: ModuleState) -> None:
        for frame in self.codec.set_output(mod.address, mod.set_voltage_v, mod.set_current_a):
            self._send(frame)
        for frame in self.codec.output_on(mod.address, mod.output_on):
            self._send(frame)
        mod.restored = True

    # -- command -------------------------------------------------------------------------------------
    def available(self) -> list[int]:
        return [a for a, m in self.modules.items() if m.available]

    def capacity_a(self) -> float:
        return self.max_current_a_per_module * len(self.available())

    def apply(self, enable: bool, voltage_v: float, total_current_a: float) -> None:
        """Split ``total_current_a`` equally across available modules; others get 0 A and off."""
        avail = self.available()
        share = min(self.max_current_a_per_module, total_current_a / len(avail)) if avail and enable else 0.0
        for addr, mod in self.modules.items():
            on = enable and addr in avail and share > 0
            amps = share if on else 0.0
            volts = voltage_v if on else 0.0
            if mod.lost:
                # remember for the restore; a lost module is not addressed
                mod.set_voltage_v, mod.set_current_a, mod.output_on = volts, amps, on
                continue
            if (volts, amps) != (mod.set_voltage_v, mod.set_current_a):
                for frame in self.codec.set_output(addr, volts, amps):
                    self._send(frame)
                mod.set_voltage_v, mod.set_current_a = volts, amps
            if on != mod.output_on:
                for frame in self.codec.output_on(addr, on):
                    self._send(frame)
                mod.output_on = on

    def all_off(self) -> None:
        """Group command: every module off and 0 A, whatever we think their state is."""
        for frame in self.codec.set_output(None, 0.0, 0.0) + self.codec.output_on(None, False):
            self._send(frame)
        for mod in self.modules.values():
            mod.set_voltage_v, mod.set_current_a, mod.output_on = 0.0, 0.0, False

    def poll_frames(self, address: int) -> list[Frame]:
        return self.codec.poll(address)

    # -- readings ------------------------------------------------------------------------------------
    def readings(self, prefix: str, now: float) -> list[Reading]:
        out: list[Reading] = []
        for addr, mod in self.modules.items():
            t = mod.last_seen if mod.last_seen is not None else now
            q = STALE if mod.lost else OK
            p = f"{prefix}.{addr}"
            out.append(Reading(f"{p}.voltage_v", mod.voltage_v, "V", t, q))
            out.append(Reading(f"{p}.current_a", mod.current_a, "A", t, q))
            if mod.temperature_c is not None:
                out.append(Reading(f"{p}.temperature_c", mod.temperature_c, "°C", t, q))
            out.append(Reading(f"{p}.present", 0.0 if mod.lost else 1.0, "", now, OK))
        return out
