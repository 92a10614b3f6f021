"""`edge scan modbus` against simulated meters on a pty (RTU through pyserial) and on loopback TCP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from drivers.meters.models import ABB_B23, EM24, SDM630
from edge.config import parse_config
from edge.scan.modbus import modbus_command, parse_ids
from tests.conftest import free_port
from tests.meter_harness import ServerThread

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["rtu-pty", "tcp"])
def line(request: pytest.FixtureRequest) -> Iterator[tuple[ServerThread, list[str]]]:
    tcp = request.param == "tcp"
    with ServerThread([(SDM630, 1), (ABB_B23, 3), (EM24, 5)], tcp) as srv:
        args = ["--host", "127.0.0.1", "--tcp-port", str(srv.port)] if tcp else ["--port", srv.link.host_path]
        yield srv, args


def test_scan_finds_and_identifies_every_meter_and_prints_a_config_snippet_that_validates(line):
    _srv, args = line
    t0 = time.monotonic()
    result = CliRunner().invoke(modbus_command, [*args, "--ids", "1-6", "--timeout", "150"])
    elapsed = time.monotonic() - t0
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "3 devices answered" in out
    for dev, model in ((1, "sdm630"), (3, "abb_b23"), (5, "em24")):
        assert f'model = "{model}"' in out and f"device_id = {dev}" in out
    # bounded: three absent ids cost one timeout each, the found ones a few quick reads
    assert elapsed < 6 * 0.15 + 2.0
    snippet = out[out.index("# paste") :]
    cfg = parse_config('[cabinet]\nsite_id = "s"\ncabinet_id = "c"\n[[can]]\nname = "can0"\n' + snippet)
    assert [(m.device_id, m.model) for m in cfg.meters] == [(1, "sdm630"), (3, "abb_b23"), (5, "em24")]
    assert [m.role for m in cfg.meters] == ["grid", "charger", "charger"]
    assert "ids" in result.stderr  # the progress bar goes to stderr, not into the snippet


def test_scan_json_lists_found_ids_only(line):
    _srv, args = line
    result = CliRunner().invoke(modbus_command, [*args, "--ids", "2,3,4", "--timeout", "100", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(f["device_id"], f["model"]) for f in data["found"]] == [(3, "abb_b23")]


def test_scan_of_an_unreachable_gateway_fails_with_a_clear_message():
    port = free_port()
    result = CliRunner().invoke(
        modbus_command, ["--host", "127.0.0.1", "--tcp-port", str(port), "--ids", "1", "--timeout", "100"]
    )
    # what failed, on which host and port (it used to say "cannot open rs485", the default line name)
    assert (
        result.exit_code == 1 and f"cannot connect to Modbus TCP 127.0.0.1:{port}: Connection refused" in result.output
    )
    assert "rs485" not in result.output


def test_scan_refuses_bad_usage():
    runner = CliRunner()
    assert runner.invoke(modbus_command, ["--ids", "1-3"]).exit_code == 2
    bad = runner.invoke(modbus_command, ["--port", "/dev/null", "--ids", "0-300"])
    assert bad.exit_code == 2 and "ids are 1-247" in bad.output
    assert parse_ids("1,3,5-7") == [1, 3, 5, 6, 7]
