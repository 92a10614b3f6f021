"""Sparkplug B through a real mosquitto: births, data, historical replay, NCMD rebirth, the NDEATH will
when the client is killed, a bdSeq that survives the restart, and a clean NDEATH on stop.

The edge side is tests/sparkplug_driver.py in a subprocess (paho + SparkplugNode); the host side is a
paho subscriber decoding with the Tahu schema (tests/sparkplug_host.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from esio_spb_builder.core import sparkplug_b_pb2 as tahu
from paho.mqtt.enums import CallbackAPIVersion

from edge.telemetry.sparkplug import REBIRTH
from tests.conftest import wait_for
from tests.sparkplug_host import DT, Host
from tests.test_sparkplug import T0, record

REPO = Path(__file__).resolve().parent.parent


class Subscriber:
    """A host application's connection: every Sparkplug message, fed to a Host in arrival order."""

    def __init__(self, port: int) -> None:
        self.host = Host()
        self.topics: list[str] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self._by_mid: dict[int, bytes] = {}  # the last payload the broker sent under each message id
        self.redelivered = 0
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scada-host")
        c.on_connect = lambda client, *_a: client.subscribe("spBv1.0/#", qos=1)
        c.on_subscribe = lambda *_a: self.subscribed.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        self.client = c
        wait_for(self.subscribed.is_set, 10, what="host subscribed")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        with self.lock:
            # a QoS 1 message the broker sends again (DUP) after its restart, because our PUBACK was not
            # saved: the host has it already (the broker's redelivery, not the node's: a node's resend
            # would have a new seq)
            if msg.dup and self._by_mid.get(msg.mid) == payload:
                self.redelivered += 1
                return
            self._by_mid[msg.mid] = payload
            self.topics.append(msg.topic)
            self.host.receive(msg.topic, payload)

    def seen(self, kind: str) -> int:
        with self.lock:
            return sum(1 for t in self.topics if t.split("/")[2] == kind)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_driver(port: int, data_dir: Path, records: list[dict] | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.sparkplug_driver", str(port), str(data_dir)]
    if records is not None:
        path = data_dir / "records.json"
        path.write_text(json.dumps(records))
        args.append(str(path))
    data_dir.mkdir(exist_ok=True)
    return subprocess.Popen(args, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_sparkplug_session_through_mosquitto(mqtt_broker: Any, tmp_path: Path) -> None:
    sub = Subscriber(mqtt_broker.port)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    records = [
        {"kind": "telemetry", "t_ms": T0 + 1000 * i, "payload": record({"control.limit_a": lim}), "seq": 10 + i}
        for i, lim in enumerate((200.0, 150.0, 150.0))
    ]
    records.append({"kind": "event", "t_ms": T0 + 2500, "payload": {"kind": "started", "name": "edge"}, "seq": 13})
    records += [
        {"kind": "telemetry", "t_ms": T0 - 2000 + 1000 * i, "payload": record({"control.limit_a": lim}), "seq": 8 + i}
        for i, lim in enumerate((90.0, 80.0))
    ]
    for r in records:
        r["historical"] = r["t_ms"] < T0
    edge = start_driver(mqtt_broker.port, data_dir, records)
    try:
        host = sub.host
        last = ("control", "limit_a")
        wait_for(lambda: len([p for p in host.history.get(last, []) if p.historical]) == 2, 15, what="replay")
        with sub.lock:
            assert host.births == 1 and host.bdseq == 0 and host.seq_errors == []
            assert sorted(host.dbirths) == ["cable", "cable.cooling", "control", "grid", "module.1", "module.2"]
            assert (host.live[last].value, host.live[last].t_ms) == (150.0, T0 + 1000)  # RBE: 3rd not sent
            replayed = [(p.value, p.t_ms) for p in host.history[last] if p.historical]
            assert replayed == [(90.0, T0 - 2000), (80.0, T0 - 1000)]
            assert json.loads(host.events[0][0])["seq"] == 13

        # the host asks for a rebirth: same bdSeq, seq from 0, every device again
        ncmd = tahu.Payload(timestamp=T0)
        ncmd.metrics.add(name=REBIRTH, datatype=DT.Boolean, boolean_value=True)
        sub.client.publish("spBv1.0/site-001/NCMD/cab-017", ncmd.SerializeToString(), qos=1)
        wait_for(lambda: sub.seen("DBIRTH") == 12, 15, what="rebirth")
        with sub.lock:
            assert host.births == 2 and host.bdseq == 0 and host.seq_errors == []
            assert host.live[last].value == 150.0

        # the edge node dies without a DISCONNECT: the broker publishes its will
        edge.send_signal(signal.SIGKILL)
        edge.wait(10)
        wait_for(lambda: sub.seen("NDEATH") == 1, 15, what="NDEATH will")
        assert host.deaths == [0]

        # restarted: the next bdSeq from the file, and a clean stop publishes the NDEATH itself
        edge = start_driver(mqtt_broker.port, data_dir)
        wait_for(lambda: sub.seen("NBIRTH") == 3, 15, what="NBIRTH after restart")
        assert host.bdseq == 1
        assert edge.stdin is not None and edge.stdout is not None
        assert edge.stdout.readline().strip() == "published"
        edge.stdin.write("stop\n")
        edge.stdin.flush()
        assert edge.wait(15) == 0
        wait_for(lambda: sub.seen("NDEATH") == 2, 15, what="clean NDEATH")
        assert host.deaths == [0, 1]
    finally:
        if edge.poll() is None:
            edge.kill()
            edge.wait()
        sub.close()
