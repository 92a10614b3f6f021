"""MQTT uplink: forward the store to the broker with QoS 1, delete a record only after its PUBACK.

Three parts, put together here:
- :class:`~edge.telemetry.session.Session` (session.py): the paho client, TLS, will, persistent session,
  reconnect backoff with jitter.
- :class:`~edge.telemetry.delivery.Delivery` (delivery.py): which records to publish next (live before
  backlog, batched, a bounded in-flight window, replay marking) and which to delete after which PUBACK;
  pure bookkeeping, the rules are in its docstring.
- :class:`~edge.telemetry.channel.CommandChannel` (channel.py): cloud commands in, answers on cmd-result.
- the wire format (formats.py, ``telemetry.format``): an encoder turns a batch into messages and sends its
  birth on every connect; the records of a batch are deleted once every message of it is acknowledged.

Threads, so that the control path (the daemon's asyncio loop) never waits on network or disk:
- paho's network loop runs in its own thread; the session's callbacks only hand data on.
- delivery (reading the store through its own SQLite connection, ``StoreView``, batching, publishing,
  deleting on PUBACK as a group commit, resync on connect) runs in one uplink thread fed by a queue:
  connect, disconnect and PUBACK callbacks and "new record" kicks are queued there, in order.
- commands and the retained state run on the asyncio loop (``call_soon_threadsafe``), because they
  touch the controller. A command over its rate (:class:`~edge.telemetry.commands.RateLimit`) never gets
  there: paho's thread answers it "rate limited" at once, and the loop reports the count now and then.
  The store's own writer thread commits the daemon's records and kicks this uplink after each commit
  (``Store.on_append``).
Publishing only queues a packet for paho's thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge.config.telemetry import DEADBAND_BY_UNIT, Mqtt, Telemetry
from edge.operator import Source
from edge.ops import REFUSED, Operations
from edge.remote.commands import RemoteHandler
from edge.telemetry import commands
from edge.telemetry.channel import REJECTED, SCHEMA_CMD_RESULT, Answer, CommandChannel, Received
from edge.telemetry.compact import Deadbands
from edge.telemetry.delivery import BACKLOG_RECORDS_PER_S, Batch, Delivery
from edge.telemetry.formats import SCHEMA_EVENTS, SCHEMA_TELEMETRY, EncoderContext, Message, encoder_for
from edge.telemetry.session import Session, SessionEvents, backoff_s
from edge.telemetry.store import RawRecord, Store, StoreView
from edge.telemetry.topics import Topics
from edge.telemetry.traffic import Traffic

__all__ = ["SCHEMA_EVENTS", "SCHEMA_TELEMETRY", "Uplink", "UplinkStats", "backoff_s"]

log = logging.getLogger(__name__)

SCHEMA_STATUS = "cabinet-edge/status/1"
SCHEMA_STATE = "cabinet-edge/state/2"  # 2: "connectors" (edge/status.py, docs/TELEMETRY.md)
SHUTDOWN_WAIT_S = 1.0  # longest wait for the uplink and paho threads when the daemon stops
NO_CONNECTION = -1  # never a session epoch: the uplink thread publishes nothing before a CONNACK
COMMANDS_PER_STEP = 1  # commands handled per event-loop iteration: a burst must not hold the control tick
MAX_QUEUED_COMMANDS = 1000  # beyond this a burst is dropped (counted): commands_dropped

EventSink = Callable[[str, str, dict[str, Any]], None]
StateSource = Callable[[], dict[str, Any]]


def now_ms() -> int:
    return int(time.time() * 1000)


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
    commands_dropped: int = 0  # arrived while MAX_QUEUED_COMMANDS were waiting: not handled, not answered
    commands_rate_limited: int = 0  # over their command's rate: answered at once, not done
    last_error: str | None = None
    next_reconnect_s: float | None = None
    longest_step_ms: float = 0.0  # longest delivery step on the uplink thread (store reads, publishes)


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


class Uplink:
    def __init__(
        self,
        cfg: Mqtt,
        site_id: str,
        cabinet_id: str,
        store: Store,
        *,
        ops: Operations | None = None,
        state_source: StateSource | None = None,
        on_event: EventSink | None = None,
        interval_s: float = 1.0,
        version: str = "",
        rnd: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry | None = None,
        rate: commands.RateLimit | None = None,
    ) -> None:
        """``telemetry``: the section with the wire format and deadbands; None means format v1 (tests).
        ``rate``: the cloud commands' rate limit (default: ``commands.RATE_BURST`` / ``RATE_PER_S``)."""
        self.cfg = cfg
        self.site_id = site_id
        self.cabinet_id = cabinet_id
        self.topics = Topics(cfg.topic_prefix, site_id, cabinet_id)
        self.client_id = cfg.client_id or f"edge-{site_id}-{cabinet_id}"
        self.store = store
        self.ops = ops  # cloud commands go through the operations layer (edge/ops.py), as local ones do
        self.state_source = state_source
        self.on_event = on_event
        self.version = version
        self.interval_s = interval_s
        self.rnd = rnd or random.Random()
        self.clock = clock
        self.stats = UplinkStats()
        self.format = telemetry.format if telemetry is not None else "v1"
        deadbands = (
            Deadbands(telemetry.deadband_by_unit, telemetry.deadband, telemetry.deadband_default)
            if telemetry is not None
            else Deadbands(DEADBAND_BY_UNIT)
        )
        self.encoder = encoder_for(
            self.format,
            EncoderContext(
                self.topics,
                site_id,
                cabinet_id,
                signals=lambda: self._view.signals() if self._view is not None else [],
                signal_count=lambda: self.store.alias_count,
                deadband=deadbands.of,
                interval_s=interval_s,
                now_ms=now_ms,
                data_dir=os.path.dirname(store.path) or ".",
                sparkplug=telemetry.sparkplug if telemetry is not None else None,
            ),
        )
        self._encoder_topics = frozenset(self.encoder.subscriptions())
        will = self._encoder_will if self.encoder.session_will else self._status_message("offline")
        self.session = Session(cfg, self.client_id, self._session_events(), will=will, rnd=self.rnd)
        self.guard = commands.Guard(max_skew_s=cfg.command_max_skew_s)  # recent ids survive reconnects
        self.rate = rate or commands.RateLimit()
        self.channel = CommandChannel(
            self.topics, self._handle_command, self.session, site_id=site_id, cabinet_id=cabinet_id, now_ms=now_ms
        )
        self._delivery: Delivery | None = None  # made on the uplink thread, with the thread's StoreView
        self._view: StoreView | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._io_q: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._io_thread: threading.Thread | None = None
        self._kick_pending = False
        self._commands: deque[tuple[str, bytes, Received]] = deque()
        self._last_state: str | None = None
        self.on_connected: list[Callable[[], None]] = []  # after the birth: the recorder's keyframe request
        self.remote: RemoteHandler | None = None  # update, diag, config-apply, ... (edge/remote, set by build)
        self.traffic = Traffic()
        self._parts: dict[int, tuple[int, set[int]]] = {}  # message id -> (the batch's id, ids not yet acked)
        self._no_message_id = 0  # negative ids of batches that needed no message (never a paho id)
        self._epoch = NO_CONNECTION  # uplink thread: the session's epoch of the connection it serves
        self._committed: int | None = None  # newest seq the store's writer committed (Store.on_append)

    # -- hand-over between threads -------------------------------------------------------------------
    def _session_events(self) -> SessionEvents:
        """paho's thread: queue everything for the uplink thread (delivery) or the loop (commands).
        Methods are looked up when called, so a test or bench may wrap one on the instance."""
        return SessionEvents(
            connected=lambda present: self._to_io(self._connack, self.session.epoch, present),
            refused=lambda why: self._to_io(self._connect_refused, why),
            connect_failed=lambda: self._to_io(self._connect_failed),
            disconnected=lambda why: self._to_io(self._disconnected, why),
            published=lambda mid, failed, why: self._to_io(self._acked, mid, failed, why),
            message=self._route_message,
        )

    def _route_message(self, topic: str, payload: bytes, received: Received) -> None:
        """paho's thread: the format's own commands (Sparkplug NCMD) to the uplink thread, which owns the
        encoder; cloud commands within their rate to the loop, the others answered here."""
        if topic in self._encoder_topics:
            self._to_io(self._encoder_command, topic, payload)
            return
        name = self.channel.command_name(topic)
        if self.rate.admit(name):
            self._to_loop(self._queue_command, topic, payload, received)
        else:
            self._answer_rate_limited(name, payload, received)

    def _answer_rate_limited(self, name: str, payload: bytes, received: Received) -> None:
        """paho's thread: a command over its rate, answered without the loop, the store or a log line (the
        loop records the count: ``_report_rate_limited``). A retained one without an id is not answered,
        as in the channel: nobody waits for it."""
        self.stats.commands_rate_limited += 1  # only this thread writes it
        cmd_id = commands.answer_id(payload)
        if received.retained and cmd_id is None:
            return
        msg = {
            "schema": SCHEMA_CMD_RESULT,
            "cabinet_id": self.cabinet_id,
            "site_id": self.site_id,
            "t_ms": now_ms(),
            "id": cmd_id,
            "command": name[:64],
            "result": REJECTED,
            "reason": self.rate.reason(name),
            "seq": None,
        }
        self.session.publish(self.topics.cmd_result, json.dumps(msg, separators=(",", ":")))

    def _encoder_will(self) -> tuple[str, bytes]:
        """paho's thread, just before a connect (the uplink thread is waiting for the CONNACK then)."""
        m = self.encoder.will()
        return m.topic, m.payload

    def _encoder_command(self, topic: str, payload: bytes) -> None:
        if self.stats.connected:
            self._publish_all(self.encoder.command(topic, payload))

    def _publish(self, m: Message) -> int | None:
        """Uplink thread: one message on the connection the thread was told of last (refused after a
        reconnect it has not handled yet: it was prepared for the old connection, see session.py)."""
        return self.session.publish(m.topic, m.payload, retain=m.retain, qos=m.qos, epoch=self._epoch)

    def _publish_all(self, messages: Sequence[Message]) -> None:
        """Messages that carry no records (births): nothing waits for their acknowledgement."""
        for m in messages:
            self._sent(self._publish(m), m.payload)

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop closed while we were shutting down
                pass

    def to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Call ``fn`` on the event loop from any thread (dropped before the uplink runs or after it ended)."""
        self._to_loop(fn, *args)

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

    # -- the uplink thread ---------------------------------------------------------------------------
    def _io_main(self) -> None:
        self._view = view = StoreView(self.store.path)
        self._delivery = delivery = Delivery(
            view,
            window=self.cfg.max_inflight,
            batch_samples=self.cfg.batch_samples,
            reject_pause_s=self.cfg.reconnect_min_s,
            backlog_records_per_s=BACKLOG_RECORDS_PER_S,
        )
        try:
            while True:
                delete_wait, pace_wait = self._due_work(delivery)
                try:  # group commit: delete as soon as PUBACKs stop coming in a burst
                    fn = self._io_q.get(timeout=_earliest(delete_wait, pace_wait))
                except queue.Empty:
                    if delete_wait is not None and (pace_wait is None or delete_wait <= pace_wait):
                        self._flush_deletes()
                    continue  # a paced backlog message is due: pumped at the top
                if fn is None:
                    break
                self._io_step(fn)
        finally:
            self._flush_deletes()
            view.close()

    def _due_work(self, delivery: Delivery) -> tuple[float | None, float | None]:
        """Deletes and paced backlog that are due now; then how long until each is due next (None: never
        by time alone)."""
        now = self.clock()
        delete_wait = delivery.delete_wait_s(now)
        if delete_wait is not None and delete_wait <= 0:  # due: a busy queue must not starve the deletes
            self._flush_deletes()
            delete_wait = None
        pace_wait = delivery.pump_wait_s(now)
        if pace_wait is not None and pace_wait <= 0:
            self._io_step(self.pump)
            pace_wait = delivery.pump_wait_s(self.clock())
        return delete_wait, pace_wait

    def _io_step(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # logged and counted; the next kick retries
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("uplink step failed; will retry")

    def _flush_deletes(self) -> None:
        if self._delivery is not None and self._view is not None:
            seqs = self._delivery.take_deletes()
            if seqs:
                self._view.delete(seqs)

    def _connack(self, epoch: int, session_present: bool) -> None:
        self._epoch = epoch  # what this thread publishes from here belongs to that connection
        self._connected(session_present)

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
        self._flush_deletes()  # keeps the replay short; delivery would skip them anyway
        assert self._delivery is not None
        self._delivery.connected(session_present)
        self.channel.subscribe()
        for topic in self._encoder_topics:
            self.session.subscribe(topic)
        self._publish(Message(self.topics.status, self._status_message("online")[1], retain=True))
        self._parts.clear()
        self._publish_all(self.encoder.birth())
        for cb in self.on_connected:
            cb()
        self._to_loop(self._publish_state_if_changed, True)  # state lives on the loop; retained anew
        self.pump()

    def _connect_refused(self, why: str) -> None:
        self.stats.connect_failures += 1
        self.stats.last_error = f"broker refused connection: {why}"
        log.error("MQTT broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, why)

    def _connect_failed(self) -> None:
        self.stats.connect_failures += 1
        self.stats.last_error = f"cannot connect to {self.cfg.host}:{self.cfg.port}"
        self.stats.next_reconnect_s = self.session.next_reconnect_s
        if self.stats.connect_failures in (1, 10) or self.stats.connect_failures % 100 == 0:
            log.warning(
                "MQTT broker %s:%d not reachable (%d attempts); telemetry buffered, next try in %.1f s",
                self.cfg.host,
                self.cfg.port,
                self.stats.connect_failures,
                self.stats.next_reconnect_s or 0,
            )

    def _disconnected(self, why: str) -> None:
        self._epoch = NO_CONNECTION
        self.stats.next_reconnect_s = self.session.next_reconnect_s
        if self._delivery is not None:
            self._delivery.disconnected()
        if self.session.closing:
            log.info("MQTT disconnected (%s)", why)
        elif self.stats.connected:
            self.stats.disconnects += 1
            log.warning("MQTT connection lost (%s); telemetry buffered", why)
        else:  # closed before CONNACK: TLS refused, bad credentials, broker going down
            self.stats.connect_failures += 1
            self.stats.last_error = self.stats.last_error or f"connection closed before CONNACK: {why}"
        self.stats.connected = False

    def _acked(self, mid: int, failed: bool, why: str) -> None:
        assert self._delivery is not None
        part = self._parts.get(mid)
        if part is not None:  # one of several messages of a batch: the batch is done when all are
            batch_mid, waiting = part
            del self._parts[mid]
            waiting.discard(mid)
            if waiting and not failed:
                return
            for other in waiting:
                self._parts.pop(other, None)
            mid = batch_mid
        records = self._delivery.acked(mid, failed, self.clock())
        if records is None:  # from before the last resync
            return
        if failed:
            # v5 PUBACK with an error code (quota, not authorised): records kept, delivery paused
            self.stats.broker_rejections += 1
            self.stats.last_error = f"broker rejected a message: {why}"
            log.error("broker rejected telemetry message (%s); retrying in %.1f s", why, self.cfg.reconnect_min_s)
            return
        self.stats.messages_acked += 1
        self.stats.records_delivered += records
        self.pump()

    def pump(self) -> None:
        """Fill the in-flight window (uplink thread): live records first, then the backlog in seq order."""
        delivery = self._delivery
        if delivery is None:
            return
        t0 = time.perf_counter()
        if (committed := self._committed) is not None:
            delivery.appended(committed)
        try:
            delivery.pump(self.clock(), self._publish_batch)
        finally:
            step_ms = (time.perf_counter() - t0) * 1000.0
            if step_ms > self.stats.longest_step_ms:
                self.stats.longest_step_ms = round(step_ms, 3)

    def _publish_batch(self, batch: Batch) -> int | None:
        """Every message of the batch; the id delivery waits for (the last message's; the others are
        tracked in ``_parts`` so the batch counts as acknowledged only when all of them are)."""
        messages = self.encoder.encode(batch.records, batch.replayed)
        if not messages:  # reported by exception and nothing changed: delivered as it stands
            self._no_message_id -= 1
            self._to_io(self._acked, self._no_message_id, False, "nothing to send")
            return self._no_message_id
        mids = []
        for m in messages:
            mid = self._publish(m)
            if mid is None:
                return None  # not connected: the whole batch is sent again after the next connect
            self._sent(mid, m.payload)
            mids.append(mid)
        if len(mids) > 1:
            waiting = set(mids)  # one set shared by all: the batch is done when it is empty
            for mid in mids:
                self._parts[mid] = (mids[-1], waiting)
        return mids[-1]

    def _sent(self, mid: int | None, payload: bytes) -> None:
        if mid is not None:
            self.stats.messages_sent += 1
            self.stats.bytes_sent += len(payload)
            self.traffic.add(len(payload), now_ms())

    def encode(self, batch: Sequence[RawRecord], replayed: bool) -> bytes:
        """The last message of ``batch`` in the configured format (benches and tests)."""
        return self.encoder.encode(batch, replayed)[-1].payload

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
                self.session.start()
            except (OSError, ValueError, ssl.SSLError) as exc:
                self.stats.last_error = f"uplink not started: {exc}"
                log.error("MQTT uplink not started (%s); telemetry stays in the store", exc)
                self._emit("uplink_error", "mqtt", {"detail": str(exc)})
                await asyncio.Event().wait()
            while True:
                await asyncio.sleep(self._tick_s())
                self.kick()  # a safety net: every committed record kicks already
                try:
                    self._report_rate_limited()
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

    def _on_append(self, seq: int) -> None:
        self._committed = seq  # the writer's thread; read by the uplink thread's next pump
        self.kick()

    async def _shutdown(self) -> None:
        self._io_q.put(None)
        io = self._io_thread
        if io is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(io.join), timeout=SHUTDOWN_WAIT_S)
            except TimeoutError:
                log.warning("MQTT uplink thread did not stop within %.1f s", SHUTDOWN_WAIT_S)
        if not self.session.started:
            return
        goodbye = self._status_message("offline") if self.stats.connected else None
        death = self.encoder.death() if self.stats.connected else None  # the uplink thread has stopped
        last = (death.topic, death.payload) if death is not None else None
        try:
            await asyncio.wait_for(asyncio.to_thread(self.session.stop, goodbye, last), timeout=SHUTDOWN_WAIT_S)
        except (TimeoutError, OSError, RuntimeError) as exc:
            log.warning("MQTT uplink did not stop cleanly: %s", exc)
        self.stats.connected = False

    # -- status, state, commands ----------------------------------------------------------------------
    def _status_message(self, status: str) -> tuple[str, bytes]:
        """The retained birth ("online") or will ("offline") message: (topic, payload)."""
        payload = {
            "schema": SCHEMA_STATUS,
            "cabinet_id": self.cabinet_id,
            "site_id": self.site_id,
            "status": status,
            "t_ms": now_ms(),
            "client_id": self.client_id,
            "version": self.version,
        }
        return self.topics.status, json.dumps(payload, separators=(",", ":")).encode()

    def _publish_state_if_changed(self, force: bool = False) -> None:
        if not self.session.started or not self.stats.connected or self.state_source is None:
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
        self.session.publish(self.topics.state, json.dumps(msg, separators=(",", ":")), retain=True)

    def _emit(self, kind: str, name: str, data: dict[str, Any]) -> int | None:
        if self.on_event is None:
            return None
        before = self.store.last_seq()
        self.on_event(kind, name, data)
        after = self.store.last_seq()
        return after if after > before else None

    def _report_rate_limited(self) -> None:
        """Loop: one ``command`` event (op ``rate_limited``) with what was limited, by command, when due."""
        due = self.rate.report_due()
        if not due:
            return
        n = sum(due.values())
        by = ", ".join(f"{k} {v}" for k, v in sorted(due.items()))
        result = (
            f"{n} cloud commands rate limited ({by}): answered, not done "
            f"(at most {self.rate.burst} at once and {self.rate.per_s:g} per s per command)"
        )
        log.warning("%s; %d in all", result, self.rate.limited)
        if self.ops is not None:
            self.ops.audit("rate_limited", Source.cloud("-"), due, False, result, REFUSED)

    def _handle_command(self, name: str, payload: bytes, received: Received) -> Answer:
        """The channel's handler (loop): one command through the operations layer, which evaluates at once and
        records the ``command`` event; the answer carries that event's seq (None when no event was recorded:
        an id answered again, a retained command between two reports)."""
        if self.ops is None:
            return Answer(commands.Result(None, name[:64], commands.REJECTED, "commands are not served here"))
        before = self.store.last_seq()
        result = commands.handle(
            name, payload, self.ops, now_ms(), guard=self.guard, received=received, remote=self.remote
        )
        after = self.store.last_seq()
        return Answer(result, after if after > before else None)

    def _queue_command(self, topic: str, payload: bytes, received: Received) -> None:
        """Loop: queue one command; a burst is handled COMMANDS_PER_STEP per loop iteration, so the control
        tick runs between them (bench/abuse.py: a burst of 2,000 handled at once held the tick)."""
        if len(self._commands) >= MAX_QUEUED_COMMANDS:
            self.stats.commands_dropped += 1
            if self.stats.commands_dropped in (1, 10, 100) or self.stats.commands_dropped % 1000 == 0:
                log.warning("cloud commands arrive faster than handled: %d dropped", self.stats.commands_dropped)
            return
        self._commands.append((topic, payload, received))
        if len(self._commands) == 1:
            asyncio.get_running_loop().call_soon(self._command_step)

    def _command_step(self) -> None:
        try:
            for _ in range(min(COMMANDS_PER_STEP, len(self._commands))):
                self._command(*self._commands.popleft())
        finally:
            if self._commands:
                asyncio.get_running_loop().call_soon(self._command_step)

    def _command(self, topic: str, payload: bytes, received: Received) -> None:
        """One command from the broker (loop): run it, answer on cmd-result, publish the state when it may
        have changed (a rejected command changed nothing; building the state reads the store)."""
        answer = self.channel.on_message(topic, payload, received)
        self.stats.commands += 1
        if not answer.accepted:
            self.stats.commands_rejected += 1
            return
        self._publish_state_if_changed(force=answer.result.command == "request-state")

    def status(self) -> dict[str, Any]:
        delivery = self._delivery
        return {
            **vars(self.stats),
            "next_reconnect_s": self.session.retry_in_s(),  # counts down to paho's next attempt
            "commands_duplicate": self.guard.duplicates,
            "commands_retained_ignored": self.guard.retained_ignored,
            "inflight": delivery.inflight if delivery is not None else 0,
            "client_id": self.client_id,
            "broker": f"{self.cfg.host}:{self.cfg.port}",
            "format": self.format,
            **self.traffic.figures(now_ms()),
        }
