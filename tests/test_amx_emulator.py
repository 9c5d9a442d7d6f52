"""The software AMX executor (runtime/amx_emulator.c, .py).

* decoder: hand-checked byte strings, every addressing form assembled by the system assembler
  (objdump's reading is the oracle), non-AMX and malformed encodings refused, and every tile
  instruction of a GEMM that the project's AMX rule compiled for sapphirerapids;
* numerics: TDPBF16PS against a Fraction oracle written here from the SDM's pseudocode
  (subnormals, ties, signed zeros, inf, NaN), and against the CPU's tdpbf16ps where it has
  amx_bf16; the int8 dot products against NumPy and the CPU;
* the executor without signals: tile loads and stores (rows, colsb, start_row, stride), the
  configuration rules (#GP) and the shape rules (#UD);
* the signal path, in subprocesses that never ask Linux for the AMX permission (conftest asks
  in this process): a bf16 GEMM in real machine code through the handler, with per-instruction
  counts; ud2, a #UD and a #GP each stop the process with a report; faulthandler before it;
  two threads with different tile shapes.

On a CPU with AMX, a process without the permission runs LDTILECFG, STTILECFG and TILERELEASE
natively (only the tile data is XFD-armed), so those are not counted there; /proc/cpuinfo's
amx_tile flag picks that expectation.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest
from dlrm_tvm.runtime import amx_emulator as emu

from dlrm_tvm.targets import host_cpu_flags

FLAGS = host_cpu_flags()
HOST_AMX_TILE = "amx_tile" in FLAGS
HOST_AMX_BF16 = {"amx_tile", "amx_bf16"} <= FLAGS
HOST_AMX_INT8 = {"amx_tile", "amx_int8"} <= FLAGS
X86_LINUX = sys.platform == "linux" and os.uname().machine == "x86_64"
pytestmark = pytest.mark.skipif(not X86_LINUX, reason="the AMX emulator is x86-64 Linux only")


def _cc() -> list[str]:
    try:
        return emu.find_compiler()
    except emu.AmxEmulatorError as e:
        pytest.skip(str(e))


# ---------------------------------------------------------------- machine code for the tests

# Real AMX machine code. amx_gemm64 addresses its operands through r8-r14 (VEX.B/X), with
# disp8, disp32 and every scale but 2, and loads its configuration RIP-relative, as LLVM does.
HELPER_S = r"""
    .text
    .globl amx_gemm64, amx_tdp, amx_ud2, amx_unconfigured, amx_ldcfg, amx_shape_mismatch
    .globl amx_dpbssd, amx_dpbsud, amx_dpbusd, amx_dpbuud
# void amx_gemm64(float c[16][16], const uint16_t a[16][32], const uint16_t b[16][32])
amx_gemm64:
    push %r12
    push %r13
    push %r14
    ldtilecfg cfg64(%rip)
    mov %rdi, %r12
    mov $64, %r13
    lea -0x100(%rsi), %r14
    tileloadd (%r12,%r13,1), %tmm0
    mov $16, %rax
    tileloadd 0x100(%r14,%rax,4), %tmm5
    lea 8(%rdx), %r8
    mov $8, %rcx
    tileloadd -8(%r8,%rcx,8), %tmm7
    tdpbf16ps %tmm7, %tmm5, %tmm0
    tilestored %tmm0, (%r12,%r13,1)
    tilerelease
    pop %r14
    pop %r13
    pop %r12
    ret
# void amx_tdp(const void *cfg, void *c, const void *a, const void *b, long ldc, long lda,
#              long ldb): tmm0 (c) += tmm1 (a) . tmm2 (b) with the caller's configuration
.macro DOT name, insn
\name:
    ldtilecfg (%rdi)
    tileloadd (%rsi,%r8,1), %tmm0
    tileloadd (%rdx,%r9,1), %tmm1
    mov 8(%rsp), %rax
    tileloadd (%rcx,%rax,1), %tmm2
    \insn %tmm2, %tmm1, %tmm0
    tilestored %tmm0, (%rsi,%r8,1)
    tilerelease
    ret
.endm
    DOT amx_tdp, tdpbf16ps
    DOT amx_dpbssd, tdpbssd
    DOT amx_dpbsud, tdpbsud
    DOT amx_dpbusd, tdpbusd
    DOT amx_dpbuud, tdpbuud
amx_ud2:
    ud2
    ret
amx_unconfigured:
    tilezero %tmm3
    ret
amx_ldcfg:
    ldtilecfg (%rdi)
    tilerelease
    ret
amx_shape_mismatch:
    ldtilecfg (%rdi)
    tdpbf16ps %tmm2, %tmm1, %tmm0
    tilerelease
    ret
    .section .rodata
    .p2align 6
cfg64:
    .byte 1, 0
    .fill 14, 1, 0
    .fill 8, 2, 64
    .fill 16, 1, 0
    .fill 8, 1, 16
    .fill 8, 1, 0
    .section .note.GNU-stack,"",@progbits
"""
SHAPE_MISMATCH_AT = 5  # ldtilecfg (%rdi) is 5 bytes


@pytest.fixture(scope="module")
def helper(tmp_path_factory):
    """The helper's shared library path (assembled here; skips without an AMX-aware
    assembler)."""
    d = tmp_path_factory.mktemp("amx_helper")
    (d / "helper.S").write_text(HELPER_S)
    proc = subprocess.run([*_cc(), "-shared", "-fPIC", "-o", str(d / "helper.so"),
                           str(d / "helper.S")], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"the assembler here does not take AMX mnemonics: {proc.stderr[-300:]}")
    return d / "helper.so"


def _cfg(shapes: dict[int, tuple[int, int]], start_row: int = 0) -> bytes:
    """A palette-1 TILECFG; shapes: tile -> (rows, colsb)."""
    b = bytearray(64)
    b[0], b[1] = 1, start_row
    for t, (rows, colsb) in shapes.items():
        b[16 + 2 * t:18 + 2 * t] = colsb.to_bytes(2, "little")
        b[48 + t] = rows
    return bytes(b)


def _ptr(a) -> int:
    return a.ctypes.data if isinstance(a, np.ndarray) else ctypes.addressof(a)


# ---------------------------------------------------------------- decoder

# (hex bytes, mnemonic, Intel text, length): checked by hand against the SDM's encodings
HAND_CHECKED = [
    ("c4e2784900", "ldtilecfg", "ldtilecfg [rax]", 5),
    ("c4e2794900", "sttilecfg", "sttilecfg [rax]", 5),
    ("c4e27849c0", "tilerelease", "tilerelease", 5),
    ("c4e27b49d8", "tilezero", "tilezero tmm3", 5),
    ("c4e27b4b0c18", "tileloadd", "tileloadd tmm1, [rax+rbx*1]", 6),
    ("c4e2794b0c18", "tileloaddt1", "tileloaddt1 tmm1, [rax+rbx*1]", 6),
    ("c4e27b4b545608", "tileloadd", "tileloadd tmm2, [rsi+rdx*2+0x8]", 7),
    ("c4827b4bbcf500100000", "tileloadd", "tileloadd tmm7, [r13+r14*8+0x1000]", 10),
    ("c4a27a4b2c0f", "tilestored", "tilestored [rdi+r9*1], tmm5", 6),
    ("c4c27a4b6c2440", "tilestored", "tilestored [r12+0x40], tmm5", 7),  # SIB, no index
    ("c4e2425cc6", "tdpbf16ps", "tdpbf16ps tmm0, tmm6, tmm7", 5),
    ("c4e2635eca", "tdpbssd", "tdpbssd tmm1, tmm2, tmm3", 5),
    ("c4e2625eca", "tdpbsud", "tdpbsud tmm1, tmm2, tmm3", 5),
    ("c4e2615eca", "tdpbusd", "tdpbusd tmm1, tmm2, tmm3", 5),
    ("c4e2605eca", "tdpbuud", "tdpbuud tmm1, tmm2, tmm3", 5),
    ("c4e278490538000000", "ldtilecfg", "ldtilecfg [rip+0x38]", 9),
    ("c4e27849048510000000", "ldtilecfg", "ldtilecfg [rax*4+0x10]", 10),  # no base
    ("c4e27849042578563412", "ldtilecfg", "ldtilecfg [0x12345678]", 10),  # no base, no index
    ("c4e2784944 24f8".replace(" ", ""), "ldtilecfg", "ldtilecfg [rsp-0x8]", 7),
    ("c4c278494500", "ldtilecfg", "ldtilecfg [r13]", 6),  # r13 needs a disp8 of 0
    ("67c4e27b4b0c18", "tileloadd", "tileloadd tmm1, [eax+ebx*1]", 7),
    ("65c4e27b4b0c18", "tileloadd", "tileloadd tmm1, gs:[rax+rbx*1]", 7),
]


@pytest.mark.parametrize("hexcode,mnemonic,text,length", HAND_CHECKED,
                         ids=[h[2] for h in HAND_CHECKED])
def test_decoder_reads_hand_checked_encodings(hexcode, mnemonic, text, length):
    d = emu.decode(bytes.fromhex(hexcode) + b"\x90" * 4)  # trailing bytes are not part of it
    assert d is not None, emu.decode_error(bytes.fromhex(hexcode))
    assert (d.mnemonic, d.text, d.length) == (mnemonic, text, length)


def test_decoder_fields_of_a_sib_form():
    d = emu.decode(bytes.fromhex("c4827b4bbcf500100000"))
    assert (d.tile, d.base, d.index, d.scale, d.disp) == (7, "r13", "r14", 8, 0x1000)
    assert not d.rip_relative and not d.addr32 and d.has_mem
    d = emu.decode(bytes.fromhex("c4e2425cc6"))
    assert (d.tile, d.tile_a, d.tile_b, d.has_mem) == (0, 6, 7, False)


NOT_OURS = [
    ("0f0b", "ud2"),
    ("90", "nop"),
    ("c4e2f9a8c1", "vfmadd213pd: VEX 0F38, another opcode"),
    ("c5f877", "vzeroupper: 2-byte VEX"),
    ("c4e27c4900", "ldtilecfg with VEX.L=1"),
    ("c4e2f84900", "ldtilecfg with VEX.W=1"),
    ("c4e2704900", "ldtilecfg with VEX.vvvv != 1111b"),
    ("c4e27b4b09", "tileloadd without a SIB byte"),
    ("c4627b4b0c18", "tileloadd to tmm9 (VEX.R)"),
    ("c4e27a4b0c18".replace("7a", "78"), "opcode 4B with no prefix"),
    ("c4e2435cc6", "tdpfp16ps (F2 5C): not ours"),
    ("c4c2425cc6", "tdpbf16ps with tmm14 (VEX.B)"),
    ("c4e2025cc6", "tdpbf16ps with vvvv tmm15"),
    ("c4e27b4900", "tilezero with a memory operand"),
    ("c4e27849c8", "tilerelease with ModRM.reg != 0"),
    ("c4e27b4b0c", "truncated tileloadd"),
    ("66c4e27b4b0c18", "a 66 prefix before VEX"),
    ("f0c4e27b4b0c18", "LOCK before VEX"),
]


@pytest.mark.parametrize("hexcode,what", NOT_OURS, ids=[n[1] for n in NOT_OURS])
def test_decoder_refuses_what_it_does_not_execute(hexcode, what):
    code = bytes.fromhex(hexcode)
    assert emu.decode(code) is None, what
    assert emu.decode_error(code)


_REG32 = {f"e{r[1:]}": r for r in ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi")}
_REG32.update({f"r{n}d": f"r{n}" for n in range(8, 16)})
_MEM = re.compile(r"^(?:%(?P<seg>[fg]s):)?(?P<disp>-?0x[0-9a-f]+|-?\d+)?"
                  r"(?:\((?P<base>%\w+)?(?:,(?P<index>%\w+),(?P<scale>\d))?\))?$")


def _objdump_instructions(obj) -> list[tuple[bytes, str, str]]:
    """(bytes, mnemonic, AT&T operands) of every instruction in ``obj``'s text."""
    if not shutil.which("objdump"):
        pytest.skip("objdump is not installed")
    out = subprocess.run(["objdump", "-d", "-w", "--insn-width=16", str(obj)],
                         capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        m = re.match(r"^\s*[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t(\S+)\s*(.*)$", line)
        if m:
            ops = m.group(3).split("#")[0].strip()
            found.append((bytes.fromhex(m.group(1).replace(" ", "")), m.group(2), ops))
    return found


def _check_against_objdump(code: bytes, mnemonic: str, ops: str):
    d = emu.decode(code)
    assert d is not None, f"{mnemonic} {ops}: {emu.decode_error(code)}"
    assert (d.mnemonic, d.length) == (mnemonic, len(code)), (mnemonic, ops)
    operands = [o for o in re.split(r",(?![^(]*\))", ops) if o]
    tiles = [int(o[4:]) for o in operands if o.startswith("%tmm")]
    mem = [o for o in operands if not o.startswith("%tmm")]
    if mnemonic.startswith("tdp"):  # AT&T order: src2, src1, dst
        assert [d.tile_b, d.tile_a, d.tile] == tiles
    else:
        assert ([d.tile] if d.tile is not None else []) == tiles
    assert d.has_mem == bool(mem)
    if not mem:
        return
    m = _MEM.match(mem[0])
    assert m, mem[0]
    disp = int(m.group("disp") or "0", 0)
    base = (m.group("base") or "")[1:] or None
    rip = base == "rip"
    if base in _REG32:
        base = _REG32[base]
        assert d.addr32
    index = (m.group("index") or "")[1:] or None
    index = None if index in ("riz", "eiz") else index
    index = _REG32.get(index, index)
    assert (d.rip_relative, d.base, d.index, d.disp, d.seg) == \
        (rip, None if rip else base, index, disp, m.group("seg"))
    if index:
        assert d.scale == int(m.group("scale"))


def test_decoder_agrees_with_the_assembler_on_every_addressing_form(tmp_path):
    regs = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"] + [f"r{n}" for n in
                                                                         range(8, 16)]
    lines = []
    for k, base in enumerate(regs):  # every base, with every index (rsp cannot be one)
        for j, index in enumerate(r for r in regs if r != "rsp"):
            scale = (1, 2, 4, 8)[(k + j) % 4]
            disp = ("", "0x7f", "-0x80", "0x12345", "-0x1000")[(k * 3 + j) % 5]
            t = (k + j) % 8
            op = ("tileloadd", "tileloaddt1")[j % 2]
            lines.append(f"{op} {disp}(%{base},%{index},{scale}), %tmm{t}")
            lines.append(f"tilestored %tmm{7 - t}, {disp}(%{base},%{index},{scale})")
        lines.append(f"tileloadd 0x40(%{base}), %tmm{k % 8}")  # SIB without an index
        lines.append(f"ldtilecfg {('', '8', '-0x4000')[k % 3]}(%{base})")
        index = regs[(k + 3) % 16].replace("rsp", "rax")
        lines.append(f"sttilecfg 0x100(%{base},%{index},2)")
    lines += [
        "ldtilecfg cfg(%rip)", "sttilecfg cfg+64(%rip)", "ldtilecfg 0x12345678",
        "tileloadd 0x1000(,%r11,8), %tmm6", "tilestored %tmm2, -0x20(,%rdx,1)",
        "tileloadd (%eax,%ebx,4), %tmm1", "tilestored %tmm3, 0x10(%r9d,%r10d,1)",
        "tileloadd %fs:(%rax,%rbx,1), %tmm4", "tilestored %tmm4, %gs:0x8(%rdi,%rsi,2)",
        "tilerelease",
    ]
    lines += [f"tilezero %tmm{t}" for t in range(8)]
    for t in range(8):
        a, b = (t + 3) % 8, (t + 5) % 8
        lines += [f"{op} %tmm{b}, %tmm{a}, %tmm{t}"
                  for op in ("tdpbf16ps", "tdpbssd", "tdpbsud", "tdpbusd", "tdpbuud")]
    src = tmp_path / "forms.s"
    src.write_text("\n".join(lines) + "\ncfg: .fill 128, 1, 0\n")
    proc = subprocess.run([*_cc(), "-c", "-o", str(tmp_path / "forms.o"), str(src)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"the assembler here does not take AMX mnemonics: {proc.stderr[-300:]}")
    found = [f for f in _objdump_instructions(tmp_path / "forms.o") if f[1] != "(bad)"]
    assert len(found) >= len(lines)  # the trailing .fill reads as a few more
    for code, mnemonic, ops in found[:len(lines)]:
        _check_against_objdump(code, mnemonic, ops)


def test_decoder_agrees_with_objdump_on_a_gemm_compiled_by_the_amx_rule(tmp_path):
    import tvm
    from dlrm_tvm.graphs import ops
    from dlrm_tvm.schedules import rules_for, schedule_func

    from dlrm_tvm.targets import resolve_target

    spr = resolve_target("sapphirerapids").tvm_target()
    sch, rule = schedule_func(ops.gemm_vnni(64, 64, 32, "mk", "none", "float32"), spr,
                              rules_for(spr))
    assert rule == "gemm_vnni_amx_bf16"
    func = sch.mod["main"] if hasattr(sch, "mod") else sch
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         target=spr)
    lib.export_library(str(tmp_path / "gemm.so"))
    found = _objdump_instructions(tmp_path / "gemm.so")
    amx = [f for f in found if f[1] in emu.mnemonics()]
    seen = {f[1] for f in amx}
    assert {"ldtilecfg", "tileloadd", "tdpbf16ps", "tilestored"} <= seen, seen
    for code, mnemonic, operands in amx:
        _check_against_objdump(code, mnemonic, operands)
    # LLVM loads the constant configuration RIP-relative
    assert any(emu.decode(c).rip_relative for c, m, _ in amx if m == "ldtilecfg")


# ---------------------------------------------------------------- numerics: the SDM oracle

DEFAULT_NAN = 0xFFC00000


def _is_nan(x: int) -> bool:
    return (x & 0x7FFFFFFF) > 0x7F800000


def _is_inf(x: int) -> bool:
    return (x & 0x7FFFFFFF) == 0x7F800000


def _daz(x: int) -> int:
    return x if x & 0x7F800000 else x & 0x80000000


def _value(x: int) -> Fraction:
    """The exact value of a finite fp32 bit pattern (already DAZ'd)."""
    e, m = (x >> 23) & 0xFF, x & 0x7FFFFF
    v = Fraction(m | 0x800000) * Fraction(2) ** (e - 150) if e else Fraction(0)
    return -v if x >> 31 else v


def _round(v: Fraction, zero_sign: int) -> int:
    """Round to nearest even with fp32's 24 bits and an unbounded exponent; a result below
    2^-126 after that rounding is flushed to a zero of its sign (FTZ); overflow is infinity."""
    if v == 0:
        return zero_sign << 31
    s, a = int(v < 0), abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    m = round(a / Fraction(2) ** (e - 23))  # round() of a Fraction: half to even
    if m == 1 << 24:
        m, e = m >> 1, e + 1
    if e > 127:
        return s << 31 | 0x7F800000
    if e < -126:
        return s << 31
    return s << 31 | (e + 127) << 23 | (m & 0x7FFFFF)


def _sum(x: int, y: int, px: Fraction, py: Fraction) -> int:
    """x + y rounded once, x and y being zeros or finite with exact values px, py."""
    v = px + py
    both_zero = px == 0 and py == 0
    return _round(v, (x >> 31) & (y >> 31) if both_zero else 0)


def _fma(c: int, a16: int, b16: int) -> int:
    """c + fp32(a) * fp32(b), one rounding; DAZ, FTZ, RNE. NaN: the first of a, b, c, quieted
    (the CPU's choice; the SDM does not say); invalid operations give the default NaN."""
    a, b, c = _daz(a16 << 16), _daz(b16 << 16), _daz(c)
    for x in (a, b, c):
        if _is_nan(x):
            return x | 0x400000
    ps = (a ^ b) & 0x80000000
    if _is_inf(a) or _is_inf(b):
        if not (a & 0x7FFFFFFF and b & 0x7FFFFFFF) or (_is_inf(c) and c & 0x80000000 != ps):
            return DEFAULT_NAN
        return ps | 0x7F800000
    if _is_inf(c):
        return c
    return _sum(c, ps, _value(c), _value(a) * _value(b))


def _add(x: int, y: int) -> int:
    x, y = _daz(x), _daz(y)
    for z in (x, y):
        if _is_nan(z):
            return z | 0x400000
    if _is_inf(x):
        return DEFAULT_NAN if _is_inf(y) and x != y else x
    if _is_inf(y):
        return y
    return _sum(x, y, _value(x), _value(y))


def sdm_tdpbf16ps(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The SDM's TDPBF16PS on bit patterns: c [M, N] uint32, a [M, 2K] uint16, b [K, 2N]
    uint16. Per output: two partial sums from +0 (even and odd pairs, each step an FP32 FMA),
    then tmp = even + odd, then dst + tmp; every step DAZ, FTZ, RNE."""
    out = c.copy()
    m_, n_ = c.shape
    k_ = a.shape[1] // 2
    for m in range(m_):
        for n in range(n_):
            even = odd = 0
            for k in range(k_):
                even = _fma(even, int(a[m, 2 * k]), int(b[k, 2 * n]))
                odd = _fma(odd, int(a[m, 2 * k + 1]), int(b[k, 2 * n + 1]))
            out[m, n] = _add(int(c[m, n]), _add(even, odd))
    return out


RANGES = ["normal", "wide", "tiny"]


def _random_case(seed: int, m: int, k: int, n: int, kind: str):
    """bf16 operands and an fp32 accumulator, never zero. ``normal``: exponents near 0;
    ``wide``: over the whole range, with subnormal inputs, overflow, infinities and NaNs;
    ``tiny``: products and accumulators around 2^-126, so that partial sums and results land
    on both sides of the subnormal boundary (flushed or not)."""
    rng = np.random.default_rng(seed)

    def bf16(shape):
        sign = rng.integers(0, 2, shape) << 15
        frac = rng.integers(1, 128, shape)
        if kind == "wide":
            exp = rng.choice([0, 1, 2, 3, 30, 60, 63, 64, 65, 100, 127, 200, 250, 254, 255],
                             shape, p=[.1, .08, .08, .08, .1, .1, .1, .1, .08, .05, .05, .03,
                                       .02, .02, .01])
        elif kind == "tiny":
            exp = rng.choice([0, 62, 63, 64, 65], shape, p=[.1, .2, .3, .3, .1])
        else:
            exp = rng.integers(117, 138, shape)
        return (sign | exp << 7 | frac).astype(np.uint16)

    acc_sign = rng.integers(0, 2, (m, n)).astype(np.uint32) << 31
    acc_exp = {"wide": rng.integers(0, 256, (m, n)), "tiny": rng.integers(0, 4, (m, n)),
               "normal": rng.integers(115, 140, (m, n))}[kind]
    acc = acc_sign | acc_exp.astype(np.uint32) << 23 | rng.integers(1, 1 << 23, (m, n),
                                                                     dtype=np.uint32)
    return acc.astype(np.uint32), bf16((m, 2 * k)), bf16((k, 2 * n))


def _crafted_case():
    """One row of hand-made outputs (c [1, 8], a [1, 4], b [2, 16]): each column n checks one
    rule (comment). Zeros are deliberate here."""
    def tiny(e):  # bf16 2^-e
        return 0x3F80 - (e << 7)

    a = np.array([[tiny(12), 0, tiny(75), 0]], np.uint16)  # k=0: (2^-12, 0), k=1: (2^-75, 0)
    b = np.zeros((2, 16), np.uint16)
    c = np.zeros((1, 8), np.uint32)
    # 0: 1.0 + 2^-24 is a tie: to even, 1.0
    c[0, 0], b[0, 0] = 0x3F800000, tiny(12)
    # 1: (1 + 2^-23) + 2^-24 is a tie: to even, 1 + 2^-22
    c[0, 1], b[0, 2] = 0x3F800001, tiny(12)
    # 2: even sum 2^-126 (2^-12 * 2^-114), then - 2^-151 (2^-75 * -2^-76): below 2^-126 before
    #    rounding, exactly 2^-126 after: not flushed (tininess after rounding)
    b[0, 4], b[1, 4] = tiny(114), 0x8000 | tiny(76)
    # 3: a subnormal accumulator is read as zero (DAZ); its products are all 0
    c[0, 3] = 0x00000123
    # 4: -0 accumulator, products -0: the partial sums start at +0, so +0
    c[0, 4], b[0, 8], b[1, 8] = 0x80000000, 0x8000, 0x8000
    # 5: 2^-12 * 2^-120 = 2^-132 alone in a partial sum: flushed to zero
    b[0, 10] = tiny(120)
    # 6: +inf accumulator plus a -inf product: default NaN
    c[0, 6], b[0, 12] = 0x7F800000, 0xFF80
    # 7: NaN priority: the partial sum is B's NaN after k=0; at k=1 B's other NaN beats it;
    #    both quieted
    c[0, 7], b[0, 14], b[1, 14] = 0x3F800000, 0x7F81, 0x7FA0
    return c, a, b


def test_crafted_case_matches_the_sdm_oracle_and_its_comments():
    c, a, b = _crafted_case()
    got = emu.tdpbf16ps(c.view(np.float32), a, b).view(np.uint32)
    want = sdm_tdpbf16ps(c, a, b)
    assert got.tolist() == want.tolist()
    assert got[0].tolist() == [0x3F800000, 0x3F800002, 0x00800000, 0, 0, 0, DEFAULT_NAN,
                               0x7FE00000]


@pytest.mark.parametrize("kind", RANGES)
def test_tdpbf16ps_equals_the_sdm_oracle_bit_for_bit(kind):
    for seed in range(3):
        c, a, b = _random_case(seed, 16, 16, 16, kind)
        got = emu.tdpbf16ps(c.view(np.float32), a, b).view(np.uint32)
        want = sdm_tdpbf16ps(c, a, b)
        bad = np.argwhere(got != want)
        assert not len(bad), (f"seed {seed}: {len(bad)} differ, first at {bad[0]}: "
                              f"{got[tuple(bad[0])]:08x} != {want[tuple(bad[0])]:08x}")
    f = got.view(np.float32)  # the data did reach the corners the oracle is there for
    if kind == "wide":
        assert np.isnan(f).any() and np.isinf(f).any()
    if kind == "tiny":
        assert (f == 0).any() and ((np.abs(f) >= 2.0 ** -126) & (np.abs(f) < 2.0 ** -122)).any()


def test_the_sdm_order_is_not_the_sequential_order():
    """The sequential reading (dst += a0*b0; dst += a1*b1, pair after pair) gives other bits;
    the partial sums are what the SDM and the CPU do."""
    c, a, b = _random_case(7, 4, 16, 4, "normal")
    got = emu.tdpbf16ps(c.view(np.float32), a, b).view(np.uint32)
    seq = c.copy()
    for m in range(4):
        for n in range(4):
            d = int(seq[m, n])
            for k in range(16):
                d = _fma(d, int(a[m, 2 * k]), int(b[k, 2 * n]))
                d = _fma(d, int(a[m, 2 * k + 1]), int(b[k, 2 * n + 1]))
            seq[m, n] = d
    assert (got != seq).any()


@pytest.fixture(scope="module")
def hardware(helper):
    """The helper loaded in this process, with the AMX permission (real tile instructions)."""
    if not HOST_AMX_BF16:
        pytest.skip("this CPU has no amx_tile/amx_bf16: no hardware to compare with")
    from dlrm_tvm.runtime.amx import AmxUnavailable, request_amx

    try:
        request_amx()
    except AmxUnavailable as e:
        pytest.skip(str(e))
    return ctypes.CDLL(str(helper))


def _hw_dot(lib, fn: str, c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """c [M, N] 4-byte += a . b on the CPU's tiles (tmm0 = c, tmm1 = a, tmm2 = b)."""
    m, n = c.shape
    cfg = _cfg({0: (m, 4 * n), 1: (m, a.shape[1] * a.itemsize), 2: (b.shape[0],
                                                                     b.shape[1] * b.itemsize)})
    cfgbuf = ctypes.create_string_buffer(cfg, 64)
    out = np.ascontiguousarray(c.copy())
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    getattr(lib, fn)(cfgbuf, ctypes.c_void_p(_ptr(out)), ctypes.c_void_p(_ptr(a)),
                     ctypes.c_void_p(_ptr(b)), ctypes.c_long(out.strides[0]),
                     ctypes.c_long(a.strides[0]), ctypes.c_long(b.strides[0]))
    return out


@pytest.mark.parametrize("kind", RANGES)
def test_tdpbf16ps_equals_the_cpu_bit_for_bit(hardware, kind):
    for seed in range(20):
        c, a, b = _random_case(100 + seed, 16, 16, 16, kind)
        got = emu.tdpbf16ps(c.view(np.float32), a, b).view(np.uint32)
        cpu = _hw_dot(hardware, "amx_tdp", c, a, b)
        bad = np.argwhere(got != cpu)
        assert not len(bad), (f"seed {seed}: {len(bad)} differ, first at {bad[0]}: emulator "
                              f"{got[tuple(bad[0])]:08x}, CPU {cpu[tuple(bad[0])]:08x}")


def test_crafted_case_equals_the_cpu(hardware):
    c, a, b = _crafted_case()
    cpu = _hw_dot(hardware, "amx_tdp", c, a, b)
    assert cpu.tolist() == emu.tdpbf16ps(c.view(np.float32), a, b).view(np.uint32).tolist()


# ---------------------------------------------------------------- the executor, no signals

LDTILECFG_RAX = bytes.fromhex("c4e2784900")
STTILECFG_RAX = bytes.fromhex("c4e2794900")
TILERELEASE = bytes.fromhex("c4e27849c0")


def _tileloadd(t: int) -> bytes:  # tileloadd (%rax,%rbx,1), %tmm<t>
    return bytes([0xC4, 0xE2, 0x7B, 0x4B, 0x04 | t << 3, 0x18])


def _tilestored(t: int) -> bytes:  # tilestored %tmm<t>, (%rax,%rbx,1)
    return bytes([0xC4, 0xE2, 0x7A, 0x4B, 0x04 | t << 3, 0x18])


def _dot(op: int, pp: int, dst: int, a: int, b: int) -> bytes:
    return bytes([0xC4, 0xE2, (~b & 15) << 3 | pp, op, 0xC0 | dst << 3 | a])


def _configure(cfg: bytes):
    buf = ctypes.create_string_buffer(cfg, 64)
    emu.execute(TILERELEASE)
    emu.execute(LDTILECFG_RAX, {"rax": ctypes.addressof(buf)})


def test_tile_load_and_store_honour_rows_colsb_stride_and_start_row():
    rng = np.random.default_rng(1)
    mem = rng.integers(1, 256, 4096, dtype=np.uint8)
    _configure(_cfg({1: (5, 12), 2: (16, 64)}, start_row=0))
    rip = emu.execute(_tileloadd(1), {"rax": _ptr(mem) + 3, "rbx": 100}, rip=0x1000)
    assert rip == 0x1006
    _, tiles = emu.thread_state()
    for r in range(16):
        want = mem[3 + 100 * r:3 + 100 * r + 12] if r < 5 else np.zeros(12, np.uint8)
        assert tiles[1, r, :12].tolist() == want.tolist(), r
        assert not tiles[1, r, 12:].any()  # past colsb: zero
    out = np.full(1024, 0xEE, np.uint8)
    emu.execute(_tilestored(1), {"rax": _ptr(out), "rbx": 64})
    for r in range(16):
        row = out[64 * r:64 * r + 64]
        want = mem[3 + 100 * r:3 + 100 * r + 12].tolist() if r < 5 else [0xEE] * 12
        assert row[:12].tolist() == want and (row[12:] == 0xEE).all(), r
    # start_row: rows below it are kept, the load starts there, and then it is 0 again
    cfg2 = _cfg({2: (16, 64)}, start_row=9)
    _configure(cfg2)
    emu.execute(_tileloadd(2), {"rax": _ptr(mem), "rbx": 64})
    cfg, tiles = emu.thread_state()
    assert not tiles[2, :9].any() and tiles[2, 9:].tolist() == \
        mem[9 * 64:16 * 64].reshape(7, 64).tolist()
    assert cfg[1] == 0 and cfg[0] == 1
    # no index register: stride 0, every row from the same address
    _configure(_cfg({2: (4, 8)}))
    emu.execute(bytes.fromhex("c4e27b4b1420"), {"rax": _ptr(mem) + 8})  # (%rax,%riz,1)
    _, tiles = emu.thread_state()
    assert all(tiles[2, r, :8].tolist() == mem[8:16].tolist() for r in range(4))


def test_sttilecfg_tilezero_and_tilerelease():
    cfg = _cfg({0: (16, 64), 3: (7, 20)})
    _configure(cfg)
    out = ctypes.create_string_buffer(b"\xaa" * 64, 64)
    emu.execute(STTILECFG_RAX, {"rax": ctypes.addressof(out)})
    assert out.raw == cfg
    mem = np.arange(1, 1025, dtype=np.uint32).astype(np.uint8) | 1
    emu.execute(_tileloadd(3), {"rax": _ptr(mem), "rbx": 64})
    assert emu.thread_state()[1][3].any()
    emu.execute(bytes.fromhex("c4e27b49d8"))  # tilezero tmm3
    assert not emu.thread_state()[1][3].any()
    emu.execute(TILERELEASE)
    emu.execute(STTILECFG_RAX, {"rax": ctypes.addressof(out)})
    assert out.raw == bytes(64)
    with pytest.raises(emu.AmxFault, match="not configured"):
        emu.execute(_tileloadd(0), {"rax": _ptr(mem), "rbx": 64})


@pytest.mark.parametrize("cfg,reason", [
    (bytes([2]) + bytes(63), "palette"),
    (_cfg({0: (16, 64)})[:5] + b"\x01" + _cfg({0: (16, 64)})[6:], "reserved"),
    (_cfg({0: (17, 64)}), "rows"),
    (_cfg({0: (16, 65)}), "colsb"),
    (_cfg({0: (0, 64)}), "zero"),
    (_cfg({0: (4, 0)}), "zero"),
    (_cfg({0: (16, 64)})[:56] + b"\x01" + bytes(7), "tiles 8-15"),
], ids=["palette2", "reserved-byte", "rows17", "colsb65", "rows0", "colsb0", "tile8"])
def test_invalid_configurations_are_gp(cfg, reason):
    emu.execute(TILERELEASE)
    buf = ctypes.create_string_buffer(cfg, 64)
    with pytest.raises(emu.AmxFault, match=reason) as e:
        emu.execute(LDTILECFG_RAX, {"rax": ctypes.addressof(buf)})
    assert e.value.kind == "#GP"


@pytest.mark.parametrize("shapes,insn,reason", [
    ({0: (16, 64), 1: (16, 64), 2: (16, 64)}, _dot(0x5C, 2, 0, 1, 1), "distinct"),
    ({0: (16, 64), 1: (16, 64)}, _dot(0x5C, 2, 0, 1, 2), "not configured"),
    ({0: (16, 60), 1: (16, 64), 2: (16, 64)}, _dot(0x5C, 2, 0, 1, 2), r"\(N\)"),
    ({0: (8, 64), 1: (16, 64), 2: (16, 64)}, _dot(0x5C, 2, 0, 1, 2), r"\(M\)"),
    ({0: (16, 64), 1: (16, 32), 2: (16, 64)}, _dot(0x5C, 2, 0, 1, 2), r"\(K\)"),
    ({0: (16, 62), 1: (16, 64), 2: (16, 62)}, _dot(0x5C, 2, 0, 1, 2), "multiple of 4"),
    ({0: (16, 64), 1: (16, 64), 2: (16, 64)}, _dot(0x5E, 3, 2, 2, 0), "distinct"),
    ({1: (16, 6)}, _tileloadd(1), "multiple of 4"),
    ({1: (4, 64)}, _tileloadd(2), "not configured"),
], ids=["same-tile", "unconfigured-tile", "n-mismatch", "m-mismatch", "k-mismatch",
        "colsb-not-4", "int8-same", "load-colsb6", "load-unconfigured-tile"])
def test_shape_violations_are_ud(shapes, insn, reason):
    _configure(_cfg(shapes))
    mem = np.ones(2048, np.uint8)
    with pytest.raises(emu.AmxFault, match=reason) as e:
        emu.execute(insn, {"rax": _ptr(mem), "rbx": 64})
    assert e.value.kind == "#UD"


def test_start_row_at_rows_is_ud():
    _configure(_cfg({1: (4, 64)}, start_row=4))
    with pytest.raises(emu.AmxFault, match="start_row"):
        emu.execute(_tileloadd(1), {"rax": 4096, "rbx": 64})


INT8 = [("tdpbssd", 3, True, True), ("tdpbsud", 2, True, False),
        ("tdpbusd", 1, False, True), ("tdpbuud", 0, False, False)]


def _int8_case(seed):
    rng = np.random.default_rng(seed)
    c = rng.integers(-(1 << 31), 1 << 31, (16, 12), dtype=np.int64).astype(np.int32)
    a = rng.integers(1, 256, (16, 64), dtype=np.uint8)  # 16 K quads
    b = rng.integers(1, 256, (16, 48), dtype=np.uint8)  # 16 x 12 quads
    return c, a, b


def _int8_oracle(c, a, b, sa, sb):
    av = a.view(np.int8).astype(np.int64) if sa else a.astype(np.int64)
    bv = b.view(np.int8).astype(np.int64) if sb else b.astype(np.int64)
    prod = av @ bv.reshape(16, 12, 4).transpose(0, 2, 1).reshape(64, 12)  # [m, 4k+j] . [4k+j, n]
    return ((c.astype(np.int64) + prod) % (1 << 32)).astype(np.uint32).view(np.int32)


def _int8_emulated(op_pp, c, a, b):
    _configure(_cfg({0: (16, 48), 1: (16, 64), 2: (16, 48)}))
    cc = c.copy()
    emu.execute(_tileloadd(0), {"rax": _ptr(cc), "rbx": 48})
    emu.execute(_tileloadd(1), {"rax": _ptr(a), "rbx": 64})
    emu.execute(_tileloadd(2), {"rax": _ptr(b), "rbx": 48})
    emu.execute(_dot(0x5E, op_pp, 0, 1, 2))
    emu.execute(_tilestored(0), {"rax": _ptr(cc), "rbx": 48})
    return cc


@pytest.mark.parametrize("name,pp,sa,sb", INT8, ids=[i[0] for i in INT8])
def test_int8_dot_products_match_numpy(name, pp, sa, sb):
    c, a, b = _int8_case(3)
    before = emu.counts()[name]
    got = _int8_emulated(pp, c, a, b)
    assert got.tolist() == _int8_oracle(c, a, b, sa, sb).tolist()
    assert emu.counts()[name] == before + 1


@pytest.mark.parametrize("name,pp,sa,sb", INT8, ids=[i[0] for i in INT8])
def test_int8_dot_products_equal_the_cpu(hardware, name, pp, sa, sb):
    if not HOST_AMX_INT8:
        pytest.skip("this CPU has no amx_int8")
    c, a, b = _int8_case(4)
    cpu = _hw_dot(hardware, "amx_dp" + name[3:], c.view(np.uint32), a, b)
    assert cpu.view(np.int32).tolist() == _int8_emulated(pp, c, a, b).tolist()


def test_bf16_tile_program_equals_the_numerics_entry_point():
    c, a, b = _random_case(11, 16, 16, 16, "wide")
    _configure(_cfg({0: (16, 64), 5: (16, 64), 7: (16, 64)}))
    cc = c.copy()
    emu.execute(_tileloadd(0), {"rax": _ptr(cc), "rbx": 64})
    emu.execute(_tileloadd(5), {"rax": _ptr(a), "rbx": 64})
    emu.execute(_tileloadd(7), {"rax": _ptr(b), "rbx": 64})
    emu.execute(_dot(0x5C, 2, 0, 5, 7))
    emu.execute(_tilestored(0), {"rax": _ptr(cc), "rbx": 64})
    assert cc.tolist() == emu.tdpbf16ps(c.view(np.float32), a, b).view(np.uint32).tolist()


# ---------------------------------------------------------------- the signal path

SCRIPT = textwrap.dedent("""
    import ctypes, faulthandler, json, sys, threading
    import numpy as np
    from dlrm_tvm.runtime import amx_emulator as emu

    helper_path, case = sys.argv[1], sys.argv[2]
    if case == "faulthandler":
        faulthandler.enable()
    emu.install()
    emu.install()  # idempotent
    assert emu.installed()
    lib = ctypes.CDLL(helper_path)
    vp = ctypes.c_void_p

    def addr(fn):
        return ctypes.cast(getattr(lib, fn), vp).value

    def bf16(rng, shape):
        x = rng.standard_normal(shape).astype(np.float32) * 4
        return (x.view(np.uint32) >> 16).astype(np.uint16)

    def gemm64(seed):
        rng = np.random.default_rng(seed)
        c = rng.standard_normal((16, 16)).astype(np.float32)
        a, b = bf16(rng, (16, 32)), bf16(rng, (16, 32))
        want = emu.tdpbf16ps(c, a, b)
        lib.amx_gemm64(vp(c.ctypes.data), vp(a.ctypes.data), vp(b.ctypes.data))
        return c.view(np.uint32).tolist(), want.view(np.uint32).tolist()

    def tdp(cfg, m, k, n, rng):
        c = rng.standard_normal((m, n)).astype(np.float32)
        a, b = bf16(rng, (m, 2 * k)), bf16(rng, (k, 2 * n))
        want = emu.tdpbf16ps(c, a, b)
        lib.amx_tdp(cfg, vp(c.ctypes.data), vp(a.ctypes.data), vp(b.ctypes.data),
                    ctypes.c_long(4 * n), ctypes.c_long(4 * k), ctypes.c_long(4 * n))
        return bool((c.view(np.uint32) == want.view(np.uint32)).all())

    def config(shapes):
        b = bytearray(64)
        b[0] = 1
        for t, (rows, colsb) in shapes.items():
            b[16 + 2 * t:18 + 2 * t] = colsb.to_bytes(2, "little")
            b[48 + t] = rows
        return ctypes.create_string_buffer(bytes(b), 64)

    result = {"addr": {f: addr(f) for f in ("amx_ud2", "amx_unconfigured", "amx_ldcfg",
                                            "amx_shape_mismatch")}}
    if case in ("gemm", "faulthandler"):
        got, want = gemm64(5)
        result.update(got=got, want=want, counts=emu.counts())
    elif case == "threads":
        shapes = {0: (16, 16, 16), 1: (8, 8, 12)}  # per thread: M, K pairs, N
        ok, barrier = {}, threading.Barrier(2)

        def work(i):
            m, k, n = shapes[i]
            cfg = config({0: (m, 4 * n), 1: (m, 4 * k), 2: (k, 4 * n)})
            rng = np.random.default_rng(i)
            barrier.wait()
            ok[i] = all(tdp(cfg, m, k, n, rng) for _ in range(40))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result.update(ok=ok, counts=emu.counts())
    print(json.dumps(result), flush=True)
    if case in ("ud2", "faulthandler"):
        lib.amx_ud2()
    elif case == "ud":
        lib.amx_unconfigured()
    elif case == "ud-shape":
        lib.amx_shape_mismatch(config({0: (16, 64), 1: (16, 64), 2: (8, 64)}))
    elif case == "gp":
        bad = bytearray(64)
        bad[0] = 2
        lib.amx_ldcfg(ctypes.create_string_buffer(bytes(bad), 64))
    print("still running", flush=True)
""")


def _run(helper, case: str):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(helper), case],
                          capture_output=True, text=True, timeout=120)
    first = proc.stdout.splitlines()[0] if proc.stdout else "{}"
    return proc, json.loads(first)


def _expected_counts(calls: int) -> dict[str, int]:
    """One amx_gemm64/amx_tdp call: ldtilecfg, 3 loads, one dot product, a store, release."""
    native_cfg = 0 if HOST_AMX_TILE else 1  # run natively without the permission on AMX CPUs
    want = dict.fromkeys(emu.mnemonics(), 0)
    want.update(ldtilecfg=calls * native_cfg, tilerelease=calls * native_cfg,
                tileloadd=3 * calls, tdpbf16ps=calls, tilestored=calls)
    return want


def test_signal_path_runs_a_bf16_gemm_in_machine_code(helper):
    proc, out = _run(helper, "gemm")
    assert proc.returncode == 0, proc.stderr
    assert out["got"] == out["want"]
    assert out["counts"] == _expected_counts(1)
    assert "still running" in proc.stdout


def test_signal_path_with_faulthandler_first_still_runs_amx(helper):
    proc, out = _run(helper, "faulthandler")
    assert out["got"] == out["want"] and out["counts"] == _expected_counts(1)
    # and a non-AMX SIGILL still reaches faulthandler, then kills the process
    assert proc.returncode == -signal.SIGILL, proc.stderr
    assert "Fatal Python error: Illegal instruction" in proc.stderr
    assert f"SIGILL not handled at {out['addr']['amx_ud2']:#x}" in proc.stderr


def test_a_non_amx_illegal_instruction_is_reported_and_not_swallowed(helper):
    proc, out = _run(helper, "ud2")
    assert proc.returncode == -signal.SIGILL, proc.stderr
    assert "still running" not in proc.stdout
    line = next(x for x in proc.stderr.splitlines() if "SIGILL not handled" in x)
    assert f"at {out['addr']['amx_ud2']:#x}" in line
    assert "(bytes 0f 0b c3" in line  # ud2; ret; then the next function's bytes
    assert "not a VEX3-encoded instruction" in line


def test_tile_use_before_ldtilecfg_stops_with_ud(helper):
    proc, out = _run(helper, "ud")
    assert proc.returncode == -signal.SIGILL, proc.stderr
    assert "still running" not in proc.stdout
    assert (f"#UD at {out['addr']['amx_unconfigured']:#x}: tilezero tmm3 (bytes c4 e2 7b 49 "
            f"d8): tiles are not configured") in proc.stderr


def test_tile_shapes_that_do_not_fit_stop_with_ud(helper):
    proc, out = _run(helper, "ud-shape")
    assert proc.returncode == -signal.SIGILL, proc.stderr
    at = out["addr"]["amx_shape_mismatch"] + SHAPE_MISMATCH_AT
    assert f"#UD at {at:#x}: tdpbf16ps tmm0, tmm1, tmm2" in proc.stderr
    assert "src1.colsb / 4 != src2.rows (K)" in proc.stderr


def test_an_invalid_tile_configuration_stops_with_gp(helper):
    proc, out = _run(helper, "gp")
    assert proc.returncode == -signal.SIGSEGV, proc.stderr  # a #GP is a SIGSEGV
    assert "still running" not in proc.stdout
    if HOST_AMX_TILE:  # LDTILECFG runs natively here: the CPU raised the #GP itself
        assert "AMX emulator" not in proc.stderr
    else:
        assert (f"#GP at {out['addr']['amx_ldcfg']:#x}: ldtilecfg [rdi] (bytes c4 e2 78 49 "
                f"07): palette above 1") in proc.stderr


def test_two_threads_keep_their_own_tile_state(helper):
    proc, out = _run(helper, "threads")
    assert proc.returncode == 0, proc.stderr
    assert out["ok"] == {"0": True, "1": True}
    assert out["counts"] == _expected_counts(80)


# ---------------------------------------------------------------- building

def test_the_library_is_cached_per_source_and_rebuilt_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = emu.library_path()
    assert first.parent == tmp_path / "cache" / "dlrm-tvm"
    stamp = first.stat().st_mtime_ns
    assert emu.library_path() == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    edited = tmp_path / "amx_emulator.c"
    edited.write_text(emu.SOURCE.read_text() + "\n/* an edit */\n")
    second = emu.library_path(edited)
    assert second != first and second.is_file()
    assert not [p for p in second.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_a_missing_compiler_is_a_project_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(emu.AmxEmulatorError, match="CC='/nonexistent/cc'"):
        emu.library_path()
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(emu.AmxEmulatorError, match="no C compiler") as e:
        emu.library_path()
    assert e.value.exit_code == 2
