"""Sparkplug B for the stored telemetry: the messages, not the connection (docs/SPARKPLUG.md).

:class:`SparkplugNode` turns what the store holds (telemetry records of interval samples, event records)
into Sparkplug B 3.0 messages as :class:`Message` (topic, payload bytes, QoS, retain) for the uplink to
publish in the order given. It has no paho, no threads and no clock of its own (``now_ms`` is injected);
the only I/O is the bdSeq file (:class:`BdSeqFile`). One instance per MQTT connection owner; not thread
safe: call it from the uplink's thread only.

The life of a session, as the uplink drives it:

1. ``will()`` before every CONNECT: the NDEATH to register as the MQTT will. It advances bdSeq and
   persists it, so the NBIRTH after this connect and the broker's NDEATH carry the same number, also
   across a restart of the daemon.
2. ``births()`` once the broker accepted the connection: NBIRTH (seq 0) and a DBIRTH per device seen so
   far, with the newest value of every metric. A host application treats everything it knew as stale
   until these arrive.
3. ``encode(kind, t_ms, payload, historical=...)`` for every record the uplink sends, live or replayed:
   a DBIRTH when a device (or a metric of it) appears for the first time, then DDATA with the metrics
   that changed (report by exception); events become NDATA. ``historical=True`` (the replayed backlog)
   sets ``is_historical`` on every metric, so a host stores it in its history without moving the live
   value.
4. ``command(topic, payload)`` for NCMD messages: ``Node Control/Rebirth = true`` returns the births
   again (same bdSeq, seq restarts at 0); anything else returns nothing.
5. ``death()`` before a clean disconnect: the NDEATH to publish ourselves (the broker drops the will
   on a clean DISCONNECT).

Devices come from the signal names (:func:`split_signal`): ``module.<n>.<x>`` -> device ``module.<n>``,
``connector.<name>.<x>`` -> device ``connector.<name>``;
a cable's coolant signals (the safety input table, ``edge/limits/inputs.py``: source ``cable``, not at
the connector) -> device ``<cable>.cooling``; every other ``<device>.<x>`` -> device ``<device>``, metric
``<x>``. A metric's value is the interval's ``last``; the safety signals of the cable and its cooling loop
also get ``<x>.min`` and ``<x>.max`` so a spike inside an interval is never lost.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from edge.config.telemetry import Sparkplug as SparkplugConfig
from edge.limits import inputs as safety_inputs
from edge.telemetry.measurands import CONNECTOR_PREFIX
from edge.telemetry.sparkplug_b_pb2 import DataType, Payload

NAMESPACE = "spBv1.0"
BDSEQ_FILE = "sparkplug.bdseq"  # in storage.data_dir
BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
EVENT = "Event"  # node metric: one event record as JSON text, sent in NDATA
QUALITY = "Quality"  # property key (Sparkplug 3.0 quality codes)
ENG_UNIT = "engUnit"  # property key SCADA hosts show as the engineering unit
QUALITY_CODE = {"ok": 192, "stale": 500, "invalid": 0}  # GOOD, STALE, BAD
GOOD = 192
BOOLEAN_UNITS = frozenset(("", "1/0"))  # 0/1 signals (module present, coolant leak)
EXTREMES = (".min", ".max")
MODULE_PREFIX = "module"
NUMBERED_DEVICES = (MODULE_PREFIX, CONNECTOR_PREFIX)
COOLING = "cooling"
OCPP_PROPERTIES = ("measurand", "phase", "location", "point", "connector")
TELEMETRY = "telemetry"
EVENT_KIND = "event"

_cable_inputs = [safety_inputs.entry(n) for n in safety_inputs.names_where("source", "cable")]
CABLE_SAFETY_READINGS = frozenset(e["reading"] for e in _cable_inputs)
COOLING_READINGS = frozenset(e["reading"] for e in _cable_inputs if e["place"] != "connector")


@dataclass(frozen=True)
class Message:
    """One MQTT publish: the uplink sends these in list order on one connection."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class BdSeqFile:
    """The birth/death sequence number (0..255), kept in a small file so it survives a restart.

    Written atomically (temporary file, fsync, rename), so a power cut leaves the old or the new number,
    never a torn file. A missing or unreadable file starts at 0 (Sparkplug allows any start; a host only
    matches an NDEATH to the NBIRTH with the same number)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> int | None:
        try:
            value = int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None
        return value if 0 <= value <= 255 else None

    def advance(self) -> int:
        """The number for the next CONNECT: the last one plus 1 (mod 256), or 0 the first time; saved."""
        last = self.load()
        value = 0 if last is None else (last + 1) % 256
        self._write(value)
        return value

    def _write(self, value: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".bdseq-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"{value}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)


def split_signal(signal: str) -> tuple[str, str]:
    """``(device_id, metric_name)`` of one of our signal names (module docstring has the rules)."""
    head, _, rest = signal.partition(".")
    if not rest:
        return "cabinet", signal
    if head in NUMBERED_DEVICES:  # module.<n>.<x>, connector.<name>.<x>: one device each
        number, _, reading = rest.partition(".")
        if reading:
            return f"{head}.{number}", reading
    if rest in COOLING_READINGS:
        return f"{head}.{COOLING}", rest
    return head, rest


def has_extremes(signal: str) -> bool:
    """The cable's and cooling loop's safety signals also send the interval's min and max."""
    return signal.partition(".")[2] in CABLE_SAFETY_READINGS


@dataclass(frozen=True)
class _Value:
    value: float | bool | None  # None: no good reading in the interval (is_null)
    quality: int
    t_ms: int
    historical: bool


@dataclass(frozen=True)
class _Spec:
    datatype: int
    alias: int
    properties: tuple[tuple[str, str], ...]  # unit and OCPP fields, sent in the DBIRTH
    deadband: float


@dataclass
class _Device:
    specs: dict[str, _Spec] = field(default_factory=dict)
    latest: dict[str, _Value] = field(default_factory=dict)  # newest value known (for births)
    sent: dict[bool, dict[str, _Value]] = field(default_factory=lambda: {False: {}, True: {}})


def _sample_value(v: Any, boolean: bool) -> float | bool | None:
    """A sample's value as sent: None (is_null) when the interval had no good reading."""
    if v is None or not math.isfinite(float(v)):
        return None
    return float(v) != 0 if boolean else float(v)


class SparkplugNode:
    """The Sparkplug B edge node of one cabinet: group ``group_id``, node ``edge_node_id``.

    ``now_ms`` gives the wall clock (UTC ms) for the payload timestamps; metric timestamps come from the
    records. ``data_qos``: 0 is what Sparkplug 3.0 prescribes for births and data; 1 lets the uplink
    delete a record on the broker's PUBACK (at least once into the broker). ``deadband(signal, unit)``
    is the change of a value below which it is not sent again (report by exception); default: any change.
    """

    def __init__(
        self,
        group_id: str,
        edge_node_id: str,
        bdseq: BdSeqFile,
        now_ms: Callable[[], int],
        *,
        data_qos: int = 0,
        deadband: Callable[[str, str], float] | None = None,
        device_of: Callable[[str], tuple[str, str]] = split_signal,
        extremes: Callable[[str], bool] = has_extremes,
    ) -> None:
        for name, value in (("group_id", group_id), ("edge_node_id", edge_node_id)):
            if not value or any(c in value for c in "/+#"):
                raise ValueError(f"Sparkplug {name} {value!r} must be non-empty without '/', '+' or '#'")
        self.group_id = group_id
        self.edge_node_id = edge_node_id
        self.bdseq_file = bdseq
        self.now_ms = now_ms
        self.data_qos = data_qos
        self.deadband = deadband or (lambda _signal, _unit: 0.0)
        self.device_of = device_of
        self.extremes = extremes
        self.bdseq: int | None = None  # set by will()
        self.seq = 0
        self.devices: dict[str, _Device] = {}
        self._aliases = 0  # last alias given; aliases are unique across the node and its devices
        self._rebirth_alias = self._new_alias()
        self._event_alias = self._new_alias()

    # -- topics --------------------------------------------------------------------------------------
    def topic(self, message_type: str, device_id: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.group_id}/{message_type}/{self.edge_node_id}"
        return f"{base}/{device_id}" if device_id else base

    def subscriptions(self) -> list[str]:
        """Topics to subscribe to (QoS 1) for the node's commands."""
        return [self.topic("NCMD")]

    # -- session -------------------------------------------------------------------------------------
    def will(self) -> Message:
        """NDEATH for the CONNECT's will; advances and persists bdSeq. Call before every connect."""
        self.bdseq = self.bdseq_file.advance()
        return self.death()

    def death(self) -> Message:
        """NDEATH with the current bdSeq (publish it before a clean disconnect)."""
        p = Payload(timestamp=self.now_ms())
        p.metrics.append(self._bdseq_metric())
        return Message(self.topic("NDEATH"), p.SerializeToString(), 1, False)

    def births(self) -> list[Message]:
        """NBIRTH (seq 0) and a DBIRTH for every device known so far; after each CONNACK and on rebirth."""
        if self.bdseq is None:
            raise RuntimeError("births() before will(): the NBIRTH needs the bdSeq of the connect")
        self.seq = 0
        now = self.now_ms()
        p = Payload(timestamp=now, seq=0)
        p.metrics.append(self._bdseq_metric())
        p.metrics.add(name=REBIRTH, alias=self._rebirth_alias, timestamp=now, datatype=DataType.Boolean)
        p.metrics[-1].boolean_value = False
        p.metrics.add(name=EVENT, alias=self._event_alias, timestamp=now, datatype=DataType.String, is_null=True)
        out = [Message(self.topic("NBIRTH"), p.SerializeToString(), self.data_qos, False)]
        for device_id, device in self.devices.items():
            out.append(self._dbirth(device_id, device))
        return out

    def command(self, topic: str, payload: bytes) -> list[Message]:
        """Answer an NCMD: the births for ``Node Control/Rebirth = true``, else nothing. Never raises on
        a malformed payload (a broken command must not stop the uplink)."""
        if topic != self.topic("NCMD") or self.bdseq is None:
            return []
        try:
            p = Payload.FromString(payload)
        except DecodeError:
            return []
        return self.births() if any(self._asks_rebirth(m) for m in p.metrics) else []

    def _asks_rebirth(self, m: Payload.Metric) -> bool:
        named = m.name == REBIRTH if m.name else m.HasField("alias") and m.alias == self._rebirth_alias
        return named and m.WhichOneof("value") == "boolean_value" and m.boolean_value

    # -- records -------------------------------------------------------------------------------------
    def encode(
        self,
        kind: str,
        t_ms: int,
        payload: Mapping[str, Any],
        *,
        historical: bool = False,
        seq: int | None = None,
    ) -> list[Message]:
        """The messages for one stored record (``kind`` ``telemetry`` or ``event``, its ``t_ms`` and its
        payload as the store holds it); ``historical`` for the replayed backlog; ``seq`` (the store's
        record number) goes into an event's JSON for deduplication. Births come first when needed. Empty
        when nothing changed. Call births() after the connect first."""
        if self.bdseq is None:
            raise RuntimeError("encode() before will()/births(): no Sparkplug session")
        if kind == EVENT_KIND:
            return [self._event(t_ms, {**payload, "seq": seq, "t_ms": t_ms}, historical)]
        out: list[Message] = []
        for device_id, values in self._by_device(payload.get("samples", ()), t_ms, historical).items():
            out += self._device_messages(device_id, values, historical)
        return out

    # -- inside --------------------------------------------------------------------------------------
    def _new_alias(self) -> int:
        self._aliases += 1
        return self._aliases

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) % 256
        return self.seq

    def _bdseq_metric(self) -> Payload.Metric:
        return Payload.Metric(name=BDSEQ, datatype=DataType.Int64, long_value=self.bdseq or 0)

    def _event(self, t_ms: int, payload: Mapping[str, Any], historical: bool) -> Message:
        p = Payload(timestamp=self.now_ms(), seq=self._next_seq())
        text = json.dumps(dict(payload), separators=(",", ":"), sort_keys=True)
        m = p.metrics.add(alias=self._event_alias, timestamp=t_ms, string_value=text)
        if historical:
            m.is_historical = True
        return Message(self.topic("NDATA"), p.SerializeToString(), self.data_qos, False)

    def _by_device(
        self, samples: Iterable[Mapping[str, Any]], t_ms: int, historical: bool
    ) -> dict[str, dict[str, tuple[_Value, Mapping[str, Any]]]]:
        """Per device, per metric name: the value of this record and the sample it came from."""
        out: dict[str, dict[str, tuple[_Value, Mapping[str, Any]]]] = {}
        for s in samples:
            device_id, name = self.device_of(s["signal"])
            quality = QUALITY_CODE.get(s.get("quality", "ok"), 0)
            boolean = s.get("unit", "") in BOOLEAN_UNITS
            fields = (("", "last"), *((suffix, suffix[1:]) for suffix in EXTREMES if self.extremes(s["signal"])))
            for suffix, key in fields:
                value = _sample_value(s.get(key), boolean)
                out.setdefault(device_id, {})[name + suffix] = (_Value(value, quality, t_ms, historical), s)
        return out

    def _device_messages(
        self, device_id: str, values: dict[str, tuple[_Value, Mapping[str, Any]]], historical: bool
    ) -> list[Message]:
        device = self.devices.setdefault(device_id, _Device())
        new = [name for name in values if name not in device.specs]
        for name in new:
            device.specs[name] = self._spec(name, values[name][1])
        for name, (v, _s) in values.items():
            old = device.latest.get(name)
            if old is None or v.t_ms >= old.t_ms:
                device.latest[name] = v
        out = [self._dbirth(device_id, device)] if new else []
        changed = self._changed(device, values, historical)
        if changed:
            out.append(self._ddata(device_id, device, changed))
        return out

    def _spec(self, name: str, sample: Mapping[str, Any]) -> _Spec:
        unit = str(sample.get("unit", ""))
        props = [(ENG_UNIT, unit)] if unit else []
        props += [(k, str(sample[k])) for k in OCPP_PROPERTIES if sample.get(k)]
        boolean = unit in BOOLEAN_UNITS
        exact = boolean or name.endswith(EXTREMES)  # min/max of safety signals: never within a deadband
        return _Spec(
            DataType.Boolean if boolean else DataType.Double,
            self._new_alias(),
            tuple(props),
            0.0 if exact else float(self.deadband(str(sample["signal"]), unit)),
        )

    def _changed(
        self, device: _Device, values: dict[str, tuple[_Value, Mapping[str, Any]]], historical: bool
    ) -> dict[str, _Value]:
        """Report by exception: the values that differ from the last sent in the same stream (live or
        replayed, which arrive interleaved and each in its own time order)."""
        sent = device.sent[historical]
        out = {}
        for name, (v, _s) in values.items():
            if _differs(sent.get(name), v, device.specs[name].deadband):
                out[name] = sent[name] = v
        return out

    def _dbirth(self, device_id: str, device: _Device) -> Message:
        p = Payload(timestamp=self.now_ms(), seq=self._next_seq())
        for name, spec in device.specs.items():
            v = device.latest[name]
            m = p.metrics.add(name=name, alias=spec.alias, timestamp=v.t_ms, datatype=spec.datatype)
            _set_value(m, v, spec.datatype)
            if v.historical:
                m.is_historical = True
            _add_property(m, QUALITY, v.quality)
            for key, text in spec.properties:
                _add_property(m, key, text)
        # a birth is the new baseline of the live stream; the replayed stream restarts with full records
        device.sent = {False: {n: v for n, v in device.latest.items() if not v.historical}, True: {}}
        return Message(self.topic("DBIRTH", device_id), p.SerializeToString(), self.data_qos, False)

    def _ddata(self, device_id: str, device: _Device, changed: dict[str, _Value]) -> Message:
        p = Payload(timestamp=self.now_ms(), seq=self._next_seq())
        for name, v in changed.items():
            spec = device.specs[name]
            m = p.metrics.add(alias=spec.alias, timestamp=v.t_ms)
            _set_value(m, v, spec.datatype)
            if v.historical:
                m.is_historical = True
            if v.quality != GOOD:
                _add_property(m, QUALITY, v.quality)
        return Message(self.topic("DDATA", device_id), p.SerializeToString(), self.data_qos, False)


def _differs(old: _Value | None, new: _Value, deadband: float) -> bool:
    if old is None or old.quality != new.quality:
        return True
    if old.value is None or new.value is None or isinstance(new.value, bool):
        return old.value != new.value
    return abs(float(new.value) - float(old.value)) > deadband if deadband > 0 else new.value != old.value


def _set_value(m: Payload.Metric, v: _Value, datatype: int) -> None:
    if v.value is None:
        m.is_null = True
    elif datatype == DataType.Boolean:
        m.boolean_value = bool(v.value)
    else:
        m.double_value = float(v.value)


def _add_property(m: Payload.Metric, key: str, value: int | str) -> None:
    m.properties.keys.append(key)
    if isinstance(value, int):
        m.properties.values.add(type=DataType.Int32, int_value=value)
    else:
        m.properties.values.add(type=DataType.String, string_value=value)


def for_cabinet(
    config: SparkplugConfig,
    site_id: str,
    cabinet_id: str,
    data_dir: str | os.PathLike[str],
    now_ms: Callable[[], int],
    deadband: Callable[[str, str], float] | None = None,
) -> SparkplugNode:
    """The node of ``[telemetry.sparkplug]``: group and node id default to the site and cabinet ids; the
    bdSeq file lives in the data directory."""
    return SparkplugNode(
        config.group_id or site_id,
        config.edge_node_id or cabinet_id,
        BdSeqFile(Path(data_dir) / BDSEQ_FILE),
        now_ms,
        data_qos=config.data_qos,
        deadband=deadband,
    )
