"""Logging: one line per event on stderr; syslog level prefixes when stderr goes to journald."""

from __future__ import annotations

import logging
import os
import sys
import time

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _OneLine(logging.Formatter):
    # times in UTC with the zone, the way the CLI prints every time (events, status header, expiries)
    converter = staticmethod(time.gmtime)
    default_time_format = "%Y-%m-%d %H:%M:%S"
    default_msec_format = "%s.%03d UTC"

    def __init__(self, journald: bool) -> None:
        fmt = "%(name)s: %(message)s" if journald else "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
        super().__init__(fmt)
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journald:
            # journald reads "<N>" as the priority; tracebacks stay one entry per line, all prefixed
            prio = _PRIORITY.get(record.levelno, 6)
            return "\n".join(f"<{prio}>{line}" for line in text.splitlines())
        return text


def setup_logging(level: str) -> None:
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(journald))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pymodbus", "can"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
