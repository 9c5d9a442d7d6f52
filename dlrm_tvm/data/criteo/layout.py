"""The Criteo row layout every part shares: the 40 fields, the binary row, ``DataError`` and the
check every input file passes first.

A row is ``label, I1..I13, C1..C26``: in raw text 40 tab-separated fields (raw.py), in the
binary files 40 little-endian int32 (writer.py writes them, binary.py reads them).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

NUM_DENSE = 13
NUM_CAT = 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_CAT  # 40
MIN_FIELDS = 1 + NUM_DENSE  # 14: label and every count present
ROW_BYTES = 4 * NUM_FIELDS
FORMAT_NAME = "dlrm-tvm-criteo-binary"
FORMAT_VERSION = 1
INT32_MAX = 2**31 - 1

PathLike = str | os.PathLike


class DataError(ValueError):
    """Bad input data: ``str()`` is ``"FILE:LINE: what is wrong"`` (``"FILE: ..."`` if no line)."""

    def __init__(self, path: PathLike, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")


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
