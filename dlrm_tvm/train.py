"""``dlrm-tvm train``: compile (or load) the step, run it, write metrics and a summary."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlrm_tvm.checkpoints import check_finite, init_state, resume_state, save_checkpoint
from dlrm_tvm.config import Config, ConfigError
from dlrm_tvm.errors import DivergedError, RunInterrupted
from dlrm_tvm.evaluate import run_eval
from dlrm_tvm.launch import DistOptions
from dlrm_tvm.progress import Progress
from dlrm_tvm.rundir import (
    RunDir,
    RunLog,
    open_run_file,
    truncate_metrics,
    write_file,
    write_summary,
)

log = logging.getLogger("dlrm_tvm")


RUN_FILES = ("metrics.jsonl", "summary.json", "config.json", "train.log", "params.npz",
             ".lock", "sharding.json", "layout.json")


def _refuse_log_over_run_files(log_path: Path, out: Path) -> None:
    """--mlperf-logging into one of the run's own files (metrics.jsonl, ...) or its
    checkpoints would interleave or clobber them: refused, naming the flag."""
    p, o = log_path.resolve(), out.resolve()
    if p.parent == o and p.name in RUN_FILES or (o / "checkpoints") in p.parents or \
            p == o / "checkpoints":
        raise ConfigError(f"--mlperf-logging {log_path} is one of the run's own files in "
                          f"{out}: give another path (default: RUNDIR/mlperf.log)")


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
    log.info("compiling %s for %s (mcpu %s, %d ISA features)", cfg.name, target.name,
             target.mcpu, len(target.features))
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
    # None or True: evaluate the held-out split at the end (synthetic data has a held-out
    # stream of its own); False: --no-eval
    final_eval: bool | None = None
    target_auc: float | None = None  # stop when the held-out AUC reaches it
    checkpoint_every: int = 0  # write a checkpoint every K steps (and at the end if > 0)
    keep_checkpoints: int = 2
    resume: str | None = None  # a checkpoint, checkpoints/ dir or run dir to continue from
    init_from: str | None = None  # start (step 0) from the weights of a checkpoint, ours or
    # the reference's torch.save file
    save_params: bool = False
    source: object | None = None  # a data source (dlrm_tvm.data.sources); default synthetic
    final_checkpoint: bool = True  # a checkpoint of the last step, so eval/export work on RUNDIR
    overwrite: bool = False  # replace a run already in the directory (else refused)
    # the reference's flags (dlrm_tvm/reference_cli.py)
    print_every: int = 0  # --print-freq: a line with the mean loss every N steps
    print_time: bool = False  # --print-time: with ms/step
    epochs: int | None = None  # --nepochs: steps = epochs x batches_per_epoch
    batches_per_epoch: int | None = None  # --num-batches (None: the training rows // batch)
    data_size: int | None = None  # --data-size: generated samples per epoch (reference)
    save_model: str | None = None  # --save-model: the reference's torch.save file at the end
    # --mlperf-logging: an MLLOG file of the run (dlrm_tvm/mlperf_log.py), its submission fields
    mlperf_log: str | None = None
    mlperf_org: str | None = None
    mlperf_platform: str | None = None
    mlperf_division: str = "open"
    mlperf_init_ms: float | None = None  # set by train(): when the run's set-up began


def train(cfg: Config, out_dir: str | Path, artifact: str | Path | None = None,
          target: str = "host", prefer: tuple[str, ...] = (), quiet: bool = False,
          dist: DistOptions | dict | None = None, save_params: bool = False,
          opts: RunOptions | None = None, tuning: dict | None = None) -> dict:
    """Train ``cfg.train.steps`` steps on ``cfg.data``; returns the summary it writes.

    Under ``mpiexec -n N`` (N > 1) every rank runs this: the tables are sharded over the ranks
    and each rank trains its slice of every global batch (the same stages as one rank,
    runtime/trainer.py, over runtime/mpi.py's Comm; set up by launch.py); ``dist``: the
    ``DistOptions`` (sharding, rank memory, threads, exchange timeout, progress thread). Only
    rank 0 writes files and prints progress. ``opts``: evaluation, checkpoints, resume
    (``RunOptions``); ``save_params`` writes every fp32 parameter to RUNDIR/params.npz at the
    end (gathered on rank 0)."""
    from dlrm_tvm.runtime.comm import launched_ranks

    opts = opts or RunOptions(save_params=save_params)
    opts.save_params = opts.save_params or save_params
    if opts.mlperf_log:
        from dlrm_tvm.mlperf_log import now_ms, require

        require()  # the package, before anything is compiled or written
        opts.mlperf_init_ms = now_ms()
        _refuse_log_over_run_files(Path(opts.mlperf_log), Path(out_dir))
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
    if opts.init_from and opts.resume:
        raise ConfigError("give --resume or --init-from, not both")
    from dlrm_tvm.data.sources import (
        make_source,
        needs_preprocess,
        preprocess_for_run,
        sized_for_data,
    )

    say = log.info if quiet else print
    if ranks > 1:
        from dlrm_tvm.launch import setup_ranks, start_mpi
        from dlrm_tvm.runtime.comm import CollectiveError

        if artifact is not None:
            raise ConfigError("--artifact holds a one-rank module; a distributed run compiles "
                              "each rank's shards itself: drop --artifact under mpiexec")
        dopts = DistOptions.of(dist)
        comm, layout = start_mpi(dopts)
        rank = comm.rank
        rd = RunDir(out, resume=bool(opts.resume), overwrite=opts.overwrite)
        runlog = None
        try:
            from dlrm_tvm.runtime.mpi import check_same_config

            # the configs as given, before rank 0 sizes the tables from the data and sends
            # its config to every rank (after which they could no longer differ)
            check_same_config(comm, cfg)
            data_dir = None
            if rank == 0:
                rd.acquire()
                runlog = RunLog(out).__enter__()
                if needs_preprocess(cfg):
                    data_dir = preprocess_for_run(cfg, out, say, progress=not quiet)
                if opts.source is None:  # the tables' rows from the data, before compiling
                    cfg = sized_for_data(cfg, data_dir, say)
            data_dir, cfg = comm.bcast((data_dir, cfg), root=0)
            comm.barrier()
            start, manifest = _start_state(cfg, opts)
            if opts.source is None:
                opts.source = make_source(cfg, rank, ranks, data_dir)
            _check_one_batch(cfg, opts.source)
            trainer, dist_info = setup_ranks(cfg, comm, layout, out if rank == 0 else None,
                                             target, prefer, dopts,
                                             log=(print if not quiet else log.info),
                                             start=start, tuning=tuning)
            meta = {"target": dist_info["target"], "schedules": {}, "tvm_version": _tvm_ver()}
            return _train_loop(cfg, out, trainer, meta, quiet, dist_info, opts, manifest,
                               runlog)
        except (CollectiveError, DivergedError):
            raise  # every rank has it: each exits with it (rank 0 prints it)
        except BaseException as e:  # any failure on any rank ends every rank
            comm.abort(e)
            raise
        finally:
            if runlog is not None:
                runlog.__exit__()
            rd.release()
    with RunDir(out, resume=bool(opts.resume), overwrite=opts.overwrite), RunLog(out) as runlog:
        if opts.source is None:  # the tables' rows from the data, before compiling
            data_dir = preprocess_for_run(cfg, out, say, progress=not quiet) \
                if needs_preprocess(cfg) else None
            if artifact is None:  # (an artifact's tables are its own)
                cfg = sized_for_data(cfg, data_dir, say)
        cfg.check_fits()
        start, manifest = _start_state(cfg, opts)
        if opts.source is None:
            opts.source = make_source(cfg, 0, 1, data_dir)
        _check_one_batch(cfg, opts.source)
        vm, meta = get_compiled(cfg, artifact, target, out, prefer, tuning)
        from dlrm_tvm.runtime.trainer import Trainer

        t0 = time.perf_counter()
        trainer = Trainer(cfg, vm, start=start)
        log.info("%s parameters in %.1fs (%.2f GiB)", "loaded" if start else "initialised",
                 time.perf_counter() - t0, cfg.model.param_bytes() / 2**30)
        return _train_loop(cfg, out, trainer, meta, quiet, None, opts, manifest, runlog)


def _check_one_batch(cfg: Config, source) -> None:
    """Training data with fewer rows than one batch is refused here, before compiling (its
    first batch would otherwise refuse it only after the compile)."""
    if cfg.train.steps > 0 and getattr(source, "train_ok", True) is False:
        raise ConfigError(source._too_small())


def _epoch_steps(cfg: Config, source, opts: RunOptions) -> int:
    """--nepochs E: E x the batches of an epoch (--num-batches, else the training rows of the
    data over the global batch, as the reference's loader without its short last batch)."""
    nb = opts.batches_per_epoch
    B = cfg.train.batch_size
    rows = getattr(getattr(source, "train", None), "rows", None)
    if nb is None and rows is None:
        # generated data: the reference's epoch is --data-size samples (its default: 1)
        nb = -(-(opts.data_size or 1) // B)
        if opts.data_size is None:
            log.warning("--nepochs on generated data without --num-batches or --data-size: "
                        "an epoch is the reference's default --data-size 1, i.e. %d batch", nb)
    elif nb is None:
        nb = rows // B
        if nb == 0:
            raise ConfigError(f"the training data has {rows} rows, fewer than one batch of "
                              f"{cfg.train.batch_size}: lower --mini-batch-size")
    return opts.epochs * nb


def _start_state(cfg: Config, opts: RunOptions):
    """(start state, manifest) of --resume or --init-from (None, None without), checked
    against the model the data decided (``sized_for_data``)."""
    start, manifest = resume_state(cfg, opts.resume) if opts.resume else (None, None)
    if opts.init_from:
        start = init_state(cfg, opts.init_from)
    return start, manifest


def _tvm_ver() -> str:
    import tvm

    return tvm.__version__


# ----------------------------------------------------------------------------- the loop
def _latest_name(out: Path) -> str | None:
    try:
        return str(out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip())
    except OSError:
        return None


def _train_loop(cfg: Config, out: Path, trainer, meta: dict, quiet: bool,
                dist_info: dict | None, opts: RunOptions, manifest: dict | None,
                runlog: RunLog | None = None) -> dict:
    comm = trainer.comm
    rank = comm.rank
    lead = rank == 0
    ops: list = []  # the exchanges of the training steps (not of evaluations)
    # every rank draws the same global batches; a rank keeps only its slice of each
    source = opts.source
    first = 0
    if manifest is not None:
        source.restore(manifest["data"])
        first = int(manifest["step"])
    steps = cfg.train.steps
    if opts.epochs is not None:
        steps = _epoch_steps(cfg, source, opts)
        cfg = cfg.replace(train=dataclasses.replace(cfg.train, steps=steps))
        if lead:
            log.info("%d epoch(s) of %d batches: %d steps", opts.epochs, steps // opts.epochs,
                     steps)
    if lead:
        write_file(out / "config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    if first > steps:
        raise ConfigError(f"the checkpoint is at step {first}, past --steps {steps}")
    prog = None
    if lead and not (quiet and runlog is None):  # --quiet: the progress goes to train.log only
        prog = Progress(steps, "train", also=runlog.line if runlog else None,
                        show=not quiet, start=first)  # a resumed run counts on from ``first``
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
        metrics = os.fdopen(open_run_file(mpath, append=bool(manifest)), "a", buffering=1)
    t_start = time.perf_counter()
    reached = None
    mll = None
    if lead and opts.mlperf_log:
        from dlrm_tvm.mlperf_log import open_run_log

        mll = open_run_log(opts, cfg, source, steps, dist_info["ranks"] if dist_info else 1)
    local = getattr(source, "local", False)
    saved_at = [first if manifest is not None else -1]

    checked_at = [-1]  # the step whose parameters were last found finite

    def evaluate(step: int) -> dict:
        # behind a ReLU, NaN parameters can give finite predictions (AUC 0.5): check them
        check_finite(trainer, step)
        checked_at[0] = step
        t0 = time.perf_counter()
        ops.extend(comm.take_ops())
        if mll:
            mll.eval_begin(step)
        r = run_eval(trainer, source.eval_batches(opts.eval_batches), cfg,
                     show=lead and not quiet, also=runlog.line if runlog else None)
        comm.take_ops()  # keep evaluation out of the exchange timings
        r.update(step=step, seconds=time.perf_counter() - t0)
        evals.append(r)
        if mll:
            mll.eval_end(step, r["auc"])
        if metrics:
            metrics.write(json.dumps({"kind": "eval", "step": step, "eval": r,
                                      "time_s": time.perf_counter() - t_start,
                                      "wall": round(time.time(), 3)}) + "\n")
        if not quiet and lead:
            log.info("eval at step %d: loss %.5f accuracy %.4f auc %.5f (%d rows)", step,
                     r["loss"], r["accuracy"], r["auc"], r["rows"])
        return r

    def checkpoint(step: int) -> None:
        save_checkpoint(out, trainer, step, source, cfg, keep=opts.keep_checkpoints)
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
        write_summary(out / "summary.json", summary)

    try:
        s = first
        for s in range(first, steps):
            if mll:
                mll.step_begin(s)
            batch = source.next_batch()
            t = time.perf_counter()
            r = trainer.step(batch, timings, local=local)
            dt = time.perf_counter() - t
            times.append(dt)
            losses.append(r["loss"])
            if metrics and (s % cfg.train.log_every == 0 or s == steps - 1
                            or not np.isfinite(r["loss"])):
                metrics.write(json.dumps({"step": s, "loss": r["loss"], "lr": r["lr"],
                                          "ms": dt * 1e3, "time_s": time.perf_counter() - t_start,
                                          "wall": round(time.time(), 3)}) + "\n")
            if not np.isfinite(r["loss"]):
                raise DivergedError(
                    f"the loss became {r['loss']} at step {s} (learning rate {r['lr']:g}): "
                    f"training diverged; lower --learning-rate or add warm-up "
                    f"(--lr-num-warmup-steps); the last good checkpoint, if any, is "
                    f"{_latest_name(out) or 'none'}", step=s)
            if prog:
                prog.update(s + 1, **{f"loss(mean of last {min(10, len(losses))})":
                                      float(np.mean(losses[-10:]))}, ms_per_step=dt * 1e3)
            done = s + 1
            if mll:
                mll.step_end(done)
            if lead and opts.print_every and (done % opts.print_every == 0 or done == steps):
                # as the reference: every N steps and at the end
                k = min(done % opts.print_every or opts.print_every, len(losses))
                line = (f"step {done}/{steps}  loss(mean of {k} steps) "
                        f"{float(np.mean(losses[-k:])):.5f}")
                if opts.print_time:
                    line += f"  {1e3 * float(np.mean(times[-k:])):.2f} ms/step"
                print(line, flush=True)
                if runlog:
                    runlog.line(line)
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
        want_final = opts.final_eval is not False
        end = len(times) + first
        if evals and evals[-1]["step"] == end:
            final_eval = evals[-1]  # just evaluated (the target stop): not twice
        else:
            final_eval = evaluate(end) if want_final and times else None
        if (opts.target_auc is not None and not reached and final_eval
                and final_eval["auc"] >= opts.target_auc):
            reached = {"step": final_eval["step"], "auc": final_eval["auc"],
                       "time_s": time.perf_counter() - t_start}
        if checked_at[0] != end:  # every run's model is checked, whatever it writes
            check_finite(trainer, end)
            checked_at[0] = end
        if mll:  # success: the run ended as asked (with --target-auc: it reached it)
            mll.stop("success" if opts.target_auc is None or reached else "aborted", end)
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
        if mll:  # run_stop aborted unless stopped above (diverged, interrupted, failed)
            mll.close(first + len(times))
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
    from dlrm_tvm.runtime.amx import emulated_instructions

    emulated = emulated_instructions()  # --emulate-amx: this rank's executed tile instructions
    if emulated is not None:
        summary["emulated_tile_instructions"] = emulated
    state = None
    if dist_info is not None:
        from dlrm_tvm.runtime.comm import reduce_timings

        # the first steps (warm-up) are left out, as for the median above
        skip = min(len(times) - 1, 2) if times else 0
        tim = {k: v[skip:] for k, v in timings.items()}
        ops.extend(comm.take_ops())
        per_step = max(1, len(ops) // max(1, len(times)))
        red = reduce_timings(comm, tim, ops[skip * per_step:], max(1, len(times) - skip))
        if opts.save_params or opts.save_model:
            state = trainer.gather_state()
        comm.close()
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
        if opts.save_params or opts.save_model:
            state = trainer.state()
    if lead:
        if state is not None and opts.save_params:
            write_file(out / "params.npz", lambda f: np.savez(f, **state))
        if state is not None and opts.save_model:
            from dlrm_tvm.interop.reference import save_reference_checkpoint

            save_reference_checkpoint(opts.save_model, cfg, state,
                                      extra={"iter": summary["steps"]})
            summary["saved_model"] = str(opts.save_model)
            log.info("model -> %s (facebookresearch/dlrm torch.save layout)", opts.save_model)
        write_summary(out / "summary.json", summary)
    return summary
