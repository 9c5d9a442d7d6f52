"""Criteo preprocessing: raw files parsed once into MLPerf binary files and a ``meta.json``; the
input identity and the ``meta.json`` checks that tie such an output to its inputs.

Binary layout (the MLPerf DLRM binary format, so files written elsewhere read the same): each row
is 40 little-endian int32 ``[label, I1..I13, C1..C26]``, the counts clamped (>= 0, empty = 0)
and the categories as ids. ``preprocess`` writes into ``out_dir``:

* ``fmt="kaggle"``: the inputs, read as one stream, are split as the reference does into
  ``days`` (7) contiguous days: ``divmod(N, days)`` rows each, the first ``N % days`` days one
  more. Days 0..5 are ``train.bin``; day 6 is halved, first half ``test.bin`` (ceil), second
  half ``val.bin`` (``np.array_split(day6, 2)``).
* ``fmt="terabyte"``: input k (a ``day_N`` file) becomes ``day_{k}.bin``. Splits as the reference:
  train = every day but the last; the last day's first half (ceil) is test, its second half val.
  With a single input day everything is train.
* ``meta.json`` (written last: its presence marks a complete preprocess): format and version,
  ``files`` (rows per file), ``splits`` (``{name: [[file, start_row, stop_row], ...]}``),
  ``day_rows``, ``id_mode``, ``max_ind_range``, ``remap``, ``table_sizes`` (rows each table needs
  so every stored id fits), per input the rows, skipped and padded lines, and the totals;
  ``input_identity`` (per input: resolved path, size, mtime_ns, sha256 of its whole content)
  and ``params`` (format, max_ind_range, remap, skip_bad_lines, days, mapping), which tie
  the output to its inputs (``preprocess_mismatch``). File names in it are read only inside
  the directory (``load_meta``).
* ``mapping.npz`` with ``remap=True``: the per-column map (see ``CategoryMap``).

Category ids (``id_mode``): ``"hash_mod"``: ``int(hex, 16) % max_ind_range``, table sizes
``max_ind_range``; ``"remap"``: per column, contiguous ids in order of first appearance over the
inputs (after the ``% max_ind_range`` when one is given, as the reference remaps the folded
values), id 0 reserved for the value 0 (an empty field, or a hash that folds to 0) and, when a
saved map is applied to other data, for unseen values; table size = distinct values + 1;
``"hash32"``: neither: the raw 32-bit hash stored as its int32 bit pattern, table sizes 2**32 (to
be folded when batches are made).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from dlrm_tvm.data.criteo.category_map import CategoryMap
from dlrm_tvm.data.criteo.layout import (
    FORMAT_NAME,
    FORMAT_VERSION,
    NUM_CAT,
    ROW_BYTES,
    DataError,
    PathLike,
    check_input_file,
)
from dlrm_tvm.data.criteo.raw import RawReader, parse_raw

# --------------------------------------------------------------------------- input identity

DIGEST_CHUNK = 8 << 20  # the identity digest reads an input in chunks of this many bytes


def input_identity(path: PathLike) -> dict:
    """What ties preprocessed files to one raw input: its resolved path, size, mtime_ns and
    ``sha256`` of its whole content (a byte changed anywhere, even with the mtime restored,
    makes it another input; hashing runs at disk speed, far above the parser's)."""
    p = Path(path).resolve()
    st = os.stat(p)
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": _file_digest(p)}


def _file_digest(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(DIGEST_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def preprocess_params(fmt: str, max_ind_range: int | None, remap: bool, skip_bad_lines: bool,
                      days: int, mapping: PathLike | None = None) -> dict:
    """The parameters that decide what ``preprocess`` writes (recorded in meta.json)."""
    return {"format": fmt, "max_ind_range": None if max_ind_range is None else int(max_ind_range),
            "remap": bool(remap or mapping is not None), "skip_bad_lines": bool(skip_bad_lines),
            "days": int(days) if isinstance(days, int | np.integer) else days,
            "mapping": None if mapping is None else input_identity(mapping)}


def preprocess_mismatch(meta: dict, inputs: Sequence[PathLike], params: dict) -> str | None:
    """Why the preprocess output described by ``meta`` is not that of ``inputs`` with
    ``params`` (``None``: it is: same files, unchanged, same parameters)."""
    had, had_params = meta.get("input_identity"), meta.get("params")
    if not isinstance(had, list) or not isinstance(had_params, dict):
        return "its meta.json does not record which input files it was made from"
    for k in sorted(set(params) | set(had_params)):
        if had_params.get(k) != params.get(k):
            old, new = had_params.get(k), params.get(k)
            if k == "mapping":
                return "the category mapping file differs"
            return f"{k} was {old!r}, now {new!r}"
    if len(had) != len(inputs):
        return f"{len(had)} input file(s) then, {len(inputs)} now"
    for k, (old, path) in enumerate(zip(had, inputs, strict=True)):
        p = Path(path).resolve()
        if not isinstance(old, dict) or old.get("path") != str(p):
            was = old.get("path") if isinstance(old, dict) else old
            return f"input {k + 1} is {p}, it was preprocessed from {was}"
        st = os.stat(p)
        if old.get("size") != st.st_size:
            return f"{p} changed: {old.get('size')} bytes then, {st.st_size} now"
        if old.get("mtime_ns") != st.st_mtime_ns:
            return f"{p} changed: modified since it was preprocessed"
        if "sha256" not in old:  # an older meta.json: a digest of the first and last MiB only
            return (f"{p}: its recorded digest covers only part of the file (written by an "
                    f"older dlrm-tvm)")
        if old.get("sha256") != _file_digest(p):
            return f"{p} changed: its content differs"
    return None


def meta_member(d: PathLike, name, where: str) -> Path:
    """``d / name`` for a file name read from ``d``'s meta.json, refused (``DataError`` naming
    the meta.json) unless it is a relative path that stays inside ``d``."""
    meta = Path(d) / "meta.json"
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        raise DataError(meta, None, f"{where}: {name!r} is not a file name")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or os.path.isabs(name):
        raise DataError(meta, None, f"{where}: {name!r} is outside its directory (file names "
                                    "in meta.json must be relative, without '..')")
    return Path(d) / pure


def load_meta(d: PathLike) -> dict:
    """A preprocess directory's meta.json, checked: ``files``, ``splits`` and ``table_sizes``
    present and well formed, every file name inside ``d`` (else ``DataError`` naming it)."""
    path = Path(d) / "meta.json"
    try:
        with open(path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise DataError(d, None, "no meta.json: not a (complete) preprocess output") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, None, f"cannot be read as JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(path, None, "is not a JSON object")
    files, splits, sizes = meta.get("files"), meta.get("splits"), meta.get("table_sizes")
    if not isinstance(files, dict) or not isinstance(splits, dict):
        raise DataError(path, None, "needs 'files' ({name: rows}) and 'splits' "
                                    "({split: [[file, start_row, stop_row], ...]})")
    if not (isinstance(sizes, list) and len(sizes) == NUM_CAT and all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in sizes)):
        raise DataError(path, None, f"table_sizes must be {NUM_CAT} positive integers")
    for name, rows in files.items():
        meta_member(d, name, "files")
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise DataError(path, None, f"files: rows of {name!r} must be an integer >= 0")
    for split, segs in splits.items():
        if not isinstance(segs, list):
            raise DataError(path, None, f"splits.{split} must be a list")
        for k, seg in enumerate(segs):
            if not (isinstance(seg, list) and len(seg) == 3 and all(
                    isinstance(x, int) and not isinstance(x, bool) for x in seg[1:])):
                raise DataError(path, None, f"splits.{split}[{k}] must be [file, start_row, "
                                            f"stop_row], got {seg!r}")
            meta_member(d, seg[0], f"splits.{split}[{k}]")
    return meta


# --------------------------------------------------------------------------- preprocessing


def _reference_days(n: int, days: int) -> list[int]:
    """The reference's Kaggle day sizes: divmod(n, days), the first n % days days one more."""
    per, extra = divmod(n, days)
    return [per + (1 if d < extra else 0) for d in range(days)]


def _copy_range(src: Path, dst: Path, start: int, stop: int, piece: int = 1 << 26) -> None:
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fi.seek(start)
        left = stop - start
        while left > 0:
            b = fi.read(min(piece, left))
            if not b:
                raise OSError(f"{src}: ended early while splitting")
            fo.write(b)
            left -= len(b)


def preprocess(inputs: Sequence[PathLike], out_dir: PathLike, fmt: str = "kaggle",
               max_ind_range: int | None = None, remap: bool = False,
               skip_bad_lines: bool = False, days: int = 7, mapping: PathLike | None = None,
               chunk_rows: int = 32768, workers: int | None = 1,
               progress: bool | Callable[[int, int, int], None] = False) -> dict:
    """``_preprocess`` into ``out_dir`` holding its lock: one preprocess at a time writes a
    directory (a second one is refused, naming the first, instead of racing it)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(out, None, "the output must be a directory, and this is a file")
    out.mkdir(parents=True, exist_ok=True)
    with _Exclusive(out):
        return _preprocess(inputs, out, fmt, max_ind_range, remap, skip_bad_lines, days,
                           mapping, chunk_rows, workers, progress)


class _Exclusive:
    """An exclusive lock on ``d/.preprocess.lock`` (flock: released when the process ends, so
    a killed preprocess never blocks the next)."""

    def __init__(self, d: Path):
        self.path = d / ".preprocess.lock"

    def __enter__(self):
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise DataError(self.path, None, f"cannot open the lock: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DataError(self.path.parent, None, f"another preprocess ({holder}) is writing "
                            f"into this directory: wait for it, or give another output "
                            f"directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock; the file stays (unlinking it would race)
        return False


def _preprocess(inputs: Sequence[PathLike], out_dir: PathLike, fmt: str = "kaggle",
                max_ind_range: int | None = None, remap: bool = False,
                skip_bad_lines: bool = False, days: int = 7, mapping: PathLike | None = None,
                chunk_rows: int = 32768, workers: int | None = 1,
                progress: bool | Callable[[int, int, int], None] = False) -> dict:
    """Parse raw files once into MLPerf binary files in ``out_dir`` (layout: module docstring).

    ``mapping``: a ``mapping.npz`` of an earlier ``remap=True`` run, applied as is (frozen:
    unseen values -> 0) instead of learning one; implies ``remap``. Streams: holds one chunk of
    rows (and, when remapping, the map) in memory. Returns the ``meta.json`` contents.

    ``workers``: processes parsing byte ranges of the inputs in parallel (criteo/parallel.py;
    None: ``parallel.default_workers()``); the output is the serial run's, byte for byte
    (inputs under ``parallel.MIN_BYTES`` in all are parsed serially). ``progress``: True for
    rate and ETA lines on stderr (bytes of input done, rows/s), or a callable taking (bytes
    done, bytes in all, rows done).
    """
    if fmt not in ("kaggle", "terabyte"):
        raise ValueError(f"fmt must be 'kaggle' or 'terabyte', got {fmt!r}")
    if not inputs:
        raise ValueError("preprocess needs at least one input file")
    if fmt == "kaggle" and (not isinstance(days, int) or days < 2):
        raise ValueError(f"days must be an integer >= 2 for kaggle, got {days!r}")
    for p in inputs:
        check_input_file(p, "preprocess takes raw Criteo text files")
    if mapping is not None:
        check_input_file(mapping, "the mapping is the mapping.npz of an earlier remap run")
    params = preprocess_params(fmt, max_ind_range, remap, skip_bad_lines, days, mapping)
    identity = [input_identity(p) for p in inputs]  # before reading: a later change shows
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(out, None, "the output must be a directory, and this is a file")
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    cmap = CategoryMap.load(mapping) if mapping is not None else CategoryMap() if remap else None
    learn = remap and mapping is None
    from dlrm_tvm.data.criteo import parallel

    total_bytes = sum(os.path.getsize(p) for p in inputs)
    report = _progress_reporter(progress, total_bytes)
    done = [0, 0]  # bytes, rows of the inputs finished before the current one

    def write_rows(reader: RawReader, f) -> None:
        for chunk in reader:
            cats = None if cmap is None else cmap.map(chunk.cats, add=learn)
            chunk.to_rows(cats).astype("<i4", copy=False).tofile(f)
            if report is not None:
                report(done[0] + reader.bytes_read, done[1] + reader.stats.rows)
        done[0] += os.path.getsize(reader.path)
        done[1] += reader.stats.rows

    workers = parallel.default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    para = workers > 1 and total_bytes >= parallel.MIN_BYTES
    names = ["train.bin"] * len(inputs) if fmt == "kaggle" else \
        [f"day_{k}.bin" for k in range(len(inputs))]
    if para:
        per_input = parallel.parse_parallel(
            inputs, [out / n for n in names], out / ".parts", workers, max_ind_range,
            skip_bad_lines, chunk_rows, cmap, learn, mapping,
            None if report is None else report)
    files = {}
    if fmt == "kaggle":
        train = out / "train.bin"
        if not para:
            per_input = []
            with open(train, "wb") as f:
                for p in inputs:
                    r = parse_raw(p, skip_bad_lines, max_ind_range, chunk_rows)
                    write_rows(r, f)
                    per_input.append(r.stats.to_dict())
        n = sum(s["rows"] for s in per_input)
        day_rows = _reference_days(n, days)
        n_train = sum(day_rows[:-1])
        n_test = -(-day_rows[-1] // 2)
        _copy_range(train, out / "test.bin", n_train * ROW_BYTES, (n_train + n_test) * ROW_BYTES)
        _copy_range(train, out / "val.bin", (n_train + n_test) * ROW_BYTES, n * ROW_BYTES)
        os.truncate(train, n_train * ROW_BYTES)
        files = {"train.bin": n_train, "test.bin": n_test, "val.bin": n - n_train - n_test}
        splits = {name: [[name + ".bin", 0, files[name + ".bin"]]]
                  for name in ("train", "test", "val")}
    else:
        day_rows = []
        if not para:
            per_input = []
            for k, p in enumerate(inputs):
                with open(out / f"day_{k}.bin", "wb") as f:
                    r = parse_raw(p, skip_bad_lines, max_ind_range, chunk_rows)
                    write_rows(r, f)
                per_input.append(r.stats.to_dict())
        for k, st in enumerate(per_input):
            day_rows.append(st["rows"])
            files[f"day_{k}.bin"] = st["rows"]
        n = sum(day_rows)
        if len(inputs) == 1:
            splits = {"train": [["day_0.bin", 0, n]], "test": [], "val": []}
        else:
            last, rows_last = f"day_{len(inputs) - 1}.bin", day_rows[-1]
            half = -(-rows_last // 2)
            splits = {"train": [[f"day_{k}.bin", 0, r] for k, r in enumerate(day_rows[:-1])],
                      "test": [[last, 0, half]], "val": [[last, half, rows_last]]}
    if n == 0:
        raise DataError(", ".join(map(str, inputs)), None, "no valid rows in the inputs")

    if cmap is not None:
        id_mode, table_sizes = "remap", cmap.table_sizes
        if learn:
            cmap.save(out / "mapping.npz")
    elif max_ind_range is not None:
        id_mode, table_sizes = "hash_mod", [int(max_ind_range)] * NUM_CAT
    else:
        id_mode, table_sizes = "hash32", [2**32] * NUM_CAT
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "row_layout": "40 x int32 little-endian: label, I1..I13 (clamped >= 0, empty 0), "
                      "C1..C26 ids",
        "dataset": fmt,
        "id_mode": id_mode,
        "max_ind_range": None if max_ind_range is None else int(max_ind_range),
        "remap": cmap is not None,
        "mapping": None if cmap is None else ("mapping.npz" if learn else str(mapping)),
        "table_sizes": table_sizes,
        "files": files,
        "splits": splits,
        "day_rows": day_rows,
        "rows": n,
        "skipped": sum(s["skipped"] for s in per_input),
        "padded": sum(s["padded"] for s in per_input),
        "inputs": per_input,
        "input_identity": identity,  # what ties these files to their inputs (data/sources.py)
        "params": params,
    }
    with open(out / "meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def _progress_reporter(progress, total_bytes: int):
    """``preprocess``'s progress argument as a callable (bytes done, rows done), or None."""
    if not progress:
        return None
    if callable(progress):
        return lambda b, r: progress(b, total_bytes, r)
    from dlrm_tvm.progress import Progress

    p = Progress(total_bytes, "preprocess", unit="MiB", scale=2**20, rate_of="rows")
    return lambda b, r: p.update(min(b, total_bytes), rows=r)
