"""Matrix-vector shapes of the GEMM family: the 1-wide last layer of DLRM.

* N = 1, A [M, K] (forward logit, y = X w + b): rows parallel, the K reduction vectorised
  (lanes partial sums per row via rfactor, then one horizontal sum and the epilogue).
* N = 1, A [K, M] (its weight gradient, dw = X^T dz): columns of X vectorised, rows streamed.
* K = 1 (its input gradient, an outer product dz w^T with the ReLU mask): rows parallel,
  columns vectorised.

Any input dtype (fp32 or bf16: products and sums in fp32). Memory-bound: each reads its
matrix once.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .base import Rule, attr, fp32_lanes


def _row_chunks(sch, loop, rows: int, per: int):
    if rows % per == 0 and rows > per:
        lo, _ = sch.split(loop, [None, per])
        sch.parallel(lo)
    else:
        sch.parallel(loop)


class GemvVector(Rule):
    name = "gemv_vector"
    ops = ("gemm",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        m, k, n = attr(func, "m"), attr(func, "k"), attr(func, "n")
        lanes = fp32_lanes(target)
        layout = attr(func, "a_layout")
        if n == 1 and layout == "mk" and k % lanes == 0:
            return self._dot_rows(func, m, lanes)
        if n == 1 and layout == "km" and m % lanes == 0:
            return self._axpy_cols(func, m, lanes)
        if k == 1 and n % lanes == 0:
            return self._outer(func, m, lanes)
        return None

    @staticmethod
    def _dot_rows(func, m, lanes):
        sch = s_tir.Schedule(func)
        c, y = sch.get_sblock("C"), sch.get_sblock("Y")
        _, _, kk = sch.get_loops(c)
        _, kv = sch.split(kk, [None, lanes])
        rf = sch.rfactor(kv, 0)  # rf[kv, i, j]: lanes partial sums per row
        yi, _ = sch.get_loops(y)
        sch.compute_at(c, yi)
        sch.compute_at(rf, yi)
        sch.set_scope(rf, 0, "local")
        sch.set_scope(c, 0, "local")
        rl = sch.get_loops(rf)[1:]  # (kv, ko) below the row (unit loops dropped)
        sch.reorder(rl[-1], rl[0])
        _row_chunks(sch, yi, m, 64)
        sch.vectorize(rl[0])
        init = sch.decompose_reduction(rf, rl[-1])
        sch.vectorize(sch.get_loops(init)[-1])
        return sch

    @staticmethod
    def _axpy_cols(func, m, lanes):
        sch = s_tir.Schedule(func)
        c, y = sch.get_sblock("C"), sch.get_sblock("Y")
        yi, yj = sch.get_loops(y)
        width = next(w for w in (4 * lanes, 2 * lanes, lanes) if m % w == 0)
        io, ii = sch.split(yi, [None, width])
        sch.reorder(io, yj, ii)
        sch.compute_at(c, yj)
        sch.set_scope(c, 0, "local")
        ci, ck = sch.get_loops(c)[-2:]  # (columns, K) below the column block
        sch.reorder(ck, ci)
        sch.parallel(io)
        sch.vectorize(ci)
        sch.vectorize(ii)
        init = sch.decompose_reduction(c, ck)
        sch.vectorize(sch.get_loops(init)[-1])
        return sch

    @staticmethod
    def _outer(func, m, lanes):
        sch = s_tir.Schedule(func)
        c, y = sch.get_sblock("C"), sch.get_sblock("Y")
        yi, yj = sch.get_loops(y)
        sch.compute_at(c, yi)
        sch.set_scope(c, 0, "local")
        (cj,) = sch.get_loops(c)[1:]  # the columns below the row (the unit K loop is gone)
        _row_chunks(sch, yi, m, 64)
        sch.vectorize(cj)
        sch.vectorize(yj)
        sch.decompose_reduction(c, cj)
        return sch
