"""The command channel without paho: topic -> command name -> handler -> cmd-result."""

from __future__ import annotations

import json

import jsonschema

from edge.telemetry import schema
from edge.telemetry.channel import Answer, CommandChannel
from edge.telemetry.commands import Result
from edge.telemetry.topics import Topics

TOPICS = Topics("cabinet", "site-1", "cab-1")
T_MS = 1_764_160_000_000
CMD_RESULT = jsonschema.Draft202012Validator(schema.for_topic_leaf("cmd-result"))


class Link:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict, bool]] = []
        self.subscribed: list[str] = []

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False) -> int | None:
        self.published.append((topic, json.loads(payload), retain))
        return len(self.published)

    def subscribe(self, topic_filter: str) -> None:
        self.subscribed.append(topic_filter)


def channel(handler) -> tuple[CommandChannel, Link]:
    link = Link()
    ch = CommandChannel(TOPICS, handler, link, site_id="site-1", cabinet_id="cab-1", now_ms=lambda: T_MS)
    return ch, link


def test_a_command_goes_to_the_handler_by_name_and_its_answer_to_cmd_result():
    calls: list[tuple[str, bytes]] = []

    def handler(name: str, payload: bytes) -> Answer:
        calls.append((name, payload))
        return Answer(Result("c-1", name, "accepted", "stopped"), seq=17)

    ch, link = channel(handler)
    ch.subscribe()
    assert link.subscribed == [TOPICS.cmd_filter]
    answer = ch.on_message(TOPICS.cmd("stop"), b'{"id":"c-1"}')
    assert calls == [("stop", b'{"id":"c-1"}')] and answer.accepted
    [(topic, body, retain)] = link.published
    assert topic == TOPICS.cmd_result and not retain
    CMD_RESULT.validate(body)
    assert body == {
        "schema": "cabinet-edge/cmd-result/1",
        "cabinet_id": "cab-1",
        "site_id": "site-1",
        "t_ms": T_MS,
        "id": "c-1",
        "command": "stop",
        "result": "accepted",
        "reason": "stopped",
        "seq": 17,
    }


def test_a_handler_that_raises_is_answered_rejected_and_never_propagates():
    def handler(name: str, payload: bytes) -> Answer:
        raise KeyError("boom")

    ch, link = channel(handler)
    answer = ch.on_message(TOPICS.cmd("resume"), b"{}")
    assert not answer.accepted
    body = link.published[0][1]
    CMD_RESULT.validate(body)
    assert (body["command"], body["result"], body["reason"], body["seq"]) == (
        "resume",
        "rejected",
        "internal error: KeyError",
        None,
    )
