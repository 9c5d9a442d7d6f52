"""The AVX-512 BF16 GEMM rule: gating, compile-only checks on any host, numerics.

* compile-only (any host): cross-compiled for cooperlake, every GEMM kind contains vdpbf16ps.
* emulated (any host): the same schedule tensorized with the microkernel's TIR description,
  run here against NumPy: checks the packing, tiling and tensorize boundaries.
* native (only on a CPU with avx512_bf16, skipped elsewhere): the real instruction.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import tvm
from dlrm_tvm.graphs import ops
from dlrm_tvm.graphs import reference as ref
from dlrm_tvm.schedules import rules_for, schedule_func
from dlrm_tvm.schedules.x86.gemm_bf16 import GemmBF16Dpbf16ps

from dlrm_tvm.targets import host_cpu_flags, resolve_target

# (name, M, K, N, a_layout, b_layout, epilogue): the three GEMMs of DLRM layers, and odd shapes
KINDS = [
    ("fwd", 128, 64, 64, "mk", "kn", "bias_relu"),
    ("fwd-odd", 7, 38, 48, "mk", "kn", "bias"),
    ("dx", 128, 64, 368, "mk", "nk", "relu_mask"),
    ("dx-odd", 9, 2, 16, "mk", "nk", "none"),
    ("dw", 368, 128, 64, "km", "kn", "none"),
    ("dw-odd", 13, 30, 32, "km", "kn", "none"),
    ("fwd-k13", 64, 13, 64, "mk", "kn", "bias_relu"),  # the 13 dense features: K padded
    ("dx-k1", 16, 1, 32, "mk", "nk", "relu_mask"),  # the last layer's input gradient
    ("dw-k-odd", 16, 7, 32, "km", "kn", "none"),
]
HOST_HAS_BF16 = "avx512_bf16" in host_cpu_flags()


def _func(m, k, n, al, bl, epi):
    return ops.gemm(m, k, n, al, epi, b_layout=bl, in_dtype="bfloat16")


def _compile(sch, target):
    f = sch.mod["main"].with_attr("global_symbol", "main")
    return tvm.compile(tvm.IRModule({"main": f}), target=target)


def _run_check(lib, m, k, n, al, bl, epi, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k) if al == "mk" else (k, m)).astype(ml_dtypes.bfloat16)
    b = rng.standard_normal((k, n) if bl == "kn" else (n, k)).astype(ml_dtypes.bfloat16)
    ins = [a, b]
    extra = None
    if epi in ("bias", "bias_relu"):  # bias and mask are bf16 like the operands
        extra = rng.standard_normal(n).astype(ml_dtypes.bfloat16)
    elif epi == "relu_mask":
        extra = rng.standard_normal((m, n)).astype(ml_dtypes.bfloat16)
    if extra is not None:
        ins.append(extra)
    y = tvm.runtime.tensor(np.full((m, n), np.nan, np.float32))
    lib["main"](*[tvm.runtime.tensor(x) for x in ins], y)
    got = y.numpy()
    assert not np.isnan(got).any(), "output not fully written"
    want = ref.gemm(a.astype(np.float32), b.astype(np.float32), al, epi, extra, bl)
    err = np.linalg.norm(got - want) / max(1e-30, np.linalg.norm(want))
    # fp32 products and sums of the bf16 values: anything rounded to bf16 on the way would
    # miss this by orders of magnitude (a bf16 rounding is ~4e-3)
    assert err < 1e-5, f"relative Frobenius error {err:.2e}"
    return err


@pytest.mark.parametrize("name,m,k,n,al,bl,epi", KINDS, ids=[k[0] for k in KINDS])
def test_bf16_gemm_asm_has_vdpbf16ps(name, m, k, n, al, bl, epi):
    target = resolve_target("cooperlake").tvm_target()
    sch = GemmBF16Dpbf16ps().apply(_func(m, k, n, al, bl, epi), target)
    assert sch is not None
    asm = _compile(sch, target).mod.inspect_source("asm")
    assert "vdpbf16ps" in asm


@pytest.mark.parametrize("name,m,k,n,al,bl,epi", KINDS, ids=[k[0] for k in KINDS])
def test_bf16_gemm_schedule_emulated(name, m, k, n, al, bl, epi):
    target = resolve_target("host").tvm_target()
    sch = GemmBF16Dpbf16ps(emulate=True).apply(_func(m, k, n, al, bl, epi), target)
    _run_check(_compile(sch, target), m, k, n, al, bl, epi, seed=m * 7 + n)


@pytest.mark.skipif(not HOST_HAS_BF16, reason="this CPU has no avx512_bf16 (vdpbf16ps)")
@pytest.mark.parametrize("name,m,k,n,al,bl,epi", KINDS, ids=[k[0] for k in KINDS])
def test_bf16_gemm_native(name, m, k, n, al, bl, epi):
    target = resolve_target("host").tvm_target()
    sch = GemmBF16Dpbf16ps().apply(_func(m, k, n, al, bl, epi), target)
    assert sch is not None
    _run_check(_compile(sch, target), m, k, n, al, bl, epi, seed=m * 7 + n)


@pytest.mark.parametrize("target_name", ["skylake-avx512", "cascadelake", "icelake-server",
                                         "znver3", "x86-64-v3"])
def test_bf16_rule_never_offered_without_the_instruction(target_name):
    target = resolve_target(target_name).tvm_target()
    assert GemmBF16Dpbf16ps().apply(_func(128, 64, 64, "mk", "kn", "none"), target) is None
    names = [r.name for r in rules_for(target)]
    assert "gemm_bf16_avx512_dpbf16ps" not in names


def test_bf16_rule_declines_fp32_and_awkward_shapes():
    target = resolve_target("cooperlake").tvm_target()
    rule = GemmBF16Dpbf16ps()
    assert rule.apply(ops.gemm(128, 64, 64), target) is None  # fp32 GEMM
    assert rule.apply(_func(128, 64, 40, "mk", "kn", "none"), target) is None  # N % 16
    names = [r.name for r in rules_for(target)]  # the bf16 rules come before the fp32 ones
    assert names.index("gemm_bf16_avx512_dpbf16ps") < names.index("gemm_packed_fp32")
    assert names[0] == "gemm_vnni_avx512_dpbf16ps"


@pytest.mark.parametrize("m,k,n", [(16, 13, 40), (8, 64, 40)])
def test_bf16_gemm_awkward_shape_falls_to_fp32_compute(m, k, n):
    """Shapes the microkernel declines still compute right through the fp32 rules."""
    target = resolve_target("host").tvm_target()
    func, rule = schedule_func(_func(m, k, n, "mk", "kn", "bias_relu"), target,
                               rules_for(target))
    assert rule != "gemm_bf16_avx512_dpbf16ps"
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=target)
    _run_check(lib, m, k, n, "mk", "kn", "bias_relu", seed=3)


def test_bf16_peak_probe_compiles_to_vdpbf16ps():
    from dlrm_tvm.bench.peaks import bf16_peak_gflops, bf16_peak_kernel

    lib = bf16_peak_kernel(resolve_target("cooperlake").tvm_target(), 2)
    assert lib.mod.inspect_source("asm").count("vdpbf16ps") >= 24
    if not HOST_HAS_BF16:
        assert bf16_peak_gflops(resolve_target("host").tvm_target(), 1) is None
