"""Tables in huge-page advised memory: same values, dtypes and training as plain tensors."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import pytest
import tvm
from dlrm_tvm.runtime import memory
from dlrm_tvm.runtime.trainer import Trainer

from dlrm_tvm.config import PRESETS
from dlrm_tvm.data import SyntheticData


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, ml_dtypes.bfloat16])
def test_table_tensor_copies_values_and_dtype(dtype):
    src = (np.random.default_rng(0).standard_normal((300, 24)) * 100).astype(dtype)
    t = memory.table_tensor(src, min_bytes=0)
    assert str(t.dtype) == np.dtype(dtype).name and tuple(t.shape) == src.shape
    np.testing.assert_array_equal(t.numpy().view(np.uint8), src.view(np.uint8))
    # writes through TVM land in the same memory the tensor reads back
    t.copyfrom(np.zeros_like(src))
    assert not t.numpy().astype(np.float32).any()


def test_table_tensor_respects_the_switch(monkeypatch):
    monkeypatch.setenv("DLRM_TVM_HUGEPAGES", "0")
    assert not memory.hugepages_enabled()
    t = memory.table_tensor(np.ones((4, 4), np.float32), min_bytes=0)
    assert isinstance(t, tvm.runtime.Tensor) and t.numpy().sum() == 16


@pytest.mark.parametrize("precision,optimizer", [("fp32", "sgd"), ("bf16", "rwsadagrad")])
def test_training_identical_with_and_without_hugepages(compiled, monkeypatch, precision,
                                                       optimizer):
    cfg = PRESETS["tiny"]
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, precision=precision,
                                                optimizer=optimizer, learning_rate=0.05))
    vm, _ = compiled(cfg)
    states = []
    for huge in (True, False):
        monkeypatch.setattr(memory, "HUGE_MIN_BYTES", 0 if huge else 1 << 62)
        tr = Trainer(cfg, vm)
        data = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, seed=5)
        for _ in range(5):
            tr.step(data.next_batch())
        states.append((tr.state(), tr.optimizer_state()))
    for key in states[0][0]:
        np.testing.assert_array_equal(states[0][0][key], states[1][0][key])
    for key in states[0][1]:
        np.testing.assert_array_equal(states[0][1][key], states[1][1][key])
