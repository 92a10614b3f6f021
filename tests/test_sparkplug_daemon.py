"""The daemon on the simulator with ``telemetry.format = "sparkplug_b"`` through a real mosquitto, seen by a
host that decodes with the Tahu schema (tests/sparkplug_host.py): births and data, the NDEATH will on a
SIGKILL with the bdSeq of the NBIRTH before it, the next bdSeq after the restart, the backlog of a broker
outage replayed as historical, NCMD rebirth, and the NDEATH of a clean stop.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from esio_spb_builder.core import sparkplug_b_pb2 as tahu
from paho.mqtt.enums import CallbackAPIVersion

from edge.telemetry.sparkplug import REBIRTH
from tests.conftest import DaemonProcess, sim_config_text, wait_for
from tests.mqtt_sim import CABINET, SITE
from tests.sparkplug_host import DT
from tests.test_sparkplug_mqtt import Subscriber

DEVICES = {"cable", "cable.cooling", "module.1", "grid", "control"}


class PersistentSubscriber(Subscriber):
    """The host with a persistent session and quick reconnects: the broker keeps what the cabinet sends
    while the host is still reconnecting after the broker's restart (a host that missed the NBIRTH would
    ask for a rebirth; this test wants to see every message)."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.client.disconnect()
        self.client.loop_stop()
        self.subscribed.clear()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scada-host-persistent", clean_session=False)
        c.on_connect = lambda client, *_a: client.subscribe("spBv1.0/#", qos=1)
        c.on_subscribe = lambda *_a: self.subscribed.set()
        c.on_message = self._on_message
        c.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        self.client = c
        wait_for(self.subscribed.is_set, 10, what="host subscribed")


def _config(tmp: Path, port: int) -> str:
    extra = (
        f'[telemetry.mqtt]\nhost = "127.0.0.1"\nport = {port}\nreconnect_min_s = 0.1\nreconnect_max_s = 1.0\n'
        'keepalive_s = 5\n\n[telemetry]\nformat = "sparkplug_b"\ninterval_s = 0.2\nrecord_s = 1.0\n\n'
        "[telemetry.sparkplug]\ndata_qos = 1\n"
    )
    return sim_config_text(tmp, extra)


def _start(tmp: Path, text: str) -> DaemonProcess:
    cfg = tmp / "config.toml"
    cfg.write_text(text)
    d = DaemonProcess(cfg, str(tmp / "edge.sock"))
    d.wait_ready()
    return d


def _historical_times(sub: Subscriber) -> set[int]:
    """The record times of every historical point the host has seen."""
    with sub.lock:
        return {p.t_ms for points in sub.host.history.values() for p in points if p.historical}


def _telemetry_times(store: Path, after_seq: int) -> set[int]:
    """The times of the telemetry records after ``after_seq`` in the daemon's store (read only, beside it)."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT t_ms FROM records WHERE kind = 'telemetry' AND seq > ?", (after_seq,))
        return {int(t) for (t,) in rows}
    finally:
        db.close()


def test_daemon_speaks_sparkplug_b_through_mosquitto(tmp_path: Path, mqtt_broker: Any) -> None:
    sub = PersistentSubscriber(mqtt_broker.port)
    host = sub.host
    text = _config(tmp_path, mqtt_broker.port)
    d = _start(tmp_path, text)
    try:
        wait_for(lambda: sub.seen("DDATA") >= 5, 20, what=f"NBIRTH, DBIRTHs and DDATA\n{d.log()}")
        with sub.lock:
            assert host.births == 1 and host.seq_errors == []
            assert DEVICES <= set(host.dbirths), host.dbirths
            first_bdseq = host.bdseq
            assert host.birth_props[("cable", "pin_dc_plus_c")]["engUnit"] == "°C"
            assert isinstance(host.value("cable", "pin_dc_plus_c"), float)
            assert host.datatypes[("module.1", "present")] == DT.Boolean
        assert d.status()["telemetry"]["uplink"]["format"] == "sparkplug_b"

        # NCMD rebirth: the same bdSeq, every device born again
        dbirths = sub.seen("DBIRTH")
        ncmd = tahu.Payload(timestamp=0)
        ncmd.metrics.add(name=REBIRTH, datatype=DT.Boolean, boolean_value=True)
        sub.client.publish(f"spBv1.0/{SITE}/NCMD/{CABINET}", ncmd.SerializeToString(), qos=1)
        wait_for(lambda: sub.seen("NBIRTH") == 2, 10, what="NBIRTH after NCMD rebirth")
        wait_for(lambda: sub.seen("DBIRTH") >= dbirths + len(DEVICES), 10, what="DBIRTHs after rebirth")
        assert host.bdseq == first_bdseq

        # killed: the broker publishes the will, the NDEATH with the bdSeq of the NBIRTH before it
        d.stop(signal.SIGKILL)
        wait_for(lambda: sub.seen("NDEATH") == 1, 15, what="NDEATH will after SIGKILL")
        assert host.deaths == [first_bdseq]

        d = _start(tmp_path, text)
        wait_for(lambda: sub.seen("NBIRTH") == 3, 15, what=f"NBIRTH after restart\n{d.log()}")
        assert host.bdseq == (first_bdseq + 1) % 256

        with sub.lock:
            assert host.seq_errors == [], host.seq_errors[:5]

        # a broker outage: the telemetry records of that time are replayed after the reconnect, marked
        # historical. Read before the stop: the cabinet may be back before the test looks again.
        restart_bdseq = host.bdseq
        mqtt_broker.stop(signal.SIGTERM)
        store = tmp_path / "data" / "telemetry.sqlite3"
        stop_seq = d.status()["telemetry"]["last_seq"]
        # the outage lasts until it holds telemetry, not only the events of the daemon's start
        wait_for(lambda: len(_telemetry_times(store, stop_seq)) >= 2, 15, what="telemetry while the broker is away")
        outage_t = _telemetry_times(store, stop_seq)
        mqtt_broker.start()
        # every CONNECT, also one that fails while the broker is away, takes the next bdSeq
        wait_for(lambda: sub.seen("NBIRTH") == 4, 20, what=f"NBIRTH after the broker came back\n{d.log()}")
        assert host.bdseq != restart_bdseq
        # (by exception: a record whose values all stayed within their deadbands sends nothing)
        wait_for(lambda: outage_t & _historical_times(sub), 15, what=f"the outage's records as historical {outage_t}")
        try:
            wait_for(lambda: d.status()["telemetry"]["backlog"] == 0, 15, what="backlog drained")
        except AssertionError:
            raise AssertionError(str(d.status()["telemetry"])) from None
        with sub.lock:
            replayed_events = [json.loads(e) for e, _t, historical in host.events if historical]
            # nothing of a connection went out after its NDEATH (tests/test_sparkplug_reconnect.py), and
            # the seq runs on without a gap across the restart (the broker's own redeliveries to the
            # host's persistent session aside: Subscriber drops those)
            assert host.while_dead == [], host.while_dead[:5]
            assert host.seq_errors == [], host.seq_errors[:5]
        assert all("seq" in e for e in replayed_events)

        # a clean stop publishes the NDEATH itself, with the bdSeq of the last NBIRTH
        deaths = len(host.deaths)
        assert d.stop(signal.SIGTERM) == 0
        wait_for(lambda: len(host.deaths) > deaths, 10, what="NDEATH on a clean stop")
        assert host.deaths[-1] == host.bdseq
        assert (tmp_path / "data" / "sparkplug.bdseq").read_text().strip() == str(host.bdseq)
    finally:
        d.stop()
        sub.close()
