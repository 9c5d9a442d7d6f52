"""Criteo binary rows: memory-mapped MLPerf files (or a preprocess output), checked as read, and
the batches made from them.

Batches (``BinaryDataset.batches``) are ``dlrm_tvm.data.Batch`` objects like the synthetic ones:
dense float32 ``log(max(x, 0) + 1)``, labels float32, one lookup per bag in torchrec's jagged
table-major layout. Each id is taken ``% table_rows[t]`` (the reference's ``max_ind_range``
folding), read as unsigned 32-bit so that ``hash32`` files fold correctly, so any file fits any
model's tables.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dlrm_tvm.data.batch import Batch
from dlrm_tvm.data.criteo.layout import (
    INT32_MAX,
    MIN_FIELDS,
    NUM_CAT,
    NUM_FIELDS,
    ROW_BYTES,
    DataError,
    PathLike,
    check_input_file,
)
from dlrm_tvm.data.criteo.writer import load_meta, meta_member
from dlrm_tvm.data.epochs import RowStream


def make_batch(rows: np.ndarray, table_rows: Sequence[int]) -> Batch:
    """A ``Batch`` from binary rows int32 [n, 40]: dense log(max(x, 0) + 1), one lookup per bag,
    table-major, each id read as uint32 and taken ``% table_rows[t]``."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != NUM_FIELDS:
        raise ValueError(f"rows must have shape [n, 40], got {rows.shape}")
    tr = np.asarray(table_rows, np.int64)
    if tr.shape != (NUM_CAT,) or (tr <= 0).any():
        raise ValueError(f"table_rows must be 26 positive sizes, got {tuple(table_rows)}")
    n = rows.shape[0]
    dense = np.log(np.maximum(rows[:, 1:MIN_FIELDS], 0).astype(np.float32) + np.float32(1))
    cats = rows[:, MIN_FIELDS:].view(np.uint32) if rows.dtype == np.int32 else \
        rows[:, MIN_FIELDS:].astype(np.int64) & 0xFFFFFFFF
    indices = (cats.T.astype(np.int64) % tr[:, None]).reshape(-1)
    return Batch(
        dense=np.ascontiguousarray(dense, np.float32),
        indices=indices,
        offsets=np.arange(NUM_CAT * n + 1, dtype=np.int64),
        labels=rows[:, 0].astype(np.float32),
    )


class BatchStream(RowStream):
    """Iterator of ``Batch`` es of a ``BinaryDataset`` (``RowStream``: the batches each rank
    reads, the order, ``next_row``). ``track_ids``: keep ``max_ids``, the largest id seen per
    column (uint32), so that a source without a meta.json can tell when ids are folded into
    the tables."""

    def __init__(self, ds: BinaryDataset, batch_size: int, table_rows: Sequence[int],
                 start_row: int, rank: int, ranks: int, drop_last: bool, order=None,
                 track_ids: bool = False):
        super().__init__(ds, batch_size, start_row, rank, ranks, drop_last, order)
        self.table_rows = tuple(table_rows)
        self.max_ids = np.zeros(NUM_CAT, np.uint32) if track_ids else None

    def _batch(self, rows: np.ndarray) -> Batch:
        if self.max_ids is not None and rows.shape[0]:
            np.maximum(self.max_ids, rows[:, MIN_FIELDS:].view(np.uint32).max(0),
                       out=self.max_ids)
        return make_batch(rows, self.table_rows)


_CHECK_HINT = ("is it an MLPerf binary file of Criteo rows (40 little-endian int32 a row: "
               "label 0/1, 13 counts >= 0, 26 category ids)?")


def _any_int32_id(meta: dict) -> bool:
    """Whether a preprocess output's stored ids may be any int32 (the raw 32-bit hashes of
    ``hash32``, or ids of tables above 2**31 rows): else they are >= 0."""
    return meta.get("id_mode") == "hash32" or max(meta["table_sizes"]) > INT32_MAX


class BinaryDataset:
    """Rows of MLPerf binary files (40 int32 per row), memory-mapped, never read whole.

    ``source``: a ``.bin`` file or a list of them (concatenated; any MLPerf binary file works),
    or a ``preprocess`` output directory with ``split`` "train" (default), "test", "val" or
    "all" (every file in order). ``table_sizes`` comes from ``meta.json`` when there is one;
    every file name in it must lie inside the directory.

    Every block of rows ``read`` returns is checked first (two vectorised reductions): label
    0 or 1, counts >= 0, category ids >= 0 (any int32 in a ``hash32`` output: raw hashes read
    as uint32). Ids above a table's size are fine: batches fold them (``make_batch``). A
    ``.bin`` file listed in the meta.json beside it is checked as part of that output; any
    other is an MLPerf file (ids >= 0). A bad row is a ``DataError`` naming the file, the row
    (0-based) and what is wrong.
    """

    def __init__(self, source: PathLike | Sequence[PathLike], split: str | None = None):
        self.meta: dict | None = None
        if isinstance(source, str | os.PathLike) and Path(source).is_dir():
            d = Path(source)
            self.meta = load_meta(d)
            split = split or "train"
            if split == "all":
                segs = [[name, 0, rows] for name, rows in self.meta["files"].items()]
            elif split in self.meta["splits"]:
                segs = self.meta["splits"][split]
            else:
                raise ValueError(f"{d}: unknown split {split!r}: "
                                 f"{sorted(self.meta['splits'])} or all")
            signed = _any_int32_id(self.meta)
            segments = [(meta_member(d, name, "splits"), int(a), int(b), signed)
                        for name, a, b in segs]
        else:
            if split is not None:
                raise ValueError("split needs a preprocess directory, not files")
            paths = [source] if isinstance(source, str | os.PathLike) else list(source)
            segments = [(Path(p), 0, None, self._signed_ids(Path(p))) for p in paths]
        self._maps: list[np.ndarray] = []
        self._paths: list[Path] = []
        self._offs: list[int] = []  # the file row of each map's first row
        self._signed: list[bool] = []  # ids may be negative int32 (hash32)
        for path, a, b, signed in segments:
            m = self._open(path)
            b = m.shape[0] if b is None else b
            if not 0 <= a <= b <= m.shape[0]:
                raise DataError(path, None, f"rows {a}..{b} are outside its {m.shape[0]} rows")
            self._add(m[a:b], path, a, signed)
        self._starts = np.cumsum([0] + [m.shape[0] for m in self._maps])
        self.rows = int(self._starts[-1])
        # the days, for shuffling within a day: a Kaggle output's train split holds its first
        # days - 1 days in one file (meta.json's day_rows); elsewhere each file is a day
        self.day_rows = [int(m.shape[0]) for m in self._maps] or [0]
        if self.meta is not None and split == "train" and len(self._maps) == 1:
            days = self.meta.get("day_rows")
            if (isinstance(days, list) and len(days) > 1 and self.meta.get("dataset") ==
                    "kaggle" and sum(days[:-1]) == self.rows):
                self.day_rows = [int(d) for d in days[:-1]]

    def _add(self, m: np.ndarray, path: Path, off: int, signed: bool) -> None:
        self._maps.append(m)
        self._paths.append(path)
        self._offs.append(off)
        self._signed.append(signed)

    @staticmethod
    def _signed_ids(path: Path) -> bool:
        """Whether a file's ids may be negative: as the preprocess output listing it beside it
        says, else no (an MLPerf file)."""
        if (path.parent / "meta.json").is_file():
            try:
                meta = load_meta(path.parent)
            except DataError:
                return False
            return path.name in meta["files"] and _any_int32_id(meta)
        return False

    @staticmethod
    def _open(path: Path) -> np.ndarray:
        check_input_file(path, "binary data are MLPerf .bin files (40 int32 a row)")
        size = os.path.getsize(path)
        if size % ROW_BYTES:
            raise DataError(path, None, f"{size} bytes is not a whole number of 160-byte rows "
                                        "(40 int32 each)")
        if size == 0:
            return np.zeros((0, NUM_FIELDS), "<i4")
        try:
            m = np.memmap(path, dtype="<i4", mode="r")
        except OSError as e:
            raise DataError(path, None, f"cannot be mapped ({e.strerror or e})") from None
        # a plain ndarray over the mapping: numpy's memmap subclass costs microseconds an op
        return m.view(np.ndarray).reshape(-1, NUM_FIELDS)

    @property
    def table_sizes(self) -> list[int] | None:
        return None if self.meta is None else list(self.meta["table_sizes"])

    def __len__(self) -> int:
        return self.rows

    def _check(self, i: int, a: int, rows: np.ndarray, at: np.ndarray | None = None) -> None:
        """Rows ``rows`` (map ``i`` from its row ``a``, or its rows ``at``) are valid, or a
        ``DataError``."""
        if not rows.shape[0]:
            return
        signed = self._signed[i]
        if (rows[:, :MIN_FIELDS] if signed else rows).min() >= 0 and rows[:, 0].max() <= 1:
            return
        lab, dense, cats = rows[:, 0], rows[:, 1:MIN_FIELDS], rows[:, MIN_FIELDS:]
        bad_lab = (lab < 0) | (lab > 1)
        bad_dense = dense < 0
        bad_cat = np.zeros(cats.shape, bool) if signed else cats < 0
        r = int(np.argmax(bad_lab | bad_dense.any(1) | bad_cat.any(1)))
        if bad_lab[r]:
            what = f"label {int(lab[r])} is not 0 or 1"
        elif bad_dense[r].any():
            j = int(np.argmax(bad_dense[r]))
            what = f"count I{j + 1} is {int(dense[r, j])}, negative (counts are stored >= 0)"
        else:
            j = int(np.argmax(bad_cat[r]))
            what = f"category C{j + 1} id {int(cats[r, j])} is negative"
        row = self._offs[i] + (a + r if at is None else int(at[r]))
        raise DataError(self._paths[i], None,
                        f"row {row} (0-based, byte {row * ROW_BYTES}): {what}; {_CHECK_HINT}")

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as int32 [n, 40] (a view when they lie in one file), checked
        (class docstring)."""
        if not 0 <= start <= stop <= self.rows:
            raise IndexError(f"rows {start}..{stop} outside 0..{self.rows}")
        parts = []
        for i, m in enumerate(self._maps):
            a, b = max(start - self._starts[i], 0), min(stop - self._starts[i], m.shape[0])
            if a < b:
                part = m[a:b]
                self._check(i, int(a), part)
                parts.append(part)
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros((0, NUM_FIELDS), np.int32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows at (sorted) indices ``rows`` as int32 [n, 40], gathered from the memory
        maps (a copy of those rows only), checked (class docstring)."""
        rows = np.asarray(rows, np.int64)
        if rows.size and (rows[0] < 0 or rows[-1] >= self.rows):
            raise IndexError(f"rows {rows[0]}..{rows[-1]} outside 0..{self.rows}")
        if len(self._maps) == 1:
            out = self._maps[0][rows]
            self._check(0, 0, out, rows)
            return out
        out = np.empty((rows.shape[0], NUM_FIELDS), np.int32)
        cuts = np.searchsorted(rows, self._starts)
        for i, m in enumerate(self._maps):
            a, b = cuts[i], cuts[i + 1]
            if a < b:
                local = rows[a:b] - self._starts[i]
                out[a:b] = m[local]
                self._check(i, 0, out[a:b], local)
        return out

    def slice(self, start: int, stop: int) -> BinaryDataset:
        """A dataset of rows [start, stop) of this one (no copy)."""
        if not 0 <= start <= stop <= self.rows:
            raise IndexError(f"rows {start}..{stop} outside 0..{self.rows}")
        out = object.__new__(BinaryDataset)
        out.meta = self.meta
        out._maps, out._paths, out._offs, out._signed = [], [], [], []
        for i, m in enumerate(self._maps):
            a, b = max(start - self._starts[i], 0), min(stop - self._starts[i], m.shape[0])
            if a < b:
                out._add(m[a:b], self._paths[i], self._offs[i] + int(a), self._signed[i])
        out._starts = np.cumsum([0] + [m.shape[0] for m in out._maps])
        out.rows = stop - start
        out.day_rows = [out.rows]
        return out

    def batches(self, batch_size: int, table_rows: Sequence[int], start_row: int = 0,
                rank: int = 0, ranks: int = 1, drop_last: bool = True, order=None,
                track_ids: bool = False) -> BatchStream:
        """Global batches of ``batch_size`` rows from position ``start_row``; rank r of
        ``ranks`` gets positions [row + r*B/ranks, row + (r+1)*B/ranks) of each, a Batch of
        B/ranks samples. ``order``: a ``shuffle.RowOrder`` over this dataset's rows (None:
        file order); ``track_ids``: see ``BatchStream``."""
        return BatchStream(self, batch_size, table_rows, start_row, rank, ranks, drop_last,
                           order, track_ids)
