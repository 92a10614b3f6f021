"""Aggregate readings per interval: min, max, mean and last per signal, with unit and quality.

Each sample also carries the OCPP measurand (and phase/location) of its signal where one exists
(:mod:`edge.telemetry.measurands`), so the stored JSON is already the JSON that goes out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from drivers.readings import OK, Reading
from edge.telemetry.measurands import ocpp_fields

SIGNIFICANT_DIGITS = 10  # covers a u64 register scaled 0.01 kWh; drops float32->double noise digits


def _r(v: float) -> float:
    return float(f"{v:.{SIGNIFICANT_DIGITS}g}")


@dataclass
class _Agg:
    unit: str
    n: int = 0
    total: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    last: float = math.nan
    quality: str = OK


@dataclass
class Sampler:
    _aggs: dict[str, _Agg] = field(default_factory=dict)

    def add(self, r: Reading) -> None:
        agg = self._aggs.get(r.signal)
        if agg is None:
            agg = self._aggs[r.signal] = _Agg(r.unit)
        agg.quality = r.quality  # the interval reports the quality of its last value
        if r.quality != OK or not math.isfinite(r.value):
            return
        agg.n += 1
        agg.total += r.value
        agg.lo = min(agg.lo, r.value)
        agg.hi = max(agg.hi, r.value)
        agg.last = r.value

    def flush(self) -> list[dict[str, Any]]:
        """Samples of the finished interval; values are None when no good value arrived."""
        out = []
        for sig in sorted(self._aggs):
            a = self._aggs[sig]
            good = a.n > 0
            out.append(
                {
                    "signal": sig,
                    "unit": a.unit,
                    "quality": a.quality,
                    "n": a.n,
                    "min": _r(a.lo) if good else None,
                    "max": _r(a.hi) if good else None,
                    "mean": _r(a.total / a.n) if good else None,
                    "last": _r(a.last) if good else None,
                    **dict(ocpp_fields(sig)),
                }
            )
        self._aggs.clear()
        return out
