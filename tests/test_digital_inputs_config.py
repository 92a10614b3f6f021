"""``[[input]]``: the digital safety inputs in the config (issue 15 item 3). Each mistake is refused with the
file, the line, the key and what is allowed; pins are checked against every other pin."""

from __future__ import annotations

import pytest

from edge.config import ConfigError, parse_config
from edge.config.digital_inputs import safety_inputs_config
from tests.test_config_connectors import TWO

ESTOP = """
[[input]]
name = "estop"
pin = "estop-loop"
function = "estop"
"""

DOOR = """
[[input]]
name = "door"
pin = "door-switch"
function = "door"
door_action = "derate"
door_derate_a = 32.0
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "config.toml")
    return err.value.problems


def _line(text: str, start: str, nth: int = 0) -> int:
    return [i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(start)][nth]


def test_inputs_load_with_their_documented_defaults() -> None:
    cfg = parse_config(TWO + ESTOP + DOOR)
    estop, door = cfg.input
    assert door.door_action == "derate"
    assert (estop.function, estop.active, estop.wiring, estop.debounce_ms) == ("estop", "low", "nc", 10)
    assert safety_inputs_config(cfg.input) == {"door_action": "derate", "door_derate_a": 32.0}
    assert safety_inputs_config([]) == {"door_action": "stop", "door_derate_a": 50.0}
    assert parse_config(TWO).input == []


def test_a_pin_used_twice_is_refused_at_the_second_use() -> None:
    text = TWO + ESTOP.replace('"estop-loop"', '"k1-mirror"')
    (problem,) = _problems(text)
    assert f"config.toml:{_line(text, 'pin = ')}" in problem
    assert "input[0].pin" in problem and "already connector '1' contactor_feedback" in problem
    text = TWO + ESTOP + ESTOP.replace('name = "estop"', 'name = "estop2"')
    (problem,) = _problems(text)
    assert "input[1].pin" in problem and "already input 'estop'" in problem


def test_names_unique_and_door_keys_only_on_a_door() -> None:
    text = TWO + ESTOP + ESTOP.replace('"estop-loop"', '"estop-back"')
    (problem,) = _problems(text)
    assert "input[1].name" in problem and "unique" in problem
    text = TWO + ESTOP + 'door_action = "derate"\n'
    (problem,) = _problems(text)
    assert "input[0].door_action" in problem and 'only for function = "door"' in problem


def test_two_door_inputs_must_agree() -> None:
    text = (
        TWO
        + DOOR
        + DOOR.replace('name = "door"', 'name = "door2"').replace('"door-switch"', '"door2"').replace("32.0", "40.0")
    )
    (problem,) = _problems(text)
    assert "input[1].door_derate_a" in problem and "same door_derate_a" in problem


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("function", '"smoke"', "estop"),
        ("active", '"up"', "low"),
        ("wiring", '"nx"', "nc"),
        ("debounce_ms", "2000", "1000"),
        ("door_derate_a", "-1.0", "0"),
    ],
)
def test_a_bad_value_names_the_key_and_what_is_allowed(key: str, value: str, allowed: str) -> None:
    text = TWO + DOOR.replace("door_derate_a = 32.0\n", "") + f"{key} = {value}\n"
    if key == "function":
        text = TWO + DOOR.replace('function = "door"', f"function = {value}").replace('door_action = "derate"\n', "")
        text = text.replace("door_derate_a = 32.0\n", "")
    problems = _problems(text)
    assert any(f"input[0].{key}" in p and allowed in p for p in problems), problems
