"""Naive NumPy oracles, one per kernel in ``graphs/ops.py`` (same names, same layouts).

The Split-SGD-BF16 halves in NumPy (``split_fp32``: uint16 bits of both halves;
``combine_fp32``) are the runtime's own (runtime/state.py): one statement of the bit layout,
which the kernels' TIR (graphs/common.py) is tested against.
"""

from __future__ import annotations

import numpy as np
from dlrm_tvm.graphs.common import ADAGRAD_EPS
from dlrm_tvm.graphs.ops_interaction import pair_tables
from dlrm_tvm.runtime.state import combine_fp32
from dlrm_tvm.runtime.state import split_bits as split_fp32

from dlrm_tvm.config import OPTIMIZER_EPS


def gemm(a, b, a_layout="mk", epilogue="none", extra=None, b_layout="kn"):
    a64 = np.asarray(a).astype(np.float64)
    b64 = np.asarray(b).astype(np.float64)
    if extra is not None:
        extra = np.asarray(extra).astype(np.float64)
    c = (a64 if a_layout == "mk" else a64.T) @ (b64 if b_layout == "kn" else b64.T)
    if epilogue == "bias":
        c = c + extra
    elif epilogue == "bias_relu":
        c = np.maximum(c + extra, 0)
    elif epilogue == "relu_mask":
        c = np.where(extra > 0, c, 0)
    return c.astype(np.float32)


def colsum(x):
    return x.astype(np.float64).sum(0).astype(np.float32)


def sgd_update(w, g, lr):
    return (w - np.float32(lr) * g).astype(np.float32)


def split_sgd_update(hi_bits, lo_bits, g, lr):
    return split_fp32(sgd_update(combine_fp32(hi_bits, lo_bits), g, lr))


def relu_bwd(dy, y):
    return np.where(y > 0, dy, 0).astype(np.float32)


def sigmoid(z):
    return (1.0 / (1.0 + np.exp(-z[:, 0].astype(np.float64)))).astype(np.float32)


def bce_loss(z, y, scale=None):
    b = z.shape[0]
    scale = 1.0 / b if scale is None else scale
    zz = z[:, 0].astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-zz))
    per = np.maximum(zz, 0) - zz * y + np.log1p(np.exp(-np.abs(zz)))  # BCE on the logits
    loss = np.array([per.sum() * scale], np.float32)
    dz = ((p - y) * scale).astype(np.float32)[:, None]
    return p.astype(np.float32), loss, dz


def stack_features(x, pooled):
    return np.concatenate([x[:, None, :], pooled], axis=1)


def interaction_dot_fwd(tc, itself, width_padded):
    b, f, d = tc.shape
    li, lj, _ = pair_tables(f, itself)
    z = np.einsum("bpd,bpd->bp", tc[:, li, :].astype(np.float64), tc[:, lj, :].astype(np.float64))
    r = np.zeros((b, width_padded), np.float32)
    r[:, :d] = tc[:, 0, :]
    r[:, d : d + len(li)] = z
    return r


def interaction_dot_bwd(dr, tc, itself):
    b, f, d = tc.shape
    li, lj, _ = pair_tables(f, itself)
    g = np.zeros((b, f, d), np.float64)
    dz = dr[:, d : d + len(li)].astype(np.float64)
    for p, (i, j) in enumerate(zip(li, lj, strict=True)):
        g[:, i] += dz[:, p : p + 1] * tc[:, j]
        g[:, j] += dz[:, p : p + 1] * tc[:, i]
    dx = (dr[:, :d] + g[:, 0]).astype(np.float32)
    return dx, g[:, 1:].astype(np.float32)


def interaction_cat_fwd(x, pooled, width_padded):
    b, t, d = pooled.shape
    r = np.zeros((b, width_padded), np.float32)
    r[:, :d] = x
    r[:, d : d + t * d] = pooled.reshape(b, t * d)
    return r


def interaction_cat_bwd(dr, t, d):
    b = dr.shape[0]
    return dr[:, :d].copy(), dr[:, d : d + t * d].reshape(b, t, d).copy()


def embedding_bag_fwd(w, indices, offsets, row_offsets, b):
    w = np.asarray(w).astype(np.float32)  # a bf16 table is read as its fp32 values
    nt = len(row_offsets)
    out = np.zeros((b, nt, w.shape[1]), np.float32)
    for t in range(nt):
        for s in range(b):
            lo, hi = offsets[t * b + s], offsets[t * b + s + 1]
            if hi > lo:
                out[s, t] = w[indices[lo:hi] + row_offsets[t]].astype(np.float64).sum(0)
    return out


def embedding_bag_update(w, indices, offsets, row_offsets, grad, lr, optimizer="sgd", acc=None,
                         eps=None):
    """The coalesced update: each looked-up row steps once with the sum of its lookups'
    gradients (summed in float64 here; the kernel sums in fp32). Returns (w, acc): acc is
    rwsadagrad's [rows] or adagrad's [rows, D] state. ``eps``: default the optimizer's."""
    if eps is None:
        eps = OPTIMIZER_EPS.get(optimizer, ADAGRAD_EPS)
    w = np.asarray(w, np.float32).copy()
    acc = None if acc is None else np.asarray(acc, np.float32).copy()
    b, nt, d = grad.shape
    sizes = np.diff(offsets)
    bag = np.repeat(np.arange(nt * b), sizes)
    rows = indices + np.asarray(row_offsets)[bag // b]
    g = grad[bag % b, bag // b].astype(np.float64)
    uniq, inv = np.unique(rows, return_inverse=True)
    gsum = np.zeros((len(uniq), d), np.float64)
    np.add.at(gsum, inv, g)
    gsum = gsum.astype(np.float32)
    lr = np.float32(lr)
    if optimizer == "sgd":
        w[uniq] = w[uniq] - lr * gsum
    elif optimizer == "rwsadagrad":
        acc[uniq] = acc[uniq] + (gsum.astype(np.float64) ** 2).mean(1).astype(np.float32)
        rate = lr / (np.sqrt(acc[uniq]) + np.float32(eps))
        w[uniq] = w[uniq] - rate[:, None] * gsum
    elif optimizer == "adagrad":  # exact: torch's sparse Adagrad on the coalesced gradient
        acc[uniq] = acc[uniq] + gsum * gsum
        w[uniq] = w[uniq] - lr * (gsum / (np.sqrt(acc[uniq]) + np.float32(eps)))
    else:
        raise ValueError(optimizer)
    return w, acc


def adagrad_update(w, acc, g, lr, eps=ADAGRAD_EPS):
    """Dense Adagrad (the reference's rwsadagrad on MLP parameters): (w, acc) after one step."""
    acc = (np.asarray(acc, np.float32) + g * g).astype(np.float32)
    w = (w - np.float32(lr) * (g / (np.sqrt(acc) + np.float32(eps)))).astype(np.float32)
    return w, acc


def embedding_bag_sgd_sequential(w, indices, offsets, row_offsets, grad, lr):
    """SGD applied lookup by lookup in lookup order, in fp32 (what the lookup-order kernel
    computes; the coalesced sum differs from it by rounding only)."""
    w = np.asarray(w, np.float32).copy()
    b, nt, _ = grad.shape
    bag = np.repeat(np.arange(nt * b), np.diff(offsets))
    rows = indices + np.asarray(row_offsets)[bag // b]
    np.subtract.at(w, rows, np.float32(lr) * grad[bag % b, bag // b])
    return w


def bf16_rne_bits(x: np.ndarray) -> np.ndarray:
    """fp32 (or float64, rounded to fp32 first) -> bfloat16 bits, round to nearest, ties to
    even, on the bits (finite and infinite inputs; NaN aside): the oracle of every bf16 cast."""
    b = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def pack_vnni(x, transpose=False, k_pad=None):
    """NumPy VNNI-2 pack (graphs/ops.pack_vnni): P[j, p, jj, e] = M[2p + e, 16j + jj]."""
    m = np.asarray(x).T if transpose else np.asarray(x)
    k, n = m.shape
    kp = k_pad if k_pad is not None else k + (k % 2)
    nb = -(-n // 16)
    full = np.zeros((kp, nb * 16), m.dtype)
    full[:k, :n] = m
    return np.ascontiguousarray(full.reshape(kp // 2, 2, nb, 16).transpose(2, 0, 3, 1))


def unpack_vnni(p, k, n):
    """The logical [K, N] matrix of a VNNI-2 pack."""
    nb, kh = p.shape[:2]
    return np.ascontiguousarray(p.transpose(1, 3, 0, 2).reshape(kh * 2, nb * 16))[:k, :n]


def gemm_vnni(a, bp, m, k, n, a_layout="mk", epilogue="none", extra=None):
    """Oracle of graphs/ops.gemm_vnni, from the packed operands."""
    b = unpack_vnni(np.asarray(bp), k, n)
    if a_layout == "vnni":
        a = unpack_vnni(np.asarray(a), k, m).T  # packed X [K, M] -> A = X^T [M, K]
    return gemm(np.asarray(a)[:m, :k], b, "mk", epilogue, extra)


# ---------------------------------------------------------------- DCN cross layers (ops_dcn.py)


def cross_fwd(x0, z, xl):
    """y = x0 * z + xl (fp32; the kernel's ``act`` output is this rounded to bf16)."""
    f = np.float64
    return (x0.astype(f) * z + xl).astype(np.float32)


def cross_bwd(a, g, x0, z, acc):
    """(dxn, dz, acc') of ops_dcn.cross_bwd; ``g``/``acc`` None for the variants without them
    (dxn is then ``a``). dz is fp32 here (the kernel rounds it to its ``act``)."""
    f = np.float64
    dxn = a.astype(f) + (0.0 if g is None else g)
    dxn = dxn.astype(np.float32).astype(f)  # the kernel rounds dxn to fp32 before using it
    s = dxn * z
    new_acc = s if acc is None else acc + s
    return (dxn.astype(np.float32), (dxn * x0).astype(np.float32), new_acc.astype(np.float32))


def cross_input_bwd(acc, a, g, t, d):
    """(dx [B, D], demb [B, T, D]) of ops_dcn.cross_input_bwd."""
    s = (acc.astype(np.float64) + a + g).astype(np.float32)
    b = s.shape[0]
    return s[:, :d].copy(), s[:, d : d + t * d].reshape(b, t, d).copy()


def cross_net(x0, params, dy):
    """The low-rank cross net (torchrec's LowRankCrossNet, in our layout) and its backward, in
    float64: x_{l+1} = x0 * (x_l @ u_l @ v_l + b_l) + x_l for ``params`` [(u [N, r], v [r, N],
    b [N]), ...]; ``dy`` the gradient of x_L. Returns (x_L, dx0, [(du, dv, db), ...])."""
    f = np.float64
    x0 = x0.astype(f)
    xs, us, zs = [x0], [], []
    for u, v, b in params:
        ul = xs[-1] @ u.astype(f)
        z = ul @ v.astype(f) + b
        us.append(ul)
        zs.append(z)
        xs.append(x0 * z + xs[-1])
    dx = dy.astype(f)
    dx0 = np.zeros_like(x0)
    grads = []
    for li in reversed(range(len(params))):
        u, v, _ = (p.astype(f) for p in params[li])
        dz = dx * x0
        dx0 += dx * zs[li]
        dul = dz @ v.T
        grads.append((xs[li].T @ dul, us[li].T @ dz, dz.sum(0)))
        dx = dx + dul @ u.T
    return xs[-1], dx0 + dx, grads[::-1]
