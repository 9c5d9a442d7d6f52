"""Split-SGD-BF16: the fp32 master as bf16 high half + uint16 low half, updated in place.

Bit-exact against our fp32 SGD kernel over many steps (the same compiled arithmetic: LLVM
contracts w - lr*g into one FMA in both, so NumPy's separately rounded product can differ from
both in the last bit; the comparison is with the kernel, the NumPy oracle to within that rounding).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from dlrm_tvm.graphs import ops
from dlrm_tvm.graphs import reference as ref
from dlrm_tvm.schedules import rules_for, schedule_func

from dlrm_tvm.targets import resolve_target

ml_dtypes = pytest.importorskip("ml_dtypes")
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
