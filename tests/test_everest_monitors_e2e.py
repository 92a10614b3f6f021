"""The cabinet serves EVerest's isolation_monitor and over_voltage_monitor APIs: the daemon (`edge run --sim`,
its own process, the two-connector simulated cabinet) with connector 1's IMD served as the EVerest module
``cabinet_imd_1`` and its over-voltage monitoring as ``cabinet_ovm_1``, driven through a real mosquitto by a
test-side EVerest written from the published API files (everest-core ``isolation_monitor_API.yaml``,
``over_voltage_monitor_API.yaml``): it imports nothing of ``edge``. The session itself is played over
power_supply_DC as in tests/test_charging_e2e.py (EvseManager starts over-voltage monitoring with
CurrentDemand, after the cable check).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import DaemonProcess, _drop_tables, wait_for
from tests.everest_controller import EverestController
from tests.mqtt_broker import Broker
from tests.test_charging_e2e import FAST, MODULE_IDS, SIM_TOML, Demand, Rig, start_session

BASE = "everest_api/1"
IMD_ID, OVM_ID = "cabinet_imd_1", "cabinet_ovm_1"


@dataclass
class Msg:
    api: str
    module_id: str
    var: str
    body: Any
    t: float


class MonitorsClient:
    """EVerest's isolation_monitor_API and over_voltage_monitor_API modules as seen from outside: sends e2m
    commands, records m2e messages (checking each payload's shape against the API files)."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.msgs: list[Msg] = []
        self.violations: list[str] = []
        self.errors: dict[str, dict[tuple[str, str], dict[str, Any]]] = {IMD_ID: {}, OVM_ID: {}}
        self.connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="everest-test-monitors", protocol=mqtt.MQTTv311)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.connect_async("127.0.0.1", port, keepalive=10)
        c.loop_start()
        self.client = c
        assert self.connected.wait(10)

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe(f"{BASE}/isolation_monitor/{IMD_ID}/m2e/#")
        client.subscribe(f"{BASE}/over_voltage_monitor/{OVM_ID}/m2e/#")
        self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        _base, api, module_id, _m2e, var = msg.topic.rsplit("/", 4)
        body = json.loads(msg.payload)
        problem = self._violation(api, var, body)
        with self.lock:
            if problem:
                self.violations.append(f"{msg.topic}: {problem}: {body!r}")
            if var in ("raise_error", "clear_error"):
                key = (body["type"], body.get("sub_type", ""))
                if var == "raise_error":
                    self.errors[module_id][key] = body
                else:
                    self.errors[module_id].pop(key, None)
            self.msgs.append(Msg(api, module_id, var, body, time.monotonic()))

    @staticmethod
    def _violation(api: str, var: str, body: Any) -> str | None:
        def number(v: Any) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        if var == "isolation_measurement":
            ok = isinstance(body, dict) and number(body.get("resistance_F_Ohm"))
            ok = ok and all(number(body[k]) for k in body if k.endswith("_V"))
        elif var in ("self_test_result", "communication_check"):
            ok = isinstance(body, bool)
        elif var == "voltage_measurement_V":
            ok = number(body)
        elif var in ("raise_error", "clear_error"):
            types = ("DeviceFault", "CommunicationFault", "VendorError", "VendorWarning")
            if api == "over_voltage_monitor":
                types += ("MREC5OverVoltage",)
            ok = isinstance(body, dict) and body.get("type") in types
            ok = ok and body.get("severity", "Low") in ("Low", "Medium", "High")
        else:
            return f"unknown m2e variable {var}"
        return None if ok else "payload does not match the API"

    def of(self, var: str, since: float = 0.0) -> list[Msg]:
        with self.lock:
            return [m for m in self.msgs if m.var == var and m.t >= since]

    def active(self, module_id: str) -> dict[tuple[str, str], dict[str, Any]]:
        with self.lock:
            return dict(self.errors[module_id])

    def send(self, api: str, module_id: str, var: str, body: Any) -> None:
        self.client.publish(f"{BASE}/{api}/{module_id}/e2m/{var}", json.dumps(body), qos=0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def monitors_config(tmp: Path, broker_port: int) -> str:
    """The built-in sim config over EVerest's power_supply_DC, connector 1's IMD and over-voltage monitoring
    served to EVerest (connector 2's IMD stays the cabinet's own)."""
    ours = (
        f'\n[everest]\nhost = "127.0.0.1"\nport = {broker_port}\nheartbeat_timeout_ms = 1500\n'
        "\n[telemetry.mqtt]\nenabled = false\n" + FAST
    )
    redefined = {ln.strip() for ln in ours.splitlines() if ln.strip().startswith("[") and "[[" not in ln}
    text = _drop_tables(SIM_TOML, redefined)
    text = text.replace('name = "imd1"\n', f'name = "imd1"\neverest_module_id = "{IMD_ID}"\n')
    text = text.replace('socket = ".edge-sim/edge.sock"', f'socket = "{tmp}/edge.sock"')
    text = text.replace('data_dir = ".edge-sim"', f'data_dir = "{tmp}/data"')
    text = re.sub(r'backend = "systemd"[^\n]*', 'backend = "sim"', text)
    ids = iter(MODULE_IDS)
    ovm = iter([f'\neverest_ovm_module_id = "{OVM_ID}"', ""])
    text = re.sub(
        r'^request = "sim"',
        lambda _m: f'request = "everest"\neverest_module_id = "{next(ids)}"{next(ovm)}',
        text,
        flags=re.M,
    )
    assert IMD_ID in text and OVM_ID in text
    return text + ours


class MonitorsRig(Rig):
    def __init__(self, tmp: Path) -> None:
        self.broker = Broker(tmp / "broker", extra_conf="set_tcp_nodelay true\n")
        self.broker.start()
        cfg = tmp / "config.toml"
        cfg.write_text(monitors_config(tmp, self.broker.port))
        self.daemon = DaemonProcess(cfg, str(tmp / "edge.sock"))
        self.daemon.wait_ready()
        self.sim_socket = str(tmp / "sim-control.sock")
        self.ev = EverestController(self.broker.port, MODULE_IDS)
        self.ev.start_heartbeat(1.0)
        self.mon = MonitorsClient(self.broker.port)

    def close(self) -> None:
        self.mon.close()
        super().close()

    def faults(self, name: str) -> list[str]:
        return list(self.connector(name).get("faults") or [])


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitorsRig]:
    r = MonitorsRig(tmp_path_factory.mktemp("monitors"))
    try:
        yield r
    finally:
        r.close()
    assert not r.mon.violations, r.mon.violations


def test_isolation_monitor_served_to_everest(rig: MonitorsRig) -> None:
    mon = rig.mon
    imd = "isolation_monitor"
    wait_for(lambda: mon.of("communication_check"), 5, what="communication_check on both APIs")
    assert not mon.of("isolation_measurement")  # nothing before EVerest's start
    assert not mon.active(IMD_ID)

    # start: measurements flow, a low insulation is a value (EVerest decides), never an error
    t_start = time.monotonic()
    mon.send(imd, IMD_ID, "start", {})
    wait_for(lambda: len(mon.of("isolation_measurement", t_start)) >= 2, 5, what="measurements after start")
    assert mon.of("isolation_measurement", t_start)[-1].body["resistance_F_Ohm"] == pytest.approx(5e6, rel=0.01)
    rig.sim({"knob": "imd_ohm", "connector": "1", "value": 60000.0})
    wait_for(
        lambda: mon.of("isolation_measurement")[-1].body["resistance_F_Ohm"] == pytest.approx(60000.0, rel=0.01),
        5,
        what="the lower resistance measured",
    )
    assert not mon.active(IMD_ID)
    rig.sim({"knob": "imd_ohm", "connector": "1", "value": 5e6})

    # stop: no more measurements (two communication checks later, none newer than the stop)
    mon.send(imd, IMD_ID, "stop", {})
    t_stop = time.monotonic() + 0.3  # a reading already on its way may still arrive
    wait_for(lambda: len(mon.of("communication_check", t_stop)) >= 4, 5, what="two more communication checks")
    assert not mon.of("isolation_measurement", t_stop)

    # self-test at EVerest's test voltage: one result, true
    t_test = time.monotonic()
    mon.send(imd, IMD_ID, "start_self_test", 500.0)
    wait_for(lambda: mon.of("self_test_result", t_test), 10, what="self_test_result")
    assert [m.body for m in mon.of("self_test_result", t_test)] == [True]

    # a failing self-test is a device fault: false, and DeviceFault raised
    rig.sim({"knob": "imd_self_test_fails", "connector": "1", "value": True})
    t_fail = time.monotonic()
    mon.send(imd, IMD_ID, "start_self_test", 500.0)
    wait_for(lambda: mon.of("self_test_result", t_fail), 10, what="self_test_result after a failing test")
    assert mon.of("self_test_result", t_fail)[0].body is False
    wait_for(lambda: ("DeviceFault", "isolation_monitor_fault") in mon.active(IMD_ID), 5, what="DeviceFault")

    # the IMD silent: CommunicationFault, cleared when it answers again
    rig.sim({"knob": "imd_silent", "connector": "1", "value": True})
    wait_for(lambda: ("CommunicationFault", "isolation_monitor_lost") in mon.active(IMD_ID), 5, what="comm fault")
    rig.sim({"knob": "imd_silent", "connector": "1", "value": False})
    rig.sim({"knob": "imd_self_test_fails", "connector": "1", "value": False})
    t_ok = time.monotonic()
    mon.send(imd, IMD_ID, "start_self_test", 500.0)  # a passing test ends the device error
    wait_for(lambda: mon.of("self_test_result", t_ok), 10, what="self_test_result")
    wait_for(lambda: not mon.active(IMD_ID), 5, what=f"errors cleared: {mon.active(IMD_ID)}")


def test_over_voltage_monitor_served_to_everest(rig: MonitorsRig) -> None:
    mon, ovm = rig.mon, "over_voltage_monitor"
    car = rig.vehicle("1")
    error_v, emergency_v = float(car["max_voltage_v"]), 550.0
    mon.send(ovm, OVM_ID, "set_limits", {"emergency_limit_V": emergency_v, "error_limit_V": error_v})
    # EvseManager: cable check and pre-charge with the served IMD (the cabinet's own verdict is off: no
    # self-test, no samples waited for), then CurrentDemand starts the over-voltage monitoring
    start_session(rig, "1", MODULE_IDS[0])
    mon.send(ovm, OVM_ID, "start", {})
    demand = Demand(rig, "1", MODULE_IDS[0], 60.0)
    try:
        rig.ev.wait(lambda: rig.measured(MODULE_IDS[0])[1] > 20.0, 10, "charging current")
        t_charging = time.monotonic()
        wait_for(lambda: mon.of("voltage_measurement_V", t_charging), 3, what="voltage_measurement_V while charging")
        measured_v = mon.of("voltage_measurement_V", t_charging)[0].body
        assert measured_v == pytest.approx(rig.measured(MODULE_IDS[0])[0], abs=25.0)
        assert not mon.active(OVM_ID)

        # a regulation fault: the output reads above EVerest's error limit (below its emergency limit)
        extra_v = error_v + 40.0 - rig.measured(MODULE_IDS[0])[0]
        t_over = time.monotonic()
        rig.sim({"knob": "over_voltage_v", "connector": "1", "value": extra_v})
        wait_for(lambda: mon.active(OVM_ID), 5, what="MREC5OverVoltage")
    finally:
        demand.end()
    raised = mon.of("raise_error", t_over)
    assert [(m.body["type"], m.body["sub_type"], m.body["severity"]) for m in raised] == [
        ("MREC5OverVoltage", "over_voltage_error", "Medium")
    ]
    assert raised[0].t - t_over >= 0.4  # IEC 61851-23 Table 104: not before 400 ms above the limit
    wait_for(lambda: rig.measured(MODULE_IDS[0])[1] < 1.0, 2, what="the output off")
    wait_for(lambda: not rig.connector("1")["contactor"], 3, what="contactor open")
    assert "over_voltage_error" in rig.faults("1")

    # the regulation fault gone: MREC5 stays raised (and the latch in force) until EVerest's reset
    rig.sim({"knob": "over_voltage_v", "connector": "1", "value": 0.0})
    t_gone = time.monotonic()
    wait_for(lambda: len(mon.of("voltage_measurement_V", t_gone)) >= 2, 4, what="two voltage measurements")
    assert ("MREC5OverVoltage", "over_voltage_error") in mon.active(OVM_ID)
    assert "over_voltage_error" in rig.faults("1")

    rig.ev.set_mode("Off", "Charging", MODULE_IDS[0])
    mon.send(ovm, OVM_ID, "reset_over_voltage_error", {})
    wait_for(lambda: not mon.active(OVM_ID), 3, what="MREC5 cleared on reset")
    wait_for(lambda: "over_voltage_error" not in rig.faults("1"), 3, what="the cabinet's latch cleared")
