"""Dot interaction: forward pairwise dot products and the backward as a small batched GEMM.

Forward: parallel over samples; each sample's pair products are computed next to where its
output row is written (compute_at), so the [B, P] intermediate never leaves cache.
Backward: G[b, i, :] = sum_j dZ[b, i, j] Tc[b, j, :] with the D loop innermost and vectorised;
the other blocks (symmetric dZ, the two output copies) take the generic parallel schedule.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .base import Rule, fp32_lanes, top_level_blocks
from .fallback import schedule_generic


class InteractionDotFwd(Rule):
    name = "interaction_dot_fwd_per_sample"
    ops = ("interaction_dot_fwd",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        sch = s_tir.Schedule(func)
        r = sch.get_sblock("R")
        z = sch.get_sblock("Z")
        b, _ = sch.get_loops(r)
        sch.compute_at(z, b)
        sch.parallel(b)
        return sch


class InteractionDotBwd(Rule):
    name = "interaction_dot_bwd_batched_gemm"
    ops = ("interaction_dot_bwd",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        sch = s_tir.Schedule(func)
        g = sch.get_sblock("G")
        n, i, k, r = sch.get_loops(g)
        sch.reorder(n, i, r, k)
        sch.parallel(n)
        sch.vectorize(k)
        sch.decompose_reduction(g, r)
        others = [blk for blk in top_level_blocks(sch)
                  if sch.get(blk).name_hint in ("dZ", "dx", "demb")]
        schedule_generic(sch, others, fp32_lanes(target))
        return sch
