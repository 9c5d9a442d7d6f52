"""Setting a trainer up, at any rank count: compile (or load) what this rank runs, build the
runtime's Trainer over the right Comm.

One rank: the artifact's single module (or a fresh compile) and ``LocalComm``. N ranks under
a launcher (``mpiexec``, ``mpirun``, ``srun``; the count from MPI: runtime/comm.py's
``launched_ranks``): cores and threads for this rank, the config agreed by every rank, the
sharding plan (made on rank 0, broadcast, printed and saved), the two modules this rank
compiles (its shards' sparse functions at the global batch G, the dense functions at G/N with
the loss scaled by 1/G and the exchange hooks), then the Trainer over ``MPIComm``. The
driver compiles; runtime/ only runs what it is given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass

from dlrm_tvm.config import Config, ConfigError


@dataclass
class DistOptions:
    """How a run uses its ranks (``dlrm-tvm train``'s distributed flags)."""

    sharding: str = "auto"  # auto, table or row (runtime/sharding.py)
    rank_memory_gib: float | None = None  # table memory one rank may hold (default: 80% of
    # the node's available memory over its ranks)
    threads: int | None = None  # TVM threads per rank (default: its share of the cores)
    comm_timeout: float = 300.0  # seconds an exchange may wait before the job is aborted
    progress_thread: bool = True  # advance MPI from a thread while compiled code runs
    progress_poll_us: float = 50.0

    @staticmethod
    def of(d) -> DistOptions:
        if d is None:
            return DistOptions()
        if isinstance(d, DistOptions):
            return d
        return DistOptions(**{k: v for k, v in d.items() if v is not None})


def start_mpi(opts: DistOptions):
    """(MPIComm, this rank's layout): MPI initialised, the rank pinned to its share of the
    node's cores and TVM's thread count set (before TVM's pool and the progress thread start:
    threads inherit the pinning)."""
    from dlrm_tvm.runtime.mpi import MPIComm, layout_threads, world

    layout = layout_threads(world(), opts.threads)
    comm = MPIComm(thread=opts.progress_thread, poll_s=opts.progress_poll_us * 1e-6,
                   timeout_s=opts.comm_timeout)
    return comm, layout


def setup_ranks(cfg: Config, comm, layout: dict, out_dir, target_name: str = "host",
                prefer: tuple[str, ...] = (), opts: DistOptions | None = None, log=print,
                start=None, tuning: dict | None = None):
    """Everything before the first step on this rank (under mpiexec, after ``start_mpi``):
    returns (trainer, info) where info holds the layout, plan and target for the summary."""
    from dlrm_tvm.pipeline import compile_dlrm, load_vm
    from dlrm_tvm.runtime.amx import needs_amx
    from dlrm_tvm.runtime.comm import CollectiveError
    from dlrm_tvm.runtime.mpi import check_same_config, default_rank_budget, format_layout
    from dlrm_tvm.runtime.sharding import ShardingPlan, make_plan
    from dlrm_tvm.runtime.trainer import StepHooks, Trainer
    from dlrm_tvm.targets import resolve_target

    opts = opts or DistOptions()
    R, r = comm.size, comm.rank
    check_same_config(comm, cfg)
    if cfg.train.batch_size % R:
        raise CollectiveError(f"the global batch {cfg.train.batch_size} does not divide into "
                              f"{R} ranks: choose --mini-batch-size as a multiple of {R}", r)
    layouts = comm.gather(layout, root=0)
    budget = (int(opts.rank_memory_gib * 2**30) if opts.rank_memory_gib
              else default_rank_budget(comm))
    plan_d = None
    if r == 0:
        try:
            plan = make_plan(cfg, R, opts.sharding, budget)
            plan_d = plan.to_dict()
        except ConfigError as e:  # every rank learns it and stops alike
            plan_d = {"error": str(e)}
    plan_d = comm.bcast(plan_d, root=0)
    if "error" in plan_d:
        raise CollectiveError(plan_d["error"], r)
    plan = ShardingPlan.from_dict(plan_d)
    if r == 0:
        log(format_layout(layouts))
        log(plan.format())
        if out_dir is not None:
            plan.save(os.path.join(out_dir, "sharding.json"))
            with open(os.path.join(out_dir, "layout.json"), "w") as f:
                json.dump(layouts, f, indent=1)
    target = resolve_target(target_name)
    hooks = StepHooks().register()  # the VM resolves its extern functions when it loads
    shards = plan.shards_of(r)
    t0 = time.perf_counter()
    sparse_vm = None
    if shards:
        shard_model = dataclasses.replace(cfg.model, table_rows=tuple(s.rows for s in shards))
        res = compile_dlrm(cfg, target, batch_size=cfg.train.batch_size, prefer=prefer,
                           model=shard_model, parts=("sparse",), tuning=tuning)
        sparse_vm = load_vm(res.executable, needs_amx(target.tvm_target()))
    G = cfg.train.batch_size
    res = compile_dlrm(cfg, target, batch_size=G // R, prefer=prefer, parts=("dense",),
                       loss_scale=1.0 / G, hooks=True, tuning=tuning)
    dense_vm = load_vm(res.executable, needs_amx(target.tvm_target()))
    secs = comm.gather(time.perf_counter() - t0, root=0)
    if r == 0:
        log(f"compiled per rank for {target.name}: {max(secs):.1f} s (slowest rank)")
    trainer = Trainer(cfg, sparse_vm, start=start, comm=comm, plan=plan, dense_vm=dense_vm,
                      hooks=hooks)
    comm.barrier()
    info = {"ranks": R, "layout": layouts, "sharding": plan_d,
            "progress_thread": comm.progress_thread, "target": target.to_dict()}
    return trainer, info
