"""The Criteo data path: raw parsing and its bad-line policy, preprocessing, binary batches.

Tests about the real rows (``criteo_sample`` fixture, tests/conftest.py) skip without them;
every other test writes its Criteo-format rows with ``write_synthetic_raw``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dlrm_tvm.bench.loader_bench import loader_throughput
from dlrm_tvm.config import ModelConfig, mlperf_rows
from dlrm_tvm.data import validate_batch
from dlrm_tvm.data.criteo import (
    BinaryDataset,
    CategoryMap,
    DataError,
    make_batch,
    parse_raw,
    preprocess,
    read_raw,
    write_synthetic_raw,
)

TABLES = mlperf_rows(1000)  # 26 sizes from 3 to 1000: the folding is exercised
MODEL = ModelConfig(table_rows=TABLES)


def ref_parse(path: Path, max_ind_range: int | None = None) -> np.ndarray:
    """The reference's reading, line by line in Python: int64 [n, 40] rows."""
    out = []
    for line in path.read_text().rstrip("\n").split("\n"):
        f = line.split("\t")
        f += [""] * (40 - len(f))
        cats = [int(x, 16) if x else 0 for x in f[14:]]
        if max_ind_range:
            cats = [c % max_ind_range for c in cats]
        out.append([int(f[0])] + [max(int(x), 0) if x else 0 for x in f[1:14]] + cats)
    return np.array(out, np.int64)


def as_rows(chunk) -> np.ndarray:
    return np.concatenate([chunk.labels[:, None], chunk.dense, chunk.cats], 1).astype(np.int64)


def kaggle_rows(path: Path, rows: int = 100, seed: int = 21, final_newline: bool = False,
                terabyte_style: bool = True) -> Path:
    """Generated Kaggle-format rows; by default like the sample's train.tsv: every line with
    its 40 fields and the last one without its newline."""
    write_synthetic_raw(path, rows, seed=seed, terabyte_style=terabyte_style)
    if not final_newline:
        path.write_text(path.read_text().rstrip("\n"))
    return path


@pytest.fixture
def rows100(tmp_path) -> Path:
    return kaggle_rows(tmp_path / "rows.tsv")


def same_batch(a, b) -> None:
    for name in ("dense", "labels", "indices", "offsets"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


# --------------------------------------------------------------------------- real samples


def test_real_sample_files_parse(criteo_sample):
    TRAIN, TEST = criteo_sample / "train.tsv", criteo_sample / "test.tsv"
    chunk, st = read_raw(TRAIN)
    assert (st.rows, int(chunk.labels.sum()), st.padded, st.skipped) == (100, 29, 0, 0)
    assert chunk.lines[-1] == 100  # the last line, without its newline, is read
    last = TRAIN.read_text().split("\n")[-1].split("\t")
    assert chunk.cats[-1, -1] == int(last[-1], 16) and chunk.labels[-1] == int(last[0])

    # test.tsv also lacks a final newline: `wc -l` says 99, and its README copies that, but
    # it holds 100 rows (36 positives + 64 negatives).
    chunk, st = read_raw(TEST)
    assert (st.rows, int(chunk.labels.sum()), st.padded, st.skipped) == (100, 36, 39, 0)
    assert st.skip_reasons == []


@pytest.mark.parametrize("source", ["train.tsv", "test.tsv", "generated", "generated-stripped"])
@pytest.mark.parametrize("max_ind_range", [None, 1000])
def test_matches_reference_reading_in_any_chunking(request, tmp_path, source, max_ind_range):
    """The sample's two files (needing them), and generated rows that do not: 40 fields, and
    stripped trailing fields; neither with a final newline."""
    if source.endswith(".tsv"):
        path = request.getfixturevalue("criteo_sample") / source
    else:
        path = kaggle_rows(tmp_path / "g.tsv", 300, seed=8,
                           terabyte_style=source == "generated")
        assert (read_raw(path)[1].padded > 0) == (source == "generated-stripped")
    want = ref_parse(path, max_ind_range)
    for chunk_rows in (1, 7, 65536):
        chunk, _ = read_raw(path, max_ind_range=max_ind_range, chunk_rows=chunk_rows)
        assert np.array_equal(as_rows(chunk), want), chunk_rows


def test_synthetic_raw_matches_reference_reading(tmp_path):
    p = tmp_path / "day_0"
    write_synthetic_raw(p, 3000, seed=3, terabyte_style=False)
    chunk, st = read_raw(p, chunk_rows=500)
    assert np.array_equal(as_rows(chunk), ref_parse(p))
    assert st.rows == 3000 and st.padded > 0 and st.skipped == 0
    assert (chunk.cats > 2**31).any()  # full 32-bit hashes survive
    assert "\t-1\t" in p.read_text() and chunk.dense.min() == 0  # negatives were clamped


def test_dense_and_category_preprocessing(criteo_sample):
    TRAIN = criteo_sample / "train.tsv"
    chunk, _ = read_raw(TRAIN, max_ind_range=1000)
    # line 1: 0 <empty> 0 5 4 13275 14 35 4 41 <empty> 4 0 4 | 05db9164 ...
    # line 12: 1 2 -1 2 1 50 1 73 4 127 1 14 0 1 | ...
    hand = {0: [0, 0, 5, 4, 13275, 14, 35, 4, 41, 0, 4, 0, 4],
            11: [2, 0, 2, 1, 50, 1, 73, 4, 127, 1, 14, 0, 1]}
    for i, want in hand.items():
        assert chunk.dense[i].tolist() == want
    b = make_batch(chunk.to_rows()[[0, 11]], TABLES)
    assert b.dense.dtype == np.float32 and b.dense.shape == (2, 13)
    want = np.array([[math.log(x + 1) for x in hand[i]] for i in (0, 11)], np.float32)
    np.testing.assert_allclose(b.dense, want, rtol=1e-6)
    assert b.dense[1, 1] == 0.0 and b.dense[0, 0] == 0.0  # -1 and empty -> log(1)
    assert b.labels.tolist() == [0.0, 1.0]

    lines = [ln.split("\t") for ln in TRAIN.read_text().split("\n")]
    assert chunk.cats[0, 0] == 0x05DB9164 % 1000 == 684
    for row, col in ((0, 0), (0, 25), (1, 25), (57, 9), (99, 13)):
        text = lines[row][14 + col]
        assert text, (row, col)
        assert chunk.cats[row, col] == int(text, 16) % 1000
    assert lines[0][14 + 21] == "" and chunk.cats[0, 21] == 0  # empty category -> 0


# --------------------------------------------------------------------------- bad lines


def _corrupt(fields: list[str], case: str) -> list[str] | None:
    f = list(fields)
    if case == "too_many":
        return f + ["abc"]
    if case == "too_few":
        return f[:10]
    if case == "label":
        return ["2"] + f[1:]
    if case == "count":
        return f[:3] + ["1x"] + f[4:]
    if case == "hex":
        return f[:18] + ["zz12"] + f[19:]
    if case == "long_hex":
        return f[:18] + ["123456789"] + f[19:]
    return None  # "empty": an empty line is inserted


BAD = {"too_many": "41 fields", "too_few": "10 fields", "label": "label '2'",
       "count": "count I3 '1x'", "hex": "category C5 'zz12'", "long_hex": "category C5",
       "empty": "empty line"}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("lineno", [1, 50, 100])
def test_bad_line_is_named_or_skipped(tmp_path, rows100, case, lineno):
    lines = rows100.read_text().split("\n")
    assert len(lines) == 100
    bad = _corrupt(lines[lineno - 1].split("\t"), case)
    if bad is None:
        lines.insert(lineno - 1, "")
    else:
        lines[lineno - 1] = "\t".join(bad)
    p = tmp_path / f"bad_{case}.tsv"
    p.write_text("\n".join(lines) + "\n")

    with pytest.raises(DataError) as e:
        read_raw(p, chunk_rows=7)
    msg = str(e.value)
    assert f"bad_{case}.tsv:{lineno}:" in msg and BAD[case] in msg, msg
    assert e.value.line == lineno

    chunk, st = read_raw(p, skip_bad_lines=True, chunk_rows=7)
    clean, _ = read_raw(rows100)
    assert st.skipped == 1 and st.skip_reasons[0].endswith(e.value.reason)
    assert st.rows == (100 if bad is None else 99) and len(chunk) == st.rows
    keep = np.arange(100) if bad is None else np.delete(np.arange(100), lineno - 1)
    assert np.array_equal(as_rows(chunk), as_rows(clean)[keep])  # aligned after the bad line
    shift = 1 if bad is None else 0  # the inserted line moves later lines down by one
    assert np.array_equal(chunk.lines, keep + 1 + shift * (keep >= lineno - 1))


def test_several_bad_lines_skipped_and_counted(tmp_path, rows100):
    lines = rows100.read_text().split("\n")
    lines[2] = "x" + lines[2]
    lines[40] = "\t".join(lines[40].split("\t")[:5])
    lines[41] = ""
    p = tmp_path / "three.tsv"
    p.write_text("\n".join(lines))
    chunk, st = read_raw(p, skip_bad_lines=True, chunk_rows=16)
    assert (st.rows, st.skipped, st.lines) == (97, 3, 100)
    assert [r.split(":")[1] for r in st.skip_reasons] == ["3", "41", "42"]
    assert chunk.lines[:3].tolist() == [1, 2, 4] and 42 not in chunk.lines


def test_padded_lines_at_the_boundaries(tmp_path, rows100):
    lines = rows100.read_text().split("\n")
    # the second line is one whose C25 (field 38) is not empty
    lines = [lines[0], next(ln for ln in lines[1:] if ln.split("\t")[38]), *lines[1:3]]
    f = [ln.split("\t") for ln in lines]
    p = tmp_path / "short.tsv"
    p.write_text("\n".join(["\t".join(f[0][:14]), "\t".join(f[1][:39]), lines[2], lines[3]]))
    chunk, st = read_raw(p)
    assert (st.rows, st.padded, st.skipped) == (4, 2, 0)
    assert (chunk.cats[0] == 0).all() and chunk.cats[1, 25] == 0
    assert chunk.cats[1, 24] == int(f[1][38], 16)
    assert chunk.dense[0].tolist() == [max(int(x), 0) if x else 0 for x in f[0][1:14]]
    p.write_text("\t".join(f[0][:13]))
    with pytest.raises(DataError, match=r"short\.tsv:1: 13 fields, expected 40"):
        read_raw(p)


@pytest.mark.parametrize("skip", [False, True])
def test_empty_file_is_always_an_error(tmp_path, skip):
    p = tmp_path / "empty.tsv"
    p.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.tsv:1: empty file"):
        list(parse_raw(p, skip_bad_lines=skip))


# --------------------------------------------------------------------------- preprocess


def test_preprocess_kaggle_seven_day_split(tmp_path, rows100):
    meta = preprocess([rows100], tmp_path / "out", fmt="kaggle", max_ind_range=1000)
    on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert on_disk == json.loads(json.dumps(meta))
    # the reference: divmod(100, 7) = (14, 2): the first two days get one more row
    assert meta["day_rows"] == [15, 15, 14, 14, 14, 14, 14]
    assert meta["files"] == {"train.bin": 86, "test.bin": 7, "val.bin": 7}
    assert meta["table_sizes"] == [1000] * 26 and meta["id_mode"] == "hash_mod"
    assert (meta["rows"], meta["skipped"], meta["padded"]) == (100, 0, 0)
    parsed, _ = read_raw(rows100, max_ind_range=1000)
    want = parsed.to_rows()
    got = {s: BinaryDataset(tmp_path / "out", s) for s in ("train", "test", "val", "all")}
    assert sum(got[s].rows for s in ("train", "test", "val")) == 100 == got["all"].rows
    for s, (a, b) in {"train": (0, 86), "test": (86, 93), "val": (93, 100)}.items():
        assert np.array_equal(got[s].read(0, got[s].rows), want[a:b]), s
    assert got["train"].table_sizes == [1000] * 26


def test_preprocess_kaggle_inputs_are_one_stream_odd_last_day(tmp_path, rows100):
    extra = tmp_path / "extra.tsv"
    write_synthetic_raw(extra, 10, seed=4)
    meta = preprocess([rows100, extra], tmp_path / "out", max_ind_range=50)
    # 110 rows = 7 * 15 + 5: days of 16 x5, 15 x2; the last day's first (ceil) half is test
    assert meta["day_rows"] == [16, 16, 16, 16, 16, 15, 15]
    assert meta["files"] == {"train.bin": 95, "test.bin": 8, "val.bin": 7}
    assert [s["rows"] for s in meta["inputs"]] == [100, 10]
    tail, _ = read_raw(extra, max_ind_range=50)
    assert np.array_equal(BinaryDataset(tmp_path / "out", "val").read(0, 7), tail.to_rows()[3:])


@pytest.mark.parametrize("max_ind_range", [100_000, None])
def test_terabyte_day_round_trip_equals_direct_parsing(tmp_path, max_ind_range):
    days = [tmp_path / "day_0", tmp_path / "day_1"]
    write_synthetic_raw(days[0], 2500, seed=1)
    write_synthetic_raw(days[1], 501, seed=2)
    meta = preprocess(days, tmp_path / "bin", fmt="terabyte", max_ind_range=max_ind_range,
                      chunk_rows=1000)
    assert meta["files"] == {"day_0.bin": 2500, "day_1.bin": 501}
    assert meta["splits"] == {"train": [["day_0.bin", 0, 2500]],
                              "test": [["day_1.bin", 0, 251]], "val": [["day_1.bin", 251, 501]]}
    assert meta["id_mode"] == ("hash32" if max_ind_range is None else "hash_mod")
    direct, _ = read_raw(days[0], max_ind_range=max_ind_range)
    ds = BinaryDataset(tmp_path / "bin" / "day_0.bin")
    assert ds.rows == 2500 and BinaryDataset(tmp_path / "bin", "val").rows == 250
    stream = ds.batches(256, TABLES)
    n = 0
    for i, b in enumerate(stream):
        same_batch(b, make_batch(direct.to_rows()[i * 256:(i + 1) * 256], TABLES))
        # the ids are the hashes, (% max_ind_range), % table rows
        want = direct.cats[i * 256:(i + 1) * 256] % np.array(TABLES)
        assert np.array_equal(b.indices.reshape(26, 256), want.T)
        n += 1
    assert n == 9 and stream.next_row == 9 * 256


def test_remap_gives_contiguous_first_appearance_ids(tmp_path):
    # two files cut from one generated stream (one vocabulary: the second file has values the
    # first has and values it has not), with stripped trailing fields
    both = kaggle_rows(tmp_path / "both.tsv", 200, seed=6, terabyte_style=False).read_text()
    lines = both.split("\n")
    first, second = tmp_path / "a.tsv", tmp_path / "b.tsv"
    first.write_text("\n".join(lines[:100]) + "\n")
    second.write_text("\n".join(lines[100:]))
    padded = read_raw(first)[1].padded + read_raw(second)[1].padded
    assert padded > 0
    meta = preprocess([first, second], tmp_path / "r", fmt="terabyte", remap=True, chunk_rows=9)
    raw = np.concatenate([ref_parse(first)[:, 14:], ref_parse(second)[:, 14:]])
    got = BinaryDataset(tmp_path / "r", "all").read(0, 200)[:, 14:]
    sizes = []
    for j in range(26):
        ids: dict[int, int] = {}
        for v in raw[:, j]:
            if v and v not in ids:
                ids[int(v)] = len(ids) + 1
        want = [ids.get(int(v), 0) for v in raw[:, j]]
        assert got[:, j].tolist() == want, j
        assert set(got[:, j]) | {0} == set(range(len(ids) + 1))  # contiguous
        sizes.append(len(ids) + 1)
    assert meta["table_sizes"] == sizes and meta["id_mode"] == "remap"
    assert meta["mapping"] == "mapping.npz" and meta["padded"] == padded

    # the saved map, applied frozen to another file: same ids, unseen -> 0
    train_only = preprocess([first], tmp_path / "t", fmt="terabyte", remap=True)
    again = preprocess([second], tmp_path / "again", fmt="terabyte",
                       mapping=tmp_path / "t" / "mapping.npz")
    assert again["table_sizes"] == train_only["table_sizes"]
    cmap = CategoryMap.load(tmp_path / "t" / "mapping.npz")
    test_ids = BinaryDataset(tmp_path / "again", "all").read(0, 100)[:, 14:]
    assert np.array_equal(test_ids, cmap.map(ref_parse(second)[:, 14:], add=False))
    seen = [v for v in dict.fromkeys(ref_parse(first)[:, 14].tolist()) if v != 0]
    first_id = {v: i + 1 for i, v in enumerate(seen)}
    assert test_ids[:, 0].tolist() == [first_id.get(int(v), 0) for v in ref_parse(second)[:, 14]]
    assert (test_ids == 0).sum() > (raw[100:] == 0).sum()  # some test values are unseen
    assert (test_ids[:, 0] > 0).any()  # ... and some were seen


def test_remap_does_not_depend_on_chunking(tmp_path):
    p = tmp_path / "day"
    write_synthetic_raw(p, 4000, seed=5)
    a = preprocess([p], tmp_path / "a", fmt="terabyte", remap=True, chunk_rows=37)
    b = preprocess([p], tmp_path / "b", fmt="terabyte", remap=True)
    assert a["table_sizes"] == b["table_sizes"] and max(a["table_sizes"]) > 1000
    day = [(tmp_path / d / "day_0.bin").read_bytes() for d in ("a", "b")]
    assert day[0] == day[1]


def test_reads_an_mlperf_binary_file_written_elsewhere(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 2**31 - 1, (300, 40), dtype=np.int64).astype("<i4")
    rows[:, 0] = rng.integers(0, 2, 300)
    rows[:, 1:14] = rng.integers(0, 10**6, (300, 13))
    rows.tofile(tmp_path / "terabyte_processed_test.bin")
    ds = BinaryDataset(tmp_path / "terabyte_processed_test.bin")
    assert ds.rows == 300 and ds.table_sizes is None
    b = next(iter(ds.batches(64, TABLES)))
    validate_batch(b, MODEL, 64)
    np.testing.assert_allclose(b.dense, np.log(rows[:64, 1:14].astype(np.float32) + 1), rtol=1e-6)
    assert np.array_equal(b.indices, (rows[:64, 14:].T % np.array(TABLES)[:, None]).ravel())
    assert np.array_equal(b.labels, rows[:64, 0].astype(np.float32))

    (tmp_path / "torn.bin").write_bytes(rows.tobytes()[:-4])
    with pytest.raises(DataError, match="torn.bin: 47996 bytes"):
        BinaryDataset(tmp_path / "torn.bin")


# --------------------------------------------------------------------------- batches


def test_batches_validate_and_rank_slices_concatenate(tmp_path):
    p = tmp_path / "day"
    write_synthetic_raw(p, 1100, seed=7)
    preprocess([p], tmp_path / "bin", fmt="terabyte")  # hash32: ids folded at batch time
    ds = BinaryDataset(tmp_path / "bin")
    B, T = 128, 26
    whole = list(ds.batches(B, TABLES, start_row=40))
    assert len(whole) == (1100 - 40) // B
    halves = [list(ds.batches(B, TABLES, start_row=40, rank=r, ranks=2)) for r in (0, 1)]
    for full, h0, h1 in zip(whole, *halves, strict=True):
        validate_batch(full, MODEL, B)
        validate_batch(h0, MODEL, B // 2)
        validate_batch(h1, MODEL, B // 2)
        assert np.array_equal(np.concatenate([h0.dense, h1.dense]), full.dense)
        assert np.array_equal(np.concatenate([h0.labels, h1.labels]), full.labels)
        cat = np.concatenate([h0.indices.reshape(T, -1), h1.indices.reshape(T, -1)], axis=1)
        assert np.array_equal(cat.ravel(), full.indices)
        assert np.array_equal(full.offsets, np.arange(T * B + 1))
    # the rank-1 slice starts half a batch later
    first = ds.read(40 + B // 2, 40 + B)
    same_batch(halves[1][0], make_batch(first, TABLES))


def test_resume_from_next_row_and_short_last_batch(tmp_path):
    p = tmp_path / "day"
    write_synthetic_raw(p, 700, seed=9)
    preprocess([p], tmp_path / "bin", fmt="terabyte", max_ind_range=5000)
    ds = BinaryDataset(tmp_path / "bin")
    stream = ds.batches(100, TABLES)
    first = [next(stream), next(stream)]
    assert stream.next_row == 200 and len(stream) == 5 and first[0].size == 100
    resumed = ds.batches(100, TABLES, start_row=stream.next_row)
    for a, b in zip(stream, resumed, strict=True):
        same_batch(a, b)
    sliced = ds.slice(650, 700)
    assert sliced.rows == 50 and np.array_equal(sliced.read(0, 50), ds.read(650, 700))
    tail_stream = sliced.batches(32, TABLES, drop_last=False)
    assert len(tail_stream) == 2
    tail = list(tail_stream)
    assert [b.size for b in tail] == [32, 18] and tail_stream.next_row == 50
    validate_batch(tail[1], MODEL, 18)
    with pytest.raises(ValueError, match="divide"):
        ds.batches(100, TABLES, ranks=3)


def test_loader_throughput_reports_rates(tmp_path):
    p = tmp_path / "day"
    write_synthetic_raw(p, 2000, seed=11)
    preprocess([p], tmp_path / "bin", fmt="terabyte", max_ind_range=1000)
    r = loader_throughput(p, tmp_path / "bin" / "day_0.bin", 256, TABLES, seconds=0.05)
    assert r["raw_rows"] >= 2000 and r["raw_rows_per_s"] > 0
    assert r["binary_rows"] >= 1792 and r["binary_rows_per_s"] > 0


def test_fold_warning_names_the_fix_that_fits_where_the_rows_came_from():
    """Tables capped by --max-ind-range below the ids the data was preprocessed with: the fix is
    to preprocess again (or drop the cap), not --arch-embedding-size, which was never given;
    explicit table sizes: take them from the data."""
    import dataclasses

    from dlrm_tvm.config import PRESETS
    from dlrm_tvm.data.sources import fold_message

    base = PRESETS["tiny"]
    folds = [{"table": 0, "rows": 100_000, "data_rows": 10_000_000, "id_mode": "hash_mod"}]
    capped = base.replace(data=dataclasses.replace(base.data, kind="criteo-kaggle",
                                                   path="d", max_ind_range=100_000))
    msg = fold_message(folds, capped)
    assert "preprocess again with --max-ind-range 100,000" in msg
    assert "--arch-embedding-size" not in msg
    given = base.replace(data=dataclasses.replace(base.data, kind="criteo-kaggle",
                                                  path="d", table_sizes="config"))
    assert "drop --arch-embedding-size" in fold_message(folds, given)
    assert "ids folded: 1 of the model's table has" in fold_message(folds)
