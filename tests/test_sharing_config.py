"""Issue 16 item 1: ``[sharing]``, ``[[module_group]]`` and ``[[relay]]`` load; a matrix that could parallel two
connectors, a group with no relay, an unreachable connector and a module in two groups are refused with
file, line and key; a file without ``[sharing]`` is unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import parse_config
from tests.test_config_connectors import TWO, _edit, _problems


def _matrix() -> str:
    groups = "".join(
        f'\n[[module_group]]\nname = "{g}"\nmodules = [{m}]\n' for g, m in zip("ABCD", "1234", strict=True)
    )
    relays = "".join(
        f'\n[[relay]]\ngroup = "{g}"\nconnector = "{c}"\npin = "r{g}{c}"\nfeedback = "r{g}{c}-mirror"\n'
        for g in "ABCD"
        for c in "12"
    )
    return groups + relays


SHARED = (
    TWO
    + '\n[sharing]\npolicy = "even"\nhold_s = 5.0\n\n[[sharing.connector]]\nname = "2"\npriority = 3\nmin_groups = 1\n'
    + _matrix()
)


def _at(problems: list[str], key: str, text: str) -> str:
    hits = [p for p in problems if f": {key}" in p]
    assert hits, problems
    return hits[0]


def _line_of(text: str, needle: str, nth: int = 0) -> int:
    return [i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(needle)][nth]


def test_sharing_loads_and_without_it_nothing_changes() -> None:
    config = parse_config(SHARED)
    assert config.sharing is not None and config.sharing.policy == "even" and config.sharing.hold_s == 5.0
    assert [g.name for g in config.module_group] == list("ABCD")
    assert len(config.relay) == 8
    assert config.sharing.connector[0].priority == 3
    plain = parse_config(TWO)
    assert plain.sharing is None and plain.module_group == [] and plain.relay == []
    assert [c.modules for c in plain.resolved_connectors()] == [[1, 2], [3, 4]]


def test_relay_between_two_connectors_is_refused() -> None:
    text = SHARED + '\n[[relay]]\ngroup = "1"\nconnector = "2"\npin = "r12"\nfeedback = "r12-mirror"\n'
    msg = _at(_problems(text), "relay[8].group", text)
    line = _line_of(text, 'group = "1"')
    assert msg.startswith(f"config.toml:{line}:")
    assert "would parallel their outputs" in msg


def test_module_in_two_groups_is_refused() -> None:
    text = _edit('name = "B"\nmodules = [2]', 'name = "B"\nmodules = [2, 1]', SHARED)
    msg = _at(_problems(text), "module_group[1].modules", text)
    assert "module 1 is already in group 'A'" in msg and "parallel two connectors" in msg


def test_one_pin_for_two_relays_is_refused() -> None:
    text = _edit('pin = "rB2"', 'pin = "rB1"', SHARED)
    msg = _at(_problems(text), "relay[3].pin", text)
    assert "is already relay B->1" in msg


def test_group_without_relay_and_unreachable_connector_are_refused() -> None:
    no_d = SHARED.split('\n[[relay]]\ngroup = "D"')[0]
    msg = _at(_problems(no_d), "module_group[3].name", no_d)
    line = _line_of(no_d, 'name = "D"')
    assert "group 'D' has no [[relay]]" in msg and msg.startswith(f"config.toml:{line}:")
    only_1 = TWO + "\n[sharing]\n" + _matrix().replace('connector = "2"', 'connector = "1"')
    problems = _problems(only_1)
    assert any("connector '2' is unreachable" in p and ": connector[1].name" in p for p in problems), problems


@pytest.mark.parametrize(
    ("edit", "key", "words"),
    [
        (('group = "A"', 'group = "Z"'), "relay[0].group", "not a [[module_group]] name"),
        (('connector = "1"\npin = "rA1"', 'connector = "9"\npin = "rA1"'), "relay[0].connector", "not a [[connector]]"),
        (('name = "B"\nmodules = [2]', 'name = "A"\nmodules = [2]'), "module_group[1].name", "used twice"),
        (("modules = [4]", "modules = [9]"), "module_group[3].modules", "not in power_modules.addresses"),
        (("min_groups = 1", "min_groups = 5"), "sharing.connector[0].min_groups", "allowed 0..4"),
        (('name = "2"\npriority', 'name = "7"\npriority'), "sharing.connector[0].name", "not a [[connector]]"),
        (('policy = "even"', 'policy = "fastest"'), "sharing.policy", "static"),
        (  # the debounced mirror contact must leave the relay time to confirm
            ("hold_s = 5.0", "hold_s = 5.0\nrelay_confirm_ms = 40\nrelay_feedback_debounce_ms = 30"),
            "sharing.relay_feedback_debounce_ms",
            "allowed at most half",
        ),
    ],
)
def test_matrix_mistakes_are_refused_at_their_key(edit: tuple[str, str], key: str, words: str) -> None:
    text = _edit(*edit, SHARED)
    assert words in _at(_problems(text), key, text)


def test_home_modules_must_be_whole_groups_with_a_relay() -> None:
    part = _edit('name = "A"\nmodules = [1]', 'name = "A"\nmodules = [1, 5]', SHARED)
    part = part.replace("addresses = [1, 2, 3, 4]", "addresses = [1, 2, 3, 4, 5]")
    msg = _at(_problems(part), "connector[0].modules", part)
    assert "group 'A' only in part" in msg
    no_relay = SHARED.replace('\n[[relay]]\ngroup = "A"\nconnector = "1"\npin = "rA1"\nfeedback = "rA1-mirror"\n', "")
    msg = _at(_problems(no_relay), "connector[0].modules", no_relay)
    assert "group 'A' has no [[relay]] to connector '1'" in msg


def test_groups_and_relays_need_a_sharing_section() -> None:
    text = TWO + _matrix()
    msg = _at(_problems(text), "module_group[0].name", text)
    assert "need a [sharing] section" in msg


def test_the_matrix_the_cabinet_runs_on_comes_from_the_config() -> None:
    from edge.charging.sharing import Cabinet, matrix_from_config

    assert matrix_from_config(parse_config(TWO)) is None
    matrix = matrix_from_config(parse_config(SHARED))
    assert matrix is not None
    assert matrix.groups == {"A": [1], "B": [2], "C": [3], "D": [4]}
    assert matrix.reach["A"] == ["1", "2"] and matrix.home == {"1": ["A", "B"], "2": ["C", "D"]}
    assert (matrix.policy, matrix.hold_s, matrix.priority, matrix.min_groups) == (
        "even",
        5.0,
        {"1": 0, "2": 3},
        {"1": 0, "2": 1},
    )
    cabinet = Cabinet(matrix)
    assert cabinet.modules_of("1") == [1, 2] and cabinet.modules_of("2") == [3, 4]


def test_config_check_has_no_static_module_notes_with_sharing() -> None:
    """A group in no connector's home (E) and a connector rated above its home modules are what sharing is for:
    no "feed no connector" / "never gets more" notes then (the same file without sharing has both)."""
    extra = 'name = "E"\nmodules = [5]\n' + "".join(
        f'\n[[relay]]\ngroup = "E"\nconnector = "{c}"\npin = "rE{c}"\nfeedback = "rE{c}-mirror"\n' for c in "12"
    )
    text = (SHARED + "\n[[module_group]]\n" + extra).replace("addresses = [1, 2, 3, 4]", "addresses = [1, 2, 3, 4, 5]")
    text = text.replace("max_current_a = 100.0", "max_current_a = 200.0", 1)
    notes = " ".join(parse_config(text).notes())
    assert "feed no connector" not in notes and "never gets more than its modules" not in notes
    static = TWO.replace("addresses = [1, 2, 3, 4]", "addresses = [1, 2, 3, 4, 5]")
    static = static.replace("max_current_a = 100.0", "max_current_a = 200.0", 1)
    notes = " ".join(parse_config(static).notes())
    assert "feed no connector" in notes and "never gets more than its modules" in notes


def test_edge_config_check_refuses_each_matrix_mistake_with_file_line_key(tmp_path: Path) -> None:
    """`edge config check` itself (what the technician runs): a relay between two connectors, a group with no
    relay and a connector no relay reaches, each at its file, line and key; exit code 2."""
    import json

    from click.testing import CliRunner

    from edge.cli import main

    text = SHARED.split('\n[[relay]]\ngroup = "D"')[0]  # D has no relay
    for g in "ABC":  # and no relay reaches connector 2
        text = text.replace(
            f'\n[[relay]]\ngroup = "{g}"\nconnector = "2"\npin = "r{g}2"\nfeedback = "r{g}2-mirror"\n', ""
        )
    text += '\n[[relay]]\ngroup = "2"\nconnector = "1"\npin = "r21"\nfeedback = "r21-mirror"\n'
    bad = tmp_path / "cabinet.toml"
    bad.write_text(text)
    res = CliRunner().invoke(main, ["config", "check", str(bad), "--json"])
    assert res.exit_code == 2, res.output
    found = {p["key"]: p for p in json.loads(res.stdout)["problems"]}
    assert "would parallel their outputs" in found["relay[3].group"]["message"]
    assert found["relay[3].group"]["line"] == _line_of(text, 'group = "2"')
    assert "group 'D' has no [[relay]]" in found["module_group[3].name"]["message"]
    assert found["module_group[3].name"]["line"] == _line_of(text, 'name = "D"')
    assert "connector '2' is unreachable" in found["connector[1].name"]["message"]
    assert all(p["file"] == str(bad) for p in found.values())
