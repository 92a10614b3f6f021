"""The JSON Schema of every MQTT payload, shipped in the package (edge/schemas/mqtt-v1.schema.json)."""

from __future__ import annotations

import importlib.resources
import json
from typing import Any

SCHEMA_FILE = "schemas/mqtt-v1.schema.json"
DEF_BY_LEAF = {
    "telemetry": "telemetry",
    "events": "events",
    "status": "status",
    "state": "state",
    "cmd-result": "cmd_result",
}


def load() -> dict[str, Any]:
    text = importlib.resources.files("edge").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return dict(json.loads(text))


def for_topic_leaf(leaf: str) -> dict[str, Any]:
    """The schema of the payloads on ``<base>/<leaf>`` (a $ref into the shipped file)."""
    root = load()
    return {"$schema": root["$schema"], "$defs": root["$defs"], "$ref": f"#/$defs/{DEF_BY_LEAF[leaf]}"}
