"""docs/CONFIG.md's key reference is generated from the models and must match them."""

from __future__ import annotations

from edge.config_doc import BEGIN, END, generate, unit_of, update
from tests.conftest import REPO


def test_config_reference_is_up_to_date():
    text = (REPO / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert update(text) == text, "docs/CONFIG.md is out of date: python -m edge.config_doc --write docs/CONFIG.md"


def test_reference_lists_every_section_with_unit_default_and_range():
    doc = generate()
    assert doc.startswith(BEGIN) and doc.endswith(END)
    for header in (
        "### `[cabinet]`",
        "### `[[meters]]`",
        "### `[limits.pin_temperature]`",
        "### `[api]`",
        "### `[telemetry.mqtt.tls]`",
    ):
        assert header in doc, header
    assert "| `trip_c` | °C | number | 95 | >= -40, <= 200 |" in doc  # default from the parent's instance
    assert "| `trip_c` | °C | number | 65 | >= -40, <= 200 |" in doc  # coolant: another default
    assert "| `max_output_current_a` | A | number | 200 | > 0, <= 1000 |" in doc
    assert "| `site_id` |  | string | **required** |" in doc


def test_units_come_from_key_suffixes():
    assert [
        unit_of(k)
        for k in ("fuse_a", "tick_ms", "ramp_up_a_per_s", "coolant_flow_lpm", "interval_s", "baudrate", "latch")
    ] == ["A", "ms", "A/s", "l/min", "s", "bit/s", ""]
