"""Dot interaction: forward pairwise dot products and the backward as a small batched GEMM.

Forward: parallel over samples; each pair's dot product accumulates whole vectors (rfactor
over the D loop) and is summed horizontally at the end.
Backward: each gradient row is sum_j dZ[b, i, j] Tc[b, j, :] with the D loop innermost and
vectorised, the pair weights dZ read from dR on the fly.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .base import Rule, const_extent, fp32_lanes


class InteractionDotFwd(Rule):
    """Z[b, p] as a vector-width partial sum (rfactor) per pair, horizontal add at the end.

    The pair's two rows are gathered once per pair, and the D loop runs on whole vectors in a
    register-sized partial-sum buffer; samples are parallel. Needs D to be >= 2 whole vectors.
    """

    name = "interaction_dot_fwd_rfactor"
    ops = ("interaction_dot_fwd",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        sch = s_tir.Schedule(func)
        z = sch.get_sblock("Z")
        _, _, zr = sch.get_loops(z)
        d = const_extent(sch, zr)
        # at least two vectors along D (one would leave no reduction loop to reorder)
        lanes = next((v for v in (fp32_lanes(target), fp32_lanes(target) // 2)
                      if d % v == 0 and d // v >= 2), None)
        if lanes is None:
            return None
        _, ri = sch.split(zr, [None, lanes])
        rf = sch.rfactor(ri, 2)
        zl = sch.get_loops(sch.get_sblock("Z"))
        sch.compute_at(rf, zl[1])
        sch.set_scope(rf, 0, "local")
        lanes_loop, red_loop = sch.get_loops(rf)[-2:]
        sch.reorder(red_loop, lanes_loop)
        sch.parallel(zl[0])
        sch.vectorize(lanes_loop)
        sch.parallel(sch.get_loops(sch.get_sblock("R"))[0])
        sch.decompose_reduction(rf, red_loop)
        return sch


class InteractionDotBwd(Rule):
    """Per sample: each output row is a sum over the F feature rows (D innermost, vectorised),
    the pair weights read straight from dR; samples parallel."""

    name = "interaction_dot_bwd_batched_gemm"
    ops = ("interaction_dot_bwd",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        sch = s_tir.Schedule(func)
        for name in ("G0", "demb"):
            blk = sch.get_sblock(name)
            loops = sch.get_loops(blk)
            sch.reorder(loops[-1], loops[-2])  # the F reduction outside the D loop
            sch.parallel(loops[0])
            sch.vectorize(loops[-2])
            sch.decompose_reduction(blk, loops[-1])
        n, k = sch.get_loops(sch.get_sblock("dx"))
        sch.parallel(n)
        sch.vectorize(k)
        return sch
