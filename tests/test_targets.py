"""Named targets: each resolves to the features that select the rules, and the training step
cross-compiles for every one of them on any host (compile-only: nothing runs)."""

from __future__ import annotations

import json

import pytest

from dlrm_tvm import cli
from dlrm_tvm.targets import NAMED_TARGETS, resolve_target

RAPIDS = {"sapphirerapids", "emeraldrapids", "graniterapids"}
EXPECT = {  # feature: targets that must have it / must not
    "avx512f": ({"skylake-avx512", "cascadelake", "icelake-server", "cooperlake", "znver4",
                 "znver5"} | RAPIDS, {"znver3", "x86-64-v3"}),
    "avx512bf16": ({"cooperlake", "znver4", "znver5"} | RAPIDS,
                   {"skylake-avx512", "cascadelake", "icelake-server", "znver3", "x86-64-v3"}),
    "avx512vnni": ({"cascadelake", "icelake-server", "cooperlake"} | RAPIDS,
                   {"skylake-avx512", "znver3"}),
    "amx-tile": (RAPIDS, {"cooperlake", "icelake-server", "znver4", "znver5"}),
    "amx-bf16": (RAPIDS, {"cooperlake", "znver5"}),
    "avx512vbmi2": ({"icelake-server", "znver4", "znver5"} | RAPIDS,
                    {"cascadelake", "cooperlake", "skylake-avx512"}),
    "amx-fp16": ({"graniterapids"}, {"sapphirerapids", "emeraldrapids"}),
}


@pytest.mark.parametrize("name", sorted(NAMED_TARGETS))
def test_named_target_features(name):
    t = resolve_target(name)
    for feat, (yes, no) in EXPECT.items():
        if name in yes:
            assert feat in t.features, f"{name} should have {feat}"
        if name in no:
            assert feat not in t.features, f"{name} should not have {feat}"
    assert t.lanes_fp32 == (16 if "avx512f" in t.features else 8)


def test_host_target_runs_here():
    from dlrm_tvm.targets import missing_cpu_flags

    t = resolve_target("host")
    assert missing_cpu_flags(t.required_cpu_flags) == []


def test_unknown_target_is_refused():
    with pytest.raises(ValueError, match="unknown target"):
        resolve_target("pentium-pro")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NAMED_TARGETS))
def test_training_step_cross_compiles(name, tmp_path):
    out = tmp_path / name
    assert cli.main(["compile", "--config", "tiny", "--target", name, "--out", str(out)]) == 0
    meta = json.loads((out / "artifact.json").read_text())
    t = resolve_target(name)
    assert meta["target"]["required_cpu_flags"] == list(t.required_cpu_flags)
    assert (out / "module.so").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NAMED_TARGETS))
def test_bf16_step_uses_vdpbf16ps_exactly_where_the_target_has_it(name):
    import dataclasses

    from dlrm_tvm.config import PRESETS
    from dlrm_tvm.pipeline import compile_dlrm

    cfg = PRESETS["tiny"]
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, precision="bf16"))
    t = resolve_target(name)
    res = compile_dlrm(cfg, t)
    asm = "".join(m.inspect_source("asm") for m in res.executable.mod.imports)
    rules = {v["rule"] for v in res.schedules.values()}
    micro = {"gemm_bf16_avx512_dpbf16ps", "gemm_vnni_avx512_dpbf16ps"}
    if "avx512bf16" in t.features:  # operands packed once, GEMMs on the microkernel
        assert "vdpbf16ps" in asm and "gemm_vnni_avx512_dpbf16ps" in rules
        assert any(v["op"] == "pack_vnni" for v in res.schedules.values())
    else:  # never handed the instruction (LLVM would abort): fp32-compute rules, plain layouts
        assert "vdpbf16ps" not in asm and not rules & micro
        assert not any(v["op"] in ("pack_vnni", "gemm_vnni") for v in res.schedules.values())


def test_artifact_for_a_richer_cpu_is_refused_here(tmp_path):
    from dlrm_tvm.artifact import ArtifactError, load_artifact
    from dlrm_tvm.targets import missing_cpu_flags

    need = resolve_target("sapphirerapids").required_cpu_flags
    lacking = missing_cpu_flags(need)
    if not lacking:
        pytest.skip("this host has every feature of sapphirerapids")
    out = tmp_path / "spr"
    assert cli.main(["compile", "--config", "tiny", "--target", "sapphirerapids", "--out",
                     str(out)]) == 0
    with pytest.raises(ArtifactError, match=lacking[0]):
        load_artifact(out)
