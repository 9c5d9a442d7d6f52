"""``dlrm-tvm eval``: a checkpoint (ours or the PyTorch reference's) on a held-out split, or
(``--no-labels``) its predictions for an unlabelled file; and the evaluation during training."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from dlrm_tvm.config import Config, ConfigError
from dlrm_tvm.progress import Progress

log = logging.getLogger("dlrm_tvm")


def checkpoint_ids(desc: dict) -> dict | None:
    """How the ids a checkpoint of ours was trained on were made (``sources.ids_of``: id_mode,
    max_ind_range, the remap's mapping.npz), from its manifest's data position; None for a
    reference checkpoint or one that does not record it. A mapping that is no longer where
    the run recorded it is looked for in the run directory's data/ (a moved run)."""
    if desc.get("kind") != "dlrm-tvm":
        return None
    from dlrm_tvm.runtime import checkpoint as ck

    try:
        ids = (ck.read_manifest(desc["path"]).get("data") or {}).get("ids")
    except (OSError, ValueError):
        return None
    if not isinstance(ids, dict):
        return None
    m = ids.get("mapping")
    if m and not Path(m).is_file():
        moved = Path(desc["path"]).resolve().parents[1] / "data" / Path(m).name
        if not moved.is_file():
            from dlrm_tvm.config import ConfigError

            raise ConfigError(f"the checkpoint {desc['path']} was trained on ids remapped by "
                              f"{m}, which is gone: raw files cannot be given the same ids; "
                              f"evaluate a directory preprocessed with that mapping instead")
        ids = {**ids, "mapping": str(moved)}
    return ids


def _raw_ids_args(cfg: Config, ids: dict | None) -> dict:
    """preprocess_for_run's id arguments that repeat the training's ids on raw files."""
    if ids is None:  # a reference checkpoint, or an old one: the config's folding, as before
        return {"remap": False}
    if ids.get("id_mode") == "remap" and ids.get("mapping"):
        return {"remap": False, "mapping": ids["mapping"],
                "max_ind_range": ids.get("max_ind_range") or 0}
    if ids.get("id_mode") == "hash_mod":
        return {"remap": False, "max_ind_range": ids.get("max_ind_range") or 0}
    return {"remap": False, "max_ind_range": 0}


def _note_emulation(summary: dict) -> None:
    from dlrm_tvm.runtime.amx import emulated_instructions

    emulated = emulated_instructions()  # --emulate-amx
    if emulated is not None:
        summary["emulated_tile_instructions"] = emulated


def eval_checkpoint(ckpt: str | Path, cfg_hint: Config, out_dir: str | Path,
                    target: str = "host", save_predictions: bool = False,
                    eval_batches: int = 2, split: str | None = None,
                    no_labels: bool = False, progress: bool = True,
                    overwrite: bool = False) -> dict:
    """Evaluate every held-out row of ``cfg_hint.data`` (synthetic: ``eval_batches`` batches
    of the held-out stream) with the model in ``ckpt``; writes OUT/summary.json (loss,
    accuracy, auc, rows) and with ``save_predictions`` OUT/predictions.npy (one probability per
    row, in file order). ``split``: which rows of a preprocessed directory (default test);
    raw and binary files are evaluated whole. Raw files get the ids the checkpoint was trained
    on (its run's mapping.npz or max_ind_range: ``checkpoint_ids``).

    ``no_labels``: the raw file(s) have no label column (Kaggle's test.txt): every row is
    predicted, in file order, into OUT/predictions.npy and OUT/predictions.txt (one
    probability a line), and the summary has no loss or AUC. ``progress``: batches done of
    all, rows/s and ETA on stderr. An OUT that already holds a summary.json (an earlier
    evaluation, or a training run) is refused unless ``overwrite``."""
    from dlrm_tvm.data.sources import make_source, needs_preprocess, preprocess_for_run
    from dlrm_tvm.interop.state_io import load_state
    from dlrm_tvm.metrics import evaluate_predictions
    from dlrm_tvm.runtime.trainer import Trainer
    from dlrm_tvm.train import get_compiled

    out = Path(out_dir)
    if (out / "summary.json").exists() and not overwrite:
        raise ConfigError(f"{out} already holds a summary.json (an evaluation or a run): "
                          f"replace it with --overwrite, or give another --out")
    out.mkdir(parents=True, exist_ok=True)
    cfg, state, desc = load_state(ckpt, cfg_hint)
    # the data and batch size asked for now, the model of the checkpoint
    cfg = cfg_hint.replace(model=cfg.model, train=cfg_hint.train)
    ids = checkpoint_ids(desc)
    if no_labels:
        return _predict_unlabelled(cfg, state, desc, ids, out, target, progress)
    raw = needs_preprocess(cfg)
    data_dir = (preprocess_for_run(cfg, out, log.info, dest=out / "data", progress=progress,
                                   **_raw_ids_args(cfg, ids)) if raw else None)
    whole = raw or (cfg.data.kind == "mlperf-bin" and not cfg.data.eval_path)
    source = make_source(cfg, 0, 1, data_dir, eval_split=split or ("all" if whole else "test"))
    vm, meta = get_compiled(cfg, None, target, out, ())
    mlp = {k: v for k, v in state.items() if k != "tables"}
    trainer = Trainer(cfg, vm, tables=np.ascontiguousarray(state["tables"], np.float32), mlp=mlp)
    B, T = cfg.train.batch_size, cfg.model.num_tables
    ps, ys = [], []
    t0 = time.perf_counter()
    batches = source.eval_batches(eval_batches)
    prog = Progress(len(batches), "eval", unit="batch", show=progress, rate_of="rows")
    rows = 0
    for i, (batch, n) in enumerate(batches):
        p = trainer.predict(pad_batch(batch, B, T))
        ps.append(p[:n])
        ys.append(batch.labels[:n])
        rows += n
        prog.update(i + 1, rows=rows)
    p = np.concatenate(ps) if ps else np.zeros(0, np.float32)
    y = np.concatenate(ys) if ys else np.zeros(0, np.float32)
    _check_finite(p, desc)
    res = evaluate_predictions(y, p)
    summary = {**res, "seconds": time.perf_counter() - t0, "checkpoint": desc,
               "data": source.describe(), "config": cfg.to_dict(),
               "target": meta["target"]}
    if save_predictions:
        np.save(out / "predictions.npy", p.astype(np.float32))
        summary["predictions"] = str(out / "predictions.npy")
    _note_emulation(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True,
                                                 default=float))
    return summary


def _check_finite(p: np.ndarray, desc: dict) -> None:
    if not np.isfinite(p).all():
        from dlrm_tvm.errors import DivergedError

        raise DivergedError(f"{int((~np.isfinite(p)).sum())} of {p.size} predictions of "
                            f"{desc['path']} are not finite: its parameters are not finite "
                            f"(a diverged model); no metrics written")


def _count_lines(paths: list[str]) -> int:
    """Lines of the raw files (a last line without its newline counted), for the progress."""
    from dlrm_tvm.data.criteo.raw import count_lines

    n = 0
    for p in paths:
        size = os.path.getsize(p)
        n += count_lines(p, 0, size)
        if size:
            with open(p, "rb") as f:
                f.seek(size - 1)
                n += f.read(1) != b"\n"
    return n


def _predict_unlabelled(cfg: Config, state: dict, desc: dict, ids: dict | None, out: Path,
                        target: str, progress: bool) -> dict:
    """``eval --no-labels``: predictions for every row of unlabelled raw file(s), in order."""
    from dlrm_tvm.config import ConfigError
    from dlrm_tvm.data.criteo import CategoryMap, make_batch, parse_raw
    from dlrm_tvm.data.sources import _raw_inputs, check_criteo_model, fold_message
    from dlrm_tvm.runtime.trainer import Trainer
    from dlrm_tvm.train import get_compiled

    d = cfg.data
    if d.kind not in ("criteo-kaggle", "criteo-terabyte") or (Path(d.path) / "meta.json").is_file():
        raise ConfigError("--no-labels reads raw Criteo files without a label column (39 fields "
                          "a line, as Kaggle's test.txt): give them with --data criteo-kaggle "
                          "(or criteo-terabyte) --data-path FILE[,FILE...]")
    check_criteo_model(cfg)
    inputs = _raw_inputs(cfg)
    how = _raw_ids_args(cfg, ids)
    mir = how.get("max_ind_range")
    mir = (d.max_ind_range if mir is None else mir) or None
    cmap = CategoryMap.load(how["mapping"]) if how.get("mapping") else None
    rows = np.asarray(cfg.model.table_rows, np.int64)
    if cmap is not None:
        need = np.asarray(cmap.table_sizes, np.int64)
        folded = [{"table": int(t), "rows": int(rows[t]), "data_rows": int(need[t]),
                   "id_mode": "remap"} for t in np.flatnonzero(need > rows)]
    else:
        folded = [{"table": t, "rows": int(rows[t]), "data_rows": mir or 2**32,
                   "id_mode": "hash_mod" if mir else "hash32"}
                  for t in range(len(rows)) if (mir or 2**32) > rows[t]]
    if folded:
        log.warning("%s", fold_message(folded, cfg))
    for path in inputs:  # a labelled file is refused now, not after compiling
        next(iter(parse_raw(path, d.skip_bad_lines, mir, chunk_rows=1024, labels=False)), None)
    vm, meta = get_compiled(cfg, None, target, out, ())
    mlp = {k: v for k, v in state.items() if k != "tables"}
    trainer = Trainer(cfg, vm, tables=np.ascontiguousarray(state["tables"], np.float32), mlp=mlp)
    B, T = cfg.train.batch_size, cfg.model.num_tables
    total = _count_lines(inputs)
    prog = Progress(-(-total // B), "predict", unit="batch", show=progress, rate_of="rows")
    t0 = time.perf_counter()
    ps, stats, done, k = [], [], 0, 0
    for path in inputs:
        reader = parse_raw(path, d.skip_bad_lines, mir, chunk_rows=max(B, 4096), labels=False)
        for chunk in reader:
            cats = None if cmap is None else cmap.map(chunk.cats, add=False)
            block = chunk.to_rows(cats)
            for a in range(0, block.shape[0], B):
                batch = make_batch(block[a:a + B], cfg.model.table_rows)
                n = batch.dense.shape[0]
                ps.append(trainer.predict(pad_batch(batch, B, T))[:n])
                done += n
                k += 1
                prog.update(min(k, prog.total), rows=done)
        stats.append(reader.stats.to_dict())
    p = np.concatenate(ps) if ps else np.zeros(0, np.float32)
    _check_finite(p, desc)
    np.save(out / "predictions.npy", p.astype(np.float32))
    with open(out / "predictions.txt", "w") as f:
        f.write("".join(f"{x:.8f}\n" for x in p.tolist()))
    summary = {"rows": int(p.size), "labels": False, "seconds": time.perf_counter() - t0,
               "predictions": str(out / "predictions.npy"),
               "predictions_txt": str(out / "predictions.txt"),
               "mean_prediction": float(p.mean()) if p.size else None,
               "checkpoint": desc, "config": cfg.to_dict(), "target": meta["target"],
               "data": {"kind": d.kind, "path": d.path, "inputs": stats,
                        "skipped_lines": sum(s["skipped"] for s in stats),
                        "padded_lines": sum(s["padded"] for s in stats),
                        "ids": ids, "folded": folded}}
    _note_emulation(summary)
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


def run_eval(trainer, batches, cfg: Config, show: bool = False, also=None,
             delay: float = 2.0) -> dict:
    """Loss, accuracy and exact ROC AUC over every held-out row (``batches``: iterable of
    (global batch, real rows), with ``len()`` for the progress); across ranks the predictions
    are gathered on rank 0 and the result is broadcast. Raises DivergedError on non-finite
    predictions. ``show``: progress lines (batches done of all, rows/s, ETA) on stderr, after
    ``delay`` seconds (a short evaluation stays silent); ``also``: each plain line too (the
    run's train.log)."""
    from dlrm_tvm.errors import DivergedError
    from dlrm_tvm.metrics import evaluate_predictions

    B, T = cfg.train.batch_size, cfg.model.num_tables
    comm = trainer.comm
    prog = None
    if (show or also is not None) and comm.rank == 0 and hasattr(batches, "__len__"):
        prog = Progress(len(batches), "eval", unit="batch", also=also, show=show, delay=delay,
                        rate_of="rows")
    ps, ys = [], []
    rows = 0
    for i, (batch, n) in enumerate(batches):
        full = pad_batch(batch, B, T)
        parts = comm.gather(trainer.predict(full), root=0)
        p = np.concatenate(parts) if parts is not None else None
        if p is not None:
            ps.append(p[:n])
            ys.append(full.labels[:n])
        rows += n
        if prog is not None:
            prog.update(i + 1, rows=rows)
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
