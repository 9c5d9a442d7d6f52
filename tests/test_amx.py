"""AMX-BF16: the tile block kernel, its GEMM rule, the OS permission, the peak.

* compile-only (any host): every GEMM kind of the bf16 step compiled for sapphirerapids has
  ldtilecfg, tileloadd and tdpbf16ps in its assembly; the whole mlperf bf16 step picks the AMX
  rule for every packed GEMM whose M, N, K are multiples of 32; other targets never do;
* emulated (any host): the same schedule with the block's TIR description, and with the LLVM
  kernel itself on a software model of the tile instructions, against a float64 product of the
  same bf16 values (random data, outputs poisoned, odd multiples of 32); a whole bf16 training
  step on the software model equals the step on this host's own rules;
* an artifact compiled for sapphirerapids is refused on a host without AMX, naming amx_tile and
  amx_bf16 (the permission request itself, and tools/amx_verdict.py: test_amx_permission.py);
* on the tile unit: natively where the CPU has AMX, through the software executor
  (runtime/amx_emulator.py) elsewhere: every GEMM kind against float64, the peak loop, and a
  bf16 step compiled for sapphirerapids, 20 steps, against the host's vdpbf16ps step.
"""

from __future__ import annotations

import dataclasses
import os

import ml_dtypes
import numpy as np
import pytest
import tvm
from dlrm_tvm import cli
from dlrm_tvm.graphs import ops
from dlrm_tvm.graphs import reference as ref
from dlrm_tvm.runtime import amx, amx_emulator
from dlrm_tvm.schedules import rules_for, schedule_func
from dlrm_tvm.schedules.intrin.x86_amx import amx_intrin, amx_llvm_ir
from dlrm_tvm.schedules.x86.gemm_amx import GemmVnniAmx, amx_row_block, gemm_amx_schedule

from dlrm_tvm.config import PRESETS
from dlrm_tvm.targets import emulated_target, host_cpu_flags, resolve_target

BF16 = ml_dtypes.bfloat16
HOST_HAS_AMX = {"amx_tile", "amx_bf16"} <= host_cpu_flags()
HOST = resolve_target("host").tvm_target()
SPR = resolve_target("sapphirerapids").tvm_target()

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
    # off the 32 grid: padded onto tiles
    ("pad-mkn", 48, 48, 48, "mk", "bias_relu", "float32"),
    ("pad-k-bf16out", 64, 98, 96, "mk", "bias", "bfloat16"),
    ("pad-n-mask", 96, 64, 80, "mk", "relu_mask", "bfloat16"),
    ("pad-m", 33, 32, 32, "mk", "none", "float32"),
    ("pad-dw", 40, 66, 48, "vnni", "none", "float32"),
]


def _build(sch, target):
    f = sch.mod["main"] if hasattr(sch, "mod") else sch
    return tvm.tirx.build(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}),
                          target=target)


def _check(lib, m, k, n, al, epi, out_dtype, seed=0, positive=False):
    """Run ``lib`` on random bf16 operands (output poisoned with NaN) and return the relative
    Frobenius error against the float64 product of the same bf16 values (+ epilogue).
    ``positive``: A, B and the bias drawn positive (every output well-conditioned), and bf16
    outputs then checked bit for bit (``_assert_bf16_bits``)."""
    rng = np.random.default_rng(seed)

    def draw(shape):
        v = rng.standard_normal(shape)
        return (np.abs(v) if positive else v).astype(BF16)
    x = draw((m, k) if al == "mk" else (k, m))
    a = x if al == "mk" else ref.pack_vnni(x)
    bp = ref.pack_vnni(draw((k, n)))
    ins, extra = [a, bp], None
    if epi in ("bias", "bias_relu"):
        extra = draw(n)
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
    if out_dtype == "bfloat16" and positive:
        mag = ref.gemm_vnni(np.abs(a.astype(np.float64)), np.abs(bp.astype(np.float64)), m, k, n,
                            al, "bias" if epi in ("bias", "bias_relu") else "none",
                            None if extra is None or epi == "relu_mask"
                            else np.abs(extra.astype(np.float64)))
        _assert_bf16_bits(y.numpy(), want, mag)
        want = want.astype(np.float32).astype(BF16).astype(np.float64)
    return np.linalg.norm(got - want) / max(1e-30, np.linalg.norm(want))


def _assert_bf16_bits(got_bf16, want64, mag64, cond=1.001):
    """bf16 outputs bit for bit against the round-to-nearest-even bits of the float64 result,
    on the well-conditioned elements (sum |a b| + |bias| at most ``cond`` times |result|: all
    nonzero ones for positive operands, and at least half must be; there an fp32 accumulation
    is within K fp32 ulps, so rounding it may differ from rounding the exact value only next
    to a tie): at most 1 ulp, and a differing ulp on at most 0.5% of them. Zeros the mask made
    must be exact zeros."""
    got = np.ascontiguousarray(got_bf16).view(np.uint16).astype(np.int32)
    want = ref.bf16_rne_bits(want64).astype(np.int32)

    def key(b):  # distance in ulps on the sign-magnitude order (+0 and -0 are 0 apart)
        return np.where(b & 0x8000, -(b & 0x7FFF), b)
    zero = want64 == 0
    assert (key(got[zero]) == 0).all(), "a zero output (ReLU, mask) is not zero"
    ok = (mag64 <= cond * np.abs(want64)) & ~zero
    assert ok.mean() >= 0.5, f"only {ok.mean():.0%} of the outputs are well-conditioned"
    ulps = np.abs(key(got) - key(want))[ok]
    assert ulps.max() <= 1, f"bf16 output {ulps.max()} ulps from the rounded float64 result"
    frac = float((ulps > 0).mean())
    assert frac <= 0.005, f"{frac:.2%} of the bf16 outputs differ from the rounded float64 by 1 ulp"


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


# The configuration the SDM's LDTILECFG wants for our block, written out here (not imported
# from the kernel, so a wrong kernel constant fails): palette 1, start_row 0, 14 reserved zero
# bytes, colsb[0..7] = 64 bytes (u16), colsb[8..15] = 0, rows[0..7] = 16, rows[8..15] = 0.
EXPECTED_CFG = (bytes([1, 0]) + bytes(14) + b"\x40\x00" * 8 + bytes(16) + bytes([16]) * 8
                + bytes(8))
# tdpbf16ps dst, A, B (Intel order) of the 2 x 2 block: C00 += A0 B0, C01 += A0 B1, ...
EXPECTED_DOTS = {(0, 4, 6), (1, 4, 7), (2, 5, 6), (3, 5, 7)}
_GPR32 = {"rax": "eax", "rbx": "ebx", "rcx": "ecx", "rdx": "edx", "rsi": "esi", "rdi": "edi",
          "rbp": "ebp", "rsp": "esp", **{f"r{i}": f"r{i}d" for i in range(8, 16)}}


def _asm_string_bytes(body: str) -> bytes:
    """The bytes of a GNU assembler string literal (octal and C escapes)."""
    out, i = bytearray(), 0
    simple = {"n": 10, "t": 9, "r": 13, "b": 8, "f": 12, '"': 34, "\\": 92}
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ord(ch))
            i += 1
        elif body[i + 1] in "01234567":
            j = i + 1
            while j < min(i + 4, len(body)) and body[j] in "01234567":
                j += 1
            out.append(int(body[i + 1:j], 8) & 0xFF)
            i = j
        else:
            out.append(simple[body[i + 1]])
            i += 2
    return bytes(out)


def amx_asm_facts(asm: str) -> dict:
    """What an AMX kernel's assembly (AT&T syntax) says: the bytes of the configuration that
    ``ldtilecfg`` loads, every ``tdpbf16ps`` as (dst, A, B), every ``tileloadd``/``tilestored``
    as (tile, base, index, displacement), and the immediates moved into each register."""
    import re

    cfg_label = re.search(r"ldtilecfg\s+(\S+?)\(%rip\)", asm)
    assert cfg_label, "no RIP-relative ldtilecfg"
    label = cfg_label.group(1)
    data = asm[asm.index(f"\n{label}:") + len(label) + 2:]
    cfg = bytearray()
    for line in data.splitlines():
        line = line.strip()
        if m := re.match(r'\.(asciz|ascii|string)\s+"(.*)"$', line):
            cfg += _asm_string_bytes(m.group(2)) + (b"\0" if m.group(1) != "ascii" else b"")
        elif m := re.match(r"\.byte\s+(.*)$", line):
            cfg += bytes(int(v, 0) & 0xFF for v in m.group(1).split(","))
        elif m := re.match(r"\.(zero|space)\s+(\d+)$", line):
            cfg += bytes(int(m.group(2)))
        elif line.startswith(".size") or (line.endswith(":") and cfg):
            break
        if len(cfg) >= 64:
            break
    mem = r"(-?\d*)\(%(\w+),%(\w+)(?:,(\d))?\)"
    dots = [tuple(int(t) for t in m.groups()[::-1]) for m in
            re.finditer(r"tdpbf16ps\s+%tmm(\d), %tmm(\d), %tmm(\d)", asm)]
    loads = [(int(m.group(5)), m.group(2), m.group(3), int(m.group(1) or 0)) for m in
             re.finditer(r"tileloadd\s+" + mem + r", %tmm(\d)", asm)]
    stores = [(int(m.group(1)), m.group(3), m.group(4), int(m.group(2) or 0)) for m in
              re.finditer(r"tilestored\s+%tmm(\d), " + mem, asm)]
    imms: dict[str, set[int]] = {}
    for m in re.finditer(r"mov[lq]\s+\$(-?\d+), %(\w+)", asm):
        imms.setdefault(m.group(2), set()).add(int(m.group(1)))
    return {"cfg": bytes(cfg[:64]), "dots": dots, "loads": loads, "stores": stores,
            "imms": imms}


def _holds(facts, reg, value):
    return value in facts["imms"].get(reg, set()) | facts["imms"].get(_GPR32.get(reg, reg), set())


@pytest.mark.parametrize("name,m,k,n,al,epi,odt", KINDS, ids=[c[0] for c in KINDS])
def test_sapphirerapids_assembly_configures_and_multiplies_the_right_tiles(name, m, k, n, al,
                                                                          epi, odt):
    """The emitted assembly, parsed: the configuration bytes ldtilecfg loads are the SDM's
    layout for 8 tiles of 16 rows x 64 bytes; every tdpbf16ps is one of the block's four
    (dst, A, B) triples, each used K/32 times; B tiles (tmm6, tmm7) are read at the packed
    panel's 64-byte stride and the accumulators (tmm0-3) loaded and stored at the 32 x 32 fp32
    tile's 128 bytes (a register moved those immediates; LLVM reuses registers, so A's
    stride, a runtime value, is left to the numeric tests)."""
    func = ops.gemm_vnni(m, k, n, al, epi, odt)
    sch, _ = schedule_func(func, SPR, rules_for(SPR))
    facts = amx_asm_facts(_build(sch, SPR).inspect_source("s"))
    assert facts["cfg"] == EXPECTED_CFG, f"tile configuration {facts['cfg'].hex()}"
    assert set(facts["dots"]) == EXPECTED_DOTS, facts["dots"]
    per = {t: facts["dots"].count(t) for t in EXPECTED_DOTS}
    assert len(set(per.values())) == 1, per
    by_tile: dict[int, set[str]] = {}
    for tile, _base, index, _disp in facts["loads"]:
        by_tile.setdefault(tile, set()).add(index)
    assert set(by_tile) == set(range(8)), by_tile
    b_idx = by_tile[6] | by_tile[7]
    for reg in b_idx:
        assert _holds(facts, reg, 64), f"B tiles read at stride %{reg}, which is not 64"
    c_idx = set().union(*(by_tile[t] for t in range(4)))
    c_idx |= {index for _t, _b, index, _d in facts["stores"]}
    assert {t for t, *_ in facts["stores"]} == {0, 1, 2, 3}
    for reg in c_idx:
        assert _holds(facts, reg, 128), f"accumulators at stride %{reg}, which is not 128"


def _mutant_ir(kind):
    from dlrm_tvm.schedules.intrin import x86_amx

    cfg = bytearray(EXPECTED_CFG)
    if kind == "rows8":
        cfg[48:56] = bytes([8]) * 8
    elif kind == "colsb32":
        cfg[16:32] = b"\x20\x00" * 8
    ir = x86_amx.amx_llvm_ir()
    ir = ir.replace(x86_amx._cfg_literal(), "".join(f"\\{b:02X}" for b in cfg))
    if kind == "ab-swapped":
        for a, b in (("4", "6"), ("4", "7"), ("5", "6"), ("5", "7")):
            ir = ir.replace(f"i8 {a}, i8 {b})", f"i8 {b}, i8 {a})")
    assert ir != x86_amx.amx_llvm_ir()
    return ir


@pytest.mark.parametrize("kind", ["rows8", "colsb32", "ab-swapped"])
def test_the_assembly_check_fails_on_broken_tile_code(kind, monkeypatch):
    """The check above can fail: the kernel with every tile's rows 8, with colsb 32, or with A
    and B swapped in the real tdpbf16ps is rejected."""
    from dlrm_tvm.schedules.x86 import gemm_amx

    monkeypatch.setattr(gemm_amx, "amx_llvm_ir", lambda sw=False: _mutant_ir(kind))
    with pytest.raises(AssertionError):
        test_sapphirerapids_assembly_configures_and_multiplies_the_right_tiles(*KINDS[0])


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
                if all(attr(f, d) >= 32 for d in ("m", "k", "n"))}
        assert on_amx == fits and len(on_amx) >= 15, (name, sorted(gemms.keys() - on_amx))
        # the rest (the 13 dense features' layer: K = 16 forward, M = 13 weight gradient)
        # stays on vdpbf16ps
        assert all(chosen[k]["rule"] == "gemm_vnni_avx512_dpbf16ps" for k in gemms.keys() - fits)


@pytest.mark.parametrize("name", ["cooperlake", "znver4", "icelake-server", "x86-64-v3"])
def test_targets_without_amx_never_pick_it(name):
    tgt = resolve_target(name).tvm_target()
    assert not GemmVnniAmx().applies(tgt)
    assert GemmVnniAmx().apply(ops.gemm_vnni(64, 64, 64), tgt) is None
    assert all(r.name != "gemm_vnni_amx_bf16" for r in rules_for(tgt))


@pytest.mark.parametrize("m,k,n", [(16, 64, 64), (64, 16, 64), (64, 64, 16), (13, 2048, 512),
                                   (2048, 16, 512)])
def test_shapes_below_one_block_fall_to_vdpbf16ps(m, k, n):
    func = ops.gemm_vnni(m, k, n, "vnni" if m == 13 else "mk")
    assert GemmVnniAmx().apply(func, SPR) is None
    _, rule = schedule_func(func, SPR, rules_for(SPR))
    assert rule == "gemm_vnni_avx512_dpbf16ps"


@pytest.mark.parametrize("m,k,n", [(48, 64, 64), (64, 48, 64), (64, 64, 48), (2048, 382, 1024),
                                   (33, 2050, 80)])
def test_shapes_off_the_32_grid_are_padded_onto_tiles(m, k, n):
    """At least one block in every dim, off the grid: the AMX rule takes it, padded (A copied
    into a zero-padded scratch, B where K or N is off the grid), and its assembly is the
    block kernel's."""
    func = ops.gemm_vnni(m, k, n, "vnni" if m == 33 else "mk")
    sch, rule = schedule_func(func, SPR, rules_for(SPR))
    assert rule == "gemm_vnni_amx_bf16"
    assert int(sch.attrs["dlrm.amx_padded"]) == 1
    text = sch.script()
    for blk in ("A_pad", "Y"):
        assert f'sblock("{blk}")' in text
    assert ('sblock("B_pad")' in text) == (k % 32 != 0 or n % 32 != 0)
    facts = amx_asm_facts(_build(sch, SPR).inspect_source("s"))
    assert facts["cfg"] == EXPECTED_CFG and set(facts["dots"]) == EXPECTED_DOTS


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
    lib = _build(sch, HOST)
    err = _check(lib, m, k, n, al, epi, odt, seed=m + k + n)
    assert err <= _tol(odt), f"{name} ({variant}): relative error {err:.2e}"
    if odt == "bfloat16":  # bit for bit, on positive (well-conditioned) operands
        _check(lib, m, k, n, al, epi, odt, seed=m + k + n + 1, positive=True)


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


# ---------------------------------------------------------------- the tile unit
# Natively where the CPU has AMX and the permission; through the software executor elsewhere
# (runtime/amx_emulator.py, installed in this process; the kernels compiled for the host with
# AMX counted as present). DLRM_TVM_REQUIRE_NATIVE=amx makes the emulated form a failure.


@pytest.fixture
def tile_unit():
    """("native" | "emulated", the tvm target the kernels compile for)."""
    forced = os.environ.get("DLRM_TVM_TILE_UNIT") == "emulated"  # (conftest.py)
    if HOST_HAS_AMX and not forced and amx.host_amx_refusal() is None:
        amx.request_amx()
        return "native", resolve_target("host").tvm_target()
    if "amx" in os.environ.get("DLRM_TVM_REQUIRE_NATIVE", "").split(","):
        pytest.fail("this CPU has no amx_tile/amx_bf16 (or no permission): "
                    "DLRM_TVM_REQUIRE_NATIVE=amx wants the tile unit native, not emulated")
    amx_emulator.install()  # after pytest's faulthandler: ours sees a SIGILL first
    return "emulated", emulated_target("host").tvm_target()


@pytest.mark.parametrize("name,m,k,n,al,epi,odt", KINDS + EMULATED,
                         ids=[c[0] for c in KINDS + EMULATED])
def test_amx_tile_unit_against_float64(tile_unit, name, m, k, n, al, epi, odt):
    """Every GEMM kind and shape on real tile instructions (the CPU's, or the executor's), to
    1e-5 of float64 (fp32 output) or one bf16 step; bf16 outputs bit for bit on positive
    operands. The big step kinds are cut to a 64-row batch when emulated (a trap per tile
    instruction)."""
    mode, tgt = tile_unit
    if mode == "emulated" and m * k * n > 2**22:
        m = 64 if al == "mk" else m
        k = 64 if al == "vnni" else k
    before = amx_emulator.counts()["tdpbf16ps"] if mode == "emulated" else 0
    sch = gemm_amx_schedule(ops.gemm_vnni(m, k, n, al, epi, odt))
    lib = _build(sch, tgt)
    err = _check(lib, m, k, n, al, epi, odt, seed=m + n)
    assert err <= _tol(odt), f"{name} ({mode}): relative error {err:.2e}"
    if odt == "bfloat16":
        _check(lib, m, k, n, al, epi, odt, seed=m + n + 1, positive=True)
    if mode == "emulated":  # the executor ran every tile product: 4 per 32 x 32 x 32 step
        per_call = 4 * -(-m // 32) * -(-n // 32) * -(-k // 32)
        calls = 2 if odt == "bfloat16" else 1
        assert amx_emulator.counts()["tdpbf16ps"] - before == calls * per_call


def test_amx_peak_on_the_tile_unit(tile_unit):
    """Natively: the tile loop's rate is above the vdpbf16ps loop's (where the CPU has one;
    else above the fp32 FMA loop's). Emulated: the loop runs, 4 tdpbf16ps per iteration."""
    from dlrm_tvm.bench.peaks import (
        _run_loop,
        amx_peak_gflops,
        amx_peak_kernel,
        bf16_peak_gflops,
        fp32_peak_gflops,
    )

    mode, tgt = tile_unit
    if mode == "native":
        amx_gf = amx_peak_gflops(tgt, 1, iters=200_000)
        other = (bf16_peak_gflops(tgt, 1, iters=2_000_000) if "avx512_bf16" in host_cpu_flags()
                 else fp32_peak_gflops(tgt, 1, iters=2_000_000))
        assert amx_gf and amx_gf > other
        return
    lib = amx_peak_kernel(tgt, 1)
    before = amx_emulator.counts()["tdpbf16ps"]
    _run_loop(lib, 1, 3)
    runs = (amx_emulator.counts()["tdpbf16ps"] - before) // 12
    assert runs >= 1 and (amx_emulator.counts()["tdpbf16ps"] - before) % 12 == 0


@pytest.mark.skipif(not HOST_HAS_AMX, reason="no AMX here: the tile-unit tests above already "
                    "ran on the software executor")
def test_the_tile_unit_tier_on_the_executor_on_this_amx_host():
    """On an AMX host the tier above ran natively; here it runs again in a fresh process that
    never asks for the permission, so every tile instruction traps (Linux's XFD) to the
    executor, which must give the same answers."""
    import subprocess
    import sys

    env = {**os.environ, "DLRM_TVM_TILE_UNIT": "emulated"}
    env.pop("DLRM_TVM_REQUIRE_NATIVE", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           __file__, "-k", "tile_unit_against or peak_on_the_tile or "
                           "trains_as_the_hosts"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]


def _no_amx(ti):
    from dlrm_tvm.targets import without_amx

    return without_amx(ti)


def test_bf16_step_for_sapphirerapids_trains_as_the_hosts_vdpbf16ps_step(tile_unit):
    """The demo model (tiny at dimension 32, bottom 13-64-32, top 64-64-1), bf16, compiled for
    sapphirerapids (emulated: less the features this CPU lacks), 20 steps on the tile unit: its
    losses are within 1e-3 and its weights within 2e-3 of the same step compiled for this host
    without AMX (vdpbf16ps where the CPU has it), the bf16 training tolerance; at least 8
    GEMMs run on tiles."""
    from dlrm_tvm.data import SyntheticData
    from dlrm_tvm.pipeline import compile_dlrm, load_vm
    from dlrm_tvm.runtime.trainer import Trainer

    mode, _ = tile_unit
    base = PRESETS["tiny"]
    model = dataclasses.replace(base.model, embedding_dim=32, mlp_bot=(13, 64, 32),
                                mlp_top=(64, 64, 1))
    cfg = base.replace(model=model, train=dataclasses.replace(base.train, precision="bf16"))
    spr = (resolve_target("sapphirerapids") if mode == "native"
           else emulated_target("sapphirerapids"))
    out = {}
    for key, ti in (("spr", spr), ("host", _no_amx(resolve_target("host")))):
        res = compile_dlrm(cfg, ti)
        rules = [v["rule"] for v in res.schedules.values() if v["op"] == "gemm_vnni"]
        assert (rules.count("gemm_vnni_amx_bf16") >= 8) == (key == "spr"), rules
        before = amx_emulator.counts()["tdpbf16ps"] if mode == "emulated" else 0
        tr = Trainer(cfg, load_vm(res.executable))
        data = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, seed=5)
        out[key] = ([tr.step(data.next_batch())["loss"] for _ in range(20)], tr.state())
        if mode == "emulated" and key == "spr":
            assert amx_emulator.counts()["tdpbf16ps"] - before > 0
    np.testing.assert_allclose(out["spr"][0], out["host"][0], atol=1e-3)
    for name, a in out["host"][1].items():
        np.testing.assert_allclose(out["spr"][1][name], a, atol=2e-3, err_msg=name)


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
