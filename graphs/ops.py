"""WHAT each DLRM kernel computes: plain (unscheduled) TIR PrimFuncs.

Every function here returns a naive PrimFunc for one fixed shape, tagged with the func attribute
``dlrm.op`` (and a few shape/kind attributes) that schedule rules in ``dlrm_tvm.schedules`` match
on: every key, its type, meaning and readers are listed in schedules/base.py's docstring (add a
new one there too). Nothing here says how a loop is run: no parallel, no vectorize, no target.
The NumPy oracle of each kernel lives beside it in ``graphs/reference.py``. The interaction's
kernels (ops_interaction.py) and the dense optimizer steps (ops_optim.py) live in their own
files and are re-exported here: ``ops.<name>`` names every kernel factory.

Layouts (row-major):
  MLP weight    Wt [K, N]  (in x out: the transpose of torch's Linear.weight)
  activations   [B, width]
  pooled        [B, T, D]  (one D-vector per sample and table)
  tables        [sum(rows), D]  (all tables concatenated; table t starts at row_offset[t])
  bags          indices int64 [nnz] (row within its table), offsets int64 [T*B + 1], bag
                (t, b) = indices[offsets[t*B + b] : offsets[t*B + b + 1]]
                (table-major, as torchrec's KeyedJaggedTensor)
"""

from __future__ import annotations

from dlrm_tvm.graphs.common import F32, I64, tag_op
from dlrm_tvm.graphs.ops_interaction import (  # noqa: F401
    interaction_cat_bwd,
    interaction_cat_fwd,
    interaction_dot_bwd,
    interaction_dot_fwd,
    pair_tables,
    stack_features,
)
from dlrm_tvm.graphs.ops_optim import adagrad_update, sgd_update, split_sgd_update  # noqa: F401
from tvm import te, tirx
from tvm.script import tirx as T

# ---------------------------------------------------------------- GEMM family


GEMM_EPILOGUES = ("none", "bias", "bias_relu", "relu_mask")


def gemm(m: int, k: int, n: int, a_layout: str = "mk", epilogue: str = "none",
         b_layout: str = "kn", in_dtype: str = F32, out_dtype: str = F32) -> tirx.PrimFunc:
    """Y[m, n] = epilogue(sum_k A(m, k) * B[k, n]).

    a_layout "mk": A is [M, K] (forward X @ Wt, input gradient dY @ W);
    a_layout "km": A is [K, M] (weight gradient X^T @ dY).
    b_layout "kn": B is [K, N]; "nk": B is [N, K] (input gradient dY @ Wt^T straight from the
    stored Wt, with no transpose kernel).
    in_dtype: of A, B, the bias and the mask ("float32" or "bfloat16"); products, sums and the
    epilogue are fp32; out_dtype: Y's (the epilogue ends with the cast, e.g. to bf16).
    epilogues: "none"; "bias" (+ b[n]); "bias_relu" (max(. + b[n], 0));
    "relu_mask" (. where mask[m, n] > 0 else 0: the ReLU backward through the layer's input).
    Blocks: "C" (the reduction) and "Y" (the epilogue).
    """
    if a_layout not in ("mk", "km"):
        raise ValueError(f"a_layout must be 'mk' or 'km', got {a_layout!r}")
    if b_layout not in ("kn", "nk"):
        raise ValueError(f"b_layout must be 'kn' or 'nk', got {b_layout!r}")
    if epilogue not in GEMM_EPILOGUES:
        raise ValueError(f"epilogue must be one of {GEMM_EPILOGUES}, got {epilogue!r}")
    for name, dt in (("in_dtype", in_dtype), ("out_dtype", out_dtype)):
        if dt not in (F32, "bfloat16"):
            raise ValueError(f"{name} must be float32 or bfloat16, got {dt!r}")
    A = te.placeholder((m, k) if a_layout == "mk" else (k, m), in_dtype, name="A")
    Bm = te.placeholder((k, n) if b_layout == "kn" else (n, k), in_dtype, name="B")
    r = te.reduce_axis((0, k), name="k")

    def f32(x):
        return x if in_dtype == F32 else x.astype(F32)

    def a_at(i, kk):
        return f32(A[i, kk] if a_layout == "mk" else A[kk, i])

    def b_at(kk, j):
        return f32(Bm[kk, j] if b_layout == "kn" else Bm[j, kk])

    C = te.compute((m, n), lambda i, j: te.sum(a_at(i, r) * b_at(r, j), axis=r), name="C")
    args, Y = gemm_epilogue(C, m, n, epilogue, in_dtype, out_dtype)
    f = te.create_prim_func([A, Bm, *args, Y])
    return tag_op(f, "gemm", m=m, k=k, n=n, a_layout=a_layout, b_layout=b_layout,
                epilogue=epilogue, in_dtype=in_dtype, out_dtype=out_dtype)


def convert(x, dst: str, src: str = F32):
    """``x`` (of dtype ``src``) as ``dst``; fp32 -> bf16 rounds to nearest even and keeps every
    NaN a NaN (TVM's rounding alone adds the rounding bias to NaN payloads too: 0x7FFFFFFF would
    become -0.0, 0x7F800001 +inf, hiding a diverged value)."""
    if src == F32 and dst == "bfloat16":
        nan = tirx.reinterpret("bfloat16", tirx.const(0x7FC0, "uint16"))
        return tirx.Select(tirx.isnan(x), nan, x.astype(dst))
    return x.astype(dst)


def gemm_epilogue(C, m: int, n: int, epilogue: str, in_dtype: str, out_dtype: str):
    """(extra inputs, Y): block "Y" = epilogue(C) in fp32, cast to ``out_dtype``; the bias and
    the mask are ``in_dtype``."""
    zero = tirx.const(0.0, F32)

    def f32(x):
        return x if in_dtype == F32 else x.astype(F32)

    def out(x):
        return x if out_dtype == F32 else convert(x, out_dtype)

    if epilogue == "none":
        return [], te.compute((m, n), lambda i, j: out(C[i, j]), name="Y")
    if epilogue in ("bias", "bias_relu"):
        bias = te.placeholder((n,), in_dtype, name="bias")
        if epilogue == "bias":
            return [bias], te.compute((m, n), lambda i, j: out(C[i, j] + f32(bias[j])),
                                      name="Y")
        return [bias], te.compute((m, n), lambda i, j: out(te.max(C[i, j] + f32(bias[j]), zero)),
                                  name="Y")
    mask = te.placeholder((m, n), in_dtype, name="mask")
    return [mask], te.compute(
        (m, n), lambda i, j: out(tirx.Select(f32(mask[i, j]) > zero, C[i, j], zero)), name="Y")


def colsum(m: int, n: int, in_dtype: str = F32) -> tirx.PrimFunc:
    """Y[n] = sum_m X[m, n] (the bias gradient), summed and returned in fp32."""
    X = te.placeholder((m, n), in_dtype, name="X")
    r = te.reduce_axis((0, m), name="r")
    Y = te.compute((n,), lambda j: te.sum(X[r, j].astype(F32), axis=r), name="Y")
    return tag_op(te.create_prim_func([X, Y]), "colsum")


def relu_bwd(m: int, n: int, act_dtype: str = F32, out_dtype: str = F32) -> tirx.PrimFunc:
    """dX[m, n] = dY[m, n] where Y[m, n] > 0 else 0 (Y: the ReLU's output; dY fp32)."""
    dY = te.placeholder((m, n), F32, name="dY")
    Y = te.placeholder((m, n), act_dtype, name="Yact")
    zero = tirx.const(0.0, F32)
    dX = te.compute(
        (m, n),
        lambda i, j: convert(tirx.Select(Y[i, j].astype(F32) > zero, dY[i, j], zero), out_dtype),
        name="dX",
    )
    return tag_op(te.create_prim_func([dY, Y, dX]), "relu_bwd")


def cast(shape: tuple[int, ...], src: str, dst: str) -> tirx.PrimFunc:
    """Y = X converted from ``src`` to ``dst`` (fp32 <-> bf16, round to nearest even)."""
    X = te.placeholder(shape, src, name="X")
    Y = te.compute(shape, lambda *i: convert(X[i], dst, src), name="Y")
    return tag_op(te.create_prim_func([X, Y]), "cast")


# ---------------------------------------------------------------- loss


def sigmoid(b: int) -> tirx.PrimFunc:
    """p[b] = sigmoid(z[b, 0]): the prediction head without the loss."""
    z = te.placeholder((b, 1), F32, name="z")
    p = te.compute((b,), lambda i: te.sigmoid(z[i, 0]), name="p")
    return tag_op(te.create_prim_func([z, p]), "sigmoid")


def bce_loss(b: int, scale: float | None = None) -> tirx.PrimFunc:
    """Sigmoid + binary cross-entropy (mean over the batch), forward and backward.

    Inputs z [B, 1] (logits), y [B] (0/1 labels); outputs p [B] (probabilities),
    loss [1] (sum of per-sample losses times ``scale``, default 1/B), dz [B, 1] = (p - y) * scale.
    The loss is computed on the logits, max(z, 0) - z y + log(1 + exp(-|z|)): exact for any
    finite z and without a clamp, so a diverging model shows a growing (then non-finite)
    loss instead of one stuck at a cap.
    """
    scale = 1.0 / b if scale is None else scale
    z = te.placeholder((b, 1), F32, name="z")
    y = te.placeholder((b,), F32, name="y")
    p = te.compute((b,), lambda i: te.sigmoid(z[i, 0]), name="p")
    zero = tirx.const(0.0, F32)
    per = te.compute(
        (b,),
        lambda i: te.max(z[i, 0], zero) - z[i, 0] * y[i]
        + tirx.log1p(te.exp(zero - tirx.abs(z[i, 0]))),
        name="per",
    )
    r = te.reduce_axis((0, b), name="r")
    total = te.compute((1,), lambda _: te.sum(per[r], axis=r), name="total")
    loss = te.compute((1,), lambda i: total[i] * tirx.const(scale, F32), name="loss")
    dz = te.compute((b, 1), lambda i, _: (p[i] - y[i]) * tirx.const(scale, F32), name="dz")
    return tag_op(te.create_prim_func([z, y, p, loss, dz]), "bce_loss")


# ---------------------------------------------------------------- embedding bags


def embedding_bag_fwd(b: int, row_offsets: tuple[int, ...], d: int,
                      table_dtype: str = F32, row_width: int | None = None) -> tirx.PrimFunc:
    """pooled[b, t, :] = sum of table rows of bag (t, b) (sum pooling; an empty bag gives 0).

    Inputs: W [rows, D] (all tables; float32, or bfloat16: the high half of Split-SGD tables),
    indices int64 [nnz], offsets int64 [T*B+1], row_offset int64 [T]; sums in fp32.
    Indices are NOT bounds-checked here: the runtime validates them first.
    ``row_width``: a row's stored width when it is more than D (2D: Split-SGD-BF16 rows stored
    hi then lo; the bag reads only the first D, the bf16 high half).
    """
    nt = len(row_offsets)
    wd = row_width or d

    @T.prim_func(s_tir=True)
    def func(w: T.handle, idx: T.handle, off: T.handle, roff: T.handle, out: T.handle):
        nnz = T.int64()
        nrows = T.int64()
        W = T.match_buffer(w, (nrows, wd), table_dtype)
        I_ = T.match_buffer(idx, (nnz,), I64)
        Off = T.match_buffer(off, (nt * b + 1,), I64)
        RO = T.match_buffer(roff, (nt,), I64)
        Y = T.match_buffer(out, (b, nt, d), F32)
        for t, s in T.grid(nt, b):
            with T.sblock("bag"):
                vt, vs = T.axis.remap("SS", [t, s])
                T.reads(W[0:nrows, 0:wd], I_[0:nnz], Off[vt * b + vs : vt * b + vs + 2], RO[vt])
                T.writes(Y[vs, vt, 0:d])
                acc = T.sblock_alloc_buffer((d,), F32, scope="local")
                for k in range(d):
                    acc[k] = T.float32(0)
                for p in range(Off[vt * b + vs], Off[vt * b + vs + 1]):
                    for k in range(d):
                        acc[k] = acc[k] + T.Cast(F32, W[I_[p] + RO[vt], k])
                for k in range(d):
                    Y[vs, vt, k] = acc[k]

    return tag_op(func, "embedding_bag_fwd", d=d, tables=nt, batch=b, table_dtype=table_dtype,
                row_width=wd)


# ---------------------------------------------------------------- VNNI-2 layouts (bf16 GEMMs)
#
# The bf16 microkernel reads its B operand as 16 x 2 tiles: a logical [K, N] matrix packed as
# P[N/16][K/2][16][2] with P[j, p, jj, e] = M[2p + e, 16j + jj] (zero past K and N). A
# weight-gradient GEMM (reduction over the batch) reads its A operand from the same layout of
# the activation [B, width] (A(i, k) = P[i // 16, k // 2, i % 16, k % 2]): one 4-byte pair per
# row, 16 rows to a cache line. One pack thus serves both operands of dW = X^T dZ.


def vnni_shape(k: int, n: int) -> tuple[int, int, int, int]:
    """The packed shape of a logical [K, N] matrix: (ceil(N/16), ceil(K/2), 16, 2)."""
    return (-(-n // 16), -(-k // 2), 16, 2)


def pack_vnni(rows: int, cols: int, transpose: bool = False, k_pad: int | None = None,
              dtype: str = "bfloat16") -> tirx.PrimFunc:
    """P = VNNI-2 pack of the logical [K, N] matrix M (zero padded).

    ``transpose=False``: the input is M itself, [rows=K, cols=N] (a weight Wt [in, out] for the
    forward; an activation or dY [B, width] for the weight gradient).
    ``transpose=True``: the input is M^T, [rows=N, cols=K] (the stored Wt [in, out] read as the
    B operand of the input gradient dY @ Wt^T, where K = out and N = in).
    ``k_pad``: pack K up to this (even) length (the first layer's 13 inputs padded to 16).
    Output P [ceil(N/16), k_pad/2, 16, 2] in ``dtype``; elements are moved bit for bit.
    """
    k, n = (cols, rows) if transpose else (rows, cols)
    kp = k_pad if k_pad is not None else k + (k % 2)
    if kp < k or kp % 2:
        raise ValueError(f"k_pad must be even and >= {k}, got {kp}")
    shape = vnni_shape(kp, n)
    tag = dict(rows=rows, cols=cols, transpose=int(transpose), k_pad=kp)
    if transpose and kp == k and n % 16 == 0 and dtype in ("bfloat16", "float16", "uint16"):
        # no padding: each K pair of a row of X is one 32-bit word, and the pack is a 32-bit
        # transpose P32[j, q, jj] = X32[16j + jj, q] (block "P" over (j, q, jj))
        nb, kh = n // 16, k // 2

        @T.prim_func(s_tir=True)
        def words(x: T.handle, p: T.handle):
            Xb = T.match_buffer(x, (rows, cols), dtype)
            Pb = T.match_buffer(p, shape, dtype)
            x32 = T.decl_buffer((rows, kh), "uint32", data=Xb.data)
            p32 = T.decl_buffer((nb, kh, 16), "uint32", data=Pb.data)
            for j, q, jj in T.grid(nb, kh, 16):
                with T.sblock("P"):
                    vj, vq, vjj = T.axis.remap("SSS", [j, q, jj])
                    p32[vj, vq, vjj] = x32[vj * 16 + vjj, vq]

        return tag_op(words, "pack_vnni", **tag)
    X = te.placeholder((rows, cols), dtype, name="X")
    zero = tirx.const(0.0, dtype)

    def body(j, p, jj, e):
        kk, nn = 2 * p + e, 16 * j + jj
        inside = tirx.all(kk < k, nn < n)
        if transpose:
            v = X[te.min(nn, rows - 1), te.min(kk, cols - 1)]
        else:
            v = X[te.min(kk, rows - 1), te.min(nn, cols - 1)]
        return tirx.if_then_else(inside, v, zero)

    P = te.compute(shape, body, name="P")
    return tag_op(te.create_prim_func([X, P]), "pack_vnni", **tag)


def cast_pad(m: int, k: int, k_pad: int, src: str = F32, dst: str = "bfloat16") -> tirx.PrimFunc:
    """Y[m, k_pad] = X[m, k] converted to ``dst``, zero in the columns past k: the dense input
    padded once where the batch enters (13 features -> 16) so every layer's K is even."""
    X = te.placeholder((m, k), src, name="X")
    Y = te.compute((m, k_pad), lambda i, j: tirx.if_then_else(
        j < k, convert(X[i, te.min(j, k - 1)], dst, src), tirx.const(0.0, dst)), name="Y")
    return tag_op(te.create_prim_func([X, Y]), "cast")


def gemm_vnni(m: int, k: int, n: int, a_layout: str = "mk", epilogue: str = "none",
              out_dtype: str = F32) -> tirx.PrimFunc:
    """Y[m, n] = epilogue(sum_k A(m, k) * B(k, n)) with bf16 operands already in the
    microkernel's layouts (fp32 products and sums):

    B: P[N/16][K/2][16][2] (``pack_vnni``); A: "mk" [M, K] row-major (forward, input gradient:
    a row's K pairs are contiguous), or "vnni" P[ceil(M/16)][K/2][16][2] (weight gradient: A is
    X^T with X [K=batch, M=width] packed by ``pack_vnni``; rows past M are never read).
    Needs N % 16 == 0 and K even. Epilogues and blocks "C"/"Y" as ``gemm``.
    """
    if a_layout not in ("mk", "vnni"):
        raise ValueError(f"a_layout must be 'mk' or 'vnni', got {a_layout!r}")
    if n % 16 or k % 2:
        raise ValueError(f"gemm_vnni needs N % 16 == 0 and K even, got K={k}, N={n}")
    if epilogue not in GEMM_EPILOGUES:
        raise ValueError(f"epilogue must be one of {GEMM_EPILOGUES}, got {epilogue!r}")
    bf = "bfloat16"
    A = te.placeholder((m, k) if a_layout == "mk" else vnni_shape(k, m), bf, name="A")
    Bp = te.placeholder(vnni_shape(k, n), bf, name="B")
    r = te.reduce_axis((0, k), name="k")

    def a_at(i, kk):
        v = A[i, kk] if a_layout == "mk" else A[i // 16, kk // 2, i % 16, kk % 2]
        return v.astype(F32)

    C = te.compute((m, n), lambda i, j: te.sum(
        a_at(i, r) * Bp[j // 16, r // 2, j % 16, r % 2].astype(F32), axis=r), name="C")
    args, Y = gemm_epilogue(C, m, n, epilogue, bf, out_dtype)
    f = te.create_prim_func([A, Bp, *args, Y])
    return tag_op(f, "gemm_vnni", m=m, k=k, n=n, a_layout=a_layout, b_layout="vnni",
                epilogue=epilogue, in_dtype=bf, out_dtype=out_dtype)
