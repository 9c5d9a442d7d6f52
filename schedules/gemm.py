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


def register_tile(sch: s_tir.Schedule, mi: int, nj: int, panel_outer: bool = False) -> None:
    """The fp32 register tile on blocks "C" (reduction) and "Y" (epilogue): MI x NJ
    accumulators in a local buffer, K streamed, epilogue from the registers; the two tile loops
    fused and parallel (column panel outer if ``panel_outer``)."""
    c = sch.get_sblock("C")
    y = sch.get_sblock("Y")
    i, j = sch.get_loops(y)
    io, ii = sch.split(i, [None, mi])
    jo, ji = sch.split(j, [None, nj])
    first, second = (jo, io) if panel_outer else (io, jo)
    sch.reorder(first, second, ii, ji)
    sch.compute_at(c, second)
    sch.set_scope(c, 0, "local")
    inner = sch.get_loops(c)[2:]  # below the tile loops; compute_at drops a unit row loop
    if len(inner) == 3:
        ci, cj, ck = inner
        sch.reorder(ck, ci, cj)
    else:
        ci, (cj, ck) = None, inner
        sch.reorder(ck, cj)
    sch.parallel(sch.fuse(first, second))
    if ci is not None:
        sch.unroll(ci)
    sch.vectorize(cj)
    sch.vectorize(ji)
    sch.decompose_reduction(c, ck)


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
        sch = s_tir.Schedule(func)
        register_tile(sch, *tiles)
        return sch


def _parallel_pack(sch: s_tir.Schedule, block, inner: int) -> None:
    """Parallel over the packing copy's outer loop, vectorised along its contiguous inner one."""
    outer_l, inner_l = sch.get_loops(block)
    ext = sch.get(inner_l).extent
    if hasattr(ext, "value") and int(ext.value) % inner == 0:
        _, vec = sch.split(inner_l, [None, inner])
        sch.vectorize(vec)
    sch.parallel(outer_l)


def gemm_packed_schedule(func: tirx.PrimFunc, target: Target, pack_a: str = "auto",
                         panel_outer: bool | None = None):
    """Register tile + operands packed into contiguous panels first.

    B [K, N] (or [N, K]) is copied to Bp[N/NJ][K][NJ] so a column panel is one sequential stream
    (a plain
    [K, N] panel is read with an N*4-byte stride: with N a multiple of 1024 every row of the
    panel falls in the same cache set). A is packed to Ap[M/MI][K][MI] when it is read as
    [K, M] (weight gradient; pack_a="auto") or always (pack_a="always").
    ``panel_outer``: iterate row tiles inside a column panel (the panel stays in L2); default:
    yes for the [K, M] layout, row tile outer otherwise (kernel lab, docs/perf-v1.md).
    """
    m, n = attr(func, "m"), attr(func, "n")
    layout = attr(func, "a_layout")
    tiles = gemm_tiles(m, n, target)
    if tiles is None:
        return None
    mi, nj = tiles
    lanes = fp32_lanes(target)
    if panel_outer is None:
        panel_outer = layout == "km"
    sch = s_tir.Schedule(func)
    c = sch.get_sblock("C")
    bp = sch.cache_read(c, 1, "global")
    if attr(func, "b_layout", "kn") == "kn":
        sch.transform_layout(bp, ("write", 0), lambda kk, nn: (nn // nj, kk, nn % nj))
    else:  # B given as [N, K]: the packing copy is also the transpose
        sch.transform_layout(bp, ("write", 0), lambda nn, kk: (nn // nj, kk, nn % nj))
    ap = None
    if pack_a == "always" or (pack_a == "auto" and layout == "km"):
        ap = sch.cache_read(c, 0, "global")
        if layout == "mk":
            sch.transform_layout(ap, ("write", 0), lambda i, kk: (i // mi, kk, i % mi))
        else:
            sch.transform_layout(ap, ("write", 0), lambda kk, i: (i // mi, kk, i % mi))
    register_tile(sch, mi, nj, panel_outer)
    _parallel_pack(sch, bp, lanes)
    if ap is not None:
        _parallel_pack(sch, ap, mi if layout == "km" else lanes)
    return sch


class GemmPacked(Rule):
    name = "gemm_packed_fp32"
    ops = ("gemm",)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        return gemm_packed_schedule(func, target)
