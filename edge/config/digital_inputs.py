"""Config of the cabinet's digital safety inputs: ``[[input]]`` (issue 15: emergency stop, door, water, tilt).

One table per input. The pin's backend is ``outputs.backend`` (one board); pins are checked against every
other pin in ``edge/config/crosschecks.py``. Behaviour, wiring advice and defaults: docs/SAFETY.md
"Emergency stop, door, water, tilt"; the rules: ``edge/limits/safety_inputs.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from edge.config.base import Loc, Section, check

if TYPE_CHECKING:
    from edge.config.schema import Config

FUNCTIONS = ("estop", "door", "water", "tilt")
DOOR_ACTION_DEFAULT = "stop"
DOOR_DERATE_DEFAULT_A = 50.0


class DigitalInput(Section):
    """One digital safety input. Wire safety inputs as normally-closed loops (``wiring = "nc"``): a cut wire
    then reads as pressed / open."""

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="input name in status, events and fault details; unique"
    )
    pin: str = Field(min_length=1, description="input pin (chip:line on linux, any name in sim); unique")
    function: Literal["estop", "door", "water", "tilt"] = Field(
        description="estop: emergency stop; door: cabinet door; water: water ingress sensor; tilt: tilt switch"
    )
    active: Literal["low", "high"] = Field("low", description="level the pin reads while the contact conducts (closed)")
    wiring: Literal["nc", "no"] = Field(
        "nc",
        description="nc: ACTIVE when the contact does not conduct (pressed, open loop, cut wire); no: ACTIVE "
        "when it conducts (a cut wire is not seen)",
    )
    debounce_ms: int = Field(10, ge=0, le=1000, description="a change counts once it has held this long")
    door_action: Literal["stop", "derate"] = Field(
        "stop",
        description='function = "door" only: door open during a session stops every connector, or derates '
        "each to door_derate_a",
    )
    door_derate_a: float = Field(
        DOOR_DERATE_DEFAULT_A,
        ge=0,
        le=1000,
        description='function = "door" with door_action = "derate": most current per connector while open',
    )

    @model_validator(mode="after")
    def _door_keys(self) -> DigitalInput:
        check(
            [
                ((key,), f'only for function = "door" (this input is {self.function!r})')
                for key in ("door_action", "door_derate_a")
                # at its default it is harmless: a config dumped and validated again has every key "set"
                if self.function != "door"
                and key in self.model_fields_set
                and getattr(self, key) != type(self).model_fields[key].default
            ]
        )
        return self


def input_problems(config: Config) -> list[tuple[Loc, str]]:
    """Names unique; the door settings the same on every door input (one rule for the cabinet)."""
    out: list[tuple[Loc, str]] = []
    seen: set[str] = set()
    for i, inp in enumerate(config.input):
        if inp.name in seen:
            out.append((("input", i, "name"), f"input names must be unique: {inp.name!r} used twice"))
        seen.add(inp.name)
    doors = [(i, d) for i, d in enumerate(config.input) if d.function == "door"]
    for i, d in doors[1:]:
        first = doors[0][1]
        for key in ("door_action", "door_derate_a"):
            if getattr(d, key) != getattr(first, key):
                out.append(
                    (
                        ("input", i, key),
                        f"every door input must have the same {key} (input {first.name!r} has {getattr(first, key)!r})",
                    )
                )
    return out


def input_pins(config: Config) -> list[tuple[Loc, str, str]]:
    """(location, pin, label) of every input, for the pin-owner check."""
    return [(("input", i, "pin"), inp.pin, f"input {inp.name!r}") for i, inp in enumerate(config.input)]


def safety_inputs_config(inputs: Sequence[DigitalInput]) -> dict[str, object]:
    """The ``safety_inputs`` section of the safety core's config (edge/limits/safety_inputs.py)."""
    door = next((d for d in inputs if d.function == "door"), None)
    return {
        "door_action": door.door_action if door else DOOR_ACTION_DEFAULT,
        "door_derate_a": door.door_derate_a if door else DOOR_DERATE_DEFAULT_A,
    }
