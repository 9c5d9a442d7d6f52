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
    from dlrm_tvm.metrics import evaluate_predictions
    from dlrm_tvm.runtime.trainer import Trainer
    from dlrm_tvm.sources import make_source, needs_preprocess, preprocess_for_run
    from dlrm_tvm.state_io import load_state
    from dlrm_tvm.train import get_compiled, pad_batch

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
