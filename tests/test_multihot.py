"""Multi-hot bags: ``--multi-hot-sizes``, one fixed bag size per table
(torchrec's --multi_hot_sizes; DataConfig.multi_hot_sizes), through the config, the synthetic
generator, the embedding kernels, the sharding plan's costs, the benchmarks' work and a model
trained against torch."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from dlrm_tvm import cli
from dlrm_tvm.config import (
    DCNV2_MULTI_HOT_SIZES,
    PRESETS,
    ConfigError,
    DataConfig,
    ModelConfig,
    apply_overrides,
    load_config,
    to_toml,
)
from dlrm_tvm.data import SyntheticData, validate_batch

MLPERF = DCNV2_MULTI_HOT_SIZES  # 26 sizes, 214 lookups a sample


def _cfg(sizes, **kw):
    return apply_overrides(load_config("tiny"), multi_hot_sizes=sizes, **kw)


# ------------------------------------------------------------------ the config and its flag
def test_one_size_per_table_or_one_for_all():
    cfg = _cfg(",".join(map(str, MLPERF)))
    assert cfg.data.multi_hot_sizes == MLPERF
    assert cfg.data.bag_sizes(26) == MLPERF
    assert sum(cfg.data.mean_bag_sizes(cfg.model.table_rows)) == 214
    assert cfg.data.max_lookups_per_sample(26) == 214
    one = _cfg("4")
    assert one.data.bag_sizes(26) == (4,) * 26
    # the flag through the command line's parser, and a TOML file written and read back
    args = cli.build_parser().parse_args(["plan", "--ranks", "2",
                                          "--multi-hot-sizes", "3,2" + ",1" * 24])
    assert args.multi_hot_sizes == (3, 2) + (1,) * 24
    assert cli._resolve_config(args).data.bag_sizes(26)[:3] == (3, 2, 1)
    # without it, bags follow num_indices_per_lookup as before
    assert PRESETS["tiny"].data.bag_sizes(26) is None
    assert PRESETS["small"].data.mean_bag_sizes(PRESETS["small"].model.table_rows) == [100] * 8


def test_toml_round_trip(tmp_path):
    cfg = _cfg(MLPERF)
    p = tmp_path / "c.toml"
    p.write_text(to_toml(cfg))
    assert load_config(p) == cfg
    p.write_text('preset = "tiny"\n[data]\nmulti_hot_sizes = [2]\n')
    assert load_config(p).data.bag_sizes(26) == (2,) * 26


def test_bad_sizes_are_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match="2 values for 26 tables"):
        _cfg("3,2")
    with pytest.raises(ConfigError, match="every value must be an integer >= 1"):
        _cfg("3,0")
    with pytest.raises(ConfigError, match=r"multi_hot_sizes\[1\] must be a positive integer"):
        DataConfig(multi_hot_sizes=(1, 0))
    with pytest.raises(ConfigError, match="fixed sizes"):
        _cfg("3", num_indices_per_lookup_fixed=False)
    with pytest.raises(ConfigError, match="one-hot"):
        DataConfig(kind="criteo-kaggle", path="x", multi_hot_sizes=(2,))
    # a model with another table count than the sizes, from a file
    p = tmp_path / "bad.toml"
    p.write_text('preset = "tiny"\n[model]\ntable_rows = [10, 10]\n'
                 '[data]\nmulti_hot_sizes = [1, 2, 3]\n')
    with pytest.raises(ConfigError, match="3 values for 2 tables"):
        load_config(p)
    p.write_text('preset = "tiny"\n[data]\nmulti_hot_sizes = ["3"]\n')
    with pytest.raises(ConfigError, match="list of integers"):
        load_config(p)
    for bad in ("3,x", "3,-1", ""):
        with pytest.raises(SystemExit) as e:
            cli.main(["plan", "--ranks", "2", "--multi-hot-sizes", bad])
        assert e.value.code == 2
        assert "argument --multi-hot-sizes:" in capsys.readouterr().err


# ------------------------------------------------------------------ the synthetic generator
SMALL = ModelConfig(table_rows=(3, 50, 1000, 20000), embedding_dim=8, mlp_bot=(13, 8),
                    mlp_top=(8, 1))


@pytest.mark.parametrize("dist", ["uniform", "zipf"])
def test_every_bag_has_its_tables_size(dist):
    sizes = (100, 1, 7, 12)  # table 0 has 3 rows and bags of 100: not capped, duplicates kept
    data = DataConfig(multi_hot_sizes=sizes, index_distribution=dist)
    B, T = 256, 4
    gen = SyntheticData(SMALL, data, B, seed=4)
    counts = [np.zeros(r, np.int64) for r in SMALL.table_rows]
    for _ in range(3):
        b = gen.next_batch()
        validate_batch(b, SMALL, B)
        lens = np.diff(b.offsets).reshape(T, B)
        for t in range(T):
            assert (lens[t] == sizes[t]).all(), (t, np.unique(lens[t]))
            seg = b.indices[b.offsets[t * B]:b.offsets[(t + 1) * B]]
            assert seg.min() >= 0 and seg.max() < SMALL.table_rows[t]
            counts[t] += np.bincount(seg, minlength=SMALL.table_rows[t])
        assert b.indices.size == B * sum(sizes)
    # table 0: all 3 rows drawn, 100 per bag
    assert (counts[0] > 0).all()
    big = counts[3] / counts[3].sum()
    if dist == "uniform":
        assert big.max() < 20 / 20000  # no row much above 1/20000 (36 draws of 768 * 12)
        assert abs(np.average(np.arange(20000), weights=counts[3]) - 10000) < 600
    else:  # Zipf: the hottest row takes a large share
        assert big.max() > 0.05
    # reproducible from the seed
    again = SyntheticData(SMALL, data, B, seed=4).next_batch()
    first = SyntheticData(SMALL, data, B, seed=4).next_batch()
    np.testing.assert_array_equal(again.indices, first.indices)
    np.testing.assert_array_equal(again.labels, first.labels)


@pytest.mark.parametrize("dist", ["uniform", "zipf"])
def test_teacher_labels_stay_balanced_and_learnable(dist):
    cfg = _cfg(MLPERF, index_distribution=dist)
    b = SyntheticData(cfg.model, cfg.data, 4096, seed=1).next_batch()
    assert 0.4 < b.labels.mean() < 0.6, b.labels.mean()


# ------------------------------------------------------------------ the kernels on such bags
def test_forward_and_update_kernels_take_per_table_sizes():
    """Bags of 1, 7, 100 and 3 lookups side by side (more lookups than one update chunk):
    every forward and update rule against NumPy, the output poisoned first, untouched rows
    bit-identical."""
    import tvm
    from dlrm_tvm.graphs import ops
    from dlrm_tvm.graphs import reference as ref
    from dlrm_tvm.graphs.embedding_update import CHUNK, embedding_bag_update
    from test_embedding import _compile, _run_update

    model = ModelConfig(table_rows=(400, 300, 5000, 50), embedding_dim=24, mlp_bot=(13, 24),
                        mlp_top=(8, 1))
    sizes = (1, 7, 100, 3)
    B, T, D = 64, 4, 24
    b = SyntheticData(model, DataConfig(multi_hot_sizes=sizes, index_distribution="zipf"), B,
                      seed=2).next_batch()
    assert b.indices.size == B * 111 > CHUNK
    idx, off = b.indices, b.offsets
    roff = np.asarray(model.table_offsets, np.int64)
    g = np.random.default_rng(3)
    w = g.standard_normal((model.total_rows, D)).astype(np.float32)
    want = ref.embedding_bag_fwd(w, idx, off, roff, B)
    for rule in ("embedding_bag_balanced_prefetch", "embedding_bag_parallel_bags", "fallback"):
        lib, _ = _compile(ops.embedding_bag_fwd(B, tuple(roff), D), rule)
        y = tvm.runtime.tensor(np.full((B, T, D), np.nan, np.float32))
        lib["main"](*[tvm.runtime.tensor(x) for x in (w, idx, off, roff)], y)
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-5, err_msg=rule)
    grad = g.standard_normal((B, T, D)).astype(np.float32)
    touched = np.zeros(len(w), bool)
    touched[idx + roff[np.repeat(np.arange(T * B), np.diff(off)) // B]] = True
    for rule, oracle in (("embedding_update_bucketed_lookups", "sequential"),
                         ("embedding_update_bucketed", "coalesced")):
        lib, _ = _compile(embedding_bag_update(B, T, D, "sgd", "fp32"), rule)
        got, _ = _run_update(lib, "fp32", "sgd", w, None, idx, off, roff, grad, 0.05)
        if oracle == "sequential":
            exp = ref.embedding_bag_sgd_sequential(w, idx, off, roff, grad, 0.05)
        else:
            exp, _ = ref.embedding_bag_update(w, idx, off, roff, grad, 0.05)
        np.testing.assert_allclose(got, exp, rtol=2e-5, atol=2e-5, err_msg=rule)
        np.testing.assert_array_equal(got[~touched], w[~touched])


# ------------------------------------------------------------------ the plan's costs
def test_plan_costs_are_batch_times_each_tables_size():
    from dlrm_tvm.runtime.sharding import make_plan, plan_shards

    from dlrm_tvm.plan import plan_report

    cfg = _cfg(MLPERF)
    B, rows = cfg.train.batch_size, cfg.model.table_rows
    for ranks in (2, 3):
        plan = make_plan(cfg, ranks, "table")
        assert plan == plan_shards(rows, 16, ranks, [B * s for s in MLPERF])
        rep = plan_report(cfg, ranks, "table")
        for r in rep["per_rank"]:
            assert r["lookups_per_step"] == B * sum(MLPERF[t] for t in r["tables"])
        assert sum(r["lookups_per_step"] for r in rep["per_rank"]) == B * 214
    # row-wise: a shard's lookups are its share of its table's
    rep = plan_report(cfg, 2, "row")
    assert sum(r["lookups_per_step"] for r in rep["per_rank"]) == pytest.approx(B * 214)
    # the lookups drive placement: one table with most lookups gets a rank nearly to itself
    heavy = _cfg((200,) + (1,) * 25)
    plan = make_plan(heavy, 2, "table")
    owner = plan.owner(0, 0)
    assert len(plan.shards_of(owner)) < len(plan.shards_of(1 - owner))


def test_plan_command_counts_the_lookups(tmp_path, capsys):
    js = tmp_path / "plan.json"
    assert cli.main(["plan", "--config", "tiny", "--ranks", "2", "--json", str(js),
                     "--multi-hot-sizes", ",".join(map(str, MLPERF))]) == 0
    assert "lookups/step" in capsys.readouterr().out
    rep = json.loads(js.read_text())
    assert sum(r["lookups_per_step"] for r in rep["per_rank"]) == 128 * 214


# ------------------------------------------------------------------ the benchmarks' inputs
def test_bench_work_and_torch_inputs_follow_the_sizes():
    from dlrm_tvm.bench.step_bench import step_work

    cfg = _cfg(MLPERF)
    D, B = cfg.model.embedding_dim, cfg.train.batch_size
    assert step_work(cfg)["embedding_bytes"] == B * 214 * D * 4 * 3
    assert step_work(PRESETS["tiny"])["embedding_bytes"] == B * 26 * D * 4 * 3
    from dlrm_tvm.bench.torch_ref import torch_inputs

    b = SyntheticData(cfg.model, cfg.data, B, seed=0).next_batch()
    _, idx_l, off_l, _ = torch_inputs(b, 26)
    for t, s in enumerate(MLPERF):
        assert idx_l[t].numel() == B * s
        np.testing.assert_array_equal(off_l[t].numpy(), np.arange(B) * s)


def test_check_fits_counts_the_lookups():
    small = PRESETS["small"]
    base = small.check_fits(available_bytes=1 << 50)
    many = small.replace(data=dataclasses.replace(small.data, multi_hot_sizes=(400,)))
    assert many.check_fits(available_bytes=1 << 50) > base  # 400 lookups a bag, not 100


# ------------------------------------------------------------------ a model against torch
@pytest.mark.parametrize("interaction,sizes,dist", [
    ("dot", MLPERF, "uniform"),
    ("cat", (4,), "zipf"),
], ids=["dot-mlperf-sizes", "cat-4-zipf"])
def test_training_with_multi_hot_bags_matches_torch(compiled, interaction, sizes, dist):
    """20 SGD steps on multi-hot bags against the torch DLRM (EmbeddingBag with each table's
    offsets): every loss within 1e-5 relative, every parameter within 1e-5."""
    import torch
    from dlrm_tvm.runtime.trainer import Trainer
    from test_model_vs_torch import _compare_states

    from dlrm_tvm.bench.torch_ref import TorchTrainer

    torch.set_num_threads(2)
    cfg = _cfg(sizes, arch_interaction_op=interaction, index_distribution=dist,
               learning_rate=0.5, seed=3)
    vm, _ = compiled(cfg)
    ours = Trainer(cfg, vm)
    init = ours.state()["tables"]
    ref = TorchTrainer(cfg, ours.state())
    data = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, seed=11)
    for step in range(20):
        batch = data.next_batch()
        assert batch.indices.size == cfg.train.batch_size * sum(cfg.data.bag_sizes(26))
        lo = ours.step(batch)["loss"]
        lr = ref.step(batch)
        assert abs(lo - lr) <= 1e-5 * abs(lr), f"step {step}: loss {lo} vs torch {lr}"
    _compare_states(ours.state(), ref.state(), cfg.model)
    assert np.abs(ours.state()["tables"] - init).max() > 1e-4


def test_train_command_with_multi_hot_sizes(tmp_path):
    out = tmp_path / "r"
    assert cli.main(["train", "--config", "tiny", "--steps", "3", "--quiet", "--no-eval",
                     "--multi-hot-sizes", "2,1,3", "--arch-embedding-size", "100-200-300",
                     "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["config"]["data"]["multi_hot_sizes"] == [2, 1, 3] and s["steps"] == 3
