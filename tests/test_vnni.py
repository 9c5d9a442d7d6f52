"""The bf16 step's packed layouts: VNNI-2 packs, GEMMs on packed operands, GEMV.

* packs: bit-exact against the NumPy pack, DLRM and odd shapes, outputs poisoned first;
* gemm_vnni emulated (any host: the microkernel's TIR description substituted for the
  instruction) and native (a CPU with avx512_bf16), against a float64 product of the same
  bf16 values: relative Frobenius error <= 1e-5 (a result rounded to bf16 anywhere would miss);
* compile-only: the packed GEMMs of every kind contain vdpbf16ps for cooperlake;
* GEMV (the 1-wide last layer, fp32 and bf16) against NumPy, and chosen over the fallback;
* the whole bf16 step with packed layouts equals the one with plain layouts.
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import pytest
import tvm
from dlrm_tvm.graphs import ops
from dlrm_tvm.graphs import reference as ref
from dlrm_tvm.schedules import rules_for, schedule_func
from dlrm_tvm.schedules.gemv import GemvVector
from dlrm_tvm.schedules.pack import PackVnniVector
from dlrm_tvm.schedules.x86.gemm_bf16 import GemmVnniDpbf16ps

from dlrm_tvm.config import PRESETS
from dlrm_tvm.targets import host_cpu_flags, resolve_target, without_amx

BF16 = ml_dtypes.bfloat16
HOST_HAS_BF16 = "avx512_bf16" in host_cpu_flags()
HOST = resolve_target("host").tvm_target()


def _lib(sch_or_func, target=HOST):
    f = sch_or_func.mod["main"] if hasattr(sch_or_func, "mod") else sch_or_func
    return tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}),
                       target=target)


def _rand(rng, shape, dtype=BF16):
    return rng.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------- packs

PACKS = [  # rows, cols, transpose, k_pad
    (2048, 1024, False, None),  # an activation / dY for dW
    (256, 128, False, None),
    (13, 512, False, 16),  # the first layer's weight, K padded 13 -> 16
    (7, 37, False, None),  # odd K and N: zero padding
    (1024, 480, True, None),  # Wt [in, out] for dX: the 32-bit transpose form
    (48, 30, True, None),
    (37, 13, True, 16),  # transpose with padding: the generic form
]


@pytest.mark.parametrize("rows,cols,tr,kp", PACKS)
def test_pack_vnni_bit_exact(rows, cols, tr, kp):
    rng = np.random.default_rng(rows + cols)
    func = ops.pack_vnni(rows, cols, tr, kp)
    sch = PackVnniVector().apply(func, HOST)
    assert sch is not None
    x = _rand(rng, (rows, cols))
    want = ref.pack_vnni(x, tr, kp)
    out = tvm.runtime.tensor(np.full(want.shape, np.nan, np.float32).astype(BF16))
    _lib(sch)["main"](tvm.runtime.tensor(x), out)
    assert np.array_equal(out.numpy().view(np.uint16), want.view(np.uint16))


def test_pack_round_trip_and_padding():
    x = np.arange(5 * 33, dtype=np.float32).reshape(5, 33)
    p = ref.pack_vnni(x)
    assert p.shape == ops.vnni_shape(5, 33) == (3, 3, 16, 2)
    assert np.array_equal(ref.unpack_vnni(p, 5, 33), x)
    assert p[2, 2, 0, 0] == x[4, 32] and p[2, 2, 0, 1] == 0  # past K and N: zeros
    assert np.array_equal(ref.pack_vnni(x.T, transpose=True), p)


def test_cast_pad():
    rng = np.random.default_rng(1)
    x = _rand(rng, (64, 13), np.float32)
    y = tvm.runtime.tensor(np.full((64, 16), np.nan, np.float32).astype(BF16))
    func, _ = schedule_func(ops.cast_pad(64, 13, 16), HOST, rules_for(HOST))
    _lib(func)["main"](tvm.runtime.tensor(x), y)
    got = y.numpy().astype(np.float32)
    assert np.array_equal(got[:, :13], x.astype(BF16).astype(np.float32))
    assert not got[:, 13:].any()


# ---------------------------------------------------------------- GEMMs on packed operands

VNNI_KINDS = [  # name, M, K, N, a_layout, epilogue
    ("fwd", 128, 64, 64, "mk", "bias_relu"),
    ("fwd-k16", 96, 16, 48, "mk", "bias_relu"),
    ("dx", 128, 64, 368, "mk", "relu_mask"),
    ("dx-none", 40, 2, 16, "mk", "none"),
    ("dw", 368, 128, 64, "vnni", "none"),
    ("dw-m13", 13, 30, 32, "vnni", "none"),  # the 13 dense features' weight gradient
    ("dw-odd", 37, 14, 16, "vnni", "none"),
    ("fwd-bias", 24, 32, 32, "mk", "bias"),
]
NATIVE_KINDS = VNNI_KINDS + [  # DLRM's own shapes (mlperf's batch)
    ("mlperf-dw", 1024, 2048, 512, "vnni", "none"),
    ("mlperf-fwd", 2048, 480, 1024, "mk", "bias_relu"),
    ("mlperf-dx", 2048, 256, 512, "mk", "relu_mask"),
]


def _vnni_check(lib, m, k, n, al, epi, seed, out_dtype="float32"):
    rng = np.random.default_rng(seed)
    x = _rand(rng, (m, k) if al == "mk" else (k, m))
    a = x if al == "mk" else ref.pack_vnni(x)
    bp = ref.pack_vnni(_rand(rng, (k, n)))
    ins, extra = [a, bp], None
    if epi in ("bias", "bias_relu"):
        extra = _rand(rng, (n,))
    elif epi == "relu_mask":
        extra = _rand(rng, (m, n))
    if extra is not None:
        ins.append(extra)
    y = tvm.runtime.tensor(np.full((m, n), np.nan, np.float32).astype(out_dtype
                                                                      if out_dtype == "float32"
                                                                      else BF16))
    lib["main"](*[tvm.runtime.tensor(t) for t in ins], y)
    got = y.numpy().astype(np.float32)
    assert not np.isnan(got).any(), "output not fully written"
    want = ref.gemm_vnni(a.astype(np.float32), bp.astype(np.float32), m, k, n, al, epi,
                         None if extra is None else extra.astype(np.float32))
    err = np.linalg.norm(got - want) / max(1e-30, np.linalg.norm(want))
    return err


@pytest.mark.parametrize("name,m,k,n,al,epi", VNNI_KINDS, ids=[c[0] for c in VNNI_KINDS])
def test_gemm_vnni_emulated(name, m, k, n, al, epi):
    sch = GemmVnniDpbf16ps(emulate=True).apply(ops.gemm_vnni(m, k, n, al, epi), HOST)
    assert sch is not None
    assert _vnni_check(_lib(sch), m, k, n, al, epi, seed=m + n) <= 1e-5


@pytest.mark.parametrize("panel_outer", [False, True])
@pytest.mark.parametrize("al", ["mk", "vnni"])
def test_gemm_vnni_row_blocks_emulated(al, panel_outer):
    """Several row tiles per task (row_block), either loop order, through a tuning-style
    parameter override: same results."""
    m, k, n = 96, 22, 64
    params = {f"{m}x{k}x{n}_{al}": {"mi": 4, "nj": 32, "panel_outer": panel_outer,
                                    "row_block": 3}}
    rule = GemmVnniDpbf16ps(emulate=True, params=params)
    func = ops.gemm_vnni(m, k, n, al, "relu_mask" if al == "mk" else "none")
    assert rule.describe(func, HOST)["row_block"] == 3
    sch = rule.apply(func, HOST)
    assert _vnni_check(_lib(sch), m, k, n, al, "relu_mask" if al == "mk" else "none",
                       seed=9) <= 1e-5


@pytest.mark.skipif(not HOST_HAS_BF16, reason="this CPU has no avx512_bf16 (vdpbf16ps)")
@pytest.mark.parametrize("name,m,k,n,al,epi", NATIVE_KINDS, ids=[c[0] for c in NATIVE_KINDS])
def test_gemm_vnni_native(name, m, k, n, al, epi):
    sch = GemmVnniDpbf16ps().apply(ops.gemm_vnni(m, k, n, al, epi), HOST)
    assert sch is not None
    assert _vnni_check(_lib(sch), m, k, n, al, epi, seed=m + n) <= 1e-5


@pytest.mark.skipif(not HOST_HAS_BF16, reason="this CPU has no avx512_bf16 (vdpbf16ps)")
def test_gemm_vnni_native_bf16_output_is_the_rounded_fp32_result():
    m, k, n = 64, 96, 32
    sch = GemmVnniDpbf16ps().apply(ops.gemm_vnni(m, k, n, "mk", "bias_relu", "bfloat16"), HOST)
    err = _vnni_check(_lib(sch), m, k, n, "mk", "bias_relu", seed=5, out_dtype="bfloat16")
    assert err <= 2 ** -8  # one bf16 rounding of each output, nothing more


@pytest.mark.parametrize("name,m,k,n,al,epi", VNNI_KINDS[:6], ids=[c[0] for c in VNNI_KINDS[:6]])
def test_gemm_vnni_asm_has_vdpbf16ps(name, m, k, n, al, epi):
    target = resolve_target("cooperlake").tvm_target()
    sch = GemmVnniDpbf16ps().apply(ops.gemm_vnni(m, k, n, al, epi), target)
    assert "vdpbf16ps" in _lib(sch, target).mod.inspect_source("asm")


def test_gemm_vnni_rule_gating_and_tuning_params():
    f = ops.gemm_vnni(64, 32, 64, "mk", "none")
    for t in ("cascadelake", "znver3", "x86-64-v3"):
        tgt = resolve_target(t).tvm_target()
        assert GemmVnniDpbf16ps().apply(f, tgt) is None
        assert "gemm_vnni_avx512_dpbf16ps" not in [r.name for r in rules_for(tgt)]
    cpx = resolve_target("cooperlake").tvm_target()
    rule = GemmVnniDpbf16ps(params={"64x32x64_mk": {"mi": 4, "nj": 16}})
    assert rule.choose(f, cpx)["mi"] == 4 and rule.choose(f, cpx)["nj"] == 16
    assert GemmVnniDpbf16ps().choose(ops.gemm_vnni(13, 64, 64, "vnni"), cpx)["mi"] == 13
    with pytest.raises(ValueError):
        ops.gemm_vnni(64, 31, 64)  # odd K is padded by the graph, not here
    # a plain fp32 GEMM is not the packed rule's
    assert GemmVnniDpbf16ps(emulate=True).apply(ops.gemm(64, 32, 64), cpx) is None


# ---------------------------------------------------------------- GEMV

GEMVS = [  # m, k, n, a_layout, b_layout, epilogue
    (2048, 1024, 1, "mk", "kn", "bias"),  # small's logit
    (2048, 256, 1, "mk", "kn", "bias"),  # mlperf's logit
    (1024, 2048, 1, "km", "kn", "none"),  # its weight gradient
    (2048, 1, 256, "mk", "nk", "relu_mask"),  # its input gradient (K = 1)
    (37, 48, 1, "mk", "kn", "bias"),
    (48, 37, 1, "km", "kn", "none"),
    (37, 1, 48, "mk", "nk", "relu_mask"),
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("m,k,n,al,bl,epi", GEMVS)
def test_gemv_against_numpy(dtype, m, k, n, al, bl, epi):
    func = ops.gemm(m, k, n, al, epi, b_layout=bl, in_dtype=dtype)
    scheduled, rule = schedule_func(func, HOST, rules_for(HOST))
    assert rule == "gemv_vector"
    rng = np.random.default_rng(m * 3 + n)
    npdt = BF16 if dtype == "bfloat16" else np.float32
    a = _rand(rng, (m, k) if al == "mk" else (k, m), npdt)
    b = _rand(rng, (k, n) if bl == "kn" else (n, k), npdt)
    ins, extra = [a, b], None
    if epi == "bias":
        extra = _rand(rng, (n,), npdt)
    elif epi == "relu_mask":
        extra = _rand(rng, (m, n), npdt)
    if extra is not None:
        ins.append(extra)
    y = tvm.runtime.tensor(np.full((m, n), np.nan, np.float32))
    _lib(scheduled)["main"](*[tvm.runtime.tensor(t) for t in ins], y)
    got = y.numpy()
    assert not np.isnan(got).any()
    want = ref.gemm(a.astype(np.float32), b.astype(np.float32), al, epi,
                    None if extra is None else extra.astype(np.float32), bl)
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


def test_gemv_declines_what_is_not_a_gemv():
    assert GemvVector().apply(ops.gemm(64, 32, 64), HOST) is None


# ---------------------------------------------------------------- the whole step


def test_packed_layouts_train_as_plain_layouts():
    """tiny in bf16, 20 steps: the graph with packed operands (on this host: the vdpbf16ps
    microkernel where the CPU has it, the fallback otherwise) gives the losses and weights of
    the plain one. AMX is left out: its tiles sum in another order (the SDM's two partial sums
    per pair), so it is held to the bf16 training tolerance instead (test_amx.py)."""
    from dlrm_tvm.pipeline import compile_dlrm, load_vm
    from dlrm_tvm.runtime.trainer import Trainer

    from dlrm_tvm.data import SyntheticData

    base = PRESETS["tiny"]
    cfg = base.replace(train=dataclasses.replace(base.train, precision="bf16", learning_rate=0.5))
    ti = without_amx(resolve_target("host"))
    out = {}
    for lay in ("plain", "vnni"):
        res = compile_dlrm(cfg, ti, layouts=lay)
        names = list(res.schedules)
        assert any(n.startswith("gemm_vnni") for n in names) == (lay == "vnni")
        tr = Trainer(cfg, load_vm(res.executable))
        data = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, seed=3)
        out[lay] = ([tr.step(data.next_batch())["loss"] for _ in range(20)], tr.state())
    np.testing.assert_allclose(out["vnni"][0], out["plain"][0], rtol=1e-5)
    for name, a in out["plain"][1].items():
        np.testing.assert_allclose(out["vnni"][1][name], a, rtol=1e-4, atol=1e-6, err_msg=name)
