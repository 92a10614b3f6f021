"""Serial lines (RS-485 for Modbus RTU): settings and timing rules.

The Modbus stack (pymodbus) opens its line through pyserial itself, so this module provides
:class:`SerialSettings` (one place for port and framing), the RTU timing rules, and for the simulator
:class:`PtyPair`: a pseudo-terminal pair whose slave path the daemon opens with real pyserial, so the
production code path is exercised byte for byte.
"""

from __future__ import annotations

import os
import tty
from dataclasses import dataclass

BITS_PER_CHAR = 11  # start + 8 data + parity (or 2nd stop) + stop, as Modbus RTU specifies


@dataclass(frozen=True)
class SerialSettings:
    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1


def char_time_s(baudrate: int) -> float:
    """Time on the wire for one RTU character."""
    return BITS_PER_CHAR / baudrate


def interframe_gap_s(baudrate: int) -> float:
    """Modbus RTU silent interval t3.5: 3.5 characters up to 19200 baud, fixed 1.75 ms above."""
    if baudrate > 19200:
        return 0.00175
    return 3.5 * char_time_s(baudrate)


def rtu_wire_time_s(baudrate: int, request_bytes: int, response_bytes: int) -> float:
    """Minimum time for one request/response exchange: both frames plus two t3.5 gaps."""
    return (request_bytes + response_bytes) * char_time_s(baudrate) + 2 * interframe_gap_s(baudrate)


class PtyPair:
    """A pseudo-terminal pair in raw mode: ``master_fd`` for the simulated device, ``slave_path`` for us.

    The slave end is kept open by the pair itself so that the line does not hang up between client
    reconnects (a closed pty slave makes the master read EIO).
    """

    def __init__(self) -> None:
        self.master_fd, self._slave_fd = os.openpty()
        tty.setraw(self.master_fd)
        tty.setraw(self._slave_fd)
        self.slave_path = os.ttyname(self._slave_fd)

    def close(self) -> None:
        for fd in (self.master_fd, self._slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass
