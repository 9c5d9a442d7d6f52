"""Column sums (the bias gradient), and the Split-SGD update.

Column sums: a block of columns per task, rows streamed, vector adds.

Each task owns up to eight vectors of adjacent columns and walks all rows, so every row access
is a contiguous run of up to 8 * lanes floats (not a single strided column).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .base import Rule, const_extent, fp32_lanes


class ColsumVectorBlocks(Rule):
    name = "colsum_vector_blocks"
    ops = ("colsum",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        lanes = fp32_lanes(target)
        sch = s_tir.Schedule(func)
        y = sch.get_sblock("Y")
        j, r = sch.get_loops(y)
        n = const_extent(sch, j)
        if n is None or n % lanes:
            return None
        width = next(w for w in (8 * lanes, 4 * lanes, 2 * lanes, lanes) if n % w == 0)
        jo, ji = sch.split(j, [None, width])
        sch.reorder(jo, r, ji)
        sch.parallel(jo)
        sch.vectorize(ji)
        sch.decompose_reduction(y, r)
        return sch


class SplitSgdParallel(Rule):
    """Split-SGD-BF16 update: parallel chunks, scalar inside.

    Not vectorised on purpose: TVM 0.27's vectoriser mistranslates the uint16/uint32
    reinterpret-and-shift body (7 of 8 lanes came out wrong); the update is memory-bound and
    small (the MLP parameters), so scalar code costs little.
    """

    name = "split_sgd_parallel_chunks"
    ops = ("split_sgd_update", "adagrad_update")  # dense Adagrad: the same elementwise shape

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        sch = s_tir.Schedule(func)
        (i,) = sch.get_loops(sch.get_sblock("update"))
        n = const_extent(sch, i)
        chunk = 4096 if n and n > 4096 else None
        if chunk:
            outer, _ = sch.split(i, [None, chunk])
            sch.parallel(outer)
        return sch
