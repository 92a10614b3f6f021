"""Generate the key reference of docs/CONFIG.md from the pydantic models (the one place of each fact).

``python -m edge.config_doc --write docs/CONFIG.md`` rewrites the part between the markers;
``--check`` exits 1 when the file is out of date (tests/test_cli_config_doc.py runs the check).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from edge.config.schema import Config

BEGIN = "<!-- BEGIN GENERATED: python -m edge.config_doc --write docs/CONFIG.md -->"
END = "<!-- END GENERATED -->"

# unit from the key's suffix (STYLE: units in names); longest suffix first
UNITS = (
    ("_a_per_s", "A/s"),
    ("_c_per_s", "°C/s"),
    ("_lpm", "l/min"),
    ("_ms", "ms"),
    ("_mb", "MB"),
    ("_kw", "kW"),
    ("_bar", "bar"),
    ("_a", "A"),
    ("_v", "V"),
    ("_c", "°C"),
    ("_s", "s"),
)


KEY_UNITS = {"baudrate": "bit/s", "bitrate": "bit/s", "efficiency": "ratio", "addresses": "-"}


def unit_of(key: str) -> str:
    if key in KEY_UNITS:
        return KEY_UNITS[key]
    return next((u for suffix, u in UNITS if key.endswith(suffix)), "")


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model class, repeated) when the annotation is a section, a list of sections, or neither."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # an optional section ([sharing])
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _model_of(args[0])
    if typing.get_origin(annotation) is list:
        (inner,) = typing.get_args(annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner, True
    return None, False


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a!r}`".replace("'", '"') for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_type_text(a) for a in args) + " (optional)"
    if origin is list:
        return f"list of {_type_text(typing.get_args(annotation)[0])}"
    return {bool: "true/false", int: "integer", float: "number", str: "string"}.get(annotation, str(annotation))


def _range_text(field: FieldInfo) -> str:
    parts = []
    for m in field.metadata:
        for attr, sym in (
            ("ge", ">="),
            ("gt", ">"),
            ("le", "<="),
            ("lt", "<"),
            ("min_length", "min length"),
            ("max_length", "max length"),
        ):
            value = getattr(m, attr, None)
            if value is not None:
                parts.append(f"{sym} {value:g}" if isinstance(value, (int, float)) else f"{sym} {value}")
        if getattr(m, "pattern", None):
            parts.append(f"pattern `{m.pattern}`")
    return ", ".join(parts)


def _default_text(field: FieldInfo, parent_default: BaseModel | None, key: str) -> str:
    if parent_default is not None:
        value = getattr(parent_default, key)
    elif field.is_required():
        return "**required**"
    elif field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def sections(
    model: type[BaseModel], path: str = "", default: BaseModel | None = None, repeated: bool = False
) -> list[str]:
    rows: list[str] = []
    nested: list[str] = []
    for key, field in model.model_fields.items():
        sub, sub_repeated = _model_of(field.annotation)
        if sub is not None:
            sub_default = None
            if not sub_repeated:
                sub_default = (
                    getattr(default, key)
                    if default is not None
                    else (field.default if isinstance(field.default, BaseModel) else None)
                )
            nested += sections(sub, f"{path}.{key}" if path else key, sub_default, sub_repeated)
            continue
        rows.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in (
                    f"`{key}`",
                    unit_of(key),
                    _type_text(field.annotation),
                    _default_text(field, default, key),
                    _range_text(field),
                    field.description or "",
                )
            )
            + " |"
        )
    out: list[str] = []
    if rows:
        header = f"[[{path}]]" if repeated else f"[{path}]"
        doc = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split()).replace("``", "`")
        out += [f"### `{header}`", ""]
        if repeated:
            out += ["Repeatable: one table per device, line or connector.", ""]
        if doc and not doc.startswith("A base class"):
            out += [doc, ""]
        out += ["| key | unit | type | default | allowed | meaning |", "|---|---|---|---|---|---|", *rows, ""]
    return out + nested


def generate() -> str:
    return "\n".join([BEGIN, "", *sections(Config), END])


def update(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + generate() + text[end:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("file", nargs="?", default="docs/CONFIG.md")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    path = Path(args.file)
    current = path.read_text(encoding="utf-8")
    fresh = update(current)
    if args.check:
        if fresh != current:
            print(f"{path} is out of date: run python -m edge.config_doc --write {path}", file=sys.stderr)
            return 1
        return 0
    path.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
