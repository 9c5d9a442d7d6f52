"""AVX-512 BF16: C[16] (fp32) += A[2] (bf16) . B[16][2] (bf16) with one ``vdpbf16ps``.

For each of the 16 lanes j: C[j] += A[0] * B[j][0] + A[1] * B[j][1], products and sums in fp32.
A is one pair of consecutive K elements of an activation row (broadcast to all lanes); B is a
weight panel in the VNNI-2 layout [N/16][K/2][16][2], so a 16 x 2 tile is 64 contiguous bytes.

The LLVM intrinsic wants ``<32 x bfloat>`` operands while TVM hands bf16 vectors over as
integers, so the implementation calls a three-instruction LLVM IR function (``DPBF16_LLVM_IR``)
that bitcasts and calls the intrinsic; a schedule imports it with the loop annotation
``pragma_import_llvm`` and LLVM inlines it. Only for targets with ``avx512bf16``: LLVM aborts
the whole process when asked to select this instruction for a CPU without it.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

DPBF16_16X2 = "dlrm_avx512bf16_dpbf16ps_16x2"
# The description registered as its own implementation: the same tiling, packing and tensorize
# boundaries in plain TIR, so a schedule built on the microkernel can be run and checked on any
# CPU (tests); only the one-instruction body differs.
DPBF16_16X2_DESC = "dlrm_avx512bf16_dpbf16ps_16x2_desc"

DPBF16_LLVM_IR = """
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)

define <16 x float> @dlrm_dpbf16ps(<16 x float> %c, <16 x i32> %a, <16 x i32> %b) alwaysinline {
  %a2 = bitcast <16 x i32> %a to <32 x bfloat>
  %b2 = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %c,
                                                          <32 x bfloat> %a2, <32 x bfloat> %b2)
  ret <16 x float> %r
}
"""


@T.prim_func(s_tir=True)
def dpbf16_desc(
    A: T.Buffer((2,), "bfloat16", offset_factor=1),
    B: T.Buffer((16, 2), "bfloat16", offset_factor=1),
    C: T.Buffer((16,), "float32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:2], B[0:16, 0:2])
        T.writes(C[0:16])
        for j in T.serial(0, 16):
            for k in T.serial(0, 2):
                with T.sblock("update"):
                    vj, vk = T.axis.remap("SR", [j, k])
                    C[vj] = C[vj] + T.cast(A[vk], "float32") * T.cast(B[vj, vk], "float32")


@T.prim_func(s_tir=True)
def dpbf16_impl(
    A: T.Buffer((2,), "bfloat16", offset_factor=1),
    B: T.Buffer((16, 2), "bfloat16", offset_factor=1),
    C: T.Buffer((16,), "float32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:2], B[0:16, 0:2])
        T.writes(C[0:16])
        # the bf16 bits viewed as uint16: TVM legalises bf16 *values* to fp32, which would make
        # the reinterpret below a (wrong-width) float bitcast
        a16 = T.decl_buffer((2,), "uint16", data=A.data, elem_offset=A.elem_offset)
        b16 = T.decl_buffer((32,), "uint16", data=B.data, elem_offset=B.elem_offset)
        a_pair = T.reinterpret(a16.vload([0], "uint16x2"), dtype="int32")
        b_tile = T.reinterpret(b16.vload([0], "uint16x32"), dtype="int32x16")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_extern(
            "float32x16", "dlrm_dpbf16ps", C.vload([0], "float32x16"),
            T.broadcast(a_pair, 16), b_tile,
        )


_registered = False


def register() -> None:
    """Register the pair with TVM once (explicitly: no import-time side effects)."""
    global _registered
    if not _registered:
        TensorIntrin.register(DPBF16_16X2, dpbf16_desc, dpbf16_impl, override=True)
        TensorIntrin.register(DPBF16_16X2_DESC, dpbf16_desc, dpbf16_desc, override=True)
        _registered = True
