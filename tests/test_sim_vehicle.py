"""The simulated vehicle (edge/sim/vehicle.py): battery, its own contactors, CC/CV acceptance."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from edge.sim.session import cable_check_voltage
from edge.sim.vehicle import CAR_400V, CAR_800V, VEHICLE_TYPES, Vehicle, VehicleSpec


@pytest.mark.parametrize("spec", [CAR_400V, CAR_800V])
def test_the_open_circuit_voltage_rises_with_the_state_of_charge_between_the_table_ends(spec):
    v = Vehicle(spec, soc=0.0)
    volts = []
    for i in range(101):
        v.soc = i / 100
        volts.append(v.ocv_v)
    assert volts[0] == spec.ocv_table[0][1] and volts[-1] == spec.ocv_table[-1][1]
    assert all(b > a for a, b in itertools.pairwise(volts))


def test_a_table_that_does_not_rise_is_refused():
    with pytest.raises(ValueError, match="rise strictly"):
        dataclasses.replace(CAR_400V, ocv_table=((0.0, 350.0), (0.5, 349.0), (1.0, 403.0)))
    with pytest.raises(ValueError, match="SoC 0 to 1"):
        dataclasses.replace(CAR_400V, ocv_table=((0.1, 350.0), (1.0, 403.0)))


def test_the_default_cars_match_the_scenario_voltages():
    car800 = Vehicle.of_type("800v")
    assert car800.soc == 0.20
    assert car800.ocv_v == pytest.approx(752.0)  # PreCharge target
    assert cable_check_voltage(CAR_800V.max_voltage_v, 1000.0) == pytest.approx(920.0, abs=0.5)
    car400 = Vehicle.of_type("400v")
    assert car400.soc == 0.30 and 350.0 < car400.ocv_v < 403.0
    assert cable_check_voltage(CAR_400V.max_voltage_v, 1000.0) == pytest.approx(470.0)
    assert set(VEHICLE_TYPES) == {"400v", "800v"}


def armed(spec: VehicleSpec = CAR_800V) -> Vehicle:
    v = Vehicle(spec, soc=0.2, plugged=True)
    v.precharging = True
    return v


@pytest.mark.parametrize("offset_v", [-20.0, -19.5, 0.0, 12.0, 20.0])
def test_the_vehicle_closes_its_contactors_within_20_v_of_its_battery(offset_v):
    v = armed()
    assert v.try_close(v.ocv_v + offset_v)
    assert v.contactors_closed and not v.precharging


@pytest.mark.parametrize("offset_v", [-60.0, -20.5, 20.5, 168.0])
def test_the_vehicle_keeps_its_contactors_open_further_away(offset_v):
    v = armed()
    assert not v.try_close(v.ocv_v + offset_v)
    assert not v.contactors_closed and v.precharging


def test_the_vehicle_closes_only_when_plugged_and_in_precharge():
    v = Vehicle(CAR_800V, soc=0.2, plugged=True)
    assert not v.try_close(v.ocv_v)  # not in pre-charge: a voltage at the inlet alone closes nothing
    v = armed()
    v.unplug()
    assert not v.try_close(v.ocv_v)
    v.plug_in()
    assert not v.precharging and not v.try_close(v.ocv_v)


def test_acceptance_is_constant_current_then_tapers_with_the_state_of_charge():
    v = Vehicle(CAR_400V, soc=0.1)
    assert v.acceptance_a() == CAR_400V.max_current_a
    previous = v.acceptance_a()
    for i in range(11, 101):
        v.soc = i / 100
        now = v.acceptance_a()
        assert now <= previous + 1e-9, v.soc
        previous = now
    v.soc = 0.8
    assert v.acceptance_a() == pytest.approx(0.4 * CAR_400V.max_current_a)
    v.soc = 1.0
    assert v.acceptance_a() < 0.1 * CAR_400V.max_current_a


def test_near_its_charge_voltage_the_vehicle_accepts_only_what_keeps_it_there():
    flat = dataclasses.replace(CAR_400V, taper=((0.0, 1.0), (1.0, 1.0)))  # no BMS taper: CV alone
    v = Vehicle(flat, soc=0.99)
    cv_a = (flat.charge_voltage_v - v.ocv_v) / flat.resistance_ohm
    assert cv_a < flat.max_current_a
    assert v.acceptance_a() == pytest.approx(cv_a)
    assert v.terminal_v(v.acceptance_a()) == pytest.approx(flat.charge_voltage_v)
    v.soc = 1.0
    assert v.acceptance_a() == pytest.approx((flat.charge_voltage_v - 403.0) / flat.resistance_ohm)


def test_the_state_of_charge_rises_with_the_energy_stored():
    v = Vehicle(CAR_400V, soc=0.3, plugged=True)
    stored_kwh = 0.0
    for _ in range(3600):  # one hour at 50 A in 1 s steps
        stored_kwh += v.ocv_v * 50.0 * 1.0 / 3.6e6
        v.charge(50.0, 1.0)
    assert v.soc == pytest.approx(0.3 + stored_kwh / CAR_400V.capacity_kwh, rel=1e-9)
    assert 18.0 < stored_kwh < 20.0  # 50 A at 360-400 V
    # what went in at the terminals includes the I^2 R lost in the pack
    assert v.energy_kwh == pytest.approx(stored_kwh + 50.0**2 * CAR_400V.resistance_ohm / 1000.0, rel=1e-6)
    v.charge(-10.0, 10.0)
    v.charge(10.0, 0.0)
    assert v.soc == pytest.approx(0.3 + stored_kwh / CAR_400V.capacity_kwh, rel=1e-9)


def test_the_state_of_charge_stops_at_full_and_the_target_ends_the_session():
    v = Vehicle(CAR_800V, soc=0.79)
    assert not v.full
    v.charge(300.0, 120.0)
    assert v.full
    v.charge(300.0, 10_000.0)
    assert v.soc == 1.0


def test_a_battery_takes_current_only_above_its_open_circuit_voltage():
    v = Vehicle(CAR_800V, soc=0.2)
    assert v.current_at(v.ocv_v - 50.0) == 0.0
    assert v.current_at(v.ocv_v + 2.7) == pytest.approx(100.0)


def test_plug_in_with_another_car_and_unplug():
    v = Vehicle.of_type("400v", plugged=True)
    v.precharging = True
    v.try_close(v.ocv_v)
    v.unplug()
    assert not v.plugged and not v.contactors_closed
    v.plug_in(CAR_800V, soc=0.5)
    assert v.plugged and v.spec is CAR_800V and v.soc == 0.5 and not v.contactors_closed


def test_an_autonomous_vehicle_closes_only_after_its_inlet_stayed_within_20_v():
    v = Vehicle(CAR_800V, soc=0.2, plugged=True, autonomous=True)
    ocv = v.ocv_v
    for inlet_v in range(0, 921, 5):  # a cable-check ramp at 500 V/s (10 ms steps) passes through
        assert not v.watch_inlet(float(inlet_v), 0.01)
    for _ in range(49):
        assert not v.watch_inlet(ocv + 15.0, 0.01)
    assert not v.watch_inlet(ocv + 25.0, 0.01)  # left the band: starts again
    for _ in range(49):
        assert not v.watch_inlet(ocv - 15.0, 0.01)
    assert v.watch_inlet(ocv - 15.0, 0.01)  # 0.5 s within 20 V
    v.unplug()
    assert not v.contactors_closed and not v.watch_inlet(ocv, 1.0)
