"""``dlrm-tvm train``: compile (or load) the step, run it, write metrics and a summary."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from dlrm_tvm.config import Config, ConfigError
from dlrm_tvm.progress import Progress

log = logging.getLogger("dlrm_tvm")


def _same_compiled_shape(a: Config, b: Config) -> bool:
    return (a.model == b.model and a.train.batch_size == b.train.batch_size
            and a.train.precision == b.train.precision)


def get_compiled(cfg: Config, artifact: str | Path | None, target_name: str, out_dir: Path,
                 prefer: tuple[str, ...] = ()):
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
    art = compile_artifact(cfg, target, out_dir / "artifact", prefer=prefer)
    log.info("compiled in %.1fs -> %s", time.perf_counter() - t0, art.path)
    vm, art = load_artifact(art.path)
    return vm, art.meta


def train(cfg: Config, out_dir: str | Path, artifact: str | Path | None = None,
          target: str = "host", prefer: tuple[str, ...] = (), quiet: bool = False,
          dist: dict | None = None, save_params: bool = False) -> dict:
    """Train ``cfg.train.steps`` steps on ``cfg.data``; returns the summary it writes.

    Under ``mpiexec -n N`` (N > 1) every rank runs this: the tables are sharded over the ranks
    and each rank trains its slice of every global batch (runtime/distributed.py); ``dist``
    holds the distributed options (sharding, rank_memory_gib, threads, comm_timeout,
    progress_thread). Only rank 0 writes files and prints progress. ``save_params`` writes
    every fp32 parameter to RUNDIR/params.npz at the end (gathered on rank 0)."""
    from dlrm_tvm.runtime.distributed import launched_ranks

    out = Path(out_dir)
    ranks = launched_ranks()
    rank = 0
    dist_info = None
    if ranks > 1:
        from dlrm_tvm.runtime import distributed as D

        if artifact is not None:
            raise ConfigError("--artifact holds a one-rank module; a distributed run compiles "
                              "each rank's shards itself: drop --artifact under mpiexec")
        comm = D.comm_world()
        rank = comm.Get_rank()
        try:
            if rank == 0:
                out.mkdir(parents=True, exist_ok=True)
            comm.Barrier()
            trainer, dist_info = D.setup_rank(cfg, out if rank == 0 else None, target, prefer,
                                              log=(print if not quiet else log.info),
                                              **(dist or {}))
            meta = {"target": dist_info["target"], "schedules": {}, "tvm_version": _tvm_ver()}
            return _train_loop(cfg, out, trainer, meta, quiet, rank, dist_info, save_params)
        except D.CollectiveError:
            raise  # every rank has it: each exits with it (rank 0 prints it)
        except BaseException as e:  # any failure on any rank ends every rank
            D.abort_on_error(comm, e)
            raise
    out.mkdir(parents=True, exist_ok=True)
    cfg.check_fits()
    vm, meta = get_compiled(cfg, artifact, target, out, prefer)
    from dlrm_tvm.runtime.trainer import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(cfg, vm)
    log.info("initialised parameters in %.1fs (%.2f GiB)", time.perf_counter() - t0,
             cfg.model.param_bytes() / 2**30)
    return _train_loop(cfg, out, trainer, meta, quiet, rank, dist_info, save_params)


def _tvm_ver() -> str:
    import tvm

    return tvm.__version__


def _train_loop(cfg: Config, out: Path, trainer, meta: dict, quiet: bool, rank: int,
                dist_info: dict | None, save_params: bool) -> dict:
    from dlrm_tvm.data import SyntheticData

    lead = rank == 0
    if lead:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    # every rank draws the same global batches; a rank keeps only its slice of each
    data = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, cfg.train.seed)
    steps = cfg.train.steps
    prog = Progress(steps, "train") if not quiet and lead else None
    times, losses = [], []
    timings: dict[str, list[float]] = {}
    metrics = open(out / "metrics.jsonl", "w") if lead else None
    try:
        for s in range(steps):
            batch = data.next_batch()
            t = time.perf_counter()
            r = trainer.step(batch, timings)
            dt = time.perf_counter() - t
            times.append(dt)
            losses.append(r["loss"])
            if not np.isfinite(r["loss"]):
                raise FloatingPointError(f"loss became {r['loss']} at step {s}")
            if metrics and (s % cfg.train.log_every == 0 or s == steps - 1):
                metrics.write(json.dumps({"step": s, "loss": r["loss"], "lr": r["lr"],
                                          "ms": dt * 1e3}) + "\n")
            if prog:
                prog.update(s + 1, loss=float(np.mean(losses[-10:])), ms_per_step=dt * 1e3)
    finally:
        if metrics:
            metrics.close()
    warm = times[min(len(times) - 1, 2):] if times else []
    med = float(np.median(warm)) if warm else float("nan")
    summary = {
        "steps": steps,
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
    }
    state = None
    if dist_info is not None:
        from dlrm_tvm.runtime.distributed import reduce_timings

        # the first steps (warm-up) are left out, as for the median above
        skip = min(len(times) - 1, 2) if times else 0
        tim = {k: v[skip:] for k, v in timings.items()}
        ops = trainer.progress.take_ops()
        per_step = max(1, len(ops) // max(1, steps))
        red = reduce_timings(trainer.comm, tim, ops[skip * per_step:], max(1, steps - skip))
        if save_params:
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
        if save_params:
            state = trainer.state()
    if lead:
        if state is not None:
            np.savez(out / "params.npz", **state)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary
