"""The exchanges a training step needs, as an interface: ``Comm``.

The trainer (runtime/trainer.py) runs the same stages at every rank count and calls a Comm
for what crosses ranks. ``LocalComm`` is one rank: every exchange is the identity and is
complete when posted, with no copy and no mpi4py import. ``runtime/mpi.py``'s ``MPIComm`` is N
ranks: non-blocking MPI collectives advanced by a progress thread (the only module that
imports mpi4py).

An exchange is posted and returns an ``Op``; ``wait(op)`` blocks until it completes. Every Op
records when it was posted, completed and waited for, so a run can report each exchange's
bytes, exposed and overlapped time (``take_ops``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from dlrm_tvm.config import ConfigError

ENV_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


def launched_ranks() -> int:
    """How many ranks the launcher started (1 when not under mpiexec). Read from the
    launcher's environment, so that a single-process run never initialises MPI."""
    for v in ENV_SIZE_VARS[:2]:
        if os.environ.get(v, "").isdigit():
            return int(os.environ[v])
    return 1


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
