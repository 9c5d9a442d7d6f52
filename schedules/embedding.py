"""Embedding-bag kernels: sum-pooling forward and the fused backward + sparse SGD update.

The naive kernels (graphs/ops.py) keep their D-wide row loops inside one opaque block per bag,
where schedule primitives cannot reach them, and LLVM does not vectorise them on its own. So
these rules schedule by substitution: each returns a Schedule of a hand-written implementation
with the same signature and the same arithmetic in the same order, its loop kinds set here:

Forward: one task per (table, bag), all parallel; the row accumulation in a D-wide local
accumulator, vectorised.
Update: parallel over row owners; each owner scans every lookup and applies only its rows (in
lookup order), vectorised along D, so no two threads write one row and the result is the same
for any thread count.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.target import Target

from .base import Rule, attr

F32, I64 = "float32", "int64"


def bag_fwd_impl(b: int, nt: int, d: int, table_dtype: str = F32) -> tirx.PrimFunc:
    @T.prim_func(s_tir=True)
    def func(w: T.handle, idx: T.handle, off: T.handle, roff: T.handle, out: T.handle):
        nnz = T.int64()
        nrows = T.int64()
        W = T.match_buffer(w, (nrows, d), table_dtype)
        I_ = T.match_buffer(idx, (nnz,), I64)
        Off = T.match_buffer(off, (nt * b + 1,), I64)
        RO = T.match_buffer(roff, (nt,), I64)
        Y = T.match_buffer(out, (b, nt, d), F32)
        for ts in T.parallel(nt * b):
            with T.sblock("bag"):
                v = T.axis.spatial(nt * b, ts)
                T.reads(W[0:nrows, 0:d], I_[0:nnz], Off[v : v + 2], RO[v // b])
                T.writes(Y[v % b, v // b, 0:d])
                acc = T.sblock_alloc_buffer((d,), F32, scope="local")
                for k in T.vectorized(d):
                    acc[k] = T.float32(0)
                for p in range(Off[v], Off[v + 1]):
                    for k in T.vectorized(d):
                        acc[k] = acc[k] + T.Cast(F32, W[I_[p] + RO[v // b], k])
                for k in T.vectorized(d):
                    Y[v % b, v // b, k] = acc[k]

    return func


def bag_sgd_update_impl(b: int, nt: int, d: int, owners: int) -> tirx.PrimFunc:
    @T.prim_func(s_tir=True)
    def func(w: T.handle, idx: T.handle, off: T.handle, roff: T.handle, g: T.handle,
             lr: T.Buffer((1,), F32)):
        nnz = T.int64()
        nrows = T.int64()
        W = T.match_buffer(w, (nrows, d), F32)
        I_ = T.match_buffer(idx, (nnz,), I64)
        Off = T.match_buffer(off, (nt * b + 1,), I64)
        RO = T.match_buffer(roff, (nt,), I64)
        G = T.match_buffer(g, (b, nt, d), F32)
        for o in T.parallel(owners):
            with T.sblock("owner"):
                vo = T.axis.spatial(owners, o)
                T.reads(I_[0:nnz], Off[0 : nt * b + 1], RO[0:nt], G[0:b, 0:nt, 0:d], lr[0])
                T.writes(W[0:nrows, 0:d])
                for t, s in T.grid(nt, b):
                    for p in range(Off[t * b + s], Off[t * b + s + 1]):
                        if T.floormod(I_[p] + RO[t], T.int64(owners)) == T.int64(vo):
                            for k in T.vectorized(d):
                                W[I_[p] + RO[t], k] = W[I_[p] + RO[t], k] - lr[0] * G[s, t, k]

    return func


def _substitute(func: tirx.PrimFunc, impl: tirx.PrimFunc) -> s_tir.Schedule:
    if len(impl.params) != len(func.params):
        raise AssertionError("implementation signature differs from the kernel's")
    return s_tir.Schedule(impl.with_attrs(func.attrs) if func.attrs else impl)


class EmbeddingBagParallelBags(Rule):
    name = "embedding_bag_parallel_bags"
    ops = ("embedding_bag_fwd",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        impl = bag_fwd_impl(attr(func, "batch"), attr(func, "tables"), attr(func, "d"),
                            attr(func, "table_dtype", F32))
        return _substitute(func, impl)


class EmbeddingUpdateRowOwner(Rule):
    name = "embedding_update_row_owner"
    ops = ("embedding_bag_sgd_update",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        impl = bag_sgd_update_impl(attr(func, "batch"), attr(func, "tables"), attr(func, "d"),
                                   attr(func, "owners"))
        return _substitute(func, impl)


class EmbeddingSplitUpdateRowOwner(Rule):
    """Split-SGD-BF16 tables: the naive kernel's owners run in parallel (its D loop stays scalar:
    TVM's vectoriser mistranslates the reinterpret-and-shift body, see SplitSgdParallel)."""

    name = "embedding_split_update_row_owner"
    ops = ("embedding_bag_split_sgd_update",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        sch = s_tir.Schedule(func)
        (o,) = sch.get_loops(sch.get_sblock("owner"))
        sch.parallel(o)
        return sch
