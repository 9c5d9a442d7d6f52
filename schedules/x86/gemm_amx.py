"""GEMM on the AMX-BF16 block kernel (schedules/intrin/x86_amx.py): ``gemm_vnni`` kernels
(forward, input gradient, weight gradient of the bf16 step) whose M, N and K are multiples of
32. Others (the 13-wide first layer, N = 16 panels, odd interaction widths) return None and
fall to the vdpbf16ps rule below it in the list.

B is the shared VNNI-2 panel [N/16][K/2][16][2] (16 consecutive K pairs of a panel are one B
tile). The A tile wants rows of 32 consecutive K: the forward's and input gradient's [M, K]
activations are read in place; the weight gradient's A (X^T with X packed VNNI-2 by
``pack_vnni``) is first copied inside the kernel to a row-major [M, K] scratch (one pass over
X, parallel). Each task runs ``row_block`` 32-row blocks against one 32-column panel pair; each
block walks all of K on four accumulator tiles, is stored to a 32 x 32 fp32 tile and the fp32
epilogue (bias, ReLU, ReLU mask, bf16 output) runs on it.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from ..base import Rule, attr
from ..intrin.x86_amx import BLOCK_M, BLOCK_N, K_STEP, amx_intrin, amx_llvm_ir


def amx_fits(m: int, k: int, n: int) -> bool:
    return m % BLOCK_M == 0 and n % BLOCK_N == 0 and k % K_STEP == 0


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
    if not amx_fits(m, k, n):
        raise ValueError(f"AMX blocks need M, N, K multiples of 32, got {m}x{k}x{n}")
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
        if not amx_fits(attr(func, "m"), attr(func, "k"), attr(func, "n")):
            return None
        return gemm_amx_schedule(func, self.variant)
