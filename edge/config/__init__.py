"""Load and validate the TOML configuration.

Errors name the file, the line where it can be found, the key path, the offending value and what is
allowed, e.g. ``/etc/cabinet-edge/config.toml:42: limits.pin_temperature.trip_c = 300: Input should be
less than or equal to 200``; the value of a secret key (``edge.redaction``) is shown as ``<redacted>``.
Unknown keys are errors.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.config.base import Problems
from edge.config.connectors import Connector, Everest, Session
from edge.config.schema import Config
from edge.redaction import REDACTED, is_secret_key

__all__ = ["Config", "ConfigError", "Connector", "Everest", "Problem", "Session", "load_config", "parse_config"]


@dataclass(frozen=True)
class Problem:
    """One problem of a config file, for a person (``str()``) and for a program (``edge config check --json``:
    :meth:`as_json`). ``line`` is None only when nothing of the key is in the file (a required table left out);
    ``key`` is "" for the file as a whole (not found, not TOML); ``allowed`` is what the key takes, when known.
    """

    file: str
    line: int | None
    key: str
    message: str
    allowed: str | None = None
    value: str = ""  # `` = 5`` as shown after the key (secrets redacted), "" when not shown

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}{self.value}: {self.message}" if self.key else f"{where}: {self.message}"

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["value"]
        return out


class ConfigError(Exception):
    """A configuration that must not be used. ``str()`` is the full message for a technician; ``problems`` are
    its lines, ``details`` the same as :class:`Problem` objects (file, line, key, message, allowed)."""

    def __init__(self, path: str, problems: list[str] | list[Problem]) -> None:
        self.path = path
        self.details = [p if isinstance(p, Problem) else Problem(path, None, "", p) for p in problems]
        self.problems = [str(p) for p in problems]
        super().__init__("\n".join(self.problems))


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), [Problem(str(p), None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), [Problem(str(p), None, "", f"cannot read: {exc}")]) from None
    return parse_config(text, str(p))


_TOML_AT = re.compile(r"\(at line (\d+), column \d+\)")


def parse_config(text: str, path: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        at = _TOML_AT.search(str(exc))
        raise ConfigError(
            path, [Problem(path, int(at.group(1)) if at else None, "", f"not valid TOML: {exc}")]
        ) from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            path, [problem for err in exc.errors() for problem in _describe_all(path, text, data, err)]
        ) from None


def _describe_all(path: str, text: str, data: dict[str, Any], err: Any) -> list[Problem]:
    """One problem per key: a cross-key check (:class:`Problems`) may report several, each at its key."""
    found = (err.get("ctx") or {}).get("error")
    if isinstance(found, Problems):
        return [_describe(path, text, data, [*err["loc"], *loc], "value_error", msg) for loc, msg in found.problems]
    return [_describe(path, text, data, list(err["loc"]), err["type"], err["msg"].removeprefix("Value error, "))]


_ALLOWED_IN = re.compile(r"\ballowed (.+)$")


def _describe(path: str, text: str, data: dict[str, Any], loc: list[Any], kind: str, msg: str) -> Problem:
    key = _key_path(loc)
    line = _find_line(text, loc)
    if kind == "extra_forbidden":
        keys = ", ".join(_allowed(loc))
        return Problem(path, line, key, f"unknown key (typo?); allowed keys: {keys}", keys)
    if kind == "missing":
        return Problem(path, line, key, "required key is missing", _allowed_values(loc) or None)
    msg = msg.removeprefix("Value error, ")
    allowed: str | None = None
    if kind.endswith(("_type", "_parsing")) or kind.startswith(("greater_than", "less_than")):
        allowed = _allowed_values(loc) or None
        msg += f" (allowed: {allowed})" if allowed else ""
    elif found := _ALLOWED_IN.search(msg):
        allowed = found.group(1)  # a cross-key check says it in its message: "...: allowed 50..1000 V"
    return Problem(path, line, key, msg, allowed, _shown_value(loc, _lookup(data, loc)))


def _shown_value(loc: list[Any], value: Any) -> str:
    """`` = value`` for the message, never the value of a secret key (it would reach the journal)."""
    if value is _MISSING or isinstance(value, (dict, list)):
        return ""
    if any(is_secret_key(str(part)) for part in loc):
        return f" = {REDACTED}"
    return f" = {value!r}"


def _key_path(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


_MISSING = object()


def _lookup(data: Any, loc: list[Any]) -> Any:
    cur = data
    for part in loc:
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return cur


def _allowed(loc: list[Any]) -> list[str]:
    model = _model_at(loc[:-1])
    return sorted(model.model_fields) if model is not None else []


def _model_at(loc: list[Any]) -> Any:
    """The section model at ``loc`` (list indexes skipped), None when ``loc`` is not a section."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _inner(field.annotation)
        if not hasattr(model, "model_fields"):
            return None
    return model


def _inner(ann: Any) -> Any:
    """``X`` of ``list[X]`` and of ``X | None``; else ``ann``."""
    args = [a for a in getattr(ann, "__args__", ()) if a is not type(None)]
    return args[0] if args else ann


def _allowed_values(loc: list[Any]) -> str:
    """What a number or bool key takes, e.g. ``integer 10..1000`` or ``true or false`` (for type and bound
    errors: strict types refuse ``"100"`` and ``"yes"``, the technician needs to see what to write)."""
    model = _model_at(loc[:-1])
    field = model.model_fields.get(loc[-1]) if model is not None and loc else None
    if field is None:
        return ""
    ann = _inner(field.annotation)
    if ann is bool:
        return "true or false"
    kind = {int: "integer", float: "number"}.get(ann)
    if kind is None:
        return ""
    low, high = _bounds(field.metadata)
    if low and high:
        return f"{kind} {low}..{high}"
    return " ".join(filter(None, (kind, low and f"from {low}", high and f"up to {high}")))


def _bounds(metadata: list[Any]) -> tuple[str, str]:
    """The lower and upper bound of a number key as text (``10``, ``>0``, ``<5``), empty when unbounded."""
    found = {
        attr: getattr(meta, attr)
        for meta in metadata
        for attr in ("ge", "gt", "le", "lt")
        if getattr(meta, attr, None) is not None
    }
    low = f"{found['ge']:g}" if "ge" in found else (f">{found['gt']:g}" if "gt" in found else "")
    high = f"{found['le']:g}" if "le" in found else (f"<{found['lt']:g}" if "lt" in found else "")
    return low, high


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?")


_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=")


def _find_line(text: str, loc: list[Any]) -> int | None:
    """Best-effort line number of the key at ``loc`` (TOML parsers keep no positions): the line that sets the
    key (also as a dotted key or inside an inline table: ``pin_temperature.trip_c = 90`` or ``pin_temperature
    = {...}`` under ``[limits]``), else the header of its table, else of the nearest enclosing table in the
    file (a key left at its default), else None (nothing of it in the file)."""
    names = [str(p) for p in loc if not isinstance(p, int)]
    index = next((p for p in loc if isinstance(p, int)), None)
    n_tables = len(names) - 1 if loc and not isinstance(loc[-1], int) else len(names)
    best: tuple[int, int] | None = None  # (how many names it covers, line): the most specific wins
    for n, table, nth, line in _lines(text, names[0] if names else ""):
        if index is not None and nth != index and table.split(".")[0] == names[0]:
            continue  # another entry of the [[array]]
        covered = _covers(names, n_tables, table.split(".") if table else [], line)
        if covered > 0 and (best is None or covered > best[0]):
            best = (covered, n)
    return best[1] if best else None


def _covers(names: list[str], n_tables: int, table: list[str], line: str | None) -> int:
    """How much of the key path ``names`` a line gives: a header the table or an enclosing one (its length), a
    key line the path it sets (+1 when it is the key itself); 0 when it is about something else."""
    if table != names[: len(table)]:
        return 0
    if line is None:
        return len(table) if len(table) <= n_tables else 0
    m = _KEY.match(line)
    full = table + ([k.strip() for k in m.group(1).split(".")] if m else [])
    if not m or full != names[: len(full)]:
        return 0
    return len(full) + (1 if full == names else 0)


def _lines(text: str, array: str) -> Iterator[tuple[int, str, int, str | None]]:
    """(line number, table it is in, which ``[[array]]`` entry that is (0-based, -1 before the first),
    the line, or None for a table header)."""
    table, nth = "", -1
    for n, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m is None:
            yield n, table, nth, line
            continue
        table = m.group(2)
        if m.group(1) == "[[" and table == array:
            nth += 1
        yield n, table, nth, None
