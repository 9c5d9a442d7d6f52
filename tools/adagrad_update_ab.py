"""A/B of the fused embedding update per optimizer, in one process on one table and one set of
lookups: sgd (both rules), rwsadagrad, adagrad (fp32 tables) and adagrad on Split-SGD-BF16
rows, timed round-robin so that a busy machine slows every variant alike (docs/adagrad.md).

    TVM_NUM_THREADS=2 python tools/adagrad_update_ab.py [--rows 1000000] [--dim 64] \\
        [--per-bag 100] [--rounds 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--per-bag", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json")
    a = ap.parse_args()
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    import tvm
    from dlrm_tvm.graphs.embedding_update import embedding_bag_update
    from dlrm_tvm.runtime.memory import aligned_copy, shared_tensor
    from dlrm_tvm.runtime.state import split_rows
    from dlrm_tvm.schedules import ALL_RULES

    from dlrm_tvm.bench.embedding_bench import LOOKUPS_PER_CALL, _indices
    from dlrm_tvm.pipeline import compile_primfunc
    from dlrm_tvm.targets import runnable_target

    target = runnable_target("host").tvm_target()
    rows, d, per_bag = a.rows, a.dim, a.per_bag
    b = max(2048, LOOKUPS_PER_CALL // per_bag)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((rows, d), dtype=np.float32)
    tab32 = shared_tensor(aligned_copy(w))
    tabrows = shared_tensor(aligned_copy(split_rows(w)))
    zeros = lambda shape: shared_tensor(aligned_copy(np.zeros(shape, np.float32)))  # noqa: E731
    variants = {  # name: (optimizer, storage, rule, state)
        "sgd lookup-order": ("sgd", "fp32", "embedding_update_bucketed_lookups", None),
        "sgd coalesced": ("sgd", "fp32", "embedding_update_bucketed", None),
        "rwsadagrad": ("rwsadagrad", "fp32", "embedding_update_bucketed", zeros((rows,))),
        "adagrad": ("adagrad", "fp32", "embedding_update_bucketed", zeros((rows, d))),
        "adagrad bf16 rows": ("adagrad", "rows", "embedding_update_bucketed",
                              zeros((rows, d))),
    }
    libs = {}
    for name, (opt, storage, rule, _) in variants.items():
        sch = ALL_RULES[rule].apply(embedding_bag_update(b, 1, d, opt, storage), target)
        libs[name] = compile_primfunc(sch, target)["main"]
    off = tvm.runtime.tensor(np.arange(b + 1, dtype=np.int64) * per_bag)
    roff = tvm.runtime.tensor(np.zeros(1, np.int64))
    grad = tvm.runtime.tensor(rng.standard_normal((b, 1, d), dtype=np.float32))
    lr = tvm.runtime.tensor(np.array([1e-4], np.float32))
    out = {"rows": rows, "dim": d, "per_bag": per_bag, "bags": b,
           "threads": int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1)), "ms": {}}
    for dist in ("uniform", "zipf"):
        idx_np = _indices(rows, b * per_bag, dist, 1.05, rng)
        idx = tvm.runtime.tensor(idx_np)
        times: dict[str, list[float]] = {n: [] for n in variants}
        for r in range(a.rounds + 1):  # round 0: warm-up
            for name, (_, storage, _, state) in variants.items():
                tab = tabrows if storage == "rows" else tab32
                args = [tab, *([state] if state is not None else []), idx, off, roff, grad, lr]
                t0 = time.perf_counter()
                libs[name](*args)
                if r:
                    times[name].append(time.perf_counter() - t0)
        med = {n: 1e3 * float(np.median(v)) for n, v in times.items()}
        out["ms"][dist] = med
        out.setdefault("distinct_rows", {})[dist] = int(np.unique(idx_np).size)
        print(f"{rows:,} x {d}, {per_bag}/bag, {dist} ({out['distinct_rows'][dist]:,} distinct "
              f"rows), median of {a.rounds} rounds:")
        for n, ms in med.items():
            print(f"  {n:<20}{ms:9.2f} ms")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
