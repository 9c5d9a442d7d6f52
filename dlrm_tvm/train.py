"""``dlrm-tvm train``: compile (or load) the step, run it, write metrics and a summary."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlrm_tvm.config import Config, ConfigError
from dlrm_tvm.errors import DivergedError, RunInterrupted
from dlrm_tvm.progress import Progress
from dlrm_tvm.rundir import RunDir, truncate_metrics

log = logging.getLogger("dlrm_tvm")


def _same_compiled_shape(a: Config, b: Config) -> bool:
    return (a.model == b.model and a.train.batch_size == b.train.batch_size
            and a.train.precision == b.train.precision)


def get_compiled(cfg: Config, artifact: str | Path | None, target_name: str, out_dir: Path,
                 prefer: tuple[str, ...] = (), tuning: dict | None = None):
    """(vm, artifact meta): load ``artifact`` if given (it must match ``cfg``), else compile
    for ``target_name`` into ``out_dir/artifact``."""
    from dlrm_tvm.artifact import compile_artifact, load_artifact, read_artifact
    from dlrm_tvm.targets import resolve_target

    if artifact is not None:
        art = read_artifact(artifact)
        if not _same_compiled_shape(art.config, cfg):
            raise ConfigError(
                f"artifact {artifact} was compiled for config {art.config.name!r} "
                f"(batch {art.batch_size}, {art.config.train.precision}) whose model, batch "
                f"size or precision differs from the one "
                f"requested; recompile with `dlrm-tvm compile` or drop --artifact"
            )
        vm, art = load_artifact(artifact)
        log.info("loaded artifact %s (target %s)", artifact, art.meta["target"]["name"])
        return vm, art.meta
    target = resolve_target(target_name)
    log.info("compiling %s for %s (mcpu %s, features %s)", cfg.name, target.name, target.mcpu,
             ",".join(target.features) or "-")
    t0 = time.perf_counter()
    art = compile_artifact(cfg, target, out_dir / "artifact", prefer=prefer, tuning=tuning)
    log.info("compiled in %.1fs -> %s", time.perf_counter() - t0, art.path)
    vm, art = load_artifact(art.path)
    return vm, art.meta


@dataclass
class RunOptions:
    """What a training run does besides stepping (CLI flags of ``dlrm-tvm train``)."""

    eval_every: int = 0  # evaluate on the held-out split every K steps (0: only at the end)
    eval_batches: int = 2  # synthetic data: held-out batches (a separate stream)
    # None: evaluate at the end when there is held-out data to judge by (real data, or
    # --eval-every given); a plain synthetic run keeps its metrics.jsonl to training lines
    final_eval: bool | None = None
    target_auc: float | None = None  # stop when the held-out AUC reaches it
    checkpoint_every: int = 0  # write a checkpoint every K steps (and at the end if > 0)
    keep_checkpoints: int = 2
    resume: str | None = None  # a checkpoint, checkpoints/ dir or run dir to continue from
    init_from: str | None = None  # start (step 0) from the weights of a checkpoint, ours or
    # the reference's torch.save file
    save_params: bool = False
    source: object | None = None  # a data source (dlrm_tvm.sources); default synthetic
    final_checkpoint: bool = True  # a checkpoint of the last step, so eval/export work on RUNDIR
    overwrite: bool = False  # replace a run already in the directory (else refused)


def train(cfg: Config, out_dir: str | Path, artifact: str | Path | None = None,
          target: str = "host", prefer: tuple[str, ...] = (), quiet: bool = False,
          dist: dict | None = None, save_params: bool = False,
          opts: RunOptions | None = None, tuning: dict | None = None) -> dict:
    """Train ``cfg.train.steps`` steps on ``cfg.data``; returns the summary it writes.

    Under ``mpiexec -n N`` (N > 1) every rank runs this: the tables are sharded over the ranks
    and each rank trains its slice of every global batch (runtime/distributed.py); ``dist``
    holds the distributed options (sharding, rank_memory_gib, threads, comm_timeout,
    progress_thread). Only rank 0 writes files and prints progress. ``opts``: evaluation,
    checkpoints, resume (``RunOptions``); ``save_params`` writes every fp32 parameter to
    RUNDIR/params.npz at the end (gathered on rank 0)."""
    from dlrm_tvm.runtime.distributed import launched_ranks

    opts = opts or RunOptions(save_params=save_params)
    opts.save_params = opts.save_params or save_params
    out = Path(out_dir)
    ranks = launched_ranks()
    with _sigterm_as_interrupt():
        return _train(cfg, out, artifact, target, prefer, quiet, dist, opts, tuning, ranks)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (and SIGINT) raise RunInterrupted in the main thread while training runs, so a
    scheduler's kill is handled as Ctrl-C: metrics flushed, summary marked interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise RunInterrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _train(cfg, out: Path, artifact, target, prefer, quiet, dist, opts: RunOptions, tuning,
           ranks: int) -> dict:
    start, manifest = _resume_state(cfg, opts.resume) if opts.resume else (None, None)
    if opts.init_from:
        if opts.resume:
            raise ConfigError("give --resume or --init-from, not both")
        start = _init_state(cfg, opts.init_from)
    from dlrm_tvm.sources import make_source, needs_preprocess, preprocess_for_run

    say = log.info if quiet else print
    if ranks > 1:
        from dlrm_tvm.runtime import distributed as D

        if artifact is not None:
            raise ConfigError("--artifact holds a one-rank module; a distributed run compiles "
                              "each rank's shards itself: drop --artifact under mpiexec")
        comm = D.comm_world()
        rank = comm.Get_rank()
        rd = RunDir(out, resume=bool(opts.resume), overwrite=opts.overwrite)
        try:
            data_dir = None
            if rank == 0:
                rd.acquire()
                if needs_preprocess(cfg):
                    data_dir = preprocess_for_run(cfg, out, say)
            data_dir = comm.bcast(data_dir, root=0)
            comm.Barrier()
            if opts.source is None:
                opts.source = make_source(cfg, rank, ranks, data_dir)
            trainer, dist_info = D.setup_rank(cfg, out if rank == 0 else None, target, prefer,
                                              log=(print if not quiet else log.info),
                                              start=start, tuning=tuning, **(dist or {}))
            meta = {"target": dist_info["target"], "schedules": {}, "tvm_version": _tvm_ver()}
            return _train_loop(cfg, out, trainer, meta, quiet, rank, dist_info, opts, manifest)
        except (D.CollectiveError, DivergedError):
            raise  # every rank has it: each exits with it (rank 0 prints it)
        except BaseException as e:  # any failure on any rank ends every rank
            D.abort_on_error(comm, e)
            raise
        finally:
            rd.release()
    with RunDir(out, resume=bool(opts.resume), overwrite=opts.overwrite):
        cfg.check_fits()
        if opts.source is None:
            data_dir = preprocess_for_run(cfg, out, say) if needs_preprocess(cfg) else None
            opts.source = make_source(cfg, 0, 1, data_dir)
        vm, meta = get_compiled(cfg, artifact, target, out, prefer, tuning)
        from dlrm_tvm.runtime.trainer import Trainer

        t0 = time.perf_counter()
        trainer = Trainer(cfg, vm, start=start)
        log.info("%s parameters in %.1fs (%.2f GiB)", "loaded" if start else "initialised",
                 time.perf_counter() - t0, cfg.model.param_bytes() / 2**30)
        return _train_loop(cfg, out, trainer, meta, quiet, 0, None, opts, manifest)


def _tvm_ver() -> str:
    import tvm

    return tvm.__version__


# ----------------------------------------------------------------------------- resume
def _resume_state(cfg: Config, path: str):
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
    for k in ("precision", "optimizer"):
        if getattr(old.train, k) != getattr(cfg.train, k):
            raise ConfigError(f"checkpoint {man['_dir']} was trained with {k} "
                              f"{getattr(old.train, k)}, not {getattr(cfg.train, k)}")
    from dlrm_tvm.runtime.distributed import launched_ranks

    if launched_ranks() == 1:  # one rank reads every file: verify them all before compiling
        for name in sorted(man.get("files") or ()):
            ck.verify_file(man, name)
    D = cfg.model.embedding_dim
    has_acc = bool(man.get("row_acc"))
    start = StartState(
        rows=lambda t, a, b: ck.load_rows(man, t, a, b, D),
        row_acc=(lambda t, a, b: ck.load_rows(man, t, a, b, D, acc=True)) if has_acc else None,
        mlp=ck.load_npz(man, "mlp.npz"),
        mlp_acc=ck.load_npz(man, "mlp_acc.npz") if man.get("mlp_acc") else None,
        step=int(man["step"]))
    log.info("resuming from %s (step %d)", man["_dir"], man["step"])
    return start, man


def _init_state(cfg: Config, path: str):
    """Weights only (step 0, fresh optimizer state and data) from a checkpoint of ours or a
    facebookresearch/dlrm torch.save file; its model must be the config's."""
    from dlrm_tvm.runtime.trainer import StartState
    from dlrm_tvm.state_io import load_state

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


def save_checkpoint(out: Path, trainer, step: int, source, cfg: Config, comm=None,
                    keep: int = 2) -> Path | None:
    """Every rank writes its shards; rank 0 the MLP and the manifest, then commits.

    Every file's size and SHA-256 go into the manifest. Parameters are checked as they are
    written: if any rank finds a non-finite value, nothing is committed (the previous
    checkpoint stays ``latest``) and every rank raises DivergedError."""
    from dlrm_tvm.runtime import checkpoint as ck

    rank = comm.Get_rank() if comm is not None else 0
    root = out / "checkpoints"
    token = f"{os.getpid()}-{time.time_ns()}"
    if comm is not None:
        token = comm.bcast(token, root=0)
    tmp = ck.begin(root, step, token)  # the same directory on every rank (mkdir exist_ok)
    fault = os.environ.get("DLRM_TVM_CKPT_FAULT")  # test hook: "RANK:STEP" dies mid-write
    shards, files, bad = [], {}, []
    for i, (t, a, b, rows, acc) in enumerate(trainer.shard_state()):
        if ck.non_finite(rows):
            bad.append(f"table {t} rows {a}:{b} ({ck.non_finite(rows)} values)")
        files[ck.shard_file(t, a, b)] = ck.write_array(tmp, ck.shard_file(t, a, b), rows)
        if acc is not None:
            if ck.non_finite(acc):
                bad.append(f"table {t} rows {a}:{b} accumulators")
            files[ck.shard_file(t, a, b, acc=True)] = ck.write_array(
                tmp, ck.shard_file(t, a, b, acc=True), acc)
        shards.append({"table": t, "row_start": a, "row_stop": b, "rank": rank})
        if fault and i == 0 and fault == f"{rank}:{step}":
            os.kill(os.getpid(), signal.SIGKILL)
    if comm is not None:
        parts = comm.gather((shards, files, bad), root=0)
        if parts is not None:
            shards = [s for p in parts for s in p[0]]
            files = {k: v for p in parts for k, v in p[1].items()}
            bad = [x for p in parts for x in p[2]]
    final = None
    if rank == 0:
        dense = trainer.dense.fp32()
        bad += [f"MLP {k} ({ck.non_finite(v)} values)" for k, v in dense.items()
                if ck.non_finite(v)]
        adagrad = cfg.train.optimizer == "rwsadagrad"
        if not bad:
            files["mlp.npz"] = ck.write_npz(tmp, "mlp.npz", dense)
            if adagrad:
                files["mlp_acc.npz"] = ck.write_npz(tmp, "mlp_acc.npz", trainer.dense.acc())
            final = ck.commit(root, tmp, step, {
                "config": cfg.to_dict(), "ranks": comm.Get_size() if comm is not None else 1,
                "shards": sorted(shards, key=lambda s: (s["table"], s["row_start"])),
                "row_acc": adagrad, "mlp_acc": adagrad, "data": source.state(),
                "files": files}, keep=keep)
        else:
            ck.discard(tmp)
    if comm is not None:
        bad = comm.bcast(bad, root=0)
        comm.Barrier()
    if bad:
        raise DivergedError(f"non-finite parameters at step {step}: {'; '.join(bad[:4])}"
                            f"{' ...' if len(bad) > 4 else ''}; no checkpoint of this state was "
                            f"written", step=step)
    return final


# ----------------------------------------------------------------------------- evaluation
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


def run_eval(trainer, batches, cfg: Config, comm=None) -> dict:
    """Loss, accuracy and exact ROC AUC over every held-out row (``batches``: iterable of
    (global batch, real rows)); across ranks the predictions are gathered on rank 0 and the
    result is broadcast."""
    from dlrm_tvm.metrics import evaluate_predictions

    B, T = cfg.train.batch_size, cfg.model.num_tables
    progress = getattr(trainer, "progress", None)
    kept = progress.take_ops() if progress is not None else None  # keep eval out of timings
    ps, ys = [], []
    for batch, n in batches:
        full = pad_batch(batch, B, T)
        p = trainer.predict(full)
        if comm is not None:
            parts = comm.gather(p, root=0)
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
    if comm is not None:
        err = comm.bcast(err, root=0)
    if err is not None:
        raise err
    if comm is None or comm.Get_rank() == 0:
        res = evaluate_predictions(np.concatenate(ys) if ys else np.zeros(0),
                                   np.concatenate(ps) if ps else np.zeros(0))
    if comm is not None:
        res = comm.bcast(res, root=0)
    if progress is not None:
        progress.take_ops()
        progress.ops = kept
    return res


# ----------------------------------------------------------------------------- the loop
def _latest_name(out: Path) -> str | None:
    try:
        return str(out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip())
    except OSError:
        return None


def _train_loop(cfg: Config, out: Path, trainer, meta: dict, quiet: bool, rank: int,
                dist_info: dict | None, opts: RunOptions, manifest: dict | None) -> dict:
    lead = rank == 0
    comm = trainer.comm if dist_info is not None else None
    if lead:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    # every rank draws the same global batches; a rank keeps only its slice of each
    source = opts.source
    first = 0
    if manifest is not None:
        source.restore(manifest["data"])
        first = int(manifest["step"])
    steps = cfg.train.steps
    if first > steps:
        raise ConfigError(f"the checkpoint is at step {first}, past --steps {steps}")
    prog = Progress(steps - first, "train") if not quiet and lead else None
    times, losses, evals = [], [], []
    timings: dict[str, list[float]] = {}
    metrics = None
    if lead:
        mpath = out / "metrics.jsonl"
        if manifest is not None:
            dropped = truncate_metrics(mpath, first)
            if dropped:
                log.info("metrics.jsonl: dropped %d lines past the resumed step %d", dropped,
                         first)
        # line-buffered: every line reaches the file as it is written (a kill loses none)
        metrics = open(mpath, "a" if manifest else "w", buffering=1)
    t_start = time.perf_counter()
    reached = None
    local = getattr(source, "local", False)
    saved_at = [first if manifest is not None else -1]

    def evaluate(step: int) -> dict:
        t0 = time.perf_counter()
        r = run_eval(trainer, source.eval_batches(opts.eval_batches), cfg, comm)
        r.update(step=step, seconds=time.perf_counter() - t0)
        evals.append(r)
        if metrics:
            metrics.write(json.dumps({"kind": "eval", "step": step, "eval": r,
                                      "time_s": time.perf_counter() - t_start}) + "\n")
        if not quiet and lead:
            log.info("eval at step %d: loss %.5f accuracy %.4f auc %.5f (%d rows)", step,
                     r["loss"], r["accuracy"], r["auc"], r["rows"])
        return r

    def checkpoint(step: int) -> None:
        save_checkpoint(out, trainer, step, source, cfg, comm, keep=opts.keep_checkpoints)
        saved_at[0] = step

    def ended(status: str, err: BaseException) -> None:
        """A run that stops early still leaves a summary that says why and where."""
        if not lead:
            return
        summary = {"status": status, "error": str(err), "steps": first + len(times),
                   "first_step": first, "final_loss": losses[-1] if losses else None,
                   "config": cfg.to_dict(), "target": meta["target"], "evals": evals,
                   "rank": rank, "last_checkpoint": _latest_name(out)}
        if isinstance(err, DivergedError):
            summary["diverged_at_step"] = err.step
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True,
                                                     default=float))

    try:
        s = first
        for s in range(first, steps):
            batch = source.next_batch()
            t = time.perf_counter()
            r = trainer.step(batch, timings, local=True) if local else trainer.step(batch,
                                                                                   timings)
            dt = time.perf_counter() - t
            times.append(dt)
            losses.append(r["loss"])
            if metrics and (s % cfg.train.log_every == 0 or s == steps - 1
                            or not np.isfinite(r["loss"])):
                metrics.write(json.dumps({"step": s, "loss": r["loss"], "lr": r["lr"],
                                          "ms": dt * 1e3}) + "\n")
            if not np.isfinite(r["loss"]):
                raise DivergedError(
                    f"the loss became {r['loss']} at step {s} (learning rate {r['lr']:g}): "
                    f"training diverged; lower --learning-rate or add warm-up "
                    f"(--lr-num-warmup-steps); the last good checkpoint, if any, is "
                    f"{_latest_name(out) or 'none'}", step=s)
            if prog:
                prog.update(s + 1 - first, loss=float(np.mean(losses[-10:])),
                            ms_per_step=dt * 1e3)
            done = s + 1
            if opts.eval_every and done % opts.eval_every == 0 and done < steps:
                e = evaluate(done)
                if opts.target_auc is not None and e["auc"] >= opts.target_auc:
                    reached = {"step": done, "auc": e["auc"],
                               "time_s": time.perf_counter() - t_start}
            if opts.checkpoint_every and done % opts.checkpoint_every == 0:
                checkpoint(done)
            if reached:
                if lead:
                    log.info("target AUC %.4f reached at step %d (%.1f s)", opts.target_auc,
                             reached["step"], reached["time_s"])
                break
        want_final = opts.final_eval
        if want_final is None:
            want_final = cfg.data.kind != "synthetic" or bool(opts.eval_every) or \
                opts.target_auc is not None
        end = len(times) + first
        if evals and evals[-1]["step"] == end:
            final_eval = evals[-1]  # just evaluated (the target stop): not twice
        else:
            final_eval = evaluate(end) if want_final and times else None
        if (opts.target_auc is not None and not reached and final_eval
                and final_eval["auc"] >= opts.target_auc):
            reached = {"step": final_eval["step"], "auc": final_eval["auc"],
                       "time_s": time.perf_counter() - t_start}
        if (opts.final_checkpoint or opts.checkpoint_every) and saved_at[0] != end:
            checkpoint(end)  # the finished run's model: eval/export --checkpoint RUNDIR
    except DivergedError as e:
        ended("diverged", e)
        raise
    except KeyboardInterrupt as e:
        ended("interrupted", e)
        raise
    finally:
        if metrics:
            metrics.close()
    warm = times[min(len(times) - 1, 2):] if times else []
    med = float(np.median(warm)) if warm else float("nan")
    summary = {
        "status": "finished",
        "steps": first + len(times),
        "first_step": first,
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "mean_loss_last_10": float(np.mean(losses[-10:])) if losses else None,
        "ms_per_step_median": med * 1e3,
        "samples_per_s": cfg.train.batch_size / med if warm else None,
        "target": meta["target"],
        "config": cfg.to_dict(),
        "schedules": meta["schedules"],
        "tvm_version": meta["tvm_version"],
        "ranks": 1,
        "rank": rank,
        "data": source.describe() if hasattr(source, "describe") else {},
        "eval": final_eval,
        "evals": evals,
        "last_checkpoint": _latest_name(out) if lead else None,
    }
    if opts.target_auc is not None:
        summary["target_auc"] = {"target": opts.target_auc, "reached": reached}
    state = None
    if dist_info is not None:
        from dlrm_tvm.runtime.distributed import reduce_timings

        # the first steps (warm-up) are left out, as for the median above
        skip = min(len(times) - 1, 2) if times else 0
        tim = {k: v[skip:] for k, v in timings.items()}
        ops = trainer.progress.take_ops()
        per_step = max(1, len(ops) // max(1, len(times)))
        red = reduce_timings(trainer.comm, tim, ops[skip * per_step:],
                             max(1, len(times) - skip))
        if opts.save_params:
            state = trainer.gather_state()
        trainer.progress.close()
        summary.update(ranks=dist_info["ranks"], layout=dist_info["layout"],
                       sharding=dist_info["sharding"],
                       progress_thread=dist_info["progress_thread"])
        if red is not None:
            summary["phases_ms"] = red["phases_ms"]
            summary["exchanges"] = red["exchanges"]
            summary["per_rank_phases_ms"] = red["per_rank_phases_ms"]
            summary["per_rank_exposed_ms"] = red["per_rank_exposed_ms"]
    else:
        skip = min(len(times) - 1, 2) if times else 0
        summary["phases_ms"] = {k: 1e3 * float(np.median(v[skip:])) for k, v in timings.items()
                                if v[skip:]}
        if opts.save_params:
            state = trainer.state()
    if lead:
        if state is not None:
            np.savez(out / "params.npz", **state)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True,
                                                     default=float))
    return summary
