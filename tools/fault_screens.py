"""What a technician sees for each fault: the simulator's fault knobs one at a time, on the two-connector
cabinet charging both cars (edge/sim/sim.toml; the sharing knobs on edge/sim/sim-sharing.toml), in simulated
time. For each knob: the `make run` status line and the `edge watch` screen of an 80x24 terminal, in English
(or ``--lang``), taken 3 s after the knob's fault appeared (12 s after the knob where it shows on a device line).
The knobs are the screen tests' (tests/test_screen.py and tests/test_screen_knobs.py), so this shows exactly
what those tests check. Prints Markdown; run from the checkout with its venv:

    .venv/bin/python tools/fault_screens.py [--lang zh_CN] > /tmp/fault_screens.md

Takes about a minute.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge import i18n
from edge.config import parse_config
from edge.render import HEIGHT, status_line, status_text
from edge.sim.stepper import SimStepper
from tests.test_screen import KNOBS as FIRST_KNOBS
from tests.test_screen import charge_both, sim_toml
from tests.test_screen_knobs import KNOBS, SHARING_KNOBS, WATER_TILT, _sharing_toml


def _charging(tmp: Path, sharing: bool) -> SimStepper:
    text = _sharing_toml(tmp) if sharing else sim_toml(tmp) + WATER_TILT
    return charge_both(SimStepper(parse_config(text), tmp / "data", step_s=0.05))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lang", default="en")
    args = ap.parse_args()
    i18n.use(args.lang)
    knobs = [(name, turn, None, False) for name, turn in FIRST_KNOBS.items()]
    knobs += [(name, turn, fault, False) for name, (turn, fault) in KNOBS.items()]
    knobs += [(name, turn, fault, True) for name, (turn, fault) in SHARING_KNOBS.items()]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, turn, fault, sharing) in enumerate(knobs):
            sim = _charging(Path(tmp) / str(i), sharing)
            try:
                turn(sim)
                if fault is None:
                    sim.run(12.0)
                    st = sim.cabinet.status()
                else:
                    sim.run_until(lambda s=sim, f=fault: f in s.cabinet.status()["faults"], 15.0, f"fault {fault}")
                    st = sim.cabinet.status()
                    sim.run(3.0)  # the currents settle (the output ramps down after a trip) ...
                    if fault in sim.cabinet.status()["faults"]:  # ... unless the fault went with its session
                        st = sim.cabinet.status()
                print(f"### `{name}`\n\n```\n$ make run                 (the status line)\n{status_line(st)}")
                print(f"$ edge watch               (80x24)\n{status_text(st, height=HEIGHT)}\n```\n")
            finally:
                sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
