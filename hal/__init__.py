"""Hardware access for cabinet-edge.

One small abstract class per kind of hardware (serial line, CAN bus, digital output, watchdog, clock),
each with a ``linux`` backend for the real board and a ``sim`` backend for the simulated cabinet and
tests. Backends are picked by configuration strings, never by ``if sim:`` branches in callers.
Digital outputs and the watchdog follow MicroPython's ``machine.Pin`` / ``machine.WDT`` names so that
code written against them ports to a safety MCU. hal imports nothing else of ours.
"""
