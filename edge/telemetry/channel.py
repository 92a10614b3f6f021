"""The cloud command channel: ``<prefix>/<site>/<cabinet>/cmd/<name>`` in, ``.../cmd-result`` out.

:class:`CommandChannel` subscribes to ``cmd/+``, turns a topic into a command name, hands name and payload
to an injected handler and publishes the handler's answer on ``cmd-result`` (QoS 1, not retained). It
knows nothing of what a command does: validating and executing is the handler's job, and a handler that
raises is answered ``rejected`` ("internal error"), never propagated.

With the payload the handler gets how the message came (:class:`Received`: the broker's retain flag, the
MQTT 5 message expiry, when it arrived), so that it can ignore a retained command and honour the expiry.
A retained command the handler could read no id from is not answered: nobody waits for it.

The uplink's handler runs each command through :func:`edge.telemetry.commands.handle`, i.e. through the
one operations layer (edge/ops.py) that the local socket uses too.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edge.telemetry.topics import Topics

log = logging.getLogger(__name__)

SCHEMA_CMD_RESULT = "cabinet-edge/cmd-result/1"
ACCEPTED = "accepted"
REJECTED = "rejected"


class CommandResult(Protocol):
    """The outcome of one command, as published: ``commands.Result`` has this shape."""

    @property
    def id(self) -> str | None: ...
    @property
    def command(self) -> str: ...
    @property
    def result(self) -> str: ...  # accepted | rejected
    @property
    def reason(self) -> str: ...
    def as_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Answer:
    """What a handler returns: the result, and the seq of the ``command`` event recorded for it (if any)."""

    result: CommandResult
    seq: int | None = None

    @property
    def accepted(self) -> bool:
        return self.result.result == ACCEPTED


@dataclass(frozen=True)
class Received:
    """How a command message came from the broker."""

    retained: bool = False  # the broker's retain flag: a stored message, not one sent now
    expiry_s: int | None = None  # MQTT 5 Message Expiry Interval as delivered: the broker counts it down
    received_ms: int | None = None  # wall clock when paho handed the message over


LIVE = Received()

CommandHandler = Callable[[str, bytes, Received], Answer]


class Link(Protocol):
    """The part of the MQTT session the channel uses (``Session`` has it)."""

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False) -> int | None: ...
    def subscribe(self, topic_filter: str) -> None: ...


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class _InternalError:
    id: str | None
    command: str
    reason: str
    result: str = REJECTED

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "command": self.command, "result": self.result, "reason": self.reason}


class CommandChannel:
    def __init__(
        self,
        topics: Topics,
        handler: CommandHandler,
        link: Link,
        *,
        site_id: str,
        cabinet_id: str,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.topics = topics
        self.handler = handler
        self.link = link
        self.site_id = site_id
        self.cabinet_id = cabinet_id
        self.now_ms = now_ms

    def subscribe(self) -> None:
        """Subscribe to every command of this cabinet (on each connect: the session may be new)."""
        self.link.subscribe(self.topics.cmd_filter)

    def command_name(self, topic: str) -> str:
        return self.topics.command_name(topic) or topic.rsplit("/", 1)[-1]

    def on_message(self, topic: str, payload: bytes, received: Received = LIVE) -> Answer:
        """Run one command and answer it on cmd-result (a retained one only when it has an id). Never raises."""
        name = self.command_name(topic)
        try:
            answer = self.handler(name, payload, received)
        except Exception as exc:  # a bad command must never take the daemon down
            log.exception("command %s failed", name)
            answer = Answer(_InternalError(None, name[:64], f"internal error: {type(exc).__name__}"))
        r = answer.result
        if received.retained and r.id is None:
            return answer
        log.info("command %s id=%s: %s (%s)", r.command, r.id, r.result, r.reason)
        msg = {
            "schema": SCHEMA_CMD_RESULT,
            "cabinet_id": self.cabinet_id,
            "site_id": self.site_id,
            "t_ms": self.now_ms(),
            **r.as_dict(),
            "seq": answer.seq,
        }
        self.link.publish(self.topics.cmd_result, json.dumps(msg, separators=(",", ":")))
        return answer
