"""`dlrm-tvm kernels list` reports what `dlrm-tvm compile` chooses: the same graph (precision,
optimizer, batch size) and the same selection (--rule, --tuning)."""

from __future__ import annotations

import json

import pytest

from dlrm_tvm import cli
from dlrm_tvm.targets import host_cpu_flags

HOST_HAS_BF16 = "avx512_bf16" in host_cpu_flags()


def _list(tmp_path, *flags: str) -> dict:
    out = tmp_path / "list.json"
    assert cli.main(["kernels", "list", *flags, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def _tuning_record(tmp_path) -> str:
    """A record for cooperlake that retiles the 128x368x64 packed GEMM of tiny's bf16 step."""
    from dlrm_tvm.targets import resolve_target, target_signature

    p = tmp_path / "tuning.json"
    p.write_text(json.dumps({
        "format": "dlrm-tvm-tuning", "version": 1,
        "target_signature": target_signature(resolve_target("cooperlake").tvm_target()),
        "kernels": {"128x368x64_mk": {"params": {"mi": 4, "nj": 32, "panel_outer": True}}}}))
    return str(p)


@pytest.mark.skipif(not HOST_HAS_BF16, reason="this CPU has no avx512_bf16: the host's rule "
                    "list has no bf16 microkernel rule")
def test_bf16_config_lists_the_bf16_microkernel_on_this_host(tmp_path):
    r = _list(tmp_path, "--config", "tiny", "--precision", "bf16")
    assert r["precision"] == "bf16"
    chosen = {k["chosen"] for k in r["kernels"]}
    assert "gemm_vnni_avx512_dpbf16ps" in chosen
    assert "gemm_packed_fp32" not in chosen  # the fp32 step's rule: not this config's


def test_rwsadagrad_config_lists_the_adagrad_update_kernels(tmp_path):
    r = _list(tmp_path, "--config", "tiny", "--optimizer", "rwsadagrad",
              "--mini-batch-size", "64")
    by_name = {k["kernel"]: k for k in r["kernels"]}
    assert r["optimizer"] == "rwsadagrad" and r["batch_size"] == 64
    assert any(k["op"] == "adagrad_update" for k in r["kernels"])
    assert not any(k["op"] == "sgd_update" for k in r["kernels"])
    assert "embedding_bag_update_rwsadagrad_fp32" in by_name
    assert "sigmoid_64" in by_name  # the batch size given, not the preset's 128
    for k in r["kernels"]:
        assert k["applicable"][0] == k["chosen"]


@pytest.mark.parametrize("flags", [
    ("--config", "tiny", "--optimizer", "rwsadagrad", "--mini-batch-size", "64"),
    ("--config", "tiny", "--precision", "bf16", "--target", "cooperlake", "--tuning", "REC"),
    ("--config", "tiny", "--rule", "gemm_tiled_fp32"),
], ids=["rwsadagrad-b64", "bf16-cooperlake-tuned", "preferred-rule"])
def test_list_equals_the_schedules_compile_records(tmp_path, flags):
    flags = tuple(_tuning_record(tmp_path) if f == "REC" else f for f in flags)
    art = tmp_path / "art"
    assert cli.main(["compile", *flags, "--out", str(art)]) == 0
    recorded = json.loads((art / "artifact.json").read_text())["schedules"]
    listed = _list(tmp_path, *flags)["kernels"]
    assert {k["kernel"]: k["chosen"] for k in listed} == \
        {name: v["rule"] for name, v in recorded.items()}
    assert {k["kernel"]: k["params"] for k in listed} == \
        {name: v.get("params", {}) for name, v in recorded.items()}
    if "--tuning" in flags:
        assert any(k["params"].get("tuned") for k in listed)
    if "--rule" in flags:
        assert any(k["chosen"] == "gemm_tiled_fp32" for k in listed)
