"""Sim-daemon configs wired to a test broker (shared by the MQTT daemon and command tests)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import sim_config_text

SITE, CABINET = "sim-site", "sim-cab"
BASE = f"cabinet/{SITE}/{CABINET}"


def mqtt_sim_config(
    tmp: Path, port: int | None, interval_s: float = 0.2, mqtt_extra: str = "", limits: str = ""
) -> str:
    """The built-in sim config with the uplink pointed at ``port`` (``None``: uplink disabled)."""
    if port is None:
        mq = "[telemetry.mqtt]\nenabled = false"
    else:
        mq = (
            f'[telemetry.mqtt]\nhost = "127.0.0.1"\nport = {port}\nreconnect_min_s = 0.1\n'
            f"reconnect_max_s = 1.0\nkeepalive_s = 5\n{mqtt_extra}"
        )
    extra = f"{mq}\n\n[telemetry]\ninterval_s = {interval_s}\nrecord_s = {interval_s * 5}\n"
    if limits:
        extra += f"\n[limits]\n{limits}\n"
    # sim_config_text replaces the built-in tables that ``extra`` defines again
    return sim_config_text(tmp, extra)
