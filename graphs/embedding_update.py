"""The fused embedding backward + optimizer step: coalesce, bucket, step (deterministic).

``embedding_bag_update(B, T, D, optimizer, storage)`` applies, in place, one optimizer step to
every table row that the batch looked up. A row's gradient is the sum of the pooled-output
gradients of all its lookups, as torch's coalesced sparse gradient. No gradient the size of a
table is formed: the work and the scratch memory are O(lookups x D).

The algorithm, in four passes (each a loop that a schedule may run in parallel):

0. the bag of every lookup;
1. lookups are cut into fixed chunks of ``CHUNK`` in order. Per chunk, a hash map sums the
   gradients of equal rows (in lookup order) into one partial per distinct row, and counts
   the distinct rows per bucket (``BUCKETS`` buckets by a hash of the row). A hot row costs
   one vector add per lookup here, spread over all chunks: it never serialises;
2. a prefix sum gives every (bucket, chunk) its place (serial: BUCKETS x chunks);
3. each chunk files its distinct rows under their buckets;
4. per bucket, a second hash map adds each row's partials in chunk order into the first one,
   and the optimizer steps each distinct row once.

Chunks and buckets are fixed numbers, not thread counts, and every row's sum runs in the same
order whatever thread runs it: the updated tables are the same bytes for any thread count.
No two threads ever write one row (a row lives in one bucket), so no atomics are needed.

Optimizers: ``sgd`` (W -= lr * g), ``rwsadagrad`` (the reference's row-wise sparse Adagrad:
one fp32 accumulator per row, M[r] += mean(g^2); W -= lr * g / (sqrt(M[r]) + eps)) and
``adagrad`` (exact Adagrad: an fp32 state of the table's shape, M[r, k] += g_k^2;
W[r, k] -= lr * g_k / (sqrt(M[r, k]) + eps), eps 1e-8; torch's sparse Adagrad on the coalesced
gradient, FBGEMM's EXACT_ADAGRAD; the scaled gradient is formed in the row's partial, then the
row steps as SGD at rate lr, so Split-SGD rows reuse that step: docs/adagrad.md).
Storage: ``fp32`` tables, or ``split`` (Split-SGD-BF16: a bfloat16 high half, what the forward
reads, and a uint16 low half; the step rebuilds the fp32 master, steps, splits again:
graphs/common.py's ``fp32_of_halves``, ``high_half``, ``low_half``), or ``rows`` (the same
halves kept together: one table [rows, 2D] whose row r is hi(r) then lo(r), so an updated row
is one span of 4D bytes, one page; the forward reads the first 2D bytes).

Parameter order: table(s) (W, or hi and lo), then M for rwsadagrad ([rows]) or adagrad
([rows, D]), then indices, offsets, row offsets, d_pooled [B, T, D], lr [1]. Indices are NOT
bounds-checked: the runtime validates.

Everything here is serial: the op's definition. A schedule (schedules/embedding_update.py)
builds the same passes with its own ``Hooks``: loop kinds, a vector row step, prefetches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dlrm_tvm.graphs.common import ADAGRAD_EPS, F32, I64, fp32_of_halves, high_half, low_half
from tvm import tirx
from tvm.script import tirx as T

from dlrm_tvm.config import OPTIMIZER_EPS, OPTIMIZERS

CHUNK = 4096  # lookups per chunk (fixed: part of the summation order)
BUCKETS = 256  # row buckets (fixed: part of the work split, never of the result)
HASH_MUL = 2654435761  # Knuth's multiplicative hash; r * HASH_MUL stays < 2^63 for r < 2^31
STORAGES = ("fp32", "split", "rows")


def _h32(r):
    return T.floormod(r * T.int64(HASH_MUL), T.int64(1 << 32))


def bucket_of(r):
    """The bucket of table row ``r`` (int64)."""
    return T.floordiv(_h32(r), T.int64((1 << 32) // BUCKETS))


# ---------------------------------------------------------------- Split-SGD-BF16 step


@T.macro
def split_sgd_columns(H16, L, r, Gsrc, grow, rate, k0, d):
    """Split-SGD step of hi/lo row r, columns [k0, d): w -= rate * Gsrc[grow, k], scalar."""
    for k in range(k0, d):
        w = fp32_of_halves(H16[r, k], L[r, k])
        bits = T.reinterpret("uint32", w - rate * Gsrc[grow, k])
        H16[r, k] = high_half(bits)
        L[r, k] = low_half(bits)


@T.macro
def split_sgd_row(H16, L, r, Gsrc, grow, rate, d):
    """Split-SGD step of the whole hi/lo row r (the definition: every column scalar)."""
    split_sgd_columns(H16, L, r, Gsrc, grow, rate, 0, d)


# ---------------------------------------------------------------- where a schedule plugs in


@dataclass(frozen=True)
class Hooks:
    """How the passes' loops run; the defaults are the plain definition (all serial).

    ``outer``: the kind of each pass's outer loop (bags, chunks, buckets: T.serial or
    T.parallel); ``inner``: of the D-wide loops (gradient copies and sums, the fp32 step);
    ``split_step``: a macro ``(H16, L, r, Gsrc, grow, rate, d)`` stepping a Split-SGD row;
    ``before_step``: None, or a macro ``(W, H16, L, M, P, ent, erow, lo, i, ne)`` that pass 4
    runs before its i-th entry of a bucket (entries ent/erow[lo : lo + ne]), e.g. prefetches.
    None of them may change what is computed.
    """

    outer: Any = T.serial
    inner: Any = T.serial
    split_step: Any = split_sgd_row
    before_step: Any = None


PLAIN = Hooks()


def update_kernel(b: int, nt: int, d: int, optimizer: str, storage: str, body) -> tirx.PrimFunc:
    """The update's PrimFunc for (optimizer, storage): its parameters (module docstring) bound to
    buffers, then the macro ``body(W, H16, L, M, I_, Off, RO, G, lr, nnz)``.

    fp32 tables: W (H16, L and, for sgd, M alias W); split and rows: H16 and L the uint16 hi and
    lo halves (rows: two views of one [rows, 2D] table), W (and M for sgd) alias L. M is
    [rows] for rwsadagrad, [rows, D] for adagrad. Shared by every implementation of the op, so
    all take the same arguments."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    adagrad = optimizer != "sgd"  # an optimizer state M after the table(s)

    def acc_shape(nrows):  # M's shape: a row's accumulator (rwsadagrad) or its state
        return (nrows, d) if optimizer == "adagrad" else (nrows,)

    tb = nt * b

    if storage == "fp32" and not adagrad:
        @T.prim_func
        def func(w: T.handle, idx: T.handle, off: T.handle, roff: T.handle, g: T.handle,
                 lr: T.Buffer((1,), F32)):
            nnz, nrows = T.int64(), T.int64()
            W = T.match_buffer(w, (nrows, d), F32)
            I_ = T.match_buffer(idx, (nnz,), I64)
            Off = T.match_buffer(off, (tb + 1,), I64)
            RO = T.match_buffer(roff, (nt,), I64)
            G = T.match_buffer(g, (b, nt, d), F32)
            body(W, W, W, W, I_, Off, RO, G, lr, nnz)
    elif storage == "fp32":
        @T.prim_func
        def func(w: T.handle, acc: T.handle, idx: T.handle, off: T.handle, roff: T.handle,
                 g: T.handle, lr: T.Buffer((1,), F32)):
            nnz, nrows = T.int64(), T.int64()
            W = T.match_buffer(w, (nrows, d), F32)
            M = T.match_buffer(acc, acc_shape(nrows), F32)
            I_ = T.match_buffer(idx, (nnz,), I64)
            Off = T.match_buffer(off, (tb + 1,), I64)
            RO = T.match_buffer(roff, (nt,), I64)
            G = T.match_buffer(g, (b, nt, d), F32)
            body(W, W, W, M, I_, Off, RO, G, lr, nnz)
    elif storage == "rows" and not adagrad:
        @T.prim_func
        def func(tab: T.handle, idx: T.handle, off: T.handle, roff: T.handle, g: T.handle,
                 lr: T.Buffer((1,), F32)):
            nnz, nrows = T.int64(), T.int64()
            Tb = T.match_buffer(tab, (nrows, 2 * d), "bfloat16")
            I_ = T.match_buffer(idx, (nnz,), I64)
            Off = T.match_buffer(off, (tb + 1,), I64)
            RO = T.match_buffer(roff, (nt,), I64)
            G = T.match_buffer(g, (b, nt, d), F32)
            H16 = T.decl_buffer((nrows, 2 * d), "uint16", data=Tb.data)
            L = T.decl_buffer((nrows, 2 * d), "uint16", data=Tb.data, elem_offset=d)
            body(L, H16, L, L, I_, Off, RO, G, lr, nnz)
    elif storage == "rows":
        @T.prim_func
        def func(tab: T.handle, acc: T.handle, idx: T.handle, off: T.handle, roff: T.handle,
                 g: T.handle, lr: T.Buffer((1,), F32)):
            nnz, nrows = T.int64(), T.int64()
            Tb = T.match_buffer(tab, (nrows, 2 * d), "bfloat16")
            M = T.match_buffer(acc, acc_shape(nrows), F32)
            I_ = T.match_buffer(idx, (nnz,), I64)
            Off = T.match_buffer(off, (tb + 1,), I64)
            RO = T.match_buffer(roff, (nt,), I64)
            G = T.match_buffer(g, (b, nt, d), F32)
            H16 = T.decl_buffer((nrows, 2 * d), "uint16", data=Tb.data)
            L = T.decl_buffer((nrows, 2 * d), "uint16", data=Tb.data, elem_offset=d)
            body(L, H16, L, M, I_, Off, RO, G, lr, nnz)
    elif not adagrad:
        @T.prim_func
        def func(hi: T.handle, lo_: T.handle, idx: T.handle, off: T.handle, roff: T.handle,
                 g: T.handle, lr: T.Buffer((1,), F32)):
            nnz, nrows = T.int64(), T.int64()
            H = T.match_buffer(hi, (nrows, d), "bfloat16")
            L = T.match_buffer(lo_, (nrows, d), "uint16")
            I_ = T.match_buffer(idx, (nnz,), I64)
            Off = T.match_buffer(off, (tb + 1,), I64)
            RO = T.match_buffer(roff, (nt,), I64)
            G = T.match_buffer(g, (b, nt, d), F32)
            H16 = T.decl_buffer((nrows, d), "uint16", data=H.data)
            body(L, H16, L, L, I_, Off, RO, G, lr, nnz)
    else:
        @T.prim_func
        def func(hi: T.handle, lo_: T.handle, acc: T.handle, idx: T.handle, off: T.handle,
                 roff: T.handle, g: T.handle, lr: T.Buffer((1,), F32)):
            nnz, nrows = T.int64(), T.int64()
            H = T.match_buffer(hi, (nrows, d), "bfloat16")
            L = T.match_buffer(lo_, (nrows, d), "uint16")
            M = T.match_buffer(acc, acc_shape(nrows), F32)
            I_ = T.match_buffer(idx, (nnz,), I64)
            Off = T.match_buffer(off, (tb + 1,), I64)
            RO = T.match_buffer(roff, (nt,), I64)
            G = T.match_buffer(g, (b, nt, d), F32)
            H16 = T.decl_buffer((nrows, d), "uint16", data=H.data)
            body(L, H16, L, M, I_, Off, RO, G, lr, nnz)
    return func


def embedding_bag_update(b: int, nt: int, d: int, optimizer: str = "sgd", storage: str = "fp32",
                         eps: float | None = None, *, how: Hooks = PLAIN) -> tirx.PrimFunc:
    """The kernel, tagged ``dlrm.op`` = embedding_bag_update. With ``how=PLAIN`` it is the op's
    definition (every loop serial); a schedule passes its own ``Hooks`` for the same passes.
    ``eps``: Adagrad's, by default the optimizer's (``config.OPTIMIZER_EPS``)."""
    adagrad = optimizer == "rwsadagrad"
    exact = optimizer == "adagrad"
    if eps is None:
        eps = OPTIMIZER_EPS.get(optimizer, ADAGRAD_EPS)
    split = storage in ("split", "rows")
    tb = nt * b

    @T.macro
    def step_row(W, H16, L, M, r, P, e, lr):
        # one optimizer step of row r with its summed gradient P[e, :]
        rate = T.decl_buffer((1,), F32, scope="local")
        rate[0] = lr[0]
        if adagrad:
            sq = T.decl_buffer((1,), F32, scope="local")
            sq[0] = T.float32(0)
            for k in range(d):
                sq[0] = sq[0] + P[e, k] * P[e, k]
            M[r] = M[r] + sq[0] / T.float32(d)
            rate[0] = lr[0] / (T.sqrt(M[r]) + T.float32(eps))
        if exact:
            # the state, then the row's partial becomes the scaled gradient g / (sqrt(M) + eps)
            # (P[e] is not read again), which the SGD step below applies at rate lr
            for k in how.inner(d):
                M[r, k] = M[r, k] + P[e, k] * P[e, k]
                P[e, k] = P[e, k] / (T.sqrt(M[r, k]) + T.float32(eps))
        if split:
            how.split_step(H16, L, r, P, e, rate[0], d)
        else:
            for k in how.inner(d):
                W[r, k] = W[r, k] - rate[0] * P[e, k]

    @T.macro
    def body(W, H16, L, M, I_, Off, RO, G, lr, nnz):
        nch = T.meta_var((nnz + T.int64(CHUNK - 1)) // T.int64(CHUNK))
        if nnz > T.int64(0):
            bagof = T.decl_buffer((nnz,), "int32")
            urow = T.decl_buffer((nch * CHUNK,), I64)  # distinct rows of each chunk
            P = T.decl_buffer((nch * CHUNK, d), F32)  # their summed gradients
            nu = T.decl_buffer((nch,), I64)
            cnt = T.decl_buffer((BUCKETS * nch,), I64)  # [bucket][chunk]
            ent = T.decl_buffer((nch * CHUNK,), I64)  # distinct-row entries by bucket
            erow = T.decl_buffer((nch * CHUNK,), I64)  # and their rows, beside them
            keys = T.decl_buffer((nch * CHUNK * 2,), I64)
            vals = T.decl_buffer((nch * CHUNK * 2,), I64)
            # 0: the bag of every lookup
            for v in how.outer(T.int64(tb)):
                for i in range(Off[v + 1] - Off[v]):
                    bagof[Off[v] + i] = T.Cast("int32", v)
            # 1: per chunk, sum equal rows' gradients in lookup order
            for c in how.outer(nch):
                h1 = T.decl_buffer((1,), I64, scope="local")
                n1 = T.decl_buffer((1,), I64, scope="local")
                n1[0] = T.int64(0)
                for q in range(T.int64(2 * CHUNK)):
                    keys[c * (2 * CHUNK) + q] = T.int64(-1)
                for q in range(T.int64(BUCKETS)):
                    cnt[q * nch + c] = T.int64(0)
                for i in range(T.min(nnz - c * CHUNK, T.int64(CHUNK))):
                    p = c * CHUNK + i
                    bv = T.Cast(I64, bagof[p])
                    r = I_[p] + RO[bv // b]
                    h1[0] = T.floormod(_h32(r), T.int64(2 * CHUNK))
                    while keys[c * (2 * CHUNK) + h1[0]] != T.int64(-1) and \
                            keys[c * (2 * CHUNK) + h1[0]] != r:
                        h1[0] = T.floormod(h1[0] + T.int64(1), T.int64(2 * CHUNK))
                    if keys[c * (2 * CHUNK) + h1[0]] == T.int64(-1):
                        keys[c * (2 * CHUNK) + h1[0]] = r
                        vals[c * (2 * CHUNK) + h1[0]] = c * CHUNK + n1[0]
                        urow[c * CHUNK + n1[0]] = r
                        for k in how.inner(d):
                            P[c * CHUNK + n1[0], k] = G[bv % b, bv // b, k]
                        cnt[bucket_of(r) * nch + c] = cnt[bucket_of(r) * nch + c] + T.int64(1)
                        n1[0] = n1[0] + T.int64(1)
                    else:
                        e = vals[c * (2 * CHUNK) + h1[0]]
                        for k in how.inner(d):
                            P[e, k] = P[e, k] + G[bv % b, bv // b, k]
                nu[c] = n1[0]
            # 2: (bucket, chunk) starts, bucket-major
            s2 = T.decl_buffer((1,), I64, scope="local")
            s2[0] = T.int64(0)
            for q in range(T.int64(BUCKETS) * nch):
                t = cnt[q]
                cnt[q] = s2[0]
                s2[0] = s2[0] + t
            # 3: each chunk files its distinct rows under their buckets (cnt becomes the ends)
            for c in how.outer(nch):
                for j in range(nu[c]):
                    bk = bucket_of(urow[c * CHUNK + j])
                    ent[cnt[bk * nch + c]] = c * CHUNK + j
                    erow[cnt[bk * nch + c]] = urow[c * CHUNK + j]
                    cnt[bk * nch + c] = cnt[bk * nch + c] + T.int64(1)
            # 4: per bucket, add each row's partials in chunk order, then step the row once
            for bk in how.outer(T.int64(BUCKETS)):
                h4 = T.decl_buffer((1,), I64, scope="local")
                msk = T.decl_buffer((1,), I64, scope="local")
                lo = T.if_then_else(bk == T.int64(0), T.int64(0), cnt[bk * nch - 1])
                ne = cnt[bk * nch + nch - 1] - lo  # entries in this bucket
                if ne > T.int64(0):
                    # a power-of-two map with more slots than entries (at most 2 ne: the
                    # bucket's region of keys), probed with a mask instead of a division
                    msk[0] = T.int64(1)
                    while msk[0] <= ne:
                        msk[0] = msk[0] * T.int64(2)
                    msk[0] = msk[0] - T.int64(1)
                    for q in range(msk[0] + T.int64(1)):
                        keys[lo * 2 + q] = T.int64(-1)
                    for i in range(ne):
                        e = ent[lo + i]
                        r = erow[lo + i]
                        h4[0] = T.bitwise_and(_h32(r), msk[0])
                        while keys[lo * 2 + h4[0]] != T.int64(-1) and keys[lo * 2 + h4[0]] != r:
                            h4[0] = T.bitwise_and(h4[0] + T.int64(1), msk[0])
                        if keys[lo * 2 + h4[0]] == T.int64(-1):
                            keys[lo * 2 + h4[0]] = r
                            vals[lo * 2 + h4[0]] = e
                        else:
                            for k in how.inner(d):
                                P[vals[lo * 2 + h4[0]], k] = P[vals[lo * 2 + h4[0]], k] + P[e, k]
                    for i in range(ne):
                        e = ent[lo + i]
                        r = erow[lo + i]
                        if how.before_step is not None:
                            how.before_step(W, H16, L, M, P, ent, erow, lo, i, ne)
                        h4[0] = T.bitwise_and(_h32(r), msk[0])
                        while keys[lo * 2 + h4[0]] != r:
                            h4[0] = T.bitwise_and(h4[0] + T.int64(1), msk[0])
                        if vals[lo * 2 + h4[0]] == e:
                            step_row(W, H16, L, M, r, P, e, lr)

    func = update_kernel(b, nt, d, optimizer, storage, body)
    return func.with_attrs({
        "dlrm.op": "embedding_bag_update", "dlrm.d": d, "dlrm.tables": nt, "dlrm.batch": b,
        "dlrm.optimizer": optimizer, "dlrm.storage": storage})
