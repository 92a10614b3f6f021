"""Checks across sections: every set-point within every hardware limit it is sent under (issue 17 item 2).

A set-point above a limit passes each section's own bounds (``control.output_voltage_v`` allows up to
1500 V, ``limits.max_output_voltage_v`` may be 1000 V), so it is checked here, once the whole file is
validated. The errors carry the set-point's key path, so the loader names the file, the line, the value and
the allowed range like any other config error::

    config.toml:10: control.output_voltage_v = 1500.0: above limits.max_output_voltage_v = 1000 V:
    allowed 50..1000 V (the lowest of limits.max_output_voltage_v, power_modules.max_voltage_v,
    limits.over_voltage.max_v)

The safety core and the module bank clamp the same set-points again at run time (docs/SAFETY.md,
"Set-point bounds"): this check tells the technician, the clamps hold if something upstream is wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

if TYPE_CHECKING:
    from edge.config.schema import Config

Key = tuple[str, ...]

# set-point -> (unit, the limits it must not exceed). The voltage set-point must also stay at or below the
# over-voltage trip: above it every session would end in an over_voltage trip.
SETPOINT_LIMITS: dict[Key, tuple[str, tuple[Key, ...]]] = {
    ("control", "output_voltage_v"): (
        "V",
        (("limits", "max_output_voltage_v"), ("power_modules", "max_voltage_v"), ("limits", "over_voltage", "max_v")),
    ),
    ("control", "requested_current_a"): ("A", (("limits", "max_output_current_a"),)),
}


def _get(config: Config, key: Key) -> Any:
    node: Any = config
    for part in key:
        node = getattr(node, part)
    return node


def _lowest_allowed(config: Config, key: Key) -> float:
    """The set-point field's own lower bound (``ge``), 0 when it has none."""
    section: BaseModel = _get(config, key[:-1])
    for meta in type(section).model_fields[key[-1]].metadata:
        if getattr(meta, "ge", None) is not None:
            return float(meta.ge)
    return 0.0


def _problem(config: Config, key: Key, unit: str, limits: tuple[Key, ...]) -> InitErrorDetails | None:
    value = float(_get(config, key))
    bounds = {".".join(k): float(_get(config, k)) for k in limits}
    high = min(bounds.values())
    if value <= high:
        return None
    exceeded = [k for k in limits if value > float(_get(config, k))]
    allowed = f"allowed {_lowest_allowed(config, key):g}..{high:g} {unit}"
    if len(bounds) > 1:
        allowed += f" (the lowest of {', '.join(bounds)})"
    section: BaseModel = _get(config, key[:-1])
    if key[-1] not in section.model_fields_set:
        # the set-point is the default, not in the file: point at the limit that the file lowered below it
        name = ".".join(key)
        return InitErrorDetails(
            type=PydanticCustomError(
                "setpoint_above_limit",
                f"below {name} = {value:g} {unit} (its default; not set in the file): set {name}, {allowed}",
            ),
            loc=exceeded[0],
            input=float(_get(config, exceeded[0])),
        )
    above = "; ".join(f"above {'.'.join(k)} = {bounds['.'.join(k)]:g} {unit}" for k in exceeded)
    return InitErrorDetails(
        type=PydanticCustomError("setpoint_above_limit", f"{above}: {allowed}"), loc=key, input=value
    )


def check_setpoints(config: Config) -> None:
    """Raise one ValidationError listing every set-point above a limit (located at the set-point's key)."""
    problems = [p for key, (unit, lims) in SETPOINT_LIMITS.items() if (p := _problem(config, key, unit, lims))]
    if problems:
        raise ValidationError.from_exception_data("Config", problems)
