"""Block-read planning: which register ranges to request so that every wanted register is read.

Pure: (wanted registers, limits) -> list of :class:`Block`. The plan is optimal for the wire cost
``sum(REQUEST_OVERHEAD_BYTES + 2 * count)`` (an RTU read of N registers is 8 request bytes and
5 + 2N response bytes), ties broken by fewer requests. So a gap between wanted registers is read
through exactly when that costs fewer bytes than starting another request, and never when the model
rejects reads of undefined registers and the gap holds one.

Why a dynamic programme and not a greedy merge: wanted registers sorted by address, an optimal plan
is a partition of that list into runs (a block that skips a wanted register inside its span reads it
anyway; shrinking a block to its first and last register only saves bytes). The best plan for the
first j registers is the best plan for the first i plus one block i..j: O(n^2) for n registers.
tests/test_planner.py checks it against brute force over every partition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from drivers.meters.registers import Register

# Bytes of one extra read request and its response overhead (RTU): request 8, response 5 + 2N.
REQUEST_OVERHEAD_BYTES = 8 + 5
BYTES_PER_REGISTER = 2


@dataclass(frozen=True)
class Block:
    function_code: int
    start: int
    count: int
    registers: tuple[Register, ...]

    @property
    def end(self) -> int:
        return self.start + self.count


def block_bytes(count: int) -> int:
    """Bytes on the wire for one read of ``count`` registers, request and response."""
    return REQUEST_OVERHEAD_BYTES + BYTES_PER_REGISTER * count


def plan_cost(blocks: Iterable[Block]) -> tuple[int, int]:
    """(bytes on the wire, requests) of a plan."""
    blocks = list(blocks)
    return sum(block_bytes(b.count) for b in blocks), len(blocks)


def plan_blocks(
    registers: Sequence[Register],
    max_count: int = 125,
    allow_gaps: bool = True,
    defined: Callable[[int, int], bool] | None = None,
) -> list[Block]:
    """The cheapest plan reading every register in ``registers``.

    ``allow_gaps=False`` forbids reading any address outside ``defined(function_code, address)``
    (default: the addresses of ``registers`` themselves).
    """
    if not allow_gaps and defined is None:
        own = {(r.function_code, a) for r in registers for a in range(r.address, r.end)}

        def defined(fc: int, a: int) -> bool:
            return (fc, a) in own

    blocks: list[Block] = []
    by_fc: dict[int, list[Register]] = {}
    for reg in registers:
        by_fc.setdefault(reg.function_code, []).append(reg)
    for fc in sorted(by_fc):
        regs = sorted(by_fc[fc], key=lambda r: r.address)
        blocks += _plan_one_fc(fc, regs, max_count, None if allow_gaps else defined)
    return blocks


def _plan_one_fc(
    fc: int, regs: list[Register], max_count: int, defined: Callable[[int, int], bool] | None
) -> list[Block]:
    n = len(regs)
    # gap_ok[i]: may a block span from regs[i-1] to regs[i] (the addresses between are readable)?
    gap_ok = [True] * n
    for i in range(1, n):
        lo, hi = regs[i - 1].end, regs[i].address
        if hi < lo:
            raise ValueError(f"registers overlap: {regs[i - 1].signal} and {regs[i].signal}")
        if defined is not None:
            gap_ok[i] = all(defined(fc, a) for a in range(lo, hi))
    inf = (1 << 62, 1 << 62)
    best: list[tuple[int, int]] = [(0, 0)] + [inf] * n  # best[j]: cost of reading regs[:j]
    cut: list[int] = [0] * (n + 1)
    for j in range(1, n + 1):
        end = regs[j - 1].end
        for i in range(j - 1, -1, -1):
            if i < j - 1 and not gap_ok[i + 1]:
                break
            count = end - regs[i].address
            if count > max_count:
                break
            prev = best[i]
            cand = (prev[0] + block_bytes(count), prev[1] + 1)
            if cand < best[j]:
                best[j], cut[j] = cand, i
    out: list[Block] = []
    j = n
    while j > 0:
        i = cut[j]
        start = regs[i].address
        out.append(Block(fc, start, regs[j - 1].end - start, tuple(regs[i:j])))
        j = i
    out.reverse()
    return out
