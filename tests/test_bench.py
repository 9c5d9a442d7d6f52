"""The benchmark command runs end to end and writes its table as JSON (not a speed test)."""

from __future__ import annotations

import json

from dlrm_tvm import cli
from dlrm_tvm.bench.peaks import fp32_peak_gflops, gather_bandwidth_gbs
from dlrm_tvm.targets import resolve_target


def test_bench_tiny_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--config", "tiny", "--steps", "2", "--warmup", "1",
                     "--precisions", "fp32,bf16", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    names = [row["name"] for row in r["rows"]]
    assert names == ["dlrm-tvm fp32", "dlrm-tvm bf16", "torch eager fp32",
                     "torch bf16 autocast", "torch.compile bf16"]
    for row in r["rows"]:
        assert row["ms_per_step"] > 0 and 0 < row["frac_fp32_peak"] < 1.5
        assert 0 < row["frac_peak"] <= row["frac_fp32_peak"] + 1e-9  # bf16: the higher peak
    assert r["compile_s"]["torch.compile bf16"] > 0  # timed apart from the steps
    assert any("torch.compile bf16" in line for line in r["speedups"])
    assert r["floor_bf16_ms"] <= r["floor_ms"]
    for prec in ("fp32", "bf16"):
        assert {"embedding_forward", "dense_forward_backward", "dense_update",
                "embedding_update"} <= set(r["functions_ms"][prec])
        assert any(k.startswith("gemm_") for k in r["kernels_ms"][prec])
    assert r["floor_ms"] > 0
    assert "x dlrm-tvm" in capsys.readouterr().out


def test_peak_probes_measure_something():
    t = resolve_target("host").tvm_target()
    assert fp32_peak_gflops(t, threads=1, iters=200_000) > 1.0
    assert gather_bandwidth_gbs(t, rows=10_000, dim=16, lookups=64 * 1000) > 0.1


def test_kernel_gflop_from_names():
    """The per-kernel table rates GEMMs from their names (calls per step counted apart: the
    DCN's 2048x3456x512 kernel runs 6 times a step, forward and backward)."""
    from dlrm_tvm.bench.step_bench import kernel_gflop

    assert kernel_gflop("gemm_vnni_fwd_2048x3456x512_none") == 2 * 2048 * 3456 * 512 / 1e9
    assert kernel_gflop("gemm_vnni_dw_3456x2048x512") == 2 * 3456 * 2048 * 512 / 1e9
    assert kernel_gflop("gemm_dx_128x1x64_relu_mask_bf16") == 2 * 128 * 64 / 1e9
    assert kernel_gflop("cross_fwd_2048x3456_bf16_last") is None
    assert kernel_gflop("pack_vnni_2048x3456") is None
