"""Uplink against a real mosquitto: buffered while the broker is away, in order, nothing lost."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config.telemetry import Mqtt, Tls
from edge.telemetry.uplink import backoff_s
from tests.conftest import wait_for
from tests.mqtt_broker import Broker, Consumer, make_certs
from tests.uplink_harness import FEW_SIGNALS, UplinkHarness


def cfg(port: int, **kw) -> Mqtt:
    return Mqtt(port=port, reconnect_min_s=0.1, reconnect_max_s=1.0, **kw)


@pytest.fixture
def cleanup() -> Iterator[list]:
    things: list = []
    yield things
    for t in reversed(things):
        if isinstance(t, Broker):
            t.stop(signal.SIGKILL)
        else:
            t.close() if isinstance(t, Consumer) else t.stop()


def arrival(consumer: Consumer) -> list[dict]:
    """Every record on telemetry and events, in the order the consumer received them."""
    out = []
    with consumer.lock:
        msgs = list(consumer.messages)
    for m in msgs:
        if m.topic.endswith(("/telemetry", "/events")):
            out += [{**r, "replayed": m.body["replayed"]} for r in m.body["records"]]
    return out


def assert_exactly(consumer: Consumer, expected: set[int]) -> list[dict]:
    recs = arrival(consumer)
    seen = {r["seq"] for r in recs}
    assert seen == expected, f"missing {sorted(expected - seen)[:10]}, unexpected {sorted(seen - expected)[:10]}"
    by_seq: dict[int, str] = {}
    for r in recs:  # duplicates are allowed, but only as the very same record
        body = json.dumps({k: v for k, v in r.items() if k != "replayed"}, sort_keys=True)
        assert by_seq.setdefault(r["seq"], body) == body, f"seq {r['seq']} delivered with two contents"
    assert not consumer.errors, consumer.errors[:3]
    return recs


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_absent_at_start_everything_is_buffered_then_delivered_in_seq_order(
    tmp_path: Path, cleanup, protocol: str
):
    broker = Broker(tmp_path / "broker")
    cleanup.append(broker)
    broker.start()
    consumer = Consumer(broker.port)  # the backend's persistent session exists before the outage
    cleanup.append(consumer)
    broker.stop(signal.SIGTERM)

    h = UplinkHarness(tmp_path / "data", cfg(broker.port, protocol=protocol, batch_samples=100))
    cleanup.append(h)
    seqs = [*h.append_telemetry(120), h.append_event("fault_raised", "coolant_flow_low", detail="1.2 l/min")]
    h.start()
    wait_for(lambda: h.uplink.stats.connect_failures >= 2, 10, what="uplink retrying while broker is down")
    assert h.backlog() == len(seqs) and h.uplink.stats.messages_sent == 0

    broker.start()
    wait_for(lambda: h.backlog() == 0, 20, what="backlog drained")
    wait_for(lambda: {r["seq"] for r in arrival(consumer)} >= set(seqs), 10, what="consumer has every record")
    recs = assert_exactly(consumer, set(seqs))
    assert [r["seq"] for r in recs] == sorted(seqs), "backlog replayed in seq order, without duplicates"
    assert all(r["replayed"] for r in recs)
    status = wait_for(lambda: consumer.on("status"), 5)
    assert status[-1].body["status"] == "online" and status[-1].body["cabinet_id"] == "cab-1"
    assert all(m.body["seq_first"] <= m.body["seq_last"] for m in consumer.on("telemetry"))
    assert max(len(m.body["records"]) for m in consumer.on("telemetry")) > 1, "backlog is batched"


def test_broker_restart_in_the_middle_of_a_backlog_loses_nothing(tmp_path: Path, cleanup):
    broker = Broker(tmp_path / "broker")
    cleanup.append(broker)
    broker.start()
    consumer = Consumer(broker.port)
    cleanup.append(consumer)
    h = UplinkHarness(tmp_path / "data", cfg(broker.port, batch_samples=10, max_inflight=4))
    cleanup.append(h)
    seqs = h.append_telemetry(1500, signals=FEW_SIGNALS)
    h.start()
    wait_for(lambda: len(arrival(consumer)) >= 100, 20, what="backlog draining")
    assert h.backlog() > 300, "the restart must hit the middle of the backlog"
    before = [r["seq"] for r in arrival(consumer)]
    broker.restart(signal.SIGTERM)  # SIGTERM: mosquitto keeps what it acknowledged (see docs/TELEMETRY.md)
    live = h.append_telemetry(5, start=5000, t0_ms=int(time.time() * 1000), signals=FEW_SIGNALS)
    wait_for(lambda: h.backlog() == 0, 30, what="backlog drained after the restart")
    wait_for(lambda: {r["seq"] for r in arrival(consumer)} >= set(seqs + live), 15, what="every seq at the consumer")
    recs = assert_exactly(consumer, set(seqs + live))
    assert h.uplink.stats.connects >= 2
    assert before == sorted(set(before)), "in seq order until the restart"
    assert all(r["replayed"] for r in recs if r["seq"] in seqs)


def test_live_data_goes_out_within_one_interval_while_a_backlog_drains(tmp_path: Path, cleanup):
    broker = Broker(tmp_path / "broker")
    cleanup.append(broker)
    broker.start()
    consumer = Consumer(broker.port)
    cleanup.append(consumer)
    h = UplinkHarness(tmp_path / "data", cfg(broker.port, batch_samples=10, max_inflight=4))
    cleanup.append(h)
    h.append_telemetry(3000, signals=FEW_SIGNALS)
    h.start()
    wait_for(lambda: len(arrival(consumer)) >= 50, 20, what="backlog draining")
    t0 = time.monotonic()
    seq = h.append_telemetry(1, start=9000, t0_ms=int(time.time() * 1000))[0]
    hit = wait_for(lambda: [r for r in arrival(consumer) if r["seq"] == seq], 5, interval=0.01)
    latency = time.monotonic() - t0
    assert latency < 1.0, f"live record took {latency:.2f} s (interval 1 s)"
    assert hit[0]["replayed"] is False
    assert h.backlog() > 1000, "the backlog was still draining when the live record went out"
    assert not consumer.errors


def test_tls_with_client_certificates_and_no_entry_without_one(tmp_path: Path, cleanup):
    certs = make_certs(tmp_path / "pki")
    broker = Broker(tmp_path / "broker", tls=certs)
    cleanup.append(broker)
    broker.start()
    consumer = Consumer(broker.port, tls=certs)
    cleanup.append(consumer)
    tls = Tls(enabled=True, ca_file=str(certs.ca), cert_file=str(certs.client_cert), key_file=str(certs.client_key))
    h = UplinkHarness(tmp_path / "data", cfg(broker.port, tls=tls))
    cleanup.append(h)
    seqs = h.append_telemetry(10)
    h.start()
    wait_for(lambda: {r["seq"] for r in arrival(consumer)} >= set(seqs), 15, what="delivery over TLS")
    assert_exactly(consumer, set(seqs))

    anon = UplinkHarness(
        tmp_path / "data2", cfg(broker.port, tls=Tls(enabled=True, ca_file=str(certs.ca)), client_id="no-cert")
    )
    cleanup.append(anon)
    anon.append_telemetry(3)
    anon.start()
    wait_for(
        lambda: anon.uplink.stats.connect_failures + anon.uplink.stats.disconnects >= 2,
        10,
        what="connection without client certificate refused",
    )
    assert anon.uplink.stats.messages_acked == 0 and anon.backlog() == 3


def test_username_and_password_from_config(tmp_path: Path, cleanup):
    pw = tmp_path / "passwd"
    pw.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "cab-1", "s3cret"], check=True, timeout=10)
    broker = Broker(tmp_path / "broker", extra_conf=f"password_file {pw}\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    cleanup.append(broker)
    broker.start()
    wrong = UplinkHarness(tmp_path / "d1", cfg(broker.port, username="cab-1", password="nope", client_id="w"))
    cleanup.append(wrong)
    wrong.append_telemetry(2)
    wrong.start()
    wait_for(
        lambda: (wrong.uplink.stats.last_error or "").startswith("broker refused"), 10, what="bad password refused"
    )
    right = UplinkHarness(tmp_path / "d2", cfg(broker.port, username="cab-1", password="s3cret"))
    cleanup.append(right)
    right.append_telemetry(2)
    right.start()
    wait_for(lambda: right.backlog() == 0, 10, what="delivery with the right password")
    assert wrong.backlog() == 2


def test_reconnect_backoff_doubles_to_the_maximum_with_jitter():
    rnd = random.Random(7)
    delays = [backoff_s(n, 1.0, 120.0, rnd) for n in range(1, 12)]
    caps = [min(120.0, 2.0 ** (n - 1)) for n in range(1, 12)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert delays[-1] >= 60.0
    fleet = [backoff_s(8, 1.0, 120.0, random.Random(i)) for i in range(200)]
    assert max(fleet) - min(fleet) > 30.0, "200 cabinets must not reconnect in the same second"


def test_a_broken_tls_config_leaves_telemetry_in_the_store_and_never_raises(tmp_path: Path, cleanup):
    events: list[tuple[str, str, dict]] = []
    h = UplinkHarness(
        tmp_path / "data",
        cfg(1883, tls=Tls(enabled=True, ca_file=str(tmp_path / "missing.pem"))),
        on_event=lambda k, n, d: events.append((k, n, d)),
    )
    cleanup.append(h)
    h.append_telemetry(2)
    h.start()
    # the error is recorded first, the event follows on the loop: wait for both
    wait_for(
        lambda: (h.uplink.stats.last_error or "").startswith("uplink not started") and events, 5, what="error reported"
    )
    assert events[0][0] == "uplink_error"
    assert h.task is not None and not h.task.done() and h.backlog() == 2


def test_a_backlog_drain_deletes_acknowledged_records_in_group_commits(
    tmp_path: Path, cleanup, monkeypatch: pytest.MonkeyPatch
):
    # One delete transaction per PUBACK held SQLite's write lock ~1,000 times a second during a drain and
    # stalled the control loop's inserts; PUBACKs arriving in a burst must share one delete.
    from edge.telemetry.store import StoreView

    deletes: list[int] = []
    real_delete = StoreView.delete

    def counting(self: StoreView, seqs: list[int]) -> None:
        deletes.append(len(seqs))
        real_delete(self, seqs)

    monkeypatch.setattr(StoreView, "delete", counting)

    broker = Broker(tmp_path / "broker")
    cleanup.append(broker)
    broker.start()
    h = UplinkHarness(tmp_path / "data", cfg(broker.port, batch_samples=10))  # ~one record per message
    cleanup.append(h)
    seqs = h.append_telemetry(1500, signals=FEW_SIGNALS)
    h.start()
    wait_for(lambda: h.backlog() == 0, 60, what="backlog drained")
    acked = h.uplink.stats.messages_acked
    assert sum(deletes) >= len(seqs) and acked >= 300
    assert len(deletes) * 3 <= acked, f"{len(deletes)} delete transactions for {acked} PUBACKs"
