"""The block planner against brute force: every partition of the wanted registers into reads."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.meters.models import ABB_B23, EM24, SDM630
from drivers.meters.planner import BYTES_PER_REGISTER, REQUEST_OVERHEAD_BYTES, Block, plan_blocks, plan_cost
from drivers.meters.registers import Register


def _regs(spec: list[tuple[int, str]], fc: int = 4) -> list[Register]:
    out, addr = [], 0
    for gap, typ in spec:
        addr += gap
        r = Register(f"S{len(out)}", addr, typ, "V", function_code=fc)
        out.append(r)
        addr = r.end
    return out


def brute_force(regs: list[Register], max_count: int, defined: set[int] | None) -> tuple[int, int]:
    """Cheapest (bytes, requests) over every split of the address-sorted list into consecutive reads."""
    regs = sorted(regs, key=lambda r: r.address)
    best = None
    for cuts in itertools.product((False, True), repeat=len(regs) - 1):
        groups, cur = [], [regs[0]]
        for r, cut in zip(regs[1:], cuts, strict=True):
            if cut:
                groups.append(cur)
                cur = [r]
            else:
                cur.append(r)
        groups.append(cur)
        cost, ok = (0, 0), True
        for g in groups:
            start, end = g[0].address, g[-1].end
            if end - start > max_count or (defined is not None and not set(range(start, end)) <= defined):
                ok = False
                break
            cost = (cost[0] + REQUEST_OVERHEAD_BYTES + BYTES_PER_REGISTER * (end - start), cost[1] + 1)
        if ok and (best is None or cost < best):
            best = cost
    assert best is not None
    return best


def _check_valid(blocks: list[Block], regs: list[Register], max_count: int, defined: set[int] | None) -> None:
    covered = [r for b in blocks for r in b.registers]
    assert sorted(covered, key=lambda r: r.address) == sorted(regs, key=lambda r: r.address)
    for b in blocks:
        assert 1 <= b.count <= max_count
        assert all(b.start <= r.address and r.end <= b.end for r in b.registers)
        if defined is not None:
            assert set(range(b.start, b.end)) <= defined


reg_maps = st.lists(st.tuples(st.integers(0, 20), st.sampled_from(["u16", "float32", "u64"])), min_size=1, max_size=9)


@settings(max_examples=300, deadline=None)
@given(spec=reg_maps, max_count=st.integers(4, 40))
def test_plan_is_as_cheap_as_brute_force_when_gaps_may_be_read(spec, max_count):
    regs = _regs(spec)
    blocks = plan_blocks(regs, max_count=max_count)
    _check_valid(blocks, regs, max_count, None)
    assert plan_cost(blocks) == brute_force(regs, max_count, None)


@settings(max_examples=300, deadline=None)
@given(spec=reg_maps, max_count=st.integers(4, 40), extra=st.sets(st.integers(0, 200), max_size=60))
def test_plan_never_reads_undefined_registers_on_models_that_reject_gaps(spec, max_count, extra):
    regs = _regs(spec)
    defined = {a for r in regs for a in range(r.address, r.end)} | extra
    blocks = plan_blocks(regs, max_count=max_count, allow_gaps=False, defined=lambda fc, a: a in defined)
    _check_valid(blocks, regs, max_count, defined)
    assert plan_cost(blocks) == brute_force(regs, max_count, defined)


def test_a_gap_is_read_through_exactly_when_cheaper_than_another_request():
    # another request costs 13 bytes; a gap of g registers costs 2 g bytes
    for gap in range(0, 12):
        regs = _regs([(0, "float32"), (gap, "float32")])
        expect = 1 if 2 * gap < REQUEST_OVERHEAD_BYTES else 2
        assert len(plan_blocks(regs)) == expect, gap


def test_function_codes_are_never_mixed_in_one_read():
    regs = _regs([(0, "u16")], fc=3) + _regs([(0, "u16")], fc=4)
    blocks = plan_blocks(regs)
    assert sorted(b.function_code for b in blocks) == [3, 4]


def test_sdm630_full_snapshot_plan_respects_its_60_register_limit():
    blocks = plan_blocks(SDM630.registers, SDM630.max_registers_per_request)
    assert all(b.count <= 60 for b in blocks)
    assert plan_cost(blocks) == brute_force(list(SDM630.registers), 60, None)


def test_em24_plan_only_reads_registers_its_table_defines():
    defined = {a for _, a in EM24.defined()}
    blocks = plan_blocks(EM24.registers, allow_gaps=False, defined=lambda fc, a: a in defined)
    assert all(set(range(b.start, b.end)) <= defined for b in blocks)
    assert plan_cost(blocks) == brute_force(list(EM24.registers), 125, defined)


def test_abb_plan_matches_brute_force_per_function_code():
    blocks = plan_blocks(ABB_B23.registers)
    assert plan_cost(blocks) == brute_force(list(ABB_B23.registers), 125, None)
