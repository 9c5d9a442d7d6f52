"""Criteo click logs: the raw text parser, the one-time binary preprocessing, and the batch reader.

Raw format (Kaggle ``train.txt`` and Terabyte ``day_N`` alike): one sample per line, no header,
LF line ends, 40 tab-separated fields ``label, I1..I13, C1..C26``:

* label: ``0`` or ``1``;
* I1..I13: integer counts, possibly empty (read as 0), possibly negative (clamped to 0, as
  facebookresearch/dlrm's ``X_int[X_int < 0] = 0``). The ``log(x + 1)`` of the reference is
  applied when batches are made, never stored;
* C1..C26: hashed categories of 1-8 hex digits (8 in practice), possibly empty (read as 0, as
  the reference's ``"" -> "0"``). With ``max_ind_range = R`` a category becomes
  ``int(hex, 16) % R``; without, it stays the raw 32-bit hash (to be remapped or folded later).

Lines with 14..39 fields are valid: trailing empty categorical fields were stripped (some Kaggle
copies do this); the missing ones are empty. They are counted as "padded".

Bad-line policy. Each of these is a ``DataError`` naming ``file:line`` and the problem, unless
``skip_bad_lines``, in which case the line is dropped and counted (the first few reasons kept):
more than 40 fields; fewer than 14 (the label and the 13 counts must be present); a label other
than ``0``/``1``; a count that is not an integer in int32 range; a category that is not 1-8 hex
digits; an empty line (anywhere, including extra blank lines at the end: a final line without
its newline is fine). An empty file is always an error, skipping or not.

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
  ``input_identity`` (per input: resolved path, size, mtime_ns, sha256 of its first and last
  MiB) and ``params`` (format, max_ind_range, remap, skip_bad_lines, days, mapping), which tie
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

Batches (``BinaryDataset.batches``) are ``dlrm_tvm.data.Batch`` objects like the synthetic ones:
dense float32 ``log(max(x, 0) + 1)``, labels float32, one lookup per bag in torchrec's jagged
table-major layout. Each id is taken ``% table_rows[t]`` (the reference's ``max_ind_range``
folding), read as unsigned 32-bit so that ``hash32`` files fold correctly, so any file fits any
model's tables.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from dlrm_tvm.data import Batch

NUM_DENSE = 13
NUM_CAT = 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_CAT  # 40
MIN_FIELDS = 1 + NUM_DENSE  # 14: label and every count present
ROW_BYTES = 4 * NUM_FIELDS
FORMAT_NAME = "dlrm-tvm-criteo-binary"
FORMAT_VERSION = 1
MAX_REASONS = 10  # skipped-line reasons kept in the stats
_INT32_MAX = 2**31 - 1
_COUNT_DIGITS = 10  # int32 has at most 10 decimal digits
_HEX_DIGITS = 8

PathLike = str | os.PathLike


class DataError(ValueError):
    """Bad input data: ``str()`` is ``"FILE:LINE: what is wrong"`` (``"FILE: ..."`` if no line)."""

    def __init__(self, path: PathLike, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")


# --------------------------------------------------------------------------- input files


def check_input_file(path: PathLike, hint: str = "") -> Path:
    """``path`` as a Path if it is an existing, readable regular file; otherwise a ``DataError``
    naming it (missing, a directory, not a regular file, unreadable). ``hint`` is appended."""
    p = Path(path)
    tail = f": {hint}" if hint else ""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise DataError(p, None, f"no such file{tail}") from None
    except OSError as e:
        raise DataError(p, None, f"cannot be read ({e.strerror or e}){tail}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(p, None, f"is a directory, not a file{tail}")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(p, None, f"is not a regular file{tail}")
    try:
        os.close(os.open(p, os.O_RDONLY))
    except OSError as e:
        raise DataError(p, None, f"cannot be read ({e.strerror or e}){tail}") from None
    return p


SAMPLE_BYTES = 1 << 20  # the identity digest covers the first and the last MiB of an input


def input_identity(path: PathLike) -> dict:
    """What ties preprocessed files to one raw input: its resolved path, size, mtime_ns and
    ``sample_sha256`` (sha256 of the size, the first and the last MiB: cheap on huge files)."""
    p = Path(path).resolve()
    st = os.stat(p)
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sample_sha256": _sample_digest(p, st.st_size)}


def _sample_digest(p: Path, size: int) -> str:
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            h.update(f.read(SAMPLE_BYTES))
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
        if old.get("sample_sha256") != _sample_digest(p, st.st_size):
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


# --------------------------------------------------------------------------- raw parsing

@dataclass
class RawChunk:
    """Parsed rows: labels int32 [n], dense int32 [n, 13] (clamped, empty = 0), cats int64 [n, 26]
    (``% max_ind_range`` or the raw 32-bit hash; empty = 0), lines int64 [n] (1-based source line).
    """

    labels: np.ndarray
    dense: np.ndarray
    cats: np.ndarray
    lines: np.ndarray

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to_rows(self, cats: np.ndarray | None = None) -> np.ndarray:
        """The rows in the binary layout: int32 [n, 40] (``cats`` replaces the categories)."""
        c = self.cats if cats is None else cats
        out = np.empty((len(self), NUM_FIELDS), np.int32)
        out[:, 0] = self.labels
        out[:, 1:MIN_FIELDS] = self.dense
        out[:, MIN_FIELDS:] = c.astype(np.uint32).view(np.int32)  # hash32: the bit pattern
        return out

    @staticmethod
    def concat(chunks: Sequence[RawChunk]) -> RawChunk:
        if not chunks:
            return RawChunk(np.zeros(0, np.int32), np.zeros((0, NUM_DENSE), np.int32),
                            np.zeros((0, NUM_CAT), np.int64), np.zeros(0, np.int64))
        return RawChunk(*(np.concatenate([getattr(c, f) for c in chunks])
                          for f in ("labels", "dense", "cats", "lines")))


@dataclass
class RawStats:
    """What one pass over a raw file saw. ``lines`` counts every line read, good or bad."""

    path: str
    rows: int = 0
    skipped: int = 0
    padded: int = 0
    lines: int = 0
    positives: int = 0
    skip_reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _field_text(data: bytes, start: int, length: int) -> str:
    s = data[start:start + min(length, 40)].decode("utf-8", "replace")
    return s + ("..." if length > 40 else "")


_PAD = 16  # bytes in front of a chunk so that every field's 16-byte window fits
_POW100 = 100.0 ** np.arange(4, -1, -1)
_ASCII_ZEROS = np.uint64(0x3030303030303030)
# _TOP_BYTES[k]: a uint64 keeping its k most significant bytes (the last k of 8 in memory)
_TOP_BYTES = np.array([(2**64 - 1) ^ (2 ** (8 * (8 - k)) - 1) for k in range(9)], np.uint64)


def _digit_bytes(words: np.ndarray, ends: np.ndarray, ndig: np.ndarray,
                 nwords: int) -> np.ndarray:
    """uint8 [m, 8 * nwords]: the bytes before each field's end, every one but the last
    ``ndig`` replaced by ASCII '0' (so a sign, the separators and the previous field vanish).

    ``words[i]`` is the little-endian uint64 at byte i of the padded chunk: one gather fetches
    8 bytes, and the masking is one and/or on whole words."""
    out = np.empty((ends.shape[0], nwords), np.uint64)
    for k in range(nwords):
        back = 8 * (nwords - 1 - k)  # bytes between this word's end and the field's end
        keep = _TOP_BYTES[np.clip(ndig - back, 0, 8)]
        out[:, k] = (words[ends + (_PAD - 8 - back)] & keep) | (_ASCII_ZEROS & ~keep)
    return out.view(np.uint8)


def _any_row(mask: np.ndarray) -> np.ndarray:
    """``mask.any(1)`` for a contiguous bool [m, 8k] (as k uint64 words a row: much faster)."""
    w = np.ascontiguousarray(mask).view(np.uint64)
    return w[:, 0] != 0 if w.shape[1] == 1 else (w != 0).any(1)


def _parse_hex(words: np.ndarray, ends: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, ...]:
    """Fields of 0..8 hex digits: (values int64, bad bool); empty is 0."""
    c = _digit_bytes(words, ends, lens, 1)
    dig = c - np.uint8(48)
    is_dig = dig < 10
    let = (c | np.uint8(0x20)) - np.uint8(97)  # a-f and A-F -> 0..5
    is_let = let < 6
    bad = _any_row(~(is_dig | is_let)) | (lens > _HEX_DIGITS)
    val = np.where(is_dig, dig, let + np.uint8(10))
    packed = np.ascontiguousarray((val[:, 0::2] << 4) | val[:, 1::2])  # two digits a byte
    return packed.view(">u4").reshape(-1).astype(np.int64), bad


def _parse_counts(words: np.ndarray, a: np.ndarray, starts: np.ndarray,
                  lens: np.ndarray) -> tuple[np.ndarray, ...]:
    """Fields of an optional sign and 1..10 decimal digits, in int32 range, or empty (0):
    (values int64, bad bool)."""
    present = lens > 0
    first = a[starts]
    neg = present & (first == ord("-"))
    ndig = lens - (neg | (present & (first == ord("+"))))
    dig = _digit_bytes(words, starts + lens, ndig, 2) - np.uint8(48)
    bad = _any_row(dig >= 10) | (present & ((ndig < 1) | (ndig > _COUNT_DIGITS)))
    d = dig[:, 16 - _COUNT_DIGITS:]
    val = (d[:, 0::2] * np.uint8(10) + d[:, 1::2]).astype(np.float64) @ _POW100  # exact
    bad |= val > _INT32_MAX + neg
    return np.where(neg, -val, val).astype(np.int64), bad


def _parse_block(data: bytes, path: str, first_line: int, max_ind_range: int | None,
                 skip: bool, stats: RawStats) -> RawChunk:
    """Parse whole lines (``data`` ends with a newline); raise or drop bad lines."""
    buf = b"\t" * _PAD + data
    a = np.frombuffer(buf, np.uint8)[_PAD:]
    words = np.ndarray((len(buf) - 7,), "<u8", buf, 0, (1,))  # unaligned: any byte offset
    seps = np.flatnonzero((a == 9) | (a == 10))
    is_nl = a[seps] == 10
    nl_k = np.flatnonzero(is_nl)  # index in seps of each line's newline
    n = nl_k.shape[0]
    fstart = np.empty_like(seps)
    fstart[0] = 0
    fstart[1:] = seps[:-1] + 1
    flen = seps - fstart
    nfields = np.diff(nl_k, prepend=-1)
    if (nfields == NUM_FIELDS).all():  # the usual case: no scatter
        starts, lens = fstart.reshape(n, NUM_FIELDS), flen.reshape(n, NUM_FIELDS)
    else:
        line_of = np.repeat(np.arange(n), nfields)
        k = np.arange(seps.shape[0]) - (nl_k - nfields + 1)[line_of]
        keep = k < NUM_FIELDS
        flat = line_of[keep] * NUM_FIELDS + k[keep]
        starts = np.zeros((n, NUM_FIELDS), np.int64)
        lens = np.zeros((n, NUM_FIELDS), np.int64)
        starts.reshape(-1)[flat] = fstart[keep]
        lens.reshape(-1)[flat] = flen[keep]
    ends = starts + lens

    empty = (nfields == 1) & (lens[:, 0] == 0)
    too_many = nfields > NUM_FIELDS
    too_few = ~empty & (nfields < MIN_FIELDS)
    lab = a[starts[:, 0]]
    bad_label = (lens[:, 0] != 1) | ((lab != ord("0")) & (lab != ord("1")))
    dense, bad_dense = _parse_counts(words, a, starts[:, 1:MIN_FIELDS].reshape(-1),
                                     lens[:, 1:MIN_FIELDS].reshape(-1))
    dense, bad_dense = dense.reshape(n, NUM_DENSE), bad_dense.reshape(n, NUM_DENSE)
    cats, bad_cat = _parse_hex(words, ends[:, MIN_FIELDS:].reshape(-1),
                               lens[:, MIN_FIELDS:].reshape(-1))
    cats, bad_cat = cats.reshape(n, NUM_CAT), bad_cat.reshape(n, NUM_CAT)
    structural = empty | too_many | too_few
    bad = structural | bad_label | bad_dense.any(1) | bad_cat.any(1)

    if bad.any():
        def reason(i: int) -> str:
            if empty[i]:
                return "empty line"
            if too_many[i] or too_few[i]:
                least = "" if too_many[i] else ", at least 14: the label and the 13 counts"
                return (f"{nfields[i]} fields, expected 40 (label, 13 counts, 26 categories"
                        f"{least})")
            if bad_label[i]:
                return f"label {_field_text(data, starts[i, 0], lens[i, 0])!r} is not 0 or 1"
            if bad_dense[i].any():
                j = int(np.argmax(bad_dense[i]))
                txt = _field_text(data, starts[i, 1 + j], lens[i, 1 + j])
                return f"count I{j + 1} {txt!r} is not an integer in int32 range"
            j = int(np.argmax(bad_cat[i]))
            txt = _field_text(data, starts[i, MIN_FIELDS + j], lens[i, MIN_FIELDS + j])
            return f"category C{j + 1} {txt!r} is not 1-8 hex digits"

        rows_bad = np.flatnonzero(bad)
        if not skip:
            i = int(rows_bad[0])
            raise DataError(path, first_line + i, reason(i))
        for i in rows_bad[: max(0, MAX_REASONS - len(stats.skip_reasons))]:
            stats.skip_reasons.append(f"{path}:{first_line + int(i)}: {reason(int(i))}")
        stats.skipped += int(rows_bad.shape[0])

    good = ~bad
    labels = (lab[good] - ord("0")).astype(np.int32)
    dense = np.maximum(dense[good], 0).astype(np.int32)
    cats = cats[good]
    if max_ind_range is not None:
        cats %= max_ind_range
    stats.lines += n
    stats.rows += int(labels.shape[0])
    stats.positives += int(labels.sum())
    stats.padded += int((good & (nfields < NUM_FIELDS)).sum())
    lines = first_line + np.flatnonzero(good).astype(np.int64)
    return RawChunk(labels, dense, cats, lines)


def _line_blocks(f, chunk_rows: int) -> Iterator[bytes]:
    """Blocks of exactly ``chunk_rows`` whole lines (fewer at the end), each ending with LF."""
    block_bytes = max(1 << 16, chunk_rows * 256)
    pending = b""
    eof = False
    while not eof or pending:
        parts, count = [pending], pending.count(b"\n")
        while count < chunk_rows and not eof:
            b = f.read(block_bytes)
            if not b:
                eof = True
            else:
                parts.append(b)
                count += b.count(b"\n")
        data = b"".join(parts)
        if count < chunk_rows:  # only at the end of the file
            if data and not data.endswith(b"\n"):
                data += b"\n"  # a last line without its newline
            if data:
                yield data
            return
        cut = int(np.flatnonzero(np.frombuffer(data, np.uint8) == 10)[chunk_rows - 1]) + 1
        pending = data[cut:]
        yield data[:cut]


class RawReader:
    """Iterate a raw Criteo file as ``RawChunk`` s of ``chunk_rows`` lines (fewer after skips).

    ``stats`` (a ``RawStats``) is complete once the iteration ends; iterating again re-reads.
    """

    def __init__(self, path: PathLike, skip_bad_lines: bool = False,
                 max_ind_range: int | None = None, chunk_rows: int = 32768):
        if max_ind_range is not None and (not isinstance(max_ind_range, int | np.integer)
                                          or max_ind_range <= 0):
            raise ValueError(f"max_ind_range must be a positive integer, got {max_ind_range!r}")
        if not isinstance(chunk_rows, int) or chunk_rows <= 0:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        self.path, self.skip = str(path), skip_bad_lines
        self.max_ind_range = None if max_ind_range is None else int(max_ind_range)
        self.chunk_rows = chunk_rows
        self.stats = RawStats(self.path)

    def __iter__(self) -> Iterator[RawChunk]:
        self.stats = RawStats(self.path)
        check_input_file(self.path)
        if os.path.getsize(self.path) == 0:
            raise DataError(self.path, 1, "empty file (no rows)")
        line = 1
        with open(self.path, "rb") as f:
            for data in _line_blocks(f, self.chunk_rows):
                chunk = _parse_block(data, self.path, line, self.max_ind_range, self.skip,
                                     self.stats)
                line = self.stats.lines + 1
                yield chunk


def parse_raw(path: PathLike, skip_bad_lines: bool = False, max_ind_range: int | None = None,
              chunk_rows: int = 32768) -> RawReader:
    """A streaming reader of one raw file: iterate it for ``RawChunk`` s, then read ``.stats``.

    Never holds more than about ``chunk_rows`` lines of the file in memory (parsing needs about
    5 KB of temporaries a line: ~170 MB at the default).
    """
    return RawReader(path, skip_bad_lines, max_ind_range, chunk_rows)


def read_raw(path: PathLike, skip_bad_lines: bool = False, max_ind_range: int | None = None,
             chunk_rows: int = 32768) -> tuple[RawChunk, RawStats]:
    """A whole (small) raw file as one ``RawChunk``, and its ``RawStats``."""
    reader = parse_raw(path, skip_bad_lines, max_ind_range, chunk_rows)
    chunk = RawChunk.concat(list(reader))
    return chunk, reader.stats


# --------------------------------------------------------------------------- category remap


class CategoryMap:
    """Per column, raw category value -> contiguous id: 1, 2, ... in order of first appearance;
    0 for the value 0 (an empty field) and, when not adding, for unseen values.

    Each column is a few sorted runs of (key, id), merged as they grow (the logarithmic method),
    so a chunk costs O(chunk log) plus amortised merges, never a Python loop over values.
    ``save``/``load`` keep it in an ``.npz`` (``counts``, ``keys_{j}`` sorted uint32,
    ``ids_{j}`` int32) so other files can be mapped the same way.
    """

    def __init__(self, columns: int = NUM_CAT):
        self.counts = np.zeros(columns, np.int64)  # distinct non-zero values per column
        self._runs: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(columns)]

    @property
    def table_sizes(self) -> list[int]:
        return [int(c) + 1 for c in self.counts]

    def map(self, cats: np.ndarray, add: bool = True) -> np.ndarray:
        """int64 ids [n, columns] for raw values ``cats`` [n, columns]; ``add`` learns new ones."""
        out = np.empty(cats.shape, np.int64)
        for j in range(cats.shape[1]):
            out[:, j] = self._map_column(j, cats[:, j], add)
        return out

    def _map_column(self, j: int, x: np.ndarray, add: bool) -> np.ndarray:
        u, first, inv = np.unique(x, return_index=True, return_inverse=True)
        u = u.astype(np.uint32)
        ids = np.zeros(u.shape[0], np.int64)
        unknown = u != 0
        for keys, vals in self._runs[j]:
            if not unknown.any():
                break
            where = np.flatnonzero(unknown)
            p = np.minimum(np.searchsorted(keys, u[where]), keys.shape[0] - 1)
            hit = keys[p] == u[where]
            ids[where[hit]] = vals[p[hit]]
            unknown[where[hit]] = False
        if add and unknown.any():
            new = np.flatnonzero(unknown)  # sorted by value
            by_first = new[np.argsort(first[new], kind="stable")]
            ids[by_first] = self.counts[j] + 1 + np.arange(by_first.shape[0])
            self.counts[j] += by_first.shape[0]
            runs = self._runs[j]
            runs.append((u[new], ids[new].astype(np.int32)))
            while len(runs) > 1 and runs[-2][0].shape[0] <= 2 * runs[-1][0].shape[0]:
                (k1, v1), (k2, v2) = runs.pop(), runs.pop()
                keys, vals = np.concatenate([k2, k1]), np.concatenate([v2, v1])
                order = np.argsort(keys, kind="stable")
                runs.append((keys[order], vals[order]))
        return ids[inv.reshape(-1)]

    def _merged(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        runs = self._runs[j]
        if not runs:
            return np.zeros(0, np.uint32), np.zeros(0, np.int32)
        keys = np.concatenate([k for k, _ in runs])
        vals = np.concatenate([v for _, v in runs])
        order = np.argsort(keys, kind="stable")
        self._runs[j] = [(keys[order], vals[order])]
        return self._runs[j][0]

    def save(self, path: PathLike) -> None:
        arrays = {"counts": self.counts}
        for j in range(self.counts.shape[0]):
            arrays[f"keys_{j}"], arrays[f"ids_{j}"] = self._merged(j)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: PathLike) -> CategoryMap:
        with np.load(path) as z:
            m = cls(int(z["counts"].shape[0]))
            m.counts = z["counts"].astype(np.int64)
            for j in range(m.counts.shape[0]):
                if z[f"keys_{j}"].shape[0]:
                    m._runs[j] = [(z[f"keys_{j}"], z[f"ids_{j}"])]
        return m


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
               chunk_rows: int = 32768) -> dict:
    """Parse raw files once into MLPerf binary files in ``out_dir`` (layout: module docstring).

    ``mapping``: a ``mapping.npz`` of an earlier ``remap=True`` run, applied as is (frozen:
    unseen values -> 0) instead of learning one; implies ``remap``. Streams: holds one chunk of
    rows (and, when remapping, the map) in memory. Returns the ``meta.json`` contents.
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

    def write_rows(reader: RawReader, f) -> None:
        for chunk in reader:
            cats = None if cmap is None else cmap.map(chunk.cats, add=learn)
            chunk.to_rows(cats).astype("<i4", copy=False).tofile(f)

    per_input, files = [], {}
    if fmt == "kaggle":
        train = out / "train.bin"
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
        for k, p in enumerate(inputs):
            with open(out / f"day_{k}.bin", "wb") as f:
                r = parse_raw(p, skip_bad_lines, max_ind_range, chunk_rows)
                write_rows(r, f)
            per_input.append(r.stats.to_dict())
            day_rows.append(r.stats.rows)
            files[f"day_{k}.bin"] = r.stats.rows
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
        "input_identity": identity,  # what ties these files to their inputs (sources.py)
        "params": params,
    }
    with open(out / "meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    return meta


# --------------------------------------------------------------------------- binary reading


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


class BatchStream:
    """Iterator of ``Batch`` es; ``next_row`` is the global row the next batch starts at (pass
    it as ``start_row`` to resume). It is the same on every rank."""

    def __init__(self, ds: BinaryDataset, batch_size: int, table_rows: Sequence[int],
                 start_row: int, rank: int, ranks: int, drop_last: bool):
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not (isinstance(ranks, int) and ranks > 0 and 0 <= rank < ranks):
            raise ValueError(f"need 0 <= rank < ranks, got rank={rank}, ranks={ranks}")
        if batch_size % ranks:
            raise ValueError(f"batch_size {batch_size} must divide by ranks {ranks}")
        if not 0 <= start_row <= ds.rows:
            raise ValueError(f"start_row {start_row} is outside 0..{ds.rows}")
        self.ds, self.B, self.rank, self.ranks = ds, batch_size, rank, ranks
        self.table_rows, self.drop_last = tuple(table_rows), drop_last
        self.next_row = start_row

    def __iter__(self) -> BatchStream:
        return self

    def __len__(self) -> int:
        left = self.ds.rows - self.next_row
        return left // self.B if self.drop_last else -(-left // self.B)

    def __next__(self) -> Batch:
        left = self.ds.rows - self.next_row
        if left <= 0 or (self.drop_last and left < self.B):
            raise StopIteration
        b = min(self.B, left)  # a short last batch splits as evenly as it can
        lo = self.next_row + self.rank * b // self.ranks
        hi = self.next_row + (self.rank + 1) * b // self.ranks
        batch = make_batch(self.ds.read(lo, hi), self.table_rows)
        self.next_row += b
        return batch


_CHECK_HINT = ("is it an MLPerf binary file of Criteo rows (40 little-endian int32 a row: "
               "label 0/1, 13 counts >= 0, 26 category ids)?")


def _any_int32_id(meta: dict) -> bool:
    """Whether a preprocess output's stored ids may be any int32 (the raw 32-bit hashes of
    ``hash32``, or ids of tables above 2**31 rows): else they are >= 0."""
    return meta.get("id_mode") == "hash32" or max(meta["table_sizes"]) > _INT32_MAX


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

    def _check(self, i: int, a: int, rows: np.ndarray) -> None:
        """Rows ``rows`` (map ``i`` from its row ``a``) are valid, or a ``DataError``."""
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
        row = self._offs[i] + a + r
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
        return out

    def batches(self, batch_size: int, table_rows: Sequence[int], start_row: int = 0,
                rank: int = 0, ranks: int = 1, drop_last: bool = True) -> BatchStream:
        """Global batches of ``batch_size`` rows from ``start_row``; rank r of ``ranks`` gets
        rows [row + r*B/ranks, row + (r+1)*B/ranks) of each, a Batch of B/ranks samples."""
        return BatchStream(self, batch_size, table_rows, start_row, rank, ranks, drop_last)


# --------------------------------------------------------------------------- tools


def write_synthetic_raw(path: PathLike, rows: int, seed: int = 0,
                        terabyte_style: bool = True) -> None:
    """Write ``rows`` realistic raw lines: ~25% positives, empty counts and categories at
    per-column rates, negative counts (-1..-3) in I2 as in Criteo, skewed 8-hex categories.

    ``terabyte_style``: every line has all 40 fields (Terabyte ``day_N``, Kaggle ``train.txt``);
    otherwise trailing empty categorical fields are stripped (down to 14 fields), as in some
    Kaggle copies. The file ends with a newline.
    """
    rng = np.random.default_rng([seed, 0xC817E0])
    vocab_sizes = [min(r, 4096) for r in (
        1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
        27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)]
    vocabs = [np.array([f"{h:08x}" for h in rng.integers(1, 2**32, v)]) for v in vocab_sizes]
    dense_empty = rng.uniform(0.0, 0.45, NUM_DENSE)
    cat_empty = np.where(np.arange(NUM_CAT) >= 18, rng.uniform(0.0, 0.5, NUM_CAT), 0.0)
    step = 1 << 15
    with open(path, "w") as f:
        for at in range(0, rows, step):
            n = min(step, rows - at)
            cols = [np.where(rng.random(n) < 0.25, "1", "0")]
            for j in range(NUM_DENSE):
                v = np.floor(np.exp(rng.normal(1.5, 1.6, n))).astype(np.int64)
                if j == 1:
                    v = np.where(rng.random(n) < 0.08, -rng.integers(1, 4, n), v)
                cols.append(np.where(rng.random(n) < dense_empty[j], "", v.astype(str)))
            empty_cat = np.empty((n, NUM_CAT), bool)
            for j in range(NUM_CAT):
                pick = (vocab_sizes[j] * rng.random(n) ** 3).astype(np.int64)
                empty_cat[:, j] = rng.random(n) < cat_empty[j]
                cols.append(np.where(empty_cat[:, j], "", vocabs[j][pick]))
            lines = list(map("\t".join, zip(*(c.tolist() for c in cols), strict=True)))
            if not terabyte_style:
                nonempty = ~empty_cat
                keep = np.where(nonempty.any(1), NUM_CAT - np.argmax(nonempty[:, ::-1], 1), 0)
                for i in np.flatnonzero(keep < NUM_CAT):
                    lines[i] = "\t".join(lines[i].split("\t")[: MIN_FIELDS + keep[i]])
            f.write("\n".join(lines) + "\n")


def loader_throughput(path_raw: PathLike, path_bin: PathLike | Sequence[PathLike],
                      batch_size: int, table_rows: Sequence[int], seconds: float = 2.0,
                      max_ind_range: int | None = None) -> dict:
    """Rows/s of raw parsing (``parse_raw`` over ``path_raw``) and of binary batching
    (``BinaryDataset(path_bin).batches``), each repeated for at least ``seconds``."""
    raw_rows, raw_bytes, t0 = 0, 0, time.perf_counter()
    while True:
        reader = parse_raw(path_raw, max_ind_range=max_ind_range)
        for _ in reader:
            pass
        raw_rows += reader.stats.rows
        raw_bytes += os.path.getsize(path_raw)
        raw_s = time.perf_counter() - t0
        if raw_s >= seconds:
            break
    ds = BinaryDataset(path_bin)
    if ds.rows < batch_size:
        raise ValueError(f"{path_bin}: {ds.rows} rows, fewer than one batch of {batch_size}")
    bin_rows, batches, t0 = 0, 0, time.perf_counter()
    while True:
        for b in ds.batches(batch_size, table_rows):
            bin_rows += b.size
            batches += 1
        bin_s = time.perf_counter() - t0
        if bin_s >= seconds:
            break
    return {
        "raw_rows": raw_rows, "raw_seconds": raw_s, "raw_rows_per_s": raw_rows / raw_s,
        "raw_mib_per_s": raw_bytes / raw_s / 2**20,
        "binary_rows": bin_rows, "binary_seconds": bin_s, "binary_rows_per_s": bin_rows / bin_s,
        "binary_batches_per_s": batches / bin_s, "batch_size": batch_size,
    }
