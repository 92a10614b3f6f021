"""Test fixture, run as a separate process: simulated InfyPower modules and a cable monitor speaking the
ASCII slcan protocol (Lawicel) on the master side of a pseudo-terminal.

Framing as python-can's slcan.py reads and writes it: every command and frame ends with CR;
``Tiiiiiiiildd..`` extended data frame, ``tiiildd..`` standard, ``O``/``C`` open/close, ``Sn`` bit rate;
the adapter acknowledges a command with CR and refuses one with BEL.

    python -m tests.slcan_peer MASTER_FD MODULE_ADDRESS [MODULE_ADDRESS ...]
"""

from __future__ import annotations

import os
import select
import sys
import time

from drivers.cable.monitor import CableMonitor
from edge.sim.can_devices import InfyPersonality
from edge.sim.physics import ModuleModel

CABLE_PERIOD_S = 0.1


class Frame:
    """Just enough of can.Message for the personality: id, data, flags."""

    def __init__(self, arbitration_id: int, data: bytes, extended: bool) -> None:
        self.arbitration_id = arbitration_id
        self.data = data
        self.is_extended_id = extended
        self.is_remote_frame = False
        self.is_error_frame = False


def encode(arbitration_id: int, data: bytes) -> bytes:
    return f"T{arbitration_id:08X}{len(data)}{data.hex().upper()}\r".encode()


def main() -> None:
    fd = int(sys.argv[1])
    modules = {int(a): ModuleModel(int(a)) for a in sys.argv[2:]}
    personality = InfyPersonality()
    cable = CableMonitor("cable")
    buf = b""
    opened = False
    counter = 0
    next_cable = time.monotonic()
    while True:
        timeout = max(0.0, next_cable - time.monotonic())
        ready, _, _ = select.select([fd], [], [], timeout)
        out = b""
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the other side closed the tty
                return
            if not chunk:
                return
            buf += chunk
            while b"\r" in buf:
                line, buf = buf.split(b"\r", 1)
                text = line.decode(errors="replace")
                if not text:
                    continue
                if text[0] in "OLCS":
                    opened = text[0] in "OL" or (opened and text[0] == "S")
                    out += b"\r"
                elif text[0] == "T" and len(text) >= 10 and opened:
                    aid, dlc = int(text[1:9], 16), int(text[9])
                    frame = Frame(aid, bytes.fromhex(text[10 : 10 + 2 * dlc]), True)
                    if personality.from_controller(frame):
                        for rid, data in personality.handle(frame, modules):  # type: ignore[arg-type]
                            out += encode(rid, data)
                        for m in modules.values():
                            m.out_v, m.out_a = (m.set_v, m.set_a) if m.on else (0.0, 0.0)
                    out += b"z\r"  # slcan "transmitted" acknowledgement (ignored by python-can)
                else:
                    out += b"\a"
        if time.monotonic() >= next_cable:
            next_cable += CABLE_PERIOD_S
            if opened:
                values = {
                    "PinTempDcPlus": 40.0,
                    "PinTempDcMinus": 39.5,
                    "CoolantInletTemp": 25.0,
                    "CoolantOutletTemp": 28.0,
                    "RollingCounter": counter,
                }
                out += encode(*cable.encode("CABLE_TEMPS", values))
                counter = (counter + 1) % 16
        if out:
            os.write(fd, out)


if __name__ == "__main__":
    main()
