"""``build(config, backends) -> Cabinet``: the one place that wires config, hal, drivers, control, telemetry
and the API together. The daemon, the tests and the benchmarks all build a cabinet through here.

Build inside the running event loop: pymodbus clients bind to the loop that is running when they are made.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.cable.monitor import CableMonitor
from drivers.can_dispatch import CanDispatcher
from drivers.digital_inputs import DigitalInputs, InputSpec, build_inputs
from drivers.power_modules.bank import ModuleBank
from drivers.power_modules.registry import CODECS
from drivers.readings import Reading
from edge import __version__
from edge.api.server import ApiServer
from edge.cabinet import Cabinet
from edge.can_link import CanLink
from edge.charging.demand import Capabilities, DemandSink
from edge.charging.demands import Demands
from edge.config import Config
from edge.control import Controller, Outputs
from edge.events import EventLog
from edge.faults import ExternalFaults
from edge.isolation_link import IsolationLink
from edge.latches import LatchFile, core_state_with
from edge.meter_link import MeterLink
from edge.operator import OperatorFile
from edge.ops import Operations
from edge.remote.diag import basic_files, daemon_files
from edge.remote.service import active_faults_in, build_remote, sessions_active_in
from edge.state import CabinetState, InputMap
from edge.telemetry.formats import compactor_for
from edge.telemetry.recorder import Recorder
from edge.telemetry.sampler import Sampler
from edge.telemetry.store import Store
from edge.telemetry.uplink import Uplink
from hal.can import CanPort, CanSettings
from hal.clock import Clock, LinuxClock
from hal.pin import LinuxPin, Pin, SimBoard, make_input, make_pin
from hal.watchdog import make_wdt


def _wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Backends:
    """What differs between a cabinet, the simulator and a test beyond the config."""

    clock: Clock = field(default_factory=LinuxClock)  # monotonic time for everything that measures time
    wall_ms: Callable[[], int] = _wall_ms  # UTC ms for records and events
    board: SimBoard | None = None  # the simulator's pins, when outputs.backend = "sim"
    api: bool = True  # serve the local control socket
    # the simulator's built-in charging controller (request = "sim"): called every SIM_CHARGING_PERIOD_S with
    # the demand sink, the time and each connector's capabilities (edge/sim/hardware.py drive_charging)
    sim_charging: Callable[[DemandSink, float, dict[str, Capabilities | None]], Any] | None = None
    # ... and where it gets the cabinet's cable-check result per connector (SimHardware.set_cable_check_verdict):
    # without it the simulated sessions wait a fixed time and miss a failed check
    sim_verdict: Callable[[Callable[[str], str | None]], None] | None = None
    config_path: str | None = None  # the config file the daemon runs with (remote config-get / config-apply)
    # the contactors' mirror contacts by connector (1 closed, 0 open) instead of the configured input pins
    contactor_feedback: Callable[[], dict[str, int | None]] | None = None
    # power sharing: the simulator's relay matrix (edge/sim/relays.py), which follows the board's relay pins itself
    relays: Any = None


def build(config: Config, backends: Backends | None = None) -> Cabinet:
    b = backends or Backends()
    store = Store(
        config.storage.data_dir,
        config.telemetry.store_max_mb,
        config.telemetry.min_free_mb,
        background=True,  # the loop never waits for SQLite's write lock
        clock=b.clock.monotonic,
    )
    events = EventLog(store, b.wall_ms)
    faults = ExternalFaults(events.emit)
    sampler = Sampler()
    grid = next((m.name for m in config.meters if m.role == "grid"), None)
    connectors = config.resolved_connectors()
    state = CabinetState(
        InputMap(
            cable=config.cable[0].name if config.cable else None,
            grid_meter=grid,
            ambient=config.limits.ambient_signal,
            connector_cables={c.name: tuple(c.cables) for c in connectors},
        )
    )

    def take(readings: list[Reading]) -> None:
        """Every driver's readings come in here: the current picture and the telemetry interval."""
        state.update(readings)
        for r in readings:
            sampler.add(r)

    can_link = _build_can(config, b.clock, faults, take, events)
    meters = MeterLink(config, take, events.emit, b.clock.monotonic)
    outputs = _build_outputs(config, b.board)
    wdt = make_wdt(config.watchdog.backend, config.watchdog.timeout_ms)
    demands = Demands(
        {c.name: c.request for c in connectors},
        heartbeat_timeout_s={"everest": config.everest.heartbeat_timeout_ms / 1000.0},
        on_event=events.emit,
    )
    # the insulation monitors share the meters' Modbus lines
    isolation = (
        IsolationLink(config, meters.lines, events.emit, b.clock.monotonic) if config.isolation_monitor else None
    )
    controller = Controller(
        config,
        state,
        can_link.bank,
        outputs,
        wdt,
        b.clock,
        events.emit,
        faults.core_input,
        demands=demands,
        contactor_feedback=b.contactor_feedback or _contactor_feedback(config, outputs.board, b.clock),
        isolation=isolation,
    )

    if config.sharing is not None:
        controller.sharing = sharing_runner(config, outputs.board, b.clock, b.relays)
        controller.sharing.faults = faults

    def demand_changed(_connector: str) -> None:
        controller.evaluate_now()  # a CurrentDemand reaches the modules now, not at the next tick

    demands.on_change = demand_changed
    controller.digital = _build_inputs(config, b.board, b.clock, controller.evaluate_now)
    if controller.digital is not None:
        controller.digital.on_active = _estop_direct_path(config, controller)
    # operator stops and limits of the previous run, before the first evaluation; saved on every change
    operator_file = OperatorFile(config.storage.data_dir, b.clock.monotonic, b.wall_ms, events.emit, faults)
    controller.operator = operator_file.restore()
    # latched faults of the previous run, in force before the first evaluation; saved when the set changes
    latch_file = LatchFile(config.storage.data_dir, b.clock.monotonic, b.wall_ms, events.emit, faults)
    controller.core_state = core_state_with(*latch_file.restore(c.name for c in connectors))
    controller.after_evaluate.append(lambda: latch_file.save_if_changed(controller.core_state))
    can_link.evaluate_now = controller.evaluate_now
    compactor = compactor_for(config.telemetry, store.alias)  # None for v1: every sample as JSON
    recorder = Recorder(sampler, store, faults, config.telemetry.interval_s, b.clock.monotonic, b.wall_ms, compactor)
    store.before_close.append(recorder.close_record)
    cabinet = Cabinet(
        config=config,
        clock=b.clock,
        wall_ms=b.wall_ms,
        store=store,
        events=events,
        faults=faults,
        sampler=sampler,
        state=state,
        can=can_link,
        meters=meters,
        outputs=outputs,
        wdt=wdt,
        controller=controller,
        recorder=recorder,
        started=b.clock.monotonic(),
        sim_charging=b.sim_charging,
        isolation=isolation,
    )
    controller.on_tick.append(cabinet.sample_connectors)
    if b.sim_verdict is not None:
        b.sim_verdict(cabinet.cable_check_verdict)
    cabinet.operations = Operations(config, controller, events.emit, cabinet.status, b.clock)
    if b.api:
        cabinet.api = ApiServer(config.api, cabinet, ops=cabinet.operations)
    mq = config.telemetry.mqtt
    if mq.enabled:
        cabinet.uplink = Uplink(
            mq,
            config.cabinet.site_id,
            config.cabinet.cabinet_id,
            store,
            ops=cabinet.operations,
            clock=b.clock.monotonic,
            state_source=cabinet.mqtt_state,
            on_event=events.emit,
            interval_s=config.telemetry.interval_s,
            version=__version__,
            telemetry=config.telemetry,
        )
        cabinet.uplink.on_connected.append(recorder.request_keyframe)
        _wire_remote(cabinet, cabinet.uplink, b.config_path)
    bindings = {c.everest_module_id: c.name for c in connectors if c.request == "everest" and c.everest_module_id}
    if bindings:
        # imported only when a connector uses it: a cabinet without EVerest does not carry its code (RSS)
        from edge.charging.everest import EverestAdapter, EverestSettings

        cabinet.everest = EverestAdapter(
            EverestSettings.from_config(config.everest, config.cabinet.cabinet_id),
            bindings,
            demands,
            controller.reports,
            b.clock.monotonic,
            events.emit,
        )
        controller.after_evaluate.append(cabinet.everest.poke)
    cabinet.everest_monitors = _everest_monitors(config, connectors, isolation, demands, controller, b.clock.monotonic)
    return cabinet


def _everest_monitors(
    config: Config,
    connectors: list[Any],
    isolation: IsolationLink | None,
    demands: Demands,
    controller: Controller,
    clock: Callable[[], float],
) -> Any:
    """EVerest's isolation_monitor / over_voltage_monitor APIs, when a served IMD or connector names one."""
    imd_ids = {m.everest_module_id: m.connectors[0] for m in config.isolation_monitor if m.everest_module_id}
    ovm_ids = {c.everest_ovm_module_id: c.name for c in connectors if c.everest_ovm_module_id}
    if not (imd_ids or ovm_ids):
        return None
    from edge.charging.everest import EverestSettings
    from edge.charging.everest_monitors import EverestMonitors

    settings = EverestSettings.from_config(config.everest, config.cabinet.cabinet_id)
    return EverestMonitors(
        settings, imd_ids, ovm_ids, isolation, demands, controller.reports, controller.request_clear, clock,
        controller.on_event,
    )  # fmt: skip


def _wire_remote(cabinet: Cabinet, uplink: Uplink, config_path: str | None) -> None:
    """The remote operations (update, config-apply, diag, ...) arrive over MQTT: edge/remote/service.py."""
    ctl = cabinet.controller

    def publish(leaf: str, payload: bytes, retain: bool) -> None:
        uplink.session.publish(f"{uplink.topics.base}/{leaf}", payload, retain=retain)

    cabinet.remote = build_remote(
        cabinet.config,
        config_path,
        __version__,
        sessions_active=lambda: sessions_active_in(ctl.decision),
        active_faults=lambda: active_faults_in(ctl.decision),
        publish=publish,
        on_event=lambda kind, name, data: uplink.to_loop(cabinet.events.emit, kind, name, data),
        diag_files=lambda: {**basic_files(config_path), **daemon_files(cabinet.config.api.socket)},
    )
    uplink.remote = cabinet.remote
    if cabinet.remote.update is not None:
        uplink.on_connected.append(cabinet.remote.update.republish)


def _contactor_feedback(config: Config, board: SimBoard | None, clock: Clock) -> Callable[[], dict[str, int | None]]:
    """Each connector's mirror contact (``contactor_feedback`` pin) through a debounced input: 1 = closed
    (an NO auxiliary contact: it conducts with the contactor), read at every evaluation; {} when none is wired."""
    cc = config.contactors
    specs = [
        InputSpec(c.name, c.contactor_feedback, cc.feedback_active, "no", cc.feedback_debounce_ms)
        for c in config.resolved_connectors()
        if c.contactor_feedback
    ]
    if not specs:
        return dict
    backend = config.outputs.backend
    reader = build_inputs(
        specs, board.input if board is not None else (lambda pin: make_input(backend, pin)), clock.monotonic
    )
    return reader.poll  # type: ignore[return-value]  # {name: 1|0}: every wired connector has a value


def sharing_runner(config: Config, board: SimBoard | None, clock: Clock, sim_relays: Any = None) -> Any:
    """The power-sharing runner of a cabinet with ``[sharing]`` (issue 16): each relay's coil on its ``pin``
    (an output of ``outputs.backend``, like the contactors) and its mirror contact on its ``feedback`` input,
    debounced. The coils start de-energised (relays open): each group goes home through the switching
    sequence. ``board``: the simulated board (backend "sim"), whose pins the simulator's matrix ``sim_relays``
    follows (edge/sim/relays.py); with a board and no ``sim_relays`` (a test's cabinet without the simulator)
    the runner steps a simulated matrix of its own behind the same pins."""
    # imported only with [sharing]: a cabinet without it does not carry the allocator (RSS)
    from edge.charging.sharing import Cabinet as SharingCabinet
    from edge.charging.sharing import PinRelays, Runner, Timing, matrix_from_config, mirror_name
    from edge.sim.relays import SimRelayMatrix, wiring

    matrix = matrix_from_config(config)
    sh = config.sharing
    assert matrix is not None and sh is not None
    timing = Timing(
        confirm_s=sh.relay_confirm_ms / 1000.0,
        ramp_timeout_s=config.session.off_timeout_ms / 1000.0,
        off_current_a=config.session.off_current_a,
    )
    backend = config.outputs.backend
    coils: dict[tuple[str, str], Pin] = {
        (r.group, r.connector): board.pin(r.pin) if board is not None else make_pin(backend, r.pin)
        for r in config.relay
    }
    follow = None
    if board is not None and sim_relays is None:
        sim_relays = SimRelayMatrix(list(coils))
        pins, closed_level = wiring(config)
        sim_relays.follow(board, pins, closed_level, clock.monotonic())  # the mirrors' levels before the first read

        def follow(now_s: float) -> None:
            sim_relays.follow(board, pins, closed_level, now_s)

    specs = [
        InputSpec(
            mirror_name(r.group, r.connector), r.feedback, sh.relay_feedback_active, "no", sh.relay_feedback_debounce_ms
        )
        for r in config.relay
    ]
    mirrors = build_inputs(
        specs, board.input if board is not None else (lambda pin: make_input(backend, pin)), clock.monotonic
    )
    relays = PinRelays(coils, mirrors, follow=follow, sim=sim_relays)
    return Runner(SharingCabinet(matrix, timing, at=dict.fromkeys(matrix.groups)), relays, homing=True)


def _build_outputs(config: Config, board: SimBoard | None) -> Outputs:
    o = config.outputs
    sim = board or SimBoard()

    def pin(name: str) -> Pin:
        return sim.pin(name) if o.backend == "sim" else make_pin(o.backend, name)

    contactors = {c.name: pin(c.contactor) for c in config.resolved_connectors()}
    first = next(iter(contactors.values()))
    out = Outputs(first, pin(o.pump), pin(o.fan), contactors)
    out.board = sim if o.backend == "sim" else None  # the simulated board's inputs are read from it too
    return out


def _estop_direct_path(config: Config, controller: Controller) -> Callable[[str], None]:
    """An e-stop input turning ACTIVE switches the modules off and opens the contactors at once, in the
    thread that sees the edge, before (not instead of) the evaluation that latches and reports it."""
    estops = {i.name for i in config.input if i.function == "estop"}

    def on_active(name: str) -> None:
        if name in estops:
            controller.estop_off()

    return on_active


def _build_inputs(
    config: Config, board: SimBoard | None, clock: Clock, evaluate_now: Callable[[], Any]
) -> DigitalInputs | None:
    """The ``[[input]]`` pins on the outputs' backend, debounced; an edge evaluates at once (a debounced one
    when its time is over) in the event loop's thread. A simulator knob turned from another thread hands the
    evaluation to the loop; with no loop running (the SimStepper between steps) it runs in the caller."""
    if not config.input:
        return None
    loop = asyncio.get_running_loop()  # build() runs inside the daemon's loop

    def in_loop_thread() -> bool:
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def on_change() -> None:
        if loop.is_running() and not in_loop_thread():
            loop.call_soon_threadsafe(evaluate_now)
        else:
            evaluate_now()

    def call_later(delay_s: float, fn: Callable[[], None]) -> None:
        if in_loop_thread():
            loop.call_later(delay_s, fn)
        elif loop.is_running():
            loop.call_soon_threadsafe(loop.call_later, delay_s, fn)
        # else: no loop (SimStepper): the next tick's poll takes the change

    backend = config.outputs.backend
    sim = board or SimBoard()
    specs = [InputSpec(i.name, i.pin, i.active, i.wiring, float(i.debounce_ms)) for i in config.input]
    reader = build_inputs(
        specs,
        sim.input if backend == "sim" else (lambda pin: make_input(backend, pin)),
        clock.monotonic,
        on_change,
        call_later,
    )
    for pin in reader.pins:
        if isinstance(pin, LinuxPin):  # pragma: no cover - only on the board: edge events wake the loop
            loop.add_reader(pin.fileno(), pin.handle_events)
    return reader


def _build_can(
    config: Config, clock: Clock, faults: ExternalFaults, take: Callable[[list[Reading]], None], events: EventLog
) -> CanLink:
    """One dispatcher per bus; each device registers its frames with the dispatcher of its bus (adding a CAN
    device is one driver module and one ``register`` line here); the bus filters come from the registrations."""
    link = CanLink(config, clock, faults, take)
    pm = config.power_modules
    link.dispatchers = {bus.name: CanDispatcher(bus.name, clock=clock.monotonic) for bus in config.can}
    link.bank = ModuleBank(
        CODECS[pm.protocol](),
        list(pm.addresses),
        pm.lost_after_ms / 1000.0,
        link.send_frame,
        pm.max_current_a,
        poll_period_s=pm.poll_ms / 1000.0,
        clock=clock.monotonic,
        on_event=events.emit,
        max_voltage_v=min(config.limits.max_output_voltage_v, pm.max_voltage_v),
    )
    link.bank.register(link.dispatchers[pm.bus])
    for c in config.cable:
        link.cables[c.name] = CableMonitor(c.name, c.node_id, stale_after_s=c.stale_after_ms / 1000.0)
        link.cables[c.name].register(link.dispatchers[c.bus])
    for bus in config.can:
        link.ports[bus.name] = CanPort(
            CanSettings(
                name=bus.name,
                interface=bus.interface,
                channel=bus.channel,
                bitrate=bus.bitrate,
                rx_queue=bus.rx_queue,
                send_timeout_s=bus.send_timeout_ms / 1000.0,
                filters=link.dispatchers[bus.name].filters(),
            ),
            on_health=link.on_health,
            clock=clock.monotonic,
        )
    link.module_port = link.ports[pm.bus]
    return link
