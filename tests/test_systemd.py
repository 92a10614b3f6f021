"""The systemd units, the networkd file and the udev rules in systemd/ and deploy/udev/.

`systemd-analyze verify` and `systemd-analyze security --offline=yes` work without a running systemd.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"
SERVICE = SYSTEMD / "cabinet-edge.service"
CAN_UNIT = SYSTEMD / "cabinet-edge-can0.service"
CAN_NETWORK = SYSTEMD / "80-cabinet-edge-can0.network"
UDEV_RULES = REPO / "deploy" / "udev" / "99-cabinet-edge-rs485.rules"
UNITS = [SERVICE, CAN_UNIT]
MAX_EXPOSURE = 2.0
CAN_BITRATE_BPS = 125_000
CAN_RESTART_MS = 100

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")

# The daemon's executable exists only on an installed board; the copy under test points at one that
# exists here. Everything else verify says is a finding.
INSTALLED_EDGE = "/opt/cabinet-edge/current/bin/edge"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd unit syntax: sections, repeatable keys, comments; no continuation lines used here."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path.name}: key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def verify(unit_dir: Path, *names: str) -> list[str]:
    result = subprocess.run(
        [ANALYZE, "verify", "--man=no", *(str(unit_dir / n) for n in names)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if result.returncode != 0 and not findings:
        findings.append(f"systemd-analyze verify exited {result.returncode}")
    return findings


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    true = shutil.which("true") or "/bin/true"
    for unit in UNITS:
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED_EDGE, true))
    return tmp_path


@needs_analyze
def test_units_pass_systemd_analyze_verify(unit_copy: Path) -> None:
    assert verify(unit_copy, *(u.name for u in UNITS)) == []


@needs_analyze
@pytest.mark.parametrize(
    ("line", "broken"),
    [("Type=notify", "Type=notfy"), ("WatchdogSec=5s", "WatchdgSec=5s"), ("Restart=on-failure", "Restart=sometimes")],
)
def test_verify_check_catches_a_broken_line(unit_copy: Path, line: str, broken: str) -> None:
    """The check above would fail on a real mistake (verify itself exits 0 on most of them)."""
    unit = unit_copy / SERVICE.name
    text = unit.read_text()
    assert f"\n{line}\n" in text
    unit.write_text(text.replace(f"\n{line}\n", f"\n{broken}\n"))
    assert verify(unit_copy, SERVICE.name) != []


def exposure(unit: Path) -> float:
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no exposure level in:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1))


@needs_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_exposure_is_at_most_2_0(unit: Path) -> None:
    assert exposure(unit) <= MAX_EXPOSURE


def test_service_is_a_notify_service_with_watchdog_and_restart() -> None:
    s = parse_unit(SERVICE)["Service"]
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] and s["Restart"] == ["on-failure"] and s["RestartSec"]
    assert s["TimeoutStopSec"] and s["KillMode"] == ["mixed"]
    assert s["ExecStart"] == [f"{INSTALLED_EDGE} run --config /etc/cabinet-edge/config.toml"]


def test_service_runs_unprivileged_with_its_directories() -> None:
    s = parse_unit(SERVICE)["Service"]
    assert s["User"] == ["cabinet-edge"] and s["Group"] == ["cabinet-edge"]
    assert s["SupplementaryGroups"] == ["dialout"]
    assert s["StateDirectory"] == ["cabinet-edge"]
    assert s["ConfigurationDirectory"] == ["cabinet-edge"]
    assert s["RuntimeDirectory"] == ["cabinet-edge"]
    # group cabinet-edge must reach /run/cabinet-edge/edge.sock
    assert s["RuntimeDirectoryMode"] == ["0750"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["UMask"] == ["0027"]


def test_service_hardening_keeps_serial_can_and_network_usable() -> None:
    s = parse_unit(SERVICE)["Service"]
    families = " ".join(s["RestrictAddressFamilies"]).split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_CAN", "AF_NETLINK"} <= set(families)
    assert s["DevicePolicy"] == ["closed"]
    allowed = {entry.split()[0]: entry.split()[1] for entry in s["DeviceAllow"]}
    for device in ("char-ttyUSB", "char-ttyAMA", "char-ttyS"):
        assert allowed.get(device) == "rw", device
    # a private /dev has no /dev/ttyUSB*; a user namespace breaks SO_PEERCRED names and dialout
    assert s.get("PrivateDevices", ["no"]) == ["no"]
    assert s.get("PrivateUsers", ["no"]) == ["no"]
    assert "PrivateNetwork" not in s and "IPAddressDeny" not in s
    for key in ("ProtectSystem",):
        assert s[key] == ["strict"]
    for key in (
        "PrivateTmp",
        "ProtectHome",
        "NoNewPrivileges",
        "MemoryDenyWriteExecute",
        "LockPersonality",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
    ):
        assert s[key] == ["yes"], key
    assert "@system-service" in s["SystemCallFilter"]


def test_can_unit_and_networkd_file_agree_on_bitrate_and_restart() -> None:
    can = parse_unit(CAN_UNIT)
    env = dict(pair.split("=", 1) for pair in " ".join(can["Service"]["Environment"]).split())
    assert int(env["CAN_BITRATE"]) == CAN_BITRATE_BPS
    assert int(env["CAN_RESTART_MS"]) == CAN_RESTART_MS
    assert any("${CAN_BITRATE}" in cmd and "${CAN_RESTART_MS}" in cmd for cmd in can["Service"]["ExecStart"])
    assert can["Unit"]["BindsTo"] == ["sys-subsystem-net-devices-can0.device"]

    network = parse_unit(CAN_NETWORK)
    assert network["Match"]["Name"] == ["can0"]
    bitrate = network["CAN"]["BitRate"][0]
    assert bitrate.upper().endswith("K") and int(bitrate[:-1]) * 1000 == CAN_BITRATE_BPS
    assert network["CAN"]["RestartSec"] == [f"{CAN_RESTART_MS}ms"]


def _find_key(table: object, names: set[str]) -> list[object]:
    if isinstance(table, list):
        return [v for item in table for v in _find_key(item, names)]
    if isinstance(table, dict):
        found = [v for k, v in table.items() if k in names and not isinstance(v, dict)]
        for value in table.values():
            found += _find_key(value, names)
        return found
    return []


def test_shipped_config_example_uses_the_same_can_bitrate() -> None:
    example = REPO / "deploy" / "config.example.toml"
    if not example.exists():
        pytest.skip("deploy/config.example.toml is not in this checkout yet")
    config = tomllib.loads(example.read_text())
    rates = _find_key(config.get("can", config), {"bitrate", "bit_rate", "bitrate_bps"})
    assert rates, "the config example must name the CAN bit rate"
    assert all(int(r) == CAN_BITRATE_BPS for r in rates)  # type: ignore[call-overload]


UDEV_TOKEN = re.compile(r'^(?P<key>[A-Z_]+)(\{(?P<attr>[^}]+)\})?(?P<op>==|!=|\+=|-=|:=|=)"(?P<value>[^"]*)"$')
UDEV_KEYS = {
    "ACTION",
    "SUBSYSTEM",
    "SUBSYSTEMS",
    "KERNEL",
    "DRIVER",
    "DRIVERS",
    "ATTR",
    "ATTRS",
    "ENV",
    "GROUP",
    "MODE",
    "OWNER",
    "SYMLINK",
    "TAG",
    "GOTO",
    "LABEL",
    "RUN",
    "IMPORT",
}


def test_udev_rules_are_well_formed_and_cover_the_usual_adapters() -> None:
    labels, gotos = set(), set()
    for number, raw in enumerate(UDEV_RULES.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        for token in (t.strip() for t in line.split(", ")):
            match = UDEV_TOKEN.match(token)
            assert match, f"line {number}: cannot parse {token!r}"
            assert match["key"] in UDEV_KEYS, f"line {number}: unknown key {match['key']}"
            if match["key"] == "LABEL":
                labels.add(match["value"])
            if match["key"] == "GOTO":
                gotos.add(match["value"])
    assert gotos <= labels
    text = UDEV_RULES.read_text()
    for vendor in ("0403", "1a86", "10c4"):  # FTDI, WCH CH340/CH341, Silicon Labs CP210x
        assert f'ATTRS{{idVendor}}=="{vendor}"' in text
    assert 'GROUP="dialout"' in text and 'MODE="0660"' in text
    assert 'SYMLINK+="rs485-' in text
    assert 'ENV{ID_MM_DEVICE_IGNORE}="1"' in text
