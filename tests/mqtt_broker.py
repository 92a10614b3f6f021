"""A real mosquitto for tests: free loopback port, generated config, killed on teardown.

``Broker`` can be stopped and started again on the same port mid-test (persistence on, so sessions and
queued QoS 1 messages survive a clean stop). ``Consumer`` is a paho client that records every message
and validates each one against the shipped JSON Schema as it arrives.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.telemetry import schema, v2decode
from tests.conftest import free_port, wait_for

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@dataclass
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certs(d: Path) -> TlsFiles:
    """A CA, a server cert for 127.0.0.1/localhost and a client cert, with the openssl CLI."""
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, cwd=d, capture_output=True, timeout=30)

    run(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=cabinet-edge test CA",
    )
    ext = d / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    for name, subj in (("server", "/CN=localhost"), ("client", "/CN=edge-test-client")):
        run(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subj,
        )
        extra = ["-extfile", str(ext)] if name == "server" else []
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.pem",
            *extra,
        )
    return TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")


class Broker:
    def __init__(self, workdir: Path, tls: TlsFiles | None = None, extra_conf: str = "") -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.conf = self.dir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            "max_inflight_messages 1000",
            "max_queued_messages 100000",
            "persistent_client_expiration 1h",
            # as root mosquitto drops to user "mosquitto", which cannot write its persistence here
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "sys_interval 1",
        ]
        if tls:
            lines += [
                f"cafile {tls.ca}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        self.conf.write_text("\n".join(lines) + "\n" + extra_conf)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "mosquitto.log"
        self.starts = 0

    def start(self, timeout: float = 10.0) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.starts += 1

        def accepting() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
            with socket.socket() as s:
                s.settimeout(0.2)
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(accepting, timeout, what=f"mosquitto on port {self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: mosquitto saves sessions and queued messages first. SIGKILL: nothing saved."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Seen:
    topic: str
    payload: bytes
    retain: bool
    body: Any = None


@dataclass
class Consumer:
    """A backend stand-in: persistent session, QoS 1, validates every message against the schema."""

    port: int
    topic: str = "#"
    client_id: str = "test-consumer"
    tls: TlsFiles | None = None
    messages: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.validators = {
            leaf: jsonschema.Draft202012Validator(schema.for_topic_leaf(leaf)) for leaf in schema.DEF_BY_LEAF
        }
        self._validated = 0
        self._errors: list[str] = []
        self.connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        if self.tls:
            c.tls_set(ca_certs=str(self.tls.ca), certfile=str(self.tls.client_cert), keyfile=str(self.tls.client_key))
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_disconnect = lambda *a: self.connected.clear()
        c.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect_async("127.0.0.1", self.port, keepalive=10, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        wait_for(self.connected.is_set, 10, what="consumer connected")

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)
            self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # parse here, validate later in the test thread: jsonschema costs ~50 us per sample and a slow
        # consumer would only measure itself
        seen = Seen(msg.topic, bytes(msg.payload), bool(msg.retain))
        try:
            seen.body = _v2_body(seen.payload) if v2decode.is_v2(seen.payload) else json.loads(msg.payload)
        except (ValueError, v2decode.DecodeError):
            seen.body = None
        with self.lock:
            self.messages.append(seen)

    @property
    def errors(self) -> list[str]:
        """Schema violations among every message received so far (each message validated once)."""
        with self.lock:
            todo = self.messages[self._validated :]
            self._validated = len(self.messages)
        for m in todo:
            leaf = m.topic.rsplit("/", 1)[-1]
            if leaf not in self.validators or v2decode.is_v2(m.payload):  # v2: checked by its decoder
                continue
            if m.body is None:
                self._errors.append(f"{m.topic}: not JSON: {m.payload[:100]!r}")
                continue
            try:
                self.validators[leaf].validate(m.body)
            except jsonschema.ValidationError as exc:
                self._errors.append(f"{m.topic}: {str(exc)[:500]}")
        return list(self._errors)

    def on(self, leaf: str) -> list[Seen]:
        with self.lock:
            return [m for m in self.messages if m.topic.endswith("/" + leaf)]

    def records(self, leaf: str = "telemetry") -> list[dict[str, Any]]:
        """Every record received on ``leaf`` (duplicates included), in arrival order, with 'replayed'."""
        out = []
        for m in self.on(leaf):
            for r in m.body["records"]:
                out.append({**r, "replayed": m.body["replayed"]})
        return out

    def seqs(self, *leaves: str) -> list[int]:
        return [r["seq"] for leaf in (leaves or ("telemetry", "events")) for r in self.records(leaf)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _v2_body(payload: bytes) -> dict[str, Any]:
    """A v2 message as the v1-shaped fields these tests read: records with seq and t_ms, replayed."""
    msg = v2decode.decode_message(payload)
    return {
        "format": 2,
        "cabinet_id": msg.cabinet_id,
        "site_id": msg.site_id,
        "replayed": msg.replayed,
        # events: the v1 record fields; telemetry: the compact record under "compact"
        "records": [
            {"seq": r.seq, "t_ms": r.t_ms, **(r.body if msg.kind == v2decode.KIND_EVENTS else {"compact": r.body})}
            for r in msg.records
        ],
    }


def running_broker(workdir: Path) -> Iterator[Broker]:
    """Body of the ``mqtt_broker`` fixture (tests/conftest.py): started, killed on teardown."""
    b = Broker(workdir)
    b.start()
    try:
        yield b
    finally:
        b.stop(signal.SIGKILL)
