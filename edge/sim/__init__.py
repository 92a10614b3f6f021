"""The simulated cabinet: real protocol peers on pseudo-terminals and CAN buses, driven by a physics model.

Reached only through configuration and hal backends (pty paths, ``virtual`` CAN channels, sim pins);
no driver or control code branches on simulation.
"""
