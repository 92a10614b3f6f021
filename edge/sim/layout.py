"""Which connectors the simulated cabinet has: their cable monitors, contactor pin, modules and limits.

Read from ``Config.resolved_connectors()`` (the ``[[connector]]`` tables, or one connector "1" built from
the old single-output keys with a fixed request: the simulator then behaves as it always did).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge.config import Config


@dataclass(frozen=True)
class SimConnectorSpec:
    name: str
    cables: tuple[str, ...]  # [[cable]] names protecting it
    contactor_pin: str
    modules: tuple[int, ...]  # power-module addresses feeding it
    request: str = "fixed"  # "sim": the built-in charging controller drives it; "everest"; "fixed" (bench)
    max_current_a: float = 200.0
    max_voltage_v: float = 1000.0
    min_voltage_v: float = 150.0
    max_power_kw: float = 150.0

    @property
    def has_vehicle(self) -> bool:
        """A fixed (bench) request keeps the old load model; every other source charges a vehicle."""
        return self.request != "fixed"


def connector_layout(config: Config) -> list[SimConnectorSpec]:
    """The connectors the simulator builds: the config's, resolved (an old file's one connector included)."""
    return [_from_connector(c) for c in config.resolved_connectors()]


def _from_connector(c: Any) -> SimConnectorSpec:
    return SimConnectorSpec(
        name=str(c.name),
        cables=tuple(c.cables),
        contactor_pin=str(c.contactor),
        modules=tuple(int(a) for a in c.modules),
        request=str(c.request),
        max_current_a=float(c.max_current_a),
        max_voltage_v=float(c.max_voltage_v),
        min_voltage_v=float(c.min_voltage_v),
        max_power_kw=float(c.max_power_kw),
    )
