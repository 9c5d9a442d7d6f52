"""``dlrm-tvm materialize-multihot``: a dataset in MLPerf DLRM-DCNv2's multi-hot format
(multihot.py's docstring), for tests, benchmarks and users without MLPerf's 4 TB of files.

Two sources of rows:

* our synthetic generator (``SyntheticData``: the config's tables, bag sizes, labels and index
  distribution, seeded): the rows are its batches of ``--mini-batch-size`` one after another,
  so reading the files back in order (``--data-randomize none``) with the same batch size gives
  exactly the batches the generator gives;
* one-hot Criteo binary rows (``dlrm-tvm preprocess`` output or MLPerf ``.bin`` files), made
  multi-hot: the dense features and labels as training on the binary rows would see them
  (``log(max(x, 0) + 1)``, 0/1), each one-hot id x of table t, folded into the table's rows
  R_t, becomes the bag ``[x, h(t, 1, x), ..., h(t, k_t - 1, x)]`` with ``h`` a seeded 64-bit
  mix of (seed, table, position, id) taken modulo R_t. The same structure as torchrec's
  materialisation (the one-hot id first, then k_t - 1 ids fixed per (table, id), uniform over
  the table), computed instead of looked up in a stored random table, so the ids are not
  MLPerf's bytes. The rows are split into ``days`` contiguous days (the first N % days one row
  longer).

Each day is written through temporary ``.npy`` files (memory-mapped, a chunk of rows at a time)
and then renamed; the sparse members are copied into an uncompressed zip (``np.savez``'s
layout, zip64). ``multihot.json`` is written last: rows per day, bag sizes, table rows and
where the rows came from; readers do not need it (MLPerf's files have none).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from dlrm_tvm.data.criteo.layout import DataError, PathLike
from dlrm_tvm.data.criteo.multihot import (
    DAY_FILE,
    DENSE,
    FORMAT_NAME,
    FORMAT_VERSION,
    LABELS,
    META,
    SPARSE,
    day_path,
)

INT32_MAX = 2**31 - 1
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """A uint64 -> uint64 bijection that spreads every bit (splitmix64's finaliser)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def multi_hot_bags(ids: np.ndarray, table: int, size: int, rows: int, seed: int) -> np.ndarray:
    """One-hot ids [n] of ``table`` (already < ``rows``) as bags int32 [n, size]: the id, then
    ``size - 1`` ids in [0, rows) fixed by (seed, table, position, id) (module docstring)."""
    ids = np.asarray(ids, np.int64)
    out = np.empty((ids.shape[0], size), np.int32)
    out[:, 0] = ids
    key = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _mix(np.uint64(table + 1)))
    u = ids.astype(np.uint64)
    with np.errstate(over="ignore"):
        for j in range(1, size):
            h = _mix(u ^ _mix(key + np.uint64(j)))
            out[:, j] = (h % np.uint64(rows)).astype(np.int64)
    return out


class _DayWriter:
    """One day's three files, written a chunk of rows at a time through temporary .npy maps."""

    def __init__(self, out: Path, day: int, rows: int, num_dense: int, sizes: Sequence[int]):
        self.out, self.day, self.rows, self.at = out, day, rows, 0
        self.sizes = tuple(sizes)
        self._tmp = {part: out / f".tmp_day_{day}_{part}" for part in (DENSE, LABELS)}
        self._tmp.update({t: out / f".tmp_day_{day}_sparse_{t}.npy" for t in range(len(sizes))})
        mm = np.lib.format.open_memmap
        self.dense = mm(self._tmp[DENSE], "w+", np.float32, (rows, num_dense))
        self.labels = mm(self._tmp[LABELS], "w+", np.int32, (rows, 1))
        self.sparse = [mm(self._tmp[t], "w+", np.int32, (rows, k))
                       for t, k in enumerate(self.sizes)]

    @property
    def left(self) -> int:
        return self.rows - self.at

    def write(self, dense: np.ndarray, labels: np.ndarray, sparse: Sequence[np.ndarray]) -> None:
        a, b = self.at, self.at + dense.shape[0]
        self.dense[a:b] = dense
        self.labels[a:b, 0] = labels
        for t, s in enumerate(sparse):
            self.sparse[t][a:b] = s
        self.at = b

    def finish(self) -> None:
        """Flush, zip the sparse members (stored, zip64), rename into place."""
        for a in (self.dense, self.labels, *self.sparse):
            a.flush()
        del self.dense, self.labels, self.sparse
        npz_tmp = self.out / f".tmp_day_{self.day}_{SPARSE}"
        with zipfile.ZipFile(npz_tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for t in range(len(self.sizes)):
                with zf.open(f"{t}.npy", "w", force_zip64=True) as dst, \
                        open(self._tmp[t], "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 24)
                os.unlink(self._tmp[t])
        for part in (DENSE, LABELS):
            os.replace(self._tmp[part], day_path(self.out, self.day, part))
        os.replace(npz_tmp, day_path(self.out, self.day, SPARSE))


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(out, None, "is a file: --out takes a directory")
    out.mkdir(parents=True, exist_ok=True)
    ours = [p for p in out.iterdir()
            if DAY_FILE.fullmatch(p.name) or p.name == META or p.name.startswith(".tmp_day_")]
    if ours and not overwrite:
        raise DataError(out, None, f"already holds a multi-hot dataset ({len(ours)} of its "
                                   "files): --overwrite replaces it")
    for p in ours:
        p.unlink()


def _bytes_needed(day_rows: Sequence[int], num_dense: int, sizes: Sequence[int]) -> int:
    """The bytes a dataset takes on disk, with the largest day's sparse file counted twice (its
    members and the zip are both on disk while it is zipped)."""
    per_row = 4 * num_dense + 4 + 4 * sum(sizes)
    return sum(day_rows) * per_row + max(day_rows) * 4 * sum(sizes) + 64 * 1024


def _day_rows(total: int, days: int) -> list[int]:
    q, r = divmod(total, days)
    return [q + (i < r) for i in range(days)]


def _synthetic_chunks(cfg, sizes: tuple[int, ...], seed: int) -> Iterator:
    from dlrm_tvm.data import SyntheticData

    data = dataclasses.replace(cfg.data, kind="synthetic", path="", eval_path="",
                               multi_hot_sizes=sizes, num_indices_per_lookup_fixed=True)
    gen = SyntheticData(cfg.model, data, cfg.train.batch_size, seed)
    T = cfg.model.num_tables
    while True:
        b = gen.next_batch()
        n = b.dense.shape[0]
        sparse, at = [], 0
        for t in range(T):
            sparse.append(b.indices[at:at + n * sizes[t]].reshape(n, sizes[t]))
            at += n * sizes[t]
        yield b.dense, b.labels.astype(np.int32), sparse


def _binary_chunks(ds, cfg, sizes: tuple[int, ...], seed: int, chunk: int = 1 << 16) -> Iterator:
    from dlrm_tvm.data.criteo.binary import make_batch

    rows = cfg.model.table_rows
    T = cfg.model.num_tables
    for a in range(0, ds.rows, chunk):
        b = make_batch(ds.read(a, min(a + chunk, ds.rows)), rows)
        n = b.dense.shape[0]
        one_hot = b.indices.reshape(T, n)
        yield (b.dense, b.labels.astype(np.int32),
               [multi_hot_bags(one_hot[t], t, sizes[t], rows[t], seed) for t in range(T)])


def _binary_source(path: str):
    from dlrm_tvm.data.criteo import BinaryDataset

    files = [p for p in str(path).split(",") if p]
    if len(files) == 1 and Path(files[0]).is_dir():
        return BinaryDataset(files[0], split="all")
    for p in files:
        if Path(p).is_dir():
            raise DataError(p, None, "is a directory: --from-binary takes one `dlrm-tvm "
                                     "preprocess` directory or MLPerf .bin file(s)")
    if not files:
        raise DataError(path, None, "--from-binary names no file")
    return BinaryDataset(files if len(files) > 1 else files[0])


def materialize_multihot(out: PathLike, cfg, days: int = 3, rows_per_day: int | None = None,
                         seed: int | None = None, from_binary: str | None = None,
                         overwrite: bool = False, progress: bool = True, log=print) -> dict:
    """Write a multi-hot dataset of ``days`` days into ``out`` (module docstring) and return
    its multihot.json content. Synthetic (default): ``rows_per_day`` rows a day (default 8
    batches) from ``SyntheticData(cfg.model, cfg.data with the bag sizes, batch, seed)``;
    ``from_binary``: the rows of those binary file(s) or preprocess directory, made multi-hot.
    Bag sizes: ``cfg.data.multi_hot_sizes``, else ``num_indices_per_lookup`` for every table
    (fixed sizes only). ``seed``: default ``cfg.train.seed``."""
    from dlrm_tvm.config import ConfigError
    from dlrm_tvm.progress import Progress

    m, d = cfg.model, cfg.data
    T = m.num_tables
    sizes = d.bag_sizes(T)
    if sizes is None:
        if not d.num_indices_per_lookup_fixed:
            raise ConfigError("a multi-hot dataset has one bag size per table: give "
                              "--multi-hot-sizes (or a fixed --num-indices-per-lookup)")
        sizes = (d.num_indices_per_lookup,) * T
    sizes = tuple(int(k) for k in sizes)
    if max(m.table_rows) > INT32_MAX + 1:
        raise ConfigError(f"the format stores int32 ids: tables of at most 2^31 rows, the "
                          f"config has {max(m.table_rows):,} (--max-ind-range caps them)")
    if not isinstance(days, int) or days < 2:
        raise ConfigError(f"--days must be >= 2 (days 0..D-2 train, the last day's halves "
                          f"val and test), got {days}")
    seed = cfg.train.seed if seed is None else int(seed)
    out = Path(out)
    if from_binary:
        if rows_per_day is not None:
            raise ConfigError("--rows-per-day applies to synthetic rows; --from-binary splits "
                              "the binary rows into --days days")
        if m.num_dense != 13 or T != 26:
            raise ConfigError(f"Criteo rows have 13 dense and 26 categorical features; the "
                              f"model of config {cfg.name!r} takes {m.num_dense} and {T}")
        ds = _binary_source(from_binary)
        if ds.rows < days:
            raise DataError(from_binary, None, f"holds {ds.rows} rows, fewer than --days {days}")
        day_rows = _day_rows(ds.rows, days)
        chunks = _binary_chunks(ds, cfg, sizes, seed)
        source = {"kind": "binary", "path": str(from_binary), "rows": ds.rows,
                  "derivation": "bag = [id % rows, then size - 1 ids mix(seed, table, "
                                "position, id) % rows] (multihot_writer.py)", "seed": seed}
    else:
        rpd = rows_per_day if rows_per_day is not None else 8 * cfg.train.batch_size
        if not isinstance(rpd, int) or rpd < 1:
            raise ConfigError(f"--rows-per-day must be >= 1, got {rpd}")
        day_rows = [rpd] * days
        chunks = _synthetic_chunks(cfg, sizes, seed)
        source = {"kind": "synthetic", "config": cfg.name, "seed": seed,
                  "batch_size": cfg.train.batch_size, "labels": d.labels,
                  "index_distribution": d.index_distribution}
    _prepare_out(out, overwrite)
    total = sum(day_rows)
    need = _bytes_needed(day_rows, m.num_dense, sizes)
    free = shutil.disk_usage(out).free
    if need > free:
        raise DataError(out, None, f"the dataset takes {need / 2**30:.2f} GiB ({total:,} rows, "
                                   f"{sum(sizes)} ids a row, with one day's sparse file twice "
                                   f"while it is zipped), and {free / 2**30:.2f} GiB are free "
                                   f"there: fewer --rows-per-day, --days or smaller "
                                   f"--multi-hot-sizes")
    if log is not None:
        log(f"writing about {need / 2**30:.2f} GiB into {out} ({free / 2**30:.1f} GiB free)")
    prog = Progress(total, "materialize", unit="row", show=progress, delay=1.0)
    done = 0
    pending = None  # the rows of a chunk not yet written (a chunk may span two days)
    try:
        for i, n in enumerate(day_rows):
            w = _DayWriter(out, i, n, m.num_dense, sizes)
            while w.left:
                if pending is None:
                    pending = next(chunks)
                dense, labels, sparse = pending
                k = min(w.left, dense.shape[0])
                w.write(dense[:k], labels[:k], [s[:k] for s in sparse])
                pending = None if k == dense.shape[0] else \
                    (dense[k:], labels[k:], [s[k:] for s in sparse])
                done += k
                prog.update(done, day=i)
            w.finish()
    except BaseException:  # an error, Ctrl-C: no half-written day is left behind
        for p in out.glob(".tmp_day_*"):
            p.unlink(missing_ok=True)
        raise
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "days": days,
            "day_rows": day_rows, "rows": total, "num_dense": m.num_dense,
            "multi_hot_sizes": list(sizes), "table_rows": list(m.table_rows),
            "splits": {"train": f"days 0..{days - 2}",
                       "val": f"day {days - 1} rows 0..{-(-day_rows[-1] // 2)}",
                       "test": f"day {days - 1} rows {-(-day_rows[-1] // 2)}..{day_rows[-1]}"},
            "source": source}
    tmp = out / f".tmp_day_{META}"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, out / META)
    if log is not None:
        log(f"{total:,} rows in {days} days ({', '.join(map(str, day_rows))}), bags of "
            f"{','.join(map(str, sizes))} ids ({sum(sizes)} a row), {source['kind']} -> {out}")
    return meta
