"""cabinet-edge: the controller daemon (config, control loop, limits, telemetry, API, CLI, simulator)."""

__version__ = "0.1.0"
