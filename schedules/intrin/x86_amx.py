"""AMX-BF16: a 32 x 32 fp32 block C += A (32 x K, bf16) . B (K x 32, bf16) on tile registers.

The block walks the whole reduction: C sits in four 16 x 16 fp32 accumulator tiles (tmm0..3),
and each step of 32 K loads two A tiles (16 rows x 32 bf16 of a row-major [M, K] operand, tmm4,
tmm5), two B tiles (16 K pairs x 16 columns x 2, tmm6, tmm7: exactly 16 consecutive rows of a
weight panel in the VNNI-2 layout [N/16][K/2][16][2], so the weight layout of the vdpbf16ps
kernels is shared) and issues four ``tdpbf16ps``. The tile configuration (palette 1, all eight
tiles 16 rows x 64 bytes) is loaded at the start of every block, not once per thread: the same
thread may run other AMX code between our calls (oneDNN inside torch, in benchmarks), and a
``ldtilecfg`` is a few dozen cycles against the block's K/32 x 4 tile products of 16 cycles.

TVM stores bf16 as 16-bit integers and has no AMX intrinsics, so the implementation calls an
LLVM IR function (``amx_llvm_ir``) on the non-"internal" LLVM AMX intrinsics (immediate tile
numbers: ``llvm.x86.ldtilecfg``, ``tileloadd64``, ``tdpbf16ps``, ``tilestored64``), imported with
the ``pragma_import_llvm`` loop annotation as the vdpbf16ps kernel is. Only for targets with
amx-tile and amx-bf16: LLVM refuses to select the instructions otherwise, and the kernel
needs the process's AMX permission (runtime/amx.py) before its first tile instruction.

Three registrations per reduction length K (a description has fixed extents):
- ``amx_intrin(K)``: the description and the AMX implementation;
- ``amx_intrin(K, "desc")``: the description as its own implementation (plain TIR: the
  schedule's tiling and operand addressing checked on any CPU);
- ``amx_intrin(K, "sw")``: the same LLVM IR kernel with each tile instruction replaced by a
  scalar software model of it (tile loads and stores with the stride, ``tdpbf16ps`` pair
  products in fp32): the kernel's own pointer and stride arithmetic checked on any CPU.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

BLOCK_M = 32
BLOCK_N = 32
K_STEP = 32  # bf16 elements of K per A tile row (64 bytes)
KERNEL = "dlrm_amx_bf16_32x32"
KERNEL_SW = "dlrm_amx_bf16_32x32_sw"

# palette 1; colsb[t] = 64 bytes and rows[t] = 16 for tiles 0..7 (Intel SDM, LDTILECFG)
_CFG = bytes([1, 0] + [0] * 14 + [64, 0] * 8 + [0] * 16 + [16] * 8 + [0] * 8)
assert len(_CFG) == 64


def _cfg_literal() -> str:
    return "".join(f"\\{b:02X}" for b in _CFG)


_INSTR_DECLS = """
declare void @llvm.x86.ldtilecfg(ptr)
declare void @llvm.x86.tileloadd64(i8 immarg, ptr, i64)
declare void @llvm.x86.tilestored64(i8 immarg, ptr, i64)
declare void @llvm.x86.tdpbf16ps(i8 immarg, i8 immarg, i8 immarg)
"""

# Software model of the three tile instructions on a tile file of 8 x 1 KB (16 rows x 64 bytes,
# the configuration above). tdpbf16ps: C[m][n] += A[m][2k] * B[k][2n] + A[m][2k+1] * B[k][2n+1]
# for m, n, k < 16, bf16 widened to fp32, the two products added to C in that order.
_SW_MODEL = """
define internal void @dlrm_swamx_load(ptr %tiles, i64 %t, ptr %src, i64 %stride) {
entry:
  %base = mul i64 %t, 1024
  %dst = getelementptr i8, ptr %tiles, i64 %base
  br label %row
row:
  %r = phi i64 [0, %entry], [%rn, %row]
  %so = mul i64 %r, %stride
  %s = getelementptr i8, ptr %src, i64 %so
  %do = mul i64 %r, 64
  %d = getelementptr i8, ptr %dst, i64 %do
  call void @llvm.memcpy.p0.p0.i64(ptr %d, ptr %s, i64 64, i1 false)
  %rn = add i64 %r, 1
  %e = icmp eq i64 %rn, 16
  br i1 %e, label %done, label %row
done:
  ret void
}

define internal void @dlrm_swamx_store(ptr %tiles, i64 %t, ptr %dstp, i64 %stride) {
entry:
  %base = mul i64 %t, 1024
  %src = getelementptr i8, ptr %tiles, i64 %base
  br label %row
row:
  %r = phi i64 [0, %entry], [%rn, %row]
  %so = mul i64 %r, 64
  %s = getelementptr i8, ptr %src, i64 %so
  %do = mul i64 %r, %stride
  %d = getelementptr i8, ptr %dstp, i64 %do
  call void @llvm.memcpy.p0.p0.i64(ptr %d, ptr %s, i64 64, i1 false)
  %rn = add i64 %r, 1
  %e = icmp eq i64 %rn, 16
  br i1 %e, label %done, label %row
done:
  ret void
}

define internal float @dlrm_swamx_bf16(ptr %p) {
  %h = load i16, ptr %p
  %w = zext i16 %h to i32
  %s = shl i32 %w, 16
  %f = bitcast i32 %s to float
  ret float %f
}

define internal void @dlrm_swamx_dp(ptr %tiles, i64 %tc, i64 %ta, i64 %tb) {
entry:
  %cb = mul i64 %tc, 1024
  %ab = mul i64 %ta, 1024
  %bb = mul i64 %tb, 1024
  %c = getelementptr i8, ptr %tiles, i64 %cb
  %a = getelementptr i8, ptr %tiles, i64 %ab
  %b = getelementptr i8, ptr %tiles, i64 %bb
  br label %m_loop
m_loop:
  %m = phi i64 [0, %entry], [%mn, %m_end]
  br label %n_loop
n_loop:
  %n = phi i64 [0, %m_loop], [%nn, %n_end]
  %co = mul i64 %m, 64
  %co2 = mul i64 %n, 4
  %co3 = add i64 %co, %co2
  %cp = getelementptr i8, ptr %c, i64 %co3
  %c0 = load float, ptr %cp
  br label %k_loop
k_loop:
  %k = phi i64 [0, %n_loop], [%kn, %k_loop]
  %acc = phi float [%c0, %n_loop], [%acc2, %k_loop]
  %ao = mul i64 %m, 64
  %ao2 = mul i64 %k, 4
  %ao3 = add i64 %ao, %ao2
  %pa0 = getelementptr i8, ptr %a, i64 %ao3
  %pa1 = getelementptr i8, ptr %pa0, i64 2
  %bo = mul i64 %k, 64
  %bo2 = mul i64 %n, 4
  %bo3 = add i64 %bo, %bo2
  %pb0 = getelementptr i8, ptr %b, i64 %bo3
  %pb1 = getelementptr i8, ptr %pb0, i64 2
  %a0 = call float @dlrm_swamx_bf16(ptr %pa0)
  %a1 = call float @dlrm_swamx_bf16(ptr %pa1)
  %b0 = call float @dlrm_swamx_bf16(ptr %pb0)
  %b1 = call float @dlrm_swamx_bf16(ptr %pb1)
  %p0 = fmul float %a0, %b0
  %p1 = fmul float %a1, %b1
  %acc1 = fadd float %acc, %p0
  %acc2 = fadd float %acc1, %p1
  %kn = add i64 %k, 1
  %ke = icmp eq i64 %kn, 16
  br i1 %ke, label %n_end, label %k_loop
n_end:
  store float %acc2, ptr %cp
  %nn = add i64 %n, 1
  %ne = icmp eq i64 %nn, 16
  br i1 %ne, label %m_end, label %n_loop
m_end:
  %mn = add i64 %m, 1
  %me = icmp eq i64 %mn, 16
  br i1 %me, label %done, label %m_loop
done:
  ret void
}

declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)
"""


def _kernel_body(sw: bool) -> str:
    """The block kernel: (C, ldc bytes, A, lda bytes, B panel pair, bytes between the two
    panels, K / 32). C tiles: rows 0-15 and 16-31 x columns 0-15 and 16-31."""
    name = KERNEL_SW if sw else KERNEL

    if sw:
        def load(t, p, s):
            return f"  call void @dlrm_swamx_load(ptr %tiles, i64 {t}, ptr {p}, i64 {s})\n"

        def store(t, p, s):
            return f"  call void @dlrm_swamx_store(ptr %tiles, i64 {t}, ptr {p}, i64 {s})\n"

        def dp(c, a, b):
            return f"  call void @dlrm_swamx_dp(ptr %tiles, i64 {c}, i64 {a}, i64 {b})\n"
        cfg = "  %tiles = alloca [8192 x i8], align 64\n"
    else:
        def load(t, p, s):
            return f"  call void @llvm.x86.tileloadd64(i8 {t}, ptr {p}, i64 {s})\n"

        def store(t, p, s):
            return f"  call void @llvm.x86.tilestored64(i8 {t}, ptr {p}, i64 {s})\n"

        def dp(c, a, b):
            return f"  call void @llvm.x86.tdpbf16ps(i8 {c}, i8 {a}, i8 {b})\n"
        cfg = "  call void @llvm.x86.ldtilecfg(ptr @dlrm_amx_cfg)\n"
    c_tiles = [(0, "%c"), (1, "%c1"), (2, "%c2"), (3, "%c3")]
    return (
        f"define void @{name}(ptr %c, i64 %ldc, ptr %a, i64 %lda, ptr %b, i64 %bpanel, "
        "i64 %ksteps) {\nentry:\n" + cfg
        + "  %c1 = getelementptr i8, ptr %c, i64 64\n"
        "  %r16 = mul i64 %ldc, 16\n"
        "  %c2 = getelementptr i8, ptr %c, i64 %r16\n"
        "  %c3 = getelementptr i8, ptr %c2, i64 64\n"
        + "".join(load(t, p, "%ldc") for t, p in c_tiles)
        + "  %a16 = mul i64 %lda, 16\n"
        "  %a1 = getelementptr i8, ptr %a, i64 %a16\n"
        "  %b1 = getelementptr i8, ptr %b, i64 %bpanel\n"
        "  br label %loop\nloop:\n"
        "  %k = phi i64 [0, %entry], [%kn, %loop]\n"
        "  %ao = mul i64 %k, 64\n"      # 32 bf16 of each A row
        "  %bo = mul i64 %k, 1024\n"    # 16 K pairs x 64 bytes of a panel
        "  %pa0 = getelementptr i8, ptr %a, i64 %ao\n"
        "  %pa1 = getelementptr i8, ptr %a1, i64 %ao\n"
        "  %pb0 = getelementptr i8, ptr %b, i64 %bo\n"
        "  %pb1 = getelementptr i8, ptr %b1, i64 %bo\n"
        + load(4, "%pa0", "%lda") + load(5, "%pa1", "%lda")
        + load(6, "%pb0", 64) + load(7, "%pb1", 64)
        + dp(0, 4, 6) + dp(1, 4, 7) + dp(2, 5, 6) + dp(3, 5, 7)
        + "  %kn = add i64 %k, 1\n"
        "  %done = icmp eq i64 %kn, %ksteps\n"
        "  br i1 %done, label %exit, label %loop\nexit:\n"
        + "".join(store(t, p, "%ldc") for t, p in c_tiles)
        + "  ret void\n}\n"
    )


def amx_config_global() -> str:
    """The tile configuration as a private LLVM constant ``@dlrm_amx_cfg`` (64 bytes)."""
    return (f'@dlrm_amx_cfg = private unnamed_addr constant [64 x i8] c"{_cfg_literal()}", '
            "align 64\n")


def amx_llvm_ir(sw: bool = False) -> str:
    """The LLVM IR a schedule imports (``pragma_import_llvm``): the AMX kernel, or its
    software-model twin (``sw``, runs on any x86-64)."""
    if sw:
        return _SW_MODEL + _kernel_body(True)
    return amx_config_global() + _INSTR_DECLS + _kernel_body(False)


def _desc(k: int):
    kh = k // 2

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sb = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (32, k), "bfloat16", strides=[sa, 1], offset_factor=1)
        B = T.match_buffer(b, (2, kh, 16, 2), "bfloat16", strides=[sb, 32, 2, 1],
                           offset_factor=1)
        C = T.match_buffer(c, (32, 32), "float32", strides=[sc, 1], offset_factor=1,
                           scope="local")
        with T.sblock("root"):
            T.reads(C[0:32, 0:32], A[0:32, 0:k], B[0:2, 0:kh, 0:16, 0:2])
            T.writes(C[0:32, 0:32])
            for i, j, kk in T.grid(32, 32, k):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                    C[vi, vj] = C[vi, vj] + T.cast(A[vi, vk], "float32") * T.cast(
                        B[vj // 16, vk // 2, vj % 16, vk % 2], "float32")

    return desc


def _impl(k: int, kernel: str):
    kh = k // 2
    steps = k // K_STEP

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sb = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (32, k), "bfloat16", strides=[sa, 1], offset_factor=1)
        B = T.match_buffer(b, (2, kh, 16, 2), "bfloat16", strides=[sb, 32, 2, 1],
                           offset_factor=1)
        C = T.match_buffer(c, (32, 32), "float32", strides=[sc, 1], offset_factor=1,
                           scope="local")
        with T.sblock("root"):
            T.reads(C[0:32, 0:32], A[0:32, 0:k], B[0:2, 0:kh, 0:16, 0:2])
            T.writes(C[0:32, 0:32])
            # bf16 operands viewed as uint16 (TVM legalises bf16 values to fp32, so a bf16
            # pointer would not survive lowering)
            a16 = T.decl_buffer((1,), "uint16", data=A.data, elem_offset=A.elem_offset)
            b16 = T.decl_buffer((1,), "uint16", data=B.data, elem_offset=B.elem_offset)
            T.evaluate(T.call_extern(
                "void", kernel,
                C.access_ptr("rw"), T.Cast("int64", sc) * 4,
                a16.access_ptr("r"), T.Cast("int64", sa) * 2,
                b16.access_ptr("r"), T.Cast("int64", sb) * 2,
                T.int64(steps)))

    return impl


def amx_intrin(k: int, variant: str = "amx") -> str:
    """The registered name of the 32 x 32 x ``k`` block (``k`` a multiple of 32) for
    ``variant`` "amx" (the instructions), "desc" (plain TIR) or "sw" (software tile model);
    registered on first use."""
    if k % K_STEP or k <= 0:
        raise ValueError(f"the AMX block needs K a positive multiple of {K_STEP}, got {k}")
    if variant not in ("amx", "desc", "sw"):
        raise ValueError(f"variant must be amx, desc or sw, got {variant!r}")
    name = f"dlrm_amx_bf16_32x32x{k}" + ("" if variant == "amx" else f"_{variant}")
    if name not in _registered:
        desc = _desc(k)
        impl = desc if variant == "desc" else _impl(k, KERNEL_SW if variant == "sw" else KERNEL)
        TensorIntrin.register(name, desc, impl, override=True)
        _registered.add(name)
    return name


_registered: set[str] = set()
