"""Named Xeon (and Zen) targets, TVM target strings and dicts, the host, and the CPU features a
compiled artifact needs.

A target is a TVM LLVM target built from an ``mcpu`` (plus, for ``host`` or a target string,
``-mattr`` feature switches). What our schedules may use is read from the target itself
(``target_has_features``), never from the build host, so cross-compiling for ``cooperlake`` on an
AVX2 machine selects the same rules as compiling on a Cooper Lake.

The features an artifact records are every x86 ISA extension LLVM enables for the target
(``llvm_get_cpu_features``) that the kernel reports in ``/proc/cpuinfo``: ``ISA_FEATURES`` is the
one table from LLVM's feature names to the kernel's flag names. Loading an artifact compares all
of them with the host's flags.
"""

from __future__ import annotations

import ctypes
import difflib
import errno
import json
import logging
import os
import platform
import re
from dataclasses import dataclass, field
from typing import Any


# name -> LLVM mcpu
NAMED_TARGETS: dict[str, str] = {
    "skylake-avx512": "skylake-avx512",
    "cascadelake": "cascadelake",
    "icelake-server": "icelake-server",
    "cooperlake": "cooperlake",
    "sapphirerapids": "sapphirerapids",
    "emeraldrapids": "emeraldrapids",
    "graniterapids": "graniterapids",
    "znver3": "znver3",
    "znver4": "znver4",
    "znver5": "znver5",
    "x86-64-v3": "x86-64-v3",
}

# LLVM feature name -> /proc/cpuinfo flag (Linux arch/x86/include/asm/cpufeatures.h), for every
# x86 ISA extension LLVM may emit instructions of. Features LLVM knows but the kernel does not
# report under a stable name (avx10.*, avxvnniint8, avxneconvert, amx-complex, sha512, ...) are
# left out: they are neither recorded nor checked. Order: the order features are recorded in.
ISA_FEATURES: dict[str, str] = {
    "sse": "sse",
    "sse2": "sse2",
    "sse3": "pni",
    "ssse3": "ssse3",
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "sse4a": "sse4a",
    "popcnt": "popcnt",
    "lzcnt": "abm",
    "movbe": "movbe",
    "bmi": "bmi1",
    "bmi2": "bmi2",
    "adx": "adx",
    "aes": "aes",
    "pclmul": "pclmulqdq",
    "sha": "sha_ni",
    "f16c": "f16c",
    "fma": "fma",
    "fma4": "fma4",
    "xop": "xop",
    "tbm": "tbm",
    "avx": "avx",
    "avx2": "avx2",
    "avxvnni": "avx_vnni",
    "gfni": "gfni",
    "vaes": "vaes",
    "vpclmulqdq": "vpclmulqdq",
    "avx512f": "avx512f",
    "avx512cd": "avx512cd",
    "avx512dq": "avx512dq",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512ifma": "avx512ifma",
    "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512vnni": "avx512_vnni",
    "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
    "avx512vp2intersect": "avx512_vp2intersect",
    "amx-tile": "amx_tile",
    "amx-int8": "amx_int8",
    "amx-bf16": "amx_bf16",
    "amx-fp16": "amx_fp16",
}
CPUINFO_TO_LLVM: dict[str, str] = {v: k for k, v in ISA_FEATURES.items()}
# LLVM ISA features outside the table (the host cannot be checked for them): a CPU implying one
# is never picked as the closest CPU to a host LLVM does not know.
_UNMAPPED_ISA_PREFIXES = ("avx", "amx", "sha512", "sm3", "sm4", "egpr", "ndd", "ppx",
                          "push2pop2", "ccmp", "nf", "zu", "cmpccxadd", "movrs", "kl", "widekl")

# The features our kernels choose rules by: what a tuning record's signature names (kept to this
# set so records stay valid when ISA_FEATURES grows).
KERNEL_FEATURES: tuple[str, ...] = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni", "avx512bf16",
    "amx-bf16",
)
FEATURE_FLAGS: dict[str, str] = {f: ISA_FEATURES[f] for f in KERNEL_FEATURES}  # compatibility

_TARGET_SYNTAX = ("host, a named CPU ({names}), a TVM target string such as "
                  "'llvm -mcpu=sapphirerapids' or a JSON dict such as "
                  "'{{\"kind\": \"llvm\", \"mcpu\": \"icelake-server\"}}'")


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


@dataclass(frozen=True)
class TargetInfo:
    name: str
    mcpu: str
    features: tuple[str, ...]  # LLVM names of the ISA_FEATURES the target enables
    mtriple: str = ""
    mattr: tuple[str, ...] = ()  # "+feat" / "-feat" switches on top of mcpu
    options: tuple[tuple[str, Any], ...] = field(default=())  # other llvm target options
    # the AMX tile instructions run on the software executor (runtime/amx_emulator.py), not
    # the CPU: the amx_* flags are not asked of the host (``emulated_target``)
    emulate_amx: bool = False

    @property
    def lanes_fp32(self) -> int:
        """fp32 lanes of the widest vector register the target has."""
        if "avx512f" in self.features:
            return 16
        if "avx2" in self.features:
            return 8
        return 4

    @property
    def vector_registers(self) -> int:
        return 32 if "avx512f" in self.features else 16

    @property
    def required_cpu_flags(self) -> tuple[str, ...]:
        """The /proc/cpuinfo flags a CPU must report to execute code built for this target
        (the amx_* ones not, where the tile instructions are emulated)."""
        return tuple(ISA_FEATURES[f] for f in self.features
                     if not (self.emulate_amx and f.startswith("amx-")))

    def __str__(self) -> str:  # where a target name is printed, a resolved target reads so
        return self.name + (" (AMX emulated)" if self.emulate_amx else "")

    def tvm_dict(self) -> dict:
        d: dict[str, Any] = {"kind": "llvm", "mcpu": self.mcpu}
        if self.mtriple:
            d["mtriple"] = self.mtriple
        if self.mattr:
            d["mattr"] = list(self.mattr)
        for k, v in self.options:
            d[k] = list(v) if isinstance(v, tuple) else v
        return d

    def tvm_target(self):  # -> tvm.target.Target
        import tvm

        return tvm.target.Target(self.tvm_dict())

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "mcpu": self.mcpu,
            "mtriple": self.mtriple,
            "mattr": list(self.mattr),
            "tvm_target": self.tvm_dict(),
            "features": list(self.features),
            "required_cpu_flags": list(self.required_cpu_flags),
            **({"emulate_amx": True} if self.emulate_amx else {}),
        }


def parse_cpuinfo_flags(text: str) -> set[str]:
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def host_cpu_flags() -> set[str]:
    """The host's CPU flags as the kernel reports them (what it will let us execute)."""
    try:
        with open("/proc/cpuinfo") as f:
            return parse_cpuinfo_flags(f.read())
    except OSError:
        return set()


def _host_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _llvm_features(spec: dict) -> set[str]:
    import tvm
    from tvm.target import codegen

    return set(codegen.llvm_get_cpu_features(tvm.target.Target(spec)))


def isa_features(spec: dict) -> tuple[str, ...]:
    """The ISA_FEATURES (LLVM names, table order) LLVM enables for a target dict."""
    have = _llvm_features(spec)
    return tuple(f for f in ISA_FEATURES if f in have)


def _default_triple() -> str:
    from tvm.target import codegen

    return str(codegen.llvm_get_system_triple())


def _x86_cpus() -> list[str]:
    import tvm
    from tvm.target import codegen

    return [str(c) for c in codegen.llvm_get_cpu_archlist(
        tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"}))]


def _parse_target_string(s: str) -> dict:
    """``llvm -mcpu=X -mtriple=Y -mattr=+a,-b -num-cores=4`` -> target dict."""
    words = s.split()
    spec: dict[str, Any] = {"kind": words[0]}
    for w in words[1:]:
        m = re.fullmatch(r"--?([A-Za-z][\w.-]*)(?:=(.*))?", w)
        if not m:
            raise ValueError(f"cannot parse target {s!r}: {w!r} is not an option of the form "
                             f"-key=value")
        key, val = m.group(1), m.group(2)
        if key == "mattr":
            spec[key] = [a for a in (val or "").split(",") if a]
        elif val is None:
            spec[key] = True
        elif re.fullmatch(r"-?\d+", val):
            spec[key] = int(val)
        else:
            spec[key] = val
    return spec


def _resolve_spec(spec: dict, name: str) -> TargetInfo:
    """A target dict (``{"kind": "llvm", "mcpu": ...}``) -> TargetInfo; clear errors for a
    non-llvm kind, a missing or unknown mcpu, or a non-x86 triple."""
    import tvm
    from tvm.target import codegen

    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind != "llvm":
        raise ValueError(f"target {name!r}: kind {kind!r} is not supported; dlrm-tvm compiles "
                         f"for x86 CPUs with LLVM (kind 'llvm')")
    mcpu = spec.pop("mcpu", None)
    if not mcpu:
        raise ValueError(f"target {name!r} names no mcpu (e.g. 'llvm -mcpu=sapphirerapids'); "
                         f"use 'host' for this CPU")
    mcpu = str(mcpu)
    mtriple = str(spec.pop("mtriple", "") or "")
    triple = mtriple or _default_triple()
    if not re.match(r"(x86_64|amd64)\b", triple):
        raise ValueError(f"target {name!r}: triple {triple!r} is not x86-64; dlrm-tvm compiles "
                         f"for x86-64 CPUs")
    if not bool(codegen.llvm_is_valid_cpu(mcpu, triple)):
        cpus = [c for c in _x86_cpus() if "_" not in c]  # LLVM also lists icelake_server...
        close = difflib.get_close_matches(mcpu, cpus, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"target {name!r}: mcpu {mcpu!r} is not a CPU this TVM's LLVM "
                         f"{codegen.llvm_version_major()} knows{hint}")
    mattr = spec.pop("mattr", ())
    if isinstance(mattr, str):
        mattr = [a for a in mattr.split(",") if a]
    mattr = tuple(str(a) for a in mattr)
    options = tuple(sorted((str(k), _hashable(v)) for k, v in spec.items()))
    ti = TargetInfo(name=name, mcpu=mcpu, features=(), mtriple=mtriple, mattr=mattr,
                    options=options)
    try:
        tvm.target.Target(ti.tvm_dict())
    except Exception as e:  # an option TVM does not know: its message lists the known ones
        raise ValueError(f"target {name!r}: {e}") from e
    return TargetInfo(name=name, mcpu=mcpu, features=isa_features(ti.tvm_dict()),
                      mtriple=mtriple, mattr=mattr, options=options)


def host_target(flags: set[str] | None = None, system_cpu: str | None = None, *,
                emulate_amx: bool = False) -> TargetInfo:
    """This CPU: LLVM's host CPU name, adjusted to exactly the ISA features the OS lets this
    process execute.

    The mcpu is what LLVM detects (or, when LLVM does not know the CPU, the LLVM CPU whose
    features the host covers best); every ISA_FEATURES feature the mcpu implies but
    /proc/cpuinfo does not report (a hypervisor may hide one) is switched off (``-feat``), and
    every one the host reports beyond the mcpu is switched on (``+feat``).

    AMX needs more than the flag: Linux must grant the process the tile-data state
    (``host_amx_refusal`` below). Where /proc/cpuinfo reports amx_tile, the permission is requested
    here; if it is refused, every amx-* feature is switched off (the bf16 GEMMs then take the
    vdpbf16ps rule instead of dying on their first tile instruction) and the reason is logged
    once. ``emulate_amx``: keep AMX without asking (the tile instructions run on the software
    executor; ``emulated_target`` also counts AMX present where the CPU has none). ``flags`` and ``system_cpu`` stand in for
    /proc/cpuinfo and LLVM's detection (tests); a stand-in host is taken as granting AMX, since
    the permission is this process's."""
    from tvm.target import codegen

    triple = _default_triple()
    cpu = str(codegen.llvm_get_system_cpu()) if system_cpu is None else system_cpu
    if flags is None:
        flags = host_cpu_flags()
        if "amx_tile" in flags and not emulate_amx and host_amx_refusal():
            flags = {f for f in flags if not f.startswith("amx_")}
    flags = set(flags)
    if not flags:  # not Linux: cannot see the OS's flags; trust LLVM's detection
        if cpu and cpu != "generic" and bool(codegen.llvm_is_valid_cpu(cpu, triple)):
            return _resolve_spec({"kind": "llvm", "mcpu": cpu}, "host")
        return _resolve_spec({"kind": "llvm", "mcpu": "x86-64"}, "host")
    host_feats = {CPUINFO_TO_LLVM[f] for f in flags if f in CPUINFO_TO_LLVM}
    if not cpu or cpu == "generic" or not bool(codegen.llvm_is_valid_cpu(cpu, triple)):
        cpu = closest_cpu(host_feats)
    implied = set(isa_features({"kind": "llvm", "mcpu": cpu}))
    mattr = [f"-{f}" for f in ISA_FEATURES if f in implied and f not in host_feats]
    mattr += [f"+{f}" for f in ISA_FEATURES if f in host_feats and f not in implied]
    spec: dict[str, Any] = {"kind": "llvm", "mcpu": cpu}
    if mattr:
        spec["mattr"] = mattr
    ti = _resolve_spec(spec, "host")
    # LLVM's implications (+avx512vbmi2 turns on avx512bw, -avx512f turns off avx512bw) could
    # re-enable a feature the host lacks: switch any such survivor off too.
    extra = [f"-{f}" for f in ti.features if f not in host_feats]
    if extra:
        spec["mattr"] = mattr + extra
        ti = _resolve_spec(spec, "host")
    return ti


def closest_cpu(host_feats: set[str], vendor: str | None = None) -> str:
    """The LLVM x86 CPU whose ISA features are all in ``host_feats`` and cover most of them
    (named targets, then the host's vendor, first on a tie)."""
    vendor = _host_vendor() if vendor is None else vendor
    amd = vendor == "AuthenticAMD"
    named = set(NAMED_TARGETS.values())
    best, best_key = "x86-64", (-1,)
    for cpu in _x86_cpus():
        if "_" in cpu:  # LLVM lists aliases such as icelake_server
            continue
        every = _llvm_features({"kind": "llvm", "mcpu": cpu})
        if any(f.startswith(_UNMAPPED_ISA_PREFIXES) and f not in ISA_FEATURES for f in every):
            continue
        feats = {f for f in every if f in ISA_FEATURES}
        if not feats <= host_feats:
            continue
        key = (len(feats), cpu in named, cpu.startswith("znver") == amd, cpu)
        if key > best_key:
            best, best_key = cpu, key
    return best


def resolve_target(name: str | dict = "host", *, emulate_amx: bool = False) -> TargetInfo:
    """Resolve ``host``, a named CPU, a TVM target string (``llvm -mcpu=sapphirerapids``,
    ``llvm -mtriple=x86_64-linux-gnu -mcpu=icelake-server``) or a target dict (or its JSON,
    ``{"kind": "llvm", "mcpu": "..."}``) to its LLVM mcpu and ISA feature set. ``host`` keeps
    AMX only where this process is granted it (``host_target``); a named or explicit target
    keeps all its features (its code is refused at load on a host that cannot run it).
    ``emulate_amx``: ``emulated_target(name)``, the form ``--emulate-amx`` runs."""
    if isinstance(name, TargetInfo):  # already resolved (``emulated_target``)
        return name
    if emulate_amx:
        return emulated_target(name)
    if isinstance(name, dict):
        return _resolve_spec(name, json.dumps(name, sort_keys=True))
    name = str(name).strip()
    if name == "host":
        return host_target()
    if name in NAMED_TARGETS:
        return _resolve_spec({"kind": "llvm", "mcpu": NAMED_TARGETS[name]}, name)
    if name.startswith("{"):
        try:
            spec = json.loads(name)
        except json.JSONDecodeError as e:
            raise ValueError(f"target {name!r} is not valid JSON: {e}") from e
        if not isinstance(spec, dict):
            raise ValueError(f"target {name!r}: a JSON target must be an object")
        return _resolve_spec(spec, name)
    if " " in name or name.startswith("llvm"):
        return _resolve_spec(_parse_target_string(name), name)
    raise ValueError(f"unknown target {name!r}; give "
                     + _TARGET_SYNTAX.format(names=", ".join(NAMED_TARGETS)))


AMX_EMULATED = ("amx-tile", "amx-bf16", "amx-int8")  # what the software executor runs


def emulated_target(name: str | dict | TargetInfo = "host",
                    flags: set[str] | None = None) -> TargetInfo:
    """``name`` with its AMX tile instructions run by the software executor
    (``--emulate-amx``), built so that this host (``flags``: /proc/cpuinfo's) runs the rest:

    - ``host``: this CPU's features with amx-tile, amx-bf16 and amx-int8 counted as present
      (the permission is never asked: the executor runs the instructions);
    - a named or explicit target: its features, less the non-AMX ones this host lacks (each
      switched off, ``-feat``, and logged once: the kernels then use what the host has, as the
      host target would), with its AMX features kept whether or not the host has them.

    The result has ``emulate_amx`` set: its required flags leave out amx_*."""
    import dataclasses

    flags = host_cpu_flags() if flags is None else set(flags)
    if isinstance(name, TargetInfo):
        base = name
    elif name == "host":
        base = host_target(flags=flags | {ISA_FEATURES[f] for f in AMX_EMULATED})
    else:
        base = resolve_target(name)
    if flags:
        lacking = [f for f in base.features
                   if not f.startswith("amx-") and ISA_FEATURES[f] not in flags]
    else:  # not Linux: nothing to compare with
        lacking = []
    spec = base.tvm_dict()
    mattr = [m for m in spec.get("mattr", []) if m.lstrip("+-") not in AMX_EMULATED]
    mattr += [f"-{f}" for f in lacking] + [f"+{f}" for f in AMX_EMULATED]
    spec["mattr"] = mattr
    ti = _resolve_spec(spec, base.name)
    survivors = [f for f in ti.features  # LLVM's implications may turn one back on
                 if flags and not f.startswith("amx-") and ISA_FEATURES[f] not in flags]
    if survivors:
        spec["mattr"] = mattr + [f"-{f}" for f in survivors]
        ti = _resolve_spec(spec, base.name)
    if lacking:
        import logging

        logging.getLogger("dlrm_tvm").warning(
            "--emulate-amx: compiling %s without %s, which this CPU lacks (only the AMX tile "
            "instructions are emulated)", base.name, ", ".join(lacking))
    return dataclasses.replace(ti, emulate_amx=True)


def without_amx(ti: TargetInfo) -> TargetInfo:
    """``ti`` with every amx-* feature switched off (its bf16 GEMMs on vdpbf16ps): the same
    kernels bar the tile ones, e.g. to compare the two accumulation orders."""
    spec = ti.tvm_dict()
    amx = [f for f in ISA_FEATURES if f.startswith("amx-")]
    spec["mattr"] = [m for m in spec.get("mattr", []) if m.lstrip("+-") not in amx]
    spec["mattr"] += [f"-{f}" for f in amx]
    return _resolve_spec(spec, ti.name)


def missing_cpu_flags(required: list[str] | tuple[str, ...],
                      flags: set[str] | None = None) -> list[str]:
    """The ``required`` /proc/cpuinfo flags the host (or ``flags``) lacks."""
    flags = host_cpu_flags() if flags is None else set(flags)
    if not flags:  # not Linux: cannot check, do not refuse
        return []
    return [f for f in required if f not in flags]


def describe_flags(flags: list[str] | tuple[str, ...]) -> str:
    """``avx512_vbmi2 (LLVM avx512vbmi2), gfni``: cpuinfo names, with LLVM's where they differ."""
    out = []
    for f in flags:
        llvm = CPUINFO_TO_LLVM.get(f)
        out.append(f"{f} (LLVM {llvm})" if llvm and llvm != f else f)
    return ", ".join(out)


def runnable_target(name: str, what: str = "run") -> TargetInfo:
    """``resolve_target(name)``, refused (ValueError naming the missing flags) if this CPU
    cannot execute code built for it: benchmarks run what they compile."""
    ti = resolve_target(name)
    missing = missing_cpu_flags(ti.required_cpu_flags)
    if missing:
        raise ValueError(f"cannot {what} target {name} here: this CPU lacks "
                         f"{describe_flags(missing)} (compile-only: use `dlrm-tvm compile`)")
    return ti


def target_signature(tvm_target) -> str:
    """What a tuning record is valid for: the LLVM mcpu and the features our kernels use."""
    from tvm.target import codegen

    mcpu = str(tvm_target.attrs.get("mcpu", "")) if tvm_target.attrs else ""
    feats = [f for f in KERNEL_FEATURES if codegen.target_has_features(f, tvm_target)]
    return f"{mcpu} +" + ",+".join(feats)


# --------------------------------------------------------------------------- the AMX permission
# Whether this process may execute AMX tile instructions: the Linux permission, asked with
# ``arch_prctl`` (pure ctypes). It lives here because it decides what the ``host`` target is
# (``host_target`` keeps the AMX features only where the request is granted); runtime/amx.py
# re-exports it for code about to run tile instructions. Nothing is asked at import.
#
# Linux (5.16 and later) keeps the 8 KB AMX tile-data state out of a process until it asks with
# ``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``; a tile instruction before that kills
# it with SIGILL. ``request_amx`` asks once (the grant covers every thread) and raises
# ``AmxUnavailable`` with the reason when refused (no AMX, a kernel before 5.16, a sandbox, a
# sigaltstack too small for the AMX state); ``supported_xfeatures`` reads
# ``ARCH_GET_XCOMP_SUPP``.

# The kernel's numbers (arch/x86/entry/syscalls/syscall_64.tbl, arch/x86/include/uapi/asm/prctl.h,
# arch/x86/include/asm/fpu/types.h)
SYS_ARCH_PRCTL = 158  # x86-64
ARCH_GET_XCOMP_SUPP = 0x1021
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18

log = logging.getLogger(__name__)


class AmxUnavailable(RuntimeError):
    """This process may not execute AMX tile instructions; the message says why and what to
    do instead (exit status 2, like any artifact this host cannot run). ``errno``: the kernel's
    answer, where it gave one."""

    exit_code = 2

    def __init__(self, message: str, err: int | None = None):
        super().__init__(message)
        self.errno = err


_granted = False


def _libc_syscall():
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.syscall
    fn.restype = ctypes.c_long
    return fn


def _caller(syscall):
    if platform.machine() not in ("x86_64", "AMD64"):
        raise AmxUnavailable(f"AMX needs an x86-64 CPU; this machine is {platform.machine()}")
    return syscall or _libc_syscall()


_L = ctypes.c_long  # syscall(2) takes longs: no 32-bit variadic ints


def supported_xfeatures(syscall=None) -> int:
    """The mask of extended CPU states (XFEATURE bits) the kernel can give this process:
    ``arch_prctl(ARCH_GET_XCOMP_SUPP)``; bit ``XFEATURE_XTILEDATA`` (18) is AMX tile data.
    Raises ``AmxUnavailable`` when the kernel cannot answer (EINVAL: older than 5.16).
    ``syscall``: a stand-in for libc's ``syscall`` (tests)."""
    call = _caller(syscall)
    mask = ctypes.c_uint64(0)
    ctypes.set_errno(0)
    if call(_L(SYS_ARCH_PRCTL), _L(ARCH_GET_XCOMP_SUPP), ctypes.byref(mask)) != 0:
        err = ctypes.get_errno() or errno.EINVAL
        raise AmxUnavailable(_why(err, "ARCH_GET_XCOMP_SUPP", query=True), err)
    return mask.value


_emulated = False  # the tile instructions run on the software executor: never ask


def set_emulated() -> None:
    """From now on this process runs its tile instructions on the software executor
    (``runtime.amx.enable_emulation``, ``--emulate-amx``): ``request_amx`` and
    ``host_amx_refusal`` never ask the kernel, so no tile instruction runs natively (on an
    AMX CPU without the grant each one traps to the executor)."""
    global _emulated
    _emulated = True


def emulated() -> bool:
    return _emulated


def request_amx(syscall=None) -> None:
    """Ask the kernel for the AMX tile-data state once; raise ``AmxUnavailable`` if refused.
    Under ``set_emulated``: nothing to ask. ``syscall``: a stand-in for libc's ``syscall``
    (tests)."""
    global _granted
    if (_granted or _emulated) and syscall is None:
        return
    call = _caller(syscall)
    ctypes.set_errno(0)
    if call(_L(SYS_ARCH_PRCTL), _L(ARCH_REQ_XCOMP_PERM), _L(XFEATURE_XTILEDATA)) != 0:
        err = ctypes.get_errno() or errno.EINVAL
        raise AmxUnavailable(_why(err, "ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA") + _ADVICE, err)
    mask = ctypes.c_uint64(0)
    rc = call(_L(SYS_ARCH_PRCTL), _L(ARCH_GET_XCOMP_PERM), ctypes.byref(mask))
    if rc != 0 or not mask.value & (1 << XFEATURE_XTILEDATA):
        raise AmxUnavailable("the kernel accepted the AMX request but does not report the tile-"
                             f"data permission (mask {mask.value:#x}); AMX kernels cannot run")
    if syscall is None:
        _granted = True


_ADVICE = ("Compile for a target without AMX instead (e.g. `dlrm-tvm compile --target "
           "cooperlake`, whose bf16 GEMMs use vdpbf16ps).")


def _why(err: int, call: str, query: bool = False) -> str:
    what = ("did not say which extended CPU states it supports" if query else
            "refused this process the AMX tile-data state")
    base = (f"the Linux kernel {what} (arch_prctl({call}): {os.strerror(err)}; kernel "
            f"{platform.release()}). ")
    if err == errno.EOPNOTSUPP:
        why = "This CPU (or the virtual machine's view of it) has no AMX. "
    elif err == errno.EINVAL:
        why = ("Either this CPU has no AMX (check the amx_tile flag in /proc/cpuinfo) or the "
               "kernel is older than 5.16 and cannot hand AMX to processes. ")
    elif err in (errno.EPERM, errno.ENOSYS):
        why = "A sandbox or seccomp filter blocks the request. "
    elif err == errno.ENOSPC:
        why = ("A thread of this process has an alternate signal stack (sigaltstack) too small "
               "for a signal frame holding the 8 KB AMX state. Size alternate signal stacks "
               "from getauxval(AT_MINSIGSTKSZ) rather than the constant MINSIGSTKSZ/SIGSTKSZ, "
               "or ask for AMX before such a stack is installed (the faulthandler of older "
               "Pythons, which pytest enables, installs one: try pytest -p no:faulthandler). ")
    else:
        why = ""
    return base + why


_host_answer: tuple[str | None] | None = None  # (None,) granted, (why,) refused; once asked


def host_amx_refusal() -> str | None:
    """None if this process may execute AMX tile instructions, else why not. Asks the kernel on
    the first call only (the answer holds for the process); a refusal is logged once, as a
    warning, since it changes what the host target compiles to. Callers ask only on a CPU that
    reports amx_tile."""
    global _host_answer
    if _emulated:
        return None
    if _host_answer is None:
        try:
            request_amx()
            _host_answer = (None,)
        except AmxUnavailable as e:
            why = str(e).removesuffix(_ADVICE).strip()
            _host_answer = (why,)
            log.warning("AMX left out of the host target (its bf16 GEMMs use vdpbf16ps where "
                        "the CPU has avx512_bf16): %s", why)
    return _host_answer[0]
