"""GEMM on the AMX-BF16 block kernel (schedules/intrin/x86_amx.py): ``gemm_vnni`` kernels
(forward, input gradient, weight gradient of the bf16 step) whose M, N and K are all at least
32. Others (the 13-wide first layer's K = 16 and its 13-row weight gradient) return None and
fall to the vdpbf16ps rule below it in the list.

Shapes on the 32 grid run as below. Off the grid (an odd interaction width, N = 16 x odd, a
batch that is not a multiple of 32) the edges are padded, not refused: A is copied into a
zero-padded [ceil32(M), ceil32(K)] scratch, B (where K or N is off the grid) into a
zero-padded VNNI-2 panel set, the blocks accumulate into a padded fp32 C, and the epilogue
reads the [M, N] corner of it. The copies are O(MK + KN) against the O(MKN) tile products.

B is the shared VNNI-2 panel [N/16][K/2][16][2] (16 consecutive K pairs of a panel are one B
tile). The A tile wants rows of 32 consecutive K: the forward's and input gradient's [M, K]
activations are read in place; the weight gradient's A (X^T with X packed VNNI-2 by
``pack_vnni``) is first copied inside the kernel to a row-major [M, K] scratch (one pass over
X, parallel). Each task runs ``row_block`` 32-row blocks against one 32-column panel pair; each
block walks all of K on four accumulator tiles, is stored to a 32 x 32 fp32 tile and the fp32
epilogue (bias, ReLU, ReLU mask, bf16 output) runs on it.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx
from tvm.target import Target

from dlrm_tvm.graphs.common import tag_op
from dlrm_tvm.graphs.ops import gemm_epilogue, vnni_shape
from ..base import Rule, attr
from ..intrin.x86_amx import BLOCK_M, BLOCK_N, K_STEP, amx_intrin, amx_llvm_ir


def amx_fits(m: int, k: int, n: int) -> bool:
    """On the block grid: M, N and K multiples of 32 (no padding)."""
    return m % BLOCK_M == 0 and n % BLOCK_N == 0 and k % K_STEP == 0


def amx_takes(m: int, k: int, n: int) -> bool:
    """Whether the rule takes the GEMM: every dim at least one block (edges padded)."""
    return m >= BLOCK_M and n >= BLOCK_N and k >= K_STEP


def _up(x: int, b: int) -> int:
    return -(-x // b) * b


def padded_gemm_vnni(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` (a ``gemm_vnni`` off the block grid) restated on the padded grid, same
    arguments and result: stages "A_pad" [Mp, Kp] row-major, "B_pad" (VNNI-2, only where K or
    N is off the grid) zero outside the operands, "C" [Mp, Np] fp32 over them, and the
    epilogue "Y" on C's [M, N] corner."""
    m, k, n = attr(func, "m"), attr(func, "k"), attr(func, "n")
    al, epi, odt = attr(func, "a_layout"), attr(func, "epilogue"), attr(func, "out_dtype")
    mp, kp, np_ = _up(m, BLOCK_M), _up(k, K_STEP), _up(n, BLOCK_N)
    bf, f32 = "bfloat16", "float32"
    a_shape = (m, k) if al == "mk" else vnni_shape(k, m)
    b_shape = vnni_shape(k, n)
    A = te.placeholder(a_shape, bf, name="A")
    Bp = te.placeholder(b_shape, bf, name="B")
    zero = tirx.const(0, bf)

    def a_at(i, kk):
        return A[i, kk] if al == "mk" else A[i // 16, kk // 2, i % 16, kk % 2]

    Ap = te.compute((mp, kp), lambda i, kk: tirx.if_then_else(
        tirx.all(i < m, kk < k), a_at(i, kk), zero), name="A_pad")
    if kp != k or np_ != n:
        Bq = te.compute((np_ // 16, kp // 2, 16, 2), lambda jb, p, jj, e: tirx.if_then_else(
            tirx.all(jb * 16 + jj < n, p * 2 + e < k), Bp[jb, p, jj, e], zero), name="B_pad")
    else:
        Bq = Bp
    r = te.reduce_axis((0, kp), name="k")
    C = te.compute((mp, np_), lambda i, j: te.sum(
        Ap[i, r].astype(f32) * Bq[j // 16, r // 2, j % 16, r % 2].astype(f32), axis=r),
        name="C")
    args, Y = gemm_epilogue(C, m, n, epi, bf, odt)
    f = te.create_prim_func([A, Bp, *args, Y])
    f = tag_op(f, "gemm_vnni", m=m, k=k, n=n, a_layout=al, b_layout="vnni", epilogue=epi,
               in_dtype=bf, out_dtype=odt)
    return f.with_attr("dlrm.amx_padded", 1)


def _gemm_amx_padded_schedule(func: tirx.PrimFunc, variant: str) -> s_tir.Schedule:
    pf = padded_gemm_vnni(func)
    kp = _up(attr(func, "k"), K_STEP)
    sch = s_tir.Schedule(pf)
    c = sch.get_sblock("C")
    sch.set_scope(c, 0, "local")
    i, j, kk = sch.get_loops(c)
    io, ii = sch.split(i, [None, BLOCK_M])
    jo, ji = sch.split(j, [None, BLOCK_N])
    sch.reorder(io, jo, ii, ji, kk)
    outer = sch.fuse(io, jo)
    sch.parallel(outer)
    sch.decompose_reduction(c, ii)
    sch.tensorize(ii, amx_intrin(kp, variant))
    init = sch.get_sblock("C_init")
    sch.vectorize(sch.get_loops(init)[-1])
    for name in ("A_pad", "B_pad"):
        try:
            blk = sch.get_sblock(name)
        except Exception:  # noqa: BLE001 - B on the grid: no B_pad stage
            continue
        sch.parallel(sch.get_loops(blk)[0])
    y = sch.get_sblock("Y")
    yi, yj = sch.get_loops(y)
    sch.parallel(yi)
    sch.vectorize(yj)
    if variant != "desc":
        sch.annotate(outer, "pragma_import_llvm", amx_llvm_ir(sw=variant == "sw"))
    return sch


def amx_row_block(m: int, n: int, tasks: int = 64) -> int:
    """32-row blocks per task: up to 4 (a 128 x 32 output per task reuses the B panel pair
    from L1/L2), while at least ``tasks`` parallel tasks remain."""
    blocks = m // BLOCK_M
    rb = 4
    while rb > 1 and (blocks % rb or (blocks // rb) * (n // BLOCK_N) < tasks):
        rb -= 1
    return rb


def gemm_amx_schedule(func: tirx.PrimFunc, variant: str = "amx",
                      row_block: int | None = None) -> s_tir.Schedule:
    """The AMX block schedule of a ``gemm_vnni`` PrimFunc; ``variant`` "amx" (instructions),
    "desc" or "sw" (runs on any CPU: tests)."""
    m, k, n = attr(func, "m"), attr(func, "k"), attr(func, "n")
    if not amx_takes(m, k, n):
        raise ValueError(f"AMX blocks need M, N, K of at least 32, got {m}x{k}x{n}")
    if not amx_fits(m, k, n):
        return _gemm_amx_padded_schedule(func, variant)
    intrin = amx_intrin(k, variant)
    sch = s_tir.Schedule(func)
    c = sch.get_sblock("C")
    y = sch.get_sblock("Y")
    at = None
    if attr(func, "a_layout") == "vnni":  # X packed VNNI-2 -> A = X^T row-major [M, K]
        at = sch.cache_read(c, 0, "global")
        sch.transform_layout(at, ("write", 0),
                             lambda ib, kp, ii, e: (ib * 16 + ii, kp * 2 + e))
    rb = row_block or amx_row_block(m, n)
    i, j = sch.get_loops(y)
    io, ii = sch.split(i, [None, BLOCK_M])
    jo, ji = sch.split(j, [None, BLOCK_N])
    io, iob = sch.split(io, [None, rb])
    sch.reorder(io, jo, iob, ii, ji)
    sch.compute_at(c, iob)
    sch.set_scope(c, 0, "local")
    ci = sch.get_loops(c)[3]  # below (io, jo, iob): the block's 32 x 32 x K nest
    outer = sch.fuse(io, jo)
    sch.parallel(outer)  # before decompose_reduction and tensorize (TVM_NOTES)
    sch.vectorize(ji)
    sch.decompose_reduction(c, ci)
    sch.tensorize(ci, intrin)
    init = sch.get_sblock("C_init")
    sch.vectorize(sch.get_loops(init)[-1])
    if at is not None:
        loops = sch.get_loops(at)
        sch.parallel(loops[0])
    if variant != "desc":
        sch.annotate(outer, "pragma_import_llvm", amx_llvm_ir(sw=variant == "sw"))
    return sch


class GemmVnniAmx(Rule):
    """``gemm_vnni`` kernels on AMX tiles. ``variant`` "desc"/"sw" (tests only, never in a
    target's list) runs the same schedule with the description or the software tile model."""

    name = "gemm_vnni_amx_bf16"
    ops = ("gemm_vnni",)
    requires = ("amx-tile", "amx-bf16")

    def __init__(self, variant: str = "amx"):
        self.variant = variant

    def describe(self, func: tirx.PrimFunc, target: Target) -> dict:
        m, n = attr(func, "m"), attr(func, "n")
        return {"block": [BLOCK_M, BLOCK_N], "row_block": amx_row_block(m, n)}

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        if self.variant == "amx" and not self.applies(target):
            return None
        if not amx_takes(attr(func, "m"), attr(func, "k"), attr(func, "n")):
            return None
        return gemm_amx_schedule(func, self.variant)
