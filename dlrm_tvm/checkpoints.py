"""Checkpoints of a run, as the driver writes and reads them: a resumed run's start state, the
weights a run starts from (ours or the reference's), and writing one (every rank its shards,
rank 0 the MLP and the manifest). The file format and its atomic commit: runtime/checkpoint.py.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import numpy as np

from dlrm_tvm.config import Config, ConfigError
from dlrm_tvm.errors import DivergedError

log = logging.getLogger("dlrm_tvm")


def resume_state(cfg: Config, path: str):
    """(StartState, manifest) of the checkpoint at ``path``; refuses one of another model."""
    from dlrm_tvm.runtime import checkpoint as ck
    from dlrm_tvm.runtime.trainer import StartState

    man = ck.read_manifest(path)
    try:
        old = Config.from_dict(man["config"])
    except ConfigError as e:
        raise ConfigError(f"{man['_dir']}/manifest.json: its config is invalid: {e}") from e
    if old.model != cfg.model:
        raise ConfigError(f"checkpoint {man['_dir']} holds a different model than the config "
                          f"(its config: {man['_dir']}/manifest.json)")
    for k in ("precision", "optimizer", "seed"):  # (the seed: the data stream, the teacher)
        if getattr(old.train, k) != getattr(cfg.train, k):
            raise ConfigError(f"checkpoint {man['_dir']} was trained with {k} "
                              f"{getattr(old.train, k)}, not {getattr(cfg.train, k)}: a resumed "
                              f"run continues the same run (drop the flag that changes it)")
    for k in ("kind", "path", "eval_path", "labels", "index_distribution"):
        if getattr(old.data, k) != getattr(cfg.data, k):  # its ids live in the tables
            raise ConfigError(f"checkpoint {man['_dir']} was trained on data {k} "
                              f"{getattr(old.data, k)!r}, not {getattr(cfg.data, k)!r}: a resumed "
                              f"run continues on the same data (start a new run from its "
                              f"weights with --init-from instead)")
    from dlrm_tvm.runtime.comm import launched_ranks

    if launched_ranks() == 1:  # one rank reads every file: verify them all before compiling
        for name in sorted(man.get("files") or ()):
            ck.verify_file(man, name)
    D = cfg.model.embedding_dim
    has_acc = bool(man.get("row_acc"))
    acc_cols = D if cfg.train.optimizer == "adagrad" else None  # its state: [rows, D]
    where = man["_dir"]

    def npz(name: str) -> dict:
        return {k: _finite_or_refused(where, f"{name} {k}", v)
                for k, v in ck.load_npz(man, name).items()}

    # every value read is checked as it is read (rows: a shard at a time)
    start = StartState(
        rows=lambda t, a, b: _finite_or_refused(where, f"table {t} rows {a}:{b}",
                                                ck.load_rows(man, t, a, b, D)),
        row_acc=(lambda t, a, b: _finite_or_refused(
            where, f"table {t} rows {a}:{b} accumulators",
            ck.load_rows(man, t, a, b, D, acc=True, acc_cols=acc_cols)))
        if has_acc else None,
        mlp=npz("mlp.npz"),
        mlp_acc=npz("mlp_acc.npz") if man.get("mlp_acc") else None,
        step=int(man["step"]))
    log.info("resuming from %s (step %d)", man["_dir"], man["step"])
    return start, man


def init_state(cfg: Config, path: str):
    """Weights only (step 0, fresh optimizer state and data) from a checkpoint of ours or a
    facebookresearch/dlrm torch.save file; its model must be the config's."""
    from dlrm_tvm.interop.state_io import load_state
    from dlrm_tvm.runtime.trainer import StartState

    ck_cfg, state, desc = load_state(path, cfg)
    if ck_cfg.model != cfg.model:
        raise ConfigError(f"{desc['path']} holds another model than the config: its tables "
                          f"{ck_cfg.model.table_rows[:4]}..., dim {ck_cfg.model.embedding_dim}, "
                          f"bottom {ck_cfg.model.mlp_bot}, top {ck_cfg.model.mlp_top}, "
                          f"{ck_cfg.model.interaction}; give the matching --config/--arch-* flags")
    tables = np.ascontiguousarray(state.pop("tables"), np.float32)
    offs = cfg.model.table_offsets
    log.info("starting from the weights of %s (%s)", desc["path"], desc["kind"])
    return StartState(rows=lambda t, a, b: tables[offs[t] + a:offs[t] + b], row_acc=None,
                      mlp=state, mlp_acc=None, step=0)


def check_finite(trainer, step: int) -> None:
    """Raise DivergedError (on every rank) if any parameter, table rows or MLP, is NaN or
    infinite: one pass over the shards this rank holds, a block of rows at a time."""
    from dlrm_tvm.runtime import checkpoint as ck

    comm = trainer.comm
    bad = [f"table {t} rows {a}:{b} ({n} values)" for t, a, b, n in trainer.non_finite_shards()]
    if comm.rank == 0:
        bad += [f"MLP {k} ({n} values)" for k, n in
                ((k, ck.non_finite(v)) for k, v in trainer.dense.fp32().items()) if n]
    parts = comm.gather(bad, root=0)
    if parts is not None:
        bad = [x for p in parts for x in p]
    bad = comm.bcast(bad, root=0)
    if bad:
        raise DivergedError(f"non-finite parameters at step {step}: {'; '.join(bad[:4])}"
                            f"{' ...' if len(bad) > 4 else ''}: training diverged; lower "
                            f"--learning-rate or add warm-up (--lr-num-warmup-steps)",
                            step=step)


def _finite_or_refused(where: str, name: str, arr):
    """``arr``, or DivergedError naming ``name`` in the checkpoint ``where`` and how many of
    its values are not finite."""
    from dlrm_tvm.runtime import checkpoint as ck

    n = ck.non_finite(arr)
    if n:
        raise DivergedError(f"{where}: non-finite parameters ({name}: {n} values): a diverged "
                            f"model, refused")
    return arr


def save_checkpoint(out: Path, trainer, step: int, source, cfg: Config,
                    keep: int = 2) -> Path | None:
    """Every rank writes its shards; rank 0 the MLP and the manifest, then commits.

    Every file's size and SHA-256 go into the manifest. Parameters are checked as they are
    written: if any rank finds a non-finite value, nothing is committed (the previous
    checkpoint stays ``latest``) and every rank raises DivergedError."""
    from dlrm_tvm.runtime import checkpoint as ck

    comm = trainer.comm
    rank = comm.rank
    root = out / "checkpoints"
    token = comm.bcast(f"{os.getpid()}-{time.time_ns()}", root=0)
    tmp = ck.begin(root, step, token)  # the same directory on every rank (mkdir exist_ok)
    fault = os.environ.get("DLRM_TVM_CKPT_FAULT")  # test hook: "RANK:STEP" dies mid-write
    shards, files, bad = [], {}, []
    for i, (t, a, b, rows, acc) in enumerate(trainer.shard_state()):
        n_bad = ck.non_finite(rows)  # one pass over the shard
        if n_bad:
            bad.append(f"table {t} rows {a}:{b} ({n_bad} values)")
        files[ck.shard_file(t, a, b)] = ck.write_array(tmp, ck.shard_file(t, a, b), rows)
        if acc is not None:
            if ck.non_finite(acc):
                bad.append(f"table {t} rows {a}:{b} accumulators")
            files[ck.shard_file(t, a, b, acc=True)] = ck.write_array(
                tmp, ck.shard_file(t, a, b, acc=True), acc)
        shards.append({"table": t, "row_start": a, "row_stop": b, "rank": rank})
        if fault and i == 0 and fault == f"{rank}:{step}":
            os.kill(os.getpid(), signal.SIGKILL)
    parts = comm.gather((shards, files, bad), root=0)
    if parts is not None:
        shards = [s for p in parts for s in p[0]]
        files = {k: v for p in parts for k, v in p[1].items()}
        bad = [x for p in parts for x in p[2]]
    final = None
    if rank == 0:
        dense = trainer.dense.fp32()
        bad += [f"MLP {k} ({n} values)" for k, n in
                ((k, ck.non_finite(v)) for k, v in dense.items()) if n]
        adagrad = cfg.train.optimizer != "sgd"  # rwsadagrad's or adagrad's state
        if not bad:
            files["mlp.npz"] = ck.write_npz(tmp, "mlp.npz", dense)
            if adagrad:
                files["mlp_acc.npz"] = ck.write_npz(tmp, "mlp_acc.npz", trainer.dense.acc())
            final = ck.commit(root, tmp, step, {
                "config": cfg.to_dict(), "ranks": comm.size,
                "shards": sorted(shards, key=lambda s: (s["table"], s["row_start"])),
                "row_acc": adagrad, "mlp_acc": adagrad, "data": source.state(),
                "files": files}, keep=keep)
        else:
            ck.discard(tmp)
    bad = comm.bcast(bad, root=0)
    comm.barrier()
    if bad:
        raise DivergedError(f"non-finite parameters at step {step}: {'; '.join(bad[:4])}"
                            f"{' ...' if len(bad) > 4 else ''}; no checkpoint of this state was "
                            f"written", step=step)
    return final
