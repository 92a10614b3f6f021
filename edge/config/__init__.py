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
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.config.base import Problems
from edge.config.connectors import Connector, Everest, Session
from edge.config.schema import Config
from edge.redaction import REDACTED, is_secret_key

__all__ = ["Config", "ConfigError", "Connector", "Everest", "Session", "load_config", "parse_config"]


class ConfigError(Exception):
    """A configuration that must not be used. ``str()`` is the full message for a technician."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), [f"{p}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), [f"{p}: cannot read: {exc}"]) from None
    return parse_config(text, str(p))


def parse_config(text: str, path: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"{path}: not valid TOML: {exc}"]) from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            path, [line for err in exc.errors() for line in _describe_all(path, text, data, err)]
        ) from None


def _describe_all(path: str, text: str, data: dict[str, Any], err: Any) -> list[str]:
    """One line per problem: a cross-key check (:class:`Problems`) may report several, each at its key."""
    found = (err.get("ctx") or {}).get("error")
    if isinstance(found, Problems):
        return [_describe(path, text, data, [*err["loc"], *loc], "value_error", msg) for loc, msg in found.problems]
    return [_describe(path, text, data, list(err["loc"]), err["type"], err["msg"].removeprefix("Value error, "))]


def _describe(path: str, text: str, data: dict[str, Any], loc: list[Any], kind: str, msg: str) -> str:
    key = _key_path(loc)
    line = _find_line(text, loc)
    where = f"{path}:{line}" if line else path
    if kind == "extra_forbidden":
        return f"{where}: {key}: unknown key (typo?); allowed keys: {', '.join(_allowed(loc))}"
    if kind == "missing":
        return f"{where}: {key}: required key is missing"
    msg = msg.removeprefix("Value error, ")
    if kind.endswith(("_type", "_parsing")) or kind.startswith(("greater_than", "less_than")):
        allowed = _allowed_values(loc)
        msg += f" (allowed: {allowed})" if allowed else ""
    return f"{where}: {key}{_shown_value(loc, _lookup(data, loc))}: {msg}"


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


def _find_line(text: str, loc: list[Any]) -> int | None:
    """Best-effort line number of the key at ``loc`` (TOML parsers keep no positions): the line of the key
    in its table, else the table's header line (a key left at its default), else None."""
    tables = [str(p) for p in loc[:-1] if not isinstance(p, int)]
    want_table = ".".join(tables)
    index = next((p for p in loc if isinstance(p, int)), None)
    key = _key_line(loc[-1] if loc else None)
    header_line = None
    for n, table, nth, line in _lines(text, tables[0] if tables else ""):
        if table != want_table or (index is not None and nth != index):
            continue
        if line is None:
            header_line = n
        elif key.match(line):
            return n
    return header_line


def _key_line(leaf: Any) -> re.Pattern[str]:
    """The line that sets ``leaf``; a list index (or nothing) is no key: a pattern that never matches."""
    if leaf is None or isinstance(leaf, int):
        return re.compile(r"(?!)")
    return re.compile(rf"^\s*{re.escape(str(leaf))}\s*=")


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
