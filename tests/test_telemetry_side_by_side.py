"""v1 and v2 consumers side by side: two simulated cabinets, one on telemetry v1 JSON and one on v2, publish
to ONE real mosquitto; a plain-JSON consumer reads the v1 cabinet, a consumer built only on
edge.telemetry.v2decode (the standalone decoder, no daemon import) reads the v2 cabinet."""

from __future__ import annotations

import importlib.resources
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema

from edge.telemetry import v2decode
from tests.conftest import DaemonProcess, wait_for
from tests.mqtt_broker import Broker, Consumer
from tests.mqtt_sim import CABINET, SITE, mqtt_sim_config

INTERVAL_S = 0.2  # mqtt_sim_config: record_s = 5 intervals, so a v2 record leaves every second
MIN_INTERVALS = 10  # a few seconds of telemetry per cabinet
# what a backend reads of a sample besides its OCPP fields (mean and n are v1 only: v2 sends the last value)
SAMPLE_FIELDS = {"signal", "unit", "quality", "min", "max", "last"}


def _cabinet(tmp: Path, port: int, fmt: str, cabinet_id: str) -> DaemonProcess:
    tmp.mkdir()
    text = mqtt_sim_config(tmp, port, interval_s=INTERVAL_S)
    assert text.rstrip().endswith(f"record_s = {INTERVAL_S * 5}")  # [telemetry] is the last table
    text = text.replace(f'cabinet_id = "{CABINET}"', f'cabinet_id = "{cabinet_id}"', 1)
    cfg = tmp / "config.toml"
    cfg.write_text(f'{text}format = "{fmt}"\n')
    d = DaemonProcess(cfg, str(tmp / "edge.sock"))
    d.wait_ready()
    return d


def _store_seqs(data_dir: Path) -> tuple[int, set[int]]:
    """(highest seq ever given, seqs still stored = not acknowledged) of a stopped daemon's store."""
    db = sqlite3.connect(data_dir / "telemetry.sqlite3")
    try:
        last = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        left = {int(r[0]) for r in db.execute("SELECT seq FROM records")}
    finally:
        db.close()
    return int(last[0]) if last else 0, left


def _v1_records(consumer: Consumer, *leaves: str) -> list[dict[str, Any]]:
    """The plain-JSON consumer: records of its messages, parsed with json and nothing else."""
    return [r for leaf in leaves for m in consumer.on(leaf) for r in json.loads(m.payload)["records"]]


def _v2_decode(consumer: Consumer) -> tuple[list[dict[str, Any]], list[int]]:
    """(decoded v1-form lines, seqs of every record in the messages) from the raw payloads only."""
    dec = v2decode.Decoder()
    lines: list[dict[str, Any]] = []
    seqs: list[int] = []
    with consumer.lock:
        msgs = list(consumer.messages)
    for m in msgs:
        leaf = m.topic.rsplit("/", 1)[-1]
        if leaf == "birth" or (leaf in ("telemetry", "events") and v2decode.is_v2(m.payload)):
            if leaf != "birth":
                seqs += [r.seq for r in v2decode.decode_message(m.payload).records]
            lines += dec.feed(m.payload)
    return lines + dec.finish(), seqs


def test_v1_and_v2_cabinets_on_one_broker_each_consumer_gets_every_record_and_the_same_signals(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    v1_base, v2_base = f"cabinet/{SITE}/cab-v1", f"cabinet/{SITE}/cab-v2"
    v1_consumer = Consumer(mqtt_broker.port, topic=f"{v1_base}/#", client_id="backend-v1")
    v2_consumer = Consumer(mqtt_broker.port, topic=f"{v2_base}/#", client_id="backend-v2")
    cabinets = {
        "v1": _cabinet(tmp_path / "v1", mqtt_broker.port, "v1", "cab-v1"),
        "v2": _cabinet(tmp_path / "v2", mqtt_broker.port, "v2", "cab-v2"),
    }
    try:
        wait_for(
            lambda: (
                len(_v1_records(v1_consumer, "telemetry")) >= MIN_INTERVALS
                and len([x for x in _v2_decode(v2_consumer)[0] if "samples" in x]) >= MIN_INTERVALS
            ),
            30,  # two daemons and a broker on a busy 2-core machine
            what="a few seconds of telemetry from both cabinets",
        )
    finally:
        # SIGTERM: the v2 recorder writes its record in progress; what is not acknowledged stays stored
        codes = {fmt: d.stop(signal.SIGTERM, timeout=10) for fmt, d in cabinets.items()}
    assert codes == {"v1": 0, "v2": 0}, {fmt: d.log()[-2000:] for fmt, d in cabinets.items()}

    # every record by seq, no gap: what each consumer got plus what its cabinet still holds is 1..last
    def seqs_of(fmt: str) -> set[int]:
        if fmt == "v1":
            return {r["seq"] for r in _v1_records(v1_consumer, "telemetry", "events")}
        return set(_v2_decode(v2_consumer)[1])

    for fmt in ("v1", "v2"):
        last, left = _store_seqs(tmp_path / fmt / "data")
        # the broker acknowledged these to the cabinet; its delivery to the consumer may still be under way
        acked = set(range(1, last + 1)) - left
        wait_for(lambda f=fmt, a=acked: seqs_of(f) >= a, 10, what=f"{fmt}: the acknowledged records at the consumer")
        got = seqs_of(fmt)
        assert got, fmt
        assert got == set(range(1, max(got) + 1)), f"{fmt}: gap in {sorted(set(range(1, max(got) + 1)) - got)}"
        assert got | left == set(range(1, last + 1)), f"{fmt}: lost {sorted(set(range(1, last + 1)) - got - left)}"

    v2_lines = _v2_decode(v2_consumer)[0]
    # the v1 consumer: plain JSON, every message valid against the shipped mqtt-v1 schema
    assert v1_consumer.errors == []
    assert not any(v2decode.is_v2(m.payload) for m in v1_consumer.on("telemetry") + v1_consumer.on("events"))
    assert not v1_consumer.on("birth")
    # the v2 consumer: every decoded line valid against the decoded form's schema; status/state stay JSON
    decoded_schema = json.loads(
        importlib.resources.files("edge").joinpath("schemas/telemetry-v2-decoded.schema.json").read_text()
    )
    validator = jsonschema.Draft202012Validator(decoded_schema)
    for line in v2_lines:
        validator.validate(line)
    assert v2_consumer.errors == []
    assert all(v2decode.is_v2(m.payload) for m in v2_consumer.on("telemetry") + v2_consumer.on("events"))

    # both rebuild the same signals: every decoded v2 interval holds every signal the v1 cabinet sends,
    # with the fields (and the same unit and OCPP fields) the v1 consumer reads
    v1_intervals = _v1_records(v1_consumer, "telemetry")
    v2_intervals = [x for x in v2_lines if "samples" in x]
    assert len(v1_intervals) >= MIN_INTERVALS and len(v2_intervals) >= MIN_INTERVALS
    v1_meta = {s["signal"]: {k: v for k, v in s.items() if k not in ("n", "mean", "min", "max", "last", "quality")}
               for r in v1_intervals for s in r["samples"]}  # fmt: skip
    assert len(v1_meta) >= 30  # grid meter, modules, cable, control
    for x in v2_intervals:
        got_meta: dict[str, dict[str, Any]] = {}
        for s in x["samples"]:
            assert SAMPLE_FIELDS <= set(s), s
            got_meta[s["signal"]] = {k: v for k, v in s.items() if k not in SAMPLE_FIELDS - {"signal", "unit"}}
        assert got_meta == {n: v1_meta[n] for n in got_meta}, x["seq"]  # same units and OCPP fields
    # after the first keyframe the decoder holds every signal: the v2 backend sees what the v1 one sees
    assert set(v1_meta) == {s["signal"] for s in v2_intervals[-1]["samples"]}
    assert all(x["interval_s"] == INTERVAL_S for x in v1_intervals + v2_intervals)
    v1_consumer.close()
    v2_consumer.close()
