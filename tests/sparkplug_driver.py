"""A minimal Sparkplug edge node over paho for tests/test_sparkplug_mqtt.py (run as a subprocess, so the
test can SIGKILL it and the broker publishes its will).

    python -m tests.sparkplug_driver PORT DATA_DIR RECORDS_JSON

Registers ``node.will()`` as the MQTT will, publishes the births on connect, then the messages of every
record in RECORDS_JSON (a list of {"kind", "t_ms", "payload", "historical", "seq"}), answers NCMD, and on
a line ``stop`` on stdin publishes the NDEATH itself and disconnects cleanly. All SparkplugNode calls
run on the main thread, as they would on the uplink's thread; paho's callbacks only queue.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.telemetry.sparkplug import BdSeqFile, Message, SparkplugNode


def main(port: int, data_dir: str, records_json: str) -> int:
    node = SparkplugNode(
        "site-001",
        "cab-017",
        BdSeqFile(Path(data_dir) / "sparkplug.bdseq"),
        lambda: int(time.time() * 1000),
        data_qos=1,
    )
    inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-site-001-cab-017")
    client.on_connect = lambda _c, _u, _f, reason, _p: inbox.put(("connected", reason))
    client.on_message = lambda _c, _u, msg: inbox.put(("ncmd", (msg.topic, bytes(msg.payload))))
    will = node.will()
    client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    client.connect("127.0.0.1", port, keepalive=5)
    client.loop_start()
    threading.Thread(target=lambda: [inbox.put(("stdin", line.strip())) for line in sys.stdin], daemon=True).start()

    def publish(msgs: list[Message]) -> None:
        for m in msgs:
            client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain).wait_for_publish(10)

    kind, reason = inbox.get(timeout=10)
    assert kind == "connected" and not reason.is_failure, reason
    for topic in node.subscriptions():
        client.subscribe(topic, qos=1)
    publish(node.births())
    for r in json.loads(Path(records_json).read_text()) if records_json else []:
        publish(node.encode(r["kind"], r["t_ms"], r["payload"], historical=r["historical"], seq=r["seq"]))
    print("published", flush=True)
    while True:
        kind, item = inbox.get()
        if kind == "ncmd":
            publish(node.command(*item))
        elif kind == "stdin" and item == "stop":
            publish([node.death()])
            client.disconnect()
            client.loop_stop()
            return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""))
