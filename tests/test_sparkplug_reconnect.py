"""A reconnect in the middle of a Sparkplug replay, through a real mosquitto, with the order of the threads
driven by the test (no sleeps): the uplink thread is held inside the replay while paho loses the
connection, the broker publishes the NDEATH will and paho connects again; only then does the replay go on.

Nothing the uplink thread had prepared for the old connection may go out on the new one: it would reach
the host after the NDEATH and before the new NBIRTH, as data of a dead node with the seq numbers of the
old session (issue 18: the seq gap and the replay a host did not see as historical after a broker
restart). Every record still arrives, replayed as historical after the new births.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge.config.telemetry import Mqtt, Sparkplug, Telemetry
from edge.telemetry.formats import Message
from edge.telemetry.store import RawRecord
from tests.conftest import wait_for
from tests.test_sparkplug_mqtt import Subscriber
from tests.uplink_harness import UplinkHarness

HOLD_AT_BATCH = 3  # the uplink thread is held before encoding this batch of the replay


class Gate:
    """Wraps the encoder: the HOLD_AT_BATCH-th batch waits for ``release`` (the uplink thread stops there)."""

    def __init__(self, encode: Any) -> None:
        self._encode = encode
        self.calls = 0
        self.holding = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: Sequence[RawRecord], replayed: bool) -> list[Message]:
        self.calls += 1
        if self.calls == HOLD_AT_BATCH:
            self.holding.set()
            assert self.release.wait(30), "the test never released the uplink thread"
        out: list[Message] = self._encode(batch, replayed)
        return out


class Connects:
    """Counts the CONNACKs paho reports (on paho's thread, before the uplink thread hears of them)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.n = 0

    def __call__(self, session_present: bool) -> None:
        self.n += 1
        self.inner(session_present)


@pytest.fixture
def harness(tmp_path: Path, mqtt_broker: Any) -> Iterator[UplinkHarness]:
    cfg = Mqtt(port=mqtt_broker.port, reconnect_min_s=0.1, reconnect_max_s=1.0, batch_samples=40)
    telemetry = Telemetry(format="sparkplug_b", sparkplug=Sparkplug(data_qos=1))
    h = UplinkHarness(tmp_path / "data", cfg, telemetry=telemetry)
    yield h
    h.stop()


def test_a_reconnect_in_the_middle_of_a_replay_sends_nothing_of_the_old_session_on_the_new_one(
    harness: UplinkHarness, mqtt_broker: Any
) -> None:
    sub = Subscriber(mqtt_broker.port)
    host = sub.host
    try:
        up = harness.uplink
        gate = Gate(up.encoder.encode)
        up.encoder.encode = gate  # type: ignore[method-assign]
        connects = Connects(up.session.events.connected)
        up.session.events = dataclasses.replace(up.session.events, connected=connects)
        seqs = harness.append_telemetry(12)  # one record per batch (40 samples each)
        harness.start()

        wait_for(gate.holding.is_set, 15, what="the uplink thread inside the replay")
        wait_for(lambda: sub.seen("DDATA") > 0, 10, what="the replay's first data at the host")
        client = up.session._client
        assert client is not None
        client.socket().shutdown(socket.SHUT_RDWR)  # the connection drops under the replay
        wait_for(lambda: connects.n == 2, 15, what="paho connected again")
        wait_for(lambda: len(host.deaths) == 1, 10, what="the broker's NDEATH of the lost connection")
        gate.release.set()  # the replay goes on where it was held

        wait_for(lambda: harness.backlog() == 0, 20, what="every record acknowledged")
        wait_for(lambda: sub.seen("NBIRTH") == 2, 10, what="the NBIRTH of the new connection")
        with sub.lock:
            assert host.while_dead == [], host.while_dead[:5]
            assert host.seq_errors == [], host.seq_errors[:5]
            assert host.online and host.bdseq == host.deaths[0] + 1
            replayed_t = {p.t_ms for points in host.history.values() for p in points if p.historical}
        assert len(seqs) == 12
        t_first = min(replayed_t)
        assert len(replayed_t) == 12, f"every record replayed as historical: {sorted(t - t_first for t in replayed_t)}"
    finally:
        sub.close()
