"""MQTT topic names: the one place they are spelled.

Layout (docs/TELEMETRY.md): ``<prefix>/<site>/<cabinet>/<leaf>`` with the leaves below. Consumers of a
fleet subscribe with wildcards, e.g. ``$share/backend/cabinet/+/+/telemetry``.
"""

from __future__ import annotations

from dataclasses import dataclass

STATUS = "status"  # retained online/offline (birth message and last will)
TELEMETRY = "telemetry"  # batches of interval samples
EVENTS = "events"  # faults, trips, clears, state changes, commands and their results
STATE = "state"  # retained current state
CMD = "cmd"  # commands in: cmd/<name>
CMD_RESULT = "cmd-result"  # one answer per command, correlated by its id


@dataclass(frozen=True)
class Topics:
    prefix: str
    site_id: str
    cabinet_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix.strip('/')}/{self.site_id}/{self.cabinet_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/{STATUS}"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/{TELEMETRY}"

    @property
    def events(self) -> str:
        return f"{self.base}/{EVENTS}"

    @property
    def state(self) -> str:
        return f"{self.base}/{STATE}"

    @property
    def cmd_filter(self) -> str:
        """Subscription for every command addressed to this cabinet."""
        return f"{self.base}/{CMD}/+"

    @property
    def cmd_result(self) -> str:
        return f"{self.base}/{CMD_RESULT}"

    def cmd(self, name: str) -> str:
        return f"{self.base}/{CMD}/{name}"

    def command_name(self, topic: str) -> str | None:
        """The ``<name>`` of ``.../cmd/<name>``, or None when the topic is not one of our commands."""
        head = f"{self.base}/{CMD}/"
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return name if name and "/" not in name else None
