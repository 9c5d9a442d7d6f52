"""Embedding kernels on a table in 4 KB pages vs transparent huge pages, same process.

    TVM_NUM_THREADS=2 python tools/hugepages_bench.py [--rows-per-table 1000000]

8 tables x ROWS x 64 fp32 (the `small` config's tables), 2048 bags per table of 1 to 100
lookups: the default SGD update kernel and the default forward, each timed (median of 5) with
the table in plain anonymous memory and in memory advised with MADV_HUGEPAGE, twice each.
"""

from __future__ import annotations

import argparse
import mmap
import time

import numpy as np
import tvm
from dlrm_tvm.schedules.embedding_update import embedding_bag_sgd_lookup_order
from dlrm_tvm.schedules.embedding import bag_fwd_balanced_impl

from dlrm_tvm.targets import resolve_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows-per-table", type=int, default=1_000_000)
    args = ap.parse_args()
    b, nt, d, rows = 2048, 8, 64, args.rows_per_table
    target = resolve_target("host").tvm_target()
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 101, nt * b)
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    idx = rng.integers(0, rows, off[-1]).astype(np.int64)
    roff = (np.arange(nt) * rows).astype(np.int64)
    grad = rng.random((b, nt, d), dtype=np.float32)

    def build(f):
        return tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}),
                           target=target)

    upd = build(embedding_bag_sgd_lookup_order(b, nt, d, "fp32"))
    fwd = build(bag_fwd_balanced_impl(b, nt, d))
    for huge in (False, True, False, True):
        m = mmap.mmap(-1, nt * rows * d * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if huge:
            m.madvise(mmap.MADV_HUGEPAGE)
        a = np.frombuffer(m, dtype=np.float32).reshape(nt * rows, d)
        a[:] = 0.5
        w = tvm.runtime.from_dlpack(a)
        rest = [tvm.runtime.tensor(x) for x in (idx, off, roff)]
        y = tvm.runtime.tensor(np.zeros((b, nt, d), np.float32))
        uargs = [w, *rest, tvm.runtime.tensor(grad), tvm.runtime.tensor(np.ones(1, np.float32))]
        upd["main"](*uargs)
        fwd["main"](w, *rest, y)
        tu, tf = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            upd["main"](*uargs)
            tu.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fwd["main"](w, *rest, y)
            tf.append(time.perf_counter() - t0)
        print(f"{'huge pages' if huge else '4 KB pages'}: update {np.median(tu) * 1e3:7.1f} ms"
              f"   forward {np.median(tf) * 1e3:7.1f} ms   ({off[-1]:,} lookups)")
        del w, uargs, a


if __name__ == "__main__":
    main()
