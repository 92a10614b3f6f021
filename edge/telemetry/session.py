"""The MQTT session: one paho-mqtt 2.x client, its network thread, TLS, will, persistent session, backoff.

- MQTT 5 (``clean_start = false`` with Session Expiry ``session_expiry_s``) or 3.1.1 (``clean_session =
  false``): commands sent while the cabinet is offline wait in the broker's session.
- The will (QoS 1) is set before the connect; the caller publishes the birth on connect. A fixed will
  (retained) is set once; a will given as a callable (Sparkplug B: a new bdSeq per connect) is asked for
  before every connect and reconnect (paho's ``on_pre_connect``), and then paho's unsent messages of the
  previous connection are dropped: they belong to the previous Sparkplug session (its seq numbers), and
  the caller sends everything unacknowledged again after the connect anyway.
- Reconnect: exponential backoff with jitter (:func:`backoff_s`: the cap doubles from ``reconnect_min_s``
  up to ``reconnect_max_s``, each delay drawn from [cap/2, cap]) so a broker restart does not bring the
  whole fleet back at once. paho's own doubling is switched off (min == max delay).
- paho's network loop runs in its own thread (``loop_start``). The :class:`SessionEvents` callbacks run on
  that thread: they must only hand the data on (to a queue, to the event loop), never block.
- Each message is handed on with how it came (:class:`~edge.telemetry.channel.Received`): the retain flag
  and, under MQTT 5, the Message Expiry Interval the broker delivered (already counted down by the time
  the message waited in the broker).
- :meth:`Session.publish` only queues a packet for paho's thread and is safe from any thread.
- Each connect attempt has its number (:attr:`Session.epoch`, counted before the CONNECT is sent). A
  publish given the ``epoch`` of the connection it was prepared for is refused once another connect has
  begun: the uplink thread may still be inside a replay step of the old connection when paho has already
  connected again, and its messages (Sparkplug: the old session's seq numbers, after the broker's NDEATH)
  must not go out ahead of the new connection's births. The check and the publish hold paho's outgoing
  message lock, which the count and the drop of the old queue also hold, so none slips in between.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config.telemetry import Mqtt
from edge.telemetry.channel import Received, wall_ms

log = logging.getLogger(__name__)


class _PahoShutdownNoise(logging.Filter):
    """paho 2.2 logs "Client is not connected" as an ERROR on every clean stop of its thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


PAHO_LOG = logging.getLogger("edge.telemetry.paho")
PAHO_LOG.addFilter(_PahoShutdownNoise())


def backoff_s(attempt: int, min_s: float, max_s: float, rnd: random.Random) -> float:
    """Delay before reconnect ``attempt`` (1, 2, ...): cap doubles from min_s to max_s, delay in [cap/2, cap]."""
    cap = min(max_s, min_s * 2 ** min(max(attempt - 1, 0), 30))
    return cap / 2 + rnd.uniform(0, cap / 2)


def received(msg: mqtt.MQTTMessage, now_ms: Callable[[], int] = wall_ms) -> Received:
    """How ``msg`` came: its retain flag and (MQTT 5) the message expiry the broker delivered, if any."""
    props = getattr(msg, "properties", None)
    expiry = getattr(props, "MessageExpiryInterval", None) if props is not None else None
    return Received(
        retained=bool(msg.retain),
        expiry_s=expiry if isinstance(expiry, int) else None,
        received_ms=now_ms(),
    )


WillFn = Callable[[], tuple[str, bytes]]  # (topic, payload) of the will for the next connect, not retained


@dataclass(frozen=True)
class SessionEvents:
    """What the session reports, called on paho's network thread."""

    connected: Callable[[bool], None]  # session_present
    refused: Callable[[str], None]  # CONNACK with an error: the reason
    connect_failed: Callable[[], None]  # no connection (network, broker down)
    disconnected: Callable[[str], None]  # the reason
    published: Callable[[int, bool, str], None]  # message id, failed, reason
    message: Callable[[str, bytes, Received], None]  # topic, payload, how it came


class Session:
    def __init__(
        self,
        cfg: Mqtt,
        client_id: str,
        events: SessionEvents,
        *,
        will: tuple[str, bytes] | WillFn,
        rnd: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.events = events
        self.will = will
        self.rnd = rnd or random.Random()
        self.attempt = 0
        self.next_reconnect_s: float | None = None  # the delay last set (kept for the log)
        self.reconnect_at: float | None = None  # monotonic time of the next connection attempt
        self.clock = time.monotonic  # paho's reconnect wait runs on the same clock
        self.closing = False
        self.epoch = 0  # connect attempts begun (paho's thread); the current connection's number
        self._client: mqtt.Client | None = None

    def start(self) -> None:
        """Build the client and start its thread; connects in the background. Raises OSError, ValueError
        or ssl.SSLError when the configuration cannot work (TLS files missing, bad host)."""
        self._client = self._make_client()
        self._client.loop_start()

    def _make_client(self) -> mqtt.Client:
        c = self.cfg
        v5 = c.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else False,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        if c.username:
            client.username_pw_set(c.username, c.password)
        if c.tls.enabled:
            client.tls_set(
                ca_certs=c.tls.ca_file, certfile=c.tls.cert_file, keyfile=c.tls.key_file, cert_reqs=ssl.CERT_REQUIRED
            )
            client.tls_insecure_set(c.tls.insecure)
        client.enable_logger(PAHO_LOG)  # errors inside paho callbacks end up in our log
        client.max_inflight_messages_set(c.max_inflight)
        client.on_pre_connect = self._cb_pre_connect
        if not callable(self.will):
            client.will_set(self.will[0], self.will[1], qos=1, retain=True)
        client.on_connect = self._cb_connect
        client.on_connect_fail = self._cb_connect_fail
        client.on_disconnect = self._cb_disconnect
        client.on_publish = self._cb_publish
        client.on_message = self._cb_message
        self._set_delay(client)
        props: Properties | None = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = c.session_expiry_s
        client.connect_async(
            c.host,
            c.port,
            keepalive=c.keepalive_s,
            clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        return client

    def retry_in_s(self) -> float | None:
        """Seconds until paho tries to connect again (counts down; 0 while it is trying), None before the
        first delay is set."""
        return None if self.reconnect_at is None else round(max(0.0, self.reconnect_at - self.clock()), 3)

    def _set_delay(self, client: mqtt.Client) -> None:
        self.attempt += 1
        d = backoff_s(self.attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self.rnd)
        self.next_reconnect_s = round(d, 3)
        self.reconnect_at = self.clock() + d
        # paho doubles from min to max; with min == max it waits exactly our jittered delay
        client.reconnect_delay_set(min_delay=d, max_delay=d)  # type: ignore[arg-type]

    # -- paho thread: hand everything over ----------------------------------------------------------
    def _cb_pre_connect(self, client: mqtt.Client, _u: Any) -> None:
        """Before every CONNECT (paho calls it without holding its callback lock)."""
        with client._out_message_mutex:
            self.epoch += 1  # from here a publish for an earlier connection is refused
            if not callable(self.will):
                return
            # paho would resend these right after the CONNACK, ahead of the new session's births
            client._out_messages.clear()
        topic, payload = self.will()
        client.will_set(topic, payload, qos=1, retain=False)

    def _cb_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.events.refused(str(reason))
            return
        self.attempt = 0
        self.events.connected(bool(flags.session_present))

    def _cb_connect_fail(self, client: mqtt.Client, _u: Any) -> None:
        self._set_delay(client)
        self.events.connect_failed()

    def _cb_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._set_delay(client)
        self.events.disconnected(str(reason))

    def _cb_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        self.events.published(mid, bool(reason.is_failure), str(reason))

    def _cb_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.events.message(msg.topic, bytes(msg.payload), received(msg))

    # -- any thread ---------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._client is not None

    def publish(
        self, topic: str, payload: bytes | str, *, retain: bool = False, qos: int = 1, epoch: int | None = None
    ) -> int | None:
        """Queue one message; its message id, or None when paho refused it (not connected: paho keeps its
        own copy of a QoS 1 message, the caller sends again after the next connect anyway) or when
        ``epoch`` is not the current connection's (:attr:`epoch` when its CONNACK came). The id is
        reported to ``published`` on the PUBACK (QoS 1) or once written to the socket (QoS 0)."""
        client = self._client
        if client is None:
            return None
        if epoch is None:
            info = client.publish(topic, payload, qos=qos, retain=retain)
        else:
            with client._out_message_mutex:  # paho takes it in publish() too: no new lock order
                if epoch != self.epoch:
                    return None
                info = client.publish(topic, payload, qos=qos, retain=retain)
        return info.mid if info.rc == mqtt.MQTT_ERR_SUCCESS else None

    def subscribe(self, topic_filter: str) -> None:
        client = self._client
        if client is not None:
            client.subscribe(topic_filter, qos=1)

    def stop(self, goodbye: tuple[str, bytes] | None = None, death: tuple[str, bytes] | None = None) -> None:
        """Publish ``death`` (topic, payload; not retained: what the callable will would have said) and
        ``goodbye`` (retained), disconnect, join paho's thread. Blocks: call it off the event loop
        (``asyncio.to_thread``)."""
        client = self._client
        if client is None:
            return
        self._client = None
        self.closing = True
        if death is not None:
            client.publish(death[0], death[1], qos=1, retain=False)
        if goodbye is not None:
            client.publish(goodbye[0], goodbye[1], qos=1, retain=True)
        client.disconnect()
        client.loop_stop()
