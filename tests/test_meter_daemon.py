"""The daemon's meter wiring: a generic meter behind a Modbus TCP gateway next to the RTU grid meter."""

from __future__ import annotations

from tests.conftest import wait_for

GATEWAY = """
[[modbus_tcp]]
name = "gw"
host = "192.0.2.1"             # replaced by the simulator's loopback server

[[meters]]
name = "sub"
model = "generic"
line = "gw"
device_id = 9
role = "charger"
poll_ms = 200
rejects_gaps = true
[[meters.registers]]
signal = "Current.Import.L1"
address = 0x0010
function_code = 3
type = "s32"
word_order = "little"
scale = 0.001
unit = "A"
[[meters.registers]]
signal = "Energy.Active.Import.Register"
address = 0x0040
function_code = 3
type = "u64"
scale = 0.01
unit = "kWh"
"""


def test_daemon_reads_rtu_grid_meter_and_generic_tcp_meter_with_status(sim_daemon):
    d = sim_daemon(GATEWAY)

    def both() -> bool:
        r = d.status()["readings"]
        want = (
            "grid.Current.Import.L1",
            "grid.Voltage.L3",
            "sub.Current.Import.L1",
            "sub.Energy.Active.Import.Register",
        )
        return all(s in r and r[s]["quality"] == "ok" for s in want)

    wait_for(both, timeout=10, what=f"readings from both meters\n{d.log()}")
    status = d.status()
    assert status["meters"]["sub"]["ok"] and status["meters"]["grid"]["ok"]
    assert status["readings"]["sub.Energy.Active.Import.Register"]["unit"] == "kWh"
    # the same simulated grid feeds both meters: the generic table decodes the same current
    grid_a = status["readings"]["grid.Current.Import.L1"]["value"]
    assert abs(status["readings"]["sub.Current.Import.L1"]["value"] - grid_a) < 1.0
