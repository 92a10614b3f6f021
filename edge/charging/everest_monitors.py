"""The cabinet serves EVerest's ``isolation_monitor`` and ``over_voltage_monitor`` APIs over MQTT, for a
dispenser whose EVerest runs the cable check and the over-voltage monitoring itself (docs/IMD.md,
docs/CHARGING.md "EVerest monitors"). Payloads and error rules: everest_monitors_codec.py (pure).

One paho client of its own on the ``[everest]`` broker (client id ``<client_id>-monitors``), the same
threads as the power_supply_DC adapter: paho's thread decodes each e2m message and hands a valid one to the
loop with ``call_soon_threadsafe``; the loop (:meth:`EverestMonitors.run`) applies it and publishes.

isolation_monitor (one module id per served ``[[isolation_monitor]]``, which watches one connector):
``start`` switches the IMD's measuring on (``stop`` off again: the core may still keep it on for a
session) and every new reading is published as ``isolation_measurement`` while started;
``start_self_test`` starts the IMD's self-test and ``self_test_result`` follows once it is done; a device
fault raises ``DeviceFault``, an IMD the cabinet does not reach ``CommunicationFault`` (cleared when gone).
The cabinet's own cable-check verdict is off for that connector (edge/limits/isolation.py, ``"everest"``
in the IMD's snapshot); its IMD-lost rule still stops the connector.

over_voltage_monitor (one module id per connector with ``everest_ovm_module_id``): ``set_limits`` is
cached; from ``start`` to ``stop`` (or reset) the limits are the connector's negotiated maximum in the safety
core's snapshot (``ev_max_v``, ``ev_emergency_v``: edge/limits/overvoltage.py acts on them, output off after
``error_time_ms``); ``CommunicationFault`` while none of its power modules answers (nothing measures the
output); an over-voltage fault of the connector while monitoring raises ``MREC5OverVoltage``
(severity Medium: the cabinet's software error shutdown), which stays raised until
``reset_over_voltage_error``; that reset also asks the core to clear the over-voltage latches (refused by the
core while the output is still above the limit; not when another connector holds the same fault, as the
core clears by name) and stops monitoring. ``voltage_measurement_V`` every
``OVM_MEASUREMENT_PERIOD_S``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from edge.charging import everest_monitors_codec as codec
from edge.charging.demand import ConnectorReport
from edge.charging.everest import EverestSettings, _no_delay, everest_client
from edge.charging.everest_codec import Refusal

log = logging.getLogger("edge.charging.everest_monitors")

CHECK_PERIOD_S = 0.05  # new IMD readings, self-test results and faults are looked for this often
OVM_MEASUREMENT_PERIOD_S = 1.0  # the API asks for ~1 s
EventSink = Callable[[str, str, dict[str, Any]], None]


class ImdPort(Protocol):
    """What the adapter needs of the cabinet's insulation monitors (edge/isolation_link.py)."""

    def snapshot(self, connector: str, now: float) -> dict[str, Any] | None: ...

    def everest_measure(self, connector: str, on: bool) -> None: ...

    def everest_self_test(self, connector: str) -> None: ...


class LimitsPort(Protocol):
    """Where EVerest's over-voltage limits go (edge/charging/demands.py)."""

    def set_voltage_limits(self, connector: str, error_v: float | None, emergency_v: float | None) -> None: ...


@dataclass
class _Imd:
    connector: str
    started: bool = False
    last_t: float | None = None  # time of the last reading published
    test_asked: bool = False
    test_seen_running: bool = False
    raised: dict[tuple[str, str], codec.MonitorError] = field(default_factory=dict)


@dataclass
class _Ovm:
    connector: str
    limits: codec.Limits | None = None
    monitoring: bool = False
    mrec5: codec.MonitorError | None = None  # raised, until EVerest's reset
    raised: dict[tuple[str, str], codec.MonitorError] = field(default_factory=dict)  # the others


class EverestMonitors:
    def __init__(
        self,
        settings: EverestSettings,
        imd_bindings: dict[str, str],
        ovm_bindings: dict[str, str],
        imd: ImdPort | None,
        limits: LimitsPort,
        reports: Callable[[], dict[str, ConnectorReport]],
        request_clear: Callable[[str], Any],
        clock: Callable[[], float],
        on_event: EventSink,
    ) -> None:
        """``imd_bindings`` / ``ovm_bindings``: EVerest module id -> connector name."""
        self.settings = settings
        self.base = settings.base.rstrip("/")
        self.imd_bindings = dict(imd_bindings)
        self.ovm_bindings = dict(ovm_bindings)
        self.imd = imd
        self.limits = limits
        self.reports = reports
        self.request_clear = request_clear
        self.clock = clock
        self.on_event = on_event
        self._imds = {mid: _Imd(c) for mid, c in self.imd_bindings.items()}
        self._ovms = {mid: _Ovm(c) for mid, c in self.ovm_bindings.items()}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._connected = False
        self._clear_leftovers = True
        self._t_start: float | None = None
        self._refused: dict[str, int] = {}  # paho thread
        self._applied: dict[str, int] = {}  # loop thread
        self._published: dict[str, int] = {}

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._t_start = self.clock()
        self._client = everest_client(
            self.settings,
            f"{self.settings.client_id}-monitors",
            "edge.charging.everest_monitors.paho",
            self._cb_connect,
            self._cb_disconnect,
            self._cb_message,
        )

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    async def run(self, stopping: asyncio.Event) -> None:
        cc_period = self.settings.communication_check_period_ms / 1000.0
        next_cc = next_vm = self.clock()
        while not stopping.is_set():
            now = self.clock()
            if self._connected:
                self._check(now)
                if now >= next_cc:
                    for api, mid in self._modules():
                        self._publish(api, mid, "communication_check", codec.COMMUNICATION_CHECK_PAYLOAD)
                    next_cc = now + cc_period
                if now >= next_vm:
                    self._publish_ovm_voltages()
                    next_vm = now + OVM_MEASUREMENT_PERIOD_S
            await asyncio.sleep(CHECK_PERIOD_S)

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self._connected,
            "refused": dict(self._refused),
            "applied": dict(self._applied),
            "published": dict(self._published),
            "imd_started": sorted(i.connector for i in self._imds.values() if i.started),
            "ovm_monitoring": sorted(o.connector for o in self._ovms.values() if o.monitoring),
            "mrec5_raised": sorted(o.connector for o in self._ovms.values() if o.mrec5 is not None),
        }

    def _modules(self) -> list[tuple[str, str]]:
        return [(codec.IMD_API, m) for m in self._imds] + [(codec.OVM_API, m) for m in self._ovms]

    # -- paho thread ----------------------------------------------------------------------------------------
    def _cb_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        _no_delay(client)
        for api in codec.APIS:
            client.subscribe(codec.e2m_filter(self.base, api), qos=0)
        self._call_soon(self._on_link, True)

    def _cb_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        self._call_soon(self._on_link, False)

    def _cb_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parsed = codec.parse_e2m_topic(self.base, msg.topic)
        if parsed is None:
            self._refuse(Refusal("bad_topic", msg.topic[:80]), msg.topic)
            return
        api, module_id, var = parsed
        bound = self.imd_bindings if api == codec.IMD_API else self.ovm_bindings
        if module_id not in bound:
            self._refuse(Refusal("unknown_module", module_id[:40]), msg.topic)
        elif msg.retain:  # an old start or set_limits left on the broker is not EVerest's word now
            self._refuse(Refusal("retained", var[:40]), msg.topic)
        else:
            req = codec.decode_e2m(api, var, bytes(msg.payload))
            if isinstance(req, Refusal):
                self._refuse(req, msg.topic)
            else:
                self._call_soon(self._apply, api, module_id, var, req)

    def _refuse(self, refusal: Refusal, topic: str) -> None:
        self._refused[refusal.reason] = self._refused.get(refusal.reason, 0) + 1
        log.warning("EVerest monitor request refused (%s) on %s: %s", refusal.reason, topic, refusal.detail)

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop closed between the check and the call: shutting down
                pass

    # -- loop thread: incoming ------------------------------------------------------------------------------
    def _on_link(self, up: bool) -> None:
        if up == self._connected:
            return
        self._connected = up
        where = f"{self.settings.host}:{self.settings.port}"
        self.on_event("everest_monitors_connected" if up else "everest_monitors_disconnected", where, {})
        if up:
            self._resync()

    def _apply(self, api: str, module_id: str, var: str, req: codec.Request) -> None:
        self._applied[f"{api}/{var}"] = self._applied.get(f"{api}/{var}", 0) + 1
        if isinstance(req, codec.Heartbeat):
            return
        if api == codec.IMD_API:
            self._apply_imd(module_id, self._imds[module_id], req)
        else:
            self._apply_ovm(module_id, self._ovms[module_id], req)

    def _apply_imd(self, module_id: str, st: _Imd, req: codec.Request) -> None:
        if isinstance(req, codec.Start | codec.Stop):
            st.started = isinstance(req, codec.Start)
            st.last_t = None  # the first reading after a start goes out at once
            if self.imd is not None:
                self.imd.everest_measure(st.connector, st.started)
        elif isinstance(req, codec.SelfTest):
            st.test_asked, st.test_seen_running = True, False
            if self.imd is not None:
                self.imd.everest_self_test(st.connector)
            self.on_event("everest_imd_self_test", module_id, {"connector": st.connector, "voltage_v": req.voltage_v})

    def _apply_ovm(self, module_id: str, st: _Ovm, req: codec.Request) -> None:
        if isinstance(req, codec.Limits):
            st.limits = req
        elif isinstance(req, codec.Start):
            st.monitoring = True
        elif isinstance(req, codec.Stop):
            st.monitoring = False
        elif isinstance(req, codec.Reset):
            st.monitoring = False
            faults = {name: r.faults for name, r in self.reports().items()}
            for fault in codec.faults_to_clear_on_reset(st.connector, faults):
                self.request_clear(fault)  # the core refuses while the output is still above the limit
            if st.mrec5 is not None and self._publish(
                codec.OVM_API, module_id, "clear_error", codec.error_payload(st.mrec5)
            ):
                self.on_event("everest_mrec5_reset", module_id, {"connector": st.connector})
                st.mrec5 = None
        self._push_limits(st)

    def _push_limits(self, st: _Ovm) -> None:
        if st.monitoring and st.limits is not None:
            self.limits.set_voltage_limits(st.connector, st.limits.error_v, st.limits.emergency_v)
        else:
            self.limits.set_voltage_limits(st.connector, None, None)

    # -- loop thread: outgoing ------------------------------------------------------------------------------
    def _publish(self, api: str, module_id: str, var: str, payload: bytes) -> bool:
        client = self._client
        if client is None or not self._connected:
            return False
        info = client.publish(codec.m2e_topic(self.base, api, module_id, var), payload, qos=0)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        key = f"{api}/{var}"
        self._published[key] = self._published.get(key, 0) + 1
        return True

    def _resync(self) -> None:
        """After a (re)connect: clear what a previous run may have left raised, raise again what is active."""
        leftovers, self._clear_leftovers = self._clear_leftovers, False
        for mid, imd in self._imds.items():
            if leftovers:
                for err in codec.IMD_ERRORS:
                    self._publish(codec.IMD_API, mid, "clear_error", codec.error_payload(err))
            for err in imd.raised.values():
                self._publish(codec.IMD_API, mid, "raise_error", codec.error_payload(err))
        for mid, ovm in self._ovms.items():
            if leftovers:
                err = codec.OVM_COMMUNICATION_FAULT
                self._publish(codec.OVM_API, mid, "clear_error", codec.error_payload(err))
            for err in ovm.raised.values():
                self._publish(codec.OVM_API, mid, "raise_error", codec.error_payload(err))
            if ovm.mrec5 is not None:
                self._publish(codec.OVM_API, mid, "raise_error", codec.error_payload(ovm.mrec5))

    def _check(self, now: float) -> None:
        for mid, st in self._imds.items():
            self._check_imd(mid, st, now)
        if self._ovms:
            reports = self.reports()
            for mid, ovm in self._ovms.items():
                r = reports.get(ovm.connector)
                if r is not None:
                    self._check_ovm(mid, ovm, r)

    def _sync_errors(
        self,
        api: str,
        module_id: str,
        raised: dict[tuple[str, str], codec.MonitorError],
        wanted: dict[tuple[str, str], codec.MonitorError],
    ) -> None:
        """Raise and clear so that ``raised`` (what EVerest was told) becomes ``wanted``."""
        to_raise, to_clear = codec.error_changes(raised, wanted)
        for err in to_raise:
            if self._publish(api, module_id, "raise_error", codec.error_payload(err)):
                raised[err.key] = err
        for err in to_clear:
            if self._publish(api, module_id, "clear_error", codec.error_payload(err)):
                del raised[err.key]

    def _check_imd(self, module_id: str, st: _Imd, now: float) -> None:
        snap = self.imd.snapshot(st.connector, now) if self.imd is not None else None
        running_s = now - (self._t_start if self._t_start is not None else now)
        self._sync_errors(codec.IMD_API, module_id, st.raised, codec.imd_wanted_errors(snap, running_s))
        if snap is None:
            return
        if st.test_asked:
            st.test_seen_running = st.test_seen_running or snap.get("self_test") == "running"
            passed = codec.self_test_outcome(snap.get("self_test"), st.test_seen_running)
            if passed is not None and self._publish(
                codec.IMD_API, module_id, "self_test_result", codec.self_test_result_payload(passed)
            ):
                st.test_asked = False
        t = snap.get("t")
        if st.started and snap.get("status") == "ok" and t is not None and t != st.last_t:
            payload = codec.isolation_measurement_payload(snap.get("ohm"), snap.get("voltage_v"))
            if payload is not None and self._publish(codec.IMD_API, module_id, "isolation_measurement", payload):
                st.last_t = t

    def _check_ovm(self, module_id: str, st: _Ovm, r: ConnectorReport) -> None:
        self._sync_errors(codec.OVM_API, module_id, st.raised, codec.ovm_wanted_errors(r.modules_reachable))
        if st.mrec5 is not None:
            return  # raised until EVerest resets it
        mrec5 = codec.mrec5_error(r.faults, st.monitoring)
        if mrec5 is not None and self._publish(codec.OVM_API, module_id, "raise_error", codec.error_payload(mrec5)):
            st.mrec5 = mrec5
            self.on_event("everest_mrec5_raised", module_id, {"connector": st.connector, "fault": mrec5.sub_type})

    def _publish_ovm_voltages(self) -> None:
        if not self._ovms:
            return
        reports = self.reports()
        for mid, st in self._ovms.items():
            r = reports.get(st.connector)
            payload = codec.voltage_measurement_payload(r.voltage_v if r is not None else None)
            if payload is not None:
                self._publish(codec.OVM_API, mid, "voltage_measurement_V", payload)
