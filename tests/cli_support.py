"""Helpers for the CLI/API tests: set config keys in the sim config text whatever it already holds."""

from __future__ import annotations

import re
from typing import Any


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def toml_set(text: str, section: str, **keys: Any) -> str:
    """``[section] key = value`` in ``text``: replaces keys the table has, adds the others or the table."""
    lines = text.splitlines()
    header = re.compile(rf"^\s*\[{re.escape(section)}\]\s*(#.*)?$")
    start = next((i for i, ln in enumerate(lines) if header.match(ln)), None)
    new = [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
    if start is None:
        return text.rstrip("\n") + f"\n\n[{section}]\n" + "\n".join(new) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    body = [ln for ln in lines[start + 1 : end] if not any(re.match(rf"^\s*{re.escape(k)}\s*=", ln) for k in keys)]
    return "\n".join([*lines[: start + 1], *new, *body, *lines[end:]]) + "\n"


def quiet_sim(text: str, **sections: dict[str, Any]) -> str:
    """The sim config without an MQTT uplink (no broker in these tests), plus ``sections``."""
    text = toml_set(text, "telemetry.mqtt", enabled=False)
    for name, keys in sections.items():
        text = toml_set(text, name.replace("__", "."), **keys)
    return text
