"""Config of power sharing (issue 16): ``[sharing]``, ``[[module_group]]`` and ``[[relay]]``.

A module group is one or more power modules that always switch together (one DC bus behind one set of
relays). The relay matrix says, as data, which group may be connected to which connector: one ``[[relay]]``
per (group, connector) pair, with its output pin and its mirror-contact input. The policy in ``[sharing]``
decides which group goes where (``edge/limits/allocation.py``); the switching sequence moves a group only at
0 A with its modules off, and closes at most one relay of a group at a time (``edge/charging/sharing.py``).

Without a ``[sharing]`` section nothing changes: each ``[[connector]]`` keeps its static ``modules``. With
it, each connector's ``modules`` is its home allocation (what ``static`` uses, and where every group starts):
whole groups, each with a relay to that connector.

What "could ever parallel two connectors" means here: the switching sequence closes at most one relay of a
group, so a group alone never joins two outputs. The matrix is refused where closing relays the sequence
allows would still join two connectors' outputs:

- a relay whose group is a connector (a contact between two outputs),
- a module in two groups (it would join the two groups' buses, so group A on connector 1 and group B on
  connector 2 would parallel 1 and 2),
- two relays on one pin or one mirror contact (one coil closing a group to two connectors at once; one
  mirror contact cannot confirm two relays): pins are unique across the whole file (``pin_problems``).

A group with no relay (its modules charge nothing) and a connector no relay reaches are refused too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from edge.config.base import Loc, Section, check

if TYPE_CHECKING:
    from edge.config.schema import Config

POLICIES = ("static", "sequential", "even", "first_come", "priority")
Problems = list[tuple[Loc, str]]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$"


class SharingConnector(Section):
    """How one connector takes part in sharing; a connector without a table has the defaults."""

    name: str = Field(pattern=_NAME, description="name of the [[connector]] this applies to")
    priority: int = Field(
        0, ge=0, le=99, description="policy priority: the higher number is served first (ties: who came first)"
    )
    min_groups: int = Field(
        0, ge=0, le=64, description="groups this connector keeps while it charges, whatever the others ask"
    )
    max_groups: int = Field(64, ge=1, le=64, description="most groups this connector ever gets")

    @model_validator(mode="after")
    def _range(self) -> SharingConnector:
        if self.min_groups > self.max_groups:
            check([(("min_groups",), f"above max_groups = {self.max_groups}: allowed 0..{self.max_groups}")])
        return self


class Sharing(Section):
    """Power sharing between connectors through a relay matrix ([[module_group]], [[relay]]). Without this
    section each connector keeps its static modules."""

    policy: Literal["static", "sequential", "even", "first_come", "priority"] = Field(
        "even",
        description="static (each connector its own modules), sequential (one connector at a time, in order of "
        "arrival), even (fair share of the groups), first_come (who came first takes what it can use), "
        "priority (higher [[sharing.connector]] priority first)",
    )
    hold_s: float = Field(
        10.0, ge=0, le=600, description="least time between two re-allocations of a connector's groups, s"
    )
    module_max_power_kw: float = Field(
        40.0, gt=0, le=500, description="rated output power of one module, kW (with power_modules.max_current_a)"
    )
    relay_confirm_ms: int = Field(
        500, ge=20, le=5000, description="a relay's mirror contact must confirm within this, else group out of service"
    )
    relay_feedback_active: Literal["high", "low"] = Field(
        "high", description="input level of a closed relay's mirror contact: high (NO mirror contact) or low (NC)"
    )
    relay_feedback_debounce_ms: int = Field(
        10, ge=0, le=100, description="a relay's mirror-contact level counts once it was steady this long"
    )
    connector: list[SharingConnector] = Field(default_factory=list)

    @model_validator(mode="after")
    def _debounce_within_confirm(self) -> Sharing:
        if self.relay_feedback_debounce_ms * 2 > self.relay_confirm_ms:
            msg = (
                f"{self.relay_feedback_debounce_ms} ms leaves too little of relay_confirm_ms = "
                f"{self.relay_confirm_ms} ms: allowed at most half of it"
            )
            check([(("relay_feedback_debounce_ms",), msg)])
        return self


class ModuleGroup(Section):
    """Modules that always switch together (one DC bus behind its relays)."""

    name: str = Field(pattern=_NAME, description="group name shown in status and events, e.g. A, B")
    modules: list[int] = Field(min_length=1, description="power_modules.addresses in this group; each in one group")


class Relay(Section):
    """One contact of the matrix: closes group to connector."""

    group: str = Field(min_length=1, description="name of the [[module_group]] this relay connects")
    connector: str = Field(min_length=1, description="name of the [[connector]] it connects the group to")
    pin: str = Field(min_length=1, description="relay output pin (chip:line on linux, any name in sim); unique")
    feedback: str = Field(min_length=1, description="mirror-contact input pin of this relay; unique")


def sharing_problems(config: Config) -> Problems:
    """What ``[sharing]``, ``[[module_group]]`` and ``[[relay]]`` get wrong against the rest of the file."""
    if config.sharing is None:
        if config.module_group or config.relay:
            where: Loc = ("module_group", 0, "name") if config.module_group else ("relay", 0, "group")
            return [(where, "[[module_group]] and [[relay]] need a [sharing] section (and [[connector]] tables)")]
        return []
    if not config.connector:
        return [(("sharing", "policy"), "[sharing] needs [[connector]] tables to share modules between")]
    if not config.module_group:
        return [(("sharing", "policy"), "[sharing] needs [[module_group]] tables (the modules that switch together)")]
    return (
        _group_problems(config) + _relay_problems(config) + _home_problems(config) + _sharing_connector_problems(config)
    )


def _group_problems(config: Config) -> Problems:
    out: Problems = []
    known = list(config.power_modules.addresses)
    owner: dict[int, str] = {}
    names: set[str] = set()
    connectors = {c.name for c in config.connector}
    for i, group in enumerate(config.module_group):
        if group.name in names:
            out.append((("module_group", i, "name"), f"group names must be unique: {group.name!r} used twice"))
        names.add(group.name)
        if group.name in connectors:
            out.append((("module_group", i, "name"), f"{group.name!r} is a connector name: name groups apart"))
        for m in group.modules:
            if m not in known:
                out.append((("module_group", i, "modules"), f"module {m} is not in power_modules.addresses = {known}"))
            elif m in owner and owner[m] != group.name:
                out.append(
                    (
                        ("module_group", i, "modules"),
                        f"module {m} is already in group {owner[m]!r}: a module in two groups would join their "
                        "buses (and parallel two connectors)",
                    )
                )
            owner.setdefault(m, group.name)
    return out


def _relay_problems(config: Config) -> Problems:
    out: Problems = []
    groups = [g.name for g in config.module_group]
    connectors = [c.name for c in config.connector]
    pairs: set[tuple[str, str]] = set()
    for i, relay in enumerate(config.relay):
        if relay.group in connectors and relay.group not in groups:
            msg = (
                f"{relay.group!r} is a connector: a relay between two connectors would parallel their outputs "
                "(relays connect a [[module_group]] to a connector)"
            )
            out.append((("relay", i, "group"), msg))
        elif relay.group not in groups:
            out.append((("relay", i, "group"), f"not a [[module_group]] name (have {groups})"))
        if relay.connector not in connectors:
            out.append((("relay", i, "connector"), f"not a [[connector]] name (have {connectors})"))
        if (relay.group, relay.connector) in pairs:
            out.append((("relay", i, "connector"), f"group {relay.group!r} has a relay to this connector already"))
        pairs.add((relay.group, relay.connector))
    with_relay = {r.group for r in config.relay}
    out += [
        (("module_group", i, "name"), f"group {g.name!r} has no [[relay]]: its modules can feed no connector")
        for i, g in enumerate(config.module_group)
        if g.name not in with_relay
    ]
    reached = {r.connector for r in config.relay}
    out += [
        (("connector", i, "name"), f"connector {c.name!r} is unreachable: no [[relay]] connects a group to it")
        for i, c in enumerate(config.connector)
        if c.name not in reached
    ]
    return out


def _home_problems(config: Config) -> Problems:
    """Each connector's ``modules`` (its home allocation) are whole groups with a relay to it."""
    out: Problems = []
    group_of = {m: g.name for g in config.module_group for m in g.modules}
    members = {g.name: set(g.modules) for g in config.module_group}
    pairs = {(r.group, r.connector) for r in config.relay}
    for i, conn in enumerate(config.connector):
        loc: Loc = ("connector", i, "modules")
        loose = [m for m in conn.modules if m not in group_of]
        if loose:
            out.append((loc, f"module(s) {loose} are in no [[module_group]]: with [sharing] every module is in one"))
        for name in sorted({group_of[m] for m in conn.modules if m in group_of}):
            if not members[name] <= set(conn.modules):
                out.append((loc, f"group {name!r} only in part: a connector's modules are whole groups"))
            elif (name, conn.name) not in pairs:
                out.append((loc, f"group {name!r} has no [[relay]] to connector {conn.name!r}"))
    return out


def _sharing_connector_problems(config: Config) -> Problems:
    assert config.sharing is not None
    out: Problems = []
    reach: dict[str, int] = {}
    for r in config.relay:
        reach[r.connector] = reach.get(r.connector, 0) + 1
    seen: set[str] = set()
    names = [c.name for c in config.connector]
    for i, sc in enumerate(config.sharing.connector):
        loc: Loc = ("sharing", "connector", i)
        if sc.name not in names:
            out.append(((*loc, "name"), f"not a [[connector]] name (have {names})"))
        elif sc.name in seen:
            out.append(((*loc, "name"), f"connector {sc.name!r} has a [[sharing.connector]] table already"))
        elif sc.min_groups > reach.get(sc.name, 0):
            out.append(
                (
                    (*loc, "min_groups"),
                    f"connector {sc.name!r} has relays to {reach.get(sc.name, 0)} group(s): "
                    f"allowed 0..{reach.get(sc.name, 0)}",
                )
            )
        seen.add(sc.name)
    total_min = sum(sc.min_groups for sc in config.sharing.connector)
    if total_min > len(config.module_group):
        out.append(
            (
                ("sharing", "connector"),
                f"min_groups add up to {total_min}: more than the {len(config.module_group)} group(s)",
            )
        )
    return out


def relay_pins(config: Config) -> list[tuple[Loc, str, str]]:
    """(location, pin, label) of every relay coil and mirror contact, for the file-wide unique-pin check."""
    out: list[tuple[Loc, str, str]] = []
    for i, r in enumerate(config.relay):
        label = f"relay {r.group}->{r.connector}"
        out.append((("relay", i, "pin"), r.pin, label))
        out.append((("relay", i, "feedback"), r.feedback, f"{label} feedback"))
    return out
