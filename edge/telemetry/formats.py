"""Wire formats of telemetry and events, chosen by ``telemetry.format``: name -> encoder class.

An encoder turns a batch of stored records (consecutive, one kind, chosen by
:class:`~edge.telemetry.delivery.Delivery`) into MQTT messages. The uplink publishes them all with
each message's QoS and deletes the records only after every one of them is acknowledged (QoS 0: written
to the socket; no message at all: at once). :meth:`Encoder.birth`
runs on every (re)connect before any batch; the uplink then also asks the recorder for a keyframe.

``record_form`` says what the recorder stores for this format: ``json`` (v1: every sample of every
interval) or ``compact`` (report by exception, :mod:`edge.telemetry.compact`; expand a compact record
with :func:`edge.telemetry.v2decode.unpack_compact` and the alias table from ``EncoderContext.signals``).

A format may own the MQTT session's will and a command topic (Sparkplug B: the NDEATH with a new bdSeq
before every connect, NCMD rebirth): ``session_will`` True makes the uplink ask :meth:`Encoder.will`
before every connect instead of using its retained ``status`` "offline" will; :meth:`Encoder.subscriptions`
are subscribed on every connect and their messages go to :meth:`Encoder.command` on the uplink thread.

Adding a format: a class with the attributes of :class:`Encoder` (:class:`PlainSession` has the session
defaults), registered in :data:`FORMATS`.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import msgpack

from edge.config.telemetry import Sparkplug as SparkplugConfig
from edge.config.telemetry import Telemetry
from edge.telemetry import v2decode as v2
from edge.telemetry.compact import AliasFn, Compactor, Deadbands, is_safety
from edge.telemetry.measurands import ocpp_fields
from edge.telemetry.store import EVENT, RawRecord, SignalRow
from edge.telemetry.topics import Topics

if TYPE_CHECKING:  # imported at run time only by the sparkplug_b format (protobuf)
    from edge.telemetry.sparkplug import Message as SparkplugMessage

SCHEMA_TELEMETRY = "cabinet-edge/telemetry/2"  # 2: connector samples carry "connector" (docs/TELEMETRY.md)
SCHEMA_EVENTS = "cabinet-edge/events/1"
BIRTH_LEAF = "birth"
ZLIB_LEVEL = 6  # docs/TELEMETRY.md "Why MessagePack and zlib": level 9 saves under 1 % for 2x the CPU


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


@dataclass
class EncoderContext:
    """What an encoder may use: names, the alias table, the deadbands, the clock."""

    topics: Topics
    site_id: str
    cabinet_id: str
    signals: Callable[[], list[SignalRow]]  # the store's alias table (read on the uplink thread)
    signal_count: Callable[[], int]  # cheap: how many aliases exist now (grows when a signal appears)
    deadband: Callable[[str, str], float]  # (signal, unit) -> deadband
    interval_s: float = 1.0
    now_ms: Callable[[], int] = lambda: int(time.time() * 1000)
    data_dir: str | None = None  # where a format keeps its own state (Sparkplug: the bdSeq file)
    sparkplug: SparkplugConfig | None = None  # [telemetry.sparkplug]


class Encoder(Protocol):
    name: ClassVar[str]
    record_form: ClassVar[str]  # "json" | "compact"
    session_will: ClassVar[bool]  # True: will() gives the MQTT will before every connect

    def will(self) -> Message:
        """The will for the next connect (only called when ``session_will``)."""
        ...

    def death(self) -> Message | None:
        """What to publish before a clean disconnect, or None."""
        ...

    def subscriptions(self) -> list[str]:
        """Topic filters whose messages go to :meth:`command`."""
        ...

    def command(self, topic: str, payload: bytes) -> list[Message]:
        """The messages answering one message on a :meth:`subscriptions` topic (may be empty)."""
        ...

    def birth(self) -> list[Message]:
        """Messages to send on every (re)connect, before any batch (may be empty)."""
        ...

    def encode(self, batch: Sequence[RawRecord], replayed: bool) -> list[Message]:
        """The messages carrying ``batch`` (none when a format reports by exception and nothing changed:
        the records count as delivered)."""
        ...


class PlainSession:
    """The session side of a format that only encodes records: the uplink's own will, no commands."""

    session_will: ClassVar[bool] = False

    def will(self) -> Message:
        raise NotImplementedError("this format uses the uplink's status will")

    def death(self) -> Message | None:
        return None

    def subscriptions(self) -> list[str]:
        return []

    def command(self, topic: str, payload: bytes) -> list[Message]:
        return []


class V1Json(PlainSession):
    """Schema 1: JSON, every sample of every interval with its name, unit and OCPP fields."""

    name: ClassVar[str] = "v1"
    record_form: ClassVar[str] = "json"

    def __init__(self, ctx: EncoderContext) -> None:
        self.ctx = ctx
        self._head = json.dumps({"cabinet_id": ctx.cabinet_id, "site_id": ctx.site_id}, separators=(",", ":"))[1:-1]

    def birth(self) -> list[Message]:
        return []

    def encode(self, batch: Sequence[RawRecord], replayed: bool) -> list[Message]:
        """Spliced as text: the stored JSON is already the wire JSON (a compact record from a v2 period is
        expanded to the values it reported)."""
        schema = SCHEMA_EVENTS if batch[0].kind == EVENT else SCHEMA_TELEMETRY
        recs = []
        for r in batch:
            text = r.payload if isinstance(r.payload, str) else self._expand(r)
            inner = text[1:-1]
            recs.append(f'{{"seq":{r.seq},"t_ms":{r.t_ms}{"," + inner if inner else ""}}}')
        head = (
            f'{{"schema":"{schema}",{self._head},"seq_first":{batch[0].seq},"seq_last":{batch[-1].seq},'
            f'"t_first_ms":{batch[0].t_ms},"t_last_ms":{batch[-1].t_ms},'
            f'"replayed":{"true" if replayed else "false"},"sent_ms":{self.ctx.now_ms()},"records":['
        )
        topic = self.ctx.topics.events if batch[0].kind == EVENT else self.ctx.topics.telemetry
        return [Message(topic, (head + ",".join(recs) + "]}").encode())]

    def _expand(self, r: RawRecord) -> str:
        assert isinstance(r.payload, bytes)
        c = v2.unpack_compact(r.t_ms, msgpack.unpackb(r.payload, raw=False, strict_map_key=False))
        names = {s.alias: s for s in self.ctx.signals()}
        samples = []
        for i, t in enumerate(c.times):
            for alias, q in c.values[i].items():
                s = names[alias]
                v = None if q is None else round(q * 10.0**s.exp, max(0, -s.exp))
                samples.append({"signal": s.name, "unit": s.unit, "t_ms": t, "last": v, **dict(ocpp_fields(s.name))})
        return json.dumps({"interval_s": c.interval_ms / 1000.0, "samples": samples}, separators=(",", ":"))


class V2Compact(PlainSession):
    """Schema 2: births with the alias table, records by exception, MessagePack, zlib (docs/TELEMETRY.md)."""

    name: ClassVar[str] = "v2"
    record_form: ClassVar[str] = "compact"

    def __init__(self, ctx: EncoderContext) -> None:
        self.ctx = ctx
        self.birth_topic = f"{ctx.topics.base}/{BIRTH_LEAF}"
        self._birth_id = 0
        self._birth_count = -1  # aliases in the last birth sent

    def birth_payload(self) -> bytes:
        signals = [self._signal(s) for s in self.ctx.signals()]
        self._birth_id = v2.birth_id(signals)
        body = {
            "schema": v2.BIRTH_SCHEMA,
            "cabinet_id": self.ctx.cabinet_id,
            "site_id": self.ctx.site_id,
            "t_ms": self.ctx.now_ms(),
            "interval_s": self.ctx.interval_s,
            "birth_id": self._birth_id,
            "signals": signals,
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    def _signal(self, s: SignalRow) -> dict[str, Any]:
        return {
            "alias": s.alias,
            "signal": s.name,
            "unit": s.unit,
            "exp": s.exp,
            "deadband": self.ctx.deadband(s.name, s.unit),
            "safety": is_safety(s.name),
            **dict(ocpp_fields(s.name)),
        }

    def birth(self) -> list[Message]:
        self._birth_count = self.ctx.signal_count()
        return [Message(self.birth_topic, self.birth_payload(), retain=True)]

    def encode(self, batch: Sequence[RawRecord], replayed: bool) -> list[Message]:
        out = []
        if batch[0].kind != EVENT and self.ctx.signal_count() != self._birth_count:
            out += self.birth()  # a signal appeared: its alias is announced before the first record using it
        out.append(Message(self._topic(batch), self.pack(batch, replayed)))
        return out

    def _topic(self, batch: Sequence[RawRecord]) -> str:
        return self.ctx.topics.events if batch[0].kind == EVENT else self.ctx.topics.telemetry

    def pack(self, batch: Sequence[RawRecord], replayed: bool) -> bytes:
        kind = v2.KIND_EVENTS if batch[0].kind == EVENT else v2.KIND_TELEMETRY
        body = {
            "c": self.ctx.cabinet_id,
            "s": self.ctx.site_id,
            "k": kind,
            "b": self._birth_id if kind == v2.KIND_TELEMETRY else 0,
            "m": self.ctx.now_ms(),
            "r": [[r.seq, r.t_ms, r.payload] for r in batch],
        }
        flags = v2.ZLIB | (v2.FLAG_REPLAYED if replayed else 0)
        return bytes((v2.MAGIC, v2.VERSION, flags)) + zlib.compress(msgpack.packb(body), ZLIB_LEVEL)


class SparkplugB:
    """Sparkplug B 3.0 (docs/SPARKPLUG.md): the store keeps v1 records, :class:`~edge.telemetry.sparkplug.
    SparkplugNode` turns each into DBIRTH/DDATA/NDATA by exception; the NDEATH is the MQTT will of every
    connect (a new bdSeq each time), NBIRTH and DBIRTHs follow every connect, NCMD rebirth is answered.
    Births and data go with ``[telemetry.sparkplug] data_qos``; the NDEATH with QoS 1."""

    name: ClassVar[str] = "sparkplug_b"
    record_form: ClassVar[str] = "json"
    session_will: ClassVar[bool] = True

    def __init__(self, ctx: EncoderContext) -> None:
        if ctx.data_dir is None:
            raise ValueError("telemetry.format 'sparkplug_b' needs a data directory for its bdSeq file")
        self.ctx = ctx
        # imported here: protobuf costs a cabinet on v1 or v2 about 1 MB of RSS for nothing
        from edge.telemetry import sparkplug

        self.node = sparkplug.for_cabinet(
            ctx.sparkplug or SparkplugConfig(), ctx.site_id, ctx.cabinet_id, ctx.data_dir, ctx.now_ms, ctx.deadband
        )
        self._v1 = V1Json(ctx)  # expands a compact record stored while the format was v2

    def will(self) -> Message:
        return _message(self.node.will())

    def death(self) -> Message | None:
        return _message(self.node.death()) if self.node.bdseq is not None else None

    def birth(self) -> list[Message]:
        return [_message(m) for m in self.node.births()]

    def subscriptions(self) -> list[str]:
        return self.node.subscriptions()

    def command(self, topic: str, payload: bytes) -> list[Message]:
        return [_message(m) for m in self.node.command(topic, payload)]

    def encode(self, batch: Sequence[RawRecord], replayed: bool) -> list[Message]:
        out: list[Message] = []
        for r in batch:
            text = r.payload if isinstance(r.payload, str) else self._v1._expand(r)
            body = json.loads(text)
            out += (_message(m) for m in self.node.encode(r.kind, r.t_ms, body, historical=replayed, seq=r.seq))
        return out


def _message(m: SparkplugMessage) -> Message:
    return Message(m.topic, m.payload, m.retain, m.qos)


FORMATS: dict[str, type[Any]] = {V1Json.name: V1Json, V2Compact.name: V2Compact, SparkplugB.name: SparkplugB}


def encoder_for(name: str, ctx: EncoderContext) -> Encoder:
    cls = FORMATS.get(name)
    if cls is None:
        raise ValueError(f"telemetry.format {name!r} is not available here (known: {', '.join(sorted(FORMATS))})")
    enc: Encoder = cls(ctx)
    return enc


def record_form(name: str) -> str:
    cls = FORMATS.get(name)
    return str(cls.record_form) if cls is not None else "compact"


def compactor_for(cfg: Telemetry, alias: AliasFn) -> Compactor | None:
    """The recorder's report-by-exception stage for ``cfg.format``; None when the format stores v1 JSON."""
    if record_form(cfg.format) != "compact":
        return None
    deadbands = Deadbands(cfg.deadband_by_unit, cfg.deadband, cfg.deadband_default)
    return Compactor(alias, deadbands, cfg.interval_s, cfg.record_s, cfg.keyframe_s)
