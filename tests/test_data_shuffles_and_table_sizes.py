"""Data: shuffling with the reference's modes, table sizes from the preprocessing's
meta.json with a warning whenever ids are folded, ``preprocess`` in parallel (byte for byte the
serial output, ``file:line`` kept), progress lines for preprocess and evaluation, and
``eval --no-labels``. Fast: only the last test compiles (tiny, once, plus two evaluations)."""

from __future__ import annotations

import dataclasses
import filecmp
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from dlrm_tvm.config import PRESETS, Config, ConfigError, DataConfig, load_config, to_toml
from dlrm_tvm.config_io import apply_overrides
from dlrm_tvm.data.criteo import (
    CategoryMap,
    DataError,
    preprocess,
    read_raw,
    write_synthetic_raw,
)
from dlrm_tvm.data.criteo import parallel as par
from dlrm_tvm.data.criteo.shuffle import Permutation, RowOrder
from dlrm_tvm.data.sources import (
    BinarySource,
    SyntheticSource,
    make_source,
    preprocess_for_run,
    sized_for_data,
)

TINY = PRESETS["tiny"]


def _cfg(B: int = 32, seed: int = 0, **data) -> Config:
    return TINY.replace(train=dataclasses.replace(TINY.train, batch_size=B, seed=seed),
                        data=DataConfig(**data))


def _bin_file(path: Path, n: int, seed: int = 0, id_high: int = 1000) -> Path:
    """An MLPerf binary file whose row i has count I1 = i (so a batch names its rows)."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, 40), np.int32)
    rows[:, 0] = rng.integers(0, 2, n)
    rows[:, 1] = np.arange(n)
    rows[:, 2:14] = rng.integers(0, 50, (n, 12))
    rows[:, 14:] = rng.integers(0, id_high, (n, 26))
    rows.tofile(path)
    return path


def _rows_of(batch) -> np.ndarray:
    return np.rint(np.expm1(batch.dense[:, 0].astype(np.float64))).astype(np.int64)


# ------------------------------------------------------------------ 1. shuffling


def test_permutation_is_a_keyed_bijection():
    rng = np.random.default_rng(14)
    for n in [0, 1, 2, 3, *rng.integers(4, 70_000, 6).tolist()]:
        p = Permutation(n, [int(rng.integers(1 << 30)), 7])(np.arange(n))
        assert np.array_equal(np.sort(p), np.arange(n)), n
    a, b, c = (Permutation(5000, k)(np.arange(5000)) for k in ([1, 2], [1, 2], [1, 3]))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs(np.corrcoef(np.arange(5000), a)[0, 1]) < 0.1  # not near file order


def test_row_order_modes():
    rng = np.random.default_rng(5)
    days = rng.integers(50, 400, 4).tolist()
    n, starts = sum(days), np.cumsum([0] + days)
    none = RowOrder(n, "none", days)(0, n)
    assert np.array_equal(none, np.arange(n))
    day = RowOrder(n, "day", days, seed=3, epoch=0)(0, n)
    assert not np.array_equal(day, none)
    for d in range(len(days)):  # each day's positions read that day's rows, each once
        assert np.array_equal(np.sort(day[starts[d]:starts[d + 1]]),
                              np.arange(starts[d], starts[d + 1]))
    total = RowOrder(n, "total", days, seed=3, epoch=0)(0, n)
    assert np.array_equal(np.sort(total), np.arange(n))
    assert (total[:days[0]] >= days[0]).any()  # rows cross days
    again = RowOrder(n, "total", days, seed=3, epoch=1)(0, n)
    assert not np.array_equal(total, again)  # a new order every epoch
    B = 16
    nb = RowOrder(n, "none", days, batch_size=B, shuffle_batches=True, seed=1)(0, n)
    whole = n // B * B
    blocks = nb[:whole].reshape(-1, B)
    assert (np.diff(blocks, axis=1) == 1).all() and (blocks[:, 0] % B == 0).all()
    assert not np.array_equal(blocks[:, 0], np.arange(0, whole, B))  # batches moved
    assert np.array_equal(np.sort(blocks[:, 0]), np.arange(0, whole, B))
    assert np.array_equal(nb[whole:], np.arange(whole, n))  # the dropped tail stays
    # computed in blocks: any split of the positions gives the same rows
    o = RowOrder(n, "total", days, seed=9)
    cuts = np.sort(rng.integers(0, n, 5)).tolist()
    parts = [o(a, b) for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    assert np.array_equal(np.concatenate(parts), o(0, n))


def _epoch(src: BinarySource, batches: int) -> list[np.ndarray]:
    return [_rows_of(src.next_batch()) for _ in range(batches)]


@pytest.mark.parametrize("mode", ["none", "day", "total"])
def test_binary_source_epochs_in_each_mode(tmp_path, mode):
    n, B = 1000, 64
    f = _bin_file(tmp_path / "train.bin", n, seed=2)
    src = make_source(_cfg(B, seed=4, kind="mlperf-bin", path=str(f), shuffle=mode))
    nb = n // B
    e1, e2 = np.concatenate(_epoch(src, nb)), np.concatenate(_epoch(src, nb))
    assert src.epoch == 1
    assert len(set(e1.tolist())) == nb * B  # every row at most once an epoch
    if mode == "none":
        assert np.array_equal(e1, np.arange(nb * B)) and np.array_equal(e1, e2)
    else:  # one file = one day: day and total both shuffle all of it, anew each epoch
        assert not np.array_equal(e1, np.arange(nb * B)) and not np.array_equal(e1, e2)
        assert len(set(e1.tolist()) - set(range(nb * B))) > 0  # rows of the tail come in
    # the held-out rows are never shuffled
    src = make_source(_cfg(B, kind="mlperf-bin", path=str(f), eval_path=str(f),
                           shuffle=mode))
    got = np.concatenate([_rows_of(b)[:k] for b, k in src.eval_batches()])
    assert np.array_equal(got, np.arange(n)) and len(src.eval_batches()) == -(-n // B)


def test_day_mode_keeps_kaggle_days(tmp_path):
    write_synthetic_raw(tmp_path / "train.txt", 700, seed=3)
    meta = preprocess([tmp_path / "train.txt"], tmp_path / "pre", remap=True)
    cfg = _cfg(20, seed=1, kind="criteo-kaggle", path=str(tmp_path / "pre"), shuffle="day")
    src = make_source(cfg)
    assert src.train.day_rows == meta["day_rows"][:-1] == [100] * 6
    order = src.stream.order(0, src.train.rows)
    for d in range(6):
        assert np.array_equal(np.sort(order[100 * d:100 * (d + 1)]),
                              np.arange(100 * d, 100 * (d + 1)))
    assert not np.array_equal(order, np.arange(600))


def test_resume_mid_epoch_gives_the_same_batches(tmp_path):
    f = _bin_file(tmp_path / "t.bin", 500, seed=6)
    for mode, sb in [("total", False), ("day", True), ("none", True)]:
        cfg = _cfg(32, seed=8, kind="mlperf-bin", path=str(f), shuffle=mode,
                   shuffle_batches=sb)
        a = make_source(cfg)
        _epoch(a, 11)
        state = json.loads(json.dumps(a.state()))  # as a checkpoint stores it
        assert state["shuffle"] == mode and state["shuffle_batches"] == sb
        want = _epoch(a, 12)  # crosses into the next epoch (15 batches an epoch)
        b = make_source(cfg)
        b.restore(state)
        got = _epoch(b, 12)
        assert all(np.array_equal(x, y) for x, y in zip(want, got, strict=True)), mode


def test_each_rank_reads_its_slice_of_the_shuffled_batch(tmp_path):
    f = _bin_file(tmp_path / "t.bin", 400, seed=1)
    cfg = _cfg(40, seed=5, kind="mlperf-bin", path=str(f), shuffle="total")
    whole = make_source(cfg)
    r0, r1 = make_source(cfg, 0, 2), make_source(cfg, 1, 2)
    assert r0.local and r1.local
    for _ in range(15):  # past an epoch (10 batches)
        g = whole.next_batch()
        a, b = r0.next_batch(), r1.next_batch()
        assert a.size == b.size == 20
        assert np.array_equal(np.concatenate([_rows_of(a), _rows_of(b)]), _rows_of(g))
        assert np.array_equal(np.concatenate([a.labels, b.labels]), g.labels)


def test_shuffle_config_fields(tmp_path):
    with pytest.raises(ConfigError, match="shuffle must be one of"):
        DataConfig(shuffle="days")
    with pytest.raises(ConfigError, match="table_sizes must be one of"):
        DataConfig(table_sizes="meta")
    assert DataConfig().shuffle == "total" and DataConfig().table_sizes == "data"
    cfg = _cfg(shuffle="day", shuffle_batches=True, table_sizes="config")
    assert Config.from_dict(cfg.to_dict()) == cfg
    p = tmp_path / "c.toml"
    p.write_text(to_toml(cfg))
    assert load_config(p) == cfg
    p.write_text('preset = "tiny"\n[data]\nshuffle = 3\n')
    with pytest.raises(ConfigError, match=r"\[data\] shuffle must be a string"):
        load_config(p)


def test_synthetic_data_ignores_shuffle():
    a = SyntheticSource(_cfg(shuffle="none")).next_batch()
    b = SyntheticSource(_cfg(shuffle="total", shuffle_batches=True)).next_batch()
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.dense, b.dense)


# ------------------------------------------------------------------ 2. table sizes


def test_table_sizes_from_the_data_unless_given(tmp_path):
    write_synthetic_raw(tmp_path / "train.txt", 3000, seed=11)
    meta = preprocess([tmp_path / "train.txt"], tmp_path / "pre", remap=True)
    sizes = tuple(meta["table_sizes"])
    assert max(sizes) > 1000 > min(sizes)  # some tables larger than tiny's, some smaller
    cfg = _cfg(kind="criteo-kaggle", path=str(tmp_path / "pre"))
    assert sized_for_data(cfg).model.table_rows == sizes
    capped = sized_for_data(cfg.replace(data=dataclasses.replace(cfg.data, max_ind_range=500)))
    assert capped.model.table_rows == tuple(min(s, 500) for s in sizes)
    kept = cfg.replace(data=dataclasses.replace(cfg.data, table_sizes="config"))
    assert sized_for_data(kept) is kept
    given = apply_overrides(cfg, arch_embedding_size="-".join(["77"] * 26))
    assert given.data.table_sizes == "config" and sized_for_data(given) is given
    p = tmp_path / "own.toml"  # a config file that gives the rows keeps them
    p.write_text('preset = "tiny"\n[model]\ntable_rows = [' + ", ".join(["5"] * 26) + "]\n")
    assert load_config(p).data.table_sizes == "config"
    p.write_text('preset = "tiny"\n[train]\nsteps = 3\n')
    assert load_config(p).data.table_sizes == "data"
    # a hash_mod output: max_ind_range rows each; the raw 32-bit hash: the config's rows
    preprocess([tmp_path / "train.txt"], tmp_path / "mod", max_ind_range=321)
    cfg = _cfg(kind="criteo-kaggle", path=str(tmp_path / "mod"))
    assert sized_for_data(cfg).model.table_rows == (321,) * 26
    preprocess([tmp_path / "train.txt"], tmp_path / "h32")
    cfg = _cfg(kind="criteo-kaggle", path=str(tmp_path / "h32"))
    assert sized_for_data(cfg) is cfg


def test_folded_ids_are_warned_once_and_recorded(tmp_path, caplog):
    write_synthetic_raw(tmp_path / "train.txt", 3000, seed=12)
    meta = preprocess([tmp_path / "train.txt"], tmp_path / "pre", remap=True)
    rows = [int(x) for x in np.random.default_rng(3).integers(10, 3000, 26)]
    cfg = apply_overrides(_cfg(kind="criteo-kaggle", path=str(tmp_path / "pre")),
                          arch_embedding_size="-".join(map(str, rows)))
    want = [t for t in range(26) if meta["table_sizes"][t] > rows[t]]
    assert want
    with caplog.at_level(logging.WARNING, logger="dlrm_tvm"):
        src = make_source(cfg)
        for _ in range(3):
            src.next_batch()
    warns = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 1 and f"{len(want)} of the model's tables" in warns[0].message
    t = want[0]
    assert (f"table {t}: {meta['table_sizes'][t] - 1:,} distinct ids folded into "
            f"{rows[t]:,} rows") in warns[0].message
    folded = src.describe()["folded"]
    assert [f["table"] for f in folded] == want
    assert all(f["data_rows"] == meta["table_sizes"][f["table"]] for f in folded)
    # sized from the data: nothing folded, no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dlrm_tvm"):
        src = make_source(sized_for_data(_cfg(kind="criteo-kaggle", path=str(tmp_path / "pre"))))
    assert src.describe()["folded"] == [] and not caplog.records
    # no meta.json (a bare MLPerf file): ids are watched, the first fold warned once
    f = _bin_file(tmp_path / "bare.bin", 300, seed=4, id_high=5000)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dlrm_tvm"):
        src = make_source(_cfg(20, kind="mlperf-bin", path=str(f)))
        for _ in range(20):
            src.next_batch()
    assert len(caplog.records) == 1 and "ids up to" in caplog.records[0].message
    assert len(src.describe()["folded"]) == 26


def test_in_run_preprocessing_remaps_and_is_reused(tmp_path):
    write_synthetic_raw(tmp_path / "train.txt", 800, seed=13)
    cfg = _cfg(kind="criteo-kaggle", path=str(tmp_path / "train.txt"))
    said: list[str] = []
    d = preprocess_for_run(cfg, tmp_path / "run", said.append)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["id_mode"] == "remap" and (d / "mapping.npz").is_file()
    assert sized_for_data(cfg, d).model.table_rows == tuple(meta["table_sizes"])
    said.clear()
    preprocess_for_run(cfg, tmp_path / "run", said.append)
    assert said and said[0].startswith("reusing")
    # evaluation's ids: the training's mapping applied as is, the same ids
    e = preprocess_for_run(cfg, tmp_path / "ev", said.append, remap=False,
                           mapping=d / "mapping.npz")
    em = json.loads((e / "meta.json").read_text())
    assert em["table_sizes"] == meta["table_sizes"] and em["id_mode"] == "remap"
    assert filecmp.cmp(d / "train.bin", e / "train.bin", shallow=False)
    said.clear()
    preprocess_for_run(cfg, tmp_path / "run", said.append, remap=False)
    assert "preprocessing again" in said[0] and "remap was True, now False" in said[0]
    assert json.loads((d / "meta.json").read_text())["id_mode"] == "hash32"


# ------------------------------------------------------------------ 3. preprocess in parallel


@pytest.fixture
def small_ranges(monkeypatch):
    """Parallel preprocessing on small files: many ranges of a few KiB."""
    monkeypatch.setattr(par, "MIN_BYTES", 0)
    monkeypatch.setattr(par, "MIN_RANGE_BYTES", 4096)
    monkeypatch.setattr(par, "RANGE_BYTES", 64 << 10)


def _same_output(a: Path, b: Path, meta: dict) -> None:
    for name in [*meta["files"], "meta.json"]:
        assert filecmp.cmp(a / name, b / name, shallow=False), name
    if meta["remap"]:
        with np.load(a / "mapping.npz") as x, np.load(b / "mapping.npz") as y:
            assert sorted(x.files) == sorted(y.files)
            assert all(np.array_equal(x[k], y[k]) for k in x.files)


@pytest.mark.parametrize("fmt,kw", [("kaggle", {"remap": True}),
                                    ("terabyte", {"remap": True, "max_ind_range": 700}),
                                    ("kaggle", {"max_ind_range": 5000})])
def test_parallel_preprocess_is_the_serial_output_byte_for_byte(tmp_path, small_ranges, fmt,
                                                                kw):
    ins = [write_synthetic_raw(tmp_path / "a", 3000, seed=21, terabyte_style=False) or
           tmp_path / "a", write_synthetic_raw(tmp_path / "b", 1700, seed=22) or tmp_path / "b"]
    assert len(par.plan_ranges(ins, 3)[0]) > 4
    serial = preprocess(ins, tmp_path / "s", fmt=fmt, **kw)
    for w in (2, 3):
        seen: list[tuple] = []
        got = preprocess(ins, tmp_path / f"p{w}", fmt=fmt, workers=w,
                         progress=lambda b, t, r, seen=seen: seen.append((b, t, r)), **kw)
        assert got == serial
        _same_output(tmp_path / "s", tmp_path / f"p{w}", serial)
        assert not (tmp_path / f"p{w}" / ".parts").exists()
        done = [b for b, _, _ in seen]
        assert done == sorted(done) and done[-1] == seen[-1][1] and seen[-1][2] == serial["rows"]


def test_parallel_errors_and_skips_keep_file_and_line(tmp_path, small_ranges):
    write_synthetic_raw(tmp_path / "ok", 2000, seed=23)
    lines = (tmp_path / "ok").read_text().splitlines()
    rng = np.random.default_rng(23)
    bad_at = sorted(rng.choice(np.arange(300, 2000), 14, replace=False).tolist())
    for i in bad_at:
        lines[i] = lines[i].replace("\t", "\tx7", 1)  # I1 not an integer
    bad = tmp_path / "bad"
    bad.write_text("\n".join(lines) + "\n")
    ins = [tmp_path / "ok", bad]
    with pytest.raises(DataError) as serial:
        preprocess(ins, tmp_path / "s")
    with pytest.raises(DataError) as para:
        preprocess(ins, tmp_path / "p", workers=2)
    assert str(para.value) == str(serial.value) == (
        f"{bad}:{bad_at[0] + 1}: count I1 'x7{lines[bad_at[0]].split(chr(9))[1][2:]}' is not "
        f"an integer in int32 range")
    assert not (tmp_path / "p" / ".parts").exists()
    s = preprocess(ins, tmp_path / "s2", skip_bad_lines=True)
    p = preprocess(ins, tmp_path / "p2", skip_bad_lines=True, workers=2)
    assert p == s and p["skipped"] == 14
    reasons = p["inputs"][1]["skip_reasons"]
    assert [int(r.split(":")[1]) for r in reasons] == [i + 1 for i in bad_at[:10]]
    _same_output(tmp_path / "s2", tmp_path / "p2", s)
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(DataError, match="empty:1: empty file"):
        preprocess([tmp_path / "ok", empty], tmp_path / "e", workers=2)


def test_preprocess_command_takes_workers(tmp_path, capsys):
    from dlrm_tvm import cli

    write_synthetic_raw(tmp_path / "t.txt", 500, seed=24)
    assert cli.main(["preprocess", str(tmp_path / "t.txt"), "--out", str(tmp_path / "o"),
                     "--workers", "2", "--remap"]) == 0
    out, err = capsys.readouterr()
    assert "500 rows" in out and "preprocess" in err and "rows/s" in err and "ETA" in err
    assert cli.main(["preprocess", str(tmp_path / "t.txt"), "--out", str(tmp_path / "q"),
                     "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        cli.main(["preprocess", str(tmp_path / "t.txt"), "--out", "x", "--workers", "0"])
    assert par.default_workers() >= 1


# ------------------------------------------------------------------ 4. progress


def test_progress_scale_delay_and_rate():
    from dlrm_tvm.progress import Progress

    buf = io.StringIO()
    p = Progress(10 * 2**20, "preprocess", stream=buf, unit="MiB", scale=2**20, rate_of="rows")
    for k in range(1, 11):
        p.update(k * 2**20, rows=k * 1000)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("preprocess 10.0/10.0 MiB (100%)")
    assert "rows 10000" in lines[-1] and "rows/s" in lines[-1] and "MiB/s" in lines[-1]
    buf = io.StringIO()
    q = Progress(5, "eval", stream=buf, delay=3600)
    for k in range(1, 6):
        q.update(k)
    assert buf.getvalue() == ""  # a short task stays silent
    buf = io.StringIO()
    q = Progress(5, "eval", stream=buf, show=False, also=(seen := []).append)
    q.update(5)
    assert buf.getvalue() == "" and seen[0].startswith("eval 5/5 (100%)")


def test_run_eval_shows_batches_rate_and_eta(tmp_path, capsys):
    from dlrm_tvm.runtime.comm import LocalComm

    from dlrm_tvm.evaluate import run_eval

    f = _bin_file(tmp_path / "t.bin", 250, seed=3)
    cfg = _cfg(32, kind="mlperf-bin", path=str(f), eval_path=str(f))
    src = make_source(cfg)

    class Fake:  # a model that predicts the label: AUC 1
        comm = LocalComm()

        def predict(self, batch):
            return np.where(batch.labels > 0, 0.9, 0.1).astype(np.float32)

    seen: list[str] = []
    r = run_eval(Fake(), src.eval_batches(), cfg, show=True, also=seen.append, delay=0)
    assert r["rows"] == 250 and r["auc"] == 1.0
    err = capsys.readouterr().err
    assert "eval 8/8 (100%)" in err and "rows/s" in err and "batch/s" in err and "ETA" in err
    assert seen[-1].startswith("eval 8/8")
    run_eval(Fake(), src.eval_batches(), cfg)  # not shown by default (quiet runs)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ 5. unlabelled files


def _strip_labels(src: Path, dst: Path) -> Path:
    lines = src.read_text().splitlines()
    dst.write_text("\n".join(x.split("\t", 1)[1] for x in lines) + "\n")
    return dst


def test_unlabelled_rows_parse_like_labelled_ones(criteo_sample, tmp_path):
    for name in ("train.tsv", "test.tsv"):
        nolab = _strip_labels(criteo_sample / name, tmp_path / name)
        a, sa = read_raw(criteo_sample / name)
        b, sb = read_raw(nolab, labels=False)
        assert np.array_equal(a.dense, b.dense) and np.array_equal(a.cats, b.cats)
        assert np.array_equal(a.lines, b.lines) and (b.labels == 0).all()
        assert sa.padded == sb.padded and sb.rows == 100
        with pytest.raises(DataError, match=rf"{name}:1: 40 fields: a labelled line"):
            read_raw(criteo_sample / name, labels=False)
        with pytest.raises(DataError, match=r"1: .*39 fields: if the file has no label column"):
            read_raw(nolab)
    lines = (tmp_path / "train.tsv").read_text().splitlines()
    lines[57] += "\tdeadbeef"  # a 40-field (labelled) line in an unlabelled file
    (tmp_path / "mixed.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"mixed.tsv:58: 40 fields"):
        read_raw(tmp_path / "mixed.tsv", labels=False)


def test_eval_no_labels_predicts_every_row_in_file_order(criteo_sample, tmp_path, caplog):
    """One tiny run on the real rows with 10-row tables (ids folded: warned, recorded), then
    the test rows evaluated with labels and, stripped of them, with --no-labels."""
    from dlrm_tvm import cli

    run, rows = tmp_path / "run", "-".join(["10"] * 26)
    with caplog.at_level(logging.WARNING, logger="dlrm_tvm"):
        assert cli.main(["train", "--config", "tiny", "--data", "criteo-kaggle", "--data-path",
                         str(criteo_sample / "train.tsv"), "--mini-batch-size", "16",
                         "--steps", "6", "--no-eval", "--quiet", "--arch-embedding-size", rows,
                         "--out", str(run)]) == 0
    warns = [r.message for r in caplog.records if "ids folded" in r.message]
    assert len(warns) == 1
    s = json.loads((run / "summary.json").read_text())
    assert s["data"]["folded"] and s["data"]["shuffle"] == "total"
    assert s["config"]["model"]["table_rows"] == [10] * 26
    assert s["data"]["ids"]["id_mode"] == "remap"
    common = ["--checkpoint", str(run), "--config", "tiny", "--data", "criteo-kaggle",
              "--mini-batch-size", "16", "--arch-embedding-size", rows]
    assert cli.main(["eval", *common, "--data-path", str(criteo_sample / "test.tsv"),
                     "--save-predictions", "--quiet", "--out", str(tmp_path / "e")]) == 0
    nolab = _strip_labels(criteo_sample / "test.tsv", tmp_path / "test_nolabels.tsv")
    assert cli.main(["eval", *common, "--data-path", str(nolab), "--no-labels",
                     "--out", str(tmp_path / "n")]) == 0
    want = np.load(tmp_path / "e" / "predictions.npy")
    got = np.load(tmp_path / "n" / "predictions.npy")
    assert want.shape == got.shape == (100,)
    np.testing.assert_array_equal(got, want)
    txt = np.array([float(x) for x in (tmp_path / "n" / "predictions.txt").read_text().split()])
    np.testing.assert_allclose(txt, got, atol=1e-8)
    ns = json.loads((tmp_path / "n" / "summary.json").read_text())
    assert ns["rows"] == 100 and ns["labels"] is False and "auc" not in ns and "loss" not in ns
    assert ns["data"]["padded_lines"] == 39
    # the labelled file with --no-labels, and the unlabelled one without: refused
    capsys_err = io.StringIO()
    import contextlib

    with contextlib.redirect_stderr(capsys_err):
        assert cli.main(["eval", *common, "--data-path", str(criteo_sample / "test.tsv"),
                         "--no-labels", "--out", str(tmp_path / "x")]) == 2
        assert cli.main(["eval", *common, "--data-path", str(nolab), "--quiet",
                         "--out", str(tmp_path / "y")]) == 2
    err = capsys_err.getvalue()
    assert "test.tsv:1: 40 fields: a labelled line" in err
    assert "test_nolabels.tsv:1:" in err and "if the file has no label column" in err
    assert not (tmp_path / "x" / "artifact").exists()  # refused before compiling
    # the mapping the eval used is the training run's
    m = CategoryMap.load(run / "data" / "mapping.npz")
    assert json.loads((tmp_path / "e" / "data" / "meta.json").read_text())[
        "table_sizes"] == m.table_sizes
