"""The EVerest ``power_supply_DC`` adapter: the cabinet is the DC supply of one EVerest API module per
connector, over MQTT (often the dispenser's mosquitto).

Threads:
- paho's network thread receives e2m messages, checks each with the pure codec (everest_codec.py) and
  hands a valid request to the event loop with ``loop.call_soon_threadsafe`` (no polling on the way in: a
  set-point reaches the sink on the loop's next turn). A refused message is counted per reason and logged,
  at most one line per reason per ``REFUSAL_LOG_EVERY_S``.
- the event loop (:meth:`EverestAdapter.run`) calls the sink, reads the connector reports and publishes
  m2e messages; paho's publish only queues a packet for its thread and never blocks the loop.

What is published (per bound connector, QoS 0: on every connect, and on EVerest's first heartbeat after a
silence, the whole state is published again, so nothing depends on a queued message):
- ``capabilities`` after the connect, then when they change (:func:`everest_codec.capabilities_due`: a drop
  goes out on the next check, at most ``CHECK_PERIOD_S`` after the report shows it, or at once after
  :meth:`EverestAdapter.poke`; rises wait for the interval and the hysteresis);
- ``voltage_current`` every ``voltage_current_period_ms``; ``communication_check`` every
  ``communication_check_period_ms``; ``mode`` on every change of the report's mode;
- ``raise_error`` / ``clear_error`` from the report's faults (everest_codec.ERROR_TABLE), each once; while
  ``modules_reachable`` is False a CommunicationFault, cleared one check after they are back (the sink kept
  the last mode and set-point, the evaluation in between has applied them).

EVerest's heartbeat: each one calls ``sink.heartbeat("everest", t)``; when a bound module id has sent none for
``heartbeat_timeout_ms`` the adapter emits ``everest_heartbeat_lost`` (and ``everest_heartbeat_back`` when it
resumes). Turning that silence into 0 A is the safety core's job (request staleness), not the adapter's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.charging import everest_codec as codec
from edge.charging.demand import Capabilities, ConnectorReport, DemandSink

log = logging.getLogger("edge.charging.everest")

SOURCE = "everest"  # the sink's heartbeat source name
CHECK_PERIOD_S = 0.05  # capabilities, mode and errors are compared with the reports this often
REFUSAL_LOG_EVERY_S = 10.0
KEEPALIVE_S = 5  # a dead link is noticed well before EVerest's 5 s communication check runs out
# reconnect backoff: paho doubles from min to max; the max stays well under EVerest's 5 s communication check
RECONNECT_MIN_S = 0.25
RECONNECT_MAX_S = 2.0

EventSink = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True)
class EverestSettings:
    """The ``[everest]`` config section (defaults as documented there)."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = ""
    base: str = "everest_api/1"
    client_id: str = ""
    heartbeat_timeout_ms: int = 3000
    voltage_current_period_ms: int = 250
    communication_check_period_ms: int = 1000
    capabilities_min_interval_ms: int = 1000
    capabilities_hysteresis_a: float = 5.0

    @classmethod
    def from_config(cls, section: Any, cabinet_id: str = "") -> EverestSettings:
        """From any object with these attributes (``config.everest``); None reads as "" for the strings.
        An empty client id becomes ``cabinet-edge-<cabinet_id>`` (the host name without a cabinet id)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            v = getattr(section, f.name)
            values[f.name] = "" if v is None and f.type == "str" else v
        s = cls(**values)
        if not s.client_id:
            s = cls(**{**values, "client_id": f"cabinet-edge-{cabinet_id or socket.gethostname()}"})
        return s


def _no_delay(client: mqtt.Client) -> None:
    """Small packets out at once: with Nagle a message sent while the previous one waits for its (delayed,
    up to 40 ms) ACK waits too. The broker's side needs the same (mosquitto: ``set_tcp_nodelay true``)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):  # an ssl.SSLSocket is one too
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            log.debug("TCP_NODELAY not set: %s", exc)


@dataclass
class _Connector:
    """What was published for one connector (loop thread only)."""

    name: str
    module_id: str
    caps: Capabilities | None = None
    caps_t: float | None = None
    mode: str | None = None
    raised: dict[tuple[str, str], codec.EverestError] = field(default_factory=dict)
    reachable_before: bool = True  # modules_reachable at the previous check
    resync: bool = True  # publish capabilities, mode and raised errors again (connect, EVerest back)
    clear_leftovers: bool = True  # first connect: clear errors a previous run may have left raised


class EverestAdapter:
    def __init__(
        self,
        settings: EverestSettings,
        bindings: dict[str, str],
        sink: DemandSink,
        reports: Callable[[], dict[str, ConnectorReport]],
        clock: Callable[[], float],
        on_event: EventSink,
    ) -> None:
        """``bindings``: EVerest module id -> connector name. ``reports`` and ``on_event`` are called on the
        loop; ``clock`` (monotonic seconds) on both threads."""
        self.settings = settings
        self.bindings = dict(bindings)
        self.sink = sink
        self.reports = reports
        self.clock = clock
        self.on_event = on_event
        self.base = settings.base.rstrip("/")
        self._conns = {name: _Connector(name, mid) for mid, name in self.bindings.items()}
        # written on the loop, read on paho's thread (replacing a dict entry is atomic): what EVerest was told
        self._caps_for_checks: dict[str, Capabilities] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._wake: asyncio.Event | None = None
        self._connected = False
        # paho thread only
        self._refused: dict[str, int] = {}
        self._refusal_logged: dict[str, tuple[float, int]] = {}  # reason -> (last log time, suppressed)
        self._received: dict[str, int] = {}
        self._hb_last: dict[str, float] = {}  # module id -> last heartbeat (receive time)
        # loop thread only
        self._applied: dict[str, int] = {}
        self._published: dict[str, int] = {}
        self._publish_failed = 0
        self._not_finite_measurements = 0
        self._connects = 0
        self._disconnects = 0
        self._silent: dict[str, bool] = {mid: False for mid in self.bindings}
        self._hb_heard: set[str] = set()
        self._t_start: float | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Build the client and connect in the background (paho's thread retries until the broker answers).
        Raises OSError, ValueError or ssl.SSLError when TLS files are missing or unusable."""
        self._loop = loop
        self._t_start = self.clock()
        self._client = everest_client(
            self.settings,
            self.settings.client_id,
            "edge.charging.everest.paho",
            self._cb_connect,
            self._cb_disconnect,
            self._cb_message,
        )

    def close(self) -> None:
        """Disconnect and join paho's thread (blocks briefly: from the loop use ``asyncio.to_thread``)."""
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def poke(self) -> None:
        """Compare reports and published state now (loop thread; e.g. right after a safety evaluation)."""
        if self._wake is not None:
            self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Publish until ``stopping`` is set: checks every CHECK_PERIOD_S (or on :meth:`poke`), measured
        values and communication checks on their own periods (a late turn does not bunch them up)."""
        self._wake = asyncio.Event()
        vc_period = self.settings.voltage_current_period_ms / 1000.0
        cc_period = self.settings.communication_check_period_ms / 1000.0
        now = self.clock()
        next_vc = next_cc = now
        while not stopping.is_set():
            now = self.clock()
            reports = self.reports()
            self._check(reports, now)
            if now >= next_vc:
                self._publish_measured(reports)
                next_vc = next_vc + vc_period if now - next_vc < vc_period else now + vc_period
            if now >= next_cc:
                for conn in self._conns.values():
                    self._publish(conn.module_id, "communication_check", codec.COMMUNICATION_CHECK_PAYLOAD)
                next_cc = next_cc + cc_period if now - next_cc < cc_period else now + cc_period
            delay = max(0.0, min(next_vc, next_cc, now + CHECK_PERIOD_S) - self.clock())
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
            self._wake.clear()

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "connected": self._connected,
            "connects": self._connects,
            "disconnects": self._disconnects,
            "received": dict(self._received),
            "applied": dict(self._applied),
            "refused": dict(self._refused),
            "refused_total": sum(self._refused.values()),
            "published": dict(self._published),
            "publish_failed": self._publish_failed,
            "not_finite_measurements": self._not_finite_measurements,
            "heartbeat_age_ms": {
                mid: (None if (t := self._hb_last.get(mid)) is None else round((now - t) * 1000.0))
                for mid in self.bindings
            },
            "silent": sorted(mid for mid, silent in self._silent.items() if silent),
            "errors_raised": {c.name: sorted(f"{k[0]}/{k[1]}" for k in c.raised) for c in self._conns.values()},
        }

    # -- paho thread ----------------------------------------------------------------------------------------
    def _cb_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._call_soon(self._on_link, False, f"refused: {reason}")
            return
        _no_delay(client)
        client.subscribe(codec.e2m_filter(self.base), qos=0)
        self._call_soon(self._on_link, True, "connected")

    def _cb_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._call_soon(self._on_link, False, str(reason))

    def _cb_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = self.clock()
        parsed = codec.parse_e2m_topic(self.base, msg.topic)
        if parsed is None:
            self._refuse(codec.Refusal("bad_topic", msg.topic[:80]), msg.topic, now)
            return
        module_id, var = parsed
        self._received[var] = self._received.get(var, 0) + 1
        connector = self.bindings.get(module_id)
        if connector is None:
            self._refuse(codec.Refusal("unknown_module", module_id[:40]), msg.topic, now)
            return
        if msg.retain:  # e.g. an old "Export" must not start a session after our restart
            self._refuse(codec.Refusal("retained", var[:40]), msg.topic, now)
            return
        req = codec.decode_e2m(var, bytes(msg.payload), self._caps_for_checks.get(connector))
        if isinstance(req, codec.Refusal):
            self._refuse(req, msg.topic, now)
        elif isinstance(req, codec.TargetRequest):
            self._call_soon(self._apply_target, connector, req, now)
        elif isinstance(req, codec.ModeRequest):
            self._call_soon(self._apply_mode, connector, req, now)
        else:
            self._hb_last[module_id] = now
            self._call_soon(self._apply_heartbeat, module_id, now)

    def _refuse(self, refusal: codec.Refusal, topic: str, now: float) -> None:
        reason = refusal.reason
        self._refused[reason] = self._refused.get(reason, 0) + 1
        last, suppressed = self._refusal_logged.get(reason, (None, 0))
        if last is not None and now - last < REFUSAL_LOG_EVERY_S:
            self._refusal_logged[reason] = (last, suppressed + 1)
            return
        self._refusal_logged[reason] = (now, 0)
        more = f" ({suppressed} more refused for this reason since the last line)" if suppressed else ""
        log.warning("EVerest request refused (%s) on %s: %s%s", reason, topic, refusal.detail, more)

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop closed between the check and the call: shutting down
                pass

    # -- loop thread: incoming ------------------------------------------------------------------------------
    def _count_applied(self, var: str) -> None:
        self._applied[var] = self._applied.get(var, 0) + 1

    def _apply_target(self, connector: str, req: codec.TargetRequest, now: float) -> None:
        self.sink.set_target(connector, req.voltage_v, req.current_a, now)
        self._count_applied("export_voltage_current")

    def _apply_mode(self, connector: str, req: codec.ModeRequest, now: float) -> None:
        self.sink.set_mode(connector, req.mode, req.phase, now)
        self._count_applied("mode")

    def _apply_heartbeat(self, module_id: str, now: float) -> None:
        self.sink.heartbeat(SOURCE, now)
        self._count_applied("heartbeat")
        first = module_id not in self._hb_heard
        self._hb_heard.add(module_id)
        if self._silent.get(module_id):
            self._silent[module_id] = False
            self.on_event("everest_heartbeat_back", module_id, {"connector": self.bindings[module_id]})
        elif not first:
            return
        # EVerest (re)started after our connect: it has seen nothing of what we published
        self._conns[self.bindings[module_id]].resync = True
        self.poke()

    def _on_link(self, up: bool, reason: str) -> None:
        if up == self._connected:
            return
        self._connected = up
        where = f"{self.settings.host}:{self.settings.port}"
        if up:
            self._connects += 1
            for conn in self._conns.values():
                conn.resync = True
            self.on_event("everest_connected", where, {"client_id": self.settings.client_id})
            self.poke()
        else:
            self._disconnects += 1
            self.on_event("everest_disconnected", where, {"reason": reason})

    # -- loop thread: outgoing ------------------------------------------------------------------------------
    def _publish(self, module_id: str, var: str, payload: bytes) -> bool:
        client = self._client
        if client is None or not self._connected:
            return False
        info = client.publish(codec.m2e_topic(self.base, module_id, var), payload, qos=0)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._publish_failed += 1
            return False
        self._published[var] = self._published.get(var, 0) + 1
        return True

    def _publish_measured(self, reports: dict[str, ConnectorReport]) -> None:
        for conn in self._conns.values():
            r = reports.get(conn.name)
            if r is None:
                continue
            payload = codec.voltage_current_payload(r.voltage_v, r.current_a)
            if payload is None:  # a measurement not valid now: EVerest's parser would refuse the message
                self._not_finite_measurements += 1
                continue
            self._publish(conn.module_id, "voltage_current", payload)

    def _check(self, reports: dict[str, ConnectorReport], now: float) -> None:
        self._watch_heartbeats(now)
        if not self._connected:
            return
        for conn in self._conns.values():
            r = reports.get(conn.name)
            if r is not None:
                self._check_connector(conn, r, now)

    def _check_connector(self, conn: _Connector, r: ConnectorReport, now: float) -> None:
        resync, conn.resync = conn.resync, False
        s = self.settings
        why = "resync" if resync else None
        why = why or codec.capabilities_due(
            conn.caps,
            conn.caps_t,
            r.capabilities,
            now,
            s.capabilities_min_interval_ms / 1000.0,
            s.capabilities_hysteresis_a,
        )
        if why is not None and self._publish(
            conn.module_id, "capabilities", codec.capabilities_payload(r.capabilities)
        ):
            conn.caps, conn.caps_t = r.capabilities, now
            self._caps_for_checks[conn.name] = r.capabilities
            log.debug("capabilities for connector %s published (%s)", conn.name, why)
        if (resync or r.mode != conn.mode) and self._publish(conn.module_id, "mode", codec.mode_payload(r.mode)):
            conn.mode = r.mode
        self._check_errors(conn, r, resync)

    def _check_errors(self, conn: _Connector, r: ConnectorReport, resync: bool) -> None:
        wanted = codec.wanted_errors(r.faults, r.modules_reachable)
        hold = not (r.modules_reachable and conn.reachable_before)
        conn.reachable_before = r.modules_reachable
        if resync:  # EVerest may have restarted (or missed them): say again what is active
            for err in conn.raised.values():
                self._publish(conn.module_id, "raise_error", codec.error_payload(err))
        if conn.clear_leftovers:
            conn.clear_leftovers = False
            for err in codec.possible_errors():
                if err.key not in wanted:
                    self._publish(conn.module_id, "clear_error", codec.error_payload(err))
        to_raise, to_clear = codec.error_changes(conn.raised, wanted, hold)
        for err in to_raise:
            if self._publish(conn.module_id, "raise_error", codec.error_payload(err)):
                conn.raised[err.key] = err
        for err in to_clear:
            if self._publish(conn.module_id, "clear_error", codec.error_payload(err)):
                del conn.raised[err.key]

    def _watch_heartbeats(self, now: float) -> None:
        timeout_s = self.settings.heartbeat_timeout_ms / 1000.0
        for mid, silent in self._silent.items():
            last = self._hb_last.get(mid)
            ref = last if last is not None else self._t_start
            if silent or ref is None or now - ref < timeout_s:
                continue
            self._silent[mid] = True
            self.on_event(
                "everest_heartbeat_lost",
                mid,
                {
                    "connector": self.bindings[mid],
                    "timeout_ms": self.settings.heartbeat_timeout_ms,
                    "last_heartbeat_age_ms": None if last is None else round((now - last) * 1000.0),
                },
            )


def everest_client(
    s: EverestSettings,
    client_id: str,
    log_name: str,
    on_connect: Callable[..., None],
    on_disconnect: Callable[..., None],
    on_message: Callable[..., None],
) -> mqtt.Client:
    """A paho client on the ``[everest]`` broker (credentials, TLS, fast reconnect), connecting in the
    background: one per EVerest-facing adapter (power_supply_DC here, the monitors in everest_monitors.py).
    Raises OSError, ValueError or ssl.SSLError when TLS files are missing or unusable."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
    if s.username:
        c.username_pw_set(s.username, s.password or None)
    if s.tls:
        c.tls_set(
            ca_certs=s.ca_file or None,
            certfile=s.cert_file or None,
            keyfile=s.key_file or None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    c.enable_logger(logging.getLogger(log_name))
    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    c.on_message = on_message
    c.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)  # type: ignore[arg-type]
    c.connect_async(s.host, s.port, keepalive=KEEPALIVE_S)
    c.loop_start()
    return c
