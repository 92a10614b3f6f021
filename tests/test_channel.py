"""The command channel without paho: topic -> command name -> handler -> cmd-result."""

from __future__ import annotations

import json

import jsonschema

from edge.telemetry import schema
from edge.telemetry.channel import Answer, CommandChannel, Received
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

    def handler(name: str, payload: bytes, received: Received) -> Answer:
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
    def handler(name: str, payload: bytes, received: Received) -> Answer:
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


def test_how_a_message_came_reaches_the_handler_and_a_retained_one_without_id_is_not_answered():
    seen: list[Received] = []

    def handler(name: str, payload: bytes, received: Received) -> Answer:
        seen.append(received)
        cmd_id = json.loads(payload).get("id")
        return Answer(Result(cmd_id, name, "rejected", "retained command ignored"))

    ch, link = channel(handler)
    kept = Received(retained=True, expiry_s=30, received_ms=T_MS)
    ch.on_message(TOPICS.cmd("stop"), b'{"id":"r-1"}', kept)
    ch.on_message(TOPICS.cmd("stop"), b"{}", kept)
    assert seen == [kept, kept]
    assert [body["id"] for _t, body, _r in link.published] == ["r-1"], "nobody waits for an id-less retained one"


def test_the_session_hands_on_the_retain_flag_and_the_mqtt5_expiry():
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from edge.telemetry.session import received

    msg = mqtt.MQTTMessage(topic=b"cabinet/s/c/cmd/stop")
    msg.retain = True
    msg.properties = Properties(PacketTypes.PUBLISH)
    msg.properties.MessageExpiryInterval = 42
    assert received(msg, lambda: T_MS) == Received(retained=True, expiry_s=42, received_ms=T_MS)
    plain = mqtt.MQTTMessage(topic=b"cabinet/s/c/cmd/stop")
    assert received(plain, lambda: T_MS) == Received(retained=False, expiry_s=None, received_ms=T_MS)
