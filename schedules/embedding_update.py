"""The fused embedding backward + optimizer step (graphs/embedding_update.py), two ways.

Both give the same bytes for any thread count, and both schedule by substitution (see
schedules/embedding.py): the plain kernel is a function without blocks, so the rule returns a
Schedule of an implementation with the same signature (``update_kernel``) and the same sums.

* ``embedding_update_bucketed_lookups`` (default for SGD): lookups bucketed by row, then each
  bucket steps its rows lookup by lookup in lookup order. Cheapest per lookup; a hot row's
  lookups are one bucket's serial work.
* ``embedding_update_bucketed`` (rwsadagrad and adagrad, whose steps are not linear, need
  it): the plain
  coalescing kernel's passes with their outer loops parallel, D vectorised and the rows ahead
  prefetched (``PARALLEL_HOOKS``): a hot row's lookups are summed per chunk in parallel, then
  once per row.

Split-SGD rows step through the LLVM IR functions of ``intrin/split_sgd.py``, 32 elements at a
time with the shuffle form where D allows, then 16, then 8, then scalar.
"""

from __future__ import annotations

from dlrm_tvm.graphs.embedding_update import (
    BUCKETS,
    CHUNK,
    STORAGES,
    Hooks,
    bucket_of,
    embedding_bag_update,
    split_sgd_columns,
    update_kernel,
)
from tvm import tirx
from tvm.script import tirx as T
from tvm.target import Target

from .base import Rule, attr, prefetch, substitute
from .intrin.split_sgd import SPLIT_SGD_LLVM_IR, SPLIT_SGD_SHUFFLE_IR

F32, I64 = "float32", "int64"
PREFETCH = 8  # entries ahead (measured: 4 to 16 within noise, none 20% slower)


@T.macro
def split_sgd_row_vector(H16, L, r, Gsrc, grow, rate, d):
    """hi/lo row r -= rate * Gsrc[grow, :]: LLVM steps of 32, 16 and 8, then scalar."""
    for kk in T.serial(d // 32, annotations={"pragma_import_llvm": SPLIT_SGD_SHUFFLE_IR}):
        T.evaluate(T.call_extern("void", "dlrm_split_sgd32s", T.address_of(H16[r, kk * 32]),
                                 T.address_of(L[r, kk * 32]),
                                 T.address_of(Gsrc[grow, kk * 32]), rate))
    for kk in T.serial((d % 32) // 16, annotations={"pragma_import_llvm": SPLIT_SGD_LLVM_IR}):
        k16 = d // 32 * 32 + kk * 16
        T.evaluate(T.call_extern("void", "dlrm_split_sgd16", T.address_of(H16[r, k16]),
                                 T.address_of(L[r, k16]), T.address_of(Gsrc[grow, k16]),
                                 rate))
    for kk in T.serial((d % 16) // 8, annotations={"pragma_import_llvm": SPLIT_SGD_LLVM_IR}):
        k8 = d // 16 * 16 + kk * 8
        T.evaluate(T.call_extern("void", "dlrm_split_sgd8", T.address_of(H16[r, k8]),
                                 T.address_of(L[r, k8]), T.address_of(Gsrc[grow, k8]),
                                 rate))
    split_sgd_columns(H16, L, r, Gsrc, grow, rate, d // 8 * 8, d)


def parallel_hooks(d: int, storage: str, optimizer: str = "sgd") -> Hooks:
    """The coalescing kernel's passes parallel, D vectorised, Split-SGD rows stepped by the
    LLVM functions, and the rows and partials PREFETCH entries ahead prefetched in pass 4
    (adagrad: the rows' states too)."""
    split = storage in ("split", "rows")
    rows = storage == "rows"
    state = optimizer == "adagrad"  # M [rows, D]: one more random row per step

    @T.macro
    def before_step(W, H16, L, M, P, ent, erow, lo, i, ne):
        if i + T.int64(PREFETCH) < ne:
            # the rows and partials PREFETCH entries ahead (random addresses)
            for q in range((d * 4 + 63) // 64):
                prefetch(P, ent[lo + i + PREFETCH], q * 16, 0)
                if rows:  # hi and lo: one span of 4 * D bytes
                    prefetch(H16, erow[lo + i + PREFETCH], q * 32, 1)
                elif split:
                    if q % 2 == 0:
                        prefetch(H16, erow[lo + i + PREFETCH], q * 16, 1)
                        prefetch(L, erow[lo + i + PREFETCH], q * 16, 1)
                else:
                    prefetch(W, erow[lo + i + PREFETCH], q * 16, 1)
                if state:
                    prefetch(M, erow[lo + i + PREFETCH], q * 16, 1)

    return Hooks(outer=T.parallel, inner=T.vectorized, split_step=split_sgd_row_vector,
                 before_step=before_step)


def embedding_bag_sgd_lookup_order(b: int, nt: int, d: int, storage: str = "fp32"
                                   ) -> tirx.PrimFunc:
    """SGD only: every lookup steps its row by its own gradient, in lookup order (the same step
    as the coalesced kernel's up to fp32 rounding: the sum is applied one term at a time).

    Deterministic and race-free without atomics or a scan per thread: lookups are bucketed by
    a hash of their row (fixed buckets, chunk-ordered, so lookup order survives), then each
    bucket applies its lookups in order. No hash map and no gradient copies, so a lookup costs
    a row read-modify-write plus sequential index traffic. A hot row stays in one bucket: at
    many threads its bucket is the critical path (the coalesced kernel does not have that).
    Parameters as ``embedding_bag_update(..., "sgd", storage)``.
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    split = storage in ("split", "rows")
    rows = storage == "rows"
    tb = nt * b
    lines = (d * (2 if storage == "split" else 4) + 63) // 64  # cache lines per row (per half)

    @T.macro
    def body(W, H16, L, M, I_, Off, RO, G, lr, nnz):
        nch = T.meta_var((nnz + T.int64(CHUNK - 1)) // T.int64(CHUNK))
        if nnz > T.int64(0):
            bagof = T.decl_buffer((nnz,), "int32")
            cnt = T.decl_buffer((BUCKETS * nch,), I64)  # [bucket][chunk]
            lgrad = T.decl_buffer((nnz,), "int32")  # lookups by bucket, in lookup order: the
            lrow = T.decl_buffer((nnz,), I64)  # row of G2 holding their gradient, their row
            G2 = T.decl_buffer((b * nt, d), F32, data=G.data)  # G[s, t] is G2[s * nt + t]
            for v in T.parallel(T.int64(tb)):
                for i in range(Off[v + 1] - Off[v]):
                    bagof[Off[v] + i] = T.Cast("int32", v)
            for c in T.parallel(nch):
                for q in range(T.int64(BUCKETS)):
                    cnt[q * nch + c] = T.int64(0)
                for i in range(T.min(nnz - c * CHUNK, T.int64(CHUNK))):
                    p = c * CHUNK + i
                    bk = bucket_of(I_[p] + RO[T.Cast(I64, bagof[p]) // b])
                    cnt[bk * nch + c] = cnt[bk * nch + c] + T.int64(1)
            s2 = T.decl_buffer((1,), I64, scope="local")
            s2[0] = T.int64(0)
            for q in range(T.int64(BUCKETS) * nch):
                t = cnt[q]
                cnt[q] = s2[0]
                s2[0] = s2[0] + t
            for c in T.parallel(nch):
                for i in range(T.min(nnz - c * CHUNK, T.int64(CHUNK))):
                    p = c * CHUNK + i
                    bv = T.Cast(I64, bagof[p])
                    r = I_[p] + RO[bv // b]
                    bk = bucket_of(r)
                    lgrad[cnt[bk * nch + c]] = T.Cast("int32", (bv % b) * nt + bv // b)
                    lrow[cnt[bk * nch + c]] = r
                    cnt[bk * nch + c] = cnt[bk * nch + c] + T.int64(1)
            for bk in T.parallel(T.int64(BUCKETS)):
                lo = T.if_then_else(bk == T.int64(0), T.int64(0), cnt[bk * nch - 1])
                for i in range(cnt[bk * nch + nch - 1] - lo):
                    if i + T.int64(PREFETCH) < cnt[bk * nch + nch - 1] - lo:
                        for q in range(lines):
                            if rows:  # hi and lo: one span of 4 * D bytes
                                prefetch(H16, lrow[lo + i + PREFETCH], q * 32, 1)
                            elif split:
                                prefetch(H16, lrow[lo + i + PREFETCH], q * 32, 1)
                                prefetch(L, lrow[lo + i + PREFETCH], q * 32, 1)
                            else:
                                prefetch(W, lrow[lo + i + PREFETCH], q * 16, 1)
                        for q in range((d * 4 + 63) // 64):
                            prefetch(G2, T.Cast(I64, lgrad[lo + i + PREFETCH]), q * 16, 0)
                    r = lrow[lo + i]
                    gr = T.Cast(I64, lgrad[lo + i])
                    if split:
                        split_sgd_row_vector(H16, L, r, G2, gr, lr[0], d)
                    else:
                        for k in T.vectorized(d):
                            W[r, k] = W[r, k] - lr[0] * G2[gr, k]

    return update_kernel(b, nt, d, "sgd", storage, body)


class EmbeddingUpdateLookupOrder(Rule):
    """SGD: lookups bucketed by row, each bucket applies its lookups' steps in lookup order
    (no coalescing: 2.9x faster than the coalesced kernel on 1M x 64, 100 per bag, 2 threads)."""

    name = "embedding_update_bucketed_lookups"
    ops = ("embedding_bag_update",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func) or attr(func, "optimizer") != "sgd":
            return None
        impl = embedding_bag_sgd_lookup_order(attr(func, "batch"), attr(func, "tables"),
                                              attr(func, "d"), attr(func, "storage"))
        return substitute(func, impl)


class EmbeddingUpdateBucketed(Rule):
    name = "embedding_update_bucketed"
    ops = ("embedding_bag_update",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        d, storage = attr(func, "d"), attr(func, "storage")
        opt = attr(func, "optimizer")
        impl = embedding_bag_update(attr(func, "batch"), attr(func, "tables"), d, opt, storage,
                                    how=parallel_hooks(d, storage, opt))
        return substitute(func, impl)
