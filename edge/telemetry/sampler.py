"""Aggregate readings per interval: min, max, mean and last per signal, with unit and quality."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from drivers.readings import OK, Reading


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
            out.append({
                "signal": sig, "unit": a.unit, "quality": a.quality, "n": a.n,
                "min": a.lo if good else None, "max": a.hi if good else None,
                "mean": a.total / a.n if good else None, "last": a.last if good else None,
            })
        self._aggs.clear()
        return out
