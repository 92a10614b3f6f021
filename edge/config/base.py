"""Base model for every config section: unknown keys are errors, values are immutable after load, types
are strict.

A typo in safety configuration (``trip_temp_c`` for ``trip_c``) must stop start-up, not be ignored; so
must a value of the wrong type: ``tick_ms = "100"`` or ``remote_clear_allowed = "yes"`` is refused, not
coerced (pydantic strict mode). An integer is still accepted for a float (TOML writes ``100`` for ``100.0``),
not the other way round, and not a bool for a number.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Loc = tuple[str | int, ...]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True)


def one_of(values: Iterable[Any]) -> Any:
    """``Literal[...]`` of a driver table's names, built at import time: the allowed values of a key live in
    the driver (the one place), the config only points at them. Error messages and docs/CONFIG.md list
    them as for a written-out ``Literal``."""
    return Literal[tuple(values)]


class Problems(ValueError):
    """Problems a cross-key check found, each with the key it is about (relative to the section that
    raised it), so that ``edge config check`` can name the key and its line: ``[(("line",), "...")]``."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(msg for _, msg in problems))
        self.problems = problems


def set_in_file(section: BaseModel, preferred: str, *others: str) -> str:
    """The key a cross-key problem is reported at: ``preferred`` unless the file leaves it at its default and
    sets one of ``others`` (then that one is the value to change, and it has a line)."""
    if preferred in section.model_fields_set:
        return preferred
    return next((k for k in others if k in section.model_fields_set), preferred)


def check(problems: list[tuple[Loc, str]]) -> None:
    """Raise :class:`Problems` when there are any (for the end of a ``model_validator``)."""
    if problems:
        raise Problems(problems)
