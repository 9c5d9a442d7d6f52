"""`dlrm-tvm kernels list|bench`: the schedule experimenter's front door."""

from __future__ import annotations

import json

from dlrm_tvm import cli


def test_kernels_list_shows_chosen_rule_per_kernel(tmp_path, capsys):
    out = tmp_path / "k.json"
    assert cli.main(["kernels", "list", "--config", "tiny", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    by_op = {k["op"]: k for k in r["kernels"]}
    assert by_op["embedding_bag_fwd"]["chosen"] == "embedding_bag_balanced_prefetch"
    for k in r["kernels"]:
        assert k["chosen"] == k["applicable"][0]
        assert "fallback" in k["applicable"]  # every list ends in the rule that takes anything
    assert r["rule_order"][-1] == "fallback"
    assert "gemm_packed_fp32" in capsys.readouterr().out


def test_kernels_bench_checks_and_times_candidates(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = cli.main(["kernels", "bench", "--op", "gemm", "--shape", "64,40,48", "--epilogue",
                   "bias_relu", "--rule", "gemm_packed_fp32", "--rule", "gemm_tiled_fp32",
                   "--rule", "fallback", "--reps", "3", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    rows = {row["name"]: row for row in r["rows"]}
    for name in ("gemm_packed_fp32", "gemm_tiled_fp32", "fallback"):
        assert rows[name]["status"] == "ok" and rows[name]["rel_err"] < 1e-5
        assert rows[name]["gflops"] > 0
    assert r["fp32_peak_gflops"] > 1


def test_kernels_bench_rejects_bad_shape(capsys):
    assert cli.main(["kernels", "bench", "--shape", "64,40"]) == 2
    assert "M,K,N" in capsys.readouterr().err


def test_kernels_bench_bf16_operands(tmp_path):
    out = tmp_path / "b.json"
    rc = cli.main(["kernels", "bench", "--shape", "32,64,48", "--dtype", "bf16", "--reps", "2",
                   "--no-torch", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["dtype"] == "bfloat16"
    ok = [row for row in r["rows"] if row["status"] == "ok"]
    assert ok, "some rule must compute the bf16 GEMM on any host"


def test_kernels_bench_sweeps_every_gemm_of_a_config(tmp_path):
    out = tmp_path / "s.json"
    assert cli.main(["kernels", "bench", "--config", "tiny", "--reps", "2", "--no-torch",
                     "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    kinds = {row["kernel"].split("_")[1] for row in r["rows"]}
    assert kinds == {"fwd", "dx", "dw"}
    assert all(row["status"] == "ok" for row in r["rows"])


def test_kernels_bench_embedding_forward(tmp_path, capsys):
    """Small table, both distributions: every variant checked, the plain gather and torch."""
    out = tmp_path / "e.json"
    rc = cli.main(["kernels", "bench", "--op", "embedding_bag_fwd", "--shape", "5000,16,8",
                   "--batch", "256", "--reps", "3", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert [row["dist"] for row in r["rows"]] == ["uniform", "zipf"]
    for row in r["rows"]:
        assert row["gather_gbs"] > 0 and row["nnz"] == 256 * 8
        assert set(row["variants"]) == {"embedding_bag_balanced_prefetch",
                                        "embedding_bag_parallel_bags"}
        assert all(v["status"] == "ok" and v["ms"] > 0 for v in row["variants"].values())
    # Zipf concentrates lookups on few rows
    assert r["rows"][1]["distinct_rows"] < r["rows"][0]["distinct_rows"] / 2
    assert "plain gather" in capsys.readouterr().out


def test_kernels_bench_embedding_update_adagrad_bf16(tmp_path):
    out = tmp_path / "u.json"
    rc = cli.main(["kernels", "bench", "--op", "embedding_bag_update", "--shape", "3000,8,4",
                   "--batch", "512", "--optimizer", "rwsadagrad", "--dtype", "bf16",
                   "--dist", "zipf", "--reps", "3", "--json", str(out)])
    assert rc == 0
    (row,) = json.loads(out.read_text())["rows"]
    v = row["variants"]["embedding_update_bucketed"]
    assert v["status"] == "ok" and v["err"] < 1e-5
    assert row["torch"]["update_ms"] > 0


def test_kernels_bench_embedding_rejects_bad_shape(capsys):
    assert cli.main(["kernels", "bench", "--op", "embedding_bag_fwd", "--shape", "10,4"]) == 2
    assert "ROWS,DIM,LOOKUPS" in capsys.readouterr().err


def test_kernels_bench_embedding_forward_bf16_tables(tmp_path):
    """bf16 tables: the forward takes the high half only (it was once handed both halves)."""
    out = tmp_path / "f.json"
    rc = cli.main(["kernels", "bench", "--op", "embedding_bag_fwd", "--shape", "3000,16,4",
                   "--batch", "256", "--dtype", "bf16", "--dist", "uniform", "--reps", "3",
                   "--no-torch", "--json", str(out)])
    assert rc == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert all(v["status"] == "ok" for v in row["variants"].values())


def test_kernels_list_follows_the_configs_precision(tmp_path):
    """A bf16 config lists the bf16 step's kernels (packs and packed GEMMs where the host has
    avx512_bf16), not the fp32 ones."""
    from dlrm_tvm.targets import host_cpu_flags

    out = tmp_path / "k.json"
    assert cli.main(["kernels", "list", "--config", "tiny", "--precision", "bf16", "--json",
                     str(out)]) == 0
    ops_ = {k["op"] for k in json.loads(out.read_text())["kernels"]}
    assert "split_sgd_update" in ops_
    assert ("gemm_vnni" in ops_) == ("avx512_bf16" in host_cpu_flags())


def _record(tmp_path, **over):
    from dlrm_tvm.targets import resolve_target, target_signature

    rec = {"format": "dlrm-tvm-tuning", "version": 1,
           "target_signature": target_signature(resolve_target("cooperlake").tvm_target()),
           "kernels": {"128x64x64_mk": {"params": {"mi": 4, "nj": 16, "panel_outer": True}}}}
    rec.update(over)
    p = tmp_path / "t.json"
    p.write_text(json.dumps(rec))
    return p


def test_tuning_record_is_validated_and_target_checked(tmp_path, capsys):
    import pytest

    from dlrm_tvm.config import ConfigError
    from dlrm_tvm.graphs import ops
    from dlrm_tvm.kernels import read_tuning
    from dlrm_tvm.schedules import rules_for, schedule_func
    from dlrm_tvm.targets import resolve_target

    cpx = resolve_target("cooperlake").tvm_target()
    rec = read_tuning(_record(tmp_path))
    record: dict = {}
    schedule_func(ops.gemm_vnni(128, 64, 64, "mk"), cpx, rules_for(cpx, tuning=rec), record)
    assert record["mi"] == 4 and record["nj"] == 16 and record["tuned"]
    with pytest.raises(ValueError, match="made for"):  # a record for another target
        rules_for(resolve_target("znver4").tvm_target(), tuning=rec)
    bad = tmp_path / "bad.json"
    for text in ("{not json", json.dumps({"format": "x"}),
                 json.dumps({"format": "dlrm-tvm-tuning", "target_signature": "",
                             "kernels": {"k": {"params": {"mi": -1, "nj": 16}}}})):
        bad.write_text(text)
        with pytest.raises(ConfigError):
            read_tuning(bad)
    # on the command line: a clear error, no traceback
    assert cli.main(["compile", "--config", "tiny", "--tuning", str(bad), "--out",
                     str(tmp_path / "a")]) == 2
    assert "tuning record" in capsys.readouterr().err
    assert cli.main(["kernels", "tune", "--config", "tiny"]) == 2  # fp32: nothing to tune
    assert "--precision bf16" in capsys.readouterr().err


def test_compile_records_tuned_tiles_in_the_artifact(tmp_path):
    out = tmp_path / "art"
    rec = _record(tmp_path, kernels={"128x368x64_mk": {"params": {"mi": 4, "nj": 32,
                                                                    "panel_outer": True}}})
    assert cli.main(["compile", "--config", "tiny", "--precision", "bf16", "--target",
                     "cooperlake", "--tuning", str(rec), "--out", str(out)]) == 0
    meta = json.loads((out / "artifact.json").read_text())
    tuned = {k: v["params"] for k, v in meta["schedules"].items() if v.get("params", {}).get(
        "tuned")}
    assert tuned and all(p["mi"] == 4 and p["nj"] == 32 for p in tuned.values()), tuned
    assert meta["tuning"]["target_signature"].startswith("cooperlake")


def test_kernels_bench_config_sweeps_gemms_and_packs(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert cli.main(["kernels", "bench", "--config", "tiny", "--precision", "bf16", "--reps",
                     "2", "--no-torch", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["rows"] and all(row["status"] == "ok" for row in r["rows"] + r["packs"])
    assert "WRONG" not in capsys.readouterr().out
    from dlrm_tvm.targets import host_cpu_flags

    if "avx512_bf16" in host_cpu_flags():
        assert r["packs"] and all(p["gbs"] > 0 for p in r["packs"])


def test_kernels_tune_writes_a_record_compile_accepts(tmp_path, capsys):
    import pytest

    from dlrm_tvm.targets import host_cpu_flags

    if "avx512_bf16" not in host_cpu_flags():
        pytest.skip("this CPU has no avx512_bf16: no bf16 microkernel GEMM to tune")
    rec = tmp_path / "tune.json"
    assert cli.main(["kernels", "tune", "--config", "tiny", "--precision", "bf16",
                     "--budget-s", "5", "--reps", "2", "--out", str(rec)]) == 0
    r = json.loads(rec.read_text())
    assert r["kernels"] and all(v["gflops"] >= v["default_gflops"] * 0.999
                                for v in r["kernels"].values())
    assert cli.main(["compile", "--config", "tiny", "--precision", "bf16", "--tuning", str(rec),
                     "--out", str(tmp_path / "art")]) == 0
