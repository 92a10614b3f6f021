"""The pure safety core. See core.py; runs unchanged under MicroPython."""
