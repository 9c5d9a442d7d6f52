"""Embedding-bag forward kernels: the sum pooling (graphs/ops.embedding_bag_fwd).

The plain kernel keeps its row loops where schedule primitives cannot reach them (inside one
opaque block per bag), and LLVM does not vectorise them on its own. So these rules schedule by
substitution (``base.substitute``): each returns a Schedule of a hand-written implementation
with the same signature and the same arithmetic in the same order, its loop kinds set here.

Forward, two variants:
* ``embedding_bag_balanced_prefetch`` (default): the lookups are cut into ``FWD_TASKS`` equal
  ranges; a task takes the bags that start in its range (a binary search over the offsets),
  so tasks carry equal lookups however bag sizes vary; each row sum runs in a D-wide vector
  accumulator while the row ``FWD_PREFETCH`` lookups ahead is prefetched.
* ``embedding_bag_parallel_bags``: one task per (table, bag), no prefetch (the first version).

The fused backward + optimizer step is scheduled the same way: schedules/embedding_update.py.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T
from tvm.target import Target

from .base import Rule, attr, prefetch, substitute

F32, I64 = "float32", "int64"


def bag_fwd_impl(b: int, nt: int, d: int, table_dtype: str = F32,
                 row_width: int | None = None) -> tirx.PrimFunc:
    wd = row_width or d  # a row's stored width (2D: Split-SGD rows, hi then lo)

    @T.prim_func(s_tir=True)
    def func(w: T.handle, idx: T.handle, off: T.handle, roff: T.handle, out: T.handle):
        nnz = T.int64()
        nrows = T.int64()
        W = T.match_buffer(w, (nrows, wd), table_dtype)
        I_ = T.match_buffer(idx, (nnz,), I64)
        Off = T.match_buffer(off, (nt * b + 1,), I64)
        RO = T.match_buffer(roff, (nt,), I64)
        Y = T.match_buffer(out, (b, nt, d), F32)
        for ts in T.parallel(nt * b):
            with T.sblock("bag"):
                v = T.axis.spatial(nt * b, ts)
                T.reads(W[0:nrows, 0:wd], I_[0:nnz], Off[v : v + 2], RO[v // b])
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


FWD_TASKS = 1024  # lookup ranges for the balanced forward (a few per thread on any CPU)
FWD_PREFETCH = 8  # lookups ahead (measured on 1M x 64, 100 per bag: 8.8 -> 6.2 ms, 2 threads)


def bag_fwd_balanced_impl(b: int, nt: int, d: int, table_dtype: str = F32,
                          row_width: int | None = None) -> tirx.PrimFunc:
    wd = row_width or d  # a row's stored width (2D: Split-SGD rows; only the first D read)
    tb = nt * b
    esize = 4 if table_dtype == F32 else 2
    lines = max(1, (d * esize + 63) // 64)  # cache lines per row
    per_line = 64 // esize

    @T.prim_func
    def func(w: T.handle, idx: T.handle, off: T.handle, roff: T.handle, out: T.handle):
        nnz = T.int64()
        nrows = T.int64()
        W = T.match_buffer(w, (nrows, wd), table_dtype)
        I_ = T.match_buffer(idx, (nnz,), I64)
        Off = T.match_buffer(off, (tb + 1,), I64)
        RO = T.match_buffer(roff, (nt,), I64)
        Y = T.match_buffer(out, (b, nt, d), F32)
        first = T.decl_buffer((FWD_TASKS + 1,), I64)
        # task k takes the bags whose first lookup lies in [k nnz / TASKS, (k+1) nnz / TASKS)
        for k in T.parallel(FWD_TASKS + 1):
            lo = T.decl_buffer((2,), I64, scope="local")
            lo[0] = T.int64(0)
            lo[1] = T.int64(tb)
            while lo[0] < lo[1]:
                mid = (lo[0] + lo[1]) // T.int64(2)
                if Off[mid] * T.int64(FWD_TASKS) < T.Cast(I64, k) * nnz:
                    lo[0] = mid + T.int64(1)
                else:
                    lo[1] = mid
            first[k] = T.if_then_else(k == FWD_TASKS, T.int64(tb), lo[0])
        for k in T.parallel(FWD_TASKS):
            # loops written from 0: TVM 0.27 mislowers a loop whose start is a buffer load when
            # an inner loop's bounds use its variable (every iteration saw the first start).
            # The sum accumulates in the output row itself: a local accumulator was not kept in
            # registers and made one-lookup bags 3x slower (10M x 64: 72 vs 25 ms)
            for j in range(first[k + 1] - first[k]):
                v = first[k] + j
                n = Off[v + 1] - Off[v]
                for i in range(n):
                    p = Off[v] + i
                    if p + FWD_PREFETCH < nnz:
                        for q in range(lines):
                            prefetch(W, I_[p + FWD_PREFETCH] + RO[v // b],
                                     T.min(q * per_line, d - 1), 0)
                    # the first row is stored, the others added (0 + x is x: same sums)
                    if i == 0:
                        for c in T.vectorized(d):
                            Y[v % b, v // b, c] = T.Cast(F32, W[I_[p] + RO[v // b], c])
                    else:
                        for c in T.vectorized(d):
                            Y[v % b, v // b, c] = Y[v % b, v // b, c] + T.Cast(
                                F32, W[I_[p] + RO[v // b], c])
                if n == T.int64(0):
                    for c in T.vectorized(d):
                        Y[v % b, v // b, c] = T.float32(0)

    return func


class EmbeddingBagParallelBags(Rule):
    """One task per (table, bag), no prefetch: ``bag_fwd_impl``."""

    name = "embedding_bag_parallel_bags"
    ops = ("embedding_bag_fwd",)
    impl = staticmethod(bag_fwd_impl)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        return substitute(func, self.impl(attr(func, "batch"), attr(func, "tables"),
                                          attr(func, "d"), attr(func, "table_dtype", F32),
                                          attr(func, "row_width")))


class EmbeddingBagBalancedPrefetch(EmbeddingBagParallelBags):
    """Equal lookups per task, rows ahead prefetched: ``bag_fwd_balanced_impl``."""

    name = "embedding_bag_balanced_prefetch"
    impl = staticmethod(bag_fwd_balanced_impl)
