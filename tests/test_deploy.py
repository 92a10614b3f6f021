"""deploy/install.sh into a temporary --prefix root: install, idempotence, config safety, updates with
rollback, uninstall; shellcheck on every deploy script; one real venv build from this source tree.

The scripts run from a copy of deploy/ and systemd/ in a temp dir, with a stand-in config example when
deploy/config.example.toml is not in this checkout (it is written on another branch).
"""

from __future__ import annotations

import configparser
import hashlib
import os
import pwd
import queue
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAND_IN_EXAMPLE = "# stand-in for deploy/config.example.toml\n[can]\nbitrate = 125000\n"
ROOT_UNITS = "etc/systemd/system"


class Installer:
    """deploy/install.sh from a private source tree, run against one --prefix root."""

    def __init__(self, tmp_path: Path) -> None:
        self.src = tmp_path / "src"
        for part in ("deploy", "systemd", "docs"):
            if (REPO / part).exists():
                shutil.copytree(REPO / part, self.src / part)
        example = self.src / "deploy" / "config.example.toml"
        if not example.exists():
            example.write_text(STAND_IN_EXAMPLE)
        self.example = example
        self.root = tmp_path / "root"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CABINET_EDGE_")}

    def run(
        self, *args: str, ready: str | None = "true", edge: str | None = None, check: bool = True, prefix: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if ready is not None:
            env["CABINET_EDGE_READY_CMD"] = ready
        if edge is not None:
            env["CABINET_EDGE_EDGE"] = edge
        cmd = ["bash", str(self.src / "deploy" / "install.sh")]
        if prefix:
            cmd += ["--prefix", str(self.root)]
        result = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=120, check=False)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def install(self, version: str = "1.0", *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.run("--skip-venv", "--version", version, "--settle", "0", "--ready-timeout", "0", *args, **kw)  # type: ignore[arg-type]

    def path(self, rel: str) -> Path:
        return self.root / rel

    def current(self) -> str:
        return os.readlink(self.path("opt/cabinet-edge/current"))

    def host_actions(self) -> list[str]:
        log = self.path("var/log/cabinet-edge-install.host-actions")
        return log.read_text().splitlines() if log.exists() else []

    def accounts(self, name: str) -> dict[str, list[str]]:
        file = self.path(f"etc/{name}")
        lines = file.read_text().splitlines() if file.exists() else []
        return {line.split(":")[0]: line.split(":") for line in lines}

    def with_config(self, text: str = "# site config\n") -> Path:
        config = self.path("etc/cabinet-edge/config.toml")
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(text)
        return config


@pytest.fixture
def inst(tmp_path: Path) -> Installer:
    return Installer(tmp_path)


def tree_state(root: Path) -> dict[str, tuple[str, ...]]:
    """Every path below root with its type, mode and content hash or link target."""
    state: dict[str, tuple[str, ...]] = {}
    if not root.exists():
        return state
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        mode = oct(stat.S_IMODE(st.st_mode))
        if path.is_symlink():
            state[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            state[rel] = ("dir", mode)
        else:
            state[rel] = ("file", mode, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def fake_edge(tmp_path: Path, check_exit: int) -> str:
    """An `edge` whose `config check` answers with check_exit (2 = invalid config)."""
    script = tmp_path / f"edge-{check_exit}"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2" = "config check" ] || exit 64\n'
        '[ "$3" = "--help" ] && exit 0\n'
        f'echo "$3: checked"; exit {check_exit}\n'
    )
    script.chmod(0o755)
    return str(script)


# ---- fresh install ------------------------------------------------------------------------------------


def test_install_creates_users_and_groups(inst: Installer) -> None:
    inst.install()
    passwd, group = inst.accounts("passwd"), inst.accounts("group")
    user = passwd["cabinet-edge"]
    assert user[5] == "/var/lib/cabinet-edge" and user[6] == "/usr/sbin/nologin"
    assert int(user[2]) < 1000, "system user"
    assert user[3] == group["cabinet-edge"][2], "primary group cabinet-edge"
    assert "cabinet-edge-admin" in group
    assert "cabinet-edge" in group["dialout"][3].split(",")


def test_install_places_release_units_udev_config_and_data_dir(inst: Installer) -> None:
    inst.install()
    assert inst.current() == "releases/1.0"
    assert inst.path("opt/cabinet-edge/releases/1.0/.cabinet-edge-release").read_text().strip() == "version=1.0"
    assert os.readlink(inst.path("usr/local/bin/edge")) == "/opt/cabinet-edge/current/bin/edge"
    for unit in ("cabinet-edge.service", "cabinet-edge-can0.service"):
        assert inst.path(f"{ROOT_UNITS}/{unit}").read_bytes() == (REPO / "systemd" / unit).read_bytes()
    assert inst.path(f"{ROOT_UNITS}/multi-user.target.wants/cabinet-edge.service").is_symlink()
    assert inst.path(f"{ROOT_UNITS}/sys-subsystem-net-devices-can0.device.wants/cabinet-edge-can0.service").is_symlink()
    assert not inst.path("etc/systemd/network/80-cabinet-edge-can0.network").exists()
    rules = inst.path("etc/udev/rules.d/99-cabinet-edge-rs485.rules")
    assert rules.read_bytes() == (REPO / "deploy/udev/99-cabinet-edge-rs485.rules").read_bytes()
    config = inst.path("etc/cabinet-edge/config.toml")
    assert config.read_text() == inst.example.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE(inst.path("etc/cabinet-edge").stat().st_mode) == 0o750
    assert stat.S_IMODE(inst.path("var/lib/cabinet-edge").stat().st_mode) == 0o750
    actions = inst.host_actions()
    assert "systemctl daemon-reload" in actions and "udevadm control --reload" in actions


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl is not installed")
def test_prefix_enable_makes_the_links_systemctl_enable_makes(inst: Installer, tmp_path: Path) -> None:
    inst.install()
    reference = tmp_path / "reference"
    (reference / ROOT_UNITS).mkdir(parents=True)
    units = ["cabinet-edge.service", "cabinet-edge-can0.service", "cabinet-edge-update.path"]
    for unit in units:
        shutil.copy(REPO / "systemd" / unit, reference / ROOT_UNITS / unit)
    subprocess.run(["systemctl", f"--root={reference}", "enable", *units], capture_output=True, timeout=60, check=True)

    def links(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): os.readlink(p) for p in (root / ROOT_UNITS).rglob("*") if p.is_symlink()}

    assert links(inst.root) == links(reference)


def test_fresh_install_with_new_config_does_not_start_the_service(inst: Installer) -> None:
    out = inst.install().stdout
    assert "edit" in out and not any("restart" in a for a in inst.host_actions())


def test_install_prints_can_hat_overlay_instructions(inst: Installer) -> None:
    out = inst.install().stdout
    assert "dtoverlay=mcp2515-can0,oscillator=" in out and "interrupt=25" in out
    assert "/boot/firmware/config.txt" in out


def test_networkd_can_mode_ships_the_network_file_instead_of_the_unit(inst: Installer) -> None:
    inst.install()
    inst.install("1.0", "--can", "networkd")
    assert inst.path("etc/systemd/network/80-cabinet-edge-can0.network").exists()
    assert not inst.path(f"{ROOT_UNITS}/cabinet-edge-can0.service").exists()
    assert not list(inst.root.rglob("*.wants/cabinet-edge-can0.service"))
    assert "systemctl enable --now systemd-networkd.service" in inst.host_actions()


# ---- dry run and idempotence -------------------------------------------------------------------------


def test_dry_run_on_an_empty_root_changes_nothing(inst: Installer) -> None:
    out = inst.install("1.0", "--dry-run").stdout
    assert not inst.root.exists()
    assert "[dry-run] append to" in out and "cabinet-edge:x:" in out
    assert "[dry-run] systemctl daemon-reload" in out


def test_dry_run_on_an_installed_root_changes_nothing(inst: Installer) -> None:
    inst.install("1.0")
    before = tree_state(inst.root)
    inst.install("2.0", "--dry-run")
    inst.run("--uninstall", "--purge", "--dry-run")
    assert tree_state(inst.root) == before


def test_second_install_changes_nothing(inst: Installer) -> None:
    inst.install()
    before = tree_state(inst.root)
    out = inst.install().stdout
    assert tree_state(inst.root) == before
    assert "\n+ " not in out, "no command should have run"


# ---- config safety -----------------------------------------------------------------------------------


def test_existing_config_is_never_overwritten_and_example_goes_beside(inst: Installer) -> None:
    config = inst.with_config("# the site's own config\n[meters]\nport = '/dev/rs485-grid'\n")
    original = config.read_bytes()
    inst.install()
    assert config.read_bytes() == original
    assert inst.path("etc/cabinet-edge/config.toml.example").read_text() == inst.example.read_text()


def test_invalid_config_stops_an_update_before_switching(inst: Installer, tmp_path: Path) -> None:
    inst.with_config()
    inst.install("1.0", edge=fake_edge(tmp_path, 0))
    result = inst.install("2.0", edge=fake_edge(tmp_path, 2), check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not valid" in result.stderr
    assert inst.current() == "releases/1.0"


# ---- updates and rollback ----------------------------------------------------------------------------


def test_update_switches_current_restarts_and_keeps_config_and_data(inst: Installer) -> None:
    config = inst.with_config()
    inst.install("1.0")
    store = inst.path("var/lib/cabinet-edge/telemetry.sqlite")
    store.write_bytes(b"records")
    out = inst.install("2.0").stdout
    assert inst.current() == "releases/2.0"
    assert os.readlink(inst.path("opt/cabinet-edge/previous")) == "releases/1.0"
    assert config.read_text() == "# site config\n" and store.read_bytes() == b"records"
    assert inst.host_actions().count("systemctl restart cabinet-edge.service") == 2
    assert "is up with release 2.0" in out


def test_update_that_never_gets_ready_rolls_back(inst: Installer) -> None:
    inst.with_config()
    inst.install("1.0")
    result = inst.install("2.0", ready='[ "$CABINET_EDGE_RELEASE" != 2.0 ]', check=False)
    assert result.returncode == 3, result.stdout + result.stderr
    assert inst.current() == "releases/1.0"
    assert "rolled back to 1.0" in result.stderr
    # restart 1.0 (install), restart 2.0 (update), restart 1.0 (rollback)
    assert inst.host_actions().count("systemctl restart cabinet-edge.service") == 3
    # the failed release stays for diagnosis; running the update again retries it
    assert inst.path("opt/cabinet-edge/releases/2.0").is_dir()


def test_update_waits_for_readiness_within_the_timeout(inst: Installer, tmp_path: Path) -> None:
    """The service becomes ready on the second look: the update waits for it and succeeds."""
    inst.with_config()
    inst.install("1.0")
    marker = tmp_path / "looked-once"
    ready = f"[ -e {marker} ] || {{ touch {marker}; exit 1; }}"
    result = inst.run("--skip-venv", "--version", "2.0", "--settle", "0", "--ready-timeout", "5", ready=ready)
    assert inst.current() == "releases/2.0" and marker.exists(), result.stdout


def test_rollback_command_switches_to_the_previous_release(inst: Installer) -> None:
    inst.with_config()
    inst.install("1.0")
    inst.install("2.0")
    inst.run("--rollback", "--settle", "0", "--ready-timeout", "0")
    assert inst.current() == "releases/1.0"
    assert os.readlink(inst.path("opt/cabinet-edge/previous")) == "releases/2.0"


def test_old_releases_are_pruned_but_current_and_previous_kept(inst: Installer) -> None:
    inst.with_config()
    for version in ("1.0", "2.0", "3.0", "4.0"):
        inst.install(version, "--keep", "3")
    releases = sorted(p.name for p in inst.path("opt/cabinet-edge/releases").iterdir())
    assert releases == ["2.0", "3.0", "4.0"]


# ---- uninstall ---------------------------------------------------------------------------------------


def test_uninstall_keeps_config_data_and_accounts(inst: Installer) -> None:
    config = inst.with_config()
    inst.install()
    store = inst.path("var/lib/cabinet-edge/telemetry.sqlite")
    store.write_bytes(b"records")
    inst.run("--uninstall")
    assert config.read_text() == "# site config\n" and store.read_bytes() == b"records"
    assert not inst.path("opt/cabinet-edge").exists()
    assert not inst.path(f"{ROOT_UNITS}/cabinet-edge.service").exists()
    assert not list(inst.root.rglob("*.wants/cabinet-edge*"))
    assert not inst.path("etc/udev/rules.d/99-cabinet-edge-rs485.rules").exists()
    assert not inst.path("usr/local/bin/edge").is_symlink()
    assert "cabinet-edge" in inst.accounts("passwd")


def test_uninstall_purge_removes_config_data_and_accounts(inst: Installer) -> None:
    inst.install()
    inst.run("--uninstall", "--purge")
    assert not inst.path("etc/cabinet-edge").exists() and not inst.path("var/lib/cabinet-edge").exists()
    group = inst.accounts("group")
    assert "cabinet-edge" not in inst.accounts("passwd")
    assert "cabinet-edge" not in group and "cabinet-edge-admin" not in group
    assert group["dialout"][3] == ""


def test_install_after_uninstall_keeps_the_old_config(inst: Installer) -> None:
    config = inst.with_config()
    inst.install()
    inst.run("--uninstall")
    inst.install()
    assert config.read_text() == "# site config\n" and inst.current() == "releases/1.0"


# ---- misuse ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [("--bogus",), ("--purge",), ("--can", "wifi"), ("--ready-timeout", "soon")], ids=str)
def test_bad_options_are_refused(inst: Installer, args: tuple[str, ...]) -> None:
    result = inst.run(*args, check=False)
    assert result.returncode == 64 and "ERROR" in result.stderr


def test_skip_venv_is_refused_without_prefix(inst: Installer) -> None:
    result = inst.run("--skip-venv", "--dry-run", prefix=False, check=False)
    assert result.returncode == 64


def test_real_install_without_root_is_refused(inst: Installer) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: the check only applies to other users")
    result = inst.run("--no-apt", prefix=False, check=False)
    assert result.returncode != 0 and "run as root" in result.stderr


# ---- shellcheck --------------------------------------------------------------------------------------

SHELL_SCRIPTS = sorted((REPO / "deploy").glob("*.sh"))


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)"
)
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_are_shellcheck_clean(script: Path) -> None:
    result = subprocess.run(
        ["shellcheck", "--severity=style", str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout


def test_install_script_is_strict_bash() -> None:
    text = (REPO / "deploy" / "install.sh").read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert os.access(REPO / "deploy" / "install.sh", os.X_OK)


# ---- a real venv -------------------------------------------------------------------------------------


def build_wheel_of_this_tree(out: Path) -> Path:
    """A pure-Python wheel of this checkout, built with the standard library only (the build backend
    would need network). Name, version, packages and console scripts come from setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    name, version = cfg["metadata"]["name"], cfg["metadata"]["version"]
    dist = f"{name.replace('-', '_')}-{version}"
    wheel = out / f"{dist}-py3-none-any.whl"
    packages = [p.strip().rstrip(".*") for p in cfg["options.packages.find"]["include"].split() if "*" not in p]
    with zipfile.ZipFile(wheel, "w") as zf:
        for package in packages:
            if not (REPO / package).is_dir():
                continue
            for file in sorted((REPO / package).rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts:
                    zf.write(file, str(file.relative_to(REPO)))
        zf.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(
            f"{dist}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(
            f"{dist}.dist-info/entry_points.txt",
            "[console_scripts]\n" + cfg["options.entry_points"]["console_scripts"].strip() + "\n",
        )
        records = [*zf.namelist(), f"{dist}.dist-info/RECORD"]
        zf.writestr(f"{dist}.dist-info/RECORD", "".join(f"{r},,\n" for r in records))
    return wheel


@pytest.mark.timeout(120)
def test_install_builds_a_real_venv_from_this_source_tree(inst: Installer, tmp_path: Path) -> None:
    python = getattr(sys, "_base_executable", sys.executable)
    probe = subprocess.run([python, "-m", "ensurepip", "--version"], capture_output=True, timeout=30, check=False)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot create venvs with pip (Debian: apt-get install python3-venv)")
    wheel = build_wheel_of_this_tree(tmp_path)
    # --no-deps --no-index: no network in tests; the dependencies are pip's job on the board.
    # Without the dependencies the real `edge config check` cannot run, so a stand-in answers it.
    inst.run(
        "--wheel",
        str(wheel),
        "--python",
        python,
        "--pip-arg=--no-deps",
        "--pip-arg=--no-index",
        "--settle",
        "0",
        "--ready-timeout",
        "0",
        edge=fake_edge(tmp_path, 0),
    )
    version = wheel.name.split("-")[1]
    release = inst.path(f"opt/cabinet-edge/releases/{version}")
    assert inst.current() == f"releases/{version}"
    assert (release / "bin" / "edge").exists(), "console script from setup.cfg"
    result = subprocess.run(
        [str(release / "bin" / "python"), "-c", "import hal, drivers, sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == release


# ---- mosquitto bridge example ------------------------------------------------------------------------

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)


def bridge_config_for_test(tmp_path: Path, text: str) -> Path:
    """The example with local paths, a free loopback port and a closed loopback port as the cloud."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "passwd").write_text("")
    text = (
        text.replace("/etc/mosquitto/cabinet-edge.passwd", str(tmp_path / "passwd"))
        .replace("persistence true", "persistence false")
        .replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")
        .replace("broker.example.com:8883", "127.0.0.1:1")
    )
    # As root mosquitto drops to user "mosquitto", which cannot enter pytest's private tmp dir.
    text = f"user {pwd.getpwuid(os.getuid()).pw_name}\n" + text
    conf = tmp_path / "bridge.conf"
    conf.write_text(text)
    return conf


def mosquitto_accepts(conf: Path) -> tuple[bool, str]:
    """Start mosquitto on conf; True once it reports running, False when it exits first."""
    assert MOSQUITTO
    proc = subprocess.Popen(
        [MOSQUITTO, "-v", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # exited

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + 15
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                return False, "".join(seen)
            seen.append(line)
            if " running" in line:
                return True, "".join(seen)
        return False, "timeout\n" + "".join(seen)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        reader.join(timeout=5)
        if proc.stdout:
            proc.stdout.close()


BRIDGE_EXAMPLE = REPO / "deploy" / "mosquitto-bridge.conf.example"


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (make test installs it)")
def test_mosquitto_bridge_example_is_accepted_by_mosquitto(tmp_path: Path) -> None:
    ok, log = mosquitto_accepts(bridge_config_for_test(tmp_path, BRIDGE_EXAMPLE.read_text()))
    assert ok, log
    assert "local SUBSCRIBE on topic cabinet/SITE/CABINET/telemetry" in log


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (make test installs it)")
def test_mosquitto_check_notices_a_broken_line(tmp_path: Path) -> None:
    text = BRIDGE_EXAMPLE.read_text().replace("cleansession false", "cleansession perhaps")
    ok, _ = mosquitto_accepts(bridge_config_for_test(tmp_path, text))
    assert not ok


def test_bridge_sends_telemetry_out_and_commands_in_without_echo() -> None:
    topics = [line.split()[1:] for line in BRIDGE_EXAMPLE.read_text().splitlines() if line.startswith("topic ")]
    directions = {topic: direction for topic, direction, *_ in topics}
    assert directions["cabinet/SITE/CABINET/telemetry"] == "out"
    assert directions["cabinet/SITE/CABINET/cmd/#"] == "in"
    assert "both" not in directions.values()
    assert all(qos == "1" for *_, qos in topics)


def test_deploy_doc_mentions_only_options_install_sh_has() -> None:
    doc = (REPO / "docs" / "DEPLOY.md").read_text()
    usage = subprocess.run(
        ["bash", str(REPO / "deploy" / "install.sh"), "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    install_lines = [line for line in doc.splitlines() if "install.sh" in line or line.startswith("--")]
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", "\n".join(install_lines)))
    options -= {"--no-index", "--find-links"}  # pip's, passed through --pip-arg
    assert options, "the doc shows install.sh options"
    assert {o for o in options if o not in usage} == set()
