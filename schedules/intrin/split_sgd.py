"""Split-SGD-BF16 row steps as LLVM IR functions: ``dlrm_split_sgd{8,16}`` and
``dlrm_split_sgd32s`` (hi, lo, g, rate): hi/lo[0:w] -= rate * g[0:w] on the fp32 masters.

The plain TIR statement of the step (and its oracle) is ``split_sgd_columns`` in
graphs/embedding_update.py: w = fp32_of_halves(hi, lo); w -= rate * g; hi, lo = its halves.
TVM's vectoriser mistranslates that body (7 of 8 lanes wrong, see docs/bf16.md), so the
parallel kernels import these functions with the loop annotation ``pragma_import_llvm`` and call
them with ``T.call_extern``; LLVM inlines them. Plain LLVM vectors: legal on any x86-64 (AVX2
splits a 16-wide step in two). The fma is what TVM's own fp32 code does with w - rate * g
(fused), so both storages stay bit-identical.

Two forms of the combine/split, same bits:
* widen (w = 8, 16): zext the halves to i32, hi << 16 | lo; back with lshr and trunc;
* shuffle (w = 32, name suffix ``s``): the (lo_k, hi_k) i16 pairs interleaved by shuffles are
  the little-endian fp32 words; even/odd shuffles split them back: about half the
  instructions (AVX-512BW: vpermt2w). The 8-wide widen form alone made the bf16 update
  instruction-bound (small: 63.8 ms against fp32's 38 to 47).
"""

from __future__ import annotations


def _step(name: str, w: int, lanes: int, combine: str, split: str, nh: str, nl: str) -> str:
    """One step function: load the w-element halves, ``combine`` them into fp32 vectors of
    ``lanes``, fma with the splatted -rate (``split`` computes the new halves %nh, %nl), store."""
    v16, vf = f"<{w} x i16>", f"<{lanes} x float>"
    return f"""
declare {vf} @llvm.fma.v{lanes}f32({vf}, {vf}, {vf})

define void @dlrm_split_sgd{name}(ptr %hi, ptr %lo, ptr %g, float %rate) alwaysinline {{
  %h = load {v16}, ptr %hi, align 2
  %l = load {v16}, ptr %lo, align 2
{combine}
  %nr = fneg float %rate
  %r0 = insertelement {vf} poison, float %nr, i32 0
  %rs = shufflevector {vf} %r0, {vf} poison, <{lanes} x i32> zeroinitializer
{split}
  store {v16} %{nh}, ptr %hi, align 2
  store {v16} %{nl}, ptr %lo, align 2
  ret void
}}
"""


def split_sgd_widen_ir(w: int) -> str:
    """``dlrm_split_sgd{w}``: the step of w elements, halves widened and shifted."""
    v16, v32, vf = f"<{w} x i16>", f"<{w} x i32>", f"<{w} x float>"
    sixteen = "<" + ", ".join(["i32 16"] * w) + ">"
    combine = f"""  %gv = load {vf}, ptr %g, align 4
  %h32 = zext {v16} %h to {v32}
  %l32 = zext {v16} %l to {v32}
  %hs = shl {v32} %h32, {sixteen}
  %bits = or {v32} %hs, %l32
  %w = bitcast {v32} %bits to {vf}"""
    split = f"""  %nw = call {vf} @llvm.fma.v{w}f32({vf} %rs, {vf} %gv, {vf} %w)
  %nb = bitcast {vf} %nw to {v32}
  %nh = lshr {v32} %nb, {sixteen}
  %nh16 = trunc {v32} %nh to {v16}
  %nl16 = trunc {v32} %nb to {v16}"""
    return _step(str(w), w, w, combine, split, "nh16", "nl16")


def split_sgd_shuffle_ir(w: int = 32) -> str:
    """``dlrm_split_sgd{w}s``: the step of w elements, halves interleaved by shuffles."""
    h = w // 2
    v16, vf = f"<{w} x i16>", f"<{h} x float>"
    lo_idx = ", ".join(f"i32 {k}, i32 {k + w}" for k in range(h))
    hi_idx = ", ".join(f"i32 {k}, i32 {k + w}" for k in range(h, w))
    even = ", ".join(f"i32 {2 * k}" for k in range(w))
    odd = ", ".join(f"i32 {2 * k + 1}" for k in range(w))
    combine = f"""  %a = shufflevector {v16} %l, {v16} %h, <{w} x i32> <{lo_idx}>
  %b = shufflevector {v16} %l, {v16} %h, <{w} x i32> <{hi_idx}>
  %wa = bitcast {v16} %a to {vf}
  %wb = bitcast {v16} %b to {vf}
  %ga = load {vf}, ptr %g, align 4
  %gp = getelementptr float, ptr %g, i64 {h}
  %gb = load {vf}, ptr %gp, align 4"""
    split = f"""  %na = call {vf} @llvm.fma.v{h}f32({vf} %rs, {vf} %ga, {vf} %wa)
  %nb = call {vf} @llvm.fma.v{h}f32({vf} %rs, {vf} %gb, {vf} %wb)
  %ia = bitcast {vf} %na to {v16}
  %ib = bitcast {vf} %nb to {v16}
  %nl = shufflevector {v16} %ia, {v16} %ib, <{w} x i32> <{even}>
  %nh = shufflevector {v16} %ia, {v16} %ib, <{w} x i32> <{odd}>"""
    return _step(f"{w}s", w, h, combine, split, "nh", "nl")


SPLIT_SGD_LLVM_IR = split_sgd_widen_ir(8) + split_sgd_widen_ir(16)  # dlrm_split_sgd8, 16
SPLIT_SGD_SHUFFLE_IR = split_sgd_shuffle_ir(32)  # dlrm_split_sgd32s
