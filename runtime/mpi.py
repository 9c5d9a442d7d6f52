"""N ranks under MPI: the ``Comm`` of runtime/comm.py over mpi4py (the only module that
imports it), its progress engine, and the per-rank set-up (cores, config agreement, memory).

MPICH advances non-blocking collectives only inside MPI calls, so ``Progress`` tests the
pending requests from a background thread while the compiled module computes (the GIL is
released inside compiled calls): the paper's "framework MPI progression". A wait that exceeds
``comm_timeout`` raises CommTimeout naming the exchange; an exception on any rank prints
"rank R failed: ..." and aborts the whole job (MPI_Abort), so no rank is left waiting.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time

import numpy as np

from dlrm_tvm.config import Config

from .comm import CollectiveError, Comm, CommTimeout, Op


def _counts_displs(counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(counts, np.int64)
    d = np.zeros_like(c)
    np.cumsum(c[:-1], out=d[1:])
    return c, d


class MPIComm(Comm):
    """COMM_WORLD with a progress engine: exchanges are posted non-blocking and advanced by
    the progress thread (``thread``; needs MPI_THREAD_MULTIPLE) until waited for."""

    def __init__(self, thread: bool = True, poll_s: float = 50e-6, timeout_s: float = 300.0):
        from mpi4py import MPI

        self.MPI = MPI
        self.world = init_world()
        self.rank, self.size = self.world.Get_rank(), self.world.Get_size()
        ok = MPI.Query_thread() == MPI.THREAD_MULTIPLE
        self.progress = Progress(thread=thread and ok, poll_s=poll_s, timeout_s=timeout_s)

    @property
    def progress_thread(self) -> bool:
        return self.progress.thread is not None

    def alltoallv(self, name, send, recv_counts, dtype):
        MPI = self.MPI
        sc, sd = _counts_displs([a.size for a in send])
        rc, rd = _counts_displs(recv_counts)
        sbuf = np.concatenate(send) if send else np.zeros(0, dtype)
        rbuf = np.empty(int(rc.sum()), dtype)
        mt = MPI._typedict[np.dtype(dtype).char]
        req = self.world.Ialltoallv([sbuf, (sc, sd), mt], [rbuf, (rc, rd), mt])
        # bytes that leave or reach this rank (its block to itself moves no data between ranks)
        moved = (sbuf.nbytes - send[self.rank].nbytes if send else 0) + \
            rbuf.itemsize * (int(rc.sum()) - int(rc[self.rank]))
        op = self.progress.post(name, [req], moved)
        op.keep = sbuf  # the send buffer must live until completion
        parts = [rbuf[d:d + c] for c, d in zip(rc, rd, strict=True)]
        return rbuf, parts, op

    def alltoall_counts(self, name: str, counts: np.ndarray) -> np.ndarray:
        """Blocking: ``counts[q]`` to rank q; returns what each rank sent here."""
        out = np.empty(self.size, np.int64)
        self.wait(self.progress.post(name, [self.world.Ialltoall(counts, out)], 16 * self.size))
        return out

    def allreduce(self, name, arrays):
        MPI = self.MPI
        reqs = [self.world.Iallreduce(MPI.IN_PLACE, a, op=MPI.SUM) for a in arrays]
        return self.progress.post(name, reqs, 2 * sum(a.nbytes for a in arrays))

    def wait(self, op: Op) -> None:
        self.progress.wait(op)

    def take_ops(self) -> list[Op]:
        return self.progress.take_ops()

    def gather(self, obj, root: int = 0):
        return self.world.gather(obj, root=root)

    def allgather(self, obj) -> list:
        return self.world.allgather(obj)

    def bcast(self, obj, root: int = 0):
        return self.world.bcast(obj, root=root)

    def barrier(self) -> None:
        self.world.Barrier()

    def abort(self, exc: BaseException) -> None:
        print(f"dlrm-tvm: rank {self.rank} of {self.size} failed: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        time.sleep(0.5)  # let mpiexec forward the line before the abort tears the job down
        self.world.Abort(1)

    def close(self) -> None:
        self.progress.close()


# --------------------------------------------------------------------------- start-up
def _load_mpi():
    """The mpi4py.MPI module, loaded without initialising MPI when it is loaded here (so that
    the library can be asked what it is first); ``init_world`` initialises it."""
    import mpi4py

    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc(initialize=False, finalize=True)  # finalised at exit, as mpi4py would
    from mpi4py import MPI

    return MPI


def library_version() -> str:
    """The MPI library's version string (MPI_Get_library_version: allowed before MPI_Init)."""
    return _load_mpi().Get_library_version()


def init_world():
    """MPI.COMM_WORLD, MPI initialised with MPI_THREAD_MULTIPLE (the progress thread needs it)
    if it was not yet. runtime/comm.py's ``launched_ranks`` calls it under a launcher, after
    checking that the library can start there."""
    MPI = _load_mpi()
    if not MPI.Is_initialized():
        MPI.Init_thread(MPI.THREAD_MULTIPLE)
    return MPI.COMM_WORLD


def world():
    """MPI.COMM_WORLD (initialising MPI)."""
    return init_world()


# --------------------------------------------------------------------------- threads
def parse_cpulist(text: str) -> list[int]:
    """``0-3,8,10-11`` (sysfs, taskset) -> [0, 1, 2, 3, 8, 10, 11]."""
    out: list[int] = []
    for part in text.strip().split(","):
        if part:
            a, _, b = part.partition("-")
            out.extend(range(int(a), int(b or a) + 1))
    return out


def cpu_topology(sysfs: str = "/sys/devices/system") -> dict[int, tuple[int, int, int]]:
    """cpu -> (NUMA node, socket, core id), from sysfs; {} where it cannot be read."""
    import glob

    node_of: dict[int, int] = {}
    for f in glob.glob(os.path.join(sysfs, "node", "node[0-9]*", "cpulist")):
        n = int(os.path.basename(os.path.dirname(f))[4:])
        with open(f) as fh:
            node_of.update(dict.fromkeys(parse_cpulist(fh.read()), n))
    topo = {}
    for d in glob.glob(os.path.join(sysfs, "cpu", "cpu[0-9]*", "topology")):
        cpu = int(os.path.basename(os.path.dirname(d))[3:])
        try:
            with open(os.path.join(d, "physical_package_id")) as a, \
                    open(os.path.join(d, "core_id")) as b:
                topo[cpu] = (node_of.get(cpu, 0), int(a.read()), int(b.read()))
        except (OSError, ValueError):
            return {}
    return topo


def split_cores(affinities: list[list[int]], local_rank: int,
                topo: dict[int, tuple[int, int, int]] | None = None) -> list[int]:
    """This node-local rank's cores, given every local rank's affinity as the launcher set it.
    Ranks bound to the same cpus (no binding: all ranks on the node; ``--bind-to socket``: a
    socket's ranks) split them into equal shares, contiguous in topology order (NUMA node,
    socket, core), so a share stays inside one NUMA node when the split allows and keeps a
    core's hardware threads together; a rank the launcher bound to cpus of its own keeps them.
    More ranks than cpus in a group: ranks share cpus round robin."""
    topo = topo or {}
    mine = sorted(affinities[local_rank])
    group = [r for r, a in enumerate(affinities) if sorted(a) == mine]
    k, i = len(group), group.index(local_rank)
    cpus = sorted(mine, key=lambda c: (*topo.get(c, (0, 0, c)), c))
    if len(cpus) < k:
        return [cpus[i % len(cpus)]]
    share = len(cpus) // k
    return sorted(cpus[i * share:(i + 1) * share])


def layout_threads(world, threads: int | None = None) -> dict:
    """Give this rank its share of its cores, before TVM's pool starts (``split_cores``: the
    launcher's binding is kept, the cpus ranks share are split by topology): pins the process
    to those cores and sets TVM_NUM_THREADS (TVM_BIND_THREADS=0: TVM's own pinning puts worker
    i on core i in every process, all ranks on the same cores; TVM_NOTES)."""
    from mpi4py import MPI

    local = world.Split_type(MPI.COMM_TYPE_SHARED)
    lr = local.Get_rank()
    affinities = local.allgather(sorted(os.sched_getaffinity(0)))
    local.Free()
    mine = split_cores(affinities, lr, cpu_topology())
    os.sched_setaffinity(0, mine)
    n = threads or len(mine)
    os.environ["TVM_NUM_THREADS"] = str(n)
    os.environ["TVM_BIND_THREADS"] = "0"
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    return {"rank": world.Get_rank(), "host": socket.gethostname(), "pid": os.getpid(),
            "local_rank": lr, "cores": mine, "threads": n}


def format_layout(rows: list[dict]) -> str:
    out = [f"layout: {len(rows)} ranks"]
    for r in rows:
        c = r["cores"]
        cs = f"{c[0]}-{c[-1]}" if len(c) > 1 and c == list(range(c[0], c[-1] + 1)) else \
            ",".join(map(str, c))
        out.append(f"  rank {r['rank']}: host {r['host']} pid {r['pid']} cores {cs} "
                   f"threads {r['threads']}")
    return "\n".join(out)


# --------------------------------------------------------------------------- progress
class Progress:
    """Advances pending requests from a background thread (``thread=True``) while the main
    thread is inside compiled code, and waits for them with a timeout."""

    def __init__(self, thread: bool = True, poll_s: float = 50e-6, timeout_s: float = 300.0):
        self.lock = threading.Condition()
        self.pending: list[Op] = []
        self.poll_s, self.timeout_s = poll_s, timeout_s
        self.ops: list[Op] = []
        self._stop = False
        self._waiting = False
        self.thread = None
        if thread:
            self.thread = threading.Thread(target=self._run, name="mpi-progress", daemon=True)
            self.thread.start()

    def _test(self, op: Op) -> bool:
        from mpi4py import MPI

        if op.done is None and MPI.Request.Testall(op.reqs):
            op.done = time.perf_counter()
            self.pending.remove(op)
        return op.done is not None

    def _run(self) -> None:
        while True:
            with self.lock:
                while (not self.pending or self._waiting) and not self._stop:
                    self.lock.wait()
                if self._stop:
                    return
                for op in list(self.pending):
                    self._test(op)
            time.sleep(self.poll_s)

    def post(self, name: str, reqs: list, nbytes: int) -> Op:
        op = Op(name, list(reqs), nbytes)
        with self.lock:
            self.pending.append(op)
            self.ops.append(op)
            self.lock.notify()
        return op

    def wait(self, op: Op) -> None:
        """Until ``op`` completes: the calling thread tests it in a tight loop while the
        progress thread pauses (two threads polling one core fight over it and the GIL: an
        exchange waited for that way ran several times slower than a blocking one)."""
        op.wait_start = time.perf_counter()
        with self.lock:
            self._waiting = True
        try:
            n = 0
            while True:
                with self.lock:
                    if self._test(op):
                        break
                    n += 1
                    if n % 256 == 0:  # timestamp the others too
                        for other in list(self.pending):
                            self._test(other)
                        if time.perf_counter() - op.wait_start > self.timeout_s:
                            raise CommTimeout(
                                f"{op.name} did not complete within {self.timeout_s:.0f} s "
                                f"(another rank stopped or hangs)")
        finally:
            with self.lock:
                self._waiting = False
                self.lock.notify()
        op.wait_end = time.perf_counter()

    def take_ops(self) -> list[Op]:
        with self.lock:
            ops, self.ops = self.ops, []
        return ops

    def close(self) -> None:
        with self.lock:
            self._stop = True
            self.lock.notify()
        if self.thread is not None:
            self.thread.join(timeout=1.0)


# --------------------------------------------------------------------------- start checks
def config_digest(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def check_same_config(comm, cfg: Config) -> None:
    """Raise ConfigError on every rank if any rank was given a different config."""
    digests = comm.allgather(config_digest(cfg))
    if len(set(digests)) > 1:
        groups: dict[str, list[int]] = {}
        for r, d in enumerate(digests):
            groups.setdefault(d, []).append(r)
        desc = "; ".join(f"ranks {v} have config {k}" for k, v in groups.items())
        raise CollectiveError(f"the ranks were started with different configs ({desc}): every "
                          f"rank must get the same --config and flags", comm.rank)


def default_rank_budget(comm) -> int | None:
    """Table memory one rank may hold: 80% of the node's available memory over its ranks."""
    from mpi4py import MPI

    from dlrm_tvm.config import available_memory

    local = comm.world.Split_type(MPI.COMM_TYPE_SHARED)
    n = local.Get_size()
    local.Free()
    avail = available_memory()
    return None if avail is None else int(0.8 * avail / n)


# --------------------------------------------------------------------------- MPI probe
def probe_mpi(sizes=(8, 1 << 10, 1 << 14, 1 << 17, 1 << 20, 1 << 22), reps: int = 20) -> dict:
    """Median seconds of an alltoall (``n`` bytes from each rank to each other rank) and of an
    allreduce of ``n`` bytes, for each ``n``, on COMM_WORLD; with the fitted latency (s) and
    bandwidth (bytes/s) of t = latency + n / bandwidth. The result on rank 0; None elsewhere.
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    R = comm.Get_size()
    out: dict = {"ranks": R, "alltoall": [], "allreduce": []}
    for n in sizes:
        k = max(1, n // 4)
        a = np.ones(k * R, np.float32)
        b = np.empty_like(a)
        c = np.ones(k, np.float32)
        for name, fn in (("alltoall", lambda a=a, b=b: comm.Alltoall(a, b)),
                         ("allreduce",
                          lambda c=c: comm.Allreduce(MPI.IN_PLACE, c, op=MPI.SUM))):
            ts = []
            for _ in range(reps + 2):
                comm.Barrier()
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            worst = comm.reduce(float(np.median(ts[2:])), op=MPI.MAX, root=0)
            out[name].append({"bytes": 4 * k, "s": worst})
    if comm.Get_rank() != 0:
        return None
    for name in ("alltoall", "allreduce"):
        x = np.array([p["bytes"] for p in out[name]], float)
        y = np.array([p["s"] for p in out[name]], float)
        A = np.stack([np.ones_like(x), x], 1)
        (lat, inv_bw), *_ = np.linalg.lstsq(A, y, rcond=None)
        lat = max(float(lat), float(y.min()) * 0.5)
        out[f"{name}_latency_s"] = lat
        out[f"{name}_bandwidth_Bps"] = float(1.0 / max(inv_bw, 1e-15))
    return out
