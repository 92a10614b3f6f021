"""A test-side charging controller that speaks EVerest's ``power_supply_DC`` API (version 1) over MQTT.

Written from the published API (everest-core ``docs/source/reference/EVerest_API/power_supply_DC_API.yaml``
and the API module ``modules/API/power_supply_DC_API``), not from cabinet-edge's adapter: it imports
nothing of ``edge``. It plays the EVerest side of one or more API module ids on one broker:

- publishes e2m ``mode`` {"mode", "charging_phase"}, ``export_voltage_current`` {"voltage_V", "current_A"},
  ``import_voltage_current`` and ``heartbeat`` (an increasing integer, as the API module does, on demand or
  from a background thread at a period), and any raw payload for abuse tests;
- subscribes to ``<base>/power_supply_DC/<module_id>/m2e/#`` and records every message with its arrival
  time (monotonic s), checking each against the API's m2e payload shapes (:attr:`violations`);
- keeps the active error set from ``raise_error`` / ``clear_error`` (keyed by type and sub_type, as the API
  module clears them), the order of effective raises and clears (:attr:`error_log`) and the redundant ones
  EVerest would ignore (:attr:`redundant`: a raise of an active error, a clear of an inactive one).

Reused by the end-to-end tests of whole sessions (the integrator's) and by tests/test_everest_adapter.py.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

API = "power_supply_DC"
MODES = ("Off", "Export", "Import", "Fault")
PHASES = ("Other", "CableCheck", "PreCharge", "Charging")
ERROR_TYPES = (
    "CommunicationFault",
    "HardwareFault",
    "OverTemperature",
    "UnderTemperature",
    "UnderVoltageAC",
    "OverVoltageAC",
    "UnderVoltageDC",
    "OverVoltageDC",
    "OverCurrentAC",
    "OverCurrentDC",
    "VendorError",
    "VendorWarning",
)
CAPABILITIES_REQUIRED = (
    "bidirectional",
    "current_regulation_tolerance_A",
    "peak_current_ripple_A",
    "max_export_voltage_V",
    "min_export_voltage_V",
    "max_export_current_A",
    "min_export_current_A",
    "max_export_power_W",
)


@dataclass(frozen=True)
class M2e:
    module_id: str
    var: str
    body: Any  # parsed JSON, None when it was not JSON
    t: float  # monotonic arrival time, s
    raw: bytes


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def m2e_violation(var: str, body: Any) -> str | None:
    """Why an m2e payload does not follow the API, or None."""
    if var == "capabilities":
        if not isinstance(body, dict):
            return "capabilities: not an object"
        missing = [k for k in CAPABILITIES_REQUIRED if k not in body]
        if missing:
            return f"capabilities: missing {missing}"
        if not isinstance(body["bidirectional"], bool):
            return "capabilities: bidirectional not a bool"
        bad = [k for k in CAPABILITIES_REQUIRED[1:] if not _is_number(body[k])]
        return f"capabilities: not numbers {bad}" if bad else None
    if var == "voltage_current":
        ok = isinstance(body, dict) and _is_number(body.get("voltage_V")) and _is_number(body.get("current_A"))
        return None if ok else f"voltage_current: {body!r}"
    if var == "mode":
        return None if body in MODES else f"mode: {body!r}"
    if var in ("raise_error", "clear_error"):
        if not isinstance(body, dict) or body.get("type") not in ERROR_TYPES:
            return f"{var}: {body!r}"
        for k in ("sub_type", "message"):
            if k in body and not isinstance(body[k], str):
                return f"{var}: {k} not a string"
        return None
    if var == "communication_check":
        return None if isinstance(body, bool) else f"communication_check: {body!r}"
    return f"unknown m2e variable {var}"


class EverestController:
    """The EVerest side of ``module_ids`` on a broker at ``host:port``."""

    def __init__(
        self,
        port: int,
        module_ids: tuple[str, ...] = ("cabinet_dc_1",),
        base: str = "everest_api/1",
        host: str = "127.0.0.1",
        client_id: str = "everest-test-controller",
    ) -> None:
        self.base = base
        self.module_ids = module_ids
        self.lock = threading.Lock()
        self.messages: list[M2e] = []
        self.violations: list[str] = []
        self.errors: dict[str, dict[tuple[str, str], dict[str, Any]]] = {m: {} for m in module_ids}
        # effective changes only: (module_id, "raise"|"clear", type, sub_type)
        self.error_log: list[tuple[str, str, str, str]] = []
        # a raise of an active error, a clear of an inactive one (EVerest ignores both): same tuple shape
        self.redundant: list[tuple[str, str, str, str]] = []
        self._hb_counter = 0
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self.connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_disconnect = lambda *_a: self.connected.clear()
        c.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        c.connect_async(host, port, keepalive=10)
        c.loop_start()
        self.client = c
        if not self.connected.wait(10):
            raise AssertionError(f"test controller could not connect to {host}:{port}")

    # -- receiving ----------------------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):  # as EVerest should: each e2m message out at once (no Nagle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for mid in self.module_ids:
            client.subscribe(f"{self.base}/{API}/{mid}/m2e/#", qos=0)
        self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        t = time.monotonic()
        parts = msg.topic.split("/")
        mid, var = parts[-3], parts[-1]
        raw = bytes(msg.payload)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        bad = m2e_violation(var, body)
        with self.lock:
            self.messages.append(M2e(mid, var, body, t, raw))
            if bad:
                self.violations.append(f"{msg.topic}: {bad}")
            if var in ("raise_error", "clear_error") and bad is None:
                key = (body["type"], body.get("sub_type", ""))
                raise_ = var == "raise_error"
                entry = (mid, var.split("_")[0], key[0], key[1])
                if raise_ == (key in self.errors[mid]):
                    self.redundant.append(entry)
                elif raise_:
                    self.errors[mid][key] = body
                    self.error_log.append(entry)
                else:
                    del self.errors[mid][key]
                    self.error_log.append(entry)

    def of(self, var: str, module_id: str | None = None, since: float = 0.0) -> list[M2e]:
        """Every message on ``var`` (of ``module_id``, all when None) that arrived at or after ``since``."""
        with self.lock:
            return [
                m
                for m in self.messages
                if m.var == var and (module_id is None or m.module_id == module_id) and m.t >= since
            ]

    def latest(self, var: str, module_id: str | None = None) -> Any:
        got = self.of(var, module_id)
        return got[-1].body if got else None

    def active_errors(self, module_id: str | None = None) -> set[tuple[str, str]]:
        with self.lock:
            return set(self.errors[module_id or self.module_ids[0]])

    def wait(self, cond: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
        """Poll ``cond`` until truthy (from a thread other than an event loop's); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = cond()
            if v:
                return v
            time.sleep(0.005)
        raise AssertionError(f"timed out after {timeout} s waiting for {what or cond}")

    # -- sending ------------------------------------------------------------------------------------------
    def topic(self, var: str, module_id: str | None = None) -> str:
        return f"{self.base}/{API}/{module_id or self.module_ids[0]}/e2m/{var}"

    def publish_raw(self, var: str, payload: bytes | str, module_id: str | None = None, topic: str = "") -> None:
        self.client.publish(topic or self.topic(var, module_id), payload, qos=0)

    def set_mode(self, mode: str, phase: str = "Other", module_id: str | None = None) -> None:
        self.publish_raw("mode", json.dumps({"mode": mode, "charging_phase": phase}), module_id)

    def export(self, voltage_v: float, current_a: float, module_id: str | None = None) -> None:
        self.publish_raw(
            "export_voltage_current", json.dumps({"voltage_V": voltage_v, "current_A": current_a}), module_id
        )

    def import_(self, voltage_v: float, current_a: float, module_id: str | None = None) -> None:
        self.publish_raw(
            "import_voltage_current", json.dumps({"voltage_V": voltage_v, "current_A": current_a}), module_id
        )

    def heartbeat(self, module_id: str | None = None) -> None:
        """One heartbeat (the API module's increasing integer) for ``module_id`` (every bound id when None)."""
        self._hb_counter += 1
        for mid in [module_id] if module_id else self.module_ids:
            self.publish_raw("heartbeat", str(self._hb_counter), mid)

    def start_heartbeat(self, period_s: float = 1.0) -> None:
        """Heartbeats from a background thread, as the API module's ``cfg_heartbeat_interval_ms`` does."""
        self.stop_heartbeat()
        self._hb_stop.clear()

        def beat() -> None:
            while not self._hb_stop.is_set():
                self.heartbeat()
                self._hb_stop.wait(period_s)

        self._hb_thread = threading.Thread(target=beat, name="everest-test-heartbeat", daemon=True)
        self._hb_thread.start()

    def stop_heartbeat(self) -> None:
        self._hb_stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(5)
            self._hb_thread = None

    def close(self) -> None:
        self.stop_heartbeat()
        self.client.disconnect()
        self.client.loop_stop()


# 30+ malformed e2m messages: (var, payload, why it is wrong). Against a connector whose published
# capabilities are 1000 V / 200 A, none of them may ever be applied. ``why`` names the refusal reason
# cabinet-edge counts (its stats key), so a test can check each was refused for the right reason.
_PAD = "x" * 1100
MALFORMED: tuple[tuple[str, bytes, str], ...] = (
    ("mode", b"not json", "not_json"),
    ("mode", b"", "not_json"),
    ("mode", b"\xff\xfe\x00", "not_json"),
    ("mode", b'"Export"', "wrong_type"),
    ("mode", b"[1, 2]", "wrong_type"),
    ("mode", b'{"mode": "Charge", "charging_phase": "Other"}', "unknown_mode"),
    ("mode", b'{"mode": "export", "charging_phase": "Other"}', "unknown_mode"),
    ("mode", b'{"mode": "Export", "charging_phase": "Boost"}', "unknown_phase"),
    ("mode", b'{"mode": "Export"}', "missing_field"),
    ("mode", b'{"mode": 1, "charging_phase": "Other"}', "wrong_type"),
    ("mode", b'{"mode": "Import", "charging_phase": "Charging"}', "import_refused"),
    ("export_voltage_current", b'{"voltage_V": NaN, "current_A": 10}', "not_finite"),
    ("export_voltage_current", b'{"voltage_V": 400, "current_A": Infinity}', "not_finite"),
    ("export_voltage_current", b'{"voltage_V": -Infinity, "current_A": 10}', "not_finite"),
    ("export_voltage_current", b'{"voltage_V": 1e999, "current_A": 10}', "not_finite"),
    ("export_voltage_current", b'{"voltage_V": "400", "current_A": 10}', "wrong_type"),
    ("export_voltage_current", b'{"voltage_V": 400, "current_A": true}', "wrong_type"),
    ("export_voltage_current", b'{"voltage_V": 400, "current_A": null}', "wrong_type"),
    ("export_voltage_current", b'{"voltage_V": [400], "current_A": 10}', "wrong_type"),
    ("export_voltage_current", b'{"voltage_V": 400, "current_A": 1' + b"0" * 400 + b"}", "wrong_type"),
    ("export_voltage_current", b"null", "wrong_type"),
    ("export_voltage_current", b'{"voltage_V": 400}', "missing_field"),
    ("export_voltage_current", b'{"current_A": 10}', "missing_field"),
    ("export_voltage_current", b'{"voltage_V": -1, "current_A": 10}', "negative"),
    ("export_voltage_current", b'{"voltage_V": 400, "current_A": -0.5}', "negative"),
    ("export_voltage_current", b'{"voltage_V": 1000.5, "current_A": 10}', "above_capabilities"),
    ("export_voltage_current", b'{"voltage_V": 400, "current_A": 200.5}', "above_capabilities"),
    ("export_voltage_current", b'{"voltage_V": 400, "current_A": 1e300}', "above_capabilities"),
    ("export_voltage_current", b'{"voltage_V": 400, "current_A": 10', "not_json"),
    ("export_voltage_current", ('{"voltage_V": 400, "current_A": 10, "pad": "' + _PAD + '"}').encode(), "oversize"),
    ("import_voltage_current", b'{"voltage_V": 400, "current_A": 10}', "import_refused"),
    ("heartbeat", b'"beat"', "wrong_type"),
    ("heartbeat", b"-1", "negative"),
    ("heartbeat", b"true", "wrong_type"),
    ("heartbeat", b"1.5", "wrong_type"),
    ("heartbeat", b"NaN", "not_finite"),
    ("set_power", b'{"power_W": 1000}', "unknown_var"),
)
