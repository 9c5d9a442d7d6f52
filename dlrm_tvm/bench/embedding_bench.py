"""``dlrm-tvm kernels bench --op embedding_bag_fwd|embedding_bag_update``: embedding kernels at
table scale, against a plain gather over the same table and torch, in one process.

For each case (rows, D, lookups per bag) and index distribution (uniform, Zipf):
* the plain gather: out[p] = W[idx[p]] for the same indices, a TVM kernel with nothing else in
  it. Its rate is this machine's random-gather rate for these rows: the forward's 100%;
* every candidate rule for the op, checked first (forward: against NumPy; update: the touched
  rows against NumPy, a sample of the others unchanged), then timed;
* torch: ``F.embedding_bag(mode="sum")`` for the forward; for the update, its sparse path
  (embedding_bag backward to a sparse gradient, then ``optim.SGD.step``, which coalesces;
  ``optim.Adagrad.step`` for adagrad, the reference's optimizer written out for rwsadagrad),
  timed as (forward + backward + step) minus the forward.

Rates: lookups/s; GB/s counts the table bytes the op must move (forward: every looked-up row
read; update: every distinct row read and written, plus its accumulator for rwsadagrad and
its state row for adagrad).
"""

from __future__ import annotations

import os

import numpy as np

from dlrm_tvm.bench.timing import time_call

# the cases: (rows, D, lookups per bag)
DEFAULT_CASES = ((1_000_000, 64, 100), (1_000_000, 128, 1), (10_000_000, 64, 1))
LOOKUPS_PER_CALL = 204_800  # bags per call = this / lookups per bag (at least 2048)
BUDGET_S = 4.0  # seconds of timed runs per variant before fewer than --reps are taken


def _indices(rows: int, n: int, dist: str, alpha: float, rng) -> np.ndarray:
    from dlrm_tvm.data import zipf_draw, zipf_rows

    if dist == "uniform":
        return rng.integers(0, rows, n).astype(np.int64)
    cdf, perm = zipf_rows(rows, alpha, rng)
    return zipf_draw(cdf, perm, rng.random(n))


def _gather_kernel(d: int, dtype: str, row_width: int | None = None):
    from tvm.script import tirx as T

    wd = row_width or d

    @T.prim_func
    def gather(w: T.handle, idx: T.handle, out: T.handle):
        nnz, nrows = T.int64(), T.int64()
        W = T.match_buffer(w, (nrows, wd), dtype)
        I_ = T.match_buffer(idx, (nnz,), "int64")
        Y = T.match_buffer(out, (nnz, d), dtype)
        for p in T.parallel(nnz):
            for k in T.vectorized(d):
                Y[p, k] = W[I_[p], k]

    return gather


def bench_embedding(op: str, cases=DEFAULT_CASES, dists=("uniform", "zipf"),
                    rules: list[str] | None = None, optimizer: str = "sgd",
                    table_dtype: str = "fp32", batch: int | None = None, reps: int = 10,
                    torch_baseline: bool = True, zipf_alpha: float = 1.05,
                    target_name: str = "host", log=print) -> dict:
    import ml_dtypes
    import tvm

    from dlrm_tvm.graphs import ops
    from dlrm_tvm.graphs.embedding_update import embedding_bag_update
    from dlrm_tvm.pipeline import compile_primfunc
    from dlrm_tvm.runtime.memory import aligned_copy, shared_tensor
    from dlrm_tvm.runtime.trainer import split_rows
    from dlrm_tvm.schedules import ALL_RULES
    from dlrm_tvm.targets import runnable_target

    if op not in ("embedding_bag_fwd", "embedding_bag_update"):
        raise ValueError(f"op must be embedding_bag_fwd or embedding_bag_update, got {op!r}")
    if table_dtype not in ("fp32", "bf16"):
        raise ValueError(f"table dtype must be fp32 or bf16, got {table_dtype!r}")
    ti = runnable_target(target_name)
    target = ti.tvm_target()
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
    bf16 = table_dtype == "bf16"
    tdt = "bfloat16" if bf16 else "float32"
    esize = 2 if bf16 else 4
    rows_out = []
    for rows, d, lookups in cases:
        b = batch or max(2048, LOOKUPS_PER_CALL // lookups)
        nnz = b * lookups
        rng = np.random.default_rng([rows, d, lookups])
        log(f"[{rows:,} x {d}, {lookups}/bag] building the table ({rows * d * 4 / 2**30:.2f} GiB)")
        w32 = rng.standard_normal((rows, d), dtype=np.float32)
        # the TVM tables share these arrays' memory: the checks read them without copies
        if bf16:  # Split-SGD rows as training holds them: [rows, 2D], hi then lo halves
            tables_np = [aligned_copy(split_rows(w32))]
        else:
            tables_np = [aligned_copy(w32)]  # w32 itself is torch's table
        tables = [shared_tensor(a) for a in tables_np]
        off = (np.arange(b + 1, dtype=np.int64) * lookups)
        roff = np.zeros(1, np.int64)
        grad = rng.standard_normal((b, 1, d), dtype=np.float32)
        # the plain gather and every candidate, compiled once per case
        width = 2 * d if bf16 else None
        glib = compile_primfunc(_gather_kernel(d, tdt, width), target)
        if op == "embedding_bag_fwd":
            func = ops.embedding_bag_fwd(b, (0,), d, tdt, width)
        else:
            func = embedding_bag_update(b, 1, d, optimizer, "rows" if bf16 else "fp32")
        names = rules or [n for n, r in ALL_RULES.items() if r.ops and r.matches_op(func)]
        libs = {}
        for name in names:
            sch = ALL_RULES[name].apply(func, target)
            libs[name] = None if sch is None else compile_primfunc(sch, target)
        for dist in dists:
            idx = _indices(rows, nnz, dist, zipf_alpha, rng)
            uniq = int(np.unique(idx).size)
            if op == "embedding_bag_fwd":
                floor_bytes = nnz * d * esize
            else:
                # split tables move hi + lo: 4 bytes per element either way
                floor_bytes = 2 * uniq * d * 4 + \
                    (8 * uniq if optimizer == "rwsadagrad" else 0) + \
                    (2 * uniq * d * 4 if optimizer == "adagrad" else 0)
            t_in = [tvm.runtime.tensor(x) for x in (idx, off, roff)]
            row = {"rows": rows, "dim": d, "lookups_per_bag": lookups, "bags": b, "nnz": nnz,
                   "dist": dist, "distinct_rows": uniq, "bytes": floor_bytes, "variants": {}}
            # the plain gather: this machine's random-gather rate over these rows
            gbuf = np.zeros((nnz, d), np.float32) if not bf16 else \
                np.zeros((nnz, d), np.uint16).view(ml_dtypes.bfloat16)
            gout = tvm.runtime.tensor(gbuf)
            tg = time_call(lambda f=glib["main"], a=(tables[0], t_in[0], gout): f(*a), reps,
                           BUDGET_S)
            row["gather_ms"] = tg * 1e3
            row["gather_gbs"] = nnz * d * esize / tg / 1e9
            if op == "embedding_bag_fwd":
                want = np.add.reduceat(np.asarray(tables_np[0][idx, :d], np.float32), off[:-1],
                                       axis=0) if nnz else np.zeros((b, d), np.float32)
            for name, lib in libs.items():
                if lib is None:
                    row["variants"][name] = {"status": "n/a"}
                    continue
                if op == "embedding_bag_fwd":
                    y = tvm.runtime.tensor(np.full((b, 1, d), np.nan, np.float32))
                    lib["main"](tables[0], *t_in, y)
                    got = y.numpy()[:, 0]
                    err = float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))
                    ok = bool(not np.isnan(got).any() and err < 1e-5)
                    t = time_call(lambda f=lib["main"], a=(tables[0], *t_in, y): f(*a), reps,
                                  BUDGET_S)
                else:
                    ok, err = _check_update(lib, tables, tables_np, idx, off, roff, grad,
                                            optimizer, bf16, rows, rng,
                                            sequential=name == "embedding_update_bucketed_lookups")
                    acc = [tvm.runtime.tensor(np.zeros(rows, np.float32))] \
                        if optimizer == "rwsadagrad" else []
                    if optimizer == "adagrad":  # the state of the table's shape, as the table
                        acc = [shared_tensor(aligned_copy(np.zeros((rows, d), np.float32)))]
                    args = [*tables, *acc, *t_in, tvm.runtime.tensor(grad),
                            tvm.runtime.tensor(np.array([1e-4], np.float32))]
                    t = time_call(lambda f=lib["main"], a=tuple(args): f(*a), reps, BUDGET_S)
                row["variants"][name] = {
                    "status": "ok" if ok else "WRONG", "err": err, "ms": t * 1e3,
                    "mlookups_s": nnz / t / 1e6, "gbs": floor_bytes / t / 1e9,
                    "of_gather": (tg / t) if op == "embedding_bag_fwd" else
                    (floor_bytes / t) / (nnz * d * esize / tg)}
                log(f"  {dist:8s} {name:34s} {t * 1e3:9.2f} ms  {'ok' if ok else 'WRONG'}")
            if torch_baseline:
                row["torch"] = _torch_times(op, w32, idx, off, grad, optimizer, reps, threads)
            rows_out.append(row)
        w32 = tables = tables_np = None  # free the tables before the next case
    return {"op": op, "optimizer": optimizer, "table_dtype": table_dtype, "threads": threads,
            "target": ti.to_dict(), "zipf_alpha": zipf_alpha, "rows": rows_out}


def _check_update(lib, tables, tables_np, idx, off, roff, grad, optimizer, bf16, rows, rng,
                  sequential=False):
    """Run once; the touched rows must match NumPy, a sample of the others must not move.
    ``sequential``: the kernel steps lookup by lookup (its oracle too: with hot rows, that and
    the coalesced sum part by more than fp32 rounding of one step)."""
    import tvm

    from dlrm_tvm.graphs import reference as ref

    touched = np.unique(idx)
    others = rng.integers(0, rows, 4096)
    others = others[~np.isin(others, touched)]

    from dlrm_tvm.runtime.trainer import combine_rows

    def master(rws):  # tables_np share the TVM tables' memory
        if bf16:
            return combine_rows(tables_np[0][rws])
        return tables_np[0][rws]

    before, before_o = master(touched), master(others)
    acc0 = np.random.default_rng(1).random(
        (rows, tables_np[0].shape[1] // (2 if bf16 else 1)) if optimizer == "adagrad"
        else rows).astype(np.float32)
    acc = [tvm.runtime.tensor(acc0)] if optimizer != "sgd" else []
    lr = 0.05
    lib["main"](*tables, *acc, *[tvm.runtime.tensor(x) for x in (idx, off, roff, grad)],
                tvm.runtime.tensor(np.array([lr], np.float32)))
    # the oracle on the touched sub-table (rows renumbered 0..len(touched))
    local = np.searchsorted(touched, idx)
    if sequential:
        want = ref.embedding_bag_sgd_sequential(before, local, off, roff, grad, lr)
    else:
        want, _ = ref.embedding_bag_update(before, local, off, roff, grad, lr, optimizer,
                                           acc0[touched] if acc else None)
    got = master(touched)
    err = float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))
    ok = err < 1e-5 and np.array_equal(master(others), before_o)
    return bool(ok), err


def _torch_times(op, w32, idx, off, grad, optimizer, reps, threads) -> dict:
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    ti, to = torch.from_numpy(idx), torch.from_numpy(off[:-1])
    if op == "embedding_bag_fwd":
        wt = torch.from_numpy(w32)
        with torch.no_grad():
            t = time_call(lambda: torch.nn.functional.embedding_bag(ti, wt, to, mode="sum"),
                          reps, BUDGET_S)
        return {"fwd_ms": t * 1e3}
    from dlrm_tvm.bench.torch_ref import _rwsadagrad_step

    emb = torch.nn.EmbeddingBag(w32.shape[0], w32.shape[1], mode="sum", sparse=True,
                                _weight=torch.from_numpy(w32))
    opt = torch.optim.Adagrad(emb.parameters(), lr=1e-4, eps=1e-8) \
        if optimizer == "adagrad" else torch.optim.SGD(emb.parameters(), lr=1e-4)
    gy = torch.from_numpy(np.ascontiguousarray(grad[:, 0]))
    state: dict = {}

    def full():
        emb.weight.grad = None
        emb(ti, to).backward(gy)
        if optimizer == "rwsadagrad":
            _rwsadagrad_step([emb.weight], state, 1e-4)
        else:
            opt.step()

    def fwd():
        with torch.no_grad():
            emb(ti, to)

    tf, tt = time_call(fwd, reps, BUDGET_S), time_call(full, reps, BUDGET_S)
    return {"fwd_ms": tf * 1e3, "step_ms": tt * 1e3, "update_ms": max(tt - tf, 1e-9) * 1e3}


def format_embedding(r: dict) -> str:
    upd = r["op"] == "embedding_bag_update"
    out = [f"{r['op']}  tables {r['table_dtype']}"
           + (f"  optimizer {r['optimizer']}" if upd else "")
           + f"  target {r['target']['name']}  threads {r['threads']}  "
           f"zipf alpha {r['zipf_alpha']}", "",
           f"{'case':<22}{'dist':<9}{'variant':<34}{'ms':>9}{'Mlookup/s':>11}{'GB/s':>8}"
           f"{'% gather':>10}{'x torch':>9}"]
    for row in r["rows"]:
        case = f"{row['rows']:,}x{row['dim']} L{row['lookups_per_bag']}"
        t_ref = row.get("torch", {}).get("update_ms" if upd else "fwd_ms")
        out.append(f"{case:<22}{row['dist']:<9}{'plain gather (100%)':<34}"
                   f"{row['gather_ms']:9.2f}{row['nnz'] / row['gather_ms'] / 1e3:11.1f}"
                   f"{row['gather_gbs']:8.2f}{100.0:10.0f}{'':>9}")
        for name, v in row["variants"].items():
            if v.get("status") == "n/a":
                continue
            x = f"{t_ref / v['ms']:9.2f}" if t_ref else f"{'-':>9}"
            out.append(f"{'':<22}{'':<9}{name + ('' if v['status'] == 'ok' else ' WRONG'):<34}"
                       f"{v['ms']:9.2f}{v['mlookups_s']:11.1f}{v['gbs']:8.2f}"
                       f"{100 * v['of_gather']:10.0f}{x}")
        if t_ref:
            label = "torch sparse grad + step" if upd else "torch embedding_bag"
            out.append(f"{'':<22}{'':<9}{label:<34}{t_ref:9.2f}"
                       f"{row['nnz'] / t_ref / 1e3:11.1f}{row['bytes'] / t_ref / 1e6:8.2f}"
                       f"{'':>10}{1.0:9.2f}")
    out.append("")
    out.append("% gather: forward = plain gather time / time; update = its GB/s (distinct rows "
               "read + written) / the plain gather's GB/s")
    return "\n".join(out)
