"""The daemon: the process lifecycle of one cabinet built by :func:`edge.build.build`.

Lifecycle guarantees:
- SIGTERM / SIGINT: modules off, contactor open, store flushed, exit 0 (well within 2 s).
- SIGUSR1: every thread's stack to stderr (the journal), nothing else changes (a hang's diagnosis).
- Any unhandled error in a cabinet task: modules off, contactor open, traceback logged, exit 1, so
  systemd restarts us; power modules switch off on their own if we go silent.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import signal
import sys

from edge import __version__
from edge.build import Backends, build
from edge.cabinet import Cabinet
from edge.config import Config

log = logging.getLogger("edge.daemon")
GIL_SWITCH_S = 0.001


class Daemon:
    def __init__(self, config: Config, backends: Backends | None = None, status_line: bool = False) -> None:
        self.cabinet: Cabinet = build(config, backends)
        self.status_line = status_line
        self.stopping = asyncio.Event()

    async def run(self) -> int:
        cab = self.cabinet
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        # A daemon that stops answering (a stuck thread, a lock held for ever) is diagnosed where it runs:
        # `kill -USR1 <pid>` writes every thread's stack to stderr (the journal) and the daemon goes on.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        cab.start(loop)
        # everything built so far lives as long as the process: out of the collector's way, so a full
        # collection scans only what the running daemon allocates (shorter GC pauses inside a tick)
        gc.freeze()
        # the telemetry and CAN threads hold the GIL for up to the switch interval before the loop gets it
        # back: 1 ms instead of Python's 5 ms keeps a safety evaluation from waiting behind a drain step
        sys.setswitchinterval(GIL_SWITCH_S)
        cab.event("started", "daemon", {"version": __version__})
        tasks = [asyncio.create_task(coro, name=name) for name, coro in cab.tasks(self.status_line).items()]
        control = asyncio.create_task(cab.controller.run(self.stopping), name="control")
        cab.controller.evaluate_now()
        cab.wdt.ready()
        cab.wdt.status("running")
        code = 0
        try:
            done, _ = await asyncio.wait([control, *tasks], return_when=asyncio.FIRST_COMPLETED)
            code = max((_crashed(t) for t in done), default=0)
        finally:
            cab.wdt.stopping()
            cab.fail_safe()
            for t in [control, *tasks]:
                t.cancel()
            await asyncio.gather(control, *tasks, return_exceptions=True)
            cab.flush_telemetry()
            cab.event("stopped", "daemon", {"exit_code": code})
            cab.close()
        return code


def _crashed(task: asyncio.Task[None]) -> int:
    """1 (and the traceback in the journal) when ``task`` ended with an error, else 0."""
    exc = task.exception() if not task.cancelled() else None
    if exc is None:
        return 0
    log.error(
        "fatal error in %s; outputs off, contactor open", task.get_name(), exc_info=(type(exc), exc, exc.__traceback__)
    )
    return 1


def run_daemon(config: Config, backends: Backends | None = None, status_line: bool = False) -> int:
    async def main() -> int:
        # built inside the loop: pymodbus clients bind to the running loop when created
        return await Daemon(config, backends, status_line).run()

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("daemon failed to start or stop cleanly")
        sys.stderr.flush()
        return 1
