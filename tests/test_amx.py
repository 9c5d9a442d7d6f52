"""AMX-BF16 (issue 16): the tile block kernel, its GEMM rule, the OS permission, the peak.

* compile-only (any host): every GEMM kind of the bf16 step compiled for sapphirerapids has
  ldtilecfg, tileloadd and tdpbf16ps in its assembly; the whole mlperf bf16 step picks the AMX
  rule for every packed GEMM whose M, N, K are multiples of 32; other targets never do;
* emulated (any host): the same schedule with the block's TIR description, and with the LLVM
  kernel itself on a software model of the tile instructions, against a float64 product of the
  same bf16 values (random data, outputs poisoned, odd multiples of 32); a whole bf16 training
  step on the software model equals the step on this host's own rules;
* an artifact compiled for sapphirerapids is refused on a host without AMX, naming amx_tile and
  amx_bf16; the permission request's success and each refusal give the right answer;
* native (a host with amx_tile and amx_bf16 only; skipped elsewhere with the reason).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno

import numpy as np
import pytest
import tvm
from dlrm_tvm import cli
from dlrm_tvm.graphs import ops
from dlrm_tvm.graphs import reference as ref
from dlrm_tvm.runtime import amx
from dlrm_tvm.schedules import rules_for, schedule_func
from dlrm_tvm.schedules.intrin.x86_amx import amx_intrin, amx_llvm_ir
from dlrm_tvm.schedules.x86.gemm_amx import GemmVnniAmx, amx_row_block, gemm_amx_schedule

from dlrm_tvm.config import PRESETS
from dlrm_tvm.targets import host_cpu_flags, resolve_target

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = ml_dtypes.bfloat16
HOST_HAS_AMX = {"amx_tile", "amx_bf16"} <= host_cpu_flags()
HOST = resolve_target("host").tvm_target()
SPR = resolve_target("sapphirerapids").tvm_target()
native = pytest.mark.skipif(not HOST_HAS_AMX, reason="this CPU has no amx_tile/amx_bf16 "
                            "(run tools/device_amx.sh on an AMX Xeon)")

# name, M, K, N, a_layout, epilogue, out dtype: the kinds of the bf16 step
KINDS = [
    ("fwd", 2048, 512, 256, "mk", "bias_relu", "bfloat16"),
    ("fwd-f32", 2048, 1024, 512, "mk", "bias_relu", "float32"),
    ("dx", 2048, 256, 512, "mk", "relu_mask", "bfloat16"),
    ("dx-none", 2048, 1024, 480, "mk", "none", "float32"),
    ("dw", 512, 2048, 256, "vnni", "none", "float32"),
    ("fwd-bias", 2048, 3456, 512, "mk", "bias", "float32"),  # a DCN cross factor
]
# small odd multiples of 32 (and one of each tiling corner): emulated runs
EMULATED = [
    ("fwd-odd", 96, 160, 224, "mk", "bias_relu", "float32"),
    ("fwd-bf16out", 160, 64, 96, "mk", "bias_relu", "bfloat16"),
    ("dx-mask", 224, 96, 64, "mk", "relu_mask", "float32"),
    ("dx-none", 64, 32, 32, "mk", "none", "float32"),  # one K step, one block
    ("bias", 32, 288, 160, "mk", "bias", "float32"),
    ("dw", 96, 128, 160, "vnni", "none", "float32"),
    ("dw-1blk", 32, 32, 32, "vnni", "none", "float32"),
    ("rowblocks", 1024, 64, 32, "mk", "none", "float32"),  # several 32-row blocks per task
]


def _build(sch, target):
    f = sch.mod["main"] if hasattr(sch, "mod") else sch
    return tvm.tirx.build(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}),
                          target=target)


def _check(lib, m, k, n, al, epi, out_dtype, seed=0):
    """Run ``lib`` on random bf16 operands (output poisoned with NaN) and return the relative
    Frobenius error against the float64 product of the same bf16 values (+ epilogue)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k) if al == "mk" else (k, m)).astype(BF16)
    a = x if al == "mk" else ref.pack_vnni(x)
    bp = ref.pack_vnni(rng.standard_normal((k, n)).astype(BF16))
    ins, extra = [a, bp], None
    if epi in ("bias", "bias_relu"):
        extra = rng.standard_normal(n).astype(BF16)
    elif epi == "relu_mask":
        extra = rng.standard_normal((m, n)).astype(BF16)
    if extra is not None:
        ins.append(extra)
    poison = np.full((m, n), np.nan, np.float32)
    y = tvm.runtime.tensor(poison if out_dtype == "float32" else poison.astype(BF16))
    lib["main"](*[tvm.runtime.tensor(t) for t in ins], y)
    got = y.numpy().astype(np.float32)
    assert not np.isnan(got).any(), "output not fully written"
    want = ref.gemm_vnni(a.astype(np.float64), bp.astype(np.float64), m, k, n, al, epi,
                         None if extra is None else extra.astype(np.float64))
    if out_dtype == "bfloat16":  # the oracle rounded as the kernel's output is
        want = want.astype(np.float32).astype(BF16).astype(np.float64)
    return np.linalg.norm(got - want) / max(1e-30, np.linalg.norm(want))


def _tol(out_dtype):
    return 1e-5 if out_dtype == "float32" else 2.0 ** -8


# ---------------------------------------------------------------- compile-only

@pytest.mark.parametrize("name,m,k,n,al,epi,odt", KINDS, ids=[c[0] for c in KINDS])
def test_sapphirerapids_assembly_has_tile_instructions(name, m, k, n, al, epi, odt):
    func = ops.gemm_vnni(m, k, n, al, epi, odt)
    sch, rule = schedule_func(func, SPR, rules_for(SPR))
    assert rule == "gemm_vnni_amx_bf16"
    asm = _build(sch, SPR).inspect_source("s")
    for ins in ("ldtilecfg", "tileloadd", "tdpbf16ps", "tilestored"):
        assert ins in asm, f"{ins} missing from the {name} kernel"


def test_mlperf_bf16_step_uses_amx_where_shapes_allow():
    from dlrm_tvm.pipeline import build_step
    from dlrm_tvm.schedules import schedule_module
    from dlrm_tvm.schedules.base import attr, op_of

    cfg = PRESETS["mlperf"]
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, precision="bf16"))
    for name in ("sapphirerapids", "emeraldrapids", "graniterapids"):
        tgt = resolve_target(name).tvm_target()
        mod = build_step(cfg, tgt)
        _, chosen = schedule_module(mod, tgt)
        gemms = {gv.name_hint: f for gv, f in mod.functions_items()
                 if isinstance(f, tvm.tirx.PrimFunc) and op_of(f) == "gemm_vnni"}
        on_amx = {k for k in gemms if chosen[k]["rule"] == "gemm_vnni_amx_bf16"}
        fits = {k for k, f in gemms.items()
                if all(attr(f, d) % 32 == 0 for d in ("m", "k", "n"))}
        assert on_amx == fits and len(on_amx) >= 15, (name, sorted(gemms.keys() - on_amx))
        # the rest (the 13 dense features' layer) stays on vdpbf16ps
        assert all(chosen[k]["rule"] == "gemm_vnni_avx512_dpbf16ps" for k in gemms.keys() - fits)


@pytest.mark.parametrize("name", ["cooperlake", "znver4", "icelake-server", "x86-64-v3"])
def test_targets_without_amx_never_pick_it(name):
    tgt = resolve_target(name).tvm_target()
    assert not GemmVnniAmx().applies(tgt)
    assert GemmVnniAmx().apply(ops.gemm_vnni(64, 64, 64), tgt) is None
    assert all(r.name != "gemm_vnni_amx_bf16" for r in rules_for(tgt))


@pytest.mark.parametrize("m,k,n", [(48, 64, 64), (64, 48, 64), (64, 64, 48), (13, 2048, 512),
                                   (2048, 16, 512)])
def test_shapes_off_the_32_grid_fall_to_vdpbf16ps(m, k, n):
    func = ops.gemm_vnni(m, k, n, "vnni" if m == 13 else "mk")
    assert GemmVnniAmx().apply(func, SPR) is None
    _, rule = schedule_func(func, SPR, rules_for(SPR))
    assert rule == "gemm_vnni_avx512_dpbf16ps"


def test_amx_intrinsic_names_and_bad_k():
    assert amx_intrin(64) != amx_intrin(64, "desc") != amx_intrin(64, "sw")
    with pytest.raises(ValueError, match="multiple of 32"):
        amx_intrin(48)
    with pytest.raises(ValueError, match="variant"):
        amx_intrin(64, "avx")
    # the tile configuration: palette 1, eight tiles of 16 rows x 64 bytes
    assert 'c"\\01\\00' in amx_llvm_ir() and "ldtilecfg" in amx_llvm_ir()
    assert "llvm.x86" not in amx_llvm_ir(sw=True)


def test_row_block_keeps_enough_tasks():
    assert amx_row_block(2048, 1024) == 4
    assert amx_row_block(2048, 32) == 1  # 64 blocks x 1 panel: no room for more per task
    assert amx_row_block(96, 64) == 3 or amx_row_block(96, 64) == 1


def test_amx_peak_kernel_compiles_for_sapphirerapids():
    from dlrm_tvm.bench.peaks import _amx_peak_ir, amx_peak_gflops, amx_peak_kernel

    assert "tdpbf16ps" in _amx_peak_ir()
    amx_peak_kernel(SPR, 2)  # compiles on any host
    with pytest.raises(ValueError, match="amx"):
        amx_peak_kernel(resolve_target("cooperlake").tvm_target(), 2)
    if not HOST_HAS_AMX:
        assert amx_peak_gflops(SPR, 2) is None


# ---------------------------------------------------------------- emulated

@pytest.mark.parametrize("variant", ["desc", "sw"])
@pytest.mark.parametrize("name,m,k,n,al,epi,odt", EMULATED, ids=[c[0] for c in EMULATED])
def test_amx_schedule_emulated(variant, name, m, k, n, al, epi, odt):
    sch = gemm_amx_schedule(ops.gemm_vnni(m, k, n, al, epi, odt), variant)
    err = _check(_build(sch, HOST), m, k, n, al, epi, odt, seed=m + k + n)
    assert err <= _tol(odt), f"{name} ({variant}): relative error {err:.2e}"


@pytest.mark.parametrize("preset", ["mlperf", "dcnv2"])
def test_every_amx_gemm_of_the_step_on_the_tile_model(preset):
    """Every distinct GEMM the AMX rule takes in the preset's bf16 step for sapphirerapids (its
    real shapes, epilogues and output types: K up to 3456, the weight gradients' repack over
    a 2048 batch), run on the software tile model against float64."""
    from dlrm_tvm.pipeline import build_step
    from dlrm_tvm.schedules.base import attr, op_of

    cfg = PRESETS[preset]
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, precision="bf16"))
    mod = build_step(cfg, SPR)
    seen = set()
    for gv, func in sorted(mod.functions_items(), key=lambda kv: kv[0].name_hint):
        if not isinstance(func, tvm.tirx.PrimFunc) or op_of(func) != "gemm_vnni":
            continue
        if GemmVnniAmx().apply(func, SPR) is None:
            continue
        dims = tuple(attr(func, a) for a in ("m", "k", "n", "a_layout", "epilogue",
                                              "out_dtype"))
        if dims in seen:
            continue
        seen.add(dims)
        lib = _build(gemm_amx_schedule(func, "sw"), HOST)
        err = _check(lib, *dims, seed=len(seen))
        assert err <= _tol(dims[-1]), f"{gv.name_hint}: relative error {err:.2e}"
    assert len(seen) >= (12 if preset == "mlperf" else 8), seen


def test_amx_rule_variants_apply_on_any_target():
    func = ops.gemm_vnni(64, 64, 64)
    assert GemmVnniAmx("sw").apply(func, HOST) is not None
    assert GemmVnniAmx("desc").apply(func, HOST) is not None


def test_bf16_step_on_the_tile_model_trains_as_this_hosts_rules(monkeypatch):
    """dcnv2-tiny widened to 32-multiples (most GEMMs fit a block), bf16, 8 steps: the step
    with every fitting GEMM on the AMX kernel's software tile model gives the losses and
    weights of the step on this host's own rules."""
    from dlrm_tvm import schedules
    from dlrm_tvm.data import SyntheticData
    from dlrm_tvm.pipeline import compile_dlrm, load_vm
    from dlrm_tvm.runtime.trainer import Trainer

    sw = GemmVnniAmx("sw")
    sw.name = "gemm_vnni_amx_bf16_sw"
    monkeypatch.setitem(schedules.ALL_RULES, sw.name, sw)
    base = PRESETS["dcnv2-tiny"]
    model = dataclasses.replace(base.model, embedding_dim=32, mlp_bot=(13, 64, 32))
    cfg = base.replace(model=model, train=dataclasses.replace(base.train, precision="bf16"))
    ti = resolve_target("host")
    out = {}
    for key, prefer in (("host", ()), ("amx-sw", (sw.name,))):
        res = compile_dlrm(cfg, ti, prefer=prefer, layouts="vnni")
        rules = [v["rule"] for v in res.schedules.values() if v["op"] == "gemm_vnni"]
        if key == "amx-sw":
            assert rules.count(sw.name) >= 8, rules
        tr = Trainer(cfg, load_vm(res.executable))
        data = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, seed=5)
        out[key] = ([tr.step(data.next_batch())["loss"] for _ in range(8)], tr.state())
    np.testing.assert_allclose(out["amx-sw"][0], out["host"][0], rtol=1e-5)
    for name, a in out["host"][1].items():
        np.testing.assert_allclose(out["amx-sw"][1][name], a, rtol=1e-4, atol=1e-6,
                                   err_msg=name)


# ---------------------------------------------------------------- artifact and permission

@pytest.mark.skipif(HOST_HAS_AMX, reason="this host has AMX")
def test_amx_artifact_refused_here_naming_the_features(tmp_path, capsys):
    out = tmp_path / "spr"
    assert cli.main(["compile", "--config", "tiny", "--precision", "bf16", "--target",
                     "sapphirerapids", "--out", str(out)]) == 0
    assert cli.main(["train", "--artifact", str(out), "--steps", "1", "--out",
                     str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "amx_tile" in err and "amx_bf16" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "summary.json").exists()


class _FakeSyscall:
    """Stands in for libc's syscall(2): answers the request with ``req`` (0 or an errno) and
    the query with ``mask``."""

    def __init__(self, req=0, mask=1 << amx.XFEATURE_XTILEDATA):
        self.req, self.mask, self.calls = req, mask, []

    def __call__(self, nr, code, arg):
        self.calls.append((nr.value, code.value))
        if code.value == amx.ARCH_REQ_XCOMP_PERM:
            assert arg.value == amx.XFEATURE_XTILEDATA
            if self.req:
                ctypes.set_errno(self.req)
                return -1
            return 0
        ctypes.cast(arg, ctypes.POINTER(ctypes.c_uint64))[0] = self.mask
        return 0


def test_permission_granted():
    fake = _FakeSyscall()
    amx.request_amx(fake)
    assert fake.calls == [(amx.SYS_ARCH_PRCTL, amx.ARCH_REQ_XCOMP_PERM),
                          (amx.SYS_ARCH_PRCTL, amx.ARCH_GET_XCOMP_PERM)]


@pytest.mark.parametrize("err,says", [(errno.EOPNOTSUPP, "has no AMX"),
                                      (errno.EINVAL, "older than 5.16"),
                                      (errno.EPERM, "seccomp")])
def test_permission_refused_says_why(err, says):
    with pytest.raises(amx.AmxUnavailable, match=says) as e:
        amx.request_amx(_FakeSyscall(req=err))
    assert "--target cooperlake" in str(e.value) and e.value.exit_code == 2


def test_permission_without_the_tile_bit_is_refused():
    with pytest.raises(amx.AmxUnavailable, match="does not report"):
        amx.request_amx(_FakeSyscall(mask=0))


@pytest.mark.skipif(HOST_HAS_AMX, reason="this host has AMX")
def test_real_request_refused_on_this_host():
    with pytest.raises(amx.AmxUnavailable, match="AMX"):
        amx.request_amx()
    from dlrm_tvm.pipeline import load_vm

    with pytest.raises(amx.AmxUnavailable):
        load_vm(None, needs_amx=True)  # refused before the VM is made


# ---------------------------------------------------------------- native

@native
def test_real_request_granted():
    amx.request_amx()


@native
@pytest.mark.parametrize("name,m,k,n,al,epi,odt", KINDS + EMULATED,
                         ids=[c[0] for c in KINDS + EMULATED])
def test_amx_native_against_float64(name, m, k, n, al, epi, odt):
    amx.request_amx()
    tgt = resolve_target("host").tvm_target()
    sch = gemm_amx_schedule(ops.gemm_vnni(m, k, n, al, epi, odt))
    err = _check(_build(sch, tgt), m, k, n, al, epi, odt, seed=m + n)
    assert err <= _tol(odt), f"{name}: relative error {err:.2e}"


@native
def test_amx_peak_measured():
    from dlrm_tvm.bench.peaks import amx_peak_gflops, bf16_peak_gflops

    tgt = resolve_target("host").tvm_target()
    amx_gf = amx_peak_gflops(tgt, 1, iters=200_000)
    assert amx_gf and amx_gf > bf16_peak_gflops(tgt, 1, iters=2_000_000)


# ---------------------------------------------------------------- reports

def _sweep(amx_peak=4000.0):
    rows = [{"kernel": "gemm_vnni_fwd_2048x512x256_bias_relu", "shape": [2048, 512, 256],
             "rule": "gemm_vnni_amx_bf16", "status": "ok", "gflops": 3000.0,
             "frac_peak": 3000.0 / (amx_peak or 800.0), "torch_fp32_gflops": 900.0,
             "torch_bf16_gflops": 2500.0, "x_best_torch": 1.2},
            {"kernel": "gemm_vnni_fwd_2048x16x512_bias_relu", "shape": [2048, 16, 512],
             "rule": "gemm_vnni_avx512_dpbf16ps", "status": "ok", "gflops": 400.0,
             "frac_peak": 0.5, "torch_fp32_gflops": 300.0, "torch_bf16_gflops": 350.0,
             "x_best_torch": 1.14}]
    return {"config": "mlperf", "precision": "bf16", "target": "host", "threads": 16,
            "fp32_peak_gflops": 400.0, "bf16_peak_gflops": 800.0,
            "amx_bf16_peak_gflops": amx_peak, "copy_gbs": 100.0, "rows": rows, "packs": []}


def test_kernels_bench_table_names_the_amx_peak():
    from dlrm_tvm.kernels import format_sweep

    text = format_sweep(_sweep())
    assert "AMX peak 4000" in text and "gemm_vnni_amx_bf16" in text
    assert "AMX" not in format_sweep(_sweep(None)).splitlines()[0]


def test_amx_verdict_reads_the_device_outputs(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "amx_verdict.py"
    (tmp_path / "pytest-amx.log").write_text("61 passed in 30.0s\n")
    (tmp_path / "gemms-mlperf-amx.json").write_text(json.dumps(_sweep()))
    bench = {"threads": 16, "rows": [{"name": "dlrm-tvm bf16", "ms_per_step": 40.0},
                                     {"name": "torch.compile bf16", "ms_per_step": 46.8}]}
    (tmp_path / "bench-mlperf-amx.json").write_text(json.dumps(bench))
    run = subprocess.run([sys.executable, str(tool), str(tmp_path)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout
    assert "PASS  mlperf bf16 at 16 threads ahead" in run.stdout
    assert "1 of 1" in run.stdout and "1.20x torch bf16" in run.stdout
    bench["rows"][0]["ms_per_step"] = 50.0
    (tmp_path / "bench-mlperf-amx.json").write_text(json.dumps(bench))
    run = subprocess.run([sys.executable, str(tool), str(tmp_path)], capture_output=True,
                         text=True)
    assert run.returncode == 1 and "MISS  mlperf bf16" in run.stdout


@pytest.mark.skipif("avx512_bf16" not in host_cpu_flags(), reason="kernels tune times the "
                    "vdpbf16ps kernels: this CPU has no avx512_bf16")
def test_kernels_tune_leaves_the_amx_gemms_alone(monkeypatch):
    """On an AMX target the GEMMs the tile rule takes are not tuned (it has no register tile);
    the rest are. (AMX pretended on this host: only the selection is exercised.)"""
    from dlrm_tvm.tuning import tune_gemms

    monkeypatch.setattr(GemmVnniAmx, "applies", lambda self, target: True)
    base = PRESETS["dcnv2-tiny"]
    model = dataclasses.replace(base.model, embedding_dim=32, mlp_bot=(13, 64, 32))
    cfg = base.replace(model=model, train=dataclasses.replace(base.train, precision="bf16"))
    lines = []
    rec = tune_gemms(cfg, budget_s=1.0, reps=1, log=lines.append)
    assert any("run on AMX tiles" in x for x in lines), lines
    tuned = [v["kernel"] for v in rec["kernels"].values()]
    assert tuned and all(not (all(int(d) % 32 == 0 for d in k.split("_")[3].split("x")))
                         for k in tuned), tuned
