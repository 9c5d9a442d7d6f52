"""The exchanges a training step needs, as an interface: ``Comm``.

The trainer (runtime/trainer.py) runs the same stages at every rank count and calls a Comm
for what crosses ranks. ``LocalComm`` is one rank: every exchange is the identity and is
complete when posted, with no copy and no mpi4py import. ``runtime/mpi.py``'s ``MPIComm`` is N
ranks: non-blocking MPI collectives advanced by a progress thread (the only module that
imports mpi4py).

``launched_ranks`` decides, before anything is written, whether a run is one rank or N: no
launcher's variable set, one rank and no MPI; under any launcher (mpiexec of MPICH, Intel MPI or
Open MPI, Slurm's srun, PMIx, ...: ``LAUNCHERS``) the rank count MPI itself reports, refused with
a LaunchError when the launcher started several tasks that MPI cannot join into one run.

An exchange is posted and returns an ``Op``; ``wait(op)`` blocks until it completes. Every Op
records when it was posted, completed and waited for, so a run can report each exchange's
bytes, exposed and overlapped time (``take_ops``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from dlrm_tvm.config import ConfigError

# --------------------------------------------------------------------------- launchers
# Who started this process, from the variables each launcher exports to its tasks, innermost
# first: an MPI launcher run inside a Slurm step (hydra or Open MPI starting its daemons with
# srun) is named before Slurm, and its counts win over the step's (which counts daemons).
# A name ending in "*" is a prefix. Only these mark a launch: SLURM_NTASKS, SLURM_JOB_ID and
# SLURM_PROCID alone are also set in a plain sbatch script or salloc shell (one process), so a
# Slurm launch is an srun step (SLURM_STEP_ID / SLURM_STEP_NUM_TASKS).
LAUNCHERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("MPICH/Intel MPI hydra (mpiexec)", ("HYDI_CONTROL_FD", "MPI_LOCALNRANKS", "MPI_LOCALRANKID")),
    ("PMI-1/PMI-2 (hydra mpiexec, srun --mpi=pmi2)",
     ("PMI_FD", "PMI_PORT", "PMI_ID", "PMI_RANK", "PMI_SIZE", "PMI_JOBID")),
    ("Open MPI (mpirun)", ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                           "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE")),
    ("MVAPICH (mpirun_rsh)", ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK")),
    ("IBM jsrun", ("JSM_NAMESPACE_SIZE", "JSM_NAMESPACE_RANK")),
    ("HPE Cray PALS", ("PALS_RANKID", "PALS_LOCAL_RANKID", "PALS_APID")),
    ("PMIx (srun --mpi=pmix, Open MPI / PRRTE)",
     ("PMIX_RANK", "PMIX_NAMESPACE", "PMIX_VERSION", "PMIX_SERVER_URI*")),
    ("Slurm srun", ("SLURM_STEP_ID", "SLURM_STEPID", "SLURM_STEP_NUM_TASKS")),
)
PMIX = LAUNCHERS[-2][0]
SLURM = LAUNCHERS[-1][0]
# What the launchers claim, innermost first. World counts before node-local ones (a local count
# is a lower bound of the world: more than one local task means more than one rank).
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "JSM_NAMESPACE_SIZE",
             "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_STEP_NUM_TASKS")
RANK_VARS = ("PMI_RANK", "PMI_ID", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK",
             "JSM_NAMESPACE_RANK", "PALS_RANKID", "PMIX_RANK", "SLURM_PROCID")


def _matches(name: str, pattern: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern


def _int(v: str | None) -> int | None:
    return int(v) if v is not None and v.strip().isdigit() else None


@dataclass(frozen=True)
class Launch:
    """Who started this process and what its environment claims: ``launchers`` (names,
    innermost first), ``size``/``rank`` (None: no variable says), ``env`` (the variables
    seen). A claim only tells whether MPI must agree; the rank and size come from MPI."""

    launchers: tuple[str, ...]
    size: int | None
    rank: int | None
    env: tuple[tuple[str, str], ...]

    @property
    def pmix(self) -> bool:
        return PMIX in self.launchers

    @property
    def claims_many(self) -> bool:
        """The environment says this is one task of several."""
        return (self.size or 1) > 1 or (self.rank or 0) > 0

    def describe(self) -> str:
        names = " with ".join(self.launchers)
        return f"{names} ({' '.join(f'{k}={v}' for k, v in self.env)})"


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launcher that started this process, from its environment (``os.environ`` by
    default); None when no launcher's variable is set (a plain single-process run)."""
    env = os.environ if environ is None else environ
    names = [name for name, signs in LAUNCHERS
             if any(_matches(k, s) for s in signs for k in env)]
    if not names:
        return None
    seen = [k for k in sorted(env)
            if any(_matches(k, s) for _, signs in LAUNCHERS for s in signs)
            or k in SIZE_VARS or (k in RANK_VARS and (k != "SLURM_PROCID" or SLURM in names))]
    size = next((n for k in SIZE_VARS if (n := _int(env.get(k))) is not None), None)
    rank = next((n for k in RANK_VARS if (k != "SLURM_PROCID" or SLURM in names)
                 and (n := _int(env.get(k))) is not None), None)
    return Launch(tuple(names), size, rank, tuple((k, env[k]) for k in seen))


class LaunchError(ConfigError):
    """The launcher started several tasks but MPI cannot join them into one run (exit status
    2, before anything is written). Only the task claiming rank 0 prints it."""

    def __init__(self, msg: str, launch: Launch, every_task: bool = False):
        super().__init__(msg)
        self.quiet = (launch.rank or 0) > 0 and not every_task


def _fix(launch: Launch) -> str:
    n = launch.size if (launch.size or 1) > 1 else "N"
    return (f"start the ranks with the mpiexec of the MPI that mpi4py loads (`mpiexec -n {n} "
            f"dlrm-tvm train ...`), or under Slurm use `srun --mpi=pmix` (or `--mpi=pmi2`) "
            f"with an mpi4py whose MPI library supports it (docs/cluster.md)")


def _library(library: str) -> str:
    first = library.strip().splitlines()[0] if library.strip() else "the MPI library"
    return " ".join(first.split())


def pmix_unsupported(library: str) -> bool:
    """An MPICH build without PMIx (the ``mpich`` wheel) aborts MPI_Init whenever a PMIx
    launcher's variables are set, before Python can say why; its library version string ends
    with the configure line, which names PMIx when the build has it."""
    return library.startswith("MPICH") and "pmix" not in library.lower()


def check_launch(launch: Launch, world_size: int | None, library: str) -> None:
    """Raise LaunchError when the launcher started this process as one of several tasks but
    MPI cannot agree: ``world_size`` None (before MPI_Init) checks that this MPI library can
    start under the launcher at all; after MPI_Init, a world of 1 rank under a launcher that
    claims more means this MPI did not get its rank and size from that launcher, and every
    task would train alone into the same run directory."""
    seen = launch.describe()
    many = (f"one of {launch.size} tasks" if (launch.size or 1) > 1
            else f"task {launch.rank} of several" if launch.claims_many else "a task")
    if world_size is None:
        if launch.pmix and pmix_unsupported(library):
            raise LaunchError(
                f"refusing to start: {seen} started this process as {many}, but this MPI "
                f"library ({_library(library)}, built without PMIx) cannot start under PMIx "
                f"(its MPI_Init would abort). Nothing was written. Fix: {_fix(launch)}", launch)
        return
    if world_size == 1 and launch.rank is not None and launch.size is None:
        raise LaunchError(
            f"refusing to start: {seen} started this process as {many}, with a rank but no "
            f"size, so whether it is one task of several cannot be told, and MPI "
            f"({_library(library)}) sees a "
            f"world of 1 rank: each such task would train alone into the same run directory. "
            f"Nothing was written. Fix: {_fix(launch)}", launch, every_task=True)
    if world_size == 1 and launch.claims_many:
        raise LaunchError(
            f"refusing to start: {seen} started this process as {many}, but MPI "
            f"({_library(library)}) sees a world of 1 rank: the MPI library did not get its "
            f"rank and size from this launcher (another MPI's launcher, or srun without a PMI "
            f"plugin this MPI speaks), so every task would train alone into the same run "
            f"directory. Nothing was written. Fix: {_fix(launch)}", launch)


def launched_ranks() -> int:
    """How many ranks this run has. With no launcher's variable set: 1, without initialising
    MPI (the single-process path never imports mpi4py). Under any launcher: MPI's world size
    (MPI initialised through runtime/mpi.py), after ``check_launch``; raises LaunchError
    (a ConfigError, exit status 2) before anything is written when MPI and the launcher
    disagree. A single task under a launcher (``mpiexec -n 1``, ``srun -n 1``) is 1 rank."""
    launch = detect_launch()
    if launch is None:
        return 1
    from .mpi import init_world, library_version

    library = library_version()
    if launch.pmix and pmix_unsupported(library) and launch.size == 1 and not launch.rank:
        return 1  # srun --mpi=pmix -n 1 with an MPI that cannot start there: one rank, no MPI
    check_launch(launch, None, library)
    world = init_world()
    check_launch(launch, world.Get_size(), library)
    return world.Get_size()


@dataclass
class Op:
    """One non-blocking exchange: its requests and when it was posted, completed, waited."""

    name: str
    reqs: list
    nbytes: int
    posted: float = field(default_factory=time.perf_counter)
    done: float | None = None
    wait_start: float | None = None
    wait_end: float | None = None
    keep: object = None  # buffers that must live until the exchange completes

    @property
    def exposed(self) -> float:
        return (self.wait_end or 0.0) - (self.wait_start or 0.0)

    @property
    def overlapped(self) -> float:
        """Seconds the exchange was in flight while this rank did something else."""
        end = min(self.done or self.posted, self.wait_start or self.posted)
        return max(0.0, end - self.posted)


class Comm:
    """What the trainer asks of the ranks. ``rank``/``size``; non-blocking ``alltoallv`` and
    ``allreduce`` returning Ops; ``wait``; object collectives for set-up and results."""

    rank: int = 0
    size: int = 1

    def alltoallv(self, name: str, send: list[np.ndarray], recv_counts: list[int],
                  dtype) -> tuple[np.ndarray, list[np.ndarray], Op]:
        """Block ``send[q]`` goes to rank q; returns (receive buffer, its per-source views,
        op). The buffers are valid once ``wait(op)`` returned."""
        raise NotImplementedError

    def alltoall_counts(self, name: str, counts: np.ndarray) -> np.ndarray:
        """Blocking: ``counts[q]`` to rank q; returns what each rank sent here."""
        raise NotImplementedError

    def allreduce(self, name: str, arrays: list[np.ndarray]) -> Op:
        """Sum every array over the ranks, in place."""
        raise NotImplementedError

    def wait(self, op: Op) -> None:
        raise NotImplementedError

    def take_ops(self) -> list[Op]:
        return []

    def gather(self, obj, root: int = 0) -> list | None:
        raise NotImplementedError

    def bcast(self, obj, root: int = 0):
        raise NotImplementedError

    def barrier(self) -> None:
        pass

    def abort(self, exc: BaseException) -> None:
        """End every rank after ``exc`` on this one (no survivor left waiting)."""

    def close(self) -> None:
        pass


class LocalComm(Comm):
    """One rank: exchanges are the identity, complete when posted."""

    rank = 0
    size = 1

    def alltoallv(self, name, send, recv_counts, dtype):
        buf = send[0] if send else np.zeros(0, dtype)
        op = Op(name, [], 0, done=time.perf_counter())
        return buf, [buf], op

    def alltoall_counts(self, name, counts):
        return np.asarray(counts, np.int64).copy()

    def allreduce(self, name, arrays):
        return Op(name, [], 0, done=time.perf_counter())

    def wait(self, op: Op) -> None:
        op.wait_start = op.wait_end = time.perf_counter()

    def gather(self, obj, root: int = 0) -> list:
        return [obj]

    def bcast(self, obj, root: int = 0):
        return obj


class CommTimeout(RuntimeError):
    pass


class CollectiveError(ConfigError):
    """An error every rank detects alike (a config check at start): each rank exits with it,
    no abort needed; only rank 0 prints it."""

    def __init__(self, msg: str, rank: int):
        super().__init__(msg)
        self.quiet = rank != 0


def reduce_timings(comm: Comm, timings: dict[str, list[float]], ops: list[Op],
                   steps: int) -> dict | None:
    """Per-step medians of each phase, and per exchange: bytes, exposed and overlapped
    seconds, the mean over ranks (on rank 0; None elsewhere)."""
    mine = {k: float(np.median(v)) for k, v in timings.items()}
    ex: dict[str, dict[str, float]] = {}
    for op in ops:
        e = ex.setdefault(op.name, {"bytes": 0.0, "exposed_s": 0.0, "overlapped_s": 0.0,
                                    "in_flight_s": 0.0})
        e["bytes"] += op.nbytes / steps
        e["exposed_s"] += op.exposed / steps
        e["overlapped_s"] += op.overlapped / steps
        e["in_flight_s"] += ((op.done or op.posted) - op.posted) / steps
    allr = comm.gather((mine, ex), root=0)
    if comm.rank != 0:
        return None
    phases = sorted({k for m, _ in allr for k in m})
    names = sorted({k for _, e in allr for k in e})
    n = len(allr)
    return {
        "per_rank_phases_ms": [{k: 1e3 * v for k, v in m.items()} for m, _ in allr],
        "per_rank_exposed_ms": [{k: 1e3 * v["exposed_s"] for k, v in e.items()}
                                for _, e in allr],
        "phases_ms": {k: 1e3 * sum(m.get(k, 0.0) for m, _ in allr) / n for k in phases},
        "exchanges": {k: {f.replace("_s", "_ms") if f != "bytes" else "bytes_per_rank":
                          (sum(e.get(k, {}).get(f, 0.0) for _, e in allr) / n)
                          * (1.0 if f == "bytes" else 1e3)
                          for f in ("bytes", "exposed_s", "overlapped_s", "in_flight_s")}
                      for k in names},
    }
