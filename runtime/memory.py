"""Where the big tensors live: embedding tables in memory advised for transparent huge pages.

The embedding kernels touch random rows of tables of up to several GB. With 4 KB pages nearly
every row is a TLB miss and a page walk; with 2 MB pages most are not. On the 2-core VM (THP in
"madvise" mode), 8 tables of 1M x 64 (2 GB), two runs of `python tools/hugepages_bench.py`:
the SGD update 78 to 93 -> 46 to 66 ms; the forward from within noise to 28-37 -> 23-27 ms.

Linux only gives huge pages to memory that asked for them (``madvise(MADV_HUGEPAGE)``) when THP
is in madvise mode, and TVM's allocator does not ask. So a large table is copied into an
anonymous mapping advised for huge pages and handed to TVM without a copy (DLPack). Elsewhere
(no MADV_HUGEPAGE, THP off, a small tensor, or DLRM_TVM_HUGEPAGES=0) it is a plain TVM tensor;
the values are the same either way.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import tvm

HUGE_MIN_BYTES = 16 << 20  # below this, the TLB covers it anyway


def hugepages_enabled() -> bool:
    return os.environ.get("DLRM_TVM_HUGEPAGES", "1") != "0" and hasattr(mmap, "MADV_HUGEPAGE")


def aligned_copy(src: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous copy of ``src`` starting on an ``align``-byte boundary (TVM's DLPack
    import requires 64)."""
    raw = np.empty(src.nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    out = raw[start:start + src.nbytes].view(src.dtype).reshape(src.shape)
    out[...] = src
    return out


def shared_tensor(arr: np.ndarray) -> tvm.runtime.Tensor:
    """A TVM tensor over ``arr``'s memory, no copy (DLPack; bfloat16 through a uint16 view).
    ``arr`` must be C-contiguous and 64-byte aligned (``aligned_copy``, or an mmap). The tensor
    keeps ``arr`` alive; writes through either side show in both."""
    if arr.dtype.name == "bfloat16":
        return tvm.runtime.from_dlpack(arr.view(np.uint16))._create_view(arr.shape, "bfloat16")
    return tvm.runtime.from_dlpack(arr)


def aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array starting on an ``align``-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def table_buffer(shape, dtype, min_bytes: int | None = None,
                 zero: bool = False) -> tuple[np.ndarray, tvm.runtime.Tensor]:
    """(array, TVM tensor) over the same new memory, for a table to be written in place, a
    part at a time (so initialising it needs no table-sized temporary): huge-page advised
    memory when it is at least ``min_bytes`` (default HUGE_MIN_BYTES) and the OS offers it,
    else 64-byte aligned host memory. Uninitialised unless ``zero``. Only the pages written
    are resident."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if min_bytes is None:
        min_bytes = HUGE_MIN_BYTES
    arr = None
    if nbytes >= max(min_bytes, 1) and hugepages_enabled():
        try:
            m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            m.madvise(mmap.MADV_HUGEPAGE)
            # the array keeps the mapping alive, and the tensor keeps the array alive (DLPack);
            # an anonymous mapping is already zero
            arr = np.frombuffer(m, dtype=dtype).reshape(shape)
            zero = False
        except (OSError, ValueError):
            arr = None
    if arr is None:
        arr = aligned_empty(shape, dtype)
    if zero:
        arr[...] = 0
    return arr, shared_tensor(arr)


def table_tensor(src: np.ndarray, min_bytes: int | None = None) -> tvm.runtime.Tensor:
    """A TVM tensor holding a copy of ``src`` (float32, uint16 or bfloat16), in huge-page
    advised memory when it is at least ``min_bytes`` (default HUGE_MIN_BYTES) and the OS
    offers it."""
    src = np.ascontiguousarray(src)
    if min_bytes is None:
        min_bytes = HUGE_MIN_BYTES
    if src.nbytes < max(min_bytes, 1) or not hugepages_enabled():
        return tvm.runtime.tensor(src)
    arr, t = table_buffer(src.shape, src.dtype, min_bytes)
    arr[...] = src
    return t
