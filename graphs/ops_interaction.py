"""The feature interaction of the DLRM (dot or cat), forward and backward: plain TIR PrimFuncs
as in graphs/ops.py (which re-exports them)."""

from __future__ import annotations

from dlrm_tvm.graphs.common import F32, tag_op
from tvm import te, tirx


def pair_tables(f: int, itself: bool) -> tuple[list[int], list[int], list[list[int]]]:
    """The reference's pair order: for i in range(F), for j in range(i + itself)."""
    li, lj = [], []
    for i in range(f):
        for j in range(i + (1 if itself else 0)):
            li.append(i)
            lj.append(j)
    pidx = [[-1] * f for _ in range(f)]
    for p, (i, j) in enumerate(zip(li, lj, strict=True)):
        pidx[i][j] = p
        pidx[j][i] = p
    return li, lj, pidx


def stack_features(b: int, t: int, d: int) -> tirx.PrimFunc:
    """Tc[b, 0, :] = x[b, :]; Tc[b, 1 + t, :] = pooled[b, t, :]."""
    x = te.placeholder((b, d), F32, name="x")
    e = te.placeholder((b, t, d), F32, name="pooled")
    Tc = te.compute(
        (b, t + 1, d),
        lambda i, f, k: tirx.if_then_else(f == 0, x[i, k], e[i, te.max(f - 1, 0), k]),
        name="Tc",
    )
    return tag_op(te.create_prim_func([x, e, Tc]), "stack_features")


def interaction_dot_fwd(b: int, f: int, d: int, itself: bool, width_padded: int) -> tirx.PrimFunc:
    """R[b] = [Tc[b, 0, :], Z[b, p] for each pair p, zeros up to width_padded].

    Z[b, p] = <Tc[b, li[p]], Tc[b, lj[p]]>, pairs in the reference's order. Inputs Tc [B, F, D]
    and the pair tables li, lj int32 [P].
    """
    P = len(pair_tables(f, itself)[0])
    Tc = te.placeholder((b, f, d), F32, name="Tc")
    li = te.placeholder((P,), "int32", name="li")
    lj = te.placeholder((P,), "int32", name="lj")
    r = te.reduce_axis((0, d), name="r")
    Z = te.compute(
        (b, P), lambda i, p: te.sum(Tc[i, li[p], r] * Tc[i, lj[p], r], axis=r), name="Z"
    )
    zero = tirx.const(0.0, F32)
    R = te.compute(
        (b, width_padded),
        lambda i, c: tirx.if_then_else(
            c < d,
            Tc[i, 0, te.min(c, d - 1)],
            tirx.if_then_else(c < d + P, Z[i, te.min(te.max(c - d, 0), P - 1)], zero),
        ),
        name="R",
    )
    return tag_op(te.create_prim_func([Tc, li, lj, R]), "interaction_dot_fwd")


def interaction_dot_bwd(b: int, f: int, d: int, itself: bool, width_padded: int) -> tirx.PrimFunc:
    """Gradients of R wrt the bottom output and the pooled embeddings.

    Inputs dR [B, width_padded], Tc [B, F, D], pidx int32 [F, F] (pair index of (i, j), -1 if
    none); outputs dx [B, D] = dR[:, :D] + G(0), demb [B, F-1, D] with demb[:, t] = G(t + 1),
    where G(i)[b] = sum_j dZ(b, i, j) Tc[b, j] and dZ is dR's pair part made symmetric (the
    diagonal counted twice), read straight from dR (never stored).
    Blocks: "G0" (the bottom row's sum), "dx", "demb".
    """
    Tc = te.placeholder((b, f, d), F32, name="Tc")
    dR = te.placeholder((b, width_padded), F32, name="dR")
    pidx = te.placeholder((f, f), "int32", name="pidx")
    zero = tirx.const(0.0, F32)
    two = tirx.const(2.0, F32)

    def dz(n, i, j):
        scale = tirx.if_then_else(i == j, two, tirx.const(1.0, F32))
        return tirx.if_then_else(pidx[i, j] >= 0, dR[n, d + te.max(pidx[i, j], 0)] * scale, zero)

    r = te.reduce_axis((0, f), name="r")
    g0 = te.compute((b, d), lambda n, k: te.sum(dz(n, 0, r) * Tc[n, r, k], axis=r), name="G0")
    dx = te.compute((b, d), lambda n, k: dR[n, k] + g0[n, k], name="dx")
    r2 = te.reduce_axis((0, f), name="r2")
    demb = te.compute(
        (b, f - 1, d), lambda n, t, k: te.sum(dz(n, t + 1, r2) * Tc[n, r2, k], axis=r2),
        name="demb",
    )
    return tag_op(te.create_prim_func([dR, Tc, pidx, dx, demb]), "interaction_dot_bwd")


def interaction_cat_fwd(b: int, t: int, d: int, width_padded: int) -> tirx.PrimFunc:
    """R[b] = [x[b], pooled[b, 0], ..., pooled[b, T-1], zeros up to width_padded]."""
    x = te.placeholder((b, d), F32, name="x")
    e = te.placeholder((b, t, d), F32, name="pooled")
    zero = tirx.const(0.0, F32)
    w = (t + 1) * d

    def body(i, c):
        q = te.min(te.max(c - d, 0), t * d - 1)
        return tirx.if_then_else(
            c < d,
            x[i, te.min(c, d - 1)],
            tirx.if_then_else(c < w, e[i, tirx.floordiv(q, d), tirx.floormod(q, d)], zero),
        )

    R = te.compute((b, width_padded), body, name="R")
    return tag_op(te.create_prim_func([x, e, R]), "interaction_cat_fwd")


def interaction_cat_bwd(b: int, t: int, d: int, width_padded: int) -> tirx.PrimFunc:
    """dx[b] = dR[b, :D]; demb[b, t] = dR[b, D + t*D : D + (t+1)*D]."""
    dR = te.placeholder((b, width_padded), F32, name="dR")
    dx = te.compute((b, d), lambda i, k: dR[i, k], name="dx")
    demb = te.compute((b, t, d), lambda i, s, k: dR[i, d + s * d + k], name="demb")
    return tag_op(te.create_prim_func([dR, dx, demb]), "interaction_cat_bwd")
