"""The simulated cabinet's devices reachable from another terminal, so that ``edge scan`` works against
``edge run --sim`` (docs/SIM.md, "Scanning the simulator").

The daemon holds the simulator's RS-485 pseudo-terminal, and the simulated CAN bus is a python-can
``virtual`` channel inside the process: a scan from outside could reach neither. So while the simulator
runs with ``scan_access``:

- every meter line is also served over Modbus TCP on 127.0.0.1 (same simulated meters, same registers):
  ``edge scan modbus --host 127.0.0.1 --tcp-port N``;
- every CAN bus is bridged to an slcan adapter (the ASCII Lawicel protocol) on a pseudo-terminal:
  ``edge scan can --interface slcan --channel /dev/pts/N``; a frame on the bus goes out on the tty, a frame
  written to the tty goes onto the bus (the modules answer a scan's read requests as on a real bus).
"""

from __future__ import annotations

import os
import select
import socket
import threading

import can

from hal.serial import PtyPair

SCAN_MODBUS_PORT = 1502  # first choice for the simulator's Modbus TCP mirror (any free port when taken)


def tcp_port(preferred: int) -> int:
    """``preferred`` when it is free on 127.0.0.1 (the port docs/SIM.md shows), else any free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free TCP port on 127.0.0.1")


_OK, _ERROR = b"\r", b"\a"


def encode(msg: can.Message) -> bytes:
    """One slcan frame line: ``T`` + 8 hex id (extended) or ``t`` + 3 hex id, the length, the data."""
    ident = f"T{msg.arbitration_id:08X}" if msg.is_extended_id else f"t{msg.arbitration_id:03X}"
    return f"{ident}{len(msg.data)}{bytes(msg.data).hex().upper()}\r".encode()


def decode(line: str) -> can.Message | None:
    """A ``T``/``t`` frame line as a message, None when it is not one (or is garbled)."""
    extended = line[:1] == "T"
    width = 8 if extended else 3
    try:
        ident, dlc = int(line[1 : 1 + width], 16), int(line[1 + width])
        data = bytes.fromhex(line[2 + width : 2 + width + 2 * dlc])
    except (ValueError, IndexError):
        return None
    if len(data) != dlc or line[:1] not in ("T", "t"):
        return None
    return can.Message(arbitration_id=ident, data=data, is_extended_id=extended)


class SlcanBridge:
    """An slcan adapter on a pseudo-terminal whose CAN side is the simulator's virtual channel."""

    def __init__(self, bus_name: str, channel: str) -> None:
        self.bus_name = bus_name
        self.pty = PtyPair()
        os.set_blocking(self.pty.master_fd, False)  # a scan that died mid-way must not block the bridge
        self.bus = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        self.frames_to_tty = 0
        self.frames_from_tty = 0
        self._open = False  # the adapter forwards frames between "O" (open) and "C" (close), as a real one
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sim-slcan-{bus_name}", daemon=True)

    @property
    def path(self) -> str:
        return self.pty.slave_path

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        self.bus.shutdown()
        self.pty.close()

    def _run(self) -> None:
        fd, buf = self.pty.master_fd, b""
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([fd], [], [], 0.01)
                chunk = os.read(fd, 4096) if ready else b""
            except BlockingIOError:
                chunk = b""
            except OSError:
                return
            buf += chunk
            while b"\r" in buf:
                line, buf = buf.split(b"\r", 1)
                self._command(line.decode("ascii", errors="replace"))
            self._to_tty()

    def _command(self, line: str) -> None:
        if not line:
            return
        kind = line[0]
        if kind in "OL":
            self._open = True
        elif kind == "C":
            self._open = False
        elif kind in "Tt" and self._open:
            msg = decode(line)
            if msg is None:
                self._write(_ERROR)
                return
            self.bus.send(msg)
            self.frames_from_tty += 1
            self._write(b"z\r" if kind == "t" else b"Z\r")  # "transmitted"
            return
        elif kind not in "SsFZMmVvN":
            self._write(_ERROR)
            return
        self._write(_OK)

    def _to_tty(self) -> None:
        while (msg := self.bus.recv(timeout=0)) is not None:
            if self._open and not msg.is_error_frame and not msg.is_remote_frame:
                self._write(encode(msg))
                self.frames_to_tty += 1

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.pty.master_fd, data)
        except OSError:
            pass  # nobody reads the tty: a real adapter drops frames then too
