"""MLPerf DLRM-DCNv2's materialised multi-hot dataset: the day files written
by ``materialize-multihot`` and read back memory-mapped (``--data criteo-multihot``), each rank
its slice, the batches those of the synthetic generator, a short training run, and bad files
refused with the file, table and row named. Fast: one compile (dcnv2-tiny, by the train
command), reused by the out-of-range run; the two-rank run is in the ``mpi`` tier."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dlrm_tvm import cli
from dlrm_tvm.config import DCNV2_MULTI_HOT_SIZES, PRESETS, ConfigError, apply_overrides
from dlrm_tvm.data import SyntheticData
from dlrm_tvm.data.criteo import DataError
from dlrm_tvm.data.criteo.binary import make_batch
from dlrm_tvm.data.criteo.multihot import MultiHotDataset, MultiHotSource
from dlrm_tvm.data.criteo.multihot_writer import materialize_multihot, multi_hot_bags
from dlrm_tvm.data.sources import make_source, sized_for_data

TINY = PRESETS["dcnv2-tiny"]  # 26 tables of 1000 rows, 13 dense
SIZES = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 10, 4, 10, 3, 1, 1)
B = 32
ROWS_PER_DAY = 100  # not a multiple of B: batches cross days
LAST_DAY_ROWS = 99  # odd: val takes ceil(99 / 2) = 50 rows, test the other 49
VAL_ROWS, TEST_ROWS = 50, 49


def _gen_cfg(seed: int = 3, **flags):
    """dcnv2-tiny with the multi-hot sizes and batch the files are written with."""
    return apply_overrides(TINY, multi_hot_sizes=SIZES, mini_batch_size=B, seed=seed, **flags)


def _read_cfg(path, shuffle: str = "none", seed: int = 3, **flags):
    """dcnv2-tiny reading the files in ``path`` (bag sizes from the data: sized_for_data)."""
    cfg = apply_overrides(TINY, data="criteo-multihot", data_path=str(path),
                          data_randomize=shuffle, mini_batch_size=B, seed=seed, **flags)
    return sized_for_data(cfg)


def _cut_last_day(out: Path, rows: int) -> None:
    """Keep the first ``rows`` rows of the last day of the dataset in ``out`` (its three files
    and multihot.json rewritten as the writer would have written them)."""
    meta = json.loads((out / "multihot.json").read_text())
    last = meta["days"] - 1
    for part in ("dense", "labels"):
        p = out / f"day_{last}_{part}.npy"
        np.save(p, np.load(p)[:rows])
    p = out / f"day_{last}_sparse_multi_hot.npz"
    with np.load(p) as z:
        members = {k: z[k][:rows] for k in z.files}
    np.savez(p, **members)
    meta["day_rows"][-1] = rows
    meta["rows"] = sum(meta["day_rows"])
    half = -(-rows // 2)
    meta["splits"].update(val=f"day {last} rows 0..{half}", test=f"day {last} rows {half}..{rows}")
    (out / "multihot.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


@pytest.fixture(scope="module")
def mh(tmp_path_factory) -> Path:
    """3 days of synthetic rows, written once: days 0, 1 of 100 rows train; day 2, of an odd
    99, val (its first 50) and test (the other 49)."""
    out = tmp_path_factory.mktemp("mh") / "data"
    materialize_multihot(out, _gen_cfg(), days=3, rows_per_day=ROWS_PER_DAY, progress=False,
                         log=None)
    _cut_last_day(out, LAST_DAY_ROWS)
    return out


def _copy(mh: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(mh, dst)
    return dst


def _bags(batch, T: int) -> list[np.ndarray]:
    """Each table's bags of ``batch`` as [n, k_t] (they have fixed sizes)."""
    n = batch.dense.shape[0]
    out = []
    for t in range(T):
        a, b = batch.offsets[t * n], batch.offsets[(t + 1) * n]
        out.append(batch.indices[a:b].reshape(n, -1))
    return out


# ------------------------------------------------------------------------ the format


def test_files_have_mlperfs_layout(mh):
    """Per day dense float32 [n, 13], labels int32 [n, 1], an uncompressed npz of members
    0.npy..25.npy, int32 [n, k_t]; np.load reads them as torchrec's reader does."""
    names = sorted(p.name for p in mh.iterdir())
    assert names == sorted([f"day_{i}_{p}" for i in range(3) for p in
                            ("dense.npy", "labels.npy", "sparse_multi_hot.npz")]
                           + ["multihot.json"])
    dense = np.load(mh / "day_1_dense.npy")
    labels = np.load(mh / "day_1_labels.npy")
    assert dense.dtype == np.float32 and dense.shape == (ROWS_PER_DAY, 13)
    assert labels.dtype == np.int32 and labels.shape == (ROWS_PER_DAY, 1)
    assert set(np.unique(labels)) <= {0, 1}
    with zipfile.ZipFile(mh / "day_1_sparse_multi_hot.npz") as zf:
        assert sorted(i.filename for i in zf.infolist()) == sorted(f"{t}.npy" for t in range(26))
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    with np.load(mh / "day_1_sparse_multi_hot.npz") as z:
        for t, k in enumerate(SIZES):
            a = z[str(t)]
            assert a.dtype == np.int32 and a.shape == (ROWS_PER_DAY, k)
            assert 0 <= a.min() and a.max() < 1000
    meta = json.loads((mh / "multihot.json").read_text())
    assert meta["day_rows"] == [ROWS_PER_DAY, ROWS_PER_DAY, LAST_DAY_ROWS]
    assert meta["multi_hot_sizes"] == list(SIZES)


def test_round_trip_gives_the_generators_batches(mh):
    """Read back in file order with the batch it was written with, the training days are
    exactly SyntheticData's batches (dense, labels, indices, offsets); the arrays the reader
    maps are the ones np.load reads."""
    cfg = _read_cfg(mh)
    assert cfg.data.multi_hot_sizes == SIZES  # taken from the data
    src = make_source(cfg)
    assert isinstance(src, MultiHotSource)
    gen_cfg = _gen_cfg()
    gen = SyntheticData(gen_cfg.model, gen_cfg.data, B, gen_cfg.train.seed)
    for i in range(2 * ROWS_PER_DAY // B):
        got, want = src.next_batch(), gen.next_batch()
        for f in ("dense", "indices", "offsets", "labels"):
            np.testing.assert_array_equal(getattr(got, f), getattr(want, f), err_msg=f"{i} {f}")
    day = src.train.days[1]
    np.testing.assert_array_equal(day.dense, np.load(mh / "day_1_dense.npy"))
    with np.load(mh / "day_1_sparse_multi_hot.npz") as z:
        for t in range(26):
            np.testing.assert_array_equal(day.sparse[t], z[str(t)])


def test_arrays_are_memory_mapped_and_read_lazily(mh, monkeypatch):
    """Every array is an np.memmap of its file (a zip member at its data offset inside the
    .npz); opening reads headers only: no array data is read until a batch asks for it."""
    ds = MultiHotDataset(mh, "train", multi_hot_sizes=SIZES, table_rows=(1000,) * 26)
    for day in ds.days:
        for a, p in [(day.dense, day.paths[0]), (day.labels, day.paths[1]),
                     *[(s, day.paths[2]) for s in day.sparse]]:
            assert isinstance(a, np.memmap) and Path(a.filename).resolve() == p.resolve()
        assert all(s.offset > 0 for s in day.sparse)
    size = (mh / "day_0_sparse_multi_hot.npz").stat().st_size
    assert ds.days[0].sparse[25].offset + 4 * ROWS_PER_DAY <= size
    # opening again with reading of data forbidden: np.fromfile / whole-file reads never run
    calls = []
    monkeypatch.setattr(np, "fromfile", lambda *a, **k: calls.append(a))
    real_load = np.load

    def load(path, mmap_mode=None, **kw):
        assert mmap_mode == "r", f"{path} read without a memory map"
        return real_load(path, mmap_mode=mmap_mode, **kw)

    monkeypatch.setattr(np, "load", load)
    MultiHotDataset(mh, "test")
    assert calls == []


def test_splits_follow_torchrecs(mh):
    """Days 0..D-2 train; the last day's first ceil(n/2) rows val, the rest test: of the odd
    99, 50 and 49, together the whole day, each row once (dense, labels and every bag)."""
    kw = dict(multi_hot_sizes=SIZES)
    tr, va, te, al = (MultiHotDataset(mh, s, **kw) for s in ("train", "val", "test", "all"))
    assert (tr.rows, va.rows, te.rows, al.rows) == (200, VAL_ROWS, TEST_ROWS, LAST_DAY_ROWS)
    assert tr.day_rows == [100, 100] and va.day_rows == [50] and te.day_rows == [49]
    dense = np.load(mh / "day_2_dense.npy")
    labels = np.load(mh / "day_2_labels.npy").reshape(-1)
    with np.load(mh / "day_2_sparse_multi_hot.npz") as z:
        sparse = [z[str(t)] for t in range(26)]
    for ds, rows in ((va, slice(0, 50)), (te, slice(50, 99)), (al, slice(0, 99))):
        d, y, bags = ds.read(0, ds.rows)
        np.testing.assert_array_equal(d, dense[rows])
        np.testing.assert_array_equal(y, labels[rows])
        for t in range(26):
            np.testing.assert_array_equal(bags[t], sparse[t][rows])
        # gathered rows too, the last one included
        d, _, _ = ds.take(np.array([0, ds.rows - 1]))
        np.testing.assert_array_equal(d, dense[rows][[0, -1]])
    with pytest.raises(IndexError):
        te.read(0, TEST_ROWS + 1)
    cfg = _read_cfg(mh)
    # training evaluates on val (MLPerf's reference validates there), every row once, last
    # batch short; test on request (eval's default)
    for split, rows, sizes in ((None, dense[:50], [32, 18]), ("test", dense[50:], [32, 17])):
        batches = list(make_source(cfg, eval_split=split).eval_batches())
        assert [n for _, n in batches] == sizes
        np.testing.assert_array_equal(np.concatenate([b.dense[:n] for b, n in batches]), rows)


@pytest.mark.parametrize("shuffle", ["none", "total", "day"])
def test_two_ranks_read_disjoint_slices_of_the_global_batch(mh, shuffle):
    """Rank r of 2 reads only rows [r*B/2, (r+1)*B/2) of each global batch (its own
    ``local`` batch, as runtime.trainer.local_slice would cut it); the two slices are
    disjoint and together the global batch, across a day boundary and an epoch's end."""
    from runtime.trainer import local_slice

    cfg = _read_cfg(mh, shuffle)
    one = make_source(cfg)
    ranks = [make_source(cfg, r, 2) for r in range(2)]
    assert not one.local and all(s.local for s in ranks)
    T = cfg.model.num_tables
    for step in range(8):  # 6 batches an epoch: into the second epoch
        g = one.next_batch()
        parts = [s.next_batch() for s in ranks]
        for r, p in enumerate(parts):
            want = local_slice(g, r, 2, T)
            for f in ("dense", "indices", "offsets", "labels"):
                np.testing.assert_array_equal(getattr(p, f), getattr(want, f))
        np.testing.assert_array_equal(np.concatenate([p.dense for p in parts]), g.dense)
        for t, (a, b) in enumerate(zip(*[_bags(p, T) for p in parts], strict=True)):
            np.testing.assert_array_equal(np.concatenate([a, b]), _bags(g, T)[t])
        rows = [set(map(bytes, p.dense)) for p in parts]
        assert not rows[0] & rows[1], f"step {step}: the ranks share rows"
    assert one.epoch == ranks[0].epoch == 1


def test_an_epoch_reads_every_training_row_once_shuffled(mh):
    cfg = _read_cfg(mh, "total")
    src = make_source(cfg)
    seen = np.concatenate([src.next_batch().dense for _ in range(6)])
    allrows = np.concatenate([np.load(mh / f"day_{i}_dense.npy") for i in range(2)])
    assert len(set(map(bytes, seen))) == 192  # 6 whole batches of the 200 rows
    assert set(map(bytes, seen)) <= set(map(bytes, allrows))
    assert not np.array_equal(seen, allrows[:192])  # not file order


def test_state_and_restore_continue_where_the_run_was(mh):
    cfg = _read_cfg(mh, "total")
    a = make_source(cfg)
    for _ in range(7):  # into the second epoch
        a.next_batch()
    state = json.loads(json.dumps(a.state()))
    b = make_source(cfg)
    b.restore(state)
    for _ in range(3):
        np.testing.assert_array_equal(a.next_batch().indices, b.next_batch().indices)
    assert b.epoch == a.epoch == 1
    with pytest.raises(ValueError, match="not a multi-hot"):
        b.restore({"kind": "synthetic"})


def test_config_sizes_must_match_the_data(mh):
    """Given --multi-hot-sizes must be the data's; the default takes them from the data."""
    bad = list(SIZES)
    bad[7] = 2
    cfg = apply_overrides(TINY, data="criteo-multihot", data_path=str(mh), mini_batch_size=B,
                          multi_hot_sizes=bad)
    with pytest.raises(DataError, match=r"member 7\.npy \(table 7\) has bags of 1 ids.*says 2"):
        sized_for_data(cfg)
    with pytest.raises(DataError, match=r"table 7.*wrong bag size"):
        make_source(cfg)
    ok = sized_for_data(apply_overrides(cfg, multi_hot_sizes=SIZES))
    assert ok.data.multi_hot_sizes == SIZES


def test_ids_past_the_tables_are_refused_or_folded(mh):
    """The config's tables must hold the data's ids (else the file, table, row and id are
    named); with --max-ind-range they are folded modulo the rows, as the reference does."""
    small = apply_overrides(TINY, data="criteo-multihot", data_path=str(mh),
                            data_randomize="none", mini_batch_size=B, seed=3,
                            arch_embedding_size="-".join(["1000"] * 20 + ["7"] + ["1000"] * 5))
    src = make_source(small)
    with pytest.raises(DataError) as e:
        src.next_batch()
    msg = str(e.value)
    assert "day_0_sparse_multi_hot.npz" in msg and "table 20 (member 20.npy), row " in msg
    assert "outside the table's 7 rows" in msg
    row = int(msg.split(", row ")[1].split(" ")[0])
    with np.load(mh / "day_0_sparse_multi_hot.npz") as z:
        assert row == int(np.argmax((z["20"] >= 7).any(1)))
    folded = apply_overrides(small, max_ind_range=1000)  # caps at 1000, folds table 20 into 7
    assert folded.model.table_rows[20] == 7
    b = make_source(folded).next_batch()
    gen_cfg = _gen_cfg()
    want = SyntheticData(gen_cfg.model, gen_cfg.data, B, 3).next_batch()
    np.testing.assert_array_equal(_bags(b, 26)[20], _bags(want, 26)[20] % 7)


# ---------------------------------------------------------------------- the writer


def _bin_file(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, 40), np.int32)
    rows[:, 0] = rng.integers(0, 2, n)
    rows[:, 1:14] = rng.integers(0, 50, (n, 13))
    rows[:, 14:] = rng.integers(0, 5000, (n, 26))
    rows.tofile(path)
    return path


def test_materialize_from_one_hot_binary_rows(tmp_path):
    """From MLPerf binary rows: dense and labels as training on them sees them, every bag the
    row's id (folded into the table's rows) then seeded ids of that (table, id); the rows
    split into --days days; the same seed writes the same bytes."""
    binf = _bin_file(tmp_path / "d.bin", 250)
    cfg = apply_overrides(TINY, multi_hot_sizes=DCNV2_MULTI_HOT_SIZES)
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert cli.main(["materialize-multihot", "--config", "dcnv2-tiny", "--multi-hot-sizes",
                         ",".join(map(str, DCNV2_MULTI_HOT_SIZES)), "--from-binary", str(binf),
                         "--days", "4", "--seed", "5", "--out", str(out), "--quiet"]) == 0
    meta = json.loads((a / "multihot.json").read_text())
    assert meta["day_rows"] == [63, 63, 62, 62] and meta["source"]["kind"] == "binary"
    for p in a.iterdir():
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    want = make_batch(np.fromfile(binf, np.int32).reshape(-1, 40), cfg.model.table_rows)
    ds = MultiHotDataset(a, "train", multi_hot_sizes=DCNV2_MULTI_HOT_SIZES,
                         table_rows=cfg.model.table_rows)
    dense, labels, sparse = ds.read(0, ds.rows)
    n = ds.rows
    np.testing.assert_array_equal(dense, want.dense[:n])
    np.testing.assert_array_equal(labels, want.labels[:n])
    one_hot = want.indices.reshape(26, -1)[:, :n]
    for t, k in enumerate(DCNV2_MULTI_HOT_SIZES):
        np.testing.assert_array_equal(sparse[t][:, 0], one_hot[t])
        np.testing.assert_array_equal(sparse[t], multi_hot_bags(one_hot[t], t, k, 1000, 5))
        assert sparse[t].max() < 1000
    assert len(np.unique(sparse[20])) > 900  # the 99 extra ids of table 20 spread out


def test_materialize_refuses_and_explains(tmp_path, mh, capsys):
    out = tmp_path / "o"
    assert cli.main(["materialize-multihot", "--config", "dcnv2-tiny", "--days", "1", "--out",
                     str(out), "--quiet"]) == 2
    assert "--days must be >= 2" in capsys.readouterr().err
    # a used directory is kept unless --overwrite
    shutil.copytree(mh, out)
    assert cli.main(["materialize-multihot", "--config", "dcnv2-tiny", "--out", str(out),
                     "--quiet", "--rows-per-day", "40"]) == 2
    assert "already holds a multi-hot dataset" in capsys.readouterr().err
    assert cli.main(["materialize-multihot", "--config", "dcnv2-tiny", "--out", str(out),
                     "--quiet", "--rows-per-day", "40", "--overwrite"]) == 0
    assert json.loads((out / "multihot.json").read_text())["day_rows"] == [40, 40, 40]
    assert len(list(out.iterdir())) == 10


def test_help_explains_the_format():
    p = subprocess.run([sys.executable, "-m", "dlrm_tvm", "materialize-multihot", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    for word in ("day_{i}_sparse_multi_hot.npz", "--from-binary", "--rows-per-day", "--days",
                 "criteo-multihot"):
        assert word in p.stdout


# ---------------------------------------------------------------------- bad files


def _member_npz(path: Path, arrays: dict, compressed: bool = False) -> None:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)


def _sparse_of(mh: Path, day: int) -> dict:
    with np.load(mh / f"day_{day}_sparse_multi_hot.npz") as z:
        return {k: z[k] for k in z.files}


def _err(path: Path) -> str:
    with pytest.raises(DataError) as e:
        MultiHotDataset(path, "train", multi_hot_sizes=None, table_rows=(1000,) * 26)
    return str(e.value)


def test_bad_files_are_refused_with_the_file_named(mh, tmp_path):
    d = _copy(mh, tmp_path)
    npz = d / "day_1_sparse_multi_hot.npz"
    # a missing day file
    (d / "day_1_labels.npy").unlink()
    msg = _err(d)
    assert "day_1_labels.npy: no such file: day 1 of days 0..2 is incomplete" in msg
    np.save(d / "day_1_labels.npy", np.load(mh / "day_1_labels.npy"))
    # the wrong table count
    arrays = _sparse_of(mh, 1)
    _member_npz(npz, {k: v for k, v in arrays.items() if k != "25"})
    assert "holds 25 member(s)" in _err(d) and "wrong table count" in _err(d)
    # a wrong bag size on one day
    _member_npz(npz, {**arrays, "4": arrays["4"][:, :5]})
    assert "member 4.npy (table 4) has bags of 5 ids; day 0's" in _err(d)
    # compressed
    _member_npz(npz, arrays, compressed=True)
    assert "member 0.npy is compressed" in _err(d) and "np.savez" in _err(d)
    # Python objects (a pickled array), in a member and as the dense array
    obj = np.empty((100, 3), object)
    obj[:] = 1
    np.savez(npz, **{**arrays, "0": obj})
    assert "member 0.npy holds Python objects" in _err(d) and "never unpickles" in _err(d)
    _member_npz(npz, arrays)
    np.save(d / "day_1_dense.npy", np.empty((100, 13), object), allow_pickle=True)
    assert "day_1_dense.npy: the dense array holds Python objects" in _err(d)
    # dense of the wrong width, labels of the wrong length, not a .npy at all
    np.save(d / "day_1_dense.npy", np.zeros((100, 12), np.float32))
    assert "dense features must be a float array [rows, 13]" in _err(d)
    np.save(d / "day_1_dense.npy", np.load(mh / "day_1_dense.npy"))
    np.save(d / "day_1_labels.npy", np.zeros((99, 1), np.int32))
    assert "labels must be int32 [100, 1]" in _err(d)
    (d / "day_1_labels.npy").write_bytes(b"not numpy")
    assert "day_1_labels.npy: the labels array is not a .npy array" in _err(d)
    # one day only
    one = tmp_path / "one"
    one.mkdir()
    for p in mh.glob("day_0_*"):
        shutil.copy(p, one / p.name)
    assert "holds one day" in _err(one)
    assert "no such directory" in _err(tmp_path / "nowhere")


def test_bad_rows_are_refused_when_read(mh, tmp_path):
    """Labels other than 0/1, non-finite dense values, negative ids: named by file and row
    as the batch that holds them is read."""
    d = _copy(mh, tmp_path)
    lab = np.load(mh / "day_0_labels.npy")
    lab[37, 0] = 2
    np.save(d / "day_0_labels.npy", lab)
    src = make_source(_read_cfg(d))
    with pytest.raises(DataError, match=r"day_0_labels\.npy: row 37 \(0-based\): label 2"):
        for _ in range(2):
            src.next_batch()
    np.save(d / "day_0_labels.npy", np.load(mh / "day_0_labels.npy"))
    arrays = _sparse_of(mh, 1)
    arrays["3"][5, 1] = -4
    np.savez(d / "day_1_sparse_multi_hot.npz", **arrays)
    src = make_source(_read_cfg(d))
    with pytest.raises(DataError, match=r"day_1_sparse_multi_hot\.npz: table 3 \(member "
                                        r"3\.npy\), row 5 \(0-based\), id -4: negative"):
        for _ in range(6):
            src.next_batch()


# ------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def trained(mh, tmp_path_factory) -> Path:
    """dcnv2-tiny trained 4 steps on the files (torchrec's --synthetic_multi_hot_criteo_path
    spelling), evaluated on the test half: compiled once, into RUN/artifact."""
    out = tmp_path_factory.mktemp("run") / "r"
    assert cli.main(["train", "--config", "dcnv2-tiny", "--synthetic_multi_hot_criteo_path",
                     str(mh), "--mini-batch-size", str(B), "--steps", "4", "--eval-every", "2",
                     "--optimizer", "adagrad", "--learning-rate", "0.004", "--quiet",
                     "--out", str(out)]) == 0
    return out


def test_training_a_few_steps_on_the_files(trained, mh):
    s = json.loads((trained / "summary.json").read_text())
    assert s["steps"] == 4 and np.isfinite(s["final_loss"])
    assert s["data"]["kind"] == "criteo-multihot" and s["data"]["path"] == str(mh)
    assert s["data"]["train_rows"] == 200 and s["data"]["held_out_rows"] == VAL_ROWS
    assert s["config"]["data"]["multi_hot_sizes"] == list(SIZES)  # from the data
    assert s["eval"]["rows"] == VAL_ROWS and 0 <= s["eval"]["auc"] <= 1
    ckpt = json.loads((trained / "checkpoints" / "step_000004" / "manifest.json").read_text())
    assert ckpt["data"]["kind"] == "multihot" and ckpt["data"]["next_row"] == 4 * B


def test_cli_refuses_bad_data_with_exit_2_and_no_traceback(trained, mh, tmp_path, capsys):
    art = str(trained / "artifact")
    base = ["train", "--artifact", art, "--data", "criteo-multihot", "--steps", "2",
            "--data-randomize", "none", "--quiet", "--no-eval"]
    # compressed npz: refused before training starts
    d = _copy(mh, tmp_path)
    _member_npz(d / "day_2_sparse_multi_hot.npz", _sparse_of(mh, 2), compressed=True)
    assert cli.main([*base, "--data-path", str(d), "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "day_2_sparse_multi_hot.npz: member 0.npy is compressed" in err
    assert "Traceback" not in err
    # an id past its table's rows: refused with file, table and row, before any kernel
    arrays = _sparse_of(mh, 0)
    arrays["11"][9, 2] = 1000
    np.savez(d / "day_2_sparse_multi_hot.npz", **_sparse_of(mh, 2))
    np.savez(d / "day_0_sparse_multi_hot.npz", **arrays)
    assert cli.main([*base, "--data-path", str(d), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert ("day_0_sparse_multi_hot.npz: table 11 (member 11.npy), row 9 (0-based), id 1000 "
            "is outside the table's 1,000 rows") in err
    assert "Traceback" not in err
    # a directory that is not one
    assert cli.main([*base, "--data-path", str(tmp_path / "none"), "--out",
                     str(tmp_path / "r3")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_config_refuses_a_data_kind_without_its_path():
    with pytest.raises(ConfigError, match="--data criteo-multihot needs --data-path"):
        apply_overrides(TINY, data="criteo-multihot")
    cfg = apply_overrides(TINY, synthetic_multi_hot_criteo_path="/x")
    assert (cfg.data.kind, cfg.data.path) == ("criteo-multihot", "/x")


# ------------------------------------------------------------------ two ranks (mpi tier)


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec on PATH")
def test_two_ranks_train_what_one_rank_trains(mh, tmp_path, compiled):
    """mpiexec -n 2 on the files: every loss and every final parameter (--save-params) that of
    one rank on the same global batches, to 1e-5 of the parameter's largest element (as
    test_distributed's 2-rank runs); then the final evaluation of the val half (50 of the odd
    last day's 99 rows: a short last batch cut between the ranks)."""
    from runtime.trainer import Trainer

    out = tmp_path / "r2"
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    p = subprocess.run([shutil.which("mpiexec"), "-n", "2", sys.executable, "-m", "dlrm_tvm",
                        "train", "--config", "dcnv2-tiny", "--data", "criteo-multihot",
                        "--data-path", str(mh), "--mini-batch-size", str(B), "--steps", "8",
                        "--quiet", "--threads", "1", "--save-params",
                        "--out", str(out)], capture_output=True, text=True, timeout=300,
                       env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    got = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()
           if '"eval"' not in x]
    cfg = _read_cfg(mh, "total", seed=0)  # the run's config: the preset's seed and shuffle
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, steps=8))
    vm, _ = compiled(cfg)
    tr, src = Trainer(cfg, vm), make_source(cfg)
    init = tr.state()
    want = [tr.step(src.next_batch())["loss"] for _ in range(8)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    params, one = np.load(out / "params.npz"), tr.state()
    assert sorted(params.files) == sorted(one)
    for k, w in one.items():
        diff = np.abs(params[k] - w) / max(float(np.abs(w).max()), 1e-30)
        assert float(diff.max()) < 1e-5, f"{k}: max relative difference {diff.max():.2e}"
        assert not np.array_equal(params[k], init[k]), f"{k} did not train"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["eval"]["rows"] == VAL_ROWS
    assert 0 <= summary["eval"]["auc"] <= 1


def test_plan_takes_the_bag_sizes_from_the_data(tmp_path, capsys):
    """`plan` makes the plan a run makes: on a multi-hot dataset the lookups per step come from
    the data's bag sizes (the config gives none)."""
    import json

    out = tmp_path / "mh"
    cfg = _gen_cfg()
    materialize_multihot(out, cfg, days=2, rows_per_day=2 * cfg.train.batch_size,
                         progress=False, log=lambda *a: None)
    sizes = cfg.data.multi_hot_sizes
    assert cli.main(["plan", "--config", "dcnv2-tiny", "--data", "criteo-multihot",
                     "--data-path", str(out), "--ranks", "1", "--mini-batch-size",
                     str(cfg.train.batch_size), "--json", str(tmp_path / "p.json")]) == 0
    rep = json.loads((tmp_path / "p.json").read_text())
    assert rep["per_rank"][0]["lookups_per_step"] == pytest.approx(
        cfg.train.batch_size * sum(sizes))


def test_materialize_estimates_first_and_refuses_what_will_not_fit(tmp_path, capsys,
                                                                   monkeypatch):
    """`--multi-hot-sizes 100000` once wrote 15 GB unannounced: the size is estimated first
    (and said), a dataset larger than the free space is refused before anything is written."""
    from collections import namedtuple

    from dlrm_tvm.data.criteo import multihot_writer

    out = tmp_path / "big"
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(multihot_writer.shutil, "disk_usage",
                        lambda p: Usage(10 << 30, 0, 1 << 30))
    assert cli.main(["materialize-multihot", "--config", "dcnv2-tiny", "--multi-hot-sizes",
                     "100000", "--rows-per-day", "2048", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "GiB are free there" in err and "takes 79.35 GiB (6,144 rows" in err, err
    assert not [p for p in out.iterdir() if p.name.startswith((".tmp_day_", "day_"))]


def test_materialize_interrupted_leaves_no_temporary_day(tmp_path, monkeypatch):
    from dlrm_tvm.config import PRESETS
    from dlrm_tvm.data.criteo import multihot_writer

    calls = {"n": 0}
    real = multihot_writer._DayWriter.write

    def write(self, *a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(multihot_writer._DayWriter, "write", write)
    cfg = PRESETS["dcnv2-tiny"]
    cfg = cfg.replace(data=dataclasses.replace(cfg.data, multi_hot_sizes=(2,)))
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        multihot_writer.materialize_multihot(out, cfg, days=2, rows_per_day=300,
                                             progress=False, log=None)
    assert not list(out.glob(".tmp_day_*")), list(out.iterdir())
