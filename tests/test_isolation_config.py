"""Config of the insulation monitors and the cable-check rules (edge/config/isolation.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, parse_config
from edge.config.isolation import IsolationRule
from edge.limits import isolation
from tests.conftest import REPO

SIM_TOML = (REPO / "edge" / "sim" / "sim.toml").read_text()


def test_the_schema_defaults_are_the_cores() -> None:
    assert IsolationRule().model_dump() == isolation.DEFAULTS


def test_the_sim_cabinet_has_one_imd_per_connector() -> None:
    cfg = parse_config(SIM_TOML)
    assert {n: m.connectors for m in cfg.isolation_monitor for n in [m.name]} == {"imd1": ["1"], "imd2": ["2"]}


@pytest.mark.parametrize(
    "table, message",
    [
        ('line = "nope"', "not a [[serial]] or [[modbus_tcp]] name"),
        ('connectors = ["9"]', "no connector '9'"),
        ('connectors = ["2"]', "connector '2' is already watched by isolation monitor 'imd1'"),
    ],
)
def test_wrong_references_are_refused_at_their_key(table: str, message: str, tmp_path: Path) -> None:
    key = table.split(" = ", maxsplit=1)[0]
    old = {"line": 'line = "rs485-grid"\ndevice_id = 3', "connectors": 'connectors = ["1"]'}[key]
    new = {"line": table + "\ndevice_id = 3", "connectors": table}[key]
    text = SIM_TOML.replace(old, new, 1)
    with pytest.raises(ConfigError) as err:
        parse_config(text, "sim.toml")
    assert message in str(err.value) and "isolation_monitor" in str(err.value)


def test_the_warning_threshold_must_be_above_the_fault_threshold() -> None:
    with pytest.raises(ConfigError, match="warning_ohm_per_v"):
        parse_config(SIM_TOML + "\n[isolation]\nwarning_ohm_per_v = 80.0\n", "sim.toml")


def test_an_imd_served_to_everest_watches_one_connector_and_module_ids_are_unique() -> None:
    served = SIM_TOML.replace('name = "imd1"\n', 'name = "imd1"\neverest_module_id = "imd_a"\n')
    cfg = parse_config(served)
    assert [m.everest_module_id for m in cfg.isolation_monitor] == ["imd_a", ""]
    two = served.replace('name = "imd2"\n', 'name = "imd2"\neverest_module_id = "imd_a"\n')
    with pytest.raises(ConfigError, match="'imd_a' is the module id of another IMD"):
        parse_config(two, "sim.toml")
    both = SIM_TOML.replace('name = "imd2"', 'name = "imd2"\neverest_module_id = "imd_b"').replace(
        'connectors = ["2"]\npoll_ms', 'connectors = ["2", "3"]\npoll_ms'
    )
    with pytest.raises(ConfigError, match="must watch exactly one connector"):
        parse_config(both, "sim.toml")


def test_over_voltage_monitor_module_ids_are_unique() -> None:
    first = 'name = "1"\n'
    text = SIM_TOML.replace(first, first + 'everest_ovm_module_id = "ovm"\n', 1)
    assert parse_config(text).connector[0].everest_ovm_module_id == "ovm"
    text = text.replace('name = "2"\n', 'name = "2"\neverest_ovm_module_id = "ovm"\n', 1)
    with pytest.raises(ConfigError, match="already the over_voltage_monitor of '1'"):
        parse_config(text, "sim.toml")
