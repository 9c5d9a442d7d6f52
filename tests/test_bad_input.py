"""Malformed batches are refused with a BatchError that names the problem, before any kernel runs.

The compiled kernels do not bounds-check, so ``validate_batch`` is the only guard: a rejected
step must leave every parameter bit-identical, call nothing in the VM, and leave the trainer
able to take a good step afterwards.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from dlrm_tvm.runtime.trainer import Trainer

from dlrm_tvm.config import PRESETS, DataConfig
from dlrm_tvm.data import Batch, BatchError, SyntheticData, validate_batch

CFG = PRESETS["tiny"]
# bags of 1..3 lookups, so offsets are not simply 0..T*B
DATA = DataConfig(num_indices_per_lookup=3, num_indices_per_lookup_fixed=False)

# tiny with uneven tables: an index valid in every other table is out of range in the last one
UNEVEN = CFG.replace(
    model=dataclasses.replace(CFG.model, table_rows=(1000,) * 24 + (50, 7)),
    train=dataclasses.replace(CFG.train, batch_size=16),
)


class SpyVM:
    """Wraps the VM and records every function the trainer fetches from it."""

    def __init__(self, vm):
        self._vm = vm
        self.calls: list[str] = []

    def __getitem__(self, name):
        self.calls.append(name)
        return self._vm[name]


def _copy(b: Batch) -> Batch:
    return Batch(dense=b.dense.copy(), indices=b.indices.copy(), offsets=b.offsets.copy(),
                 labels=b.labels.copy())


def _bag_of_table(b: Batch, t: int, B: int) -> int:
    """Position in ``indices`` of the first lookup of some bag of table t."""
    for s in range(B):
        lo, hi = b.offsets[t * B + s], b.offsets[t * B + s + 1]
        if hi > lo:
            return int(lo)
    raise AssertionError(f"table {t} has no lookups")


# ---------------------------------------------------------------- the malformations


def neg_index(b, B):
    p = _bag_of_table(b, 3, B)
    b.indices[p] = -1
    return b


def index_eq_rows(b, B):
    p = _bag_of_table(b, 7, B)
    b.indices[p] = CFG.model.table_rows[7]
    return b


def index_huge(b, B):
    b.indices[-1] = 2**40
    return b


def offsets_end_short(b, B):
    b.offsets = b.offsets.copy()
    b.offsets[-1] -= 1
    return b


def offsets_end_long(b, B):
    b.indices = b.indices[:-1].copy()  # one lookup dropped, offsets unchanged
    return b


def offsets_not_start_zero(b, B):
    b.offsets[0] = 1
    return b


def offsets_decreasing(b, B):
    k = 5 * B + 3
    b.offsets[k] = b.offsets[k + 1] + 1  # bag k is negative, start and end still right
    return b


def indices_float32(b, B):
    b.indices = b.indices.astype(np.float32)
    return b


def indices_int32(b, B):
    b.indices = b.indices.astype(np.int32)
    return b


def indices_2d(b, B):
    b.indices = b.indices.reshape(1, -1)
    return b


def offsets_int32(b, B):
    b.offsets = b.offsets.astype(np.int32)
    return b


def offsets_list(b, B):
    b.offsets = b.offsets.tolist()
    return b


def dense_wrong_width(b, B):
    b.dense = np.ascontiguousarray(b.dense[:, :-1])
    return b


def dense_wrong_batch(b, B):
    b.dense = np.ascontiguousarray(b.dense[:-1])
    return b


def dense_float64(b, B):
    b.dense = b.dense.astype(np.float64)
    return b


def labels_short(b, B):
    b.labels = b.labels[:-1].copy()
    return b


def labels_long(b, B):
    b.labels = np.concatenate([b.labels, b.labels[:1]])
    return b


def dense_nan(b, B):
    b.dense[B // 2, 4] = np.nan
    return b


def dense_inf(b, B):
    b.dense[0, 0] = -np.inf
    return b


BAD = [
    (neg_index, r"index -1 at position \d+ is out of range for table 3 with 1000 rows"),
    (index_eq_rows, r"index 1000 at position \d+ is out of range for table 7 with 1000 rows"),
    (index_huge, r"index 1099511627776 at position \d+ is out of range for table 25"),
    (offsets_end_short, r"offsets must start at 0 and end at len\(indices\)=\d+"),
    (offsets_end_long, r"offsets must start at 0 and end at len\(indices\)=\d+"),
    (offsets_not_start_zero, r"offsets must start at 0"),
    (offsets_decreasing, r"offsets must be non-decreasing: bag 643 \(table 5\) has negative size"),
    (indices_float32, r"indices must be a 1-D int64 numpy array.*float32"),
    (indices_int32, r"indices must be a 1-D int64 numpy array.*int32"),
    (indices_2d, r"indices must be a 1-D int64 numpy array"),
    (offsets_int32, r"offsets must be int64, got int32"),
    (offsets_list, r"offsets must be a numpy array, got list"),
    (dense_wrong_width, r"dense must have shape \(128, 13\), got \(128, 12\)"),
    (dense_wrong_batch, r"dense must have shape \(128, 13\), got \(127, 13\)"),
    (dense_float64, r"dense must be float32, got float64"),
    (labels_short, r"labels must have shape \(128,\), got \(127,\)"),
    (labels_long, r"labels must have shape \(128,\), got \(129,\)"),
    (dense_nan, r"dense features contain NaN"),
    (dense_inf, r"dense features contain NaN or infinity"),
]


@pytest.fixture(scope="module")
def tiny_vm(compiled):
    vm, _ = compiled(CFG)
    return vm


def _assert_same_state(before, after):
    assert before.keys() == after.keys()
    for k in before:
        assert np.array_equal(before[k], after[k]), f"parameter {k} changed by a rejected step"


@pytest.mark.parametrize("mutate,match", BAD, ids=[f.__name__ for f, _ in BAD])
def test_bad_batch_rejected_before_any_kernel(tiny_vm, mutate, match):
    B = CFG.train.batch_size
    data = SyntheticData(CFG.model, DATA, B, seed=5)
    tr = Trainer(CFG, tiny_vm)
    tr.step(data.next_batch())  # a good step first: the state is not just the initial one
    spy = SpyVM(tiny_vm)
    tr.vm = spy
    good = data.next_batch()
    bad = mutate(_copy(good), B)
    before = tr.state()
    count = tr.step_count

    with pytest.raises(BatchError, match=match):
        tr.step(bad)
    assert spy.calls == [], f"kernels ran before the batch was refused: {spy.calls}"
    assert tr.step_count == count
    _assert_same_state(before, tr.state())

    with pytest.raises(BatchError, match=match):
        tr.predict(bad)
    assert spy.calls == []

    # the trainer is still usable: the unmodified batch trains
    out = tr.step(good)
    assert np.isfinite(out["loss"])
    assert tr.step_count == count + 1
    assert "embedding_update" in spy.calls
    after = tr.state()
    assert not np.array_equal(before["tables"], after["tables"])
    assert not np.array_equal(before["top0_w"], after["top0_w"])


@pytest.mark.parametrize("mutate,match", BAD, ids=[f.__name__ for f, _ in BAD])
def test_validate_batch_directly(mutate, match):
    B = CFG.train.batch_size
    good = SyntheticData(CFG.model, DATA, B, seed=6).next_batch()
    validate_batch(good, CFG.model, B)  # the unmodified batch passes
    with pytest.raises(BatchError, match=match):
        validate_batch(mutate(_copy(good), B), CFG.model, B)


def test_index_out_of_range_for_its_own_table(compiled):
    """An index valid in other tables but >= rows of its own table is refused."""
    vm, _ = compiled(UNEVEN)
    B = UNEVEN.train.batch_size
    data = SyntheticData(UNEVEN.model, DATA, B, seed=7)
    tr = Trainer(UNEVEN, vm)
    spy = SpyVM(vm)
    tr.vm = spy
    good = data.next_batch()
    before = tr.state()
    for t, rows, match in [
        (25, 7, r"index 7 at position \d+ is out of range for table 25 with 7 rows"),
        (24, 50, r"index 50 at position \d+ is out of range for table 24 with 50 rows"),
    ]:
        bad = _copy(good)
        p = _bag_of_table(bad, t, B)
        bad.indices[p] = rows
        with pytest.raises(BatchError, match=match):
            tr.step(bad)
        # the last valid row of the table is accepted by validation
        ok = _copy(good)
        ok.indices[p] = rows - 1
        validate_batch(ok, UNEVEN.model, B)
    assert spy.calls == []
    _assert_same_state(before, tr.state())
    out = tr.step(good)
    assert np.isfinite(out["loss"])


def test_empty_bags_are_valid(tiny_vm):
    """Not an error: bags with no lookups (and a batch with none at all) pool to zero."""
    B, T = CFG.train.batch_size, CFG.model.num_tables
    good = SyntheticData(CFG.model, DATA, B, seed=8).next_batch()
    empty = Batch(dense=good.dense, indices=np.zeros(0, np.int64),
                  offsets=np.zeros(T * B + 1, np.int64), labels=good.labels)
    tr = Trainer(CFG, tiny_vm)
    before = tr.state()
    out = tr.step(empty)
    assert np.isfinite(out["loss"])
    after = tr.state()
    np.testing.assert_array_equal(before["tables"], after["tables"])  # no lookups, no update
    assert not np.array_equal(before["bot0_w"], after["bot0_w"])


# ---------------------------------------------------------------- files that are not files


@pytest.mark.parametrize("flag", ["--config", "--tuning"])
def test_a_device_or_fifo_as_a_small_file_is_refused_not_read(flag, tmp_path, capsys):
    """`--config /dev/zero` read until MemoryError and a FIFO hung (was): a config or tuning
    record must be a regular file of at most 16 MiB."""
    import os

    from dlrm_tvm import cli

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * ((16 << 20) + 1))
    for path, says in (("/dev/zero", "not a regular file"), (str(fifo), "not a regular file"),
                       (str(big), "over 16 MiB")):
        assert cli.main(["train", flag, path, "--steps", "1", "--out",
                         str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert says in err and path in err, err


def test_an_artifact_description_without_its_target_is_refused(tmp_path, capsys):
    """artifact.json without "target" (was: KeyError traceback): refused naming the key."""
    import json

    from dlrm_tvm import cli

    art = tmp_path / "art"
    art.mkdir()
    (art / "module.so").write_bytes(b"")
    (art / "artifact.json").write_text(json.dumps({"format_version": 1, "config": {},
                                                   "schedules": {}, "tvm_version": "x",
                                                   "batch_size": 128}))
    from dlrm_tvm.artifact import FORMAT_VERSION

    meta = json.loads((art / "artifact.json").read_text())
    meta["format_version"] = FORMAT_VERSION
    (art / "artifact.json").write_text(json.dumps(meta))
    assert cli.main(["train", "--artifact", str(art), "--steps", "1", "--out",
                     str(tmp_path / "r")]) == 2
    assert "lacks target" in capsys.readouterr().err
