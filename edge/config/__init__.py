"""Load and validate the TOML configuration.

Errors name the file, the line where it can be found, the key path, the offending value and what is
allowed, e.g. ``/etc/cabinet-edge/config.toml:42: limits.pin_temperature.trip_c = 300: Input should be
less than or equal to 200``; the value of a secret key (``edge.redaction``) is shown as ``<redacted>``.
Unknown keys are errors.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.config.schema import Config
from edge.redaction import REDACTED, is_secret_key

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]


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
        raise ConfigError(path, [_describe(path, text, data, err) for err in exc.errors()]) from None


def _describe(path: str, text: str, data: dict[str, Any], err: Any) -> str:
    loc = [p for p in err["loc"]]
    key = _key_path(loc)
    where = f"{path}:{_find_line(text, loc)}" if _find_line(text, loc) else path
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return f"{where}: {key}: unknown key (typo?); allowed keys: {', '.join(_allowed(loc))}"
    if err["type"] == "missing":
        return f"{where}: {key}: required key is missing"
    msg = msg.removeprefix("Value error, ")
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
    model: Any = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", None)
        model = args[0] if args else ann
        if not hasattr(model, "model_fields"):
            return []
    return sorted(model.model_fields)


def _find_line(text: str, loc: list[Any]) -> int | None:
    """Best-effort line number of the key at ``loc`` (TOML parsers keep no positions)."""
    tables = [str(p) for p in loc[:-1] if not isinstance(p, int)]
    want_table = ".".join(tables)
    index = next((p for p in loc if isinstance(p, int)), None)
    leaf = loc[-1] if loc and not isinstance(loc[-1], int) else None
    current, seen = "", -1
    header = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?")
    fallback = None
    for n, line in enumerate(text.splitlines(), 1):
        m = header.match(line)
        if m:
            current = m.group(1)
            if line.strip().startswith("[[") and current == (tables[0] if tables else ""):
                seen += 1
            if current == want_table and (index is None or seen == index):
                fallback = n
            continue
        if leaf is not None and current == want_table and (index is None or seen == index):
            if re.match(rf"^\s*{re.escape(str(leaf))}\s*=", line):
                return n
        if leaf is not None and not tables and current == "" and re.match(rf"^\s*{re.escape(str(leaf))}\s*=", line):
            return n
    return fallback
