"""Training per MPI rank: model-parallel embeddings, data-parallel MLPs, overlapped exchanges.

The only module that imports mpi4py. ``mpiexec -n N dlrm-tvm train ...`` runs this on every
rank; without mpiexec (or with one rank) the single-process trainer runs instead.

Every rank holds its table shards (runtime/sharding.py; the plan is made on rank 0 and
broadcast) and a replica of the MLPs, and compiles two modules: the sparse functions for its
shards at the global batch G, and the dense functions at its local batch G/N with the loss
scaled by 1/G, so that summing the ranks' losses and MLP gradients gives the global batch's
mean exactly as one rank computes it. One step, as torchrec's input_dist / lookup /
output_dist and the SC20 paper:

  1. each rank takes its slice of the global batch (samples r*G/N ...), validates it
  2. input_dist    alltoallv: each bag's lookups go to the ranks owning its table's rows
                   (a row-wise shard gets the lookups in its range, rebased to its first row)
  3. lookup        embedding_forward over the rank's shards for all G samples
  4. output_dist   alltoallv of the pooled rows back to the ranks owning the samples, posted
                   non-blocking; dense_forward_backward starts at once and runs the bottom
                   MLP, then calls back (graphs/dlrm.py HOOK_WAIT_POOLED) to wait for the
                   rows; partial sums of a row-wise table are added there, in row order
  5. dense         the rest of dense_forward_backward on the local slice; as each layer's
                   gradients are final it calls back (HOOK_GRAD_READY) and their allreduce
                   starts while the next layer's backward runs
  6. grad_dist     alltoallv: d_pooled goes back to the shard owners (the same gradient to
                   every row-wise shard of a table), posted from a callback as soon as the
                   interaction's backward has it (HOOK_DPOOLED_READY), during the bottom
                   MLP's backward
  7. update        the fused sparse update, while the allreduces progress
  8. dense_update  after the allreduces complete

Nothing is multiplied by the rank count and initialisation depends on (seed, table) only
(runtime/params.py), unlike the reference (dlrm issue 351). The exchanges are non-blocking;
a progress thread (``Progress``) tests the pending requests while the compiled module
computes (the GIL is released inside compiled calls), because MPICH advances non-blocking
collectives only inside MPI calls: the paper's "framework MPI progression".

Faults: an exception on any rank prints "rank R failed: ..." and aborts the whole job
(MPI_Abort); a rank that dies is reported by mpiexec, which ends the others; a wait that
exceeds ``comm_timeout`` aborts with the operation named. Ranks compare a hash of their config
at start and refuse to run if any differs. ``DLRM_TVM_FAULT=RANK:STEP:raise|kill`` injects a
fault (for the tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from dlrm_tvm.config import Config, ConfigError

ENV_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


def launched_ranks() -> int:
    """How many ranks the launcher started (1 when not under mpiexec). Read from the
    launcher's environment, so that a single-process run never initialises MPI."""
    for v in ENV_SIZE_VARS[:2]:
        if os.environ.get(v, "").isdigit():
            return int(os.environ[v])
    return 1


# --------------------------------------------------------------------------- threads
def layout_threads(comm, threads: int | None = None) -> dict:
    """Give this rank its share of the node's cores, before TVM's pool starts: pins the
    process to those cores and sets TVM_NUM_THREADS (TVM_BIND_THREADS=0: TVM's own pinning
    puts worker i on core i in every process, all ranks on the same cores; TVM_NOTES)."""
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    lr, ln = local.Get_rank(), local.Get_size()
    local.Free()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= ln:
        share = len(cores) // ln
        mine = cores[lr * share:(lr + 1) * share]
    else:  # more ranks than cores: ranks share cores round robin
        mine = [cores[lr % len(cores)]]
    os.sched_setaffinity(0, mine)
    n = threads or len(mine)
    os.environ["TVM_NUM_THREADS"] = str(n)
    os.environ["TVM_BIND_THREADS"] = "0"
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    return {"rank": comm.Get_rank(), "host": socket.gethostname(), "pid": os.getpid(),
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
class CommTimeout(RuntimeError):
    pass


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

    @property
    def exposed(self) -> float:
        return (self.wait_end or 0.0) - (self.wait_start or 0.0)

    @property
    def overlapped(self) -> float:
        """Seconds the exchange was in flight while this rank did something else."""
        end = min(self.done or self.posted, self.wait_start or self.posted)
        return max(0.0, end - self.posted)


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
class CollectiveError(ConfigError):
    """An error every rank detects alike (a config check at start): each rank exits with it,
    no abort needed; only rank 0 prints it."""

    def __init__(self, msg: str, rank: int):
        super().__init__(msg)
        self.quiet = rank != 0


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
                          f"rank must get the same --config and flags", comm.Get_rank())


def fault_point(rank: int, step: int) -> None:
    """Test hook: DLRM_TVM_FAULT=RANK:STEP:raise|kill makes that rank fail at that step."""
    spec = os.environ.get("DLRM_TVM_FAULT")
    if not spec:
        return
    r, s, kind = spec.split(":")
    if int(r) == rank and int(s) == step:
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault at step {step} (DLRM_TVM_FAULT={spec})")


# --------------------------------------------------------------------------- the trainer
_ACTIVE: list = [None]  # the trainer whose dense_forward_backward is running
_HOOKS_REGISTERED = [False]


def _register_hooks() -> None:
    """Register the callbacks the dense module calls (graphs/dlrm.py HOOK_*), once."""
    if _HOOKS_REGISTERED[0]:
        return
    import tvm_ffi
    from dlrm_tvm.graphs.dlrm import HOOK_DPOOLED_READY, HOOK_GRAD_READY, HOOK_WAIT_POOLED

    def wait_pooled(p):
        return _ACTIVE[0]._wait_pooled(p)

    def grad_ready(layer, dw, db):
        return _ACTIVE[0]._grad_ready(int(layer), dw, db)

    def d_pooled_ready(d):
        return _ACTIVE[0]._d_pooled_ready(d)

    tvm_ffi.register_global_func(HOOK_DPOOLED_READY, d_pooled_ready, override=True)
    tvm_ffi.register_global_func(HOOK_WAIT_POOLED, wait_pooled, override=True)
    tvm_ffi.register_global_func(HOOK_GRAD_READY, grad_ready, override=True)
    _HOOKS_REGISTERED[0] = True


def _counts_displs(counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(counts, np.int64)
    d = np.zeros_like(c)
    np.cumsum(c[:-1], out=d[1:])
    return c, d


class DistributedTrainer:
    """One rank's part of the training step (see the module docstring)."""

    def __init__(self, cfg: Config, comm, plan, sparse_vm, dense_vm, progress: Progress,
                 start=None):
        """``start``: resume from this state instead of the initialisation: a
        ``runtime.trainer.StartState`` (rows of any table range, MLP, optimizer state, step)."""
        import tvm
        from dlrm_tvm.graphs.dlrm import mlp_param_specs

        from .params import init_mlp, init_row_blocks
        from .trainer import DenseParams, SparseParams, start_fill

        self.cfg, self.comm, self.plan = cfg, comm, plan
        self.R, self.r = comm.Get_size(), comm.Get_rank()
        self.G = cfg.train.batch_size
        if self.G % self.R:
            raise ConfigError(f"the global batch {self.G} does not divide into {self.R} ranks")
        self.Bl = self.G // self.R
        m = cfg.model
        self.m, self.D = m, m.embedding_dim
        self.sparse_vm, self.dense_vm, self.progress = sparse_vm, dense_vm, progress
        self.shards = plan.shards_of(self.r)
        self.ns = len(self.shards)
        self.rank_tables = [[s.table for s in plan.shards_of(o)] for o in range(self.R)]
        # per table: (first row, owner, position in the owner's shards), in row order
        self.table_parts: list[list[tuple[int, int, int]]] = [[] for _ in range(m.num_tables)]
        for o in range(self.R):
            for j, s in enumerate(plan.shards_of(o)):
                self.table_parts[s.table].append((s.row_start, o, j))
        for parts in self.table_parts:
            parts.sort()
        self.dev = tvm.cpu()
        bf16 = cfg.train.precision == "bf16"
        adagrad = cfg.train.optimizer == "rwsadagrad"
        seed = cfg.train.seed
        self.sparse = None
        if self.ns:
            # each shard's rows go straight into the rank's buffer, a chunk at a time
            if start is None:
                blocks = init_row_blocks(seed, self.D, [
                    (s.table, m.table_rows[s.table], s.row_start, s.row_stop)
                    for s in self.shards])
            else:
                blocks = [(s.rows, start_fill(start.rows, s.table, s.row_start))
                          for s in self.shards]
            self.sparse = SparseParams(blocks, bf16, adagrad, dim=self.D)
            if start is not None and adagrad and start.row_acc is not None:
                self.sparse.load_row_acc([(s.rows, start_fill(start.row_acc, s.table,
                                                               s.row_start))
                                          for s in self.shards])
        self.specs = mlp_param_specs(m)
        self.dense = DenseParams(self.specs, start.mlp if start else init_mlp(m, seed), bf16,
                                 adagrad, self.dev)
        if start is not None and adagrad and start.mlp_acc is not None:
            for (name, _), a in zip(self.specs, self.dense.mlp_acc, strict=True):
                a.copyfrom(start.mlp_acc[name])
        self._lr = tvm.runtime.tensor(np.zeros(1, np.float32), self.dev)
        self._token = tvm.runtime.tensor(np.zeros(1, np.float32), self.dev)
        big = max(m.table_rows) >= 2**31 or cfg.data.num_indices_per_lookup >= 2**31
        self._index_dtype = np.int64 if big else np.int32
        self._pooled_t = tvm.runtime.tensor(np.zeros((self.Bl, m.num_tables, self.D),
                                                     np.float32), self.dev)
        self._pooled_np = np.from_dlpack(self._pooled_t)
        _register_hooks()
        self.step_count = start.step if start is not None else 0

    # ----------------------------------------------------------- input_dist
    def _route(self, idx: np.ndarray, off: np.ndarray):
        """Per owner rank: (bag lengths [ns_o, Bl], indices) of this rank's samples, each
        shard's lookups rebased to its first row."""
        Bl = self.Bl
        sizes = np.diff(off)
        lens, inds = [], []
        for o in range(self.R):
            lo_, io_ = [], []
            for s in self.plan.shards_of(o):
                a, b = off[s.table * Bl], off[(s.table + 1) * Bl]
                seg = idx[a:b]
                if s.rows == self.m.table_rows[s.table]:
                    lo_.append(sizes[s.table * Bl:(s.table + 1) * Bl])
                    io_.append(seg)
                else:
                    sel = (seg >= s.row_start) & (seg < s.row_stop)
                    bag = np.repeat(np.arange(Bl), sizes[s.table * Bl:(s.table + 1) * Bl])
                    lo_.append(np.bincount(bag[sel], minlength=Bl).astype(np.int64))
                    io_.append(seg[sel] - s.row_start)
            lens.append(np.concatenate(lo_) if lo_ else np.zeros(0, np.int64))
            inds.append(np.concatenate(io_) if io_ else np.zeros(0, np.int64))
        return lens, inds

    def _exchange(self, name: str, send: list[np.ndarray], recv_counts: list[int], dtype,
                  wait: bool = True):
        """Alltoallv of per-destination blocks; returns (recv buffer, per-source views, op)."""
        from mpi4py import MPI

        sc, sd = _counts_displs([a.size for a in send])
        rc, rd = _counts_displs(recv_counts)
        sbuf = np.concatenate(send) if send else np.zeros(0, dtype)
        rbuf = np.empty(int(rc.sum()), dtype)
        mt = MPI._typedict[np.dtype(dtype).char]
        req = self.comm.Ialltoallv([sbuf, (sc, sd), mt], [rbuf, (rc, rd), mt])
        # bytes that leave or reach this rank (its block to itself moves no data between ranks)
        moved = (sbuf.nbytes - send[self.r].nbytes if send else 0) + \
            rbuf.itemsize * (int(rc.sum()) - int(rc[self.r]))
        op = self.progress.post(name, [req], moved)
        op.keep = sbuf  # the send buffer must live until completion
        if wait:
            self.progress.wait(op)
        parts = [rbuf[d:d + c] for c, d in zip(rc, rd, strict=True)]
        return rbuf, parts, op

    def _lookup(self, batch, local: bool, clock):
        """Steps 1 to 4 up to posting output_dist: (dense, labels, idx, off) as tensors
        (idx/off None on a rank without shards). ``local``: ``batch`` is already this rank's
        slice (a loader that reads only its rows), else the global batch."""
        import tvm

        from dlrm_tvm.data import validate_batch

        Bl, G, D, T = self.Bl, self.G, self.D, self.m.num_tables
        with clock("input_prep"):
            if not local:
                batch = local_slice(batch, self.r, self.R, T)
            validate_batch(batch, self.m, Bl)
            lens, inds = self._route(batch.indices, batch.offsets)
            nnz_to = np.array([a.size for a in inds], np.int64)
            nnz_from = np.empty(self.R, np.int64)
        with clock("input_dist"):
            self.progress.wait(self.progress.post(
                "input_dist.counts", [self.comm.Ialltoall(nnz_to, nnz_from)], 16 * self.R))
            # rows and bag sizes below 2^31 travel as int32: half the bytes
            it = self._index_dtype
            _, len_parts, op_l = self._exchange("input_dist.lengths",
                                                [a.astype(it) for a in lens],
                                                [self.ns * Bl] * self.R, it, wait=False)
            _, idx_parts, op_i = self._exchange("input_dist.indices",
                                                [a.astype(it) for a in inds],
                                                [int(x) for x in nnz_from], it, wait=False)
            t = tvm.runtime.tensor
            dense = t(batch.dense, self.dev)
            labels = t(batch.labels, self.dev)
            self.progress.wait(op_l)
            self.progress.wait(op_i)
        idx_t = off_t = None
        if self.ns:
            with clock("input_prep"):
                lengths = np.stack([p.reshape(self.ns, Bl) for p in len_parts], axis=1)
                per_shard = [p.reshape(self.ns, Bl).sum(1) for p in len_parts]
                segs = []
                for q in range(self.R):
                    bounds = np.concatenate([[0], np.cumsum(per_shard[q])])
                    segs.append([idx_parts[q][bounds[j]:bounds[j + 1]] for j in range(self.ns)])
                idx = np.concatenate([segs[q][j] for j in range(self.ns) for q in range(self.R)]
                                     or [np.zeros(0, np.int64)]).astype(np.int64)
                off = np.zeros(self.ns * G + 1, np.int64)
                np.cumsum(lengths.reshape(-1), out=off[1:])
                idx_t, off_t = t(idx, self.dev), t(off, self.dev)
            with clock("embedding_forward"):
                pooled_s = self.sparse_vm["embedding_forward"](self.sparse.tables, idx_t, off_t)
            ps = np.from_dlpack(pooled_s).reshape(self.R, Bl * self.ns * D)
            send = [ps[q] for q in range(self.R)]
        else:
            send = [np.zeros(0, np.float32)] * self.R
        _, self._pooled_parts, self._op_pooled = self._exchange(
            "output_dist", send, [Bl * len(self.rank_tables[o]) * D for o in range(self.R)],
            np.float32, wait=False)
        return dense, labels, idx_t, off_t

    def predict(self, batch, local: bool = False) -> np.ndarray:
        """Click probabilities of this rank's samples of ``batch`` (no update)."""
        from .trainer import _Clock

        dense, _, _, _ = self._lookup(batch, local, _Clock(None))
        self._wait_pooled(self._pooled_t)
        return self.dense_vm["predict"](dense, self._pooled_t, *self.dense.mlp).numpy()

    def step(self, batch, timings: dict[str, list[float]] | None = None,
             local: bool = False) -> dict:
        """One step; ``batch`` is the GLOBAL batch (this rank reads its slice of it), or with
        ``local`` this rank's slice already."""
        import tvm
        from mpi4py import MPI

        from .trainer import _Clock

        clock = _Clock(timings)
        G, D = self.G, self.D
        fault_point(self.r, self.step_count)
        lr = self.cfg.train.lr_at(self.step_count)
        self._lr.copyfrom(np.array([lr], np.float32))
        # output_dist is posted at the end of _lookup and waited for inside
        # dense_forward_backward after the bottom MLP (HOOK_WAIT_POOLED); each layer's
        # gradients start their allreduce as soon as the backward has them (HOOK_GRAD_READY)
        dense, labels, idx_t, off_t = self._lookup(batch, local, clock)
        t = tvm.runtime.tensor
        self._grad_ops = []
        _ACTIVE[0] = self
        try:
            with clock("dense_forward_backward"):
                res = self.dense_vm["dense_forward_backward"](dense, self._pooled_t, labels,
                                                              *self.dense.mlp)
        finally:
            _ACTIVE[0] = None
        n = len(self.dense.mlp)
        grads = [res[2 + i] for i in range(n)]
        loss = res[0].numpy().astype(np.float64)
        self._grad_ops.append(self.progress.post(
            "allreduce", [self.comm.Iallreduce(MPI.IN_PLACE, loss, op=MPI.SUM)], 16))
        with clock("grad_dist"):  # posted by the d_pooled hook during the bottom backward
            gbuf, op_g = self._grad_dist
            self.progress.wait(op_g)
        if self.ns:
            with clock("embedding_update"):
                self.sparse_vm["embedding_update"](*self.sparse.update_args(), idx_t, off_t,
                                                   t(gbuf.reshape(G, self.ns, D), self.dev),
                                                   self._lr)
        with clock("allreduce_wait"):
            for op in self._grad_ops:
                self.progress.wait(op)
        with clock("dense_update"):
            self.dense_vm["dense_update"](*self.dense.update_args(), *grads, self._lr)
        self.step_count += 1
        return {"loss": float(loss[0]), "lr": lr}

    # ----------------------------------------------------------- hooks (called by the VM)
    def _wait_pooled(self, p):
        self.progress.wait(self._op_pooled)
        pooled = self._pooled_np
        blocks = [b.reshape(self.Bl, -1, self.D) for b in self._pooled_parts]
        for tb, parts in enumerate(self.table_parts):
            _, o, j = parts[0]
            pooled[:, tb] = blocks[o][:, j]
            for _, o, j in parts[1:]:  # a row-wise table: its partial sums, in row order
                pooled[:, tb] += blocks[o][:, j]
        return p

    def _d_pooled_ready(self, d):
        d_pooled = np.from_dlpack(d)
        send = [np.ascontiguousarray(d_pooled[:, self.rank_tables[o]]).reshape(-1)
                for o in range(self.R)]
        gbuf, _, op = self._exchange("grad_dist", send, [self.Bl * self.ns * self.D] * self.R,
                                     np.float32, wait=False)
        self._grad_dist = (gbuf, op)
        return self._token

    def _grad_ready(self, layer: int, dw, db):
        from mpi4py import MPI

        views = [np.from_dlpack(dw), np.from_dlpack(db)]
        reqs = [self.comm.Iallreduce(MPI.IN_PLACE, v, op=MPI.SUM) for v in views]
        self._grad_ops.append(self.progress.post(
            "allreduce", reqs, 2 * sum(v.nbytes for v in views)))
        return self._token

    # ----------------------------------------------------------- state
    def shard_state(self):
        """(table, row_start, row_stop, fp32 rows, row accumulators or None) of each shard
        this rank holds (for checkpoints), one at a time."""
        if not self.ns:
            return
        at = 0
        for s in self.shards:  # views (fp32) or one shard's masters at a time (bf16)
            yield (s.table, s.row_start, s.row_stop, self.sparse.fp32_rows(at, at + s.rows),
                   self.sparse.row_acc_rows(at, at + s.rows))
            at += s.rows

    def gather_state(self) -> dict[str, np.ndarray] | None:
        """Every fp32 parameter on rank 0 (tables assembled from all shards), None elsewhere.
        Gathers whole tables to one rank: for checks and small models."""
        mine = self.sparse.fp32() if self.ns else np.zeros((0, self.D), np.float32)
        allp = self.comm.gather((self.shards, mine), root=0)
        dense = self.dense.fp32()
        if self.r != 0:
            return None
        tables = np.empty((self.m.total_rows, self.D), np.float32)
        offs = self.m.table_offsets
        for shards, rows in allp:
            at = 0
            for s in shards:
                tables[offs[s.table] + s.row_start:offs[s.table] + s.row_stop] = \
                    rows[at:at + s.rows]
                at += s.rows
        return {"tables": tables, **dense}


def local_slice(batch, rank: int, ranks: int, num_tables: int):
    """Samples [rank*B/N, (rank+1)*B/N) of a global batch, with their bags of every table."""
    from dlrm_tvm.data import Batch

    G = batch.dense.shape[0]
    Bl = G // ranks
    s0, s1 = rank * Bl, (rank + 1) * Bl
    off = batch.offsets
    lens, inds = [], []
    for t in range(num_tables):
        a, b = t * G + s0, t * G + s1
        lens.append(np.diff(off[a:b + 1]))
        inds.append(batch.indices[off[a]:off[b]])
    offsets = np.zeros(num_tables * Bl + 1, np.int64)
    np.cumsum(np.concatenate(lens), out=offsets[1:])
    return Batch(dense=np.ascontiguousarray(batch.dense[s0:s1]),
                 indices=np.concatenate(inds).astype(np.int64, copy=False), offsets=offsets,
                 labels=np.ascontiguousarray(batch.labels[s0:s1]))


def abort_on_error(comm, exc: BaseException) -> None:
    """Print the failing rank and reason, then end every rank (no survivor left waiting)."""
    print(f"dlrm-tvm: rank {comm.Get_rank()} of {comm.Get_size()} failed: "
          f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    time.sleep(0.5)  # let mpiexec forward the line before the abort tears the job down
    comm.Abort(1)


# --------------------------------------------------------------------------- set-up
SHARDINGS = ("auto", "table", "row")


def make_plan(cfg: Config, ranks: int, sharding: str = "auto",
              rank_budget_bytes: int | None = None):
    """The sharding plan: "table" places whole tables; "row" cuts every table into ``ranks``
    row ranges; "auto" places whole tables and cuts only those over the budget."""
    from .sharding import plan_shards

    if sharding not in SHARDINGS:
        raise ConfigError(f"sharding must be one of {SHARDINGS}, got {sharding!r}")
    m, d = cfg.model, cfg.data
    per_bag = d.num_indices_per_lookup if d.num_indices_per_lookup_fixed else \
        (d.num_indices_per_lookup + 1) / 2
    lookups = [min(r, per_bag) * cfg.train.batch_size for r in m.table_rows]
    per_row = 4 + (4 / m.embedding_dim if cfg.train.optimizer == "rwsadagrad" else 0)
    try:
        return plan_shards(m.table_rows, m.embedding_dim, ranks, lookups,
                           None if sharding == "table" else rank_budget_bytes,
                           bytes_per_value=int(np.ceil(per_row)),
                           min_parts=ranks if sharding == "row" else 1)
    except ValueError as e:
        raise ConfigError(f"cannot shard the tables over {ranks} ranks: {e}") from e


def default_rank_budget(comm) -> int | None:
    """Table memory one rank may hold: 80% of the node's available memory over its ranks."""
    from mpi4py import MPI

    from dlrm_tvm.config import available_memory

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    n = local.Get_size()
    local.Free()
    avail = available_memory()
    return None if avail is None else int(0.8 * avail / n)


def setup_rank(cfg: Config, out_dir, target_name: str = "host", prefer: tuple[str, ...] = (),
               sharding: str = "auto", rank_memory_gib: float | None = None,
               threads: int | None = None, comm_timeout: float = 300.0,
               progress_thread: bool = True, progress_poll_us: float = 50.0, log=print,
               start=None, tuning: dict | None = None):
    """Everything before the first step on this rank: cores and threads, the config check, the
    plan (rank 0, broadcast, printed, saved), the two compiled modules, the parameters.
    Returns (trainer, info) where info holds the layout and plan for the summary."""
    from mpi4py import MPI

    from .sharding import ShardingPlan

    comm = MPI.COMM_WORLD
    R, r = comm.Get_size(), comm.Get_rank()
    layout = layout_threads(comm, threads)
    check_same_config(comm, cfg)
    if cfg.train.batch_size % R:
        raise CollectiveError(f"the global batch {cfg.train.batch_size} does not divide into "
                              f"{R} ranks: choose --mini-batch-size as a multiple of {R}", r)
    layouts = comm.gather(layout, root=0)
    budget = (int(rank_memory_gib * 2**30) if rank_memory_gib else default_rank_budget(comm))
    plan_d = None
    if r == 0:
        try:
            plan = make_plan(cfg, R, sharding, budget)
            plan_d = plan.to_dict()
        except ConfigError as e:  # every rank learns it and stops alike
            plan_d = {"error": str(e)}
    plan_d = comm.bcast(plan_d, root=0)
    if "error" in plan_d:
        raise CollectiveError(plan_d["error"], r)
    if r == 0:
        log(format_layout(layouts))
        log(plan.format())
        if out_dir is not None:
            plan.save(os.path.join(out_dir, "sharding.json"))
            with open(os.path.join(out_dir, "layout.json"), "w") as f:
                json.dump(layouts, f, indent=1)
    plan = ShardingPlan.from_dict(plan_d)

    import dataclasses

    from dlrm_tvm.pipeline import compile_dlrm, load_vm
    from dlrm_tvm.targets import resolve_target

    target = resolve_target(target_name)
    _register_hooks()  # the VM looks its extern functions up when it loads
    shards = plan.shards_of(r)
    t0 = time.perf_counter()
    sparse_vm = None
    if shards:
        shard_model = dataclasses.replace(cfg.model, table_rows=tuple(s.rows for s in shards))
        res = compile_dlrm(cfg, target, batch_size=cfg.train.batch_size, prefer=prefer,
                           model=shard_model, parts=("sparse",), tuning=tuning)
        sparse_vm = load_vm(res.executable)
    G = cfg.train.batch_size
    res = compile_dlrm(cfg, target, batch_size=G // R, prefer=prefer, parts=("dense",),
                       loss_scale=1.0 / G, hooks=True, tuning=tuning)
    dense_vm = load_vm(res.executable)
    secs = comm.gather(time.perf_counter() - t0, root=0)
    if r == 0:
        log(f"compiled per rank for {target.name}: {max(secs):.1f} s (slowest rank)")
    level_ok = MPI.Query_thread() == MPI.THREAD_MULTIPLE
    progress = Progress(thread=progress_thread and level_ok, timeout_s=comm_timeout,
                        poll_s=progress_poll_us * 1e-6)
    trainer = DistributedTrainer(cfg, comm, plan, sparse_vm, dense_vm, progress, start)
    comm.Barrier()
    info = {"ranks": R, "layout": layouts, "sharding": plan_d, "progress_thread":
            progress.thread is not None, "target": target.to_dict()}
    return trainer, info


def comm_world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def reduce_timings(comm, timings: dict[str, list[float]], ops: list[Op], steps: int) -> dict:
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
    if comm.Get_rank() != 0:
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
