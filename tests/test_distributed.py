"""Training per MPI rank (runtime/trainer.py over runtime/mpi.py).

The ``mpi`` tests launch ``mpiexec -n 2 dlrm-tvm train`` themselves (``pytest -m mpi`` runs
only them; .ci/run runs them with the rest) and compare the result with one rank training on
the same global batches in this process: same loss, same parameters after 20 steps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from dlrm_tvm.config import ConfigError, apply_overrides, load_config

MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH")


def _cfg(interaction="dot", **kw):
    # the reference's coin-flip labels: equality of N ranks and 1 rank, not learning, is tested
    # (on the learnable default, rwsadagrad's first steps amplify reduction-order rounding)
    cfg = load_config("tiny")
    return apply_overrides(cfg, arch_interaction_op=interaction, steps=20, labels="random", **kw)


# ------------------------------------------------------------------ pure Python parts
def test_init_table_rows_equals_the_whole_table_slice():
    from dlrm_tvm.runtime.params import init_table, init_table_rows

    whole = init_table(7, 3, 1000, 16)
    for a, b in ((0, 1000), (0, 1), (333, 667), (999, 1000), (500, 500)):
        np.testing.assert_array_equal(init_table_rows(7, 3, 1000, 16, a, b), whole[a:b])
    with pytest.raises(ValueError):
        init_table_rows(7, 3, 1000, 16, 10, 1001)


def test_local_slice_takes_each_ranks_samples_with_their_bags():
    from dlrm_tvm.runtime.trainer import local_slice

    from dlrm_tvm.data import SyntheticData, validate_batch

    cfg = apply_overrides(load_config("tiny"), num_indices_per_lookup=5,
                          num_indices_per_lookup_fixed=False)
    m, G = cfg.model, cfg.train.batch_size
    batch = SyntheticData(m, cfg.data, G, 1).next_batch()
    R, Bl = 4, G // 4
    parts = [local_slice(batch, r, R, m.num_tables) for r in range(R)]
    for r, p in enumerate(parts):
        validate_batch(p, m, Bl)
        np.testing.assert_array_equal(p.dense, batch.dense[r * Bl:(r + 1) * Bl])
        for t in range(m.num_tables):
            for i in (0, Bl - 1):
                g = t * G + r * Bl + i
                want = batch.indices[batch.offsets[g]:batch.offsets[g + 1]]
                got = p.indices[p.offsets[t * Bl + i]:p.offsets[t * Bl + i + 1]]
                np.testing.assert_array_equal(got, want)
    assert sum(p.indices.size for p in parts) == batch.indices.size


def test_make_plan_modes():
    from dlrm_tvm.runtime.sharding import make_plan

    cfg = load_config("tiny")
    table = make_plan(cfg, 2, "table")
    assert all(s.rows == cfg.model.table_rows[s.table] for s in table.shards)
    row = make_plan(cfg, 2, "row")
    assert len(row.shards) == 2 * cfg.model.num_tables
    assert {s.rank for s in row.shards} == {0, 1}
    # auto: a budget below one table's bytes cuts it; others stay whole
    big = apply_overrides(cfg, arch_embedding_size="20000-1000-1000")
    plan = make_plan(big, 2, "auto", rank_budget_bytes=int(20000 * 16 * 4 * 0.6))
    assert sum(s.table == 0 for s in plan.shards) == 2
    assert sum(s.table == 1 for s in plan.shards) == 1
    with pytest.raises(ConfigError, match="cannot shard"):
        make_plan(big, 2, "auto", rank_budget_bytes=1000)
    with pytest.raises(ConfigError):
        make_plan(cfg, 2, "diagonal")


# ------------------------------------------------------------------ launched under mpiexec
def _mpiexec(args: list[str], n: int = 2, env_extra: dict | None = None, timeout: float = 240,
             mpmd: list[list[str]] | None = None):
    env = dict(os.environ)
    env.pop("TVM_NUM_THREADS", None)
    env.update(env_extra or {})
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "dlrm_tvm", *args]
    if mpmd:
        cmd = [MPIEXEC]
        for i, a in enumerate(mpmd):
            cmd += ([":"] if i else []) + ["-n", "1", sys.executable, "-m", "dlrm_tvm", *a]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    return p, time.monotonic() - t0


_ONE_RANK: dict = {}


def _one_rank(cfg, compiled):
    """Losses and final state of ``cfg`` trained on one rank in this process; computed once
    per config (the compile is cached per session by ``compiled``)."""
    if cfg in _ONE_RANK:
        return _ONE_RANK[cfg]
    from dlrm_tvm.runtime.trainer import Trainer

    from dlrm_tvm.data import SyntheticData

    vm, _ = compiled(cfg)
    tr = Trainer(cfg, vm)
    data = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, cfg.train.seed)
    losses = [tr.step(data.next_batch())["loss"] for _ in range(cfg.train.steps)]
    _ONE_RANK[cfg] = losses, {**tr.state(),
                              **{f"acc_{k}": v for k, v in tr.optimizer_state().items()}}
    return _ONE_RANK[cfg]


def _train_on_ranks(tmp_path, n, interaction, sharding, extra):
    """``dlrm-tvm train`` for 20 steps on ``n`` ranks; returns its run directory."""
    out = tmp_path / "run"
    args = ["train", "--config", "tiny", "--labels", "random", "--arch-interaction-op",
            interaction, "--steps", "20",
            "--sharding", sharding, "--out", str(out), "--save-params", "--quiet", *extra]
    p, secs = _mpiexec(args, n=n)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == n
    plan = json.loads((out / "sharding.json").read_text())
    assert plan["ranks"] == n
    return out, plan, secs


def _assert_one_rank_computes_the_same(out, compiled, interaction, extra):
    """The run in ``out`` has the losses and final parameters of the same run on one rank."""
    got = np.load(out / "params.npz")
    # the same run on one rank, in this process
    flags = dict(zip(extra[::2], extra[1::2], strict=True))
    flags.pop("--rank-memory-gib", None)
    flags.pop("--threads", None)
    kw = {k.lstrip("-").replace("-", "_"): v for k, v in flags.items()}
    if "num_indices_per_lookup" in kw:
        kw["num_indices_per_lookup"] = int(kw["num_indices_per_lookup"])
        kw["num_indices_per_lookup_fixed"] = bool(int(kw["num_indices_per_lookup_fixed"]))
    cfg = _cfg(interaction, **kw)
    losses, want = _one_rank(cfg, compiled)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
               if '"eval"' not in x]
    np.testing.assert_allclose([m["loss"] for m in metrics], losses, rtol=1e-5)
    adagrad = "rwsadagrad" in extra
    for k in ("tables", *[n for n in want if not n.startswith("acc_") and n != "tables"]):
        scale = max(float(np.abs(want[k]).max()), 1e-30)
        diff = np.abs(got[k] - want[k]) / scale
        if adagrad:
            # Adagrad divides a gradient by its own root-sum-square: where a gradient is a
            # near-cancelling sum, the rounding of a different reduction order (two partial
            # sums, allreduced) moves its step by up to lr. Most parameters still agree to
            # fp32 rounding (as in test_model_vs_torch's rwsadagrad test).
            assert float(diff.max()) < 1e-3, f"{k}: max relative difference {diff.max():.2e}"
            assert float(np.mean(diff < 1e-5)) > 0.99, f"{k}: {np.mean(diff < 1e-5):.4f}"
        else:
            assert float(diff.max()) < 1e-5, f"{k}: max relative difference {diff.max():.2e}"
    # the shards moved: the tables are not at their initial values
    from dlrm_tvm.runtime.params import init_tables

    assert not np.allclose(got["tables"], init_tables(cfg.model, cfg.train.seed))
    return cfg


CASES = [
    # (interaction, sharding, extra flags)
    ("dot", "table", []),
    ("cat", "table", []),
    ("dot", "row", []),
    ("cat", "row", []),
    ("dot", "row", ["--optimizer", "rwsadagrad"]),
    ("dot", "table", ["--arch-embedding-size", "1000", "--num-indices-per-lookup", "3",
                      "--num-indices-per-lookup-fixed", "0"]),  # rank 1 holds no table
    # table 0 (1.28 MB) is over a rank's 0.97 MB budget: auto cuts it row-wise, the rest whole
    ("cat", "auto", ["--arch-embedding-size", "20000-1000-1000", "--rank-memory-gib", "0.0009"]),
]


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("interaction,sharding,extra", CASES,
                         ids=["dot-table", "cat-table", "dot-row", "cat-row",
                              "dot-row-rwsadagrad", "one-table", "auto-over-budget"])
def test_two_ranks_compute_what_one_rank_computes(tmp_path, compiled, interaction, sharding,
                                                   extra):
    out, plan, _ = _train_on_ranks(tmp_path, 2, interaction, sharding, extra)
    _assert_one_rank_computes_the_same(out, compiled, interaction, extra)
    if sharding == "row":
        assert len(plan["shards"]) == 2 * len(plan["table_rows"])
    if sharding == "auto":
        assert [s["table"] for s in plan["shards"]] == [0, 0, 1, 2]


N_CASES = [
    # (ranks, interaction, sharding, extra flags); the global batch divides by the ranks
    # 26 tables over 3 ranks: 9, 9 and 8 whole tables
    (3, "dot", "table", ["--mini-batch-size", "96"]),
    # 1000 rows over 3 ranks: ranges of 333 and 334 rows
    (3, "cat", "row", ["--mini-batch-size", "96"]),
    # 26 tables over 4 ranks: 7, 7, 6 and 6 whole tables
    (4, "cat", "table", []),
    # 250 rows of every table on each of 4 ranks
    (4, "dot", "row", []),
    # 1001 and 999 rows do not divide by 4; a table of 3 rows is cut into 3 ranges, so one
    # rank holds no row of it
    (4, "dot", "row", ["--arch-embedding-size", "1001-999-3"]),
]


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("ranks,interaction,sharding,extra", N_CASES,
                         ids=["3-dot-table", "3-cat-row", "4-cat-table", "4-dot-row",
                              "4-dot-row-uneven"])
def test_n_ranks_compute_what_one_rank_computes(tmp_path, compiled, ranks, interaction,
                                                 sharding, extra):
    """As test_two_ranks_compute_what_one_rank_computes, at 3 and 4 ranks (oversubscribed on
    a small host: one TVM thread per rank)."""
    out, plan, secs = _train_on_ranks(tmp_path, ranks, interaction, sharding,
                                      [*extra, "--threads", "1"])
    print(f"{ranks} ranks under mpiexec: {secs:.1f} s")
    cfg = _assert_one_rank_computes_the_same(out, compiled, interaction, extra)
    rows = list(cfg.model.table_rows)
    assert plan["table_rows"] == rows
    shards = plan["shards"]
    # every row of every table is in exactly one shard
    for t, n in enumerate(rows):
        spans = sorted((s["row_start"], s["row_stop"]) for s in shards if s["table"] == t)
        assert spans[0][0] == 0 and spans[-1][1] == n, (t, spans)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False)), (t, spans)
    per_rank = [[s for s in shards if s["rank"] == r] for r in range(ranks)]
    if sharding == "table":
        assert len(shards) == len(rows)
        assert all(s["row_stop"] - s["row_start"] == rows[s["table"]] for s in shards)
        # uneven: some ranks hold one table more than others
        counts = sorted(len(p) for p in per_rank)
        assert counts[0] >= 1 and counts[-1] == counts[0] + 1, counts
    else:
        assert len(shards) == sum(min(ranks, n) for n in rows)
        assert all(per_rank), "a rank holds no rows"
        sizes = {s["row_stop"] - s["row_start"] for s in shards}
        if any(n % ranks for n in rows):
            assert len(sizes) > 1, sizes  # ranges of unequal size were exercised


@pytest.mark.mpi
@needs_mpi
def test_a_killed_rank_ends_every_rank(tmp_path):
    p, secs = _mpiexec(["train", "--config", "tiny", "--steps", "100000", "--quiet",
                        "--out", str(tmp_path / "run")], env_extra={"DLRM_TVM_FAULT": "1:5:kill"},
                       timeout=120)
    assert p.returncode != 0
    assert secs < 90
    text = p.stdout + p.stderr
    # mpiexec names the process that died; the layout printed at start maps pid -> rank
    assert "BAD TERMINATION" in text or "Killed" in text or "signal 9" in text, text[-2000:]
    layout = json.loads((tmp_path / "run" / "layout.json").read_text())
    pid1 = [r["pid"] for r in layout if r["rank"] == 1][0]
    assert str(pid1) in text or "Killed" in text


@pytest.mark.mpi
@needs_mpi
def test_a_rank_that_raises_ends_every_rank_with_its_reason(tmp_path):
    p, secs = _mpiexec(["train", "--config", "tiny", "--steps", "100000", "--quiet",
                        "--out", str(tmp_path / "run")], env_extra={"DLRM_TVM_FAULT": "1:3:raise"},
                       timeout=120)
    assert p.returncode != 0
    assert secs < 90
    assert "rank 1 of 2 failed: RuntimeError: injected fault at step 3" in p.stderr, \
        (p.returncode, p.stdout[-2000:], p.stderr[-2000:])


@pytest.mark.mpi
@needs_mpi
def test_mismatched_configs_are_refused_at_start(tmp_path):
    base = ["train", "--config", "tiny", "--steps", "3", "--quiet", "--out", str(tmp_path / "r")]
    p, _ = _mpiexec([], mpmd=[base, [*base, "--learning-rate", "0.5"]], timeout=120)
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert p.stderr.count("different configs") == 1, p.stderr[-2000:]


@pytest.mark.mpi
@needs_mpi
def test_batch_not_divisible_by_ranks_is_a_clear_error(tmp_path):
    p, _ = _mpiexec(["train", "--config", "tiny", "--mini-batch-size", "127", "--steps", "2",
                     "--quiet", "--out", str(tmp_path / "r")], timeout=120)
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert p.stderr.count("does not divide into 2 ranks") == 1, p.stderr[-2000:]


@pytest.mark.mpi
@needs_mpi
def test_bench_ranks_reports_the_split_and_the_model(tmp_path):
    out = tmp_path / "ranks.json"
    p = subprocess.run([sys.executable, "-m", "dlrm_tvm", "bench", "--config", "tiny",
                        "--ranks", "1,2", "--steps", "5", "--json", str(out),
                        "--plot", str(tmp_path / "s.png")],
                       capture_output=True, text=True, timeout=300,
                       env={k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "exp.share" in p.stdout and "model, strong" in p.stdout
    r = json.loads(out.read_text())
    one, two = r["rows"]
    assert (one["ranks"], two["ranks"]) == (1, 2)
    assert one["exposed_comm_ms"] == 0
    assert two["exposed_comm_ms"] > 0 and two["overlapped_comm_ms"] > 0
    # bytes per exchange between ranks: rank 0 pools its 13 tables for all 128 samples and
    # sends the other rank's 64 (64 x 13 x 16 x 4 B), and receives as much
    assert two["bytes_per_rank"]["output_dist"] == 2 * 64 * 13 * 16 * 4
    assert r["mpi_probe"]["alltoall_bandwidth_Bps"] > 0
    assert set(r["model"]["tables"]) >= {"strong / assumed fabric", "weak / assumed fabric"}
    assert (tmp_path / "s.png").stat().st_size > 1000


# Runs ``dlrm-tvm`` under mpiexec with Progress instrumented: per rank, how often the
# progress thread tested requests and how many exchanges it saw complete (before any wait).
_PROGRESS_PROBE = """
import atexit, json, os, sys, threading
from dlrm_tvm.runtime import mpi as dist

counts = {"thread_tests": 0, "thread_completed": 0, "waits": 0, "done_before_wait": 0}
_test, _wait = dist.Progress._test, dist.Progress.wait

def test(self, op):
    was_pending = op.done is None
    done = _test(self, op)
    if threading.current_thread().name == "mpi-progress":
        counts["thread_tests"] += 1
        counts["thread_completed"] += bool(was_pending and done)
    return done

def wait(self, op):
    counts["waits"] += 1
    counts["done_before_wait"] += op.done is not None
    return _wait(self, op)

dist.Progress._test, dist.Progress.wait = test, wait

@atexit.register
def _save():
    path = os.path.join(os.environ["PROBE_DIR"], "rank%s.json" % os.environ["PMI_RANK"])
    with open(path, "w") as f:
        json.dump(counts, f)

from dlrm_tvm.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.mpi
@needs_mpi
def test_progress_thread_completes_exchanges_while_the_rank_computes(tmp_path):
    """With the progress thread (the default), it tests the pending requests and sees
    exchanges complete while the rank computes, on every rank; with --no-progress-thread there
    is no such thread and every exchange completes inside a wait. Same losses either way.
    (The summary's overlapped_ms cannot tell: an exchange only completed in its wait still
    counts as overlapped from posting to the wait.)"""
    probe = tmp_path / "probe.py"
    probe.write_text(_PROGRESS_PROBE)
    steps = 20
    runs = {}
    for name, flags in (("thread", []), ("none", ["--no-progress-thread"])):
        d = tmp_path / name
        d.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
        env["PROBE_DIR"] = str(d)
        p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(probe), "train", "--config",
                            "tiny", "--steps", str(steps), "--quiet", "--out", str(d / "run"),
                            *flags], capture_output=True, text=True, timeout=240, env=env)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        counts = [json.loads((d / f"rank{r}.json").read_text()) for r in (0, 1)]
        summary = json.loads((d / "run" / "summary.json").read_text())
        losses = [json.loads(x)["loss"] for x in (d / "run" / "metrics.jsonl").read_text()
                  .splitlines() if '"eval"' not in x]
        runs[name] = (counts, summary, losses)
    counts, summary, losses = runs["thread"]
    assert summary["progress_thread"] is True
    for r, c in enumerate(counts):
        assert c["waits"] >= 5 * steps, (r, c)  # input_dist x3, output_dist, grad_dist, ...
        assert c["thread_tests"] > 0, f"rank {r}: the progress thread never tested a request"
        assert c["thread_completed"] > 0, \
            f"rank {r}: the progress thread saw no exchange complete: {c}"
    counts0, summary0, losses0 = runs["none"]
    assert summary0["progress_thread"] is False
    for r, c in enumerate(counts0):
        assert c["thread_tests"] == 0 and c["thread_completed"] == 0, (r, c)
    assert sum(c["done_before_wait"] for c in counts) > sum(c["done_before_wait"]
                                                            for c in counts0)
    assert len(losses) == steps and losses == losses0


def test_scaling_model_shapes():
    from dlrm_tvm.bench.scaling import predict

    cfg = load_config("small")
    one = {"ranks": 1, "threads_per_rank": 2, "ms_per_step": 500.0,
           "phases_ms": {"embedding_forward": 50.0, "embedding_update": 100.0,
                         "dense_forward_backward": 340.0, "dense_update": 2.0}}
    strong = predict(cfg, one, 2e-6, 12.5e9)
    weak = predict(cfg, one, 2e-6, 12.5e9, weak=True)
    assert strong[0]["efficiency"] == pytest.approx(1.0)
    assert strong[0]["step_ms"] == pytest.approx(500.0)
    assert [r["global_batch"] for r in weak] == [2048 * n for n in (1, 2, 4, 8, 16, 32, 64)]
    assert all(a["compute_ms"] > b["compute_ms"] for a, b in zip(strong, strong[1:], strict=False))
    assert all(0 < r["efficiency"] <= 1.0 + 1e-9 for r in strong + weak)
    # a slower network can only make it worse
    slow = predict(cfg, one, 50e-6, 1e9)
    assert all(s["step_ms"] >= f["step_ms"] for s, f in zip(slow, strong, strict=True))
    # 8 tables: past 8 sockets table-wise placement cannot split the embedding work, so the
    # model cuts tables row-wise; the busiest rank's share keeps falling
    from dlrm_tvm.bench.scaling import _busiest_share

    shares = [_busiest_share(cfg, n) for n in (1, 2, 4, 8, 16)]
    assert shares == sorted(shares, reverse=True) and shares[0] == 1.0
