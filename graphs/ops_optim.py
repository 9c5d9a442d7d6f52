"""The dense optimizer steps of the MLP parameters, in place: plain TIR PrimFuncs as in
graphs/ops.py (which re-exports them). The tables' step is graphs/embedding_update.py; both
state the Split-SGD-BF16 bit math once, in graphs/common.py."""

from __future__ import annotations

import math

from dlrm_tvm.graphs.common import ADAGRAD_EPS, F32, fp32_of_halves, high_half, low_half, tag_op
from tvm import tirx
from tvm.script import tirx as T


def sgd_update(shape: tuple[int, ...]) -> tirx.PrimFunc:
    """In place: W -= lr * G, for a dense parameter of rank 1 or 2."""
    if len(shape) == 1:
        (n,) = shape

        @T.prim_func(s_tir=True)
        def func1(W: T.Buffer((n,), F32), G: T.Buffer((n,), F32), lr: T.Buffer((1,), F32)):
            for i in range(n):
                with T.sblock("update"):
                    vi = T.axis.spatial(n, i)
                    # in place: an iteration reads only the element it writes, so W is
                    # declared as written only (lets a schedule parallelise the loop)
                    T.reads(G[vi], lr[0])
                    T.writes(W[vi])
                    W[vi] = W[vi] - lr[0] * G[vi]

        return tag_op(func1, "sgd_update")
    if len(shape) == 2:
        m, n = shape

        @T.prim_func(s_tir=True)
        def func2(W: T.Buffer((m, n), F32), G: T.Buffer((m, n), F32), lr: T.Buffer((1,), F32)):
            for i, j in T.grid(m, n):
                with T.sblock("update"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    T.reads(G[vi, vj], lr[0])
                    T.writes(W[vi, vj])
                    W[vi, vj] = W[vi, vj] - lr[0] * G[vi, vj]

        return tag_op(func2, "sgd_update")
    raise ValueError(f"sgd_update supports rank 1 or 2, got shape {shape}")


def split_sgd_update(shape: tuple[int, ...]) -> tirx.PrimFunc:
    """Split-SGD-BF16, in place: the fp32 master weight lives as its upper 16 bits ``hi`` (a
    bfloat16 tensor: the weight the GEMMs use) and its lower 16 bits ``lo`` (uint16).

    w = bits(hi) << 16 | bits(lo) as fp32;  w -= lr * g;  hi, lo = upper, lower 16 bits of w.
    The fp32 master is thus updated exactly as plain fp32 SGD would, at 4 bytes per parameter.
    """
    size = math.prod(shape)

    @T.prim_func(s_tir=True)
    def func(hi: T.handle, lo: T.handle, g: T.handle, lr: T.Buffer((1,), F32)):
        H = T.match_buffer(hi, shape, "bfloat16")
        L = T.match_buffer(lo, shape, "uint16")
        G = T.match_buffer(g, shape, F32)
        h16 = T.decl_buffer((size,), "uint16", data=H.data)  # hi's bits
        l16 = T.decl_buffer((size,), "uint16", data=L.data)
        g32 = T.decl_buffer((size,), F32, data=G.data)
        for i in range(size):
            with T.sblock("update"):
                vi = T.axis.spatial(size, i)
                T.reads(g32[vi], lr[0])
                T.writes(h16[vi], l16[vi])
                w = fp32_of_halves(h16[vi], l16[vi])
                bits = T.reinterpret("uint32", w - lr[0] * g32[vi])
                h16[vi] = high_half(bits)
                l16[vi] = low_half(bits)

    return tag_op(func, "split_sgd_update")


def adagrad_update(shape: tuple[int, ...], split: bool = False,
                   eps: float = ADAGRAD_EPS) -> tirx.PrimFunc:
    """Dense Adagrad in place, as the reference's rwsadagrad does for the MLP parameters:
    S += g^2;  w -= lr * g / (sqrt(S) + eps), S fp32 of the parameter's shape.
    ``split``: the parameter is Split-SGD-BF16 (hi bfloat16, lo uint16), as in split_sgd_update.
    Parameters: (W, S, G, lr) or (hi, lo, S, G, lr)."""
    size = math.prod(shape)

    if not split:
        @T.prim_func(s_tir=True)
        def func(w: T.handle, acc: T.handle, g: T.handle, lr: T.Buffer((1,), F32)):
            W = T.match_buffer(w, shape, F32)
            S = T.match_buffer(acc, shape, F32)
            G = T.match_buffer(g, shape, F32)
            w32 = T.decl_buffer((size,), F32, data=W.data)
            s32 = T.decl_buffer((size,), F32, data=S.data)
            g32 = T.decl_buffer((size,), F32, data=G.data)
            for i in range(size):
                with T.sblock("update"):
                    vi = T.axis.spatial(size, i)
                    T.reads(g32[vi], lr[0])
                    T.writes(w32[vi], s32[vi])
                    s32[vi] = s32[vi] + g32[vi] * g32[vi]
                    w32[vi] = w32[vi] - lr[0] * (g32[vi] / (T.sqrt(s32[vi]) + T.float32(eps)))

        return tag_op(func, "adagrad_update", split=0)

    @T.prim_func(s_tir=True)
    def funcs(hi: T.handle, lo: T.handle, acc: T.handle, g: T.handle, lr: T.Buffer((1,), F32)):
        H = T.match_buffer(hi, shape, "bfloat16")
        L = T.match_buffer(lo, shape, "uint16")
        S = T.match_buffer(acc, shape, F32)
        G = T.match_buffer(g, shape, F32)
        h16 = T.decl_buffer((size,), "uint16", data=H.data)
        l16 = T.decl_buffer((size,), "uint16", data=L.data)
        s32 = T.decl_buffer((size,), F32, data=S.data)
        g32 = T.decl_buffer((size,), F32, data=G.data)
        for i in range(size):
            with T.sblock("update"):
                vi = T.axis.spatial(size, i)
                T.reads(g32[vi], lr[0])
                T.writes(h16[vi], l16[vi], s32[vi])
                s32[vi] = s32[vi] + g32[vi] * g32[vi]
                w = fp32_of_halves(h16[vi], l16[vi])
                bits = T.reinterpret(
                    "uint32", w - lr[0] * (g32[vi] / (T.sqrt(s32[vi]) + T.float32(eps))))
                h16[vi] = high_half(bits)
                l16[vi] = low_half(bits)

    return tag_op(funcs, "adagrad_update", split=1)
