"""A null-modem cable between two pseudo-terminals (what ``socat pty,raw pty,raw`` does).

The simulated meter's pymodbus server opens one end, the daemon's pymodbus client the other, both
through real pyserial. In the middle the link can pace bytes at a baud rate (11 bits per character)
and inject faults: drop everything (a cut line) or flip a bit (a garbled frame -> CRC error). The
simulated server writes each reply in one piece, so one read from its end is one frame.
"""

from __future__ import annotations

import os
import select
import threading
import time

from hal.serial import PtyPair, char_time_s


class SerialLink:
    def __init__(self, pace_baudrate: int | None = None) -> None:
        self.device_end = PtyPair()  # the simulated device opens device_end.slave_path
        self.host_end = PtyPair()  # the daemon opens host_end.slave_path
        self.pace_baudrate = pace_baudrate
        self.cut = False
        self.garble_next = 0  # number of device->host frames to corrupt
        self.bytes_host_to_device = 0
        self.bytes_device_to_host = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-serial-link", daemon=True)

    @property
    def host_path(self) -> str:
        return self.host_end.slave_path

    @property
    def device_path(self) -> str:
        return self.device_end.slave_path

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        self.device_end.close()
        self.host_end.close()

    def _run(self) -> None:
        a, b = self.host_end.master_fd, self.device_end.master_fd
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([a, b], [], [], 0.05)
            except (OSError, ValueError):
                return
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                if self.cut or not data:
                    continue
                if fd == a:
                    self.bytes_host_to_device += len(data)
                    self._write(b, data)
                else:
                    if self.garble_next > 0 and len(data) > 2:
                        # flip one bit of the last byte (the CRC): header intact, CRC check fails
                        self.garble_next -= 1
                        data = data[:-1] + bytes([data[-1] ^ 0x10])
                    self.bytes_device_to_host += len(data)
                    self._write(a, data)

    def _write(self, fd: int, data: bytes) -> None:
        if self.pace_baudrate:
            # pace like a UART: a byte is delivered once its whole character time has passed
            t_char = char_time_s(self.pace_baudrate)
            start = time.monotonic()
            for i, byte in enumerate(data):
                due = start + (i + 1) * t_char
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                os.write(fd, bytes([byte]))
        else:
            os.write(fd, data)
