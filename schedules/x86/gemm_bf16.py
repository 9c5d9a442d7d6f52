"""GEMM on the AVX-512 BF16 microkernel (bf16 A and B, fp32 accumulation and output).

B is packed to the VNNI-2 layout Bp[N/16][K/2][16][2] (the packing copy also transposes when B
comes as [N, K]); the register tile is MI rows x NJ columns of fp32 accumulators (NJ = 32: two
zmm per row; MI fills half of the 32 zmm registers), K walked in pairs, each step one
``vdpbf16ps`` per 16 columns with the row's bf16 pair broadcast. The fp32 epilogue (bias, ReLU,
ReLU mask) runs on the tile before it is stored. An odd K (the 13 dense features) is padded
with a zero pair inside the packing copies. Applies only to targets with avx512bf16 and to bf16
GEMMs with N a multiple of 16 (others fall to the fp32-compute rules).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from ..base import Rule, attr, vector_registers
from ..intrin import DPBF16_16X2, DPBF16_16X2_DESC, DPBF16_LLVM_IR, register


class GemmBF16Dpbf16ps(Rule):
    """``emulate=True`` (tests only, never in a target's list) tensorizes with the microkernel's
    plain-TIR description instead, so the schedule runs on any CPU."""

    name = "gemm_bf16_avx512_dpbf16ps"
    ops = ("gemm",)
    requires = ("avx512bf16",)  # LLVM would abort the process on this instruction without it

    def __init__(self, emulate: bool = False):
        self.emulate = emulate

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func) or attr(func, "in_dtype", "float32") != "bfloat16":
            return None
        if not self.emulate and not self.applies(target):
            return None
        m, k, n = attr(func, "m"), attr(func, "k"), attr(func, "n")
        if n % 16:
            return None
        register()
        nj = 32 if n % 32 == 0 else 16
        regs = 32 if self.emulate else vector_registers(target)
        mi = max(1, (regs // 2) // (nj // 16))
        while m % mi:
            mi -= 1
        sch = s_tir.Schedule(func)
        c = sch.get_sblock("C")
        if k % 2:  # odd K (13 dense features, K=1): pad the reduction with a zero pair
            sch.pad_einsum(c, [1, 1, 2])
        bp = sch.cache_read(c, 1, "global")
        if attr(func, "b_layout", "kn") == "kn":
            sch.transform_layout(bp, ("write", 0),
                                 lambda kk, nn: (nn // 16, kk // 2, nn % 16, kk % 2))
        else:
            sch.transform_layout(bp, ("write", 0),
                                 lambda nn, kk: (nn // 16, kk // 2, nn % 16, kk % 2))
        if attr(func, "a_layout") == "km":
            ap = sch.cache_read(c, 0, "global")  # [K, M] -> [M, K]: each row's pairs contiguous
            sch.transform_layout(ap, ("write", 0), lambda kk, i: (i, kk))
            _parallel_outer(sch, ap)
        if k % 2:  # the zero padding happens inside the packing copies
            for name in ("A_pad", "B_pad"):
                blk = sch.get_sblock(name)
                if sch.get_consumers(blk) and len(sch.get_consumers(blk)) == 1 and \
                        sch.get(sch.get_consumers(blk)[0]).name_hint != "C":
                    sch.compute_inline(blk)
                else:
                    _parallel_outer(sch, blk)
        register_tile_dpbf16(sch, mi, nj, False, self.emulate)
        _parallel_outer(sch, bp)
        return sch


def _parallel_outer(sch: s_tir.Schedule, block) -> None:
    sch.parallel(sch.get_loops(block)[0])


def vnni_tiles(m: int, n: int, target: Target, emulate: bool = False) -> tuple[int, int]:
    """(MI, NJ) from the target and the shape: NJ = 32 columns (two zmm) when N allows, else 16;
    MI rows fill half the vector registers with accumulators and divide M (a vnni-A GEMM's M is
    a feature width, often not a power of two)."""
    nj = 32 if n % 32 == 0 else 16
    regs = 32 if emulate else vector_registers(target)
    per_row = nj // 16
    mi = max(1, (regs // 2) // per_row)
    while m % mi:
        mi -= 1
    if mi < 4:  # e.g. M = 13: one tall tile (up to all registers but 2 B vectors and A)
        mi = max(1, (regs - per_row - 2) // per_row)
        while m % mi:
            mi -= 1
    return mi, nj


def row_block_for(m: int, n: int, mi: int, nj: int, k: int = 1024, tasks: int = 64) -> int:
    """Row tiles per task: the rows whose A block fills 64 KB of bf16 (at least 64 rows)
    against each column panel, a divisor of the row tiles, with at least ``tasks`` parallel
    tasks left. Measured on the Zen 4 VM: K = 128 wants 256 rows, K = 256 128, K >= 512 64."""
    tiles = m // mi
    rb = max(1, max(64, (64 << 10) // (2 * max(1, k))) // mi)
    while rb > 1 and (tiles % rb or (tiles // rb) * (n // nj) < tasks):
        rb -= 1
    return rb


def gemm_vnni_schedule(func: tirx.PrimFunc, target: Target, mi: int, nj: int,
                       panel_outer: bool = False, emulate: bool = False,
                       row_block: int = 1) -> s_tir.Schedule:
    """Register tile MI x NJ over operands already in the microkernel's layouts: no packing
    copy in the kernel. Tiles (row block, column panel) are parallel; K walked in pairs, one
    vdpbf16ps per 16 columns; the epilogue runs on the fp32 tile before it is stored."""
    register()
    sch = s_tir.Schedule(func)
    register_tile_dpbf16(sch, mi, nj, panel_outer, emulate, row_block)
    return sch


def register_tile_dpbf16(sch: s_tir.Schedule, mi: int, nj: int, panel_outer: bool,
                         emulate: bool, row_block: int = 1) -> None:
    """The MI x NJ fp32 register tile on blocks "C" (reduction) and "Y" (epilogue), K in pairs
    tensorized onto the vdpbf16ps microkernel (its description if ``emulate``); the tile loops
    fused and parallel (column panel outer if ``panel_outer``). ``row_block`` > 1: each task
    runs that many row tiles against one column panel, so the panel is reused from L1/L2
    instead of streaming from L3 for every row tile (2048x1024x1024: 411 -> 432 GFLOP/s)."""
    c = sch.get_sblock("C")
    y = sch.get_sblock("Y")
    i, j = sch.get_loops(y)
    io, ii = sch.split(i, [None, mi])
    jo, ji = sch.split(j, [None, nj])
    if row_block > 1:
        io, iob = sch.split(io, [None, row_block])
    first, second = (jo, io) if panel_outer else (io, jo)
    if row_block > 1:
        sch.reorder(first, second, iob, ii, ji)
        sch.compute_at(c, iob)
    else:
        sch.reorder(first, second, ii, ji)
        sch.compute_at(c, second)
    sch.set_scope(c, 0, "local")
    inner = sch.get_loops(c)[3 if row_block > 1 else 2:]
    if len(inner) == 3:
        ci, cj, ck = inner
    else:
        ci, (cj, ck) = None, inner
    ko, kk = sch.split(ck, [None, 2])
    cjo, cji = sch.split(cj, [None, 16])
    if ci is not None:
        sch.reorder(ko, ci, cjo, cji, kk)
    else:
        sch.reorder(ko, cjo, cji, kk)
    outer = sch.fuse(first, second)
    sch.parallel(outer)
    sch.vectorize(ji)
    sch.decompose_reduction(c, ko)
    sch.tensorize(cji, DPBF16_16X2_DESC if emulate else DPBF16_16X2)
    if ci is not None:
        sch.unroll(ci)
    sch.unroll(cjo)
    if not emulate:
        sch.annotate(outer, "pragma_import_llvm", DPBF16_LLVM_IR)


class GemmVnniDpbf16ps(Rule):
    """``gemm_vnni`` kernels (operands pre-packed by ``pack_vnni``) on the vdpbf16ps
    microkernel. ``emulate=True`` (tests only) tensorizes with the plain-TIR description.
    ``params``: {kernel key: {"mi", "nj", "panel_outer"}} from a tuning record (``key_of``)."""

    name = "gemm_vnni_avx512_dpbf16ps"
    ops = ("gemm_vnni",)
    requires = ("avx512bf16",)

    def __init__(self, emulate: bool = False, params: dict | None = None):
        self.emulate = emulate
        self.params = params or {}

    def tuned(self, params: dict) -> GemmVnniDpbf16ps:
        return type(self)(emulate=self.emulate, params=params)

    @staticmethod
    def key_of(func: tirx.PrimFunc) -> str:
        return (f"{attr(func, 'm')}x{attr(func, 'k')}x{attr(func, 'n')}"
                f"_{attr(func, 'a_layout')}")

    def choose(self, func: tirx.PrimFunc, target: Target) -> dict:
        m, n = attr(func, "m"), attr(func, "n")
        mi, nj = vnni_tiles(m, n, target, self.emulate)
        # vnni A (weight gradient): column panel outer, so one B panel serves every row block
        chosen = {"mi": mi, "nj": nj, "panel_outer": attr(func, "a_layout") == "vnni",
                  "row_block": row_block_for(m, n, mi, nj, attr(func, "k"))}
        tuned = self.params.get(self.key_of(func))
        if tuned and m % tuned.get("mi", 0) == 0 and n % tuned.get("nj", 0) == 0 \
                and tuned["nj"] % 16 == 0 and (m // tuned["mi"]) % tuned.get("row_block", 1) == 0:
            chosen.update(tuned)  # a record's tile that fits this shape
        return chosen

    def describe(self, func: tirx.PrimFunc, target: Target) -> dict:
        key = self.key_of(func)
        p = self.choose(func, target)
        tuned = self.params.get(key)  # applied only if it fitted the shape (see choose)
        return {"key": key, **p,
                "tuned": bool(tuned) and all(p.get(f) == v for f, v in tuned.items())}

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        if not self.matches_op(func):
            return None
        if not self.emulate and not self.applies(target):
            return None
        p = self.choose(func, target)
        m, n = attr(func, "m"), attr(func, "n")
        if n % p["nj"] or m % p["mi"] or p["nj"] % 16:
            return None
        return gemm_vnni_schedule(func, target, p["mi"], p["nj"], bool(p["panel_outer"]),
                                  self.emulate, int(p.get("row_block", 1)))
