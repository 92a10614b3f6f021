"""Every ``telemetry.interval_s``: the interval's samples (plus the limit in force) go into the store, and a
failing store is reported as the fault ``telemetry_store_error``: reported, never a reason to stop control
(docs/TELEMETRY.md).

What is stored depends on the format's record form: ``json`` (v1) one record per interval with every
sample; ``compact`` (v2, Sparkplug B) report by exception through :class:`~edge.telemetry.compact.Compactor`,
one record per ``record_s``. The record in progress is written when the store closes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from drivers.readings import Reading
from edge.faults import ExternalFaults
from edge.telemetry.compact import Compactor
from edge.telemetry.sampler import Sampler

STORE_FAULT = "telemetry_store_error"


class RecordStore(Protocol):
    write_errors: int  # failed write attempts (a held record retried is counted each time)
    records_lost: int  # records never written
    dropped_low_disk: int  # telemetry not stored below min_free_mb

    @property
    def degraded(self) -> str | None: ...

    def append(self, kind: str, t_ms: int, payload: dict[str, Any] | bytes) -> int | None: ...


def _n(count: int, what: str) -> str:
    return f"{count} {what}" if count == 1 else f"{count} {what}s"


def loss_text(store: RecordStore) -> str:
    """Failed writes and records lost, apart: a write retried until it succeeds loses nothing."""
    text = f"{_n(store.write_errors, 'failed write')} so far, "
    if store.records_lost:
        text += f"{_n(store.records_lost, 'record')} lost (not written)"
    else:
        text += "no record lost (held and retried)"
    if store.dropped_low_disk:
        text += f", {_n(store.dropped_low_disk, 'telemetry record')} dropped for low disk"
    return text


class Recorder:
    def __init__(
        self,
        sampler: Sampler,
        store: RecordStore,
        faults: ExternalFaults,
        interval_s: float,
        monotonic: Callable[[], float],
        wall_ms: Callable[[], int],
        compactor: Compactor | None = None,
    ) -> None:
        self.sampler = sampler
        self.store = store
        self.faults = faults
        self.interval_s = interval_s
        self.monotonic = monotonic
        self.wall_ms = wall_ms
        self.compactor = compactor  # None: v1, every sample of every interval as JSON

    def request_keyframe(self) -> None:
        """From any thread (the uplink on every connect): the next record starts with every signal."""
        if self.compactor is not None:
            self.compactor.request_keyframe()

    def close_record(self) -> None:
        """Write the record in progress (the store calls this before it closes)."""
        if self.compactor is not None and (done := self.compactor.flush()) is not None:
            self.store.append("telemetry", *done)

    def flush(self, limit_a: float | None) -> None:
        if limit_a is not None:
            self.sampler.add(Reading("control.limit_a", limit_a, "A", self.monotonic()))
        samples = self.sampler.flush()
        if samples and self.compactor is not None:
            for t_ms, payload in self.compactor.add(self.wall_ms(), samples):
                self.store.append("telemetry", t_ms, payload)
        elif samples:
            self.store.append("telemetry", self.wall_ms(), {"interval_s": self.interval_s, "samples": samples})
        self.check_store()

    def check_store(self) -> None:
        why = self.store.degraded
        if why:
            self.faults.set(
                STORE_FAULT, f"telemetry store write failed ({why}); {loss_text(self.store)}; control unaffected"
            )
        else:
            self.faults.clear(STORE_FAULT)

    async def run(self, limit_a: Callable[[], float | None], each: Callable[[], None]) -> None:
        """Flush every interval; ``each`` runs after every flush (the watchdog's status text)."""
        while True:
            await asyncio.sleep(self.interval_s)
            self.flush(limit_a())
            each()
