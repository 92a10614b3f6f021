"""The one current picture of the cabinet: the latest reading of every signal, and the limits snapshot.

No I/O here. Drivers' readings go in through :meth:`CabinetState.update`; the control loop asks for
:meth:`CabinetState.limits_snapshot`, the plain-dict input of the pure safety core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drivers.readings import OK, Reading


@dataclass(frozen=True)
class InputMap:
    """Which reading feeds which safety-core input (from the config: first cable, grid meter)."""

    cable: str | None
    grid_meter: str | None
    module_prefix: str = "module"
    ambient: str | None = None  # reading named by limits.ambient_signal

    def core_inputs(self) -> dict[str, str]:
        m: dict[str, str] = {}
        if self.cable:
            for core_name, suffix in (
                ("pin_dc_plus_c", "pin_dc_plus_c"),
                ("pin_dc_minus_c", "pin_dc_minus_c"),
                ("coolant_out_c", "coolant_out_c"),
                ("coolant_flow_lpm", "coolant_flow_lpm"),
                ("coolant_leak", "leak"),
            ):
                m[core_name] = f"{self.cable}.{suffix}"
        if self.ambient:
            m["ambient_c"] = self.ambient
        if self.grid_meter:
            for i in (1, 2, 3):
                m[f"grid_l{i}_a"] = f"{self.grid_meter}.Current.Import.L{i}"
        return m


@dataclass
class CabinetState:
    inputs: InputMap
    readings: dict[str, Reading] = field(default_factory=dict)

    def update(self, readings: list[Reading]) -> None:
        for r in readings:
            self.readings[r.signal] = r

    def get(self, signal: str) -> Reading | None:
        return self.readings.get(signal)

    def limits_snapshot(self, now: float, **extra: Any) -> dict[str, Any]:
        """Plain-dict snapshot for ``edge.limits.core.evaluate`` (missing readings are left out)."""
        inputs: dict[str, list[Any]] = {}
        for core_name, signal in self.inputs.core_inputs().items():
            r = self.readings.get(signal)
            if r is not None:
                inputs[core_name] = [r.value, r.t, r.quality]
        hottest = self._hottest_module(now)
        if hottest is not None:
            inputs["module_temp_c"] = hottest
        snap: dict[str, Any] = {"t": now, "inputs": inputs}
        snap.update(extra)
        return snap

    def _hottest_module(self, now: float) -> list[Any] | None:
        """Hottest temperature of the modules that answer. Lost modules are left out (their share is
        removed); if every reported temperature is stale the newest one goes in as it is, so the core
        sees a stale input instead of no input."""
        best: Reading | None = None
        newest: Reading | None = None
        prefix = self.inputs.module_prefix + "."
        for sig, r in self.readings.items():
            if sig.startswith(prefix) and sig.endswith(".temperature_c"):
                if r.quality == OK and (best is None or r.value > best.value):
                    best = r
                if newest is None or r.t > newest.t:
                    newest = r
        chosen = best or newest
        return [chosen.value, chosen.t, chosen.quality] if chosen is not None else None

    def output_measurements(self, now: float) -> dict[str, list[Any]]:
        """Sum of module output currents and the highest module voltage, as core inputs."""
        amps = 0.0
        volts = 0.0
        t_oldest = now
        prefix = self.inputs.module_prefix + "."
        seen = False
        for sig, r in self.readings.items():
            if not sig.startswith(prefix) or r.quality != OK:
                continue
            if sig.endswith(".current_a"):
                amps += r.value
                t_oldest = min(t_oldest, r.t)
                seen = True
            elif sig.endswith(".voltage_v"):
                volts = max(volts, r.value)
        if not seen:
            return {}
        return {"output_a": [amps, t_oldest, OK], "output_v": [volts, t_oldest, OK]}
