"""Config of hardware access: serial lines, CAN buses, digital outputs, watchdog."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge.config.base import Section

Name = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="short identifier: lower case, digits, - and _")


class SerialLine(Section):
    name: str = Name
    port: str = Field(description="device node, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class ModbusTcp(Section):
    name: str = Name
    host: str = Field(description="IP address or host name of the Modbus TCP device or gateway")
    port: int = Field(502, ge=1, le=65535)


class CanBus(Section):
    name: str = Name
    interface: str = Field("socketcan", description="python-can interface: socketcan, slcan, virtual, ...")
    channel: str = Field("can0", description="interface channel: can0, /dev/ttyACM0@115200, a virtual name")
    bitrate: Literal[125_000, 250_000, 500_000, 1_000_000] = 125_000
    rx_queue: int = Field(2048, ge=64, le=65536, description="frames buffered before the oldest is dropped")
    send_timeout_ms: int = Field(50, ge=1, le=1000)


class Outputs(Section):
    """Digital outputs. Pin ids are ``gpiochip0:17`` on linux, any name in sim. Every pin once (checked with
    the connectors' pins in ``edge/config/crosschecks.py``)."""

    backend: Literal["linux", "sim"] = "linux"
    contactor: str = Field(
        "gpiochip0:17",
        description="output contactor of a file without [[connector]]; with them unused (refused unless the default)",
    )
    pump: str = Field("gpiochip0:27", description="coolant pump")
    fan: str = Field("gpiochip0:22", description="cabinet fan")


class Watchdog(Section):
    backend: Literal["systemd", "dev", "sim"] = "systemd"
    timeout_ms: int = Field(5000, ge=200, le=60000, description="ms without a feed before a restart")
