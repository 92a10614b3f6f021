"""Config of the telemetry store and the MQTT uplink."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge.config.base import Section


class Tls(Section):
    enabled: bool = False
    ca_file: str | None = Field(None, description="CA bundle to verify the broker; system CAs when empty")
    cert_file: str | None = Field(None, description="client certificate (PEM) for mutual TLS")
    key_file: str | None = Field(None, description="client private key (PEM)")
    insecure: bool = Field(False, description="skip host name check: lab use only")


class Mqtt(Section):
    enabled: bool = Field(True, description="false keeps everything in the store")
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "5"
    client_id: str | None = Field(None, description="defaults to edge-<site>-<cabinet>")
    username: str | None = None
    password: str | None = Field(None, description="secret: redacted in diagnostics")
    keepalive_s: int = Field(30, ge=5, le=1200, description="the broker sends the last will after 1.5x this")
    session_expiry_s: int = Field(
        604800,
        ge=0,
        le=4294967295,
        description="MQTT 5: the broker keeps our session (queued commands, "
        "unacknowledged messages) this long while we are offline; 7 days",
    )
    command_max_skew_s: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="a command whose t_ms is further ahead of the cabinet's clock than this is rejected",
    )
    topic_prefix: str = Field("cabinet", pattern=r"^[A-Za-z0-9_\-/]+$")
    max_inflight: int = Field(20, ge=1, le=1000, description="QoS 1 messages awaiting PUBACK")
    batch_samples: int = Field(200, ge=1, le=10000, description="samples per telemetry message when replaying")
    reconnect_min_s: float = Field(1.0, ge=0.1, le=60)
    reconnect_max_s: float = Field(120.0, ge=1, le=3600)
    tls: Tls = Tls()


# Deadband per unit (report by exception): a value is sent again once it moved more than this.
DEADBAND_BY_UNIT: dict[str, float] = {
    "°C": 0.5,
    "V": 1.0,
    "A": 0.5,
    "l/min": 0.05,
    "kWh": 0.01,
    "W": 100.0,
    "Hz": 0.02,
    "bar": 0.05,
    "-": 0.01,
}


class Sparkplug(Section):
    """Used when the telemetry goes out as Sparkplug B (docs/SPARKPLUG.md)."""

    group_id: str | None = Field(
        None, pattern=r"^[^/+#]{1,64}$", description="Sparkplug group id (topic level); defaults to site_id"
    )
    edge_node_id: str | None = Field(
        None, pattern=r"^[^/+#]{1,64}$", description="Sparkplug edge node id (topic level); defaults to cabinet_id"
    )
    data_qos: Literal[0, 1] = Field(
        0,
        description="QoS of births and data: 0 as Sparkplug 3.0 prescribes; 1 = a record leaves the store "
        "only after the broker's PUBACK",
    )


class Telemetry(Section):
    format: Literal["v2", "v1", "sparkplug_b"] = Field(
        "v2",
        description="wire format: v2 compact (report by exception, MessagePack, zlib), v1 JSON as before, "
        "sparkplug_b (docs/TELEMETRY.md)",
    )
    deadband_by_unit: dict[str, float] = Field(
        default_factory=lambda: dict(DEADBAND_BY_UNIT),
        description="v2: report a signal again once it moved more than this, per unit; units not listed: "
        "deadband_default",
    )
    deadband: dict[str, float] = Field(
        default_factory=dict,
        description='v2: per-signal deadband overriding the unit\'s, e.g. {"grid.Frequency" = 0.01}',
    )
    deadband_default: float = Field(
        0.0, ge=0, description="v2: deadband of units not in deadband_by_unit (0: every change)"
    )
    keyframe_s: float = Field(
        300.0, ge=1, le=86400, description="v2: every signal is sent in full this often, s (and on every connect)"
    )
    record_s: float = Field(
        10.0,
        ge=0.1,
        le=600,
        description="v2: intervals collected into one stored record, s (telemetry leaves up to this much later; "
        "events at once)",
    )
    interval_s: float = Field(1.0, ge=0.1, le=3600, description="aggregation interval of samples, s")
    store_max_mb: float = Field(
        256.0, ge=1, le=100000, description="size bound of the store, MB; oldest telemetry goes first"
    )
    min_free_mb: float = Field(
        64.0,
        ge=0,
        le=100000,
        description="free disk space, MB, below which new telemetry is dropped "
        "(events still kept) and telemetry_store_error raised; 0 = off",
    )
    mqtt: Mqtt = Mqtt()
    sparkplug: Sparkplug = Sparkplug()
