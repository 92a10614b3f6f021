"""MQTT uplink: forward the store to the broker with QoS 1, delete a record only after its PUBACK.

Threads, so that the control path (the daemon's asyncio loop) never waits on network or disk:
- paho's network loop runs in its own thread (``loop_start``); callbacks only hand data on.
- delivery (reading the store through its own SQLite connection, batching, publishing, deleting on
  PUBACK, resync on connect) runs in one uplink thread fed by a queue: connect, disconnect and PUBACK
  callbacks and "new record" kicks are queued there, in order.
- commands and the retained state run on the asyncio loop (``call_soon_threadsafe``), because they
  touch the controller; the daemon's own appends stay on the loop (one INSERT per record).
``publish()`` only queues a packet for paho's thread.

Delivery (at least once, consumers drop duplicates by ``seq``):
- On every (re)connect the uplink *resyncs*: records up to the store's last seq at that moment are the
  backlog, replayed in seq order, batched up to ``batch_samples`` samples per message and marked
  ``"replayed": true``. Later records are live and sent as they arrive, not marked.
- Live first: live records may use the whole in-flight window, the backlog only the window minus a
  reserve (a quarter, at least one slot), so live data goes out within one interval while a day of
  backlog drains.
- A PUBACK deletes the records of that message. Messages unacknowledged when the connection drops are
  sent again after the reconnect (paho retransmits its own copy too): duplicates carry the same seq.
- Reconnect: exponential backoff with jitter (``reconnect_min_s`` doubling up to ``reconnect_max_s``,
  each delay drawn from [cap/2, cap]) so a broker restart does not bring the whole fleet back at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config.telemetry import Mqtt
from edge.telemetry import commands
from edge.telemetry.store import EVENT, RawRecord, Store, StoreView
from edge.telemetry.topics import Topics

log = logging.getLogger(__name__)

SCHEMA_TELEMETRY = "cabinet-edge/telemetry/1"
SCHEMA_EVENTS = "cabinet-edge/events/1"
SCHEMA_STATUS = "cabinet-edge/status/1"
SCHEMA_STATE = "cabinet-edge/state/1"
SCHEMA_CMD_RESULT = "cabinet-edge/cmd-result/1"
PREFETCH_ROWS = 128  # backlog rows read from SQLite at once (~1 MB: keeps each loop step short)
LIVE_ROWS = 256  # live rows read per step
SHUTDOWN_WAIT_S = 1.0  # longest wait for paho's thread when the daemon stops
# Acknowledged records are deleted as a group commit, not one transaction per PUBACK: during a backlog
# drain (~1,000 PUBACKs/s) per-ack deletes held SQLite's write lock so often that the control loop's
# inserts waited in the busy handler (reaction max 103 ms, docs/RELIABILITY.md). A delete waits for a
# pause of DELETE_LINGER_S in the PUBACKs, at most DELETE_EVERY_S. A kill before it only means those
# records are sent again under the same seq.
DELETE_LINGER_S = 0.005
DELETE_EVERY_S = 0.1
DELETE_MAX_ROWS = 5000

EventSink = Callable[[str, str, dict[str, Any]], None]
StateSource = Callable[[], dict[str, Any]]


class _PahoShutdownNoise(logging.Filter):
    """paho 2.2 logs "Client is not connected" as an ERROR on every clean stop of its thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


PAHO_LOG = logging.getLogger("edge.telemetry.paho")
PAHO_LOG.addFilter(_PahoShutdownNoise())


def now_ms() -> int:
    return int(time.time() * 1000)


def backoff_s(attempt: int, min_s: float, max_s: float, rnd: random.Random) -> float:
    """Delay before reconnect ``attempt`` (1, 2, ...): cap doubles from min_s to max_s, delay in [cap/2, cap]."""
    cap = min(max_s, min_s * 2 ** min(max(attempt - 1, 0), 30))
    return cap / 2 + rnd.uniform(0, cap / 2)


def sample_count(rec: RawRecord) -> int:
    return 1 if rec.kind == EVENT else max(1, rec.payload.count('"signal":'))


@dataclass
class UplinkStats:
    connected: bool = False
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    messages_sent: int = 0
    messages_acked: int = 0
    records_delivered: int = 0
    bytes_sent: int = 0
    broker_rejections: int = 0
    commands: int = 0
    commands_rejected: int = 0
    last_error: str | None = None
    next_reconnect_s: float | None = None
    longest_step_ms: float = 0.0  # longest time one uplink step held the event loop (control shares it)


@dataclass
class _Inflight:
    seqs: list[int]
    live: bool
    records: int = 0


@dataclass
class _Cursor:
    """Where this connection stands: backlog is seq <= live_from, live is seq > live_from."""

    live_from: int = 0
    backlog_after: int = 0
    live_after: int = 0
    buf: deque[RawRecord] = field(default_factory=deque)
    backlog_done: bool = False


class Uplink:
    def __init__(
        self,
        cfg: Mqtt,
        site_id: str,
        cabinet_id: str,
        store: Store,
        *,
        max_current_a: float,
        remote_clear_allowed: bool,
        controller: commands.ControllerLike | None = None,
        state_source: StateSource | None = None,
        on_event: EventSink | None = None,
        interval_s: float = 1.0,
        version: str = "",
        rnd: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.site_id = site_id
        self.cabinet_id = cabinet_id
        self.topics = Topics(cfg.topic_prefix, site_id, cabinet_id)
        self.client_id = cfg.client_id or f"edge-{site_id}-{cabinet_id}"
        self.store = store
        self.max_current_a = max_current_a
        self.remote_clear_allowed = remote_clear_allowed
        self.controller = controller
        self.state_source = state_source
        self.on_event = on_event
        self.version = version
        self.interval_s = interval_s
        self.rnd = rnd or random.Random()
        self.stats = UplinkStats()
        self.window = cfg.max_inflight
        self.backlog_window = max(1, self.window - max(1, self.window // 4))
        self._inflight: dict[int, _Inflight] = {}
        self._live_inflight = 0
        self._cur = _Cursor()
        self._attempt = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._io_q: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._io_thread: threading.Thread | None = None
        self._kick_pending = False
        self._view: StoreView | None = None
        self._acked_seqs: list[int] = []  # acknowledged, not yet deleted (uplink thread only)
        self._acked_since = 0.0
        self._last_state: str | None = None
        self._paused_until = 0.0
        self._closing = False
        self._client: mqtt.Client | None = None
        self._head = json.dumps({"cabinet_id": cabinet_id, "site_id": site_id}, separators=(",", ":"))[1:-1]

    # -- paho client ---------------------------------------------------------------------------------
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
        client.max_inflight_messages_set(self.window)
        client.will_set(self.topics.status, self._status_payload("offline"), qos=1, retain=True)
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

    def _set_delay(self, client: mqtt.Client) -> None:
        self._attempt += 1
        d = backoff_s(self._attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self.rnd)
        self.stats.next_reconnect_s = round(d, 3)
        # paho doubles from min to max; with min == max it waits exactly our jittered delay
        client.reconnect_delay_set(min_delay=d, max_delay=d)  # type: ignore[arg-type]

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop closed while we were shutting down
                pass

    def _to_io(self, fn: Callable[..., None], *args: Any) -> None:
        self._io_q.put(lambda: fn(*args))

    def kick(self) -> None:
        """Ask the uplink thread for a pump (from any thread); coalesced while one is queued."""
        if not self._kick_pending:
            self._kick_pending = True
            self._io_q.put(self._kicked)

    def _kicked(self) -> None:
        self._kick_pending = False
        self.pump()

    def _io_main(self) -> None:
        self._view = StoreView(self.store.path)
        try:
            while True:
                wait = None
                if self._acked_seqs:
                    wait = self._acked_since + DELETE_EVERY_S - time.monotonic()
                    if wait <= 0:  # due: a busy queue must not starve the deletes
                        self._flush_deletes()
                        wait = None
                    else:  # group commit: delete as soon as PUBACKs stop coming in a burst
                        wait = min(wait, DELETE_LINGER_S)
                try:
                    fn = self._io_q.get(timeout=wait)
                except queue.Empty:
                    self._flush_deletes()
                    continue
                if fn is None:
                    break
                try:
                    fn()
                except Exception as exc:  # logged and counted; the next kick retries
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("uplink step failed; will retry")
        finally:
            self._flush_deletes()
            self._view.close()

    def _flush_deletes(self) -> None:
        if self._acked_seqs and self._view is not None:
            seqs, self._acked_seqs = self._acked_seqs, []
            self._view.delete(seqs)

    # paho thread: hand everything over, touch nothing shared
    def _cb_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._to_io(self._connect_refused, str(reason))
            return
        self._attempt = 0
        self._to_io(self._connected, bool(flags.session_present))

    def _cb_connect_fail(self, client: mqtt.Client, _u: Any) -> None:
        self._set_delay(client)
        self._to_io(self._connect_failed)

    def _cb_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._set_delay(client)
        self._to_io(self._disconnected, str(reason))

    def _cb_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        self._to_io(self._acked, mid, bool(reason.is_failure), str(reason))

    def _cb_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._to_loop(self._command, msg.topic, bytes(msg.payload))

    # -- event loop side -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until cancelled. Never raises anything but CancelledError: telemetry must not stop control."""
        self._loop = asyncio.get_running_loop()
        self.store.on_append.append(self._on_append)
        self._io_thread = threading.Thread(target=self._io_main, name="mqtt-uplink", daemon=True)
        self._io_thread.start()
        try:
            # spread the first connects of a fleet that powers up together
            await asyncio.sleep(self.rnd.uniform(0, self.cfg.reconnect_min_s))
            try:
                self._client = self._make_client()
                self._client.loop_start()
            except (OSError, ValueError, ssl.SSLError) as exc:
                self.stats.last_error = f"uplink not started: {exc}"
                log.error("MQTT uplink not started (%s); telemetry stays in the store", exc)
                self._emit("uplink_error", "mqtt", {"detail": str(exc)})
                await asyncio.Event().wait()
            while True:
                await asyncio.sleep(self._tick_s())
                self.kick()  # a safety net: every append kicks already
                try:
                    self._publish_state_if_changed()
                except Exception as exc:  # logged and counted; control must go on
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("uplink step failed; will retry")
        finally:
            if self._on_append in self.store.on_append:
                self.store.on_append.remove(self._on_append)
            await self._shutdown()

    def _tick_s(self) -> float:
        # every stored record kicks the uplink thread; this tick catches state changes and pauses
        return max(0.05, min(1.0, self.interval_s / 2))

    def _on_append(self, _seq: int) -> None:
        self.kick()

    async def _shutdown(self) -> None:
        self._io_q.put(None)
        io = self._io_thread
        if io is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(io.join), timeout=SHUTDOWN_WAIT_S)
            except TimeoutError:
                log.warning("MQTT uplink thread did not stop within %.1f s", SHUTDOWN_WAIT_S)
        client = self._client
        if client is None:
            return
        self._client = None
        self._closing = True
        try:
            if self.stats.connected:
                client.publish(self.topics.status, self._status_payload("offline"), qos=1, retain=True)
            client.disconnect()
            await asyncio.wait_for(asyncio.to_thread(client.loop_stop), timeout=SHUTDOWN_WAIT_S)
        except (TimeoutError, OSError, RuntimeError) as exc:
            log.warning("MQTT uplink did not stop cleanly: %s", exc)
        self.stats.connected = False

    def _connected(self, session_present: bool) -> None:
        self.stats.connected = True
        self.stats.connects += 1
        self.stats.last_error = None
        log.info(
            "MQTT connected to %s:%d as %s (session present: %s)",
            self.cfg.host,
            self.cfg.port,
            self.client_id,
            session_present,
        )
        self._resync()
        client = self._client
        if client is None:
            return
        client.subscribe(self.topics.cmd_filter, qos=1)
        client.publish(self.topics.status, self._status_payload("online"), qos=1, retain=True)
        self._to_loop(self._publish_state_if_changed, True)  # state lives on the loop; retained anew
        self.pump()

    def _resync(self) -> None:
        """Forget what is in flight; everything still in the store is backlog from here on."""
        self._inflight.clear()
        self._live_inflight = 0
        self._flush_deletes()  # acknowledged records must not come back as backlog
        assert self._view is not None
        last = self._view.last_seq()
        self._cur = _Cursor(live_from=last, live_after=last)

    def _connect_refused(self, why: str) -> None:
        self.stats.connect_failures += 1
        self.stats.last_error = f"broker refused connection: {why}"
        log.error("MQTT broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, why)

    def _connect_failed(self) -> None:
        self.stats.connect_failures += 1
        self.stats.last_error = f"cannot connect to {self.cfg.host}:{self.cfg.port}"
        if self.stats.connect_failures in (1, 10) or self.stats.connect_failures % 100 == 0:
            log.warning(
                "MQTT broker %s:%d not reachable (%d attempts); telemetry buffered, next try in %.1f s",
                self.cfg.host,
                self.cfg.port,
                self.stats.connect_failures,
                self.stats.next_reconnect_s or 0,
            )

    def _disconnected(self, why: str) -> None:
        if self._closing:
            log.info("MQTT disconnected (%s)", why)
        elif self.stats.connected:
            self.stats.disconnects += 1
            log.warning("MQTT connection lost (%s); telemetry buffered", why)
        else:  # closed before CONNACK: TLS refused, bad credentials, broker going down
            self.stats.connect_failures += 1
            self.stats.last_error = self.stats.last_error or f"connection closed before CONNACK: {why}"
        self.stats.connected = False

    def _acked(self, mid: int, failed: bool, why: str) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        if entry.live:
            self._live_inflight -= 1
        if failed:
            # v5 PUBACK with an error code (quota, not authorised): keep the records, retry after a pause
            self.stats.broker_rejections += 1
            self.stats.last_error = f"broker rejected a message: {why}"
            log.error("broker rejected telemetry message (%s); retrying in %.1f s", why, self.cfg.reconnect_min_s)
            self._paused_until = time.monotonic() + self.cfg.reconnect_min_s
            self._resync()
            return
        self.stats.messages_acked += 1
        self.stats.records_delivered += entry.records
        if not self._acked_seqs:
            self._acked_since = time.monotonic()
        self._acked_seqs.extend(entry.seqs)
        if len(self._acked_seqs) >= DELETE_MAX_ROWS:
            self._flush_deletes()
        self.pump()

    def pump(self) -> None:
        """Fill the in-flight window: live records first, then the backlog in seq order."""
        t0 = time.perf_counter()
        try:
            self._pump()
        finally:
            step_ms = (time.perf_counter() - t0) * 1000.0
            if step_ms > self.stats.longest_step_ms:
                self.stats.longest_step_ms = round(step_ms, 3)

    def _pump(self) -> None:
        client = self._client
        view = self._view
        if client is None or view is None or not self.stats.connected or time.monotonic() < self._paused_until:
            return
        cur = self._cur
        # live
        while len(self._inflight) < self.window:
            rows = view.pending_raw(cur.live_after, None, LIVE_ROWS)
            if not rows:
                break
            for batch in self._batches(rows, limit=self.window - len(self._inflight)):
                if not self._send(client, batch, replayed=False):
                    return
                cur.live_after = batch[-1].seq
            if len(rows) < LIVE_ROWS:
                break
        # backlog
        while (
            not cur.backlog_done
            and len(self._inflight) - self._live_inflight < self.backlog_window
            and len(self._inflight) < self.window
        ):
            if not cur.buf:
                rows = view.pending_raw(cur.backlog_after, cur.live_from, PREFETCH_ROWS)
                if not rows:
                    cur.backlog_done = True
                    break
                cur.buf.extend(rows)
                cur.backlog_after = rows[-1].seq
            batch = self._take_batch(cur.buf)
            if not self._send(client, batch, replayed=True):
                return

    def _batches(self, rows: list[RawRecord], limit: int) -> list[list[RawRecord]]:
        buf = deque(rows)
        out: list[list[RawRecord]] = []
        while buf and len(out) < limit:
            out.append(self._take_batch(buf))
        return out

    def _take_batch(self, buf: deque[RawRecord]) -> list[RawRecord]:
        """Consecutive records of one kind, up to batch_samples samples (a record is never split)."""
        first = buf.popleft()
        batch = [first]
        n = sample_count(first)
        while buf and buf[0].kind == first.kind and n + sample_count(buf[0]) <= self.cfg.batch_samples:
            rec = buf.popleft()
            batch.append(rec)
            n += sample_count(rec)
        return batch

    def _send(self, client: mqtt.Client, batch: list[RawRecord], replayed: bool) -> bool:
        payload = self.encode(batch, replayed)
        topic = self.topics.events if batch[0].kind == EVENT else self.topics.telemetry
        info = client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            # not connected any more: paho keeps its copy; we send again after the resync anyway
            return False
        self._inflight[info.mid] = _Inflight([r.seq for r in batch], live=not replayed, records=len(batch))
        if not replayed:
            self._live_inflight += 1
        self.stats.messages_sent += 1
        self.stats.bytes_sent += len(payload)
        return True

    def encode(self, batch: list[RawRecord], replayed: bool) -> bytes:
        """One message from stored records, spliced as text: the stored JSON is already the wire JSON."""
        schema = SCHEMA_EVENTS if batch[0].kind == EVENT else SCHEMA_TELEMETRY
        recs = []
        for r in batch:
            inner = r.payload[1:-1]
            recs.append(f'{{"seq":{r.seq},"t_ms":{r.t_ms}{"," + inner if inner else ""}}}')
        head = (
            f'{{"schema":"{schema}",{self._head},"seq_first":{batch[0].seq},"seq_last":{batch[-1].seq},'
            f'"t_first_ms":{batch[0].t_ms},"t_last_ms":{batch[-1].t_ms},'
            f'"replayed":{"true" if replayed else "false"},"sent_ms":{now_ms()},"records":['
        )
        return (head + ",".join(recs) + "]}").encode()

    # -- status, state, commands ----------------------------------------------------------------------
    def _status_payload(self, status: str) -> bytes:
        return json.dumps(
            {
                "schema": SCHEMA_STATUS,
                "cabinet_id": self.cabinet_id,
                "site_id": self.site_id,
                "status": status,
                "t_ms": now_ms(),
                "client_id": self.client_id,
                "version": self.version,
            },
            separators=(",", ":"),
        ).encode()

    def _publish_state_if_changed(self, force: bool = False) -> None:
        client = self._client
        if client is None or not self.stats.connected or self.state_source is None:
            return
        state = self.state_source()
        key = json.dumps(state, sort_keys=True, separators=(",", ":"))
        if not force and key == self._last_state:
            return
        self._last_state = key
        msg = {
            "schema": SCHEMA_STATE,
            "cabinet_id": self.cabinet_id,
            "site_id": self.site_id,
            "t_ms": now_ms(),
            "seq_last": self.store.last_seq(),
            **state,
        }
        client.publish(self.topics.state, json.dumps(msg, separators=(",", ":")), qos=1, retain=True)

    def _emit(self, kind: str, name: str, data: dict[str, Any]) -> int | None:
        if self.on_event is None:
            return None
        before = self.store.last_seq()
        self.on_event(kind, name, data)
        after = self.store.last_seq()
        return after if after > before else None

    def _command(self, topic: str, payload: bytes) -> None:
        """Validate, execute, record as an event, answer on cmd-result. Never raises."""
        name = self.topics.command_name(topic) or topic.rsplit("/", 1)[-1]
        self.stats.commands += 1
        try:
            cmd = commands.parse(name, payload, self.max_current_a, self.remote_clear_allowed, now_ms())
            if self.controller is None:
                raise commands.Rejected("no controller attached", cmd.id)
            result = commands.execute(cmd, self.controller)
            args = cmd.args
        except commands.Rejected as rej:
            result = commands.Result(rej.cmd_id, name[:64], commands.REJECTED, rej.reason)
            args = {}
        except Exception as exc:  # a bad command must never take the daemon down
            log.exception("command %s failed", name)
            result = commands.Result(None, name[:64], commands.REJECTED, f"internal error: {type(exc).__name__}")
            args = {}
        if result.result == commands.REJECTED:
            self.stats.commands_rejected += 1
        log.info("command %s id=%s: %s (%s)", result.command, result.id, result.result, result.reason)
        seq = self._emit("command", result.command, {**result.as_dict(), "args": args, "source": "mqtt"})
        client = self._client
        if client is not None:
            msg = {
                "schema": SCHEMA_CMD_RESULT,
                "cabinet_id": self.cabinet_id,
                "site_id": self.site_id,
                "t_ms": now_ms(),
                **result.as_dict(),
                "seq": seq,
            }
            client.publish(self.topics.cmd_result, json.dumps(msg, separators=(",", ":")), qos=1)
        if result.command == "request-state" and result.result == commands.ACCEPTED:
            self._publish_state_if_changed(force=True)
        else:
            self._publish_state_if_changed()

    def status(self) -> dict[str, Any]:
        return {
            **vars(self.stats),
            "inflight": len(self._inflight),
            "client_id": self.client_id,
            "broker": f"{self.cfg.host}:{self.cfg.port}",
        }
