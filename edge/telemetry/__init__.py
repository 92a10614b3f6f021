"""Telemetry: sampler (aggregate per interval) -> store (SQLite WAL) -> uplink (MQTT, acked delete)."""
