"""The DCN cross layers' elementwise kernels (graphs/ops_dcn.py): rows parallel, columns in
whole vectors.

Each loop nest of the kernel (cross_fwd and cross_bwd: one nest over [B, N] writing every
output; cross_input_bwd: the "dx" [B, D] and "demb" [B, T, D] nests) gets its row loop parallel
and its remaining loops fused into one column loop, split into vector-width chunks and
vectorised when the vector width divides it (else left scalar, still parallel over rows).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .base import Rule, const_extent, fp32_lanes, top_level_blocks


class DcnElementwiseRows(Rule):
    name = "dcn_elementwise_rows"
    ops = ("cross_fwd", "cross_bwd", "cross_input_bwd")

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        lanes = fp32_lanes(target)
        sch = s_tir.Schedule(func)
        for block in top_level_blocks(sch):
            loops = sch.get_loops(block)
            if len(loops) < 2 or sch.get(loops[0]).kind == tirx.ForKind.PARALLEL:
                continue  # a second output's block under a nest already scheduled
            exts = [const_extent(sch, lp) for lp in loops]
            if None in exts:
                return None
            cols = sch.fuse(*loops[1:]) if len(loops) > 2 else loops[1]
            width = 1
            for e in exts[1:]:
                width *= e
            if width % lanes == 0:
                _, inner = sch.split(cols, [None, lanes])
                sch.vectorize(inner)
            sch.parallel(loops[0])
        return sch
