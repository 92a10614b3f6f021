"""Issue 14 item 1: connectors in the config. ``[[connector]]``, ``[everest]`` and ``[session]`` load; every
mistake between connectors, cables, modules, pins and limits is refused with file, line, key and what is
allowed; an old single-output file keeps working through ``Config.resolved_connectors()`` and
``edge config check`` prints the ``[[connector]]`` block that says the same (exit 0)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import Config, ConfigError, parse_config
from edge.config.connectors import Connector
from edge.redaction import redact, redact_toml_text
from tests.conftest import EXAMPLE_TOML, REPO, SIM_TOML, edge_env

TWO = """\
[cabinet]
site_id = "s"
cabinet_id = "c"

[[can]]
name = "can0"
interface = "virtual"

[power_modules]
addresses = [1, 2, 3, 4]
max_current_a = 50.0

[[cable]]
name = "gun1"
node_id = 1

[[cable]]
name = "gun2"
node_id = 2

[outputs]
backend = "sim"
pump = "pump"
fan = "fan"

[[connector]]
name = "1"
cables = ["gun1"]
contactor = "k1"
contactor_feedback = "k1-mirror"
modules = [1, 2]
max_current_a = 100.0
max_voltage_v = 1000.0
max_power_kw = 60.0
request = "everest"
everest_module_id = "cabinet_dc_1"

[[connector]]
name = "2"
cables = ["gun2"]
contactor = "k2"
modules = [3, 4]
max_current_a = 100.0
max_voltage_v = 920.0
min_voltage_v = 200.0
max_power_kw = 60.0
request = "everest"
everest_module_id = "cabinet_dc_2"

[everest]
host = "192.168.10.2"
password = "hunter2"
"""


# the single-output form every file had before connectors (what an installed cabinet still runs)
LEGACY = """\
[cabinet]
site_id = "s"
cabinet_id = "c"

[[can]]
name = "can0"
interface = "virtual"

[power_modules]
addresses = [1, 2, 3, 4]
max_current_a = 50.0

[[cable]]
name = "cable"
bus = "can0"

[outputs]
backend = "sim"
contactor = "contactor"
pump = "pump"
fan = "fan"
"""


def _line(text: str, start: str, nth: int = 0) -> int:
    return [i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(start)][nth]


def _line_q(text: str, key: str, value: str, nth: int = 0) -> int:
    """The line of ``key = "value"``."""
    return _line(text, f'{key} = "{value}"', nth)


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "config.toml")
    return err.value.problems


def _edit(old: str, new: str, base: str = TWO, nth: int = 0) -> str:
    """``base`` with the ``nth`` occurrence of ``old`` replaced."""
    parts = base.split(old)
    assert len(parts) > nth + 1, old
    return old.join(parts[: nth + 1]) + new + old.join(parts[nth + 1 :])


def check_cli(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "config.toml"
    f.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "edge", "config", "check", str(f), *args],
        capture_output=True,
        text=True,
        env=edge_env(),
        timeout=30,
    )


# -- what loads ----------------------------------------------------------------------------------------
def test_two_connectors_load_and_resolve_in_file_order():
    cfg = parse_config(TWO)
    conns = cfg.resolved_connectors()
    assert [(c.name, c.cables, c.modules, c.contactor, c.everest_module_id) for c in conns] == [
        ("1", ["gun1"], [1, 2], "k1", "cabinet_dc_1"),
        ("2", ["gun2"], [3, 4], "k2", "cabinet_dc_2"),
    ]
    assert conns[0].min_voltage_v == 150.0 and conns[1].min_voltage_v == 200.0  # the default, and the file's
    assert cfg.everest.base == "everest_api/1" and cfg.everest.communication_check_period_ms == 1000
    assert cfg.session.precheck_current_a == 2.0 and cfg.session.off_current_a == 1.0
    assert cfg.notes() == []


def test_a_connector_without_a_cable_monitor_loads_when_marked_uncooled():
    text = _edit('cables = ["gun2"]', "cables = []\nuncooled = true")
    text = text.replace('[[cable]]\nname = "gun2"\nnode_id = 2\n', "")
    cfg = parse_config(text)
    assert cfg.resolved_connectors()[1].uncooled and cfg.resolved_connectors()[1].cables == []


def test_every_existing_config_still_loads():
    for text in (SIM_TOML, EXAMPLE_TOML, LEGACY):
        cfg = parse_config(text)
        conns = cfg.resolved_connectors()
        assert conns and sorted(c for conn in conns for c in conn.cables) == sorted(c.name for c in cfg.cable)


def test_an_old_single_output_file_resolves_to_one_fixed_connector_from_the_old_keys():
    old = EXAMPLE_TOML.replace("\n[[connector]]", "\n[[connector_was]]")  # the example without its connector
    old = _without_tables(old, ("[[connector_was]]", "[everest]", "[session]"))
    old = old.replace('# contactor = "gpiochip0:17"   #', 'contactor = "gpiochip0:5"     #', 1)
    old = old.replace("max_output_voltage_v = 1000.0", "max_output_voltage_v = 900.0", 1)
    cfg = parse_config(old)
    assert not cfg.connector
    (conn,) = cfg.resolved_connectors()
    assert conn == Connector.model_construct(
        name="1",
        cables=["cable"],
        uncooled=False,
        contactor="gpiochip0:5",
        contactor_feedback="",
        modules=[1, 2],
        max_current_a=200.0,
        max_voltage_v=900.0,  # min(limits.max_output_voltage_v, power_modules.max_voltage_v)
        min_voltage_v=150.0,
        max_power_kw=180.0,
        request="fixed",
        everest_module_id="",
    )
    (note,) = cfg.notes()
    assert "no [[connector]] table" in note and 'request = "everest"' in note


def test_the_block_the_legacy_note_prints_loads_and_describes_the_same_connector():
    old = LEGACY
    cfg = parse_config(old)
    block = cfg.notes()[0].split(":\n", 1)[1]
    explicit = parse_config(old.replace('contactor = "contactor"\n', "", 1) + "\n" + block + "\n")
    assert explicit.notes() == []
    assert explicit.resolved_connectors() == cfg.resolved_connectors()


def test_a_legacy_file_without_any_cable_resolves_to_an_uncooled_connector():
    text = LEGACY.replace('[[cable]]\nname = "cable"\nbus = "can0"\n', "")
    (conn,) = parse_config(text).resolved_connectors()
    assert conn.cables == [] and conn.uncooled


def test_everest_password_is_a_secret_and_key_files_are_paths():
    text = TWO.replace(
        'password = "hunter2"', 'password = "hunter2"\nkey_file = "/etc/k.pem"\ncert_file = "/etc/c.pem"'
    )
    effective = redact(parse_config(text).model_dump(mode="json"))
    assert effective["everest"]["password"] == "<redacted>"
    assert effective["everest"]["key_file"] == "/etc/k.pem"
    bad = text.replace('host = "192.168.10.2"', "port = 0")
    (problem,) = _problems(bad)
    assert "hunter2" not in problem
    assert "hunter2" not in redact_toml_text(bad) and "/etc/k.pem" in redact_toml_text(bad)  # edge diag's bundle


# -- refused, each at its line ---------------------------------------------------------------------------
def test_an_orphan_cable_is_refused_at_its_name():
    text = TWO.replace('[[cable]]\nname = "gun2"', '[[cable]]\nname = "gun3"\nnode_id = 3\n\n[[cable]]\nname = "gun2"')
    assert _problems(text) == [
        f"config.toml:{_line_q(text, 'name', 'gun3')}: cable[1].name = 'gun3': cable 'gun3' protects no "
        "connector: add it to the cables of one of ['1', '2'], or remove this [[cable]]"
    ]


def test_a_cable_named_by_two_connectors_is_refused_at_the_second():
    text = _edit('cables = ["gun2"]', 'cables = ["gun1"]')
    text = text.replace('[[cable]]\nname = "gun2"\nnode_id = 2\n', "")
    assert _problems(text) == [
        f"config.toml:{_line(text, 'cables = ', 1)}: connector[1].cables: connector '2': cable 'gun1' already "
        "protects connector '1': every [[cable]] belongs to exactly one connector"
    ]


def test_a_cable_name_that_does_not_exist_is_refused():
    text = _edit('cables = ["gun2"]', 'cables = ["gun2", "gun9"]')
    assert _problems(text) == [
        f"config.toml:{_line(text, 'cables = ', 1)}: connector[1].cables: connector '2': 'gun9' is not a "
        "[[cable]] name (have ['gun1', 'gun2'])"
    ]


def test_a_connector_without_cables_is_refused_unless_uncooled():
    text = _edit('cables = ["gun2"]', "cables = []")
    problems = _problems(text)
    assert (
        f"config.toml:{_line(text, 'cables = []')}: connector[1].cables: connector '2' has no cable monitor: "
        'name its [[cable]] (cables = ["..."]), or set uncooled = true for a cable without one'
    ) in problems


def test_a_module_in_two_connectors_and_one_not_configured_are_refused():
    text = _edit("modules = [3, 4]", "modules = [2, 7]")
    line = _line(text, "modules = [2, 7]")
    assert _problems(text) == [
        f"config.toml:{line}: connector[1].modules: connector '2': module 2 already feeds connector '1': "
        "each module feeds one connector",
        f"config.toml:{line}: connector[1].modules: connector '2': module 7 is not in power_modules.addresses = "
        "[1, 2, 3, 4]",
    ]


def test_a_connector_without_modules_is_refused():
    text = _edit("modules = [3, 4]", "modules = []")
    assert (
        f"config.toml:{_line(text, 'modules = []')}: connector[1].modules: connector '2' has no modules: list the "
        "power_modules.addresses feeding it"
    ) in _problems(text)


def test_a_connector_voltage_above_the_cabinet_limits_is_refused_with_the_range():
    text = _edit("max_voltage_v = 920.0", "max_voltage_v = 1100.0")
    text = text.replace("[outputs]", "[limits.over_voltage]\nmax_v = 1050.0\n\n[outputs]")
    assert _problems(text) == [
        f"config.toml:{_line(text, 'max_voltage_v = 1100.0')}: connector[1].max_voltage_v = 1100.0: above "
        "limits.max_output_voltage_v = 1000 V; above power_modules.max_voltage_v = 1000 V; above "
        "limits.over_voltage.max_v = 1050 V: allowed 200 < max_voltage_v <= 1000 V (the lowest of "
        "limits.max_output_voltage_v, power_modules.max_voltage_v, limits.over_voltage.max_v)"
    ]


def test_a_connector_current_above_the_output_limit_is_refused():
    text = _edit("max_current_a = 100.0", "max_current_a = 250.0", nth=1)
    problems = _problems(text)
    assert problems == [
        f"config.toml:{_line(text, 'max_current_a = 250.0')}: connector[1].max_current_a = 250.0: above "
        "limits.max_output_current_a = 200 A (the most any output may carry): allowed 0 < max_current_a <= 200 A"
    ]


def test_a_connector_current_above_its_modules_is_a_note_not_an_error():
    text = _edit("max_current_a = 100.0", "max_current_a = 150.0", nth=1)
    assert parse_config(text).notes() == [
        "connector[1].max_current_a = 150 A: connector '2' has 2 module(s) x power_modules.max_current_a = 50 A "
        "= 100 A; it never gets more than its modules give (at most 100 A)"
    ]


def test_min_voltage_not_below_max_voltage_is_refused():
    text = _edit("min_voltage_v = 200.0", "min_voltage_v = 920.0")
    assert _problems(text) == [
        f"config.toml:{_line(text, 'min_voltage_v = 920.0')}: connector[1].min_voltage_v = 920.0: not below "
        "max_voltage_v = 920 V: allowed 0 <= min_voltage_v < 920 V"
    ]


def test_the_1500_v_set_point_is_still_refused_with_connectors():
    text = TWO.replace(
        "[outputs]", "[control]\noutput_voltage_v = 1500\n\n[limits]\nmax_output_voltage_v = 1000\n\n[outputs]"
    )
    assert _problems(text) == [
        f"config.toml:{_line(text, 'output_voltage_v = 1500')}: control.output_voltage_v = 1500: above "
        "limits.max_output_voltage_v = 1000 V; above power_modules.max_voltage_v = 1000 V; above "
        "limits.over_voltage.max_v = 1000 V: allowed 50..1000 V (the lowest of limits.max_output_voltage_v, "
        "power_modules.max_voltage_v, limits.over_voltage.max_v)"
    ]


def test_a_fixed_connector_refuses_control_set_points_outside_its_range():
    text = _edit('request = "everest"', 'request = "fixed"', nth=1)
    text = text.replace("[outputs]", "[control]\noutput_voltage_v = 950\nrequested_current_a = 80\n\n[outputs]")
    assert _problems(text) == [
        f"config.toml:{_line(text, 'output_voltage_v = 950')}: control.output_voltage_v = 950: above connector '2' "
        'max_voltage_v = 920 V (its request = "fixed" runs at this set-point): allowed 200..920 V'
    ]
    # the set-point left at its default (200 A): the connector's maximum is the key to look at
    low = text.replace("output_voltage_v = 950\nrequested_current_a = 80\n", "")
    low = _edit("max_current_a = 100.0", "max_current_a = 80.0", base=low, nth=1)
    assert _problems(low) == [
        f"config.toml:{_line(low, 'max_current_a = 80.0')}: connector[1].max_current_a = 80.0: below "
        'control.requested_current_a = 200 A (its default; not set in the file), which request = "fixed" runs '
        "at: set control.requested_current_a, allowed 0..80 A"
    ]


def test_everest_request_needs_a_module_id_and_ids_are_unique():
    text = _edit('everest_module_id = "cabinet_dc_2"', "")
    assert _problems(text) == [
        # the key is not in the file: the problem is at its table's header
        f"config.toml:{_line(text, '[[connector]]', 1)}: connector[1].everest_module_id: connector '2': "
        'request = "everest" needs everest_module_id (the id of its power_supply_DC_API module in the EVerest config)'
    ]
    text = _edit("cabinet_dc_2", "cabinet_dc_1")
    assert _problems(text) == [
        f"config.toml:{_line(text, 'everest_module_id', 1)}: connector[1].everest_module_id = 'cabinet_dc_1': "
        "connector '2': 'cabinet_dc_1' is already the module id of connector '1': one power_supply_DC_API module "
        "per connector"
    ]


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("communication_check_period_ms", 5000, "integer 100..4000"),
        ("heartbeat_timeout_ms", 100, "integer 500..10000"),
        ("voltage_current_period_ms", 2000, "integer 50..1000"),
        ("capabilities_hysteresis_a", -1, "number 0..100"),
        ("port", 0, "integer 1..65535"),
    ],
)
def test_everest_keys_out_of_range_are_refused_with_the_range(key, value, allowed):
    text = TWO.replace('host = "192.168.10.2"', f"{key} = {value}")
    (problem,) = _problems(text)
    assert problem.startswith(f"config.toml:{_line(text, key)}: everest.{key} = {value}: ")
    assert problem.endswith(f"(allowed: {allowed})")


def test_everest_tls_files_must_exist(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    ok = TWO.replace('host = "192.168.10.2"', f'tls = true\nca_file = "{ca}"')
    assert parse_config(ok).everest.tls
    missing = tmp_path / "client.pem"
    text = TWO.replace('host = "192.168.10.2"', f'tls = true\nca_file = "{ca}"\ncert_file = "{missing}"')
    assert _problems(text) == [
        # key_file is not in the file: the problem is at the [everest] header
        f"config.toml:{_line(text, '[everest]')}: everest.key_file: cert_file is set: mutual TLS needs both "
        "cert_file and key_file (or neither)",
        f"config.toml:{_line(text, 'cert_file')}: everest.cert_file = '{missing}': tls = true and cert_file names "
        f"no file: {missing} not found",
    ]
    # without tls the files are not used: a note, not an error
    assert parse_config(text.replace("tls = true", "tls = false")).notes() == [
        "everest.ca_file, everest.cert_file not used: everest.tls = false"
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("request_stale_ms", 100),
        ("precheck_current_a", 5.0),
        ("off_current_a", 2.0),
        ("off_timeout_ms", 60000),
        ("precharge_tolerance_v", 50.0),
    ],
)
def test_session_keys_out_of_range_are_refused(key, value):
    text = TWO + f"\n[session]\n{key} = {value}\n"
    (problem,) = _problems(text)
    assert problem.startswith(f"config.toml:{_line(text, key)}: session.{key} = {value}: ")


def test_pins_are_distinct_across_connectors_and_outputs():
    text = _edit('contactor = "k2"', 'contactor = "k1"')
    assert _problems(text) == [
        f"config.toml:{_line_q(text, 'contactor', 'k1', 1)}: connector[1].contactor = 'k1': pin 'k1' is already "
        "connector '1' contactor: every pin may be used once"
    ]
    text = _edit('contactor_feedback = "k1-mirror"', 'contactor_feedback = "fan"')
    assert _problems(text) == [
        f"config.toml:{_line(text, 'contactor_feedback')}: connector[0].contactor_feedback = 'fan': pin 'fan' is "
        "already outputs.fan: every pin may be used once"
    ]


def test_outputs_contactor_is_refused_when_connectors_exist():
    text = TWO.replace('pump = "pump"', 'contactor = "k0"\npump = "pump"')
    assert _problems(text) == [
        f"config.toml:{_line_q(text, 'contactor', 'k0')}: outputs.contactor = 'k0': not used when the file has "
        "[[connector]] tables (each has its own contactor): remove it from [outputs] and set contactor in the "
        "[[connector]] it belongs to"
    ]


def test_outputs_contactor_at_its_default_is_ignored_next_to_connectors():
    # the simulator validates model_dump() of its config again: every key counts as set there
    cfg = parse_config(TWO.replace('pump = "pump"', 'contactor = "gpiochip0:17"\npump = "pump"'))
    assert [c.contactor for c in cfg.resolved_connectors()] == ["k1", "k2"]
    again = Config.model_validate(cfg.model_dump())
    assert again == cfg and again.resolved_connectors() == cfg.resolved_connectors()


def test_legacy_pins_are_still_distinct():
    text = LEGACY.replace('pump = "pump"', 'pump = "contactor"')
    assert _problems(text) == [
        f"config.toml:{_line(text, 'pump = ')}: outputs.pump = 'contactor': pin 'contactor' is already "
        "outputs.contactor: every pin may be used once"
    ]


def test_connector_names_are_unique_and_restricted():
    text = _edit('name = "2"', 'name = "1"')
    assert _problems(text) == [
        f"config.toml:{_line_q(text, 'name', '1', 1)}: connector[1].name = '1': connector names must be unique: "
        "'1' used twice"
    ]
    (problem,) = _problems(_edit('name = "2"', 'name = "connector/two"'))
    assert "connector[1].name = 'connector/two'" in problem


def test_a_connector_key_typo_is_refused_with_the_allowed_keys():
    text = _edit("max_power_kw = 60.0", "max_power_kW = 60.0", nth=1)
    missing, typo = _problems(text)
    assert typo.startswith(
        f"config.toml:{_line(text, 'max_power_kW')}: connector[1].max_power_kW: unknown key (typo?); allowed keys: "
        "cables, contactor, contactor_feedback, everest_module_id, everest_ovm_module_id, max_current_a, max_power_kw,"
    )
    assert (
        missing == f"config.toml:{_line(text, '[[connector]]', 1)}: connector[1].max_power_kw: required key is missing"
    )


# -- edge config check ---------------------------------------------------------------------------------
def test_config_check_prints_the_legacy_note_and_exits_0(tmp_path):
    res = check_cli(tmp_path, LEGACY)
    assert res.returncode == 0, res.stderr
    assert f"{tmp_path / 'config.toml'}: note: no [[connector]] table" in res.stderr
    assert (
        '[[connector]]\nname = "1"\ncables = ["cable"]\ncontactor = "contactor"\nmodules = [1, 2, 3, 4]' in res.stderr
    )
    assert res.stderr.rstrip().endswith(": OK (1 note)")
    res = check_cli(tmp_path, LEGACY, "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["notes"][0].startswith("no [[connector]] table")


def test_config_check_refuses_an_orphan_cable_with_exit_2(tmp_path):
    text = TWO.replace('cables = ["gun2"]', "cables = []\nuncooled = true")
    res = check_cli(tmp_path, text)
    assert res.returncode == 2
    assert f"{tmp_path / 'config.toml'}:{_line_q(text, 'name', 'gun2')}: cable[1].name = 'gun2'" in res.stderr
    assert "hunter2" not in res.stdout + res.stderr


def test_two_connectors_pass_config_check_without_notes(tmp_path):
    res = check_cli(tmp_path, TWO)
    assert res.returncode == 0 and "note" not in res.stderr, res.stderr
    assert json.loads(res.stdout)["everest"]["password"] == "<redacted>"


# -- the documented examples load -------------------------------------------------------------------------
def _doc_examples() -> list[str]:
    text = (REPO / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    return [block for block in re.findall(r"```toml\n(.*?)```", text, re.S) if "[[connector]]" in block]


def test_the_connector_examples_in_the_docs_load(tmp_path):
    examples = _doc_examples()
    assert len(examples) >= 2
    base = '[cabinet]\nsite_id = "s"\ncabinet_id = "c"\n\n[[can]]\nname = "can0"\ninterface = "virtual"\n'
    for example in examples:
        cfg = parse_config(base + "\n" + example.replace("/etc/cabinet-edge/everest-ca.pem", str(_ca(tmp_path))))
        assert cfg.connector and cfg.notes() == []


def _ca(tmp_path: Path) -> Path:
    ca = tmp_path / "everest-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    return ca


def _without_tables(text: str, headers: tuple[str, ...]) -> str:
    """``text`` without the tables (and array tables) whose header is in ``headers``."""
    out, skip = [], False
    for line in text.splitlines():
        if line.startswith("["):
            skip = line.split("#")[0].strip() in headers
        if not skip:
            out.append(line)
    return "\n".join(out) + "\n"
