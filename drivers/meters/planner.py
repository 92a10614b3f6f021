"""Block-read planning: which register ranges to request so that every wanted register is read.

Pure: (registers, limits) -> list of :class:`Block`. A gap between two wanted registers is read through
when that costs fewer bytes on the wire than starting another request, unless the model rejects reads
of undefined registers.
"""

from __future__ import annotations

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


def plan_blocks(registers: tuple[Register, ...] | list[Register], max_count: int = 125,
                allow_gaps: bool = True) -> list[Block]:
    """Greedy contiguous merge, per function code, in address order."""
    blocks: list[Block] = []
    by_fc: dict[int, list[Register]] = {}
    for reg in registers:
        by_fc.setdefault(reg.function_code, []).append(reg)
    for fc in sorted(by_fc):
        regs = sorted(by_fc[fc], key=lambda r: r.address)
        cur: list[Register] = []
        start = end = 0
        for reg in regs:
            if cur:
                gap = reg.address - end
                fits = reg.end - start <= max_count
                gap_ok = gap == 0 or (allow_gaps and gap * BYTES_PER_REGISTER < REQUEST_OVERHEAD_BYTES)
                if gap >= 0 and fits and gap_ok:
                    cur.append(reg)
                    end = max(end, reg.end)
                    continue
                blocks.append(Block(fc, start, end - start, tuple(cur)))
            cur, start, end = [reg], reg.address, reg.end
        if cur:
            blocks.append(Block(fc, start, end - start, tuple(cur)))
    return blocks
