"""``dlrm-tvm eval``: a checkpoint (ours or the PyTorch reference's) on a held-out split."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from dlrm_tvm.config import Config

log = logging.getLogger("dlrm_tvm")


def eval_checkpoint(ckpt: str | Path, cfg_hint: Config, out_dir: str | Path,
                    target: str = "host", save_predictions: bool = False,
                    eval_batches: int = 2, split: str | None = None) -> dict:
    """Evaluate every held-out row of ``cfg_hint.data`` (synthetic: ``eval_batches`` batches
    of the held-out stream) with the model in ``ckpt``; writes OUT/summary.json (loss,
    accuracy, auc, rows) and with ``save_predictions`` OUT/predictions.npy (one probability per
    row, in file order). ``split``: which rows of a preprocessed directory (default test);
    raw and binary files are evaluated whole."""
    from dlrm_tvm.data.sources import make_source, needs_preprocess, preprocess_for_run
    from dlrm_tvm.interop.state_io import load_state
    from dlrm_tvm.metrics import evaluate_predictions
    from dlrm_tvm.runtime.trainer import Trainer
    from dlrm_tvm.train import get_compiled

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg, state, desc = load_state(ckpt, cfg_hint)
    # the data and batch size asked for now, the model of the checkpoint
    cfg = cfg_hint.replace(model=cfg.model, train=cfg_hint.train)
    raw = needs_preprocess(cfg)
    data_dir = preprocess_for_run(cfg, out, log.info) if raw else None
    whole = raw or (cfg.data.kind == "mlperf-bin" and not cfg.data.eval_path)
    source = make_source(cfg, 0, 1, data_dir, eval_split=split or ("all" if whole else "test"))
    vm, meta = get_compiled(cfg, None, target, out, ())
    mlp = {k: v for k, v in state.items() if k != "tables"}
    trainer = Trainer(cfg, vm, tables=np.ascontiguousarray(state["tables"], np.float32), mlp=mlp)
    B, T = cfg.train.batch_size, cfg.model.num_tables
    ps, ys = [], []
    t0 = time.perf_counter()
    for batch, n in source.eval_batches(eval_batches):
        p = trainer.predict(pad_batch(batch, B, T))
        ps.append(p[:n])
        ys.append(batch.labels[:n])
    p = np.concatenate(ps) if ps else np.zeros(0, np.float32)
    y = np.concatenate(ys) if ys else np.zeros(0, np.float32)
    if not np.isfinite(p).all():
        from dlrm_tvm.errors import DivergedError

        raise DivergedError(f"{int((~np.isfinite(p)).sum())} of {p.size} predictions of "
                            f"{desc['path']} are not finite: its parameters are not finite "
                            f"(a diverged model); no metrics written")
    res = evaluate_predictions(y, p)
    summary = {**res, "seconds": time.perf_counter() - t0, "checkpoint": desc,
               "data": source.describe(), "config": cfg.to_dict(),
               "target": meta["target"]}
    if save_predictions:
        np.save(out / "predictions.npy", p.astype(np.float32))
        summary["predictions"] = str(out / "predictions.npy")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True,
                                                 default=float))
    return summary


def pad_batch(batch, size: int, num_tables: int):
    """``batch`` of n < size samples made ``size`` long by repeating its first sample (the
    compiled step has a fixed batch); the caller drops predictions past n."""
    from dlrm_tvm.data import Batch

    n = batch.dense.shape[0]
    if n == size:
        return batch
    extra = size - n
    lens, inds = [], []
    for t in range(num_tables):
        o = batch.offsets[t * n:(t + 1) * n + 1]
        first = batch.indices[o[0]:o[1]]
        lens.append(np.concatenate([np.diff(o), np.full(extra, first.size, np.int64)]))
        inds.append(np.concatenate([batch.indices[o[0]:o[-1]], np.tile(first, extra)]))
    off = np.zeros(num_tables * size + 1, np.int64)
    np.cumsum(np.concatenate(lens), out=off[1:])
    return Batch(dense=np.concatenate([batch.dense, np.repeat(batch.dense[:1], extra, 0)]),
                 indices=np.concatenate(inds).astype(np.int64), offsets=off,
                 labels=np.concatenate([batch.labels, np.repeat(batch.labels[:1], extra)]))


def run_eval(trainer, batches, cfg: Config) -> dict:
    """Loss, accuracy and exact ROC AUC over every held-out row (``batches``: iterable of
    (global batch, real rows)); across ranks the predictions are gathered on rank 0 and the
    result is broadcast. Raises DivergedError on non-finite predictions."""
    from dlrm_tvm.errors import DivergedError
    from dlrm_tvm.metrics import evaluate_predictions

    B, T = cfg.train.batch_size, cfg.model.num_tables
    comm = trainer.comm
    ps, ys = [], []
    for batch, n in batches:
        full = pad_batch(batch, B, T)
        parts = comm.gather(trainer.predict(full), root=0)
        p = np.concatenate(parts) if parts is not None else None
        if p is not None:
            ps.append(p[:n])
            ys.append(full.labels[:n])
    res = None
    if ps and not all(np.isfinite(x).all() for x in ps):
        bad = sum(int((~np.isfinite(x)).sum()) for x in ps)
        err = DivergedError(f"{bad} of {sum(x.size for x in ps)} held-out predictions are not "
                            f"finite: the model's parameters are not finite (diverged)")
    else:
        err = None
    err = comm.bcast(err, root=0)
    if err is not None:
        raise err
    if comm.rank == 0:
        res = evaluate_predictions(np.concatenate(ys) if ys else np.zeros(0),
                                   np.concatenate(ps) if ps else np.zeros(0))
    return comm.bcast(res, root=0)
