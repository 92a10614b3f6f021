"""A Sparkplug B host stand-in for the tests: decodes with the Eclipse Tahu schema, not ours.

The payloads are parsed by ``esio_spb_builder``'s module compiled from Tahu's ``sparkplug_b.proto`` (an
independent package), so a wrong field number, wire type or DataType code in our subset schema shows up
here. On top it does what a primary host does: remembers the aliases and datatypes of each birth,
resolves DATA metrics by alias, checks the seq of every message of a node, notes any message of a node
that arrives after its NDEATH and before its next NBIRTH (a host ignores those: the node is offline), and
keeps per metric the live value and the history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from esio_spb_builder.core import sparkplug_b_pb2 as tahu

DT = tahu.DataType


def decode(payload: bytes) -> Any:
    return tahu.Payload.FromString(payload)


def value_of(m: Any) -> Any:
    """A metric's value by its datatype, as a host reads it (None when is_null)."""
    if m.is_null:
        return None
    field_name = m.WhichOneof("value")
    assert field_name is not None, f"metric {m.name or m.alias} has neither a value nor is_null"
    return getattr(m, field_name)


def properties(m: Any) -> dict[str, Any]:
    out = {}
    for key, v in zip(m.properties.keys, m.properties.values, strict=True):
        out[key] = getattr(v, v.WhichOneof("value"))
    return out


@dataclass
class Point:
    value: Any
    t_ms: int
    historical: bool
    quality: int | None


@dataclass
class Host:
    """What a SCADA host knows about one edge node after the messages it has seen (in order)."""

    bdseq: int | None = None
    deaths: list[int] = field(default_factory=list)  # bdSeq of every NDEATH seen
    births: int = 0
    seq: int | None = None
    seq_errors: list[str] = field(default_factory=list)
    online: bool = False  # between an NBIRTH and the NDEATH with the same bdSeq
    while_dead: list[str] = field(default_factory=list)  # messages of the node while it was offline
    names: dict[int, tuple[str, str]] = field(default_factory=dict)  # alias -> (device, metric)
    datatypes: dict[tuple[str, str], int] = field(default_factory=dict)
    birth_props: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    live: dict[tuple[str, str], Point] = field(default_factory=dict)
    history: dict[tuple[str, str], list[Point]] = field(default_factory=dict)  # every point, arrival order
    events: list[tuple[str, int, bool]] = field(default_factory=list)  # (json, t_ms, historical)
    dbirths: dict[str, int] = field(default_factory=dict)  # device -> how many DBIRTHs

    def receive(self, topic: str, payload: bytes) -> Any:
        parts = topic.split("/")
        assert parts[0] == "spBv1.0", topic
        kind = parts[2]
        device = parts[4] if len(parts) > 4 else ""
        p = decode(payload)
        if not self.online and kind not in ("NBIRTH", "NDEATH", "NCMD"):
            self.while_dead.append(f"{kind} {device} seq {p.seq} after NDEATH {self.deaths[-1:]}")
        getattr(self, "_" + kind.lower())(p, device)
        return p

    def _check_seq(self, p: Any, kind: str) -> None:
        assert p.HasField("seq"), f"{kind} without seq"
        expected = 0 if kind == "NBIRTH" else ((self.seq or 0) + 1) % 256
        if self.seq is None and kind != "NBIRTH":
            self.seq_errors.append(f"{kind} before NBIRTH")
        elif p.seq != expected:
            self.seq_errors.append(f"{kind} seq {p.seq}, expected {expected}")
        self.seq = p.seq

    def _ncmd(self, _p: Any, _device: str) -> None:
        """Commands (ours, seen on the wildcard subscription) change nothing the host knows."""

    def _ndeath(self, p: Any, _device: str) -> None:
        (m,) = p.metrics
        assert m.name == "bdSeq" and m.datatype == DT.Int64, m
        self.deaths.append(m.long_value)
        if m.long_value == self.bdseq:  # an NDEATH of an older session (another bdSeq) changes nothing
            self.online = False

    def _nbirth(self, p: Any, _device: str) -> None:
        self._check_seq(p, "NBIRTH")
        self.births += 1
        self.online = True
        by_name = {m.name: m for m in p.metrics}
        assert by_name["bdSeq"].datatype == DT.Int64
        self.bdseq = by_name["bdSeq"].long_value
        self._birth_metrics(p, "")

    def _dbirth(self, p: Any, device: str) -> None:
        self._check_seq(p, "DBIRTH")
        self.dbirths[device] = self.dbirths.get(device, 0) + 1
        self._birth_metrics(p, device)

    def _birth_metrics(self, p: Any, device: str) -> None:
        for m in p.metrics:
            assert m.name and m.datatype != DT.Unknown, f"birth metric without name or datatype: {m}"
            key = (device, m.name)
            self.datatypes[key] = m.datatype
            self.birth_props[key] = properties(m)
            if m.HasField("alias"):
                owner = self.names.get(m.alias)
                assert owner in (None, key), f"alias {m.alias} of {key} already names {owner}"
                self.names[m.alias] = key
            self._store(key, m)

    def _ndata(self, p: Any, device: str) -> None:
        self._check_seq(p, "NDATA")
        for m in p.metrics:
            key = self.names[m.alias]
            if key == ("", "Event"):
                self.events.append((m.string_value, m.timestamp, m.is_historical))

    def _ddata(self, p: Any, device: str) -> None:
        self._check_seq(p, "DDATA")
        for m in p.metrics:
            assert not m.name, "DATA metrics go by alias only"
            key = self.names[m.alias]
            assert key[0] == device, f"alias {m.alias} is {key}, sent on device {device}"
            self._store(key, m)

    def _store(self, key: tuple[str, str], m: Any) -> None:
        v = value_of(m)
        dt = self.datatypes[key]
        if v is not None:
            assert (dt, m.WhichOneof("value")) in {
                (DT.Double, "double_value"),
                (DT.Boolean, "boolean_value"),
                (DT.String, "string_value"),
                (DT.Int64, "long_value"),
            }, f"{key}: datatype {dt} with {m.WhichOneof('value')}"
        q = properties(m).get("Quality")
        point = Point(v, m.timestamp, m.is_historical, q)
        self.history.setdefault(key, []).append(point)
        if not m.is_historical:
            self.live[key] = point

    def value(self, device: str, metric: str) -> Any:
        return self.live[(device, metric)].value
