"""Embedding kernels at scale: every variant against NumPy, determinism across thread counts,
chunk and bucket boundaries, hot rows, and the Zipf generator.

Random tables (never zeros), variable bags with empty ones, duplicates inside and across bags;
outputs poisoned with NaN; untouched rows must stay bit-identical.
"""

from __future__ import annotations

import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import tvm
from dlrm_tvm.graphs import ops
from dlrm_tvm.graphs import reference as ref
from dlrm_tvm.graphs.embedding_update import CHUNK, OPTIMIZERS, STORAGES, embedding_bag_update
from dlrm_tvm.schedules import ALL_RULES, rules_for, schedule_func

from dlrm_tvm.config import PRESETS, apply_overrides
from dlrm_tvm.data import SyntheticData
from dlrm_tvm.targets import resolve_target

TARGET = resolve_target("host").tvm_target()


def _compile(func, rule=None):
    if rule is None:
        func, rule = schedule_func(func, TARGET, rules_for(TARGET))
    else:
        func = ALL_RULES[rule].apply(func, TARGET).mod["main"]
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=TARGET)
    return lib, rule


def _problem(seed, nt, b, d, rows, max_bag, hot=False):
    g = np.random.default_rng(seed)
    sizes = g.integers(0, max_bag + 1, nt * b)
    sizes[g.random(nt * b) < 0.2] = 0
    sizes[0] = 0
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    if hot:  # a few rows take most lookups (as Zipf does)
        idx = np.where(g.random(off[-1]) < 0.7, g.integers(0, 3, off[-1]),
                       g.integers(0, rows, off[-1]))
    else:
        idx = g.integers(0, rows, off[-1])
    idx[: min(8, idx.size)] = 1  # duplicates inside a bag and across bags
    roff = (np.arange(nt) * rows).astype(np.int64)
    w = g.standard_normal((rows * nt, d)).astype(np.float32)
    grad = g.standard_normal((b, nt, d)).astype(np.float32)
    acc = g.random(rows * nt).astype(np.float32)
    return idx.astype(np.int64), off, roff, w, grad, acc


def _run_update(lib, storage, optimizer, w, acc, idx, off, roff, grad, lr):
    common = [tvm.runtime.tensor(x) for x in (idx, off, roff, grad, np.array([lr], np.float32))]
    if storage == "fp32":
        tabs = [tvm.runtime.tensor(w)]
    elif storage == "rows":  # one [rows, 2D] table: hi halves then lo halves per row
        from dlrm_tvm.runtime.trainer import split_rows

        tabs = [tvm.runtime.tensor(split_rows(w))]
    else:
        hi, lo = ref.split_fp32(w)
        tabs = [tvm.runtime.tensor(hi.view(ml_dtypes.bfloat16)), tvm.runtime.tensor(lo)]
    st = [tvm.runtime.tensor(acc)] if optimizer != "sgd" else []  # (rw)adagrad's state
    lib["main"](*tabs, *st, *common)
    if storage == "fp32":
        got = tabs[0].numpy()
    elif storage == "rows":
        from dlrm_tvm.runtime.trainer import combine_rows

        got = combine_rows(tabs[0].numpy())
    else:
        got = ref.combine_fp32(tabs[0].numpy().view(np.uint16), tabs[1].numpy())
    return got, (st[0].numpy() if st else None)


@pytest.mark.parametrize("rule", ["embedding_update_bucketed_lookups",
                                  "embedding_update_bucketed", "fallback"])
@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_update_matches_numpy(optimizer, storage, rule):
    if rule == "embedding_update_bucketed_lookups" and optimizer != "sgd":
        assert ALL_RULES[rule].apply(embedding_bag_update(4, 1, 8, optimizer), TARGET) is None
        return
    nt, b, d, rows = 3, 64, 20, 300
    idx, off, roff, w, grad, acc = _problem(1, nt, b, d, rows, 6)
    if optimizer == "adagrad":  # exact: a state of the table's shape
        acc = np.random.default_rng(7).random(w.shape).astype(np.float32)
    if storage in ("split", "rows"):
        w = ref.combine_fp32(*ref.split_fp32(w))  # the fp32 master a split table holds
    lib, _ = _compile(embedding_bag_update(b, nt, d, optimizer, storage), rule)
    got, got_acc = _run_update(lib, storage, optimizer, w, acc, idx, off, roff, grad, 0.05)
    want, want_acc = ref.embedding_bag_update(w, idx, off, roff, grad, 0.05, optimizer, acc)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    touched = np.zeros(len(w), bool)
    touched[idx + roff[np.repeat(np.arange(nt * b), np.diff(off)) // b]] = True
    np.testing.assert_array_equal(got[~touched], w[~touched])
    assert (got[touched] != w[touched]).all(axis=1).mean() > 0.9
    if optimizer != "sgd":
        np.testing.assert_allclose(got_acc, want_acc, rtol=1e-5)
        np.testing.assert_array_equal(got_acc[~touched], acc[~touched])


@pytest.mark.parametrize("d", [56, 96])  # 32 + 16 + 8 lanes; three 32-lane shuffle steps
@pytest.mark.parametrize("storage", ["split", "rows"])
def test_split_update_every_step_width_matches_fp32_bitwise(storage, d):
    """The Split-SGD row step at every vector width gives the fp32 kernel's bits exactly."""
    nt, b, rows = 2, 64, 300
    idx, off, roff, w, grad, _ = _problem(4, nt, b, d, rows, 5)
    w = ref.combine_fp32(*ref.split_fp32(w))
    outs = {}
    for st in ("fp32", storage):
        lib, _ = _compile(embedding_bag_update(b, nt, d, "sgd", st),
                          "embedding_update_bucketed_lookups")
        outs[st] = _run_update(lib, st, "sgd", w, None, idx, off, roff, grad, 0.05)[0]
    assert np.array_equal(outs["fp32"].view(np.uint32), outs[storage].view(np.uint32))


def test_update_plain_and_bucketed_kernels_agree_bitwise():
    """The same passes in the same order: the parallel rule is the plain kernel's schedule."""
    nt, b, d, rows = 2, 1500, 16, 50  # ~8000 lookups: two chunks, hot rows in both
    idx, off, roff, w, grad, acc = _problem(2, nt, b, d, rows, 5, hot=True)
    assert off[-1] > CHUNK
    outs = []
    for rule in ("embedding_update_bucketed", "fallback"):
        lib, _ = _compile(embedding_bag_update(b, nt, d, "rwsadagrad", "fp32"), rule)
        outs.append(_run_update(lib, "fp32", "rwsadagrad", w, acc, idx, off, roff, grad, 0.1))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])


def test_update_empty_batch_changes_nothing():
    nt, b, d = 2, 4, 8
    w = np.random.default_rng(3).standard_normal((20, d)).astype(np.float32)
    lib, _ = _compile(embedding_bag_update(b, nt, d))
    off = np.zeros(nt * b + 1, np.int64)
    got, _ = _run_update(lib, "fp32", "sgd", w, None, np.zeros(0, np.int64), off,
                         np.array([0, 10], np.int64), np.ones((b, nt, d), np.float32), 0.1)
    np.testing.assert_array_equal(got, w)


_THREADS_SCRIPT = r"""
import hashlib, sys, numpy as np, tvm
sys.path.insert(0, {tests!r})
from test_embedding import _compile, _problem, _run_update
from dlrm_tvm.graphs.embedding_update import embedding_bag_update
for opt, storage in (("sgd", "fp32"), ("sgd", "split"), ("rwsadagrad", "split"),
                     ("sgd", "rows"), ("rwsadagrad", "rows")):
    nt, b, d, rows = 2, 3000, 24, 400
    idx, off, roff, w, grad, acc = _problem(5, nt, b, d, rows, 4, hot=True)
    lib, _ = _compile(embedding_bag_update(b, nt, d, opt, storage))
    got, a = _run_update(lib, storage, opt, w, acc, idx, off, roff, grad, 0.07)
    h = hashlib.sha256(got.tobytes() + (a.tobytes() if a is not None else b"")).hexdigest()
    print(opt, storage, off[-1], h)
"""


def test_update_tables_bit_identical_for_1_2_and_3_threads():
    """Fixed chunks and buckets: the same table bytes whatever the thread count (a fresh
    process per count: TVM's pool size is fixed at start)."""
    code = _THREADS_SCRIPT.format(tests=os.path.dirname(__file__))
    outs = {}
    for n in (1, 2, 3):
        env = dict(os.environ, TVM_NUM_THREADS=str(n))
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        outs[n] = r.stdout
    assert outs[1] == outs[2] == outs[3], outs
    assert all(int(line.split()[2]) > 2 * CHUNK for line in outs[1].splitlines())


@pytest.mark.parametrize("rule", ["embedding_bag_balanced_prefetch", "embedding_bag_parallel_bags",
                                  "fallback"])
def test_forward_reads_the_high_half_of_split_rows(rule):
    """bf16 tables stored as Split-SGD rows [rows, 2D] (hi then lo): the bag sums the bf16
    high halves only (a lo half read as bf16 would be garbage, far from the oracle)."""
    from dlrm_tvm.runtime.trainer import split_rows

    nt, b, d, rows = 3, 200, 16, 400
    idx, off, roff, w, _, _ = _problem(9, nt, b, d, rows, 7)
    table = split_rows(w)
    lib, _ = _compile(ops.embedding_bag_fwd(b, tuple(int(x) for x in roff), d, "bfloat16",
                                            2 * d), rule)
    y = tvm.runtime.tensor(np.full((b, nt, d), np.nan, np.float32))
    lib["main"](*[tvm.runtime.tensor(x) for x in (table, idx, off, roff)], y)
    hi = ref.split_fp32(w)[0].view(ml_dtypes.bfloat16).astype(np.float32)
    want = ref.embedding_bag_fwd(hi, idx, off, roff, b)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule", ["embedding_bag_balanced_prefetch", "embedding_bag_parallel_bags"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_forward_variants_match_numpy(rule, dtype):
    nt, b, d, rows = 4, 300, 24, 500
    idx, off, roff, w, _, _ = _problem(7, nt, b, d, rows, 9)
    sizes = np.diff(off)
    sizes[5:40] = 0  # a run of empty bags, and very uneven sizes after it
    sizes[40] = 300
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    idx = np.random.default_rng(8).integers(0, rows, off[-1]).astype(np.int64)
    table = w if dtype == "float32" else ref.split_fp32(w)[0].view(ml_dtypes.bfloat16)
    lib, _ = _compile(ops.embedding_bag_fwd(b, tuple(int(x) for x in roff), d, dtype), rule)
    y = tvm.runtime.tensor(np.full((b, nt, d), np.nan, np.float32))
    lib["main"](*[tvm.runtime.tensor(x) for x in (table, idx, off, roff)], y)
    got = y.numpy()
    assert not np.isnan(got).any(), "output not fully written"
    np.testing.assert_allclose(got, ref.embedding_bag_fwd(table, idx, off, roff, b),
                               rtol=1e-5, atol=1e-4)


def test_forward_balanced_handles_fewer_lookups_than_tasks():
    nt, b, d = 1, 3, 16
    w = np.random.default_rng(9).standard_normal((10, d)).astype(np.float32)
    off = np.array([0, 0, 2, 2], np.int64)
    idx = np.array([4, 4], np.int64)
    lib, _ = _compile(ops.embedding_bag_fwd(b, (0,), d), "embedding_bag_balanced_prefetch")
    y = tvm.runtime.tensor(np.full((b, nt, d), np.nan, np.float32))
    lib["main"](*[tvm.runtime.tensor(x) for x in (w, idx, off, np.zeros(1, np.int64))], y)
    np.testing.assert_allclose(y.numpy()[:, 0], np.stack([0 * w[0], 2 * w[4], 0 * w[0]]),
                               rtol=1e-6)


@pytest.mark.parametrize("rule", ["embedding_bag_balanced_prefetch", "embedding_update_bucketed",
                                  "embedding_update_bucketed_lookups"])
def test_prefetch_reaches_the_machine_code(rule):
    func = ops.embedding_bag_fwd(8, (0,), 16) if "bag_" in rule else \
        embedding_bag_update(8, 1, 16)
    lib, _ = _compile(func, rule)
    assert "prefetch" in lib.mod.inspect_source("asm")


def test_zipf_generator_is_skewed_deterministic_and_in_range():
    cfg = apply_overrides(PRESETS["tiny"], index_distribution="zipf", num_indices_per_lookup=10)
    a = SyntheticData(cfg.model, cfg.data, 512, seed=4).next_batch()
    b = SyntheticData(cfg.model, cfg.data, 512, seed=4).next_batch()
    np.testing.assert_array_equal(a.indices, b.indices)
    rows = cfg.model.table_rows[0]
    t0 = a.indices[: a.offsets[512]]
    assert t0.min() >= 0 and t0.max() < rows
    counts = np.sort(np.bincount(t0, minlength=rows))[::-1]
    share = counts[0] / counts.sum()
    # Zipf(1.05) over 1000 ranks: the top rank takes 1/H = 14% of lookups; uniform 0.1%
    assert 0.08 < share < 0.25, share
    assert counts[:10].sum() / counts.sum() > 0.3
    hot_rows = np.argsort(np.bincount(t0, minlength=rows))[::-1][:5]
    assert hot_rows.max() > 50  # hot rows are scattered, not packed at row 0
    uni = SyntheticData(cfg.model, apply_overrides(cfg, index_distribution="uniform").data, 512,
                        seed=4).next_batch()
    assert np.bincount(uni.indices[: uni.offsets[512]]).max() / uni.offsets[512] < 0.02


def test_zipf_config_is_validated():
    from dlrm_tvm.config import ConfigError

    with pytest.raises(ConfigError, match="index_distribution"):
        apply_overrides(PRESETS["tiny"], index_distribution="pareto")
    with pytest.raises(ConfigError, match="zipf_alpha"):
        apply_overrides(PRESETS["tiny"], zipf_alpha=0.0)
    with pytest.raises(ConfigError, match="optimizer"):
        apply_overrides(PRESETS["tiny"], optimizer="adam")



def test_lookup_order_update_matches_sequential_oracle_with_hot_rows():
    """Hot rows (70% of lookups on 3 rows): the lookup-order kernel against NumPy applying the
    same steps one lookup at a time in fp32."""
    nt, b, d, rows = 2, 2000, 16, 300
    idx, off, roff, w, grad, _ = _problem(11, nt, b, d, rows, 6, hot=True)
    lib, _ = _compile(embedding_bag_update(b, nt, d), "embedding_update_bucketed_lookups")
    got, _ = _run_update(lib, "fp32", "sgd", w, None, idx, off, roff, grad, 0.01)
    want = ref.embedding_bag_sgd_sequential(w, idx, off, roff, grad, 0.01)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
