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
    # per connector: the cable monitors that protect it (one set of core inputs each; the worst one counts)
    connector_cables: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def core_inputs(self) -> dict[str, str]:
        return bind_inputs(self.cable, self.grid_meter, self.ambient)

    def cabinet_inputs(self) -> dict[str, str]:
        """The inputs every connector shares: grid meter, ambient (no cable)."""
        return bind_inputs(None, self.grid_meter, self.ambient)

    def cable_inputs(self, cable: str) -> dict[str, str]:
        return bind_inputs(cable, None, None)


(MODULE_TEMP,) = table.names_where("source", "module")
LOWER_IS_WORSE = set(table.names_where("sensor", "coolant_flow"))  # with two cables, the lower flow counts


def _worse(name: str, a: list[Any], b: list[Any]) -> list[Any]:
    """Of two samples of one input (two cables on one connector), the one that protects more: a sample that is
    not ok (the core then stops the output), else the hotter (the lower flow)."""
    if a[2] != OK or b[2] != OK:
        return a if a[2] != OK else b
    if name in LOWER_IS_WORSE:
        return a if a[0] <= b[0] else b
    return a if a[0] >= b[0] else b  # the one module input: the hottest module's temperature


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
        """Plain-dict snapshot for the single-output ``edge.limits.core.evaluate`` (missing readings are left
        out): the first cable's inputs with the cabinet's."""
        return self._snapshot(self.inputs.core_inputs(), now, extra)

    def cabinet_snapshot(self, now: float, **extra: Any) -> dict[str, Any]:
        """The cabinet part of ``edge.limits.connectors.evaluate_cabinet``'s snapshot: grid, ambient, the
        hottest module (the connectors' own inputs come from :meth:`connector_inputs`)."""
        return self._snapshot(self.inputs.cabinet_inputs(), now, extra)

    def _snapshot(self, binding: dict[str, str], now: float, extra: dict[str, Any]) -> dict[str, Any]:
        inputs = self._bound(binding)
        hottest = self._hottest_module()
        if hottest is not None:
            inputs[MODULE_TEMP] = hottest
        snap: dict[str, Any] = {"t": now, "inputs": inputs}
        snap.update(extra)
        return snap

    def connector_inputs(self, connector: str, modules: list[int], now: float) -> dict[str, list[Any]]:
        """One connector's core inputs: its cable monitor(s) (the worse sample of each input when there are
        two) and its output measured by its modules."""
        inputs: dict[str, list[Any]] = {}
        for cable in self.inputs.connector_cables.get(connector, ()):
            for name, sample in self._bound(self.inputs.cable_inputs(cable)).items():
                inputs[name] = _worse(name, inputs[name], sample) if name in inputs else sample
        inputs.update(self.output_measurements(now, modules))
        return inputs

    def _bound(self, binding: dict[str, str]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for core_name, signal in binding.items():
            r = self.readings.get(signal)
            if r is not None:
                out[core_name] = [r.value, r.t, r.quality]
        return out

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

    def output_measurements(self, now: float, modules: list[int] | None = None) -> dict[str, list[Any]]:
        """Sum of module output currents and the highest module voltage, as core inputs (of ``modules``
        only: one connector's; None = every module that has reported)."""
        prefix = self.inputs.module_prefix + "."
        names = [str(a) for a in modules] if modules is not None else self._module_names(prefix)
        currents = self._good([f"{prefix}{n}.current_a" for n in names])
        if not currents:
            return {}
        volts = max((r.value for r in self._good([f"{prefix}{n}.voltage_v" for n in names])), default=0.0)
        t_oldest = min(now, *(r.t for r in currents))
        return {"output_a": [sum(r.value for r in currents), t_oldest, OK], "output_v": [volts, t_oldest, OK]}

    def module_currents(self, modules: list[int]) -> list[list[Any]]:
        """``[address, A, t]`` of each module's last good current reading: which module carries the output
        current, for the over-current fault's detail."""
        prefix = self.inputs.module_prefix + "."
        return [
            [a, r.value, r.t] for a in modules if (r := self.readings.get(f"{prefix}{a}.current_a")) and r.quality == OK
        ]

    def _good(self, signals: list[str]) -> list[Reading]:
        return [r for s in signals if (r := self.readings.get(s)) is not None and r.quality == OK]

    def _module_names(self, prefix: str) -> list[str]:
        return sorted({s[len(prefix) : s.index(".", len(prefix))] for s in self.readings if s.startswith(prefix)})
