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

from pydantic import BaseModel

from edge.config.base import Loc
from edge.config.connectors import connector_block, legacy_connector
from edge.config.digital_inputs import input_pins
from edge.config.sharing import relay_pins

if TYPE_CHECKING:
    from edge.config.schema import Config

Key = tuple[str, ...]
Problems = list[tuple[Loc, str]]

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


def _problem(config: Config, key: Key, unit: str, limits: tuple[Key, ...]) -> tuple[Loc, str] | None:
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
        return exceeded[0], f"below {name} = {value:g} {unit} (its default; not set in the file): set {name}, {allowed}"
    above = "; ".join(f"above {'.'.join(k)} = {bounds['.'.join(k)]:g} {unit}" for k in exceeded)
    return key, f"{above}: {allowed}"


def setpoint_problems(config: Config) -> list[tuple[Loc, str]]:
    """Every ``[control]`` set-point above a limit, located at the set-point's key (or at the limit that the
    file lowered below a set-point it leaves at its default)."""
    return [p for key, (unit, lims) in SETPOINT_LIMITS.items() if (p := _problem(config, key, unit, lims))]


# --- connectors (issue 14) ----------------------------------------------------------------------------
# A connector's voltage maximum must not exceed what the output, the modules and the over-voltage trip allow
# (above the trip, a session at the connector's maximum would end in an over_voltage trip).
CONNECTOR_VOLTAGE_LIMITS: tuple[Key, ...] = (
    ("limits", "max_output_voltage_v"),
    ("power_modules", "max_voltage_v"),
    ("limits", "over_voltage", "max_v"),
)


def connector_problems(config: Config) -> list[tuple[Loc, str]]:
    """What ``[[connector]]`` tables get wrong against the rest of the file (nothing without connectors: the
    legacy connector is built from keys validated already)."""
    if not config.connector:
        return []
    return (
        _connector_names(config)
        + _cable_problems(config)
        + _module_problems(config)
        + _everest_id_problems(config)
        + _connector_limit_problems(config)
        + _fixed_request_problems(config)
    )


def _connector_names(config: Config) -> list[tuple[Loc, str]]:
    seen: set[str] = set()
    out: list[tuple[Loc, str]] = []
    for i, conn in enumerate(config.connector):
        if conn.name in seen:
            out.append((("connector", i, "name"), f"connector names must be unique: {conn.name!r} used twice"))
        seen.add(conn.name)
    return out


def _owners(config: Config, key: str, known: list[Any], unknown: str, taken: str) -> tuple[dict[Any, str], Problems]:
    """Each item a connector lists under ``key`` must be ``known`` and listed by that connector only:
    ``(item -> its connector, problems)``. ``unknown`` / ``taken`` format the messages (``{conn}``, ``{item}``,
    ``{known}``, ``{owner}``)."""
    owner: dict[Any, str] = {}
    out: Problems = []
    for i, conn in enumerate(config.connector):
        for item in dict.fromkeys(getattr(conn, key)):
            if item not in known:
                msg = unknown.format(conn=repr(conn.name), item=repr(item), known=known)
            elif item in owner:
                msg = taken.format(conn=repr(conn.name), item=repr(item), owner=repr(owner[item]))
            else:
                owner[item] = conn.name
                continue
            out.append((("connector", i, key), msg))
    return owner, out


def _cable_problems(config: Config) -> Problems:
    """Every ``[[cable]]`` protects exactly one connector; a connector names only existing cables."""
    owner, out = _owners(
        config,
        "cables",
        [c.name for c in config.cable],
        "connector {conn}: {item} is not a [[cable]] name (have {known})",
        "connector {conn}: cable {item} already protects connector {owner}: "
        "every [[cable]] belongs to exactly one connector",
    )
    names = [c.name for c in config.connector]
    out += [
        (
            ("cable", i, "name"),
            f"cable {c.name!r} protects no connector: add it to the cables of one of {names}, or remove this [[cable]]",
        )
        for i, c in enumerate(config.cable)
        if c.name not in owner
    ]
    return out


def _module_problems(config: Config) -> Problems:
    """Every module address of a connector is a configured module, and feeds that connector only."""
    return _owners(
        config,
        "modules",
        list(config.power_modules.addresses),
        "connector {conn}: module {item} is not in power_modules.addresses = {known}",
        "connector {conn}: module {item} already feeds connector {owner}: each module feeds one connector",
    )[1]


def _everest_id_problems(config: Config) -> list[tuple[Loc, str]]:
    seen: dict[str, str] = {}
    out: list[tuple[Loc, str]] = []
    for i, conn in enumerate(config.connector):
        module_id = conn.everest_module_id
        if module_id and module_id in seen:
            msg = (
                f"connector {conn.name!r}: {module_id!r} is already the module id of connector {seen[module_id]!r}: "
                "one power_supply_DC_API module per connector"
            )
            out.append((("connector", i, "everest_module_id"), msg))
        seen.setdefault(module_id, conn.name)
    ovm: dict[str, str] = {}
    for i, conn in enumerate(config.connector):
        module_id = conn.everest_ovm_module_id
        if module_id and module_id in ovm:
            msg = f"connector {conn.name!r}: {module_id!r} is already the over_voltage_monitor of {ovm[module_id]!r}"
            out.append((("connector", i, "everest_ovm_module_id"), msg))
        ovm.setdefault(module_id, conn.name)
    return out


def _connector_limit_problems(config: Config) -> list[tuple[Loc, str]]:
    """A connector's hardware maximum within the cabinet's limits."""
    out: list[tuple[Loc, str]] = []
    bounds = {".".join(k): float(_get(config, k)) for k in CONNECTOR_VOLTAGE_LIMITS}
    high_v = min(bounds.values())
    max_a = config.limits.max_output_current_a
    for i, conn in enumerate(config.connector):
        if conn.max_voltage_v > high_v:
            above = "; ".join(f"above {k} = {v:g} V" for k, v in bounds.items() if conn.max_voltage_v > v)
            out.append(
                (
                    ("connector", i, "max_voltage_v"),
                    f"{above}: allowed {conn.min_voltage_v:g} < max_voltage_v <= {high_v:g} V "
                    f"(the lowest of {', '.join(bounds)})",
                )
            )
        if conn.max_current_a > max_a:
            out.append(
                (
                    ("connector", i, "max_current_a"),
                    f"above limits.max_output_current_a = {max_a:g} A (the most any output may carry): "
                    f"allowed 0 < max_current_a <= {max_a:g} A",
                )
            )
    return out


def _fixed_request_problems(config: Config) -> list[tuple[Loc, str]]:
    """A connector with ``request = "fixed"`` runs a permanent session at the ``[control]`` set-points: they
    must fit its range."""
    control = config.control
    out: list[tuple[Loc, str]] = []
    for i, conn in enumerate(config.connector):
        if conn.request != "fixed":
            continue
        v, a = control.output_voltage_v, control.requested_current_a
        if v > conn.max_voltage_v:
            out.append(
                _fixed(
                    config,
                    i,
                    "output_voltage_v",
                    "max_voltage_v",
                    "above",
                    f"{conn.min_voltage_v:g}..{conn.max_voltage_v:g} V",
                )
            )
        elif v < conn.min_voltage_v:
            out.append(
                _fixed(
                    config,
                    i,
                    "output_voltage_v",
                    "min_voltage_v",
                    "below",
                    f"{conn.min_voltage_v:g}..{conn.max_voltage_v:g} V",
                )
            )
        if a > conn.max_current_a:
            out.append(
                _fixed(config, i, "requested_current_a", "max_current_a", "above", f"0..{conn.max_current_a:g} A")
            )
    return out


def _fixed(config: Config, i: int, setpoint: str, bound: str, side: str, allowed: str) -> tuple[Loc, str]:
    """The problem at the set-point when the file sets it, else at the connector's bound (the key the file has)."""
    conn = config.connector[i]
    value = getattr(config.control, setpoint)
    unit = "V" if setpoint.endswith("_v") else "A"
    limit = getattr(conn, bound)
    if setpoint in config.control.model_fields_set:
        return (
            ("control", setpoint),
            f'{side} connector {conn.name!r} {bound} = {limit:g} {unit} (its request = "fixed" runs at this '
            f"set-point): allowed {allowed}",
        )
    other = "below" if side == "above" else "above"
    return (
        ("connector", i, bound),
        f"{other} control.{setpoint} = {value:g} {unit} (its default; not set in the file), which request = "
        f'"fixed" runs at: set control.{setpoint}, allowed {allowed}',
    )


def pin_problems(config: Config) -> list[tuple[Loc, str]]:
    """Every output and input pin used once. With ``[[connector]]`` tables each connector has its own
    contactor and ``outputs.contactor`` is not used: refused when the file sets it to another pin than its
    default (it would look wired and control nothing)."""
    pins: list[tuple[Loc, str, str]] = []
    out: list[tuple[Loc, str]] = []
    outputs = config.outputs
    if not config.connector:
        pins.append((("outputs", "contactor"), outputs.contactor, "outputs.contactor"))
    elif (
        "contactor" in outputs.model_fields_set and outputs.contactor != type(outputs).model_fields["contactor"].default
    ):
        # at its default it is ignored: a config dumped and validated again (the simulator patches its
        # config that way) has every key "set"
        out.append(
            (
                ("outputs", "contactor"),
                "not used when the file has [[connector]] tables (each has its own contactor): "
                "remove it from [outputs] and set contactor in the [[connector]] it belongs to",
            )
        )
    pins += [(("outputs", "pump"), outputs.pump, "outputs.pump"), (("outputs", "fan"), outputs.fan, "outputs.fan")]
    for i, conn in enumerate(config.connector):
        pins.append((("connector", i, "contactor"), conn.contactor, f"connector {conn.name!r} contactor"))
        if conn.contactor_feedback:
            label = f"connector {conn.name!r} contactor_feedback"
            pins.append((("connector", i, "contactor_feedback"), conn.contactor_feedback, label))
    pins += input_pins(config)
    pins += relay_pins(config)
    first: dict[str, str] = {}
    for loc, pin, label in pins:
        if pin.strip() in first:
            out.append((loc, f"pin {pin!r} is already {first[pin.strip()]}: every pin may be used once"))
        first.setdefault(pin.strip(), label)
    return out


def connector_notes(config: Config) -> list[str]:
    """What is allowed but worth a line from ``edge config check`` (the file still loads, exit 0)."""
    if not config.connector:
        block = connector_block(legacy_connector(config))
        return [
            "no [[connector]] table: one connector is built from the old single-output keys (outputs.contactor, "
            "every [[cable]], every power_modules.addresses, limits.max_output_current_a and _voltage_v, a fixed "
            "request at the [control] set-points). To say the same explicitly, add the block below and remove "
            'contactor from [outputs] (for EVerest: request = "everest" and everest_module_id; docs/CONFIG.md, '
            f'"Connectors"):\n{block}'
        ]
    if config.sharing is not None:  # modules move between connectors: a connector's list is only its home
        return _unused_notes(config)
    return _module_current_notes(config) + _unused_notes(config)


def _module_current_notes(config: Config) -> list[str]:
    per_module = config.power_modules.max_current_a
    out = []
    for i, conn in enumerate(config.connector):
        modules_a = len(set(conn.modules)) * per_module
        if conn.max_current_a > modules_a:
            out.append(
                f"connector[{i}].max_current_a = {conn.max_current_a:g} A: connector {conn.name!r} has "
                f"{len(set(conn.modules))} module(s) x power_modules.max_current_a = {per_module:g} A = "
                f"{modules_a:g} A; it never gets more than its modules give (at most {modules_a:g} A)"
            )
    return out


def _unused_notes(config: Config) -> list[str]:
    used = {m for conn in config.connector for m in conn.modules}
    if config.sharing is not None:  # with [sharing] every module is in a group with a relay (checked)
        used = {m for g in config.module_group for m in g.modules}
    idle = [m for m in config.power_modules.addresses if m not in used]
    out = []
    if idle:
        out.append(f"power_modules.addresses {idle} feed no connector: they charge nothing")
    out += [
        f'connector[{i}].everest_module_id = "{conn.everest_module_id}" is not used: request = "{conn.request}"'
        for i, conn in enumerate(config.connector)
        if conn.everest_module_id and conn.request != "everest"
    ]
    everest = config.everest
    files = [k for k in ("ca_file", "cert_file", "key_file") if getattr(everest, k)]
    if files and not everest.tls:
        out.append(f"everest.{', everest.'.join(files)} not used: everest.tls = false")
    return out
