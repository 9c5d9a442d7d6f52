"""This machine's measured ceilings, the floors every benchmark timing is compared with.

* bf16 FLOP/s (CPUs with avx512_bf16 only): the same loop on ``vdpbf16ps`` (32 multiply-adds
  per instruction).
* AMX bf16 FLOP/s (CPUs with amx_tile and amx_bf16 only): four independent ``tdpbf16ps`` on
  tile registers per iteration (16 x 16 x 32 multiply-adds each), operands loaded once.
* fp32 FLOP/s: a register-resident FMA loop (independent accumulator chains, one vector FMA
  each per iteration), written in LLVM IR, imported into a TIR kernel and run on every thread.
  Lanes and accumulator count come from the target (AVX2: 8 x 12, AVX-512: 16 x 24).
* memory bandwidth: a parallel copy of a 256 MiB array (bytes read + bytes written).
* random-gather bandwidth: rows of a 256 MiB table read by uniform random indices and summed
  64 at a time, an embedding bag with nothing else to do (bytes of rows gathered).

Each figure is the best of ``REPS`` runs after a warm-up (a ceiling, not a typical value).
"""

from __future__ import annotations

import numpy as np

from dlrm_tvm.bench.timing import time_call
from dlrm_tvm.pipeline import compile_primfunc

REPS = 5  # timed runs per figure, after a warm-up; the best is kept


def _loop_ir(symbol: str, vec: str, accs: int, decl: str, setup: list[str], init: str,
             step: str) -> str:
    """LLVM IR of ``i32 symbol(i64 iters, ptr out)``: ``accs`` independent accumulator chains
    of type ``vec``, each advanced once per iteration by ``step`` (``{a}``: the accumulator),
    summed at the end and stored so that nothing is dead."""
    lines = [decl, f"define i32 @{symbol}(i64 %iters, ptr %out) {{", "entry:", *setup,
             "  br label %loop", "loop:", "  %i = phi i64 [0, %entry], [%i1, %loop]"]
    lines += [f"  %a{a} = phi {vec} [{init}, %entry], [%n{a}, %loop]" for a in range(accs)]
    lines += [f"  %n{a} = " + step.format(a=f"%a{a}") for a in range(accs)]
    lines += ["  %i1 = add i64 %i, 1", "  %done = icmp eq i64 %i1, %iters",
              "  br i1 %done, label %exit, label %loop", "exit:"]
    prev = "%n0"
    for a in range(1, accs):
        lines.append(f"  %s{a} = fadd {vec} {prev}, %n{a}")
        prev = f"%s{a}"
    lines += [f"  %e = extractelement {vec} {prev}, i32 0", "  store float %e, ptr %out",
              "  ret i32 0", "}"]
    return "\n".join(lines)


def _fma_ir(lanes: int, accs: int) -> str:
    v = f"<{lanes} x float>"

    def splat(x: str) -> str:
        return "<" + ", ".join([f"float {x}"] * lanes) + ">"

    mul, add = splat("0x3FEFFFFFE0000000"), splat("0x3F1A36E2E0000000")
    fma = f"@llvm.fma.v{lanes}f32"
    return _loop_ir("dlrm_fma_peak", v, accs, f"declare {v} {fma}({v}, {v}, {v})", [],
                    splat("1.0"), f"call {v} {fma}({v} {{a}}, {v} {mul}, {v} {add})")


def _dpbf16_ir(accs: int) -> str:
    v = "<16 x float>"
    ones = "<" + ", ".join(["i32 1065369472"] * 16) + ">"  # bf16 pairs (1.0, ~0.0)
    dp = "@llvm.x86.avx512bf16.dpbf16ps.512"
    return _loop_ir("dlrm_bf16_peak", v, accs,
                    f"declare {v} {dp}({v}, <32 x bfloat>, <32 x bfloat>)",
                    [f"  %x = bitcast <16 x i32> {ones} to <32 x bfloat>"], "zeroinitializer",
                    f"call {v} {dp}({v} {{a}}, <32 x bfloat> %x, <32 x bfloat> %x)")


def _amx_peak_ir() -> str:
    """LLVM IR of ``i32 dlrm_amx_peak(i64 iters, ptr out)``: the tile configuration of the GEMM
    kernels (schedules/intrin/x86_amx.py), A and B tiles loaded once from a stack buffer of bf16
    values near 0.5, then ``iters`` x 4 independent tdpbf16ps into tmm0..3; tmm0's first
    element is stored so nothing is dead."""
    from dlrm_tvm.schedules.intrin.x86_amx import amx_config_global

    return amx_config_global() + """
declare void @llvm.x86.ldtilecfg(ptr)
declare void @llvm.x86.tilezero(i8 immarg)
declare void @llvm.x86.tilerelease()
declare void @llvm.x86.tileloadd64(i8 immarg, ptr, i64)
declare void @llvm.x86.tilestored64(i8 immarg, ptr, i64)
declare void @llvm.x86.tdpbf16ps(i8 immarg, i8 immarg, i8 immarg)
declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)
define i32 @dlrm_amx_peak(i64 %iters, ptr %out) {
entry:
  %buf = alloca [1024 x i8], align 64
  call void @llvm.memset.p0.i64(ptr %buf, i8 63, i64 1024, i1 false)
  call void @llvm.x86.ldtilecfg(ptr @dlrm_amx_cfg)
  call void @llvm.x86.tilezero(i8 0)
  call void @llvm.x86.tilezero(i8 1)
  call void @llvm.x86.tilezero(i8 2)
  call void @llvm.x86.tilezero(i8 3)
  call void @llvm.x86.tileloadd64(i8 4, ptr %buf, i64 64)
  call void @llvm.x86.tileloadd64(i8 5, ptr %buf, i64 64)
  call void @llvm.x86.tileloadd64(i8 6, ptr %buf, i64 64)
  call void @llvm.x86.tileloadd64(i8 7, ptr %buf, i64 64)
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  call void @llvm.x86.tdpbf16ps(i8 0, i8 4, i8 6)
  call void @llvm.x86.tdpbf16ps(i8 1, i8 4, i8 7)
  call void @llvm.x86.tdpbf16ps(i8 2, i8 5, i8 6)
  call void @llvm.x86.tdpbf16ps(i8 3, i8 5, i8 7)
  %i1 = add i64 %i, 1
  %done = icmp eq i64 %i1, %iters
  br i1 %done, label %exit, label %loop
exit:
  call void @llvm.x86.tilestored64(i8 0, ptr %buf, i64 64)
  call void @llvm.x86.tilerelease()
  %f = load float, ptr %buf
  store float %f, ptr %out
  ret i32 0
}
"""


AMX_FLOP_PER_ITER = 4 * 2 * 16 * 16 * 32  # four tdpbf16ps: 16 x 16 outputs x 32 products


def amx_peak_kernel(target, threads: int):
    """The compiled tile loop (compiles for any amx-bf16 target, runs only on one)."""
    from dlrm_tvm.schedules.base import has_feature

    if not (has_feature(target, "amx-tile") and has_feature(target, "amx-bf16")):
        raise ValueError("the AMX peak needs a target with amx-tile and amx-bf16")
    return _loop_kernel(target, threads, "dlrm_amx_peak", _amx_peak_ir())


def host_has_amx() -> bool:
    from dlrm_tvm.targets import host_cpu_flags

    return {"amx_tile", "amx_bf16"} <= host_cpu_flags()


def amx_peak_gflops(target, threads: int, iters: int = 2_000_000) -> float | None:
    """GFLOP/s of tdpbf16ps on this host, or None if the host or the target has no AMX."""
    from dlrm_tvm.runtime.amx import emulated, request_amx
    from dlrm_tvm.schedules.base import has_feature

    if not host_has_amx() or not has_feature(target, "amx-bf16") or emulated():
        return None  # (emulated: the executor's rate is no peak of this CPU)
    request_amx()
    lib = amx_peak_kernel(target, threads)
    return AMX_FLOP_PER_ITER * iters * threads / _run_loop(lib, threads, iters) / 1e9


def _loop_kernel(target, threads: int, symbol: str, ir: str):
    """A TIR kernel calling the LLVM IR function ``symbol(iters, out)`` on every thread."""
    from tvm import s_tir
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def probe(out: T.Buffer((threads,), "float32"), n: T.int64):
        for t in range(threads):
            with T.sblock("w"):
                vt = T.axis.spatial(threads, t)
                T.evaluate(T.call_extern("int32", symbol, n, T.address_of(out[vt])))

    sch = s_tir.Schedule(probe)
    (loop,) = sch.get_loops(sch.get_sblock("w"))
    sch.parallel(loop)
    sch.annotate(loop, "pragma_import_llvm", ir)
    return compile_primfunc(sch, target)


def _run_loop(lib, threads: int, iters: int) -> float:
    import tvm

    out = tvm.runtime.tensor(np.zeros(threads, np.float32))
    return time_call(lambda: lib["main"](out, iters), REPS, best=True)


def fp32_peak_gflops(target, threads: int, iters: int = 40_000_000) -> float:
    from dlrm_tvm.schedules.base import fp32_lanes

    lanes = fp32_lanes(target)
    accs = 24 if lanes == 16 else 12
    lib = _loop_kernel(target, threads, "dlrm_fma_peak", _fma_ir(lanes, accs))
    return 2 * lanes * accs * iters * threads / _run_loop(lib, threads, iters) / 1e9


def bf16_peak_kernel(target, threads: int):
    """The compiled vdpbf16ps loop (compiles for any avx512bf16 target, runs only on one)."""
    from dlrm_tvm.schedules.base import has_feature

    if not has_feature(target, "avx512bf16"):
        raise ValueError("the bf16 peak needs a target with avx512bf16")
    return _loop_kernel(target, threads, "dlrm_bf16_peak", _dpbf16_ir(24))


def bf16_peak_gflops(target, threads: int, iters: int = 20_000_000) -> float | None:
    """GFLOP/s of vdpbf16ps on this host, or None if the host cannot execute it."""
    from dlrm_tvm.targets import host_cpu_flags

    if "avx512_bf16" not in host_cpu_flags():
        return None
    lib = bf16_peak_kernel(target, threads)
    return 2 * 32 * 24 * iters * threads / _run_loop(lib, threads, iters) / 1e9


def _compile_te(target, tensors):
    from tvm import te

    from dlrm_tvm.schedules import rules_for, schedule_func

    func = te.create_prim_func(tensors).with_attr("dlrm.op", "peak_probe")
    sched, _ = schedule_func(func, target, rules_for(target))
    return compile_primfunc(sched, target)


def memory_bandwidth_gbs(target, mib: int = 256) -> float:
    import tvm
    from tvm import te

    n = mib * 2**20 // 4
    x = te.placeholder((n,), "float32", name="x")
    y = te.compute((n,), lambda i: x[i], name="y")
    lib = _compile_te(target, [x, y])
    a = tvm.runtime.tensor(np.ones(n, np.float32))
    b = tvm.runtime.tensor(np.zeros(n, np.float32))
    return 2 * n * 4 / time_call(lambda: lib["main"](a, b), REPS, best=True) / 1e9


def gather_bandwidth_gbs(target, rows: int = 1_000_000, dim: int = 64,
                         lookups: int = 1_000_000) -> float:
    """GB/s of table rows gathered by uniform random indices (rows x dim fp32)."""
    import tvm
    from tvm import s_tir, te

    chunk = 64  # rows summed per output row: reads dominate, as in an embedding bag
    tab = te.placeholder((rows, dim), "float32", name="table")
    idx = te.placeholder((lookups,), "int64", name="idx")
    r = te.reduce_axis((0, chunk), name="r")
    out = te.compute((lookups // chunk, dim),
                     lambda c, d: te.sum(tab[idx[c * chunk + r], d], axis=r), name="out")
    sch = s_tir.Schedule(te.create_prim_func([tab, idx, out]))
    blk = sch.get_sblock("out")
    c, d, r_ = sch.get_loops(blk)
    sch.reorder(c, r_, d)
    sch.parallel(c)
    sch.vectorize(d)  # each gathered row read as whole vectors
    sch.decompose_reduction(blk, r_)
    lib = compile_primfunc(sch, target)
    rng = np.random.default_rng(0)
    t = tvm.runtime.tensor(rng.random((rows, dim), dtype=np.float32))
    ix = tvm.runtime.tensor(rng.integers(0, rows, lookups).astype(np.int64))
    o = tvm.runtime.tensor(np.zeros((lookups // 64, dim), np.float32))
    secs = time_call(lambda: lib["main"](t, ix, o), REPS, best=True)
    return lookups * dim * 4 / secs / 1e9


def measure_peaks(target, threads: int, embedding_dim: int = 64) -> dict:
    from dlrm_tvm.schedules.base import has_feature

    return {
        "fp32_gflops": fp32_peak_gflops(target, threads),
        "bf16_gflops": (bf16_peak_gflops(target, threads)
                        if has_feature(target, "avx512bf16") else None),
        "amx_bf16_gflops": amx_peak_gflops(target, threads),
        "memory_gbs": memory_bandwidth_gbs(target),
        "gather_gbs": gather_bandwidth_gbs(target, dim=embedding_dim),
    }
