"""The rule of last resort: correct on any CPU and any kernel, parallel and where it can vectorised.

For each top-level loop nest: a purely spatial nest is fused, split into vector-width chunks
when the total divides, the chunk loop vectorised and the rest parallel; a reduction nest gets
its outermost spatial loop parallel. Never tensorizes, never assumes a feature.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .base import Rule, const_extent, fp32_lanes, is_spatial_block, top_level_blocks


class Fallback(Rule):
    name = "fallback"
    ops = ()

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        sch = s_tir.Schedule(func)
        try:
            blocks = top_level_blocks(sch)
        except Exception:  # noqa: BLE001 - a function without a root block: leave it serial
            return sch
        schedule_generic(sch, blocks, fp32_lanes(target))
        return sch


def _has_own_loops(sch: s_tir.Schedule, block) -> bool:
    """The block keeps loops or buffers of its own inside it (an opaque body such as the plain
    embedding bag's: a data-dependent loop over the bag and a local accumulator). Its outer
    loop must not be vectorised: TVM 0.27 vectorised it into wrong sums (every bag off)."""
    blk = sch.get(block)

    def loops(stmt) -> bool:
        if isinstance(stmt, tirx.For):
            return True
        if isinstance(stmt, tirx.SeqStmt):
            return any(loops(s) for s in stmt.seq)
        if isinstance(stmt, tirx.IfThenElse):
            return loops(stmt.then_case) or (stmt.else_case is not None
                                             and loops(stmt.else_case))
        return False

    return bool(blk.alloc_buffers) or loops(blk.body)


def schedule_generic(sch: s_tir.Schedule, blocks: list, lanes: int) -> None:
    """Parallelise (and vectorise where whole) each given top-level block's loop nest."""
    for block in blocks:
        loops = sch.get_loops(block)
        if not loops:
            continue
        iters = sch.get(block).iter_vars
        if is_spatial_block(sch, block) and len(loops) == len(iters):
            exts = [const_extent(sch, lp) for lp in loops]
            if None in exts:
                continue
            fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            total = 1
            for e in exts:
                total *= e
            if total % lanes == 0 and total >= 4 * lanes and not _has_own_loops(sch, block):
                outer, inner = sch.split(fused, [None, lanes])
                sch.parallel(outer)
                sch.vectorize(inner)
            else:
                sch.parallel(fused)
        elif int(iters[0].iter_type) == 0 and len(loops) >= 1:
            try:
                sch.parallel(loops[0])
            except Exception:  # noqa: BLE001 - dataflow not compact: leave it serial
                pass
