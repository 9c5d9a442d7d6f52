"""Target syntax and CPU features, without compiling: TVM target strings and dicts resolve;
artifacts record every ISA feature the mcpu implies; the load check compares all of them with
(fake) /proc/cpuinfo flag sets; ``host`` keeps every feature the host reports."""

from __future__ import annotations

import json

import pytest

from dlrm_tvm.artifact import Artifact, ArtifactError, check_host_can_run, required_cpu_flags
from dlrm_tvm.targets import (
    ISA_FEATURES,
    NAMED_TARGETS,
    closest_cpu,
    host_target,
    missing_cpu_flags,
    parse_cpuinfo_flags,
    resolve_target,
)

# What the kernel prints on a Cascade Lake (Xeon Gold 6248; non-ISA flags trimmed).
CASCADELAKE_FLAGS = set("""fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36
clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc pni pclmulqdq ssse3 fma
cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch
fsgsbase bmi1 hle avx2 smep bmi2 erms invpcid rtm mpx avx512f avx512dq rdseed adx smap clflushopt
clwb avx512cd avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves pku ospke avx512_vnni""".split())


def flags_of(name: str) -> set[str]:
    return set(resolve_target(name).required_cpu_flags) | {"fpu", "cx8", "cmov", "mmx", "fxsr"}


@pytest.mark.parametrize("name", ["emeraldrapids", "graniterapids"])
def test_new_rapids_targets_have_amx_and_bf16(name):
    t = resolve_target(name)
    assert t.mcpu == NAMED_TARGETS[name] == name
    for f in ("amx-tile", "amx-bf16", "avx512bf16", "avx512fp16", "avx512vnni"):
        assert f in t.features
    assert {"amx_tile", "amx_bf16", "avx512_bf16"} <= set(t.required_cpu_flags)
    assert t.tvm_target().attrs["mcpu"] == name


@pytest.mark.parametrize("spec", [
    "llvm -mcpu=sapphirerapids",
    "llvm -mtriple=x86_64-linux-gnu -mcpu=sapphirerapids",
    '{"kind": "llvm", "mcpu": "sapphirerapids"}',
    {"kind": "llvm", "mcpu": "sapphirerapids"},
    {"kind": "llvm", "mcpu": "sapphirerapids", "mtriple": "x86_64-linux-gnu"},
])
def test_tvm_target_strings_and_dicts_resolve(spec):
    t = resolve_target(spec)
    assert t.mcpu == "sapphirerapids"
    assert t.features == resolve_target("sapphirerapids").features
    tt = t.tvm_target()
    assert str(tt.kind) == "llvm" and tt.attrs["mcpu"] == "sapphirerapids"
    if "mtriple" in str(spec):
        assert t.mtriple == tt.attrs["mtriple"] == "x86_64-linux-gnu"
    # the recorded name resolves again to the same target
    assert resolve_target(t.name).tvm_dict() == t.tvm_dict()


def test_target_string_mattr_switches_features():
    t = resolve_target("llvm -mcpu=sapphirerapids -mattr=-amx-tile,-avx512bf16 -num-cores=4")
    assert "amx-tile" not in t.features and "avx512bf16" not in t.features
    assert "avx512vnni" in t.features
    assert t.tvm_target().attrs["num-cores"] == 4
    assert resolve_target("llvm -mcpu=cascadelake -mattr=+gfni").features.count("gfni") == 1


@pytest.mark.parametrize("spec,match", [
    ("cuda -arch=sm_80", "kind 'cuda' is not supported"),
    ({"kind": "cuda"}, "kind 'cuda' is not supported"),
    ('{"kind": "c"}', "kind 'c' is not supported"),
    ("llvm -mcpu=icelake-servr", "icelake-servr.*not a CPU.*did you mean icelake-server"),
    ({"kind": "llvm", "mcpu": "pentium-pro"}, "not a CPU"),
    ("llvm", "names no mcpu"),
    ("llvm -mtriple=aarch64-linux-gnu -mcpu=icelake-server", "not x86-64"),
    ("llvm -mcpu=icelake-server -bogus=1", "bogus"),
    ("{not json", "not valid JSON"),
    ("pentium-pro", "unknown target.*llvm -mcpu="),
])
def test_bad_targets_are_refused_clearly(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_target(spec)


def test_icelake_artifact_records_all_features_and_is_refused_on_cascadelake(tmp_path):
    t = resolve_target("icelake-server")
    for f in ("avx512vbmi2", "gfni", "avx512vpopcntdq", "avx512vbmi", "vaes", "vpclmulqdq",
              "avx512bitalg", "avx512ifma", "sha"):
        assert f in t.features
    meta = {"target": t.to_dict()}
    meta = json.loads(json.dumps(meta))  # as written to artifact.json
    art = Artifact(path=tmp_path, meta=meta)
    with pytest.raises(ArtifactError) as e:
        check_host_can_run(art, CASCADELAKE_FLAGS)
    msg = str(e.value)
    for flag in ("avx512_vbmi2", "gfni", "avx512_vpopcntdq", "avx512vbmi", "vaes",
                 "vpclmulqdq", "avx512_bitalg", "sha_ni"):
        assert flag in msg
    assert "LLVM avx512vbmi2" in msg and "icelake-server" in msg
    assert "avx512f," not in msg  # what Cascade Lake has is not named
    check_host_can_run(Artifact(path=tmp_path, meta={"target": resolve_target(
        "cascadelake").to_dict()}), CASCADELAKE_FLAGS)  # its own artifact is accepted
    check_host_can_run(art, flags_of("icelake-server"))


def test_old_artifact_with_few_recorded_flags_is_checked_in_full(tmp_path):
    old = {"target": {"name": "icelake-server", "mcpu": "icelake-server",
                      "features": ["avx2", "fma", "avx512f", "avx512vnni"],
                      "required_cpu_flags": ["avx2", "fma", "avx512f", "avx512_vnni"]}}
    assert "gfni" in required_cpu_flags(old)
    with pytest.raises(ArtifactError, match="gfni"):
        check_host_can_run(Artifact(path=tmp_path, meta=old), CASCADELAKE_FLAGS)


def test_mapping_table_names_cpuinfo_flags():
    assert ISA_FEATURES["avx512bf16"] == "avx512_bf16"
    assert ISA_FEATURES["amx-tile"] == "amx_tile"
    assert ISA_FEATURES["sse4.1"] == "sse4_1" and ISA_FEATURES["sse3"] == "pni"
    assert ISA_FEATURES["bmi"] == "bmi1" and ISA_FEATURES["sha"] == "sha_ni"
    assert len(set(ISA_FEATURES.values())) == len(ISA_FEATURES)
    assert parse_cpuinfo_flags("processor\t: 0\nflags\t\t: fpu avx2 amx_tile\n") == {
        "fpu", "avx2", "amx_tile"}
    assert missing_cpu_flags(["avx2", "gfni"], {"avx2"}) == ["gfni"]
    assert missing_cpu_flags(["gfni"], set()) == []  # no cpuinfo: cannot check, do not refuse


def test_host_missing_one_flag_keeps_the_others():
    flags = flags_of("sapphirerapids") - {"avx512_vnni"}
    t = host_target(flags, system_cpu="sapphirerapids")
    assert t.mcpu == "sapphirerapids"  # not x86-64-v3
    assert "-avx512vnni" in t.mattr
    assert "avx512vnni" not in t.features
    for f in ("avx512bf16", "amx-tile", "amx-bf16", "avx512fp16", "gfni", "avx512vbmi2"):
        assert f in t.features
    assert missing_cpu_flags(t.required_cpu_flags, flags) == []
    assert not __import__("tvm").target.codegen.target_has_features("avx512vnni", t.tvm_target())


def test_host_exact_cpu_has_no_switches():
    t = host_target(flags_of("icelake-server"), system_cpu="icelake-server")
    assert t.mcpu == "icelake-server" and t.mattr == ()
    assert t.features == resolve_target("icelake-server").features


def test_host_extra_flags_are_switched_on():
    t = host_target(CASCADELAKE_FLAGS | {"gfni", "avx512_bf16"}, system_cpu="cascadelake")
    assert t.mcpu == "cascadelake"
    assert {"+gfni", "+avx512bf16"} <= set(t.mattr)
    assert "gfni" in t.features and "avx512bf16" in t.features


def test_host_unknown_to_llvm_uses_closest_cpu_plus_features():
    flags = flags_of("sapphirerapids") - {"amx_tile", "amx_int8", "amx_bf16"}
    for system_cpu in ("generic", "futurelake"):
        t = host_target(flags, system_cpu=system_cpu)
        assert t.mcpu not in ("generic", "futurelake", "x86-64", "x86-64-v3")
        assert set(resolve_target({"kind": "llvm", "mcpu": t.mcpu}).features) <= set(t.features)
        assert "avx512bf16" in t.features and "avx512fp16" in t.features
        assert "amx-tile" not in t.features
        assert set(t.required_cpu_flags) <= flags
    host_feats = set(resolve_target("cascadelake").features)
    assert closest_cpu(host_feats, "GenuineIntel") == "cascadelake"


def test_host_resolves_to_what_this_cpu_reports():
    t = resolve_target("host")
    assert t.name == "host"
    assert missing_cpu_flags(t.required_cpu_flags) == []
    assert t.tvm_target().attrs["mcpu"] == t.mcpu
