"""Data safety without compiling anything: preprocessed files tied to their inputs, binary rows
checked before a kernel sees them, bad data paths and meta.json file names refused with a
message naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dlrm_tvm.config import Config, DataConfig, ModelConfig, TrainConfig, mlperf_rows
from dlrm_tvm.data.criteo import BinaryDataset, DataError, preprocess, write_synthetic_raw
from dlrm_tvm.data.sources import make_source, needs_preprocess, preprocess_for_run

TABLES = mlperf_rows(1000)
MODEL = ModelConfig(mlp_bot=(13, 8), table_rows=TABLES, embedding_dim=8)


def _cfg(kind: str, path, eval_path="", max_ind_range: int = 1000, B: int = 32) -> Config:
    return Config(model=MODEL, train=TrainConfig(batch_size=B),
                  data=DataConfig(kind=kind, path=str(path), eval_path=str(eval_path),
                                  max_ind_range=max_ind_range))


def _rows(n: int, seed: int) -> np.ndarray:
    """Random valid MLPerf rows (never all zeros)."""
    rng = np.random.default_rng(seed)
    rows = np.empty((n, 40), "<i4")
    rows[:, 0] = rng.integers(0, 2, n)
    rows[:, 1:14] = rng.integers(0, 10**5, (n, 13))
    rows[:, 14:] = rng.integers(0, 2**31 - 1, (n, 26))
    return rows


def _run(cfg, out):
    logs = []
    dest = preprocess_for_run(cfg, out, logs.append)
    return dest, logs


# --------------------------------------------------------------- preprocessed data and its input


def test_run_dir_reused_when_the_input_is_identical(tmp_path):
    raw = tmp_path / "a.txt"
    write_synthetic_raw(raw, 300, seed=1)
    cfg = _cfg("criteo-kaggle", raw)
    assert needs_preprocess(cfg)
    dest, logs = _run(cfg, tmp_path / "run")
    meta = json.loads((dest / "meta.json").read_text())
    ident = meta["input_identity"][0]
    assert ident["path"] == str(raw.resolve()) and ident["size"] == raw.stat().st_size
    assert ident["mtime_ns"] == raw.stat().st_mtime_ns and len(ident["sha256"]) == 64
    assert meta["params"]["format"] == "kaggle" and meta["params"]["max_ind_range"] == 1000
    stamp = {f.name: f.stat().st_mtime_ns for f in dest.iterdir()}
    dest2, logs = _run(cfg, tmp_path / "run")
    assert dest2 == dest and any("reusing" in x for x in logs), logs
    assert not any(x.startswith("preprocessing") for x in logs)
    assert {f.name: f.stat().st_mtime_ns for f in dest.iterdir()} == stamp


def test_run_dir_redone_for_another_input_path(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    write_synthetic_raw(a, 300, seed=1)
    write_synthetic_raw(b, 210, seed=2)
    dest, _ = _run(_cfg("criteo-kaggle", a), tmp_path / "run")
    dest, logs = _run(_cfg("criteo-kaggle", b), tmp_path / "run")
    assert any("again" in x and str(b.resolve()) in x for x in logs), logs
    meta = json.loads((dest / "meta.json").read_text())
    assert meta["rows"] == 210 and meta["input_identity"][0]["path"] == str(b.resolve())
    src = make_source(_cfg("criteo-kaggle", b), data_dir=dest)
    assert src.train.rows + src.held_out.rows < 210 and src.describe()["path"] == str(b)


def test_run_dir_redone_for_changed_content_at_the_same_path(tmp_path):
    raw = tmp_path / "day"
    write_synthetic_raw(raw, 300, seed=1)
    cfg = _cfg("criteo-terabyte", raw)
    dest, _ = _run(cfg, tmp_path / "run")
    write_synthetic_raw(raw, 250, seed=5)  # rewritten: other rows
    dest, logs = _run(cfg, tmp_path / "run")
    assert any("again" in x and "changed" in x for x in logs), logs
    assert json.loads((dest / "meta.json").read_text())["rows"] == 250
    # same size, same mtime, other bytes in the first MiB: the content digest sees it
    st = raw.stat()
    data = bytearray(raw.read_bytes())
    data[0] = ord("1") if data[0] == ord("0") else ord("0")  # a label flipped
    raw.write_bytes(bytes(data))
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns))
    dest, logs = _run(cfg, tmp_path / "run")
    assert any("content differs" in x for x in logs), logs


def test_run_dir_redone_for_a_byte_changed_mid_file_with_the_mtime_restored(tmp_path):
    """A label flipped in the middle of a file of several MiB, size and mtime as before: the
    whole-content digest sees it (a digest of the first and last MiB would not)."""
    raw = tmp_path / "day"
    write_synthetic_raw(raw, 30_000, seed=4)
    assert raw.stat().st_size > 3 * 2**20
    cfg = _cfg("criteo-terabyte", raw)
    _run(cfg, tmp_path / "run")
    st = raw.stat()
    data = bytearray(raw.read_bytes())
    mid = data.index(b"\n", len(data) // 2) + 1  # the label of a line in the middle
    data[mid] = ord("1") if data[mid] == ord("0") else ord("0")
    raw.write_bytes(bytes(data))
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns))
    _, logs = _run(cfg, tmp_path / "run")
    assert any("content differs" in x for x in logs), logs


def test_run_dir_redone_for_other_parameters_and_old_meta(tmp_path):
    raw = tmp_path / "day"
    write_synthetic_raw(raw, 200, seed=3)
    dest, _ = _run(_cfg("criteo-terabyte", raw, max_ind_range=1000), tmp_path / "run")
    dest, logs = _run(_cfg("criteo-terabyte", raw, max_ind_range=500), tmp_path / "run")
    assert any("max_ind_range was 1000, now 500" in x for x in logs), logs
    meta = json.loads((dest / "meta.json").read_text())
    del meta["input_identity"], meta["params"]  # as written before inputs were recorded
    (dest / "meta.json").write_text(json.dumps(meta))
    cfg = _cfg("criteo-terabyte", raw, max_ind_range=500)
    dest, logs = _run(cfg, tmp_path / "run")
    assert any("does not record" in x for x in logs), logs
    # an explicit preprocess directory (old meta.json too) is used as is
    (dest / "meta.json").write_text(json.dumps(meta))
    explicit = _cfg("criteo-terabyte", dest)
    assert not needs_preprocess(explicit)
    assert make_source(explicit).train.rows == 200


# --------------------------------------------------------------- binary rows checked


def _bad_file(tmp_path, row: int, col: int, value: int) -> Path:
    rows = _rows(200, seed=row + col)
    rows[row, col] = value
    p = tmp_path / "bad.bin"
    rows.tofile(p)
    return p


@pytest.mark.parametrize("col,value,what", [
    (0, 2, "label 2 is not 0 or 1"),
    (0, -1, "label -1 is not 0 or 1"),
    (5, -7, "count I5 is -7, negative"),
    (20, -3, "category C7 id -3 is negative"),
])
def test_mlperf_bin_bad_row_refused_naming_file_and_row(tmp_path, col, value, what):
    p = _bad_file(tmp_path, 77, col, value)
    src = make_source(_cfg("mlperf-bin", p))
    src.next_batch()
    src.next_batch()  # rows 0..63 are fine
    with pytest.raises(DataError) as e:
        src.next_batch()
    msg = str(e.value)
    assert msg.startswith(f"{p}: row 77 ") and what in msg, msg


def test_mlperf_bin_random_bytes_refused(tmp_path):
    p = tmp_path / "noise.bin"
    np.random.default_rng(4).integers(-2**31, 2**31, (100, 40)).astype("<i4").tofile(p)
    src = make_source(_cfg("mlperf-bin", p))
    with pytest.raises(DataError, match=r"noise\.bin: row 0 .*MLPerf binary"):
        src.next_batch()


def test_held_out_file_checked_too_and_file_row_counted_from_its_start(tmp_path):
    good, bad = tmp_path / "a.bin", tmp_path / "b.bin"
    _rows(100, seed=1).tofile(good)
    rows = _rows(50, seed=2)
    rows[41, 1] = -1
    rows.tofile(bad)
    src = make_source(_cfg("mlperf-bin", good, eval_path=f"{good},{bad}"))
    with pytest.raises(DataError, match=r"b\.bin: row 41 .*count I1 is -1"):
        list(src.eval_batches())


def test_large_ids_fold_and_hash32_ids_may_be_negative(tmp_path):
    # ids above a table's size are folded (the reference's max_ind_range): fine
    p = tmp_path / "ok.bin"
    _rows(64, seed=3).tofile(p)
    b = make_source(_cfg("mlperf-bin", p)).next_batch()
    table = np.repeat(np.arange(26), 32)
    assert (b.indices >= 0).all() and (b.indices < np.asarray(TABLES)[table]).all()
    # a hash32 output stores raw hashes: negative int32 are ids (read as uint32)
    raw = tmp_path / "day"
    write_synthetic_raw(raw, 300, seed=6)
    preprocess([raw], tmp_path / "h", fmt="terabyte")
    day = BinaryDataset(tmp_path / "h" / "day_0.bin")  # listed in the meta.json beside it
    assert (day.read(0, 300)[:, 14:] < 0).any()
    assert len(list(BinaryDataset(tmp_path / "h").batches(64, TABLES))) == 4


def test_preprocess_output_checked_as_its_meta_says(tmp_path):
    raw = tmp_path / "day"
    write_synthetic_raw(raw, 300, seed=8)
    preprocess([raw], tmp_path / "m", fmt="terabyte", max_ind_range=1000)
    f = tmp_path / "m" / "day_0.bin"
    rows = np.fromfile(f, "<i4").reshape(-1, 40)
    rows[123, 30] = -5  # hash_mod ids are >= 0
    rows.tofile(f)
    with pytest.raises(DataError, match=r"day_0\.bin: row 123 .*C17 id -5"):
        list(BinaryDataset(tmp_path / "m").batches(100, TABLES))


# --------------------------------------------------------------- data paths


def test_directory_as_mlperf_data_path_refused(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    for cfg in (_cfg("mlperf-bin", d), _cfg("mlperf-bin", tmp_path / "x.bin", eval_path=d)):
        if cfg.data.eval_path:
            _rows(64, 1).tofile(tmp_path / "x.bin")
        with pytest.raises(DataError, match=f"{d}: is a directory"):
            make_source(cfg)


def test_directory_without_meta_as_criteo_data_path_refused(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    (d / "train.txt").write_text("1\t2\n")
    cfg = _cfg("criteo-kaggle", d)
    assert needs_preprocess(cfg)
    with pytest.raises(DataError, match=f"{d}: is a directory.*no meta.json"):
        preprocess_for_run(cfg, tmp_path / "run", lambda s: None)
    with pytest.raises(DataError, match=f"{d}: is a directory"):
        preprocess([d], tmp_path / "out")  # `dlrm-tvm preprocess DIR`


@pytest.mark.parametrize("kind", ["mlperf-bin", "criteo-kaggle"])
def test_missing_data_path_refused(tmp_path, kind):
    missing = tmp_path / "nope.bin"
    with pytest.raises(DataError, match=f"{missing}: no such file"):
        if kind == "mlperf-bin":
            make_source(_cfg(kind, missing))
        else:
            preprocess_for_run(_cfg(kind, missing), tmp_path / "run", lambda s: None)
    with pytest.raises(DataError, match=f"{missing}: no such file"):
        preprocess([missing], tmp_path / "out")


def test_unreadable_data_path_refused(tmp_path, monkeypatch):
    p = tmp_path / "locked.bin"
    _rows(64, 2).tofile(p)
    os.chmod(p, 0)
    if os.geteuid() == 0:  # root reads anything: make opening it fail as for a user
        real_open = os.open

        def deny(path, flags, *a, **k):
            if Path(path) == p:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *a, **k)

        monkeypatch.setattr(os, "open", deny)
    try:
        with pytest.raises(DataError, match=f"{p}: cannot be read"):
            make_source(_cfg("mlperf-bin", p))
        with pytest.raises(DataError, match=f"{p}: cannot be read"):
            preprocess_for_run(_cfg("criteo-kaggle", p), tmp_path / "run", lambda s: None)
    finally:
        os.chmod(p, 0o644)


# --------------------------------------------------------------- meta.json file names


@pytest.mark.parametrize("name", ["../x.bin", "ABS"])
def test_meta_file_names_must_stay_inside(tmp_path, name):
    raw = tmp_path / "day"
    write_synthetic_raw(raw, 200, seed=9)
    d = tmp_path / "pre"
    preprocess([raw], d, fmt="terabyte", max_ind_range=1000)
    outside = tmp_path / "x.bin"
    _rows(200, 3).tofile(outside)
    name = str(outside) if name == "ABS" else name
    for key in ("splits", "files"):
        meta = json.loads((d / "meta.json").read_text())
        if key == "splits":
            meta["splits"]["train"] = [[name, 0, 200]]
        else:
            meta["files"] = {name: 200}
        (d / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(DataError, match=r"meta\.json: .*outside its directory"):
            BinaryDataset(d, split="all" if key == "files" else "train")
        with pytest.raises(DataError, match=r"meta\.json: .*outside its directory"):
            make_source(_cfg("criteo-terabyte", d))


def test_malformed_meta_refused_naming_it(tmp_path):
    d = tmp_path / "pre"
    d.mkdir()
    (d / "meta.json").write_text('{"files": {"day_0.bin": 3}, "splits": {"train": [["da')
    with pytest.raises(DataError, match=r"pre/meta\.json: cannot be read as JSON"):
        BinaryDataset(d)
    (d / "meta.json").write_text(json.dumps({"files": {}, "splits": {"train": [[1, 2]]},
                                             "table_sizes": [10] * 26}))
    with pytest.raises(DataError, match=r"meta\.json: splits\.train\[0\] must be"):
        BinaryDataset(d)


def test_a_second_preprocess_into_a_directory_in_use_is_refused(tmp_path):
    """Two preprocessings into one --processed-data-file raced (was: FileNotFoundError): the
    second is refused naming the first while it holds the directory; after it, one runs."""
    import fcntl

    from dlrm_tvm.data.criteo import DataError, preprocess

    raw = tmp_path / "a.txt"
    write_synthetic_raw(raw, 120, seed=1)
    out = tmp_path / "pp"
    out.mkdir()
    fd = os.open(out / ".preprocess.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"pid 4242")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(DataError, match=r"another preprocess \(pid 4242\) is writing"):
            preprocess([raw], out, max_ind_range=100)
        assert not (out / "meta.json").exists()
    finally:
        os.close(fd)
    assert preprocess([raw], out, max_ind_range=100)["rows"] == 120
