"""``dlrm-tvm bench --loader``: Criteo loading rates against the training step's appetite.

Generates a raw Terabyte-style file (``rows`` lines; ``criteo.write_synthetic_raw``),
preprocesses it, and measures (``loader_throughput``, below) the raw parse rate and the
memory-mapped binary batch rate; then trains the config a few steps on the binary rows
(``dlrm-tvm train --data mlperf-bin``) and takes its median step: rows/s = batch / step.
Loading is not the bottleneck when the binary batch rate is well above that (the raw parse
runs once, in ``dlrm-tvm preprocess``, but is reported against it too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from dlrm_tvm.config import Config, to_toml
from dlrm_tvm.data.criteo import BinaryDataset, parse_raw, preprocess, write_synthetic_raw
from dlrm_tvm.data.criteo.layout import PathLike


def bench_loader(cfg: Config, rows: int = 200_000, steps: int = 6, seconds: float = 2.0,
                 target: str = "host", log=print) -> dict:
    B = cfg.train.batch_size
    with tempfile.TemporaryDirectory(prefix="dlrm-loader-") as tmp:
        raw = Path(tmp) / "day_0"
        log(f"[loader] writing {rows:,} raw Terabyte-style rows ...")
        write_synthetic_raw(raw, rows, seed=0)
        t0 = time.perf_counter()
        meta = preprocess([raw], Path(tmp) / "pre", fmt="terabyte",
                          max_ind_range=max(cfg.model.table_rows))
        pre_s = time.perf_counter() - t0
        binf = Path(tmp) / "pre" / "day_0.bin"
        log("[loader] measuring raw parsing and binary batching ...")
        r = loader_throughput(raw, binf, B, cfg.model.table_rows, seconds=seconds)
        log(f"[loader] training {cfg.name} {steps} steps on the binary rows ...")
        cf = Path(tmp) / "cfg.toml"
        cf.write_text(to_toml(cfg))
        out = Path(tmp) / "run"
        env = dict(os.environ)
        p = subprocess.run([sys.executable, "-m", "dlrm_tvm", "train", "--config", str(cf),
                            "--data", "mlperf-bin", "--data-path", str(binf), "--steps",
                            str(steps), "--no-eval", "--quiet", "--target", target, "--out",
                            str(out)], capture_output=True, text=True, env=env, timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(f"the training run failed:\n{p.stderr[-3000:]}")
        s = json.loads((out / "summary.json").read_text())
    step_ms = s["ms_per_step_median"]
    consume = B / (step_ms / 1e3)
    return {"config": cfg.name, "batch_size": B, "rows": meta["rows"],
            "preprocess_rows_per_s": meta["rows"] / pre_s,
            "raw_rows_per_s": r["raw_rows_per_s"], "raw_mib_per_s": r["raw_mib_per_s"],
            "binary_rows_per_s": r["binary_rows_per_s"],
            "shuffled_rows_per_s": r["shuffled_rows_per_s"], "step_ms": step_ms,
            "step_rows_per_s": consume,
            "binary_over_step": r["binary_rows_per_s"] / consume,
            "raw_over_step": r["raw_rows_per_s"] / consume,
            "threads": os.environ.get("TVM_NUM_THREADS")}


def format_loader(r: dict) -> str:
    lines = [f"Criteo loading vs the {r['config']} step (batch {r['batch_size']}), "
             f"{r['rows']:,} generated rows", "",
             f"{'path':<36} {'rows/s':>12} {'x step':>8}",
             f"{'raw parse (once, in preprocess)':<36} {r['raw_rows_per_s']:12,.0f} "
             f"{r['raw_over_step']:8.1f}",
             f"{'preprocess (parse + write binary)':<36} {r['preprocess_rows_per_s']:12,.0f} "
             f"{r['preprocess_rows_per_s'] / r['step_rows_per_s']:8.1f}",
             f"{'binary memmap -> batches':<36} {r['binary_rows_per_s']:12,.0f} "
             f"{r['binary_over_step']:8.1f}",
             f"{'  the same, rows shuffled (total)':<36} {r['shuffled_rows_per_s']:12,.0f} "
             f"{r['shuffled_rows_per_s'] / r['step_rows_per_s']:8.1f}",
             f"{'training step consumes':<36} {r['step_rows_per_s']:12,.0f} {1.0:8.1f}"
             f"   ({r['step_ms']:.1f} ms/step)"]
    ok = r["binary_over_step"] > 1
    lines.append("")
    lines.append(("loading is not the bottleneck: " if ok else "LOADING IS THE BOTTLENECK: ")
                 + f"batches are made {r['binary_over_step']:.1f}x faster than the step uses "
                 "them (on one core, in the training process, between steps)")
    return "\n".join(lines)


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
    # the same batches with the rows shuffled (--data-randomize total, a new order an epoch)
    from dlrm_tvm.data.criteo.shuffle import RowOrder

    shuf_rows, epoch, t0 = 0, 0, time.perf_counter()
    while True:
        order = RowOrder(ds.rows, "total", seed=0, epoch=epoch, batch_size=batch_size)
        for b in ds.batches(batch_size, table_rows, order=order):
            shuf_rows += b.size
        epoch += 1
        shuf_s = time.perf_counter() - t0
        if shuf_s >= seconds:
            break
    return {
        "shuffled_rows_per_s": shuf_rows / shuf_s,
        "raw_rows": raw_rows, "raw_seconds": raw_s, "raw_rows_per_s": raw_rows / raw_s,
        "raw_mib_per_s": raw_bytes / raw_s / 2**20,
        "binary_rows": bin_rows, "binary_seconds": bin_s, "binary_rows_per_s": bin_rows / bin_s,
        "binary_batches_per_s": batches / bin_s, "batch_size": batch_size,
    }
