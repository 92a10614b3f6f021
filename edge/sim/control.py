"""Fault knobs of a running simulated cabinet, over a Unix socket beside the daemon's API socket.

``edge run --sim`` serves ``sim-control.sock`` in the directory of ``api.socket``; the soak bench and
tests drive faults through it while the daemon runs in another process. One JSON object per line:

    {"knob": "pump_failed", "value": true}
    {"knob": "module_silent", "address": 2, "value": true}
    {"knob": "module_alarm", "address": 1, "alarm": "over_temperature", "value": true}
    {"knob": "meter_silent", "meter": "grid", "value": true}
    {"knob": "cable_silent" | "cable_frozen", "value": true}          # "cable": "gun2" for another
    {"knob": "vehicle_demand_a", "value": 150.0}       # the fixed (bench) load of connector 1
    {"knob": "sessions", "value": true}         # cycle the fixed load: plug-in / charge / unplug
    {"knob": "can_bus_off"}                     # the controller's CAN chip reports bus-off
    {"knob": "plug", "connector": "2", "value": true}  # plug in / unplug (value false) a vehicle
    {"knob": "plug", "connector": "2", "value": true, "car": "800v", "soc": 0.2}
    {"knob": "soc", "connector": "1", "value": 0.79}   # the vehicle's state of charge, 0..1
    {"knob": "hot_pin_c", "connector": "1", "value": 30.0}  # a bad DC+ contact: °C on top
    {"knob": "over_voltage_v", "connector": "1", "value": 80.0}  # the delivering output reads 80 V high
    {"knob": "contactor_weld", "connector": "1", "value": true}  # stays closed once closed
    {"knob": "contactor_weld", "connector": "1", "value": true, "closed_now": true}  # welded closed at once
    {"knob": "contactor_fail_to_close", "connector": "2", "value": true}  # the coil no longer pulls in
    {"knob": "input", "function": "estop", "value": true}  # e-stop pressed (false: released); also
                                                # "door" (open), "water", "tilt": every [[input]] of it
    {"knob": "imd_ohm", "connector": "1", "value": 60000.0}  # insulation its IMD measures, Ohm
    {"knob": "imd_self_test_fails" | "imd_silent", "connector": "1", "value": true}
    {"knob": "relay_stuck", "group": "B", "connector": "1", "value": true}  # power sharing: a jammed relay
    {"knob": "group_lost", "group": "B", "value": true}  # power sharing: a group's modules stop answering
    {"get": "physics"}

Without "connector", a knob acts on the first connector ("1").

Answers ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.sim.cabinet import SimCabinet

SOCKET_NAME = "sim-control.sock"


def socket_path_for(api_socket: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(api_socket)), SOCKET_NAME)


def apply(cabinet: SimCabinet, req: dict[str, Any]) -> dict[str, Any]:
    if req.get("get") == "physics":
        return {"ok": True, "physics": cabinet.snapshot()}
    knob = req.get("knob")
    value = req.get("value")
    try:
        if knob in _CONNECTOR_KNOBS:
            _connector_knob(cabinet, str(knob), req)
        elif knob in _IMD_KNOBS:
            _imd_knob(cabinet, str(knob), req)
        elif knob == "pump_failed":
            cabinet.set_pump_failed(bool(value))
        elif knob == "cable_silent":
            cabinet.set_cable_silent(bool(value), _opt_str(req.get("cable")))
        elif knob == "cable_frozen":
            cabinet.set_cable_frozen(bool(value), _opt_str(req.get("cable")))
        elif knob == "module_silent":
            cabinet.set_module_silent(int(req["address"]), bool(value))
        elif knob == "module_alarm":
            cabinet.set_module_alarm(int(req["address"]), str(req["alarm"]), bool(value))
        elif knob == "meter_silent":
            cabinet.set_meter_silent(str(req["meter"]), bool(value))
        elif knob == "vehicle_demand_a":
            cabinet.set_vehicle_demand(float(value if value is not None else 0.0))
        elif knob == "relay_stuck":  # power sharing
            cabinet.set_relay_stuck(str(req["group"]), str(req["connector"]), bool(req.get("value", True)))
        elif knob == "group_lost":
            cabinet.set_group_lost(str(req["group"]), bool(req.get("value", True)))
        elif knob == "can_bus_off":
            cabinet.inject_bus_off()
        elif knob == "sessions":
            cabinet.set_sessions(bool(value))
        elif knob == "input":
            cabinet.set_input(str(req["function"]), bool(value))
        else:
            return {"ok": False, "error": f"unknown knob {knob!r}"}
    except (KeyError, TypeError, ValueError) as exc:
        return {"ok": False, "error": f"bad request for knob {knob!r}: {exc!r}"}
    return {"ok": True}


_CONNECTOR_KNOBS = ("plug", "soc", "hot_pin_c", "contactor_weld", "contactor_fail_to_close", "over_voltage_v")
_IMD_KNOBS = ("imd_ohm", "imd_self_test_fails", "imd_silent")


def _connector_knob(cabinet: SimCabinet, knob: str, req: dict[str, Any]) -> None:
    connector = _opt_str(req.get("connector"))
    value: Any = req.get("value")
    if knob == "plug":
        if value is None or bool(value):
            soc = req.get("soc")
            cabinet.plug_in(connector, _opt_str(req.get("car")), float(soc) if soc is not None else None)
        else:
            cabinet.unplug(connector)
    elif knob == "soc":
        cabinet.set_soc(float(value), connector)
    elif knob == "contactor_weld":
        cabinet.weld_contactor(connector, value is None or bool(value), bool(req.get("closed_now")))
    elif knob == "contactor_fail_to_close":
        cabinet.contactor_fails_to_close(connector, value is None or bool(value))
    elif knob == "over_voltage_v":
        cabinet.set_over_voltage(float(value if value is not None else 0.0), connector)
    else:
        cabinet.set_hot_pin(float(value if value is not None else 0.0), connector)


def _imd_knob(cabinet: SimCabinet, knob: str, req: dict[str, Any]) -> None:
    connector = _opt_str(req.get("connector")) or cabinet.physics.primary.name
    value: Any = req.get("value")
    if knob == "imd_ohm":
        cabinet.set_imd_resistance(float(value), connector)
    elif knob == "imd_self_test_fails":
        cabinet.set_imd_self_test_fails(bool(value), connector)
    else:
        cabinet.set_imd_silent(bool(value), connector)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


async def serve(cabinet: SimCabinet, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    answer = apply(cabinet, req) if isinstance(req, dict) else {"ok": False, "error": "not an object"}
                except ValueError as exc:
                    answer = {"ok": False, "error": f"bad JSON: {exc}"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(client, path=path)
    try:
        async with server:
            await server.serve_forever()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
