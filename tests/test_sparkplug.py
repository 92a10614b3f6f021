"""Sparkplug B messages (edge/telemetry/sparkplug.py), decoded by an independent Tahu-schema decoder.

Records are made by the real Sampler from driver Readings, so the input is what the store holds. Every
payload is read back with tests/sparkplug_host.py (Eclipse Tahu schema from another package), never with
our own generated module.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from esio_spb_builder.core import sparkplug_b_pb2 as tahu

from drivers.readings import STALE, Reading
from edge.config.telemetry import Sparkplug, Telemetry
from edge.telemetry import sparkplug_b_pb2 as ours
from edge.telemetry.sampler import Sampler
from edge.telemetry.sparkplug import REBIRTH, BdSeqFile, Message, SparkplugNode, for_cabinet, split_signal
from tests.sparkplug_host import DT, Host, decode

REPO = Path(__file__).resolve().parent.parent
T0 = 1_764_160_000_000

# the default simulated cabinet's kinds of signals (one of each family)
BASE = {
    "cable.pin_dc_plus_c": (55.0, "°C"),
    "cable.pin_dc_minus_c": (54.0, "°C"),
    "cable.coolant_in_c": (30.0, "°C"),
    "cable.coolant_flow_lpm": (2.0, "l/min"),
    "cable.leak": (0.0, ""),
    "module.1.voltage_v": (800.0, "V"),
    "module.1.present": (1.0, ""),
    "module.2.current_a": (50.0, "A"),
    "grid.Voltage.L1": (230.1, "V"),
    "grid.Energy.Active.Import.Register": (1234.56, "kWh"),
    "control.limit_a": (200.0, "A"),
}


def record(values: dict[str, float] | None = None, stale: tuple[str, ...] = (), spread: float = 0.0) -> dict:
    """One stored telemetry record as the Recorder writes it; ``spread`` puts a lower reading first."""
    s = Sampler()
    for sig, (base, unit) in BASE.items():
        v = (values or {}).get(sig, base)
        if sig in stale:
            s.add(Reading(sig, v, unit, 0.0, STALE))
            continue
        if spread:
            s.add(Reading(sig, v - spread, unit, 0.0))
        s.add(Reading(sig, v, unit, 0.0))
    return {"interval_s": 1.0, "samples": s.flush()}


def node(tmp_path: Path, **kw: Any) -> SparkplugNode:
    clock = itertools.count(T0 + 10_000_000, 7)
    return SparkplugNode("site-001", "cab-017", BdSeqFile(tmp_path / "sparkplug.bdseq"), lambda: next(clock), **kw)


def connect(n: SparkplugNode, host: Host) -> list[Message]:
    will = n.will()
    births = n.births()
    for m in births:
        host.receive(m.topic, m.payload)
    return [will, *births]


def feed(host: Host, msgs: list[Message]) -> None:
    for m in msgs:
        host.receive(m.topic, m.payload)


def test_ndeath_and_nbirth_carry_the_same_bdseq_and_the_node_metrics(tmp_path: Path) -> None:
    n, host = node(tmp_path), Host()
    will, nbirth = connect(n, host)
    assert (will.topic, will.qos, will.retain) == ("spBv1.0/site-001/NDEATH/cab-017", 1, False)
    assert (nbirth.topic, nbirth.qos, nbirth.retain) == ("spBv1.0/site-001/NBIRTH/cab-017", 0, False)
    host.receive(will.topic, will.payload)
    assert host.bdseq == 0 and host.deaths == [0]
    p = decode(nbirth.payload)
    assert p.seq == 0 and p.timestamp > T0
    metrics = {m.name: m for m in p.metrics}
    assert set(metrics) == {"bdSeq", REBIRTH, "Event"}
    assert metrics[REBIRTH].datatype == DT.Boolean and metrics[REBIRTH].boolean_value is False
    assert metrics["Event"].datatype == DT.String and metrics["Event"].is_null
    assert n.subscriptions() == ["spBv1.0/site-001/NCMD/cab-017"]
    # a clean stop publishes the NDEATH itself, with the bdSeq of this connection
    assert decode(n.death().payload).metrics[0].long_value == 0


def test_bdseq_survives_a_restart_wraps_at_256_and_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "data" / "sparkplug.bdseq"
    assert [BdSeqFile(path).advance() for _ in range(3)] == [0, 1, 2]  # a new object each time: a restart
    restarted = node(tmp_path / "data")
    restarted.bdseq_file = BdSeqFile(path)
    host = Host()
    will = connect(restarted, host)[0]
    assert decode(will.payload).metrics[0].long_value == 3 and host.bdseq == 3
    path.write_text("255\n")
    assert BdSeqFile(path).advance() == 0
    path.write_text("garbage")
    assert BdSeqFile(path).advance() == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["sparkplug.bdseq"]  # no temporary left behind


def test_dbirth_per_device_with_names_aliases_types_values_units_and_timestamps(tmp_path: Path) -> None:
    n, host = node(tmp_path), Host()
    connect(n, host)
    msgs = n.encode("telemetry", T0, record(spread=0.5))
    feed(host, msgs)
    devices = [m.topic.rsplit("/", 1)[1] for m in msgs]
    assert all("/DBIRTH/" in m.topic for m in msgs)
    assert sorted(devices) == ["cable", "cable.cooling", "control", "grid", "module.1", "module.2"]
    assert host.value("cable", "pin_dc_plus_c") == 55.0
    assert host.value("cable", "pin_dc_plus_c.min") == 54.5  # safety signals keep the interval's extremes
    assert host.value("cable", "pin_dc_plus_c.max") == 55.0
    assert host.value("cable.cooling", "coolant_flow_lpm.min") == 1.5
    assert host.value("cable.cooling", "leak") is False
    assert ("module.1", "voltage_v.min") not in host.live  # not a safety signal: last value only
    assert host.value("module.1", "present") is True
    assert host.value("grid", "Energy.Active.Import.Register") == 1234.56
    assert host.value("control", "limit_a") == 200.0
    assert host.datatypes[("cable.cooling", "leak")] == DT.Boolean
    assert host.datatypes[("grid", "Voltage.L1")] == DT.Double
    assert host.birth_props[("cable", "pin_dc_plus_c")] == {
        "Quality": 192,
        "engUnit": "°C",
        "measurand": "Temperature",
        "location": "Outlet",
        "point": "pin_dc_plus",
    }
    assert {p.t_ms for key, p in host.live.items() if key[0]} == {T0}
    aliases = list(host.names)
    assert len(aliases) == len(set(aliases)) == len(host.datatypes) - 1  # every metric but bdSeq
    assert host.seq_errors == []


def test_ddata_reports_only_changes_by_alias(tmp_path: Path) -> None:
    n, host = node(tmp_path), Host()
    connect(n, host)
    feed(host, n.encode("telemetry", T0, record()))
    assert n.encode("telemetry", T0 + 1000, record()) == []  # nothing changed: nothing sent
    msgs = n.encode("telemetry", T0 + 2000, record({"grid.Voltage.L1": 231.0, "module.1.present": 0.0}))
    assert sorted(m.topic for m in msgs) == [
        "spBv1.0/site-001/DDATA/cab-017/grid",
        "spBv1.0/site-001/DDATA/cab-017/module.1",
    ]
    feed(host, msgs)
    (grid,) = decode(msgs[[m.topic for m in msgs].index("spBv1.0/site-001/DDATA/cab-017/grid")].payload).metrics
    assert not grid.name and not grid.HasField("datatype") and grid.timestamp == T0 + 2000
    assert host.value("grid", "Voltage.L1") == 231.0 and host.value("module.1", "present") is False
    assert host.live[("grid", "Voltage.L1")].t_ms == T0 + 2000
    assert host.live[("grid", "Energy.Active.Import.Register")].t_ms == T0  # unchanged: the birth's point
    assert host.seq_errors == []


def test_deadband_holds_small_changes_but_never_the_min_and_max_of_safety_signals(tmp_path: Path) -> None:
    n, host = node(tmp_path, deadband=lambda _signal, unit: {"°C": 0.5, "V": 1.0}.get(unit, 0.0)), Host()
    connect(n, host)
    feed(host, n.encode("telemetry", T0, record()))
    msgs = n.encode("telemetry", T0 + 1000, record({"grid.Voltage.L1": 230.9, "cable.pin_dc_plus_c": 55.3}))
    feed(host, msgs)
    assert host.value("grid", "Voltage.L1") == 230.1  # within 1 V of what was sent
    assert host.value("cable", "pin_dc_plus_c") == 55.0  # within 0.5 °C
    assert host.value("cable", "pin_dc_plus_c.max") == 55.3  # extremes are exact
    feed(host, n.encode("telemetry", T0 + 2000, record({"grid.Voltage.L1": 231.2})))
    assert host.value("grid", "Voltage.L1") == 231.2  # 1.1 V from the last sent value


def test_quality_and_null_values_reach_the_host(tmp_path: Path) -> None:
    n, host = node(tmp_path), Host()
    connect(n, host)
    feed(host, n.encode("telemetry", T0, record()))
    feed(host, n.encode("telemetry", T0 + 1000, record(stale=("grid.Voltage.L1",))))
    point = host.live[("grid", "Voltage.L1")]
    assert (point.value, point.quality) == (None, 500)  # no good reading: is_null, STALE
    feed(host, n.encode("telemetry", T0 + 2000, record()))
    point = host.live[("grid", "Voltage.L1")]
    assert (point.value, point.quality) == (230.1, None)  # good again: a DATA metric without Quality is GOOD


def test_replayed_records_are_historical_and_do_not_disturb_the_live_stream(tmp_path: Path) -> None:
    """Live and replayed records arrive interleaved (docs/TELEMETRY.md); each stream is reported by
    exception against itself, so a host rebuilds both the live values and the full history."""
    n, host = node(tmp_path), Host()
    connect(n, host)
    rng = random.Random(18)
    live_t, hist_t = T0 + 1_000_000, T0
    expected_hist: list[tuple[int, float]] = []
    expected_live = None
    for _ in range(200):
        historical = rng.random() < 0.5
        v = rng.choice([230.0, 230.0, 231.0, 232.5])
        if historical:
            hist_t += 1000
            t = hist_t
            expected_hist.append((t, v))
        else:
            live_t += 1000
            t = live_t
            expected_live = v
        feed(host, n.encode("telemetry", t, record({"grid.Voltage.L1": v}), historical=historical))
    assert host.seq_errors == []
    assert host.value("grid", "Voltage.L1") == expected_live
    points = [p for p in host.history[("grid", "Voltage.L1")] if p.historical]
    assert points and all(p.historical for p in points)
    # a host fills the history by exception: the value at each replayed time is the last point at or before it
    for t, v in expected_hist:
        last = [p for p in points if p.t_ms <= t][-1]
        assert last.value == v, f"history at {t}: {last.value}, expected {v}"


def test_events_are_ndata_string_metrics_with_their_time_and_seq(tmp_path: Path) -> None:
    n, host = node(tmp_path), Host()
    connect(n, host)
    event = {"kind": "fault_raised", "name": "pin_dc_plus_stale", "detail": "no frame for 600 ms"}
    (live,) = n.encode("event", T0 + 5, event, seq=8121)
    (old,) = n.encode("event", T0 + 1, event, seq=8120, historical=True)
    assert live.topic == "spBv1.0/site-001/NDATA/cab-017"
    feed(host, [live, old])
    (text, t_ms, historical), (_, t_old, hist_old) = host.events
    assert json.loads(text) == {**event, "seq": 8121, "t_ms": T0 + 5}
    assert (t_ms, historical, t_old, hist_old) == (T0 + 5, False, T0 + 1, True)


def test_seq_counts_every_message_and_wraps_after_255(tmp_path: Path) -> None:
    n, host = node(tmp_path), Host()
    connect(n, host)
    seqs = []
    for i in range(300):
        for m in n.encode("event", T0 + i, {"kind": "started", "name": "edge"}):
            host.receive(m.topic, m.payload)
            seqs.append(decode(m.payload).seq)
    assert seqs[:3] == [1, 2, 3] and seqs[254:257] == [255, 0, 1]
    assert host.seq_errors == []


def ncmd(metric: Any) -> bytes:
    """An NCMD as a host builds it, with the Tahu schema."""
    p = tahu.Payload(timestamp=T0)
    p.metrics.append(metric)
    return bytes(p.SerializeToString())


def test_ncmd_rebirth_returns_the_births_with_the_same_bdseq_and_the_latest_values(tmp_path: Path) -> None:
    n, host = node(tmp_path), Host()
    connect(n, host)
    feed(host, n.encode("telemetry", T0, record()))
    feed(host, n.encode("telemetry", T0 + 1000, record({"control.limit_a": 120.0})))
    topic = "spBv1.0/site-001/NCMD/cab-017"
    by_name = tahu.Payload.Metric(name=REBIRTH, datatype=DT.Boolean, boolean_value=True)
    msgs = n.command(topic, ncmd(by_name))
    assert "/NBIRTH/" in msgs[0].topic and len(msgs) == 1 + 6
    rebirth = Host()
    feed(rebirth, msgs)
    assert rebirth.bdseq == host.bdseq == 0 and rebirth.seq_errors == []
    assert rebirth.value("control", "limit_a") == 120.0
    assert rebirth.live[("control", "limit_a")].t_ms == T0 + 1000
    assert rebirth.names == host.names  # aliases are stable across rebirths
    alias = next(a for a, key in host.names.items() if key == ("", REBIRTH))
    by_alias = tahu.Payload.Metric(alias=alias, datatype=DT.Boolean, boolean_value=True)
    assert "/NBIRTH/" in n.command(topic, ncmd(by_alias))[0].topic
    assert n.command(topic, ncmd(tahu.Payload.Metric(name=REBIRTH, boolean_value=False))) == []
    assert n.command(topic, b"\xff\xff garbage") == []
    assert n.command("spBv1.0/site-001/NCMD/other", ncmd(by_name)) == []


def test_a_new_metric_of_a_known_device_rebirths_that_device(tmp_path: Path) -> None:
    n, host = node(tmp_path), Host()
    connect(n, host)
    rec = record()
    feed(host, n.encode("telemetry", T0, rec))
    before = dict(host.names)
    extra = {"signal": "module.1.temperature_c", "unit": "°C", "quality": "ok", "n": 1, "min": 40.0}
    rec["samples"].append({**extra, "max": 40.0, "mean": 40.0, "last": 40.0})
    msgs = n.encode("telemetry", T0 + 1000, rec)
    assert [m.topic.split("/")[2:] for m in msgs] == [["DBIRTH", "cab-017", "module.1"]]
    feed(host, msgs)
    assert host.value("module.1", "temperature_c") == 40.0 and host.value("module.1", "voltage_v") == 800.0
    assert all(host.names[a] == key for a, key in before.items())


def test_births_after_a_reconnect_announce_every_known_device(tmp_path: Path) -> None:
    n, host = node(tmp_path), Host()
    connect(n, host)
    feed(host, n.encode("telemetry", T0, record()))
    again = Host()
    msgs = connect(n, again)
    assert decode(msgs[0].payload).metrics[0].long_value == 1  # the will of the new connect
    assert again.bdseq == 1 and len(again.dbirths) == 6 and again.seq_errors == []
    # the backlog after a reconnect starts with full records: nothing is held back against an old baseline
    replay = n.encode("telemetry", T0 - 5000, record(), historical=True)
    assert len(replay) == 6 and all("/DDATA/" in m.topic for m in replay)


def test_split_signal_names_the_devices() -> None:
    assert split_signal("cable.pin_dc_plus_c") == ("cable", "pin_dc_plus_c")
    assert split_signal("cable.coolant_out_c") == ("cable.cooling", "coolant_out_c")
    assert split_signal("cable.leak") == ("cable.cooling", "leak")
    assert split_signal("module.12.temperature_c") == ("module.12", "temperature_c")
    assert split_signal("connector.2.current_a") == ("connector.2", "current_a")  # one device per connector
    assert split_signal("meter_ev.Power.Active.Import") == ("meter_ev", "Power.Active.Import")
    assert split_signal("ambient_c") == ("cabinet", "ambient_c")


def test_ids_with_topic_characters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="group_id"):
        SparkplugNode("a/b", "cab", BdSeqFile(tmp_path / "x"), lambda: 0)
    with pytest.raises(ValueError):
        Sparkplug(edge_node_id="cab+1")
    assert Telemetry().sparkplug.group_id is None and Telemetry().sparkplug.data_qos == 0


def test_for_cabinet_defaults_the_ids_to_site_and_cabinet(tmp_path: Path) -> None:
    n = for_cabinet(Telemetry().sparkplug, "site-001", "cab-017", tmp_path, lambda: T0)
    assert n.topic("NBIRTH") == "spBv1.0/site-001/NBIRTH/cab-017" and n.data_qos == 0
    n.will()
    assert (tmp_path / "sparkplug.bdseq").read_text() == "0\n"
    cfg = Sparkplug(group_id="fleet-eu", edge_node_id="charger-9", data_qos=1)
    n = for_cabinet(cfg, "site-001", "cab-017", tmp_path, lambda: T0)
    assert n.topic("DDATA", "grid") == "spBv1.0/fleet-eu/DDATA/charger-9/grid" and n.data_qos == 1


def test_our_schema_is_wire_compatible_with_tahu() -> None:
    """Every field we have has Tahu's number and type; every DataType code matches by name."""

    def check(ours_desc: Any, theirs_desc: Any) -> None:
        for f in ours_desc.fields:
            t = theirs_desc.fields_by_name[f.name]
            assert (f.number, f.type, f.is_repeated) == (t.number, t.type, t.is_repeated), f.full_name
        for nested in ours_desc.nested_types:
            check(nested, theirs_desc.nested_types_by_name[nested.name])

    check(ours.Payload.DESCRIPTOR, tahu.Payload.DESCRIPTOR)
    for v in ours.DataType.DESCRIPTOR.values:
        assert tahu.DataType.Value(v.name) == v.number


def test_generated_module_matches_the_proto(tmp_path: Path) -> None:
    """The committed sparkplug_b_pb2.py/.pyi are protoc's output for the committed .proto (grpcio-tools
    pinned in the test extra; regenerate with the command in the .proto's header)."""
    pytest.importorskip("grpc_tools")
    src = tmp_path / "src" / "edge" / "telemetry"
    src.mkdir(parents=True)
    shutil.copy(REPO / "edge/telemetry/sparkplug_b.proto", src)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path / 'src'}", f"--python_out={out}"]
    subprocess.run([*cmd, f"--pyi_out={out}", "edge/telemetry/sparkplug_b.proto"], check=True, timeout=60)
    for name in ("sparkplug_b_pb2.py", "sparkplug_b_pb2.pyi"):
        generated = (out / "edge/telemetry" / name).read_text()
        assert generated == (REPO / "edge/telemetry" / name).read_text(), f"{name} is stale: regenerate it"
