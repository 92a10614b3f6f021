"""Which connectors the simulated cabinet has: their cable monitors, contactor pin, modules and limits.

Read from ``Config.resolved_connectors()`` (the ``[[connector]]`` tables, or one connector built from the
old single-output keys). While a config class without it is in use, the same single connector "1" is
derived here from the old keys (every cable, ``outputs.contactor``, every module address, a fixed
request): the simulator then behaves as it always did.
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
    resolved = getattr(config, "resolved_connectors", None)
    if resolved is not None:
        return [_from_connector(c) for c in resolved()]
    max_a = config.limits.max_output_current_a
    max_v = min(config.limits.max_output_voltage_v, config.power_modules.max_voltage_v)
    return [
        SimConnectorSpec(
            name="1",
            cables=tuple(c.name for c in config.cable),
            contactor_pin=config.outputs.contactor,
            modules=tuple(config.power_modules.addresses),
            request="fixed",
            max_current_a=max_a,
            max_voltage_v=max_v,
            min_voltage_v=min(150.0, config.control.output_voltage_v),
            max_power_kw=round(max_a * max_v / 1000.0, 3),
        )
    ]


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
