"""MLPerf DLRM-DCNv2's materialised multi-hot Criteo dataset, memory-mapped: the format, its
checks, and the batches made from it (docs/data.md, "The multi-hot dataset").

The format (mlcommons/training ``recommendation_v2/torchrec_dlrm``: ``data/multi_hot_criteo.py``
reads it, ``scripts/materialize_synthetic_multihot_dataset.py`` writes it). A directory holds, for
every day i = 0..D-1 (MLPerf: D = 24), three NumPy files of the same n_i rows:

* ``day_{i}_dense.npy``: float32 [n_i, 13], the dense features as training uses them (torchrec's
  preprocessing has already taken the log);
* ``day_{i}_labels.npy``: int32 [n_i, 1], 0 or 1;
* ``day_{i}_sparse_multi_hot.npz``: an uncompressed zip (``np.savez``) of one member per table,
  ``"0.npy"`` .. ``"25.npy"``; member t is int32 [n_i, k_t]: row r's bag of table t, k_t ids
  (the table's multi-hot size, 3,2,1,2,6,... for MLPerf), already within the table's rows.

Days 0..D-2 are the training days, read as one stream in day order; the last day is held out,
its first ceil(n/2) rows the ``val`` split, the rest ``test``. A global batch is B consecutive
rows of the stream (in the order ``cfg.data.shuffle`` says; MLPerf reads them in file order:
``--data-randomize none``) and rank r of R takes its B/R rows [r*B/R, (r+1)*B/R), as torchrec's
reader gives rank r the r-th local batch of each R consecutive ones.

Reading: the ``.npy`` files by ``np.load(mmap_mode="r")``, each zip member by ``np.memmap`` at
its data offset inside the zip (a stored member is its ``.npy`` bytes verbatim). Nothing is read
until a batch asks for its rows, and then only those rows. Never unpickled: an array of Python
objects, a compressed or encrypted member, a member that is not a 2-D integer array, is a
``DataError`` naming the file. Every part of a batch is checked as it is read: labels 0/1,
dense values finite, every id >= 0 and below its table's rows (``DataError`` naming the file,
the table, the row and the id), unless ``fold`` (``--max-ind-range``: ids are taken modulo the
table's rows, as the reference's flag folds categories).

The batches are ``dlrm_tvm.data.Batch`` es in exactly the layout ``SyntheticData`` gives
multi-hot bags: indices table-major, table t's B bags of k_t ids each in sample order, offsets
the running sum of ``[k_0]*B + [k_1]*B + ...``; dense float32, labels float32.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlrm_tvm.data.batch import Batch
from dlrm_tvm.data.criteo.layout import DataError, PathLike, check_input_file
from dlrm_tvm.data.epochs import EpochRows, RowStream

log = logging.getLogger("dlrm_tvm")

DENSE, LABELS, SPARSE = "dense.npy", "labels.npy", "sparse_multi_hot.npz"
PARTS = (DENSE, LABELS, SPARSE)
SPLITS = ("train", "val", "test", "all")  # all: the whole held-out day
META = "multihot.json"  # written by our materialize-multihot (optional for reading)
FORMAT_NAME = "dlrm-tvm-multihot"
FORMAT_VERSION = 1
DAY_FILE = re.compile(r"day_(\d+)_(dense\.npy|labels\.npy|sparse_multi_hot\.npz)")
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # a zip member's local file header (30 bytes)
_HINT = ("the multi-hot dataset is day_{i}_dense.npy (float32 [n, 13]), day_{i}_labels.npy "
         "(int32 [n, 1]) and day_{i}_sparse_multi_hot.npz (np.savez, uncompressed: int32 "
         "[n, k_t] per table) for days 0..D-1 (docs/data.md)")


def day_path(directory: PathLike, day: int, part: str) -> Path:
    return Path(directory) / f"day_{day}_{part}"


# ------------------------------------------------------------------------ the .npy headers


def _npy_header(f, path: Path, what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy header at ``f``'s position (left just past
    it), or a DataError; an array of Python objects is refused here, before any data."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format version {version} (1.0 and 2.0 are read)")
    except (ValueError, OSError, SyntaxError, EOFError) as e:
        raise DataError(path, None, f"{what} is not a .npy array ({e}): {_HINT}") from None
    if dtype.hasobject:
        raise DataError(path, None, f"{what} holds Python objects (dtype {dtype}), which only "
                                    "unpickling could read: refused (dlrm-tvm never unpickles "
                                    "data); write plain numeric arrays")
    return tuple(int(x) for x in shape), bool(fortran), dtype


def _open_npy(path: Path, what: str) -> np.ndarray:
    """A .npy file memory-mapped read-only (its header checked first)."""
    check_input_file(path, _HINT)
    with open(path, "rb") as f:
        shape, _, dtype = _npy_header(f, path, what)
    if int(np.prod(shape)) == 0:  # an empty array cannot be mapped
        return np.zeros(shape, dtype)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(path, None, f"{what} cannot be memory-mapped ({e})") from None


def _npz_members(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The members ``names`` of an uncompressed .npz, each memory-mapped at its data offset in
    the zip (the member's local header gives it), after checking that it is stored whole
    (no compression, no encryption) and that its .npy header matches its size."""
    check_input_file(path, _HINT)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(path, None, f"is not a zip (.npz) file ({e}): {_HINT}") from None
    out: dict[str, np.ndarray] = {}
    with zf, open(path, "rb") as f:
        infos = {i.filename: i for i in zf.infolist()}
        for name in names:
            info = infos[name]
            what = f"member {name}"
            if info.compress_type != zipfile.ZIP_STORED:
                raise DataError(path, None, f"{what} is compressed (zip method "
                                            f"{info.compress_type}; np.savez_compressed?), so "
                                            "it cannot be memory-mapped: write the file with "
                                            "np.savez (uncompressed), as MLPerf's is")
            if info.flag_bits & 0x1:
                raise DataError(path, None, f"{what} is encrypted")
            f.seek(info.header_offset)
            head = f.read(_LOCAL_HEADER.size)
            if len(head) != _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
                raise DataError(path, None, f"{what}: no zip local header at byte "
                                            f"{info.header_offset} (a damaged file?)")
            fields = _LOCAL_HEADER.unpack(head)
            start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
            f.seek(start)
            shape, fortran, dtype = _npy_header(f, path, what)
            offset = f.tell()
            nbytes = int(np.prod(shape)) * dtype.itemsize
            if offset - start + nbytes != info.file_size:
                raise DataError(path, None, f"{what}: its .npy header says {shape} {dtype} "
                                            f"({nbytes} bytes of data) but the member holds "
                                            f"{info.file_size - (offset - start)} (a damaged "
                                            "file?)")
            if nbytes == 0:
                out[name] = np.zeros(shape, dtype)
                continue
            try:
                out[name] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                                      order="F" if fortran else "C")
            except (ValueError, OSError) as e:
                raise DataError(path, None, f"{what} cannot be memory-mapped ({e})") from None
    return out


# ------------------------------------------------------------------------------- the days


def find_days(directory: PathLike) -> int:
    """The number of days D in ``directory`` (days 0..D-1, each with its three files), or a
    DataError naming the first missing file."""
    d = Path(directory)
    if not d.is_dir():
        why = "no such directory" if not d.exists() else "is not a directory"
        raise DataError(d, None, f"{why}: --data criteo-multihot takes the directory of a "
                                 f"materialised multi-hot dataset ({_HINT})")
    days = set()
    for p in d.iterdir():
        m = DAY_FILE.fullmatch(p.name)
        if m:
            days.add(int(m.group(1)))
    if not days:
        raise DataError(d, None, f"holds no day_{{i}}_* files: {_HINT}")
    n = max(days) + 1
    for i in range(n):
        for part in PARTS:
            p = day_path(d, i, part)
            if not p.exists():
                raise DataError(p, None, f"no such file: day {i} of days 0..{n - 1} is "
                                         f"incomplete ({_HINT})")
    return n


@dataclass
class Day:
    """One day's arrays, memory-mapped: ``dense`` [n, Din], ``labels`` [n, 1] or [n],
    ``sparse`` one [n, k_t] array per table."""

    index: int
    rows: int
    dense: np.ndarray
    labels: np.ndarray
    sparse: list[np.ndarray]
    paths: tuple[Path, Path, Path]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(a.shape[1]) for a in self.sparse)


def open_day(directory: PathLike, i: int, num_dense: int, num_tables: int) -> Day:
    """Day ``i``'s three files, memory-mapped and checked against each other and the model
    (``num_dense`` dense features, ``num_tables`` tables)."""
    paths = tuple(day_path(directory, i, part) for part in PARTS)
    pd, pl, ps = paths
    dense = _open_npy(pd, "the dense array")
    if dense.ndim != 2 or dense.shape[1] != num_dense or dense.dtype.kind != "f":
        raise DataError(pd, None, f"dense features must be a float array [rows, {num_dense}] "
                                  f"(float32), got {dense.dtype} {dense.shape}: {_HINT}")
    n = int(dense.shape[0])
    labels = _open_npy(pl, "the labels array")
    if labels.shape not in ((n, 1), (n,)) or labels.dtype.kind not in "iubf":
        raise DataError(pl, None, f"labels must be int32 [{n}, 1] (0 or 1, one per row of "
                                  f"{pd.name}), got {labels.dtype} {labels.shape}")
    try:
        with zipfile.ZipFile(ps) as zf:
            names = [x.filename for x in zf.infolist()]
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(ps, None, f"is not a zip (.npz) file ({e}): {_HINT}") from None
    want = [f"{t}.npy" for t in range(num_tables)]
    if sorted(names) != sorted(want):
        found = sorted(names, key=lambda s: (len(s), s))
        shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
        raise DataError(ps, None, f"holds {len(names)} member(s) ({shown}) where the model's "
                                  f"{num_tables} tables need exactly 0.npy..{num_tables - 1}.npy "
                                  "(one per table, torchrec's key names): wrong table count "
                                  "for this model (--config)")
    members = _npz_members(ps, want)
    sparse = []
    for t, name in enumerate(want):
        a = members[name]
        if a.ndim != 2 or a.shape[0] != n or a.dtype.kind not in "iu" or a.shape[1] < 1:
            raise DataError(ps, None, f"member {name} (table {t}) must be an integer array "
                                      f"[{n}, k] (int32, k >= 1 ids a bag, one row per row of "
                                      f"{pd.name}), got {a.dtype} {a.shape}")
        sparse.append(a)
    return Day(i, n, dense, labels, sparse, paths)


def read_meta(directory: PathLike) -> dict | None:
    """Our writer's multihot.json (None when absent: MLPerf's own files have none)."""
    p = Path(directory) / META
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(p, None, f"cannot be read as JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise DataError(p, None, f"is not a {FORMAT_NAME} description")
    return meta


# ---------------------------------------------------------------------------- the dataset


class MultiHotDataset:
    """Rows of a split of a multi-hot directory (``split``: train, val, test or all: the
    whole held-out day), memory-mapped (module docstring). ``multi_hot_sizes``: the bag size
    each table must have (None: as the data says; ``sizes`` is then the data's).
    ``table_rows``: every id is checked against its table's rows when read; ``fold``: ids
    past them are taken modulo the rows instead of refused.

    ``read(start, stop)`` and ``take(rows)`` return (dense float32 [n, Din], labels float32
    [n], one int64 [n, k_t] array per table), copies of those rows only, checked."""

    def __init__(self, directory: PathLike, split: str = "train", num_dense: int = 13,
                 num_tables: int = 26, multi_hot_sizes: Sequence[int] | None = None,
                 table_rows: Sequence[int] | None = None, fold: bool = False):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: one of {SPLITS}")
        self.directory, self.split = Path(directory), split
        self.num_days = find_days(directory)
        if self.num_days < 2:
            raise DataError(self.directory, None, "holds one day: the multi-hot dataset needs "
                                                  "at least 2 (days 0..D-2 train, the last "
                                                  "day's halves val and test)")
        self.days = [open_day(directory, i, num_dense, num_tables)
                     for i in range(self.num_days)]
        meta = read_meta(directory)
        if meta is not None:  # our writer's record: the days it wrote are all there
            rows = [day.rows for day in self.days]
            if meta.get("day_rows") != rows:
                raise DataError(self.directory / META, None,
                                f"records days of {meta.get('day_rows')} rows; the directory "
                                f"holds {len(rows)} days of {rows} rows (files added, removed "
                                "or replaced?)")
        self.sizes = self.days[0].sizes
        for day in self.days:
            want = tuple(multi_hot_sizes) if multi_hot_sizes is not None else self.sizes
            if day.sizes != want:
                t = next(k for k in range(num_tables) if day.sizes[k] != want[k])
                given = "the config's --multi-hot-sizes" if multi_hot_sizes is not None else \
                    f"day 0's ({self.days[0].paths[2].name})"
                raise DataError(day.paths[2], None,
                                f"member {t}.npy (table {t}) has bags of {day.sizes[t]} ids; "
                                f"{given} say {want[t]} (all sizes: data "
                                f"{','.join(map(str, day.sizes))}, expected "
                                f"{','.join(map(str, want))}): wrong bag size")
        self.table_rows = None if table_rows is None else np.asarray(table_rows, np.int64)
        if self.table_rows is not None and self.table_rows.shape != (num_tables,):
            raise ValueError(f"table_rows must have {num_tables} entries")
        self.fold = fold
        last = self.days[-1]
        half = -(-last.rows // 2)  # val: the first ceil(n/2) rows (torchrec's)
        if split == "train":
            self._segs = [(day, 0, day.rows) for day in self.days[:-1]]
        else:
            a, b = {"val": (0, half), "test": (half, last.rows), "all": (0, last.rows)}[split]
            self._segs = [(last, a, b)]
        self._starts = np.cumsum([0] + [b - a for _, a, b in self._segs])
        self.rows = int(self._starts[-1])
        self.day_rows = [b - a for _, a, b in self._segs] or [0]

    def __len__(self) -> int:
        return self.rows

    # ------------------------------------------------------------------------- reading
    def _part(self, k: int, local: np.ndarray | slice):
        """Rows ``local`` (day rows) of segment ``k``: copies, checked."""
        day = self._segs[k][0]
        dense = np.array(day.dense[local], np.float32)  # copies (of these rows only)
        labels = np.array(day.labels[local]).reshape(-1)
        sparse = [np.array(a[local], np.int64) for a in day.sparse]
        self._check(day, local, dense, labels, sparse)
        if self.fold and self.table_rows is not None:
            for t, a in enumerate(sparse):
                np.remainder(a, self.table_rows[t], out=a)
        return dense, labels.astype(np.float32), sparse

    def _row(self, local, r: int) -> int:
        return int(local.start + r) if isinstance(local, slice) else int(local[r])

    def _check(self, day: Day, local, dense, labels, sparse) -> None:
        if labels.size and not ((labels == 0) | (labels == 1)).all():
            r = int(np.argmax((labels != 0) & (labels != 1)))
            raise DataError(day.paths[1], None, f"row {self._row(local, r)} (0-based): label "
                                                f"{labels[r]} is not 0 or 1")
        if dense.size and not np.isfinite(dense).all():
            r = int(np.argmax(~np.isfinite(dense).all(1)))
            raise DataError(day.paths[0], None, f"row {self._row(local, r)} (0-based): dense "
                                                f"features {dense[r].tolist()} are not all "
                                                "finite")
        for t, a in enumerate(sparse):
            if not a.size:
                continue
            lo, hi = a.min(), a.max()
            limit = None if self.table_rows is None or self.fold else self.table_rows[t]
            if lo >= 0 and (limit is None or hi < limit):
                continue
            bad = (a < 0) if limit is None else (a < 0) | (a >= limit)
            r, c = np.unravel_index(int(np.argmax(bad)), a.shape)
            v = int(a[r, c])
            rows = int(self.table_rows[t]) if self.table_rows is not None else None
            where = f"table {t} (member {t}.npy), row {self._row(local, int(r))} (0-based), id {v}"
            if v < 0:
                raise DataError(day.paths[2], None, f"{where}: negative ids are invalid")
            raise DataError(day.paths[2], None,
                            f"{where} is outside the table's {rows:,} rows (0..{rows - 1:,}): "
                            f"give the model tables that hold the data's ids (--arch-embedding-"
                            f"size, or --max-ind-range R to fold every id modulo its table's "
                            f"rows, capped at R)")

    @staticmethod
    def _join(parts):
        if len(parts) == 1:
            return parts[0]
        dense = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        sparse = [np.concatenate([p[2][t] for p in parts]) for t in range(len(parts[0][2]))]
        return dense, labels, sparse

    def _empty(self):
        d0 = self.days[0]
        return (np.zeros((0, d0.dense.shape[1]), np.float32), np.zeros(0, np.float32),
                [np.zeros((0, k), np.int64) for k in self.sizes])

    def read(self, start: int, stop: int):
        """Rows [start, stop) of the split (module and class docstrings)."""
        if not 0 <= start <= stop <= self.rows:
            raise IndexError(f"rows {start}..{stop} outside 0..{self.rows}")
        parts = []
        for k, (_, a0, b0) in enumerate(self._segs):
            s = int(self._starts[k])
            a, b = max(start - s, 0), min(stop - s, b0 - a0)
            if a < b:
                parts.append(self._part(k, slice(a0 + a, a0 + b)))
        return self._join(parts) if parts else self._empty()

    def take(self, rows: np.ndarray):
        """The rows at sorted split positions ``rows``, gathered from the maps."""
        rows = np.asarray(rows, np.int64)
        if rows.size and (rows[0] < 0 or rows[-1] >= self.rows):
            raise IndexError(f"rows {rows[0]}..{rows[-1]} outside 0..{self.rows}")
        cuts = np.searchsorted(rows, self._starts)
        parts = []
        for k, (_, a0, _) in enumerate(self._segs):
            a, b = cuts[k], cuts[k + 1]
            if a < b:
                parts.append(self._part(k, rows[a:b] - self._starts[k] + a0))
        return self._join(parts) if parts else self._empty()


def make_multihot_batch(dense: np.ndarray, labels: np.ndarray,
                        sparse: Sequence[np.ndarray]) -> Batch:
    """A ``Batch`` of n rows: dense [n, Din], labels [n], ``sparse[t]`` [n, k_t] (each row a
    bag of table t), in ``SyntheticData``'s multi-hot layout (module docstring)."""
    n = dense.shape[0]
    sizes = np.asarray([a.shape[1] for a in sparse], np.int64)
    offsets = np.zeros(len(sparse) * n + 1, np.int64)
    np.cumsum(np.repeat(sizes, n), out=offsets[1:])
    indices = np.concatenate([np.asarray(a, np.int64).reshape(-1) for a in sparse]) \
        if sparse else np.zeros(0, np.int64)
    return Batch(dense=np.ascontiguousarray(dense, np.float32), indices=indices,
                 offsets=offsets, labels=np.ascontiguousarray(labels, np.float32))


class MultiHotStream(RowStream):
    """Batches of a ``MultiHotDataset`` (``RowStream``: each rank its slice of every global
    batch, in ``order`` or file order, ``next_row`` the same on every rank)."""

    def _batch(self, parts) -> Batch:
        return make_multihot_batch(*parts)


# ----------------------------------------------------------------------------- the source


class MultiHotSource(EpochRows):
    """``--data criteo-multihot --data-path DIR``: the training days as a stream of global
    batches (each rank reads only its slice: ``local``), a new order every epoch in
    ``cfg.data.shuffle`` mode (MLPerf: ``none``), the held-out day's ``eval_split`` half read
    whole in file order (the last batch short). The interface of sources.BinarySource."""

    kind, what = "multihot", "a multi-hot dataset"

    def __init__(self, cfg, rank: int = 0, ranks: int = 1, eval_split: str = "test"):
        m, d = cfg.model, cfg.data
        self.cfg, self.rank, self.ranks = cfg, rank, ranks
        self.local = ranks > 1
        self.B = cfg.train.batch_size
        sizes = d.bag_sizes(m.num_tables)
        kw = dict(num_dense=m.num_dense, num_tables=m.num_tables, multi_hot_sizes=sizes,
                  table_rows=m.table_rows, fold=d.max_ind_range > 0)
        self.train = MultiHotDataset(d.path, "train", **kw)
        self.held_out = MultiHotDataset(d.path, eval_split, **kw)
        self.train_ok = self.train.rows >= self.B
        self.epoch = 0
        self._open(0)

    def _stream(self, row: int, order):
        return MultiHotStream(self.train, self.B, row, self.rank, self.ranks, drop_last=True,
                              order=order)

    def _too_small(self) -> str:
        return (f"the training days of {self.cfg.data.path} hold {self.train.rows} rows, "
                f"fewer than one batch of {self.B}: lower --mini-batch-size")

    def next_batch(self) -> Batch:
        return self._next_train()

    def eval_batches(self, n: int | None = None):
        from dlrm_tvm.data.sources import Batches

        held = self.held_out

        def gen():
            for batch in MultiHotStream(held, self.B, drop_last=False):
                yield batch, batch.dense.shape[0]

        return Batches(gen, -(-held.rows // self.B))

    def state(self) -> dict:
        return self.position()

    def describe(self) -> dict:
        d = self.cfg.data
        return {"kind": d.kind, "path": d.path, "days": self.train.num_days,
                "train_rows": self.train.rows, "held_out_rows": self.held_out.rows,
                "held_out_split": self.held_out.split,
                "multi_hot_sizes": list(self.train.sizes), "epoch": self.epoch,
                "shuffle": d.shuffle, "shuffle_batches": d.shuffle_batches,
                "ids_folded": self.train.fold}


def sized_for_multihot(cfg, say=None):
    """``cfg`` with what the multi-hot data decides: its bag sizes (``multi_hot_sizes``, when
    the config gives none; given ones must match: else a DataError naming the table), and
    with ``table_sizes == "data"`` the tables' rows our writer recorded in multihot.json
    (capped at ``max_ind_range``). MLPerf's own files record no rows: the config's stay."""
    import dataclasses

    m, d = cfg.model, cfg.data
    find_days(d.path)
    day = open_day(d.path, 0, m.num_dense, m.num_tables)
    sizes = day.sizes
    given = d.bag_sizes(m.num_tables)
    if given is not None and tuple(given) != sizes:
        t = next(k for k in range(m.num_tables) if given[k] != sizes[k])
        raise DataError(day.paths[2], None, f"member {t}.npy (table {t}) has bags of "
                                            f"{sizes[t]} ids; --multi-hot-sizes says "
                                            f"{given[t]}: wrong bag size (drop "
                                            "--multi-hot-sizes to take the data's: "
                                            f"{','.join(map(str, sizes))})")
    data = d if given is not None else dataclasses.replace(d, multi_hot_sizes=sizes)
    model = m
    meta = read_meta(d.path)
    rows = meta.get("table_rows") if meta else None
    if (d.table_sizes == "data" and isinstance(rows, list) and len(rows) == m.num_tables
            and all(isinstance(r, int) and r > 0 for r in rows)):
        rows = tuple(min(r, d.max_ind_range) if d.max_ind_range else r for r in rows)
        if rows != m.table_rows:
            model = dataclasses.replace(m, table_rows=rows)
            if say is not None:
                say(f"table sizes from the data ({Path(d.path) / META}): {sum(rows):,} rows "
                    f"in all, largest {max(rows):,} (the config had {m.total_rows:,}); "
                    f"--arch-embedding-size or table_sizes = \"config\" keeps the config's")
    if given is None and say is not None:
        say(f"multi-hot bag sizes from the data ({day.paths[2].name}): "
            f"{','.join(map(str, sizes))} ({sum(sizes)} lookups a sample)")
    return cfg.replace(model=model, data=data)
