"""Hardware access for cabinet-edge.

One small abstract class per kind of hardware (CAN bus, digital output, watchdog, clock), each with a
``linux`` backend for the real board and a ``sim`` backend for the simulated cabinet and tests; serial
lines are settings and timing rules (pymodbus opens them through pyserial) plus a pty pair for the
simulator. Backends are picked by configuration strings (the clock is passed in), never by ``if sim:``
branches in callers.
Digital outputs and the watchdog follow MicroPython's ``machine.Pin`` / ``machine.WDT`` names so that
code written against them ports to a safety MCU. hal imports nothing else of ours.
"""
