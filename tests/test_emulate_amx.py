"""``--emulate-amx``: code compiled for an AMX target runs here, its tile instructions on the
software executor (runtime/amx_emulator.py), on compile, train, eval, bench and kernels bench.

The runs are subprocesses: a process that asked Linux for AMX (this test session does, on an
AMX host) would run the tiles natively; a fresh one with --emulate-amx never asks, so each tile
instruction traps to the executor (#UD without AMX, the kernel's XFD trap with it) and is
counted. Small shapes: a trap per tile instruction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from dlrm_tvm import targets as amx_permission
from dlrm_tvm.artifact import ArtifactError, check_host_can_run, read_artifact

from dlrm_tvm.targets import emulated_target, resolve_target

# the demo model: tiny at dimension 32, most GEMMs at least one 32 x 32 x 32 block
DEMO = ["--config", "tiny", "--arch-sparse-feature-size", "32", "--arch-mlp-bot", "13-64-32",
        "--arch-mlp-top", "64-64-1", "--precision", "bf16"]
# a Zen 4's /proc/cpuinfo ISA flags: avx512_bf16, no avx512_fp16, no avx_vnni, no AMX
ZEN4 = {"sse", "sse2", "pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "abm", "movbe", "bmi1",
        "bmi2", "adx", "aes", "pclmulqdq", "sha_ni", "f16c", "fma", "avx", "avx2", "gfni",
        "vaes", "vpclmulqdq", "avx512f", "avx512cd", "avx512dq", "avx512bw", "avx512vl",
        "avx512ifma", "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bitalg",
        "avx512_vpopcntdq", "avx512_bf16"}
AVX2 = {"sse", "sse2", "pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "abm", "movbe", "bmi1",
        "bmi2", "fma", "avx", "avx2", "f16c"}


def _cli(*args, timeout=600):
    env = {**os.environ, "TVM_NUM_THREADS": "2"}
    env.pop("DLRM_TVM_TILE_UNIT", None)
    proc = subprocess.run([sys.executable, "-m", "dlrm_tvm", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def emulated_run(tmp_path_factory):
    """The demo run for sapphirerapids under --emulate-amx, and the same run on the host."""
    root = tmp_path_factory.mktemp("emu")
    common = [*DEMO, "--labels", "random", "--no-eval", "--steps", "5"]
    _cli("train", *common, "--target", "sapphirerapids", "--emulate-amx", "--out",
         str(root / "emu"))
    _cli("train", *common, "--out", str(root / "host"))
    return root


def test_train_for_sapphirerapids_runs_here_and_counts_its_tile_instructions(emulated_run):
    emu = json.loads((emulated_run / "emu" / "summary.json").read_text())
    host = json.loads((emulated_run / "host" / "summary.json").read_text())
    counts = emu["emulated_tile_instructions"]
    assert counts["tdpbf16ps"] > 0 and counts["tileloadd"] > 0 and counts["tilestored"] > 0
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert emu["target"]["name"] == "sapphirerapids" and emu["target"]["emulate_amx"]
    rules = {v["rule"] for v in emu["schedules"].values()}
    assert "gemm_vnni_amx_bf16" in rules
    assert "emulated_tile_instructions" not in host
    assert abs(emu["final_loss"] - host["final_loss"]) <= 1e-3, (emu["final_loss"],
                                                                 host["final_loss"])


def test_eval_bench_and_kernels_bench_emulate_too(emulated_run, tmp_path):
    _cli("eval", "--checkpoint", str(emulated_run / "emu"), "--out", str(tmp_path / "ev"),
         "--precision", "bf16", "--target", "sapphirerapids", "--emulate-amx")
    ev = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert ev["emulated_tile_instructions"]["tdpbf16ps"] > 0
    out = _cli("bench", *DEMO, "--precisions", "bf16", "--no-torch", "--steps", "2",
               "--warmup", "1", "--target", "sapphirerapids", "--emulate-amx", "--json",
               str(tmp_path / "b.json")).stdout
    assert "emulated tile instructions:" in out
    assert json.loads((tmp_path / "b.json").read_text())["emulated_tile_instructions"]["total"]
    _cli("kernels", "bench", "--config", "tiny", "--precision", "bf16", "--no-torch",
         "--target", "sapphirerapids", "--emulate-amx", "--json", str(tmp_path / "k.json"))
    k = json.loads((tmp_path / "k.json").read_text())
    assert k["emulated_tile_instructions"]["tdpbf16ps"] > 0
    assert k["target"] == "sapphirerapids (AMX emulated)" and k["amx_bf16_peak_gflops"] is None
    assert any(r["rule"] == "gemm_vnni_amx_bf16" for r in k["rows"])


def test_compile_then_train_the_artifact_under_emulation(tmp_path):
    _cli("compile", *DEMO, "--target", "sapphirerapids", "--emulate-amx", "--out",
         str(tmp_path / "art"))
    meta = json.loads((tmp_path / "art" / "artifact.json").read_text())
    assert meta["target"]["emulate_amx"] is True
    _cli("train", "--artifact", str(tmp_path / "art"), "--emulate-amx", "--steps", "2",
         "--no-eval", "--out", str(tmp_path / "run"))
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["emulated_tile_instructions"]["tdpbf16ps"] > 0


def test_emulated_target_leaves_out_what_the_host_lacks_but_keeps_amx():
    spr = emulated_target("sapphirerapids", ZEN4)
    assert spr.emulate_amx and {"amx-tile", "amx-bf16"} <= set(spr.features)
    assert "avx512fp16" not in spr.features and "avxvnni" not in spr.features
    assert "avx512bf16" in spr.features  # what Zen 4 has stays
    assert not set(spr.required_cpu_flags) - ZEN4
    plain = resolve_target("sapphirerapids")
    assert "avx512fp16" in plain.features and not plain.emulate_amx
    old = emulated_target("sapphirerapids", AVX2)  # AVX2 only: tiles and AVX2, no AVX-512
    assert not [f for f in old.features if f.startswith("avx512")]
    assert {"amx-tile", "amx-bf16"} <= set(old.features)
    host = emulated_target("host", ZEN4)
    assert {"amx-tile", "amx-bf16"} <= set(host.features) and "avx512bf16" in host.features


def test_avx2_only_build_has_tiles_and_no_avx512():
    """For a CPU with AVX2 only, the emulated build's AMX GEMM has tile instructions and no
    AVX-512 register: such a host runs it, tiles in software."""
    import tvm
    from dlrm_tvm.graphs import ops
    from dlrm_tvm.schedules import rules_for, schedule_func

    tgt = emulated_target("sapphirerapids", AVX2).tvm_target()
    sch, rule = schedule_func(ops.gemm_vnni(64, 96, 64, "mk", "bias_relu", "bfloat16"), tgt,
                              rules_for(tgt))
    assert rule == "gemm_vnni_amx_bf16"
    f = sch.with_attr("global_symbol", "main")
    asm = tvm.tirx.build(tvm.IRModule({"main": f}), target=tgt).inspect_source("s")
    assert "tdpbf16ps" in asm and "%zmm" not in asm and "{%k" not in asm


def test_an_artifact_needing_more_than_amx_is_refused_naming_it(tmp_path, monkeypatch):
    """Under emulation the AMX flags count as present, nothing else: a full sapphirerapids
    artifact on a Zen 4 is refused, naming avx512_fp16 and avx_vnni but no amx flag; without
    emulation the AMX flags are named too, with the --emulate-amx hint."""
    _cli("compile", "--config", "tiny", "--precision", "bf16", "--target", "sapphirerapids",
         "--out", str(tmp_path / "spr"))
    art = read_artifact(tmp_path / "spr")
    with pytest.raises(ArtifactError) as e:
        check_host_can_run(art, ZEN4)
    assert "amx_tile" in str(e.value) and "avx512_fp16" in str(e.value)
    monkeypatch.setattr(amx_permission, "_emulated", True)
    with pytest.raises(ArtifactError) as e:
        check_host_can_run(art, ZEN4)
    msg = str(e.value)
    assert "avx512_fp16" in msg and "avx_vnni" in msg and "amx_" not in msg.split("lacks:")[1] \
        .split(".")[0], msg
    check_host_can_run(art, ZEN4 | {"avx512_fp16", "avx_vnni"})  # only AMX missing: runs


def test_emulate_amx_with_ranks_is_refused_with_the_way(capsys):
    from dlrm_tvm import cli

    assert cli.main(["bench", "--config", "tiny", "--ranks", "1", "--emulate-amx"]) == 2
    assert "mpiexec -n N dlrm-tvm train --emulate-amx" in capsys.readouterr().err
