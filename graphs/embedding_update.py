"""The fused embedding backward + optimizer step: coalesce, bucket, step (deterministic).

``embedding_bag_update(B, T, D, optimizer, storage)`` applies, in place, one optimizer step to
every table row that the batch looked up. A row's gradient is the sum of the pooled-output
gradients of all its lookups, as torch's coalesced sparse gradient. No gradient the size of a
table is formed: the work and the scratch memory are O(lookups x D).

The algorithm, in four passes (each a loop that a schedule may run in parallel):

0. the bag of every lookup (parallel over bags);
1. lookups are cut into fixed chunks of ``CHUNK`` in order. Per chunk, a hash map sums the
   gradients of equal rows (in lookup order) into one partial per distinct row, and counts
   the distinct rows per bucket (``BUCKETS`` buckets by a hash of the row). A hot row costs
   one vector add per lookup here, spread over all chunks: it never serialises;
2. a prefix sum gives every (bucket, chunk) its place (serial: BUCKETS x chunks);
3. each chunk files its distinct rows under their buckets (parallel over chunks);
4. per bucket (parallel), a second hash map adds each row's partials in chunk order into the
   first one, and the optimizer steps each distinct row once.

Chunks and buckets are fixed numbers, not thread counts, and every row's sum runs in the same
order whatever thread runs it: the updated tables are the same bytes for any thread count.
No two threads ever write one row (a row lives in one bucket), so no atomics are needed.

Optimizers: ``sgd`` (W -= lr * g) and ``rwsadagrad`` (the reference's row-wise sparse Adagrad:
one fp32 accumulator per row, M[r] += mean(g^2); W -= lr * g / (sqrt(M[r]) + eps)).
Storage: ``fp32`` tables, or ``split`` (Split-SGD-BF16: a bfloat16 high half, what the forward
reads, and a uint16 low half; the step rebuilds the fp32 master, steps, splits again), or
``rows`` (the same halves kept together: one table [rows, 2D] whose row r is hi(r) then lo(r),
so an updated row is one span of 4D bytes, one page; the forward reads the first 2D bytes).

Parameter order: table(s) (W, or hi and lo), then M for rwsadagrad, then indices, offsets,
row offsets, d_pooled [B, T, D], lr [1]. Indices are NOT bounds-checked: the runtime validates.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

F32, I64 = "float32", "int64"
CHUNK = 4096  # lookups per chunk (fixed: part of the summation order)
BUCKETS = 256  # row buckets (fixed: part of the work split, never of the result)
PREFETCH = 8  # entries ahead (measured: 4 to 16 within noise, none 20% slower)
HASH_MUL = 2654435761  # Knuth's multiplicative hash; r * HASH_MUL stays < 2^63 for r < 2^31
ADAGRAD_EPS = 1e-10  # torch's Adagrad default, and the reference's
OPTIMIZERS = ("sgd", "rwsadagrad")
STORAGES = ("fp32", "split", "rows")


def _h32(r):
    return T.floormod(r * T.int64(HASH_MUL), T.int64(1 << 32))


# Split-SGD step of 8 elements: rebuild the fp32 masters from (hi, lo), fma, split again. TVM's
# vectoriser mistranslates this body written in TIR (7 of 8 lanes wrong, see docs/bf16.md), so
# the parallel kernels import it as LLVM IR (loop annotation pragma_import_llvm) and call it;
# LLVM inlines it. Plain LLVM vectors: legal on any x86-64 (AVX2: one ymm per step). The fma is
# what TVM's own fp32 code does with w - rate * g (fused), so both storages stay bit-identical.
def _split_sgd_ir(w: int) -> str:
    """LLVM IR of ``dlrm_split_sgd{w}(hi, lo, g, rate)``: one Split-SGD step of w elements."""
    v16, v32, vf = f"<{w} x i16>", f"<{w} x i32>", f"<{w} x float>"
    sixteen = "<" + ", ".join(["i32 16"] * w) + ">"
    return f"""
declare {vf} @llvm.fma.v{w}f32({vf}, {vf}, {vf})

define void @dlrm_split_sgd{w}(ptr %hi, ptr %lo, ptr %g, float %rate) alwaysinline {{
  %h = load {v16}, ptr %hi, align 2
  %l = load {v16}, ptr %lo, align 2
  %gv = load {vf}, ptr %g, align 4
  %h32 = zext {v16} %h to {v32}
  %l32 = zext {v16} %l to {v32}
  %hs = shl {v32} %h32, {sixteen}
  %bits = or {v32} %hs, %l32
  %w = bitcast {v32} %bits to {vf}
  %nr = fneg float %rate
  %r0 = insertelement {vf} poison, float %nr, i32 0
  %rs = shufflevector {vf} %r0, {vf} poison, <{w} x i32> zeroinitializer
  %nw = call {vf} @llvm.fma.v{w}f32({vf} %rs, {vf} %gv, {vf} %w)
  %nb = bitcast {vf} %nw to {v32}
  %nh = lshr {v32} %nb, {sixteen}
  %nh16 = trunc {v32} %nh to {v16}
  %nl16 = trunc {v32} %nb to {v16}
  store {v16} %nh16, ptr %hi, align 2
  store {v16} %nl16, ptr %lo, align 2
  ret void
}}
"""


def _split_sgd_shuffle_ir(w: int = 32) -> str:
    """``dlrm_split_sgd{w}s``: the same step as ``_split_sgd_ir(w)``, with the halves
    interleaved into fp32 words by shuffles (lo_k, hi_k pairs are the little-endian fp32) and
    split back by even/odd shuffles: about half the instructions of widen/shift/or and
    shift/narrow (AVX-512BW: vpermt2w), same bits."""
    h = w // 2
    v16, vf = f"<{w} x i16>", f"<{h} x float>"
    lo_idx = ", ".join(f"i32 {k}, i32 {k + w}" for k in range(h))
    hi_idx = ", ".join(f"i32 {k}, i32 {k + w}" for k in range(h, w))
    even = ", ".join(f"i32 {2 * k}" for k in range(w))
    odd = ", ".join(f"i32 {2 * k + 1}" for k in range(w))
    return f"""
declare {vf} @llvm.fma.v{h}f32({vf}, {vf}, {vf})

define void @dlrm_split_sgd{w}s(ptr %hi, ptr %lo, ptr %g, float %rate) alwaysinline {{
  %h = load {v16}, ptr %hi, align 2
  %l = load {v16}, ptr %lo, align 2
  %a = shufflevector {v16} %l, {v16} %h, <{w} x i32> <{lo_idx}>
  %b = shufflevector {v16} %l, {v16} %h, <{w} x i32> <{hi_idx}>
  %wa = bitcast {v16} %a to {vf}
  %wb = bitcast {v16} %b to {vf}
  %ga = load {vf}, ptr %g, align 4
  %gp = getelementptr float, ptr %g, i64 {h}
  %gb = load {vf}, ptr %gp, align 4
  %nr = fneg float %rate
  %r0 = insertelement {vf} poison, float %nr, i32 0
  %rs = shufflevector {vf} %r0, {vf} poison, <{h} x i32> zeroinitializer
  %na = call {vf} @llvm.fma.v{h}f32({vf} %rs, {vf} %ga, {vf} %wa)
  %nb = call {vf} @llvm.fma.v{h}f32({vf} %rs, {vf} %gb, {vf} %wb)
  %ia = bitcast {vf} %na to {v16}
  %ib = bitcast {vf} %nb to {v16}
  %nl = shufflevector {v16} %ia, {v16} %ib, <{w} x i32> <{even}>
  %nh = shufflevector {v16} %ia, {v16} %ib, <{w} x i32> <{odd}>
  store {v16} %nh, ptr %hi, align 2
  store {v16} %nl, ptr %lo, align 2
  ret void
}}
"""


# Split-SGD steps of 8 and 16 elements: rebuild the fp32 masters from (hi, lo), fma, split
# again. TVM's vectoriser mistranslates this body written in TIR (7 of 8 lanes wrong, see
# docs/bf16.md), so the parallel kernels import it as LLVM IR (loop annotation
# pragma_import_llvm) and call it; LLVM inlines it. Plain LLVM vectors: legal on any x86-64
# (AVX2 splits a 16-wide step in two). The fma is what TVM's own fp32 code does with
# w - rate * g (fused), so both storages stay bit-identical. Rows step 32 elements at a time
# with the shuffle form where D allows, then 16, then 8: the 8-wide widen/shift form alone
# made the bf16 update instruction-bound (small: 63.8 ms against fp32's 38 to 47).
SPLIT_SGD_LLVM_IR = _split_sgd_ir(8) + _split_sgd_ir(16)
SPLIT_SGD_SHUFFLE_IR = _split_sgd_shuffle_ir(32)


@T.macro(hygienic=False)
def _split_step(H16, L, r, Gsrc, grow, rate, d, vector):
    """hi/lo row r -= rate * Gsrc[grow, :]: vector steps of 8 (``vector``), then scalar."""
    if vector:
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
    for k in range(d // 8 * 8 if vector else 0, d):
        w = T.reinterpret(
            F32,
            T.shift_left(T.Cast("uint32", H16[r, k]), T.uint32(16)) | T.Cast("uint32", L[r, k]),
        )
        bits = T.reinterpret("uint32", w - rate * Gsrc[grow, k])
        H16[r, k] = T.Cast("uint16", T.shift_right(bits, T.uint32(16)))
        L[r, k] = T.Cast("uint16", bits & T.uint32(0xFFFF))


def _prefetch(buf, row, col, write: int):
    """A software prefetch of buf[row, col]'s cache line (never faults)."""
    return T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(buf[row, col]),
                                         T.int32(write), T.int32(3), T.int32(1)))


def _bucket(r):
    return T.floordiv(_h32(r), T.int64((1 << 32) // BUCKETS))


def embedding_bag_update(b: int, nt: int, d: int, optimizer: str = "sgd", storage: str = "fp32",
                         parallel: bool = False, eps: float = ADAGRAD_EPS) -> tirx.PrimFunc:
    """The kernel; ``parallel=False`` is the op's plain definition (every loop serial),
    ``parallel=True`` the same passes with their outer loops parallel and D vectorised."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    loop = T.parallel if parallel else T.serial
    vec = T.vectorized if parallel else T.serial
    adagrad = optimizer == "rwsadagrad"
    split = storage in ("split", "rows")
    rows = storage == "rows"
    tb = nt * b
    prefetch = parallel

    @T.macro(hygienic=False)
    def step_row(W, H16, L, M, r, P, e, lr, vec, adagrad, split, eps, vector):
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
        if split:
            _split_step(H16, L, r, P, e, rate[0], d, vector)
        else:
            for k in vec(d):
                W[r, k] = W[r, k] - rate[0] * P[e, k]

    @T.macro(hygienic=False)
    def body(W, H16, L, M, I_, Off, RO, G, lr, nnz, loop, vec, adagrad, split, step_row, eps, prefetch,
             rows):
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
            for v in loop(T.int64(tb)):
                for i in range(Off[v + 1] - Off[v]):
                    bagof[Off[v] + i] = T.Cast("int32", v)
            # 1: per chunk, sum equal rows' gradients in lookup order
            for c in loop(nch):
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
                        for k in vec(d):
                            P[c * CHUNK + n1[0], k] = G[bv % b, bv // b, k]
                        cnt[_bucket(r) * nch + c] = cnt[_bucket(r) * nch + c] + T.int64(1)
                        n1[0] = n1[0] + T.int64(1)
                    else:
                        e = vals[c * (2 * CHUNK) + h1[0]]
                        for k in vec(d):
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
            for c in loop(nch):
                for j in range(nu[c]):
                    bk = _bucket(urow[c * CHUNK + j])
                    ent[cnt[bk * nch + c]] = c * CHUNK + j
                    erow[cnt[bk * nch + c]] = urow[c * CHUNK + j]
                    cnt[bk * nch + c] = cnt[bk * nch + c] + T.int64(1)
            # 4: per bucket, add each row's partials in chunk order, then step the row once
            for bk in loop(T.int64(BUCKETS)):
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
                            for k in vec(d):
                                P[vals[lo * 2 + h4[0]], k] = P[vals[lo * 2 + h4[0]], k] + P[e, k]
                    for i in range(ne):
                        e = ent[lo + i]
                        r = erow[lo + i]
                        if prefetch and i + T.int64(PREFETCH) < ne:
                            # the rows and partials PREFETCH entries ahead (random addresses)
                            for q in range((d * 4 + 63) // 64):
                                _prefetch(P, ent[lo + i + PREFETCH], q * 16, 0)
                                if rows:  # hi and lo: one span of 4 * D bytes
                                    _prefetch(H16, erow[lo + i + PREFETCH], q * 32, 1)
                                elif split:
                                    if q % 2 == 0:
                                        _prefetch(H16, erow[lo + i + PREFETCH], q * 16, 1)
                                        _prefetch(L, erow[lo + i + PREFETCH], q * 16, 1)
                                else:
                                    _prefetch(W, erow[lo + i + PREFETCH], q * 16, 1)
                        h4[0] = T.bitwise_and(_h32(r), msk[0])
                        while keys[lo * 2 + h4[0]] != r:
                            h4[0] = T.bitwise_and(h4[0] + T.int64(1), msk[0])
                        if vals[lo * 2 + h4[0]] == e:
                            step_row(W, H16, L, M, r, P, e, lr, vec, adagrad, split, eps, prefetch)

    if not split and not adagrad:
        @T.prim_func
        def func(w: T.handle, idx: T.handle, off: T.handle, roff: T.handle, g: T.handle,
                 lr: T.Buffer((1,), F32)):
            nnz, nrows = T.int64(), T.int64()
            W = T.match_buffer(w, (nrows, d), F32)
            I_ = T.match_buffer(idx, (nnz,), I64)
            Off = T.match_buffer(off, (tb + 1,), I64)
            RO = T.match_buffer(roff, (nt,), I64)
            G = T.match_buffer(g, (b, nt, d), F32)
            body(W, W, W, W, I_, Off, RO, G, lr, nnz, loop, vec, adagrad, split, step_row, eps, prefetch,
                 rows)
    elif not split:
        @T.prim_func
        def func(w: T.handle, acc: T.handle, idx: T.handle, off: T.handle, roff: T.handle,
                 g: T.handle, lr: T.Buffer((1,), F32)):
            nnz, nrows = T.int64(), T.int64()
            W = T.match_buffer(w, (nrows, d), F32)
            M = T.match_buffer(acc, (nrows,), F32)
            I_ = T.match_buffer(idx, (nnz,), I64)
            Off = T.match_buffer(off, (tb + 1,), I64)
            RO = T.match_buffer(roff, (nt,), I64)
            G = T.match_buffer(g, (b, nt, d), F32)
            body(W, W, W, M, I_, Off, RO, G, lr, nnz, loop, vec, adagrad, split, step_row, eps, prefetch,
                 rows)
    elif rows and not adagrad:
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
            body(L, H16, L, L, I_, Off, RO, G, lr, nnz, loop, vec, adagrad, split, step_row, eps, prefetch,
                 rows)
    elif rows:
        @T.prim_func
        def func(tab: T.handle, acc: T.handle, idx: T.handle, off: T.handle, roff: T.handle,
                 g: T.handle, lr: T.Buffer((1,), F32)):
            nnz, nrows = T.int64(), T.int64()
            Tb = T.match_buffer(tab, (nrows, 2 * d), "bfloat16")
            M = T.match_buffer(acc, (nrows,), F32)
            I_ = T.match_buffer(idx, (nnz,), I64)
            Off = T.match_buffer(off, (tb + 1,), I64)
            RO = T.match_buffer(roff, (nt,), I64)
            G = T.match_buffer(g, (b, nt, d), F32)
            H16 = T.decl_buffer((nrows, 2 * d), "uint16", data=Tb.data)
            L = T.decl_buffer((nrows, 2 * d), "uint16", data=Tb.data, elem_offset=d)
            body(L, H16, L, M, I_, Off, RO, G, lr, nnz, loop, vec, adagrad, split, step_row, eps, prefetch,
                 rows)
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
            body(L, H16, L, L, I_, Off, RO, G, lr, nnz, loop, vec, adagrad, split, step_row, eps, prefetch,
                 rows)
    else:
        @T.prim_func
        def func(hi: T.handle, lo_: T.handle, acc: T.handle, idx: T.handle, off: T.handle,
                 roff: T.handle, g: T.handle, lr: T.Buffer((1,), F32)):
            nnz, nrows = T.int64(), T.int64()
            H = T.match_buffer(hi, (nrows, d), "bfloat16")
            L = T.match_buffer(lo_, (nrows, d), "uint16")
            M = T.match_buffer(acc, (nrows,), F32)
            I_ = T.match_buffer(idx, (nnz,), I64)
            Off = T.match_buffer(off, (tb + 1,), I64)
            RO = T.match_buffer(roff, (nt,), I64)
            G = T.match_buffer(g, (b, nt, d), F32)
            H16 = T.decl_buffer((nrows, d), "uint16", data=H.data)
            body(L, H16, L, M, I_, Off, RO, G, lr, nnz, loop, vec, adagrad, split, step_row, eps, prefetch,
                 rows)

    return func.with_attrs({
        "dlrm.op": "embedding_bag_update", "dlrm.d": d, "dlrm.tables": nt, "dlrm.batch": b,
        "dlrm.optimizer": optimizer, "dlrm.storage": storage})


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

    @T.macro(hygienic=False)
    def body(W, H16, L, I_, Off, RO, G, lr, nnz, split, lines, rows):
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
                    bk = _bucket(I_[p] + RO[T.Cast(I64, bagof[p]) // b])
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
                    bk = _bucket(r)
                    lgrad[cnt[bk * nch + c]] = T.Cast("int32", (bv % b) * nt + bv // b)
                    lrow[cnt[bk * nch + c]] = r
                    cnt[bk * nch + c] = cnt[bk * nch + c] + T.int64(1)
            for bk in T.parallel(T.int64(BUCKETS)):
                lo = T.if_then_else(bk == T.int64(0), T.int64(0), cnt[bk * nch - 1])
                for i in range(cnt[bk * nch + nch - 1] - lo):
                    if i + T.int64(PREFETCH) < cnt[bk * nch + nch - 1] - lo:
                        for q in range(lines):
                            if rows:  # hi and lo: one span of 4 * D bytes
                                _prefetch(H16, lrow[lo + i + PREFETCH], q * 32, 1)
                            elif split:
                                _prefetch(H16, lrow[lo + i + PREFETCH], q * 32, 1)
                                _prefetch(L, lrow[lo + i + PREFETCH], q * 32, 1)
                            else:
                                _prefetch(W, lrow[lo + i + PREFETCH], q * 16, 1)
                        for q in range((d * 4 + 63) // 64):
                            _prefetch(G2, T.Cast(I64, lgrad[lo + i + PREFETCH]), q * 16, 0)
                    r = lrow[lo + i]
                    gr = T.Cast(I64, lgrad[lo + i])
                    if split:
                        _split_step(H16, L, r, G2, gr, lr[0], d, True)
                    else:
                        for k in T.vectorized(d):
                            W[r, k] = W[r, k] - lr[0] * G2[gr, k]

    if not split:
        @T.prim_func
        def func(w: T.handle, idx: T.handle, off: T.handle, roff: T.handle, g: T.handle,
                 lr: T.Buffer((1,), F32)):
            nnz, nrows = T.int64(), T.int64()
            W = T.match_buffer(w, (nrows, d), F32)
            I_ = T.match_buffer(idx, (nnz,), I64)
            Off = T.match_buffer(off, (tb + 1,), I64)
            RO = T.match_buffer(roff, (nt,), I64)
            G = T.match_buffer(g, (b, nt, d), F32)
            body(W, W, W, I_, Off, RO, G, lr, nnz, split, lines, rows)
    elif rows:
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
            body(L, H16, L, I_, Off, RO, G, lr, nnz, split, lines, rows)
    else:
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
            body(L, H16, L, I_, Off, RO, G, lr, nnz, split, lines, rows)

    return func
