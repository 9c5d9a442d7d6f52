"""Named Xeon (and Zen) targets, the host, and the CPU features a compiled artifact needs.

A target is a TVM LLVM target built from an ``mcpu``. What our schedules may use is read from
the target itself (``target_has_features``), never from the build host, so cross-compiling for
``cooperlake`` on an AVX2 machine selects the same rules as compiling on a Cooper Lake.
"""

from __future__ import annotations

from dataclasses import dataclass

# name -> LLVM mcpu
NAMED_TARGETS: dict[str, str] = {
    "skylake-avx512": "skylake-avx512",
    "cascadelake": "cascadelake",
    "icelake-server": "icelake-server",
    "cooperlake": "cooperlake",
    "sapphirerapids": "sapphirerapids",
    "znver3": "znver3",
    "znver4": "znver4",
    "znver5": "znver5",
    "x86-64-v3": "x86-64-v3",
}

# LLVM feature name -> /proc/cpuinfo flag. The features our kernels can emit instructions for.
FEATURE_FLAGS: dict[str, str] = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512dq": "avx512dq",
    "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16",
    "amx-bf16": "amx_bf16",
}


@dataclass(frozen=True)
class TargetInfo:
    name: str
    mcpu: str
    features: tuple[str, ...]  # LLVM names of FEATURE_FLAGS present in the target

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
        return tuple(FEATURE_FLAGS[f] for f in self.features)

    def tvm_target(self):  # -> tvm.target.Target
        import tvm

        return tvm.target.Target({"kind": "llvm", "mcpu": self.mcpu})

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "mcpu": self.mcpu,
            "features": list(self.features),
            "required_cpu_flags": list(self.required_cpu_flags),
        }


def host_cpu_flags() -> set[str]:
    """The host's CPU flags as the kernel reports them (what it will let us execute)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_target(name: str = "host") -> TargetInfo:
    """Resolve ``host`` or a named CPU to its LLVM mcpu and feature set."""
    import tvm
    from tvm.target import codegen

    if name == "host":
        mcpu = str(codegen.llvm_get_system_cpu())
    elif name in NAMED_TARGETS:
        mcpu = NAMED_TARGETS[name]
    else:
        raise ValueError(
            f"unknown target {name!r}; choose host or one of: {', '.join(NAMED_TARGETS)}"
        )
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    feats = tuple(f for f in FEATURE_FLAGS if bool(codegen.target_has_features(f, target)))
    if name == "host":
        # A hypervisor may hide features the CPU model implies: trust what the OS reports.
        flags = host_cpu_flags()
        missing = [f for f in feats if FEATURE_FLAGS[f] not in flags]
        if flags and missing:
            for fallback in ("x86-64-v3", "x86-64-v2", "x86-64"):
                t = tvm.target.Target({"kind": "llvm", "mcpu": fallback})
                fb = tuple(f for f in FEATURE_FLAGS if bool(codegen.target_has_features(f, t)))
                if all(FEATURE_FLAGS[f] in flags for f in fb):
                    mcpu, feats = fallback, fb
                    break
    return TargetInfo(name=name, mcpu=mcpu, features=feats)


def missing_cpu_flags(required: list[str] | tuple[str, ...]) -> list[str]:
    flags = host_cpu_flags()
    if not flags:  # not Linux: cannot check, do not refuse
        return []
    return [f for f in required if f not in flags]


def runnable_target(name: str, what: str = "run") -> TargetInfo:
    """``resolve_target(name)``, refused (ValueError naming the missing flags) if this CPU
    cannot execute code built for it: benchmarks run what they compile."""
    ti = resolve_target(name)
    missing = missing_cpu_flags(ti.required_cpu_flags)
    if missing:
        raise ValueError(f"cannot {what} target {name} here: this CPU lacks "
                         f"{', '.join(missing)} (compile-only: use `dlrm-tvm compile`)")
    return ti


def target_signature(tvm_target) -> str:
    """What a tuning record is valid for: the LLVM mcpu and the features our kernels use."""
    from tvm.target import codegen

    mcpu = str(tvm_target.attrs.get("mcpu", "")) if tvm_target.attrs else ""
    feats = [f for f in FEATURE_FLAGS if codegen.target_has_features(f, tvm_target)]
    return f"{mcpu} +" + ",+".join(feats)
