"""Split-SGD-BF16: the fp32 master as bf16 high half + uint16 low half, updated in place.

Bit-exact against our fp32 SGD kernel over many steps (the same compiled arithmetic: LLVM
contracts w - lr*g into one FMA in both, so NumPy's separately rounded product can differ from
both in the last bit; the comparison is with the kernel, the NumPy oracle to within that rounding).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import tvm
from dlrm_tvm.graphs import ops
from dlrm_tvm.graphs import reference as ref
from dlrm_tvm.graphs.embedding_update import embedding_bag_update
from dlrm_tvm.schedules import rules_for, schedule_func

from dlrm_tvm.targets import resolve_target

TARGET = resolve_target("host").tvm_target()


def _build(func):
    f, rule = schedule_func(func, TARGET, rules_for(TARGET))
    return tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}),
                       target=TARGET), rule


@pytest.mark.parametrize("shape", [(37,), (64, 48), (9000,)], ids=str)
def test_split_sgd_is_bit_exact_fp32_sgd(shape):
    split, rule = _build(ops.split_sgd_update(shape))
    assert rule == "split_sgd_parallel_chunks"
    plain, _ = _build(ops.sgd_update(shape))
    rng = np.random.default_rng(len(shape) * 1000 + shape[0])
    w = rng.standard_normal(shape).astype(np.float32)
    hi, lo = ref.split_fp32(w)
    H = tvm.runtime.tensor(hi.view(ml_dtypes.bfloat16))
    L = tvm.runtime.tensor(lo)
    W = tvm.runtime.tensor(w)
    for step in range(30):
        g = tvm.runtime.tensor((rng.standard_normal(shape) * 10 ** rng.uniform(-3, 1))
                               .astype(np.float32))
        lr = tvm.runtime.tensor(np.array([rng.uniform(0.001, 0.5)], np.float32))
        split["main"](H, L, g, lr)
        plain["main"](W, g, lr)
        master = ref.combine_fp32(H.numpy().view(np.uint16), L.numpy())
        assert np.array_equal(master.view(np.uint32), W.numpy().view(np.uint32)), f"step {step}"
    # the bf16 weight the GEMMs see is the master's upper half (truncated)
    hi_now, _ = ref.split_fp32(W.numpy())
    assert np.array_equal(H.numpy().view(np.uint16), hi_now)
    assert H.numpy().dtype.itemsize + L.numpy().dtype.itemsize == 4  # 4 bytes per parameter


def test_split_sgd_matches_numpy_oracle_to_rounding():
    shape = (256,)
    split, _ = _build(ops.split_sgd_update(shape))
    rng = np.random.default_rng(5)
    w = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    hi, lo = ref.split_fp32(w)
    H, L = tvm.runtime.tensor(hi.view(ml_dtypes.bfloat16)), tvm.runtime.tensor(lo)
    split["main"](H, L, tvm.runtime.tensor(g), tvm.runtime.tensor(np.array([0.05], np.float32)))
    got = ref.combine_fp32(H.numpy().view(np.uint16), L.numpy()).astype(np.float64)
    want = ref.combine_fp32(*ref.split_sgd_update(hi, lo, g, 0.05)).astype(np.float64)
    # one rounding of the product (NumPy) vs none (FMA): within an ulp of the operands
    assert (np.abs(got - want) <= 2.0**-23 * (np.abs(w) + np.abs(0.05 * g))).all()


def _bags(rng, b, nt, rows, max_bag=4):
    sizes = rng.integers(0, max_bag + 1, nt * b)  # empty bags included
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    idx = rng.integers(0, rows, off[-1]).astype(np.int64)
    idx[: min(6, idx.size)] = 1  # duplicates of one row, across bags
    return idx, off, (np.arange(nt) * rows).astype(np.int64)


def test_bf16_table_forward_reads_the_high_half():
    b, nt, d, rows = 16, 3, 16, 50
    rng = np.random.default_rng(0)
    idx, off, roff = _bags(rng, b, nt, rows)
    hi, _ = ref.split_fp32(rng.standard_normal((rows * nt, d)).astype(np.float32))
    lib, rule = _build(ops.embedding_bag_fwd(b, tuple(roff), d, "bfloat16"))
    assert rule == "embedding_bag_balanced_prefetch"
    y = tvm.runtime.tensor(np.full((b, nt, d), np.nan, np.float32))
    table = hi.view(ml_dtypes.bfloat16)
    lib["main"](*[tvm.runtime.tensor(x) for x in (table, idx, off, roff)], y)
    want = ref.embedding_bag_fwd(table, idx, off, roff, b)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-6, atol=1e-6)


def test_split_embedding_update_bit_exact_with_fp32_update():
    """Split-SGD-BF16 tables step exactly as fp32 tables do (the same coalesced sums)."""
    b, nt, d, rows = 16, 3, 24, 40
    rng = np.random.default_rng(1)
    idx, off, roff = _bags(rng, b, nt, rows)
    w = rng.standard_normal((rows * nt, d)).astype(np.float32)
    g = rng.standard_normal((b, nt, d)).astype(np.float32)
    lr = tvm.runtime.tensor(np.array([0.1], np.float32))
    common = [tvm.runtime.tensor(x) for x in (idx, off, roff, g)]
    plain, _ = _build(embedding_bag_update(b, nt, d, "sgd", "fp32"))
    W = tvm.runtime.tensor(w)
    plain["main"](W, *common, lr)
    lib, rule = _build(embedding_bag_update(b, nt, d, "sgd", "split"))
    assert rule == "embedding_update_bucketed_lookups"
    hi, lo = ref.split_fp32(w)
    H, L = tvm.runtime.tensor(hi.view(ml_dtypes.bfloat16)), tvm.runtime.tensor(lo)
    lib["main"](H, L, *common, lr)
    got = ref.combine_fp32(H.numpy().view(np.uint16), L.numpy())
    assert np.array_equal(got.view(np.uint32), W.numpy().view(np.uint32))
    assert not np.array_equal(got, w)  # rows really moved
