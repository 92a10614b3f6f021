"""The one current picture of the cabinet: the latest reading of every signal, and the limits snapshot.

No I/O here. Drivers' readings go in through :meth:`CabinetState.update`; the control loop asks for
:meth:`CabinetState.limits_snapshot`, the plain-dict input of the pure safety core.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from drivers.readings import OK, Reading
from edge.limits import inputs as table


def bind_inputs(cable: str | None, grid_meter: str | None, ambient: str | None) -> dict[str, str]:
    """Core input name -> reading name, derived from the input table (edge/limits/inputs.py).

    ``cable``: device name of the cable monitor (its inputs are ``<cable>.<reading suffix>``, e.g.
    ``cable.leak`` for ``coolant_leak``); ``grid_meter``: the grid meter's name (the three phase currents);
    ``ambient``: the whole reading name of the cabinet ambient sensor (``limits.ambient_signal``). None
    leaves that part out. Inputs no rule reads (``required = monitor``) are not bound. Call it once per
    connector with that connector's cable."""
    devices = {"cable": cable, "grid": grid_meter}
    m: dict[str, str] = {}
    for e in table.INPUTS:
        if e["required"] == table.MONITOR:
            continue
        if e["source"] == "ambient" and ambient:
            m[e["name"]] = ambient
        elif devices.get(e["source"]):
            m[e["name"]] = f"{devices[e['source']]}.{e['reading']}"
    return m


@dataclass(frozen=True)
class InputMap:
    """Which reading feeds which safety-core input (from the config: first cable, grid meter)."""

    cable: str | None
    grid_meter: str | None
    module_prefix: str = "module"
    ambient: str | None = None  # reading named by limits.ambient_signal

    def core_inputs(self) -> dict[str, str]:
        return bind_inputs(self.cable, self.grid_meter, self.ambient)


(MODULE_TEMP,) = table.names_where("source", "module")  # the one module input: the hottest module's temperature


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
        hottest = self._hottest_module()
        if hottest is not None:
            inputs[MODULE_TEMP] = hottest
        snap: dict[str, Any] = {"t": now, "inputs": inputs}
        snap.update(extra)
        return snap

    def _module_readings(self, suffix: str) -> Iterator[Reading]:
        prefix = self.inputs.module_prefix + "."
        return (r for sig, r in self.readings.items() if sig.startswith(prefix) and sig.endswith(suffix))

    def _hottest_module(self) -> list[Any] | None:
        """Hottest temperature of the modules that answer. Lost modules are left out (their share is
        removed); if every reported temperature is stale the newest one goes in as it is, so the core
        sees a stale input instead of no input."""
        temps = list(self._module_readings(".temperature_c"))
        good = [r for r in temps if r.quality == OK]
        chosen = max(good, key=lambda r: r.value) if good else max(temps, key=lambda r: r.t, default=None)
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
