"""Embedding-bag kernels: sum-pooling forward and the fused backward + sparse SGD update.

Forward: one task per (table, bag), parallel over all of them; the D-wide row accumulation is
register-resident (the kernel's local accumulator) and left to LLVM's loop vectoriser.
Update: parallel over row owners; each owner scans every lookup and applies only its rows, so
no two threads write one row and the result is the same for any thread count.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .base import Rule


class EmbeddingBagParallelBags(Rule):
    name = "embedding_bag_parallel_bags"
    ops = ("embedding_bag_fwd",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        sch = s_tir.Schedule(func)
        t, s = sch.get_loops(sch.get_sblock("bag"))
        sch.parallel(sch.fuse(t, s))
        return sch


class EmbeddingUpdateRowOwner(Rule):
    name = "embedding_update_row_owner"
    ops = ("embedding_bag_sgd_update",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        sch = s_tir.Schedule(func)
        (o,) = sch.get_loops(sch.get_sblock("owner"))
        sch.parallel(o)
        return sch
