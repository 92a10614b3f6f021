"""Decoder of telemetry schema v2 for backends: stdlib + msgpack only, no import of the daemon.

Copy this one file into a backend, or ``from edge.telemetry.v2decode import ...``. The format is
documented byte for byte in docs/TELEMETRY.md ("Schema v2"); the decoded form (what :meth:`Decoder.feed`
returns and ``edge telemetry decode`` prints, one JSON object per line) has its JSON Schema in
``edge/schemas/telemetry-v2-decoded.schema.json``.

Usage::

    dec = Decoder()
    for topic, payload in messages:            # birth (retained), telemetry and events, any order
        for line in dec.feed(payload):         # v1-form records, ready for json.dumps
            store(line)
    for line in dec.finish():                  # records held back because their birth was missing
        store(line)

Report by exception means a signal absent from a record kept its value: the decoder keeps, per cabinet,
the last value of every signal and applies telemetry records in ``seq`` order. Messages arrive live first
and replayed backlog later (docs/TELEMETRY.md "seq, duplicates, replay, order"), so :meth:`Decoder.feed`
applies what follows the last applied seq at once and holds older records until :meth:`Decoder.finish`,
which applies everything held in seq order. Duplicates (same cabinet and seq) are dropped.

Every malformed input raises :class:`DecodeError` with a reason; nothing else escapes.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

MAGIC = 0xCE
VERSION = 2
HEADER_LEN = 3
COMPRESSION_MASK = 0x03
NO_COMPRESSION = 0
ZLIB = 1
FLAG_REPLAYED = 0x04
KIND_TELEMETRY = "t"
KIND_EVENTS = "e"
BIRTH_SCHEMA = "cabinet-edge/birth/2"
DECODED_SCHEMA = "cabinet-edge/telemetry-decoded/2"
QUALITIES = ("ok", "stale", "invalid")
MAX_INTERVALS = 100_000  # per record (a day at 1 s): a corrupted count is refused, not allocated
MAX_BODY_BYTES = 16 * 1024 * 1024  # a decompression bomb is refused, not expanded


class DecodeError(ValueError):
    """The payload is not a valid v2 message or birth (truncated, corrupted, foreign)."""


@dataclass(frozen=True)
class SignalDef:
    alias: int
    signal: str
    unit: str
    exp: int  # value = integer x 10**exp
    deadband: float
    safety: bool
    ocpp: dict[str, str] = field(default_factory=dict)

    def value(self, q: int) -> float:
        return round(q * 10.0**self.exp, max(0, -self.exp))


@dataclass(frozen=True)
class Birth:
    birth_id: int
    cabinet_id: str
    site_id: str
    signals: dict[int, SignalDef]


@dataclass(frozen=True)
class Record:
    seq: int
    t_ms: int
    body: Any  # events: dict; telemetry: the compact record (dict) or, for a record stored as v1, the v1 dict


@dataclass(frozen=True)
class Message:
    cabinet_id: str
    site_id: str
    kind: str  # "t" telemetry, "e" events
    birth_id: int
    replayed: bool
    sent_ms: int
    records: list[Record]


def is_v2(payload: bytes) -> bool:
    return len(payload) >= 2 and payload[0] == MAGIC and payload[1] == VERSION


def birth_id(signals: list[dict[str, Any]]) -> int:
    """CRC-32 of the canonical JSON of the birth's signal list (sorted keys, no spaces, UTF-8)."""
    return zlib.crc32(json.dumps(signals, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())


def parse_birth(payload: bytes | str | dict[str, Any]) -> Birth:
    try:
        body = payload if isinstance(payload, dict) else json.loads(payload)
        if not isinstance(body, dict) or body.get("schema") != BIRTH_SCHEMA:
            raise DecodeError(f"not a v2 birth (schema {body.get('schema') if isinstance(body, dict) else None!r})")
        sigs = body["signals"]
        if birth_id(sigs) != body["birth_id"]:
            raise DecodeError("birth_id does not match the signal table (corrupted birth)")
        table = {}
        for s in sigs:
            ocpp = {k: s[k] for k in ("measurand", "phase", "location", "point", "connector") if k in s}
            table[int(s["alias"])] = SignalDef(
                int(s["alias"]), str(s["signal"]), str(s["unit"]), int(s["exp"]), float(s["deadband"]),
                bool(s["safety"]), ocpp,
            )  # fmt: skip
        return Birth(int(body["birth_id"]), str(body["cabinet_id"]), str(body["site_id"]), table)
    except DecodeError:
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not a v2 birth: {type(exc).__name__}: {exc}") from None


def _body(payload: bytes) -> bytes:
    if len(payload) < HEADER_LEN:
        raise DecodeError(f"truncated: {len(payload)} bytes, a v2 message has at least {HEADER_LEN}")
    if payload[0] != MAGIC:
        raise DecodeError(f"not a v2 message: first byte 0x{payload[0]:02x}, expected 0x{MAGIC:02x}")
    if payload[1] != VERSION:
        raise DecodeError(f"unsupported format version {payload[1]} (this decoder reads {VERSION})")
    method = payload[2] & COMPRESSION_MASK
    if method == NO_COMPRESSION:
        return payload[HEADER_LEN:]
    if method != ZLIB:
        raise DecodeError(f"unknown compression {method}")
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload[HEADER_LEN:], MAX_BODY_BYTES)
    except zlib.error as exc:
        raise DecodeError(f"corrupted: zlib: {exc}") from None
    if d.unconsumed_tail:
        raise DecodeError(f"body larger than {MAX_BODY_BYTES} bytes")
    if not d.eof:
        raise DecodeError("truncated: compressed body ends early")
    return out


def decode_message(payload: bytes) -> Message:
    """One v2 telemetry or events message; raises :class:`DecodeError` for anything else."""
    raw = _body(bytes(payload))
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        kind = body["k"]
        if kind not in (KIND_TELEMETRY, KIND_EVENTS):
            raise DecodeError(f"unknown record kind {kind!r}")
        records = [Record(int(s), int(t), _record_body(kind, p)) for s, t, p in body["r"]]
        return Message(
            str(body["c"]), str(body["s"]), kind, int(body["b"]), bool(payload[2] & FLAG_REPLAYED), int(body["m"]),
            records,
        )  # fmt: skip
    except DecodeError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, msgpack.UnpackException) as exc:
        raise DecodeError(f"corrupted: {type(exc).__name__}: {exc}") from None


def _record_body(kind: str, p: Any) -> Any:
    if isinstance(p, str):  # events, and telemetry stored as v1 JSON before the switch to v2
        body = json.loads(p)
        if not isinstance(body, dict):
            raise DecodeError("record is not a JSON object")
        return body
    if kind != KIND_TELEMETRY or not isinstance(p, bytes):
        raise DecodeError(f"unexpected record payload {type(p).__name__}")
    rec = msgpack.unpackb(p, raw=False, strict_map_key=False)
    if not isinstance(rec, dict) or "i" not in rec:
        raise DecodeError("compact record without interval")
    return rec


# -- a compact record, interval by interval ------------------------------------------------------------
def _indices(deltas: list[int], n: int) -> list[int]:
    out, i = [], 0
    for d in deltas:
        i += int(d)
        if not 0 <= i < n:
            raise DecodeError(f"interval index {i} outside 0..{n - 1}")
        out.append(i)
    return out


def _values(items: list[int | None]) -> list[int | None]:
    out: list[int | None] = []
    prev: int | None = None
    for d in items:
        if d is None:
            prev = None
        else:
            prev = int(d) if prev is None else prev + int(d)
        out.append(prev)
    return out


@dataclass
class Compact:
    """A compact record unpacked: per interval the value, quality and extreme changes, by alias."""

    interval_ms: int
    keyframe: bool
    times: list[int]
    values: list[dict[int, int | None]]
    qualities: list[dict[int, str]]
    extremes: list[dict[int, tuple[int, int]]]


def unpack_compact(t_ms: int, rec: dict[str, Any]) -> Compact:
    try:
        step = int(rec["i"])
        # the count is checked before anything of that size is built: a hostile n = 10**9 is refused, not
        # allocated (it was a list of 10**9 items first: 8 GB and half a minute before the refusal)
        count = len(rec["d"]) + 1 if "d" in rec else int(rec.get("n", 1))
        if not 1 <= count <= MAX_INTERVALS:
            raise DecodeError(f"{count} intervals in one record (at most {MAX_INTERVALS})")
        gaps = rec["d"] if "d" in rec else [step] * (count - 1)
        times = [t_ms]
        for d in gaps:
            times.append(times[-1] + int(d))
        n = len(times)
        c = Compact(int(rec["i"]), bool(rec.get("k")), times, [{} for _ in times], [{} for _ in times], [])
        c.extremes = [{} for _ in times]
        for alias, idx, vals in rec.get("v", []):
            for i, v in zip(_indices(idx, n), _values(vals), strict=True):
                c.values[i][int(alias)] = v
        for alias, idx, qs in rec.get("q", []):
            for i, q in zip(_indices(idx, n), qs, strict=True):
                c.qualities[i][int(alias)] = QUALITIES[q] if isinstance(q, int) else str(q)
        for alias, idx, lo, hi in rec.get("x", []):
            for i, a, b in zip(_indices(idx, n), lo, hi, strict=True):
                c.extremes[i][int(alias)] = (int(a), int(b))
        return c
    except DecodeError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise DecodeError(f"corrupted compact record: {type(exc).__name__}: {exc}") from None


# -- reconstruction ------------------------------------------------------------------------------------
@dataclass
class _Held:
    value: int | None = None
    quality: str = "ok"


State = dict[int, _Held]


@dataclass
class _Cabinet:
    births: dict[int, Birth] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)  # seqs decoded (events and telemetry): duplicates dropped
    chains: dict[int, State] = field(default_factory=dict)  # next seq expected -> values held up to there
    waiting: dict[int, tuple[Message, Record]] = field(default_factory=dict)


class Decoder:
    """Turns births and v2 messages (and v1 JSON messages, passed through) into v1-form records.

    Report by exception: a telemetry record is applied to the values held after the record before it
    (seq - 1, events skipped), or to nothing when it is a keyframe; each such run of records is a
    *chain*. A record whose predecessor has not arrived waits (live records come before the replayed
    backlog); :meth:`finish` applies what still waits, starting a chain with unknown values at a gap.
    """

    def __init__(self) -> None:
        self._cabs: dict[tuple[str, str], _Cabinet] = {}

    def feed(self, payload: bytes | str) -> list[dict[str, Any]]:
        """Decoded records of one payload (a birth returns none, records that wait come later). Raises
        :class:`DecodeError` for a payload it cannot read."""
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        if data[:1] == bytes([MAGIC]):
            return self._message(decode_message(data))
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise DecodeError(f"neither a v2 message nor JSON (first bytes {data[:8].hex()})") from None
        if isinstance(body, dict) and body.get("schema") == BIRTH_SCHEMA:
            b = parse_birth(body)
            cab = self._cab(b.cabinet_id, b.site_id)
            cab.births[b.birth_id] = b
            return self._advance(cab)
        if isinstance(body, dict) and isinstance(body.get("records"), list) and "cabinet_id" in body:
            return self._v1(body)
        raise DecodeError("JSON, but neither a v2 birth nor a telemetry/events message")

    def finish(self) -> list[dict[str, Any]]:
        """Apply what still waits, in seq order; a gap starts a chain with unknown values."""
        out: list[dict[str, Any]] = []
        for cab in self._cabs.values():
            while ready := [s for s, (m, _r) in cab.waiting.items() if m.birth_id in cab.births]:
                cab.chains.setdefault(min(ready), {})
                out += self._advance(cab)
        return out

    def _cab(self, cabinet_id: str, site_id: str) -> _Cabinet:
        return self._cabs.setdefault((site_id, cabinet_id), _Cabinet())

    def _v1(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        cab = self._cab(str(body["cabinet_id"]), str(body.get("site_id")))
        out = []
        for r in body["records"]:
            if r.get("seq") in cab.done:
                continue
            cab.done.add(r.get("seq"))
            out.append({"cabinet_id": body["cabinet_id"], "site_id": body.get("site_id"),
                        "replayed": body.get("replayed", False), **r})  # fmt: skip
        return out

    def _message(self, msg: Message) -> list[dict[str, Any]]:
        cab = self._cab(msg.cabinet_id, msg.site_id)
        out: list[dict[str, Any]] = []
        for rec in msg.records:
            if rec.seq in cab.done or rec.seq in cab.waiting:
                continue
            if msg.kind == KIND_EVENTS:
                cab.done.add(rec.seq)
                out.append(self._head(msg, rec) | rec.body)
                continue
            cab.waiting[rec.seq] = (msg, rec)
            if rec.body.get("k") or "samples" in rec.body:
                cab.chains.setdefault(rec.seq, {})
        return out + self._advance(cab)

    def _advance(self, cab: _Cabinet) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        moved = True
        while moved:
            moved = False
            for start in sorted(cab.chains):
                state = cab.chains.pop(start)
                nxt, got = self._step(cab, state, start)
                moved = moved or bool(got)
                out += got
                if nxt not in cab.chains or not cab.chains[nxt]:
                    cab.chains[nxt] = state  # two chains meeting: the later one, started at a keyframe, stays
        return out

    def _step(self, cab: _Cabinet, state: State, nxt: int) -> tuple[int, list[dict[str, Any]]]:
        """Apply the record at ``nxt`` (after the events there) if it has arrived; (next seq, records)."""
        while nxt in cab.done:
            nxt += 1
        item = cab.waiting.get(nxt)
        if item is None or (item[0].birth_id not in cab.births and "samples" not in item[1].body):
            return nxt, []
        del cab.waiting[nxt]
        return nxt + 1, self._apply(cab, state, *item)

    def _head(self, msg: Message, rec: Record) -> dict[str, Any]:
        return {"cabinet_id": msg.cabinet_id, "site_id": msg.site_id, "seq": rec.seq, "t_ms": rec.t_ms,
                "replayed": msg.replayed}  # fmt: skip

    def _apply(self, cab: _Cabinet, state: State, msg: Message, rec: Record) -> list[dict[str, Any]]:
        cab.done.add(rec.seq)
        if "samples" in rec.body:  # stored as v1 before the cabinet switched to v2
            return [self._head(msg, rec) | rec.body]
        birth = cab.births[msg.birth_id]
        c = unpack_compact(rec.t_ms, rec.body)
        if c.keyframe:
            state.clear()
        out = []
        for i, t in enumerate(c.times):
            aliases = sorted(set(state) | set(c.values[i]) | set(c.qualities[i]))
            samples = [_sample(state, birth, alias, c, i) for alias in aliases]
            out.append(self._head(msg, rec) | {"t_ms": t, "interval_s": c.interval_ms / 1000.0, "part": i,
                                              "keyframe": c.keyframe and i == 0, "samples": samples})  # fmt: skip
        return out


def _sample(state: State, birth: Birth, alias: int, c: Compact, i: int) -> dict[str, Any]:
    sig = birth.signals.get(alias)
    if sig is None:
        raise DecodeError(f"alias {alias} not in birth {birth.birth_id}")
    held = state.setdefault(alias, _Held())
    if alias in c.values[i]:
        held.value = c.values[i][alias]
    if alias in c.qualities[i]:
        held.quality = c.qualities[i][alias]
    v = None if held.value is None else sig.value(held.value)
    lo = hi = v
    if held.value is not None and alias in c.extremes[i]:
        a, b = c.extremes[i][alias]
        lo, hi = sig.value(held.value + a), sig.value(held.value + b)
    return {"signal": sig.signal, "unit": sig.unit, "quality": held.quality, "min": lo, "max": hi, "last": v,
            **sig.ocpp}  # fmt: skip


def decode_all(payloads: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """Every record of ``payloads`` (births first or anywhere), in seq order per cabinet at the end."""
    dec = Decoder()
    for p in payloads:
        yield from dec.feed(p)
    yield from dec.finish()
