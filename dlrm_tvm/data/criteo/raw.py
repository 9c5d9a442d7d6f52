"""Criteo click logs: the raw text parser and its bad-line policy.

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

Unlabelled files (Kaggle's ``test.txt``: 39 fields, ``I1..I13, C1..C26``) are read with
``labels=False``: every line must then lack the label (a line of 40 fields is refused as a
labelled one), and the rows' labels are 0. A labelled read of a line of 39 fields that fails
says that it may be an unlabelled line.

Bad-line policy. Each of these is a ``DataError`` naming ``file:line`` and the problem, unless
``skip_bad_lines``, in which case the line is dropped and counted (the first few reasons kept):
more than 40 fields; fewer than 14 (the label and the 13 counts must be present); a label other
than ``0``/``1``; a count that is not an integer in int32 range; a category that is not 1-8 hex
digits; an empty line (anywhere, including extra blank lines at the end: a final line without
its newline is fine). An empty file is always an error, skipping or not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from dlrm_tvm.data.criteo.layout import (
    INT32_MAX,
    MIN_FIELDS,
    NUM_CAT,
    NUM_DENSE,
    NUM_FIELDS,
    DataError,
    PathLike,
    check_input_file,
)

MAX_REASONS = 10  # skipped-line reasons kept in the stats
_COUNT_DIGITS = 10  # int32 has at most 10 decimal digits
_HEX_DIGITS = 8


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
    bad |= val > INT32_MAX + neg
    return np.where(neg, -val, val).astype(np.int64), bad


_NO_LABEL_HINT = ("; the line has 39 fields: if the file has no label column (as Kaggle's "
                  "test.txt), read it as unlabelled (`dlrm-tvm eval --no-labels`)")
_LABELLED_HINT = " (read as unlabelled: 13 counts and 26 categories, 39 fields a line)"


def _parse_block(data: bytes, path: str, first_line: int, max_ind_range: int | None,
                 skip: bool, stats: RawStats, labels: bool = True) -> RawChunk:
    """Parse whole lines (``data`` ends with a newline); raise or drop bad lines.
    ``labels=False``: the lines have no label column (a label 0 is put in front of each)."""
    if not labels:
        data = b"0\t" + data.replace(b"\n", b"\n0\t")[:-2]
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

    empty = ((nfields == 1) & (lens[:, 0] == 0) if labels else
             (nfields == 2) & (lens[:, 1] == 0))
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
            if not labels and nfields[i] == NUM_FIELDS + 1:
                return ("40 fields: a labelled line (label, 13 counts, 26 categories), but the "
                        "file is read as unlabelled (--no-labels): it has a label column, so "
                        "evaluate it without --no-labels")
            if not labels and (too_many[i] or too_few[i]):
                least = "" if too_many[i] else ", at least 13: the counts"
                return (f"{nfields[i] - 1} fields, expected 39 (no label: 13 counts, 26 "
                        f"categories{least})")
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

        def why(i: int) -> str:
            r = reason(i)
            if labels and nfields[i] == NUM_FIELDS - 1 and not empty[i]:
                return r + _NO_LABEL_HINT
            if not labels and not empty[i] and not r.startswith("40 fields"):
                return r + _LABELLED_HINT
            return r

        rows_bad = np.flatnonzero(bad)
        if not skip:
            i = int(rows_bad[0])
            raise DataError(path, first_line + i, why(i))
        for i in rows_bad[: max(0, MAX_REASONS - len(stats.skip_reasons))]:
            stats.skip_reasons.append(f"{path}:{first_line + int(i)}: {why(int(i))}")
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
    stats.padded += int((good & (nfields < NUM_FIELDS)).sum())  # labels=False: one in front
    lines = first_line + np.flatnonzero(good).astype(np.int64)
    return RawChunk(labels, dense, cats, lines)


def _line_blocks(f, chunk_rows: int, limit: int | None = None) -> Iterator[bytes]:
    """Blocks of exactly ``chunk_rows`` whole lines (fewer at the end), each ending with LF;
    ``limit``: read at most that many bytes (a range that ends at a line start)."""
    block_bytes = max(1 << 16, chunk_rows * 256)
    left = float("inf") if limit is None else limit
    pending = b""
    eof = False
    while not eof or pending:
        parts, count = [pending], pending.count(b"\n")
        while count < chunk_rows and not eof:
            b = f.read(int(min(block_bytes, left)))
            left -= len(b)
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
    ``labels=False``: the file has no label column (module docstring). ``byte_range`` (start,
    stop), both at line starts (``line_ranges``), with ``first_line`` its first line's number:
    only that part of the file (what a worker of the parallel preprocess reads).
    """

    def __init__(self, path: PathLike, skip_bad_lines: bool = False,
                 max_ind_range: int | None = None, chunk_rows: int = 32768,
                 labels: bool = True, byte_range: tuple[int, int] | None = None,
                 first_line: int = 1):
        if max_ind_range is not None and (not isinstance(max_ind_range, int | np.integer)
                                          or max_ind_range <= 0):
            raise ValueError(f"max_ind_range must be a positive integer, got {max_ind_range!r}")
        if not isinstance(chunk_rows, int) or chunk_rows <= 0:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        self.path, self.skip = str(path), skip_bad_lines
        self.max_ind_range = None if max_ind_range is None else int(max_ind_range)
        self.chunk_rows, self.labels = chunk_rows, labels
        self.byte_range, self.first_line = byte_range, first_line
        self.stats = RawStats(self.path)
        self.bytes_read = 0  # of the file (or range), as far as iterated

    def __iter__(self) -> Iterator[RawChunk]:
        self.stats = RawStats(self.path)
        self.bytes_read = 0
        check_input_file(self.path)
        if os.path.getsize(self.path) == 0:
            raise DataError(self.path, 1, "empty file (no rows)")
        start, stop = self.byte_range or (0, None)
        with open(self.path, "rb") as f:
            f.seek(start)
            limit = None if stop is None else stop - start
            for data in _line_blocks(f, self.chunk_rows, limit):
                self.bytes_read += len(data)
                chunk = _parse_block(data, self.path, self.first_line + self.stats.lines,
                                     self.max_ind_range, self.skip, self.stats, self.labels)
                yield chunk


def line_ranges(path: PathLike, parts: int) -> list[tuple[int, int]]:
    """About ``parts`` byte ranges (start, stop) of equal size covering the file, each
    starting at a line start: a cut moves forward to just after the next newline (fewer
    ranges when the lines are long or the file small)."""
    size = os.path.getsize(path)
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, max(1, parts)):
            at = max(cuts[-1], size * k // parts, 1)
            f.seek(at - 1)  # a cut already at a line start stays there
            while True:
                b = f.read(1 << 16)
                if not b:
                    at = size
                    break
                j = b.find(b"\n")
                if j >= 0:
                    at = f.tell() - len(b) + j + 1
                    break
            if at >= size:
                break
            if at > cuts[-1]:
                cuts.append(at)
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def count_lines(path: PathLike, start: int, stop: int, block: int = 1 << 24) -> int:
    """Newlines in bytes [start, stop) of the file."""
    n = 0
    with open(path, "rb") as f:
        f.seek(start)
        left = stop - start
        while left > 0:
            b = f.read(min(block, left))
            if not b:
                break
            n += b.count(b"\n")
            left -= len(b)
    return n


def parse_raw(path: PathLike, skip_bad_lines: bool = False, max_ind_range: int | None = None,
              chunk_rows: int = 32768, labels: bool = True) -> RawReader:
    """A streaming reader of one raw file: iterate it for ``RawChunk`` s, then read ``.stats``.

    Never holds more than about ``chunk_rows`` lines of the file in memory (parsing needs about
    5 KB of temporaries a line: ~170 MB at the default). ``labels=False``: no label column.
    """
    return RawReader(path, skip_bad_lines, max_ind_range, chunk_rows, labels)


def read_raw(path: PathLike, skip_bad_lines: bool = False, max_ind_range: int | None = None,
             chunk_rows: int = 32768, labels: bool = True) -> tuple[RawChunk, RawStats]:
    """A whole (small) raw file as one ``RawChunk``, and its ``RawStats``."""
    reader = parse_raw(path, skip_bad_lines, max_ind_range, chunk_rows, labels)
    chunk = RawChunk.concat(list(reader))
    return chunk, reader.stats
