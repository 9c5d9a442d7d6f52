"""GEMM with a register-tiled fp32 microkernel and a fused epilogue (bias, ReLU, ReLU mask).

Tile: MI rows x NJ columns of fp32 accumulators held in vector registers, K streamed. NJ is one or
two vector widths of the target; MI fills half the target's vector registers with accumulators
(the other half holds the B row and the broadcast A element). Both come from the target's
features: 4 x 16 on AVX2, 8 x 32 on AVX-512. The (row-tile, column-tile) loop is parallel; the
epilogue is computed from the registers before the tile is stored.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .base import Rule, attr, fp32_lanes, vector_registers


def gemm_tiles(m: int, n: int, target: Target) -> tuple[int, int] | None:
    """(MI, NJ) for this shape on this target, or None if N is not a whole number of vectors."""
    lanes = fp32_lanes(target)
    if n % lanes:
        return None
    nj = 2 * lanes if n % (2 * lanes) == 0 else lanes
    budget = vector_registers(target) // 2  # accumulators
    mi = max(1, budget // (nj // lanes))
    while m % mi:
        mi -= 1
    return mi, nj


class GemmTiled(Rule):
    name = "gemm_tiled_fp32"
    ops = ("gemm",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        m, n = attr(func, "m"), attr(func, "n")
        tiles = gemm_tiles(m, n, target)
        if tiles is None:
            return None
        mi, nj = tiles
        sch = s_tir.Schedule(func)
        y = sch.get_sblock("Y")
        c = sch.get_sblock("C")
        i, j = sch.get_loops(y)
        io, ii = sch.split(i, [None, mi])
        jo, ji = sch.split(j, [None, nj])
        sch.reorder(io, jo, ii, ji)
        sch.compute_at(c, jo)
        sch.set_scope(c, 0, "local")
        inner = sch.get_loops(c)[2:]  # below (io, jo); a unit row loop is dropped by compute_at
        if len(inner) == 3:
            ci, cj, ck = inner
            sch.reorder(ck, ci, cj)
        else:
            ci, (cj, ck) = None, inner
            sch.reorder(ck, cj)
        sch.parallel(sch.fuse(io, jo))
        if ci is not None:
            sch.unroll(ci)
        sch.vectorize(cj)
        sch.vectorize(ji)
        sch.decompose_reduction(c, ck)
        return sch
