"""The EVerest adapter against a real mosquitto, driven by the test-side EVerest controller.

Each test runs the adapter on its own event loop (``asyncio.run``) with a recording sink and reports the
test changes; the controller plays EVerest's ``power_supply_DC_API`` module on the same broker.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge.charging.demand import Capabilities, ConnectorReport
from edge.charging.everest import EverestAdapter, EverestSettings
from tests.conftest import until
from tests.everest_controller import MALFORMED, EverestController
from tests.mqtt_broker import Broker, make_certs

MID = "cabinet_dc_1"
CAPS = Capabilities(
    max_export_voltage_v=1000.0,
    min_export_voltage_v=150.0,
    max_export_current_a=200.0,
    min_export_current_a=0.0,
    max_export_power_w=150_000.0,
)


class RecordingSink:
    """A DemandSink that records every call with its time, and whether it came on the loop's thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.loop_thread: int | None = None
        self.off_loop = 0

    def _rec(self, *call: Any) -> None:
        if threading.get_ident() != self.loop_thread:
            self.off_loop += 1
        self.calls.append((time.monotonic(), *call))

    def set_mode(self, connector: str, mode: str, phase: str, now: float) -> None:
        self._rec("mode", connector, mode, phase, now)

    def set_target(
        self, connector: str, voltage_v: float, current_a: float, now: float, power_w: float | None = None
    ) -> None:
        self._rec("target", connector, voltage_v, current_a, now)

    def heartbeat(self, source: str, now: float) -> None:
        self._rec("heartbeat", source, now)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[1] == kind]


class Rig:
    def __init__(self, port: int, bindings: dict[str, str] | None = None, **settings: Any) -> None:
        self.settings = EverestSettings(port=port, client_id="edge-test", **settings)
        self.report = ConnectorReport("1", voltage_v=0.0, current_a=0.0, mode="Off", capabilities=CAPS)
        self.others: dict[str, ConnectorReport] = {}  # connectors other than "1"
        self.report_log: list[tuple[float, ConnectorReport]] = []  # every reports() call (connector "1")
        self.events: list[tuple[float, str, str, dict[str, Any]]] = []
        self.sink = RecordingSink()
        self.adapter = EverestAdapter(
            self.settings, bindings or {MID: "1"}, self.sink, self._reports, time.monotonic, self._event
        )

    def _reports(self) -> dict[str, ConnectorReport]:
        self.report_log.append((time.monotonic(), self.report))
        return {"1": self.report, **self.others}

    def _event(self, kind: str, name: str, data: dict[str, Any]) -> None:
        self.events.append((time.monotonic(), kind, name, data))

    def set(self, **changes: Any) -> float:
        self.report = replace(self.report, **changes)
        return time.monotonic()

    def event_kinds(self) -> list[str]:
        return [e[1] for e in self.events]


@asynccontextmanager
async def running(rig: Rig) -> AsyncIterator[Rig]:
    rig.sink.loop_thread = threading.get_ident()
    stopping = asyncio.Event()
    rig.adapter.start(asyncio.get_running_loop())
    task = asyncio.create_task(rig.adapter.run(stopping))
    try:
        await until(lambda: rig.adapter.stats()["connected"], 10, "adapter connected")
        yield rig
    finally:
        stopping.set()
        await asyncio.wait_for(task, 5)
        await asyncio.to_thread(rig.adapter.close)
    assert rig.sink.off_loop == 0, "the sink was called off the event loop's thread"


def test_capabilities_at_start_then_requests_reach_the_sink_on_the_loop(mqtt_broker: Broker) -> None:
    ctl = EverestController(mqtt_broker.port, (MID,))
    rig = Rig(mqtt_broker.port)

    async def scenario() -> None:
        async with running(rig):
            await until(lambda: ctl.of("capabilities"), 5, "capabilities after connect")
            caps = ctl.latest("capabilities")
            assert caps["max_export_current_A"] == 200.0 and caps["max_export_voltage_V"] == 1000.0
            assert caps["bidirectional"] is False
            await until(lambda: ctl.of("mode"), 5, "mode after connect")
            assert ctl.latest("mode") == "Off"

            ctl.set_mode("Export", "CableCheck")
            await until(lambda: rig.sink.of("mode"), 2, "mode applied")
            assert rig.sink.of("mode")[-1][2:5] == ("1", "Export", "CableCheck")
            latencies = []
            for i in range(40):
                n = len(rig.sink.of("target"))
                t0 = time.monotonic()
                ctl.export(400.0 + i, 100.0)
                await until(lambda n=n: len(rig.sink.of("target")) > n, 2, "set-point applied", interval=0.001)
                call = rig.sink.of("target")[-1]
                assert call[2:5] == ("1", 400.0 + i, 100.0)
                latencies.append(call[0] - t0)
            # publish -> broker -> paho thread -> loop: a few ms on loopback; generous for a loaded machine
            assert statistics.median(latencies) < 0.05, latencies
            assert max(latencies) < 0.5, latencies
            assert rig.adapter.stats()["applied"]["export_voltage_current"] == 40
        assert ctl.violations == []

    try:
        asyncio.run(scenario())
    finally:
        ctl.close()


def test_two_connectors_each_with_its_own_module_id(mqtt_broker: Broker) -> None:
    ctl = EverestController(mqtt_broker.port, (MID, "cabinet_dc_2"))
    rig = Rig(mqtt_broker.port, bindings={MID: "1", "cabinet_dc_2": "2"})
    small = replace(CAPS, max_export_current_a=80.0, max_export_power_w=50_000.0)
    rig.others["2"] = ConnectorReport("2", voltage_v=0.0, current_a=0.0, mode="Off", capabilities=small)

    async def scenario() -> None:
        async with running(rig):
            await until(lambda: ctl.of("capabilities", "cabinet_dc_2") and ctl.of("capabilities", MID), 5, "both")
            assert ctl.latest("capabilities", MID)["max_export_current_A"] == 200.0
            assert ctl.latest("capabilities", "cabinet_dc_2")["max_export_current_A"] == 80.0
            ctl.export(800.0, 150.0, module_id="cabinet_dc_2")  # above connector 2's capabilities
            ctl.export(800.0, 150.0, module_id=MID)
            ctl.export(420.0, 60.0, module_id="cabinet_dc_2")
            await until(lambda: len(rig.sink.of("target")) == 2, 2, "two set-points")
            assert [c[2:5] for c in rig.sink.of("target")] == [("1", 800.0, 150.0), ("2", 420.0, 60.0)]
            assert rig.adapter.stats()["refused"] == {"above_capabilities": 1}
            rig.others["2"] = replace(rig.others["2"], faults=("pin_over_temperature",), mode="Fault")
            await until(lambda: ctl.active_errors("cabinet_dc_2"), 1, "error on connector 2")
            await until(lambda: ctl.latest("mode", "cabinet_dc_2") == "Fault", 1, "mode of connector 2")
            assert ctl.active_errors(MID) == set() and ctl.latest("mode", MID) == "Off"
        assert ctl.violations == []

    try:
        asyncio.run(scenario())
    finally:
        ctl.close()


def test_malformed_payloads_are_counted_per_reason_and_never_applied(mqtt_broker: Broker) -> None:
    ctl = EverestController(mqtt_broker.port, (MID, "other_dc"))
    rig = Rig(mqtt_broker.port)
    # left on the broker by some earlier client: delivered on subscribe, and old by definition
    ctl.client.publish(ctl.topic("mode"), '{"mode": "Export", "charging_phase": "Charging"}', qos=1, retain=True)

    async def scenario() -> None:
        async with running(rig):
            await until(lambda: ctl.of("capabilities"), 5, "capabilities after connect")
            for var, payload, _why in MALFORMED:
                ctl.publish_raw(var, payload)
            ctl.export(400.0, 10.0, module_id="other_dc")  # a module id bound to no connector
            ctl.export(555.0, 55.0)  # valid: arrives after all of the above (one connection, in order)
            await until(lambda: rig.sink.of("target"), 3, "the valid set-point after the bad ones")
            assert [c[1:5] for c in rig.sink.calls] == [("target", "1", 555.0, 55.0)]
            stats = rig.adapter.stats()
            want = Counter(why for _v, _p, why in MALFORMED)
            want["unknown_module"] += 1
            want["retained"] += 1
            assert stats["refused"] == dict(want)
            assert stats["refused_total"] == len(MALFORMED) + 2
            assert stats["applied"] == {"export_voltage_current": 1}

    try:
        asyncio.run(scenario())
    finally:
        ctl.close()


def test_capabilities_drop_goes_out_at_once_rises_wait_for_interval_and_hysteresis(mqtt_broker: Broker) -> None:
    ctl = EverestController(mqtt_broker.port, (MID,))
    rig = Rig(mqtt_broker.port, capabilities_min_interval_ms=1000, capabilities_hysteresis_a=5.0)

    def caps_a() -> list[tuple[float, float]]:
        return [(m.t, m.body["max_export_current_A"]) for m in ctl.of("capabilities")]

    async def scenario() -> None:
        async with running(rig):
            await until(lambda: ctl.of("capabilities"), 5, "capabilities after connect")
            first_n = len(caps_a())
            t_drop = rig.set(capabilities=replace(CAPS, max_export_current_a=120.0))
            await until(lambda: len(caps_a()) > first_n, 1, "the derating published")
            t_seen, amps = caps_a()[-1]
            assert amps == 120.0
            assert t_seen - t_drop < 0.3, "a drop must not wait for the 1 s interval"
            # a set-point above the new limit is now refused: what EVerest was told is what counts
            ctl.export(400.0, 150.0)
            await until(lambda: rig.adapter.stats()["refused"].get("above_capabilities"), 2, "refused")

            rig.set(capabilities=replace(CAPS, max_export_current_a=123.0))  # within the hysteresis
            n = len(caps_a())
            await until(lambda: time.monotonic() - t_seen > 1.3, 2, "past the interval")
            assert len(caps_a()) == n, "a rise within the hysteresis is not worth a republish"

            t_rise = rig.set(capabilities=CAPS)  # the interval has passed: goes out on the next check
            await until(lambda: caps_a()[-1][1] == 200.0, 1, "the rise published")
            assert caps_a()[-1][0] - t_rise < 0.3
            t_rise_seen = caps_a()[-1][0]

            rig.set(capabilities=replace(CAPS, max_export_current_a=100.0))
            await until(lambda: caps_a()[-1][1] == 100.0, 1, "second drop published at once")
            assert caps_a()[-1][0] - t_rise_seen < 0.5
            t_second_drop = caps_a()[-1][0]
            rig.set(capabilities=CAPS)
            await until(lambda: caps_a()[-1][1] == 200.0, 2, "the rise after the interval")
            assert caps_a()[-1][0] - t_second_drop >= 0.95, "rises are rate-limited"

    try:
        asyncio.run(scenario())
    finally:
        ctl.close()


def test_voltage_current_at_4_hz_and_communication_check(mqtt_broker: Broker) -> None:
    ctl = EverestController(mqtt_broker.port, (MID,))
    rig = Rig(mqtt_broker.port, communication_check_period_ms=500)

    async def scenario() -> None:
        async with running(rig):
            rig.set(voltage_v=401.5, current_a=99.25)
            await until(lambda: ctl.of("voltage_current"), 2, "first voltage_current")
            t0 = time.monotonic()
            await until(lambda: time.monotonic() - t0 >= 2.0, 3, "2 s of measurements", interval=0.05)
            vc = ctl.of("voltage_current", since=t0)
            t_end = t0 + 2.0
            in_window = [m for m in vc if m.t < t_end]
            assert 7 <= len(in_window) <= 9, [round(m.t - t0, 3) for m in in_window]
            gaps = [b.t - a.t for a, b in itertools.pairwise(in_window)]
            assert abs(statistics.mean(gaps) - 0.25) < 0.03, gaps
            assert in_window[-1].body == {"voltage_V": 401.5, "current_A": 99.25}
            cc = [m for m in ctl.of("communication_check", since=t0) if m.t < t_end]
            assert 3 <= len(cc) <= 5 and all(m.body is True for m in cc)
        assert ctl.violations == []

    try:
        asyncio.run(scenario())
    finally:
        ctl.close()


def test_mode_published_on_every_change_and_only_then(mqtt_broker: Broker) -> None:
    ctl = EverestController(mqtt_broker.port, (MID,))
    rig = Rig(mqtt_broker.port)

    async def scenario() -> None:
        async with running(rig):
            await until(lambda: ctl.of("mode"), 5, "mode after connect")
            for mode in ("Export", "Off", "Fault", "Off"):
                rig.set(mode=mode)
                await until(lambda mode=mode: ctl.latest("mode") == mode, 1, f"mode {mode}")
            n = len(rig.report_log)
            await until(lambda: len(rig.report_log) >= n + 5, 2, "a few more checks")
            assert [m.body for m in ctl.of("mode")] == ["Off", "Export", "Off", "Fault", "Off"]

    try:
        asyncio.run(scenario())
    finally:
        ctl.close()


def test_faults_raise_and_clear_each_error_once(mqtt_broker: Broker) -> None:
    ctl = EverestController(mqtt_broker.port, (MID,))
    rig = Rig(mqtt_broker.port)

    async def scenario() -> None:
        async with running(rig):
            await until(lambda: ctl.of("capabilities"), 5, "connected")
            rig.set(faults=("pin_over_temperature", "module_lost_2"))  # a lost module is derating, no error
            await until(ctl.active_errors, 1, "OverTemperature raised")
            rig.set(faults=("pin_over_temperature", "module_lost_2", "over_current"))
            await until(lambda: len(ctl.active_errors()) == 2, 1, "OverCurrentDC raised")
            n = len(rig.report_log)
            await until(lambda: len(rig.report_log) >= n + 5, 2, "a few more checks")
            rig.set(faults=())
            await until(lambda: not ctl.active_errors(), 1, "all cleared")
            n = len(rig.report_log)
            await until(lambda: len(rig.report_log) >= n + 5, 2, "a few more checks")
            assert [e[1:] for e in ctl.error_log] == [
                ("raise", "OverTemperature", "pin_over_temperature"),
                ("raise", "OverCurrentDC", "over_current"),
                ("clear", "OverCurrentDC", "over_current"),
                ("clear", "OverTemperature", "pin_over_temperature"),
            ]
            assert ctl.of("raise_error")[0].body["message"] == "cable pin over-temperature trip"
            assert [r for r in ctl.redundant if r[1] == "raise"] == []
        assert ctl.violations == []

    try:
        asyncio.run(scenario())
    finally:
        ctl.close()


def test_modules_unreachable_keeps_requests_and_clears_communication_fault_one_check_after(
    mqtt_broker: Broker,
) -> None:
    ctl = EverestController(mqtt_broker.port, (MID,))
    rig = Rig(mqtt_broker.port)
    key = ("CommunicationFault", "modules_unreachable")

    async def scenario() -> None:
        async with running(rig):
            await until(lambda: ctl.of("capabilities"), 5, "connected")
            rig.set(modules_reachable=False)
            await until(lambda: key in ctl.active_errors(), 1, "CommunicationFault raised")
            # requests keep reaching the sink, which keeps them for when the modules are back
            ctl.set_mode("Export", "Charging")
            ctl.export(650.0, 120.0)
            await until(lambda: rig.sink.of("target"), 2, "set-point kept")
            t_back = rig.set(modules_reachable=True)
            await until(lambda: key not in ctl.active_errors(), 1, "CommunicationFault cleared")
            t_clear = ctl.of("clear_error")[-1].t
            checks_back = [t for t, r in rig.report_log if t >= t_back and t < t_clear and r.modules_reachable]
            assert len(checks_back) >= 2, "cleared only on the check after the one that saw the modules back"
            assert [e[1] for e in ctl.error_log] == ["raise", "clear"]

    try:
        asyncio.run(scenario())
    finally:
        ctl.close()


def test_errors_left_raised_by_a_previous_run_are_cleared_on_the_first_connect(mqtt_broker: Broker) -> None:
    ctl = EverestController(mqtt_broker.port, (MID,))
    first = Rig(mqtt_broker.port)
    first.report = replace(first.report, faults=("over_voltage", "pin_dc_plus_stale", "coolant_leak"))

    async def run_until_raised(rig: Rig, n: int) -> None:
        async with running(rig):
            await until(lambda: len(ctl.active_errors()) == n, 2, f"{n} errors active")

    second = Rig(mqtt_broker.port)  # the daemon restarted: a fresh adapter, the faults gone meanwhile
    second.report = replace(second.report, faults=("coolant_leak",))
    try:
        asyncio.run(run_until_raised(first, 3))  # then stops without clearing (a crash or a restart)
        asyncio.run(run_until_raised(second, 1))
        assert ctl.active_errors() == {("HardwareFault", "coolant_leak")}
        assert [r for r in ctl.redundant if r[1] == "raise"] == [
            ("cabinet_dc_1", "raise", "HardwareFault", "coolant_leak")
        ]
    finally:
        ctl.close()


def test_heartbeat_silence_is_reported_and_the_return_resends_the_state(mqtt_broker: Broker) -> None:
    ctl = EverestController(mqtt_broker.port, (MID,))
    rig = Rig(mqtt_broker.port, heartbeat_timeout_ms=600)

    async def scenario() -> None:
        async with running(rig):
            ctl.start_heartbeat(0.1)
            await until(lambda: len(rig.sink.of("heartbeat")) >= 3, 3, "heartbeats reach the sink")
            assert rig.sink.of("heartbeat")[-1][2] == "everest"
            await asyncio.to_thread(ctl.stop_heartbeat)
            t_stop = time.monotonic()
            beats = len(rig.sink.of("heartbeat"))
            await until(lambda: "everest_heartbeat_lost" in rig.event_kinds(), 2, "silence reported")
            t_lost = next(e[0] for e in rig.events if e[1] == "everest_heartbeat_lost")
            assert 0.45 <= t_lost - t_stop <= 0.6 + 0.3, t_lost - t_stop  # the last beat was up to 0.1 s before
            assert len(rig.sink.of("heartbeat")) == beats, "no heartbeat reaches the sink while EVerest is silent"
            caps_before = len(ctl.of("capabilities"))
            ctl.heartbeat()  # EVerest back (e.g. restarted): it is told capabilities and mode again
            await until(lambda: "everest_heartbeat_back" in rig.event_kinds(), 2, "return reported")
            await until(lambda: len(ctl.of("capabilities")) > caps_before, 1, "capabilities sent again")
            assert rig.event_kinds().count("everest_heartbeat_lost") == 1

    try:
        asyncio.run(scenario())
    finally:
        ctl.close()


def test_reconnects_after_a_broker_restart_and_publishes_the_state_again(mqtt_broker: Broker) -> None:
    ctl = EverestController(mqtt_broker.port, (MID,))
    rig = Rig(mqtt_broker.port)

    async def scenario() -> None:
        async with running(rig):
            await until(lambda: ctl.of("capabilities"), 5, "capabilities after connect")
            rig.set(faults=("over_voltage",))
            await until(ctl.active_errors, 1, "OverVoltageDC raised")
            await asyncio.to_thread(mqtt_broker.restart)
            t_up = time.monotonic()
            await until(ctl.connected.is_set, 5, "controller back")
            await until(lambda: ctl.of("capabilities", since=t_up), 5, "capabilities after the reconnect")
            await until(lambda: ctl.of("raise_error", since=t_up), 2, "active error said again")
            await until(lambda: ctl.of("mode", since=t_up), 2, "mode said again")
            stats = rig.adapter.stats()
            assert stats["connects"] == 2 and stats["disconnects"] == 1
            assert rig.event_kinds().count("everest_connected") == 2

    try:
        asyncio.run(scenario())
    finally:
        ctl.close()


def test_tls_with_client_certificate(tmp_path: Path) -> None:
    tls = make_certs(tmp_path / "certs")
    broker = Broker(tmp_path / "broker", tls=tls)
    broker.start()
    rig = Rig(
        broker.port,
        host="localhost",
        tls=True,
        ca_file=str(tls.ca),
        cert_file=str(tls.client_cert),
        key_file=str(tls.client_key),
    )

    async def scenario() -> None:
        async with running(rig):
            assert rig.adapter.stats()["connected"]

    try:
        asyncio.run(scenario())
    finally:
        broker.stop()


def test_settings_from_a_config_section() -> None:
    class Section:
        host = "10.0.0.2"
        port = 8883
        tls = True
        ca_file = "/etc/ca.pem"
        cert_file = None
        key_file = ""
        username = "cabinet"
        password = "s3cret"
        base = "everest_api/1.0"
        client_id = ""
        heartbeat_timeout_ms = 3000
        voltage_current_period_ms = 250
        communication_check_period_ms = 1000
        capabilities_min_interval_ms = 1000
        capabilities_hysteresis_a = 5.0

    s = EverestSettings.from_config(Section(), cabinet_id="cab-7")
    assert s.host == "10.0.0.2" and s.port == 8883 and s.cert_file == "" and s.base == "everest_api/1.0"
    assert s.client_id == "cabinet-edge-cab-7"
