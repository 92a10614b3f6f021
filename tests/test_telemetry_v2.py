"""Telemetry schema v2: report by exception reconstructed within the deadbands; the decoder never crashes."""

from __future__ import annotations

import json
import math
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest

from edge.config import Config
from edge.sim.stepper import SimStepper
from edge.telemetry import v2decode
from edge.telemetry.compact import Deadbands
from edge.telemetry.formats import EncoderContext, V2Compact
from edge.telemetry.topics import Topics
from tests.test_sim_clock import SITE, config


def _encoder(store: Any, cfg: Config) -> V2Compact:
    t = cfg.telemetry
    ctx = EncoderContext(
        Topics("cabinet", "site", "cab"),
        "site",
        "cab",
        signals=store.signals,
        signal_count=lambda: store.alias_count,
        deadband=Deadbands(t.deadband_by_unit, t.deadband, t.deadband_default).of,
    )
    return V2Compact(ctx)


def _run(tmp_path: Path, cfg: Config, seconds: float) -> tuple[list[dict[str, Any]], list[bytes], bytes]:
    """Step the simulated cabinet with sessions; (truth per interval, v2 messages, birth)."""
    truth: list[dict[str, Any]] = []
    sim = SimStepper(cfg, tmp_path / "data", step_s=0.05)
    try:
        sampler = sim.cabinet.recorder.sampler
        flush = sampler.flush

        def tapped() -> list[dict[str, Any]]:
            samples = flush()
            truth.append({s["signal"]: s for s in samples})
            return samples

        sampler.flush = tapped  # type: ignore[method-assign]
        sim.set_sessions(True)
        sim.run(seconds)
        sim.cabinet.recorder.close_record()
        store = sim.cabinet.store
        store.flush()
        rows = [r for r in store.pending_raw(0, None, 100_000) if r.kind == "telemetry"]
        enc = _encoder(store, cfg)
        birth = enc.birth()[0].payload
        msgs = [enc.encode(rows[i : i + 3], False)[-1].payload for i in range(0, len(rows), 3)]
        return list(truth), msgs, birth  # a copy: close() flushes one more interval
    finally:
        sim.close()


def test_consumer_rebuilds_every_signal_within_its_deadband_every_second_and_safety_extremes_exactly(tmp_path):
    cfg = config(tmp_path, SITE)
    truth, msgs, birth = _run(tmp_path, cfg, 200.0)
    # live first, backlog later: feed the second half before the first, the decoder orders by seq
    order = msgs[len(msgs) // 2 :] + msgs[: len(msgs) // 2]
    decoded = list(v2decode.decode_all([birth, *order]))
    table = {s["signal"]: s for s in json.loads(birth)["signals"]}
    assert len(decoded) == len(truth) >= 199
    decoded.sort(key=lambda r: r["t_ms"])
    checked = extremes = 0
    for want, got in zip(truth, decoded, strict=True):
        have = {s["signal"]: s for s in got["samples"]}
        assert set(want) <= set(have)  # a signal polled slower than 1 s is held in between
        for name, w in want.items():
            g, sig = have[name], table[name]
            res = 10.0 ** sig["exp"]
            assert g["quality"] == w["quality"], (got["t_ms"], name)
            if w["last"] is None:
                assert g["last"] is None
                continue
            assert abs(g["last"] - w["last"]) <= sig["deadband"] + res / 2 + 1e-9, (got["t_ms"], name, g, w)
            checked += 1
            if sig["safety"]:
                assert abs(g["min"] - w["min"]) <= res / 2 + 1e-9 and abs(g["max"] - w["max"]) <= res / 2 + 1e-9
                extremes += w["min"] != w["max"]
    assert checked > 5000 and extremes > 50  # sessions ran: pins and coolant moved within seconds
    assert any(table[n]["safety"] for n in table) and table["cable.pin_dc_plus_c"]["deadband"] == 0.5


def test_v2_is_far_smaller_than_v1_for_the_same_intervals(tmp_path):
    cfg = config(tmp_path, SITE)
    truth, msgs, _birth = _run(tmp_path, cfg, 60.0)
    v1 = sum(len(json.dumps(list(t.values()), separators=(",", ":"))) for t in truth)
    v2 = sum(len(m) for m in msgs)
    assert v2 * 20 < v1, (v2, v1)


def _message(body: Any, flags: int = v2decode.ZLIB) -> bytes:
    return bytes((v2decode.MAGIC, v2decode.VERSION, flags)) + zlib.compress(msgpack.packb(body))


GOOD = {
    "c": "cab",
    "s": "site",
    "k": "t",
    "b": v2decode.birth_id([]),
    "m": 0,
    "r": [[1, 1000, msgpack.packb({"i": 1000, "k": True})]],
}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "neither"),
        (b"\xce", "truncated"),
        (b"\xce\x02", "truncated"),
        (b"\xce\x03\x01xx", "unsupported format version 3"),
        (b"\xce\x02\x03xx", "unknown compression"),
        (b"\xce\x02\x01" + b"garbage", "corrupted: zlib"),
        (_message(GOOD)[:-5], "truncated"),
        (_message({"c": "cab"}), "corrupted"),
        (_message({**GOOD, "k": "z"}), "unknown record kind"),
        (_message({**GOOD, "r": [[1, 2, 3]]}), "unexpected record payload"),
        (_message({**GOOD, "r": [[1, 2, b"\xc1"]]}), "corrupted"),
        (_message({**GOOD, "r": [[1, 2, msgpack.packb({"i": 1000, "n": 10**9})]]}), "intervals in one record"),
        (_message({**GOOD, "r": [[1, 2, msgpack.packb({"i": 1, "v": [[1, [5], [1]]]})]]}), "outside"),
        (b"\x00\x01\x02\x03binary", "neither"),
        (b'{"schema": "cabinet-edge/birth/2", "signals": [], "birth_id": 5}', "birth_id does not match"),
        (b'{"foo": 1}', "neither a v2 birth"),
        (b"\xce\x02\x00" + msgpack.packb([1, 2]), "corrupted"),
    ],
)
def test_decoder_refuses_truncated_corrupted_and_foreign_payloads_with_a_reason(payload, reason):
    dec = v2decode.Decoder()
    dec.feed(
        json.dumps(
            {"schema": v2decode.BIRTH_SCHEMA, "cabinet_id": "cab", "site_id": "site", "birth_id": 0, "signals": []}
        ).replace('"birth_id": 0', f'"birth_id": {v2decode.birth_id([])}')
    )
    with pytest.raises(v2decode.DecodeError, match=reason):
        dec.feed(payload)
        dec.finish()


def test_decoder_survives_random_corruption_of_real_messages(tmp_path):
    cfg = config(tmp_path, SITE)
    _truth, msgs, birth = _run(tmp_path, cfg, 30.0)
    rnd = __import__("random").Random(7)
    for m in msgs:
        for _ in range(25):
            b = bytearray(m)
            for _ in range(rnd.randint(1, 4)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
            cut = bytes(b[: rnd.randint(0, len(b))]) if rnd.random() < 0.3 else bytes(b)
            dec = v2decode.Decoder()
            dec.feed(birth)
            try:
                out = dec.feed(cut) + dec.finish()
            except v2decode.DecodeError:
                continue
            assert all(isinstance(r["seq"], int) for r in out)


def test_values_decode_to_the_unit_resolution():
    sig = v2decode.SignalDef(1, "x", "°C", -2, 0.5, True)
    assert sig.value(4512) == 45.12 and math.isclose(sig.value(-3), -0.03)


def test_decoded_lines_match_the_shipped_json_schema(tmp_path):
    import importlib.resources

    import jsonschema

    schema = json.loads(
        importlib.resources.files("edge").joinpath("schemas/telemetry-v2-decoded.schema.json").read_text()
    )
    cfg = config(tmp_path, SITE)
    _truth, msgs, birth = _run(tmp_path, cfg, 30.0)
    lines = list(v2decode.decode_all([birth, *msgs]))
    assert lines
    for line in lines:
        jsonschema.validate(line, schema)


def test_edge_telemetry_decode_reads_mosquitto_sub_hex_lines_and_reports_bad_ones(tmp_path):
    from click.testing import CliRunner

    from edge.cli import main

    cfg = config(tmp_path, SITE)
    _truth, msgs, birth = _run(tmp_path, cfg, 30.0)
    lines = [f"cabinet/site/cab/birth {birth.hex()}"] + [f"cabinet/site/cab/telemetry {m.hex()}" for m in msgs]
    lines.insert(2, "cabinet/site/cab/telemetry cafe00")
    res = CliRunner().invoke(main, ["telemetry", "decode"], input="\n".join(lines) + "\n")
    assert res.exit_code == 2
    out = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert len(out) >= 29 and all(r["cabinet_id"] == "cab" for r in out)
    assert "payload 3: neither a v2 message nor JSON" in res.stderr


def test_a_hostile_interval_count_is_refused_before_anything_of_its_size_is_allocated():
    tracemalloc.start()
    try:
        with pytest.raises(v2decode.DecodeError, match="intervals in one record"):
            v2decode.unpack_compact(0, {"i": 1000, "n": 10**9})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # bytes: the old code built a list of 10**9 items before refusing
