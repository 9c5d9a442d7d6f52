"""What one training step does, at any rank count: one trainer, stages over a ``Comm``.

Every rank holds its table shards (a sharding plan: runtime/sharding.py; one rank holds every
table whole) and a replica of the MLPs. The stages of ``Trainer.step``, in the order they run
(torchrec's names where they fit, as in the SC20 paper):

  1. input_dist      validate this rank's samples (the kernels do not bounds-check); send each
                     bag's lookups to the ranks owning its table's rows (a row-wise shard gets
                     the lookups in its range, rebased to its first row); one rank: none
  2. lookup          embedding_forward over the rank's shards, for every sample
  3. output_dist     the pooled rows back to the ranks owning the samples, posted
                     non-blocking; with hooks the dense module waits for them after the bottom
                     MLP (graphs/dlrm.py HOOK_WAIT_POOLED); row-wise partial sums are added in
                     row order; one rank: the lookup's output is the dense input, no copy
  4. dense           dense_forward_backward on the rank's samples; with hooks each layer's
                     gradients start their allreduce as soon as they are final
                     (HOOK_GRAD_READY), and d_pooled leaves for the shard owners as soon as
                     the interaction's backward has it (HOOK_DPOOLED_READY)
  5. grad_dist       d_pooled back to the shard owners (one rank: d_pooled itself)
  6. embedding_update the fused sparse update of the rank's shards
  7. allreduce_wait  the MLP gradients summed over the ranks (one rank: nothing to wait for)
  8. dense_update    the MLP update, identical on every rank

With N ranks, every rank runs the sparse functions for its shards at the global batch G and
the dense functions at its local batch G/N with the loss scaled by 1/G, so summing the ranks'
losses and gradients gives the global batch's mean exactly as one rank computes it. Nothing
is multiplied by the rank count; initialisation depends on (seed, table) only
(runtime/params.py).

The exchanges go through ``comm`` (runtime/comm.py: ``LocalComm`` for one rank, no MPI;
runtime/mpi.py's ``MPIComm`` for N). With ranks, the hooks the dense module calls are passed
in as a ``StepHooks`` registered before that module is loaded; one rank's module (an
artifact) has none: its d_pooled is the update's input and there is nothing to reduce.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import tvm

from dlrm_tvm.config import Config, ConfigError
from dlrm_tvm.data import Batch, validate_batch
from dlrm_tvm.graphs.dlrm import mlp_param_specs
from dlrm_tvm.runtime.comm import Comm, LocalComm
from dlrm_tvm.runtime.params import init_mlp, init_row_blocks
from dlrm_tvm.runtime.sharding import ShardingPlan, whole_tables
from dlrm_tvm.runtime.state import (  # noqa: F401  (re-exported: the state's public names)
    DenseParams,
    SparseParams,
    StartState,
    _Clock,
    array_blocks,
    combine_fp32,
    combine_rows,
    split_fp32,
    split_rows,
    start_fill,
)

STAGES = ("input_dist", "lookup", "output_dist", "dense", "grad_dist", "embedding_update",
          "allreduce_wait", "dense_update")


class StepHooks:
    """The callbacks a dense module compiled with hooks calls (graphs/dlrm.py HOOK_*), bound
    to one trainer. ``register()`` before loading that module (the VM resolves its extern
    functions when it loads); the trainer binds itself when built."""

    def __init__(self):
        self.trainer: Trainer | None = None

    def register(self) -> StepHooks:
        import tvm_ffi
        from dlrm_tvm.graphs.dlrm import HOOK_DPOOLED_READY, HOOK_GRAD_READY, HOOK_WAIT_POOLED

        tvm_ffi.register_global_func(HOOK_WAIT_POOLED, lambda p: self.trainer._wait_pooled(p),
                                     override=True)
        tvm_ffi.register_global_func(
            HOOK_GRAD_READY,
            lambda layer, *grads: self.trainer._grad_ready(int(layer), *grads), override=True)
        tvm_ffi.register_global_func(HOOK_DPOOLED_READY,
                                     lambda d: self.trainer._d_pooled_ready(d), override=True)
        return self


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


def local_slice(batch: Batch, rank: int, ranks: int, num_tables: int) -> Batch:
    """Samples [rank*B/N, (rank+1)*B/N) of a global batch, with their bags of every table."""
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


class Trainer:
    """One rank's part of the training step (the module docstring), at any rank count.

    ``Trainer(cfg, vm)``: one rank, ``vm`` holding every function (an artifact). With ranks:
    ``Trainer(cfg, sparse_vm, comm=..., plan=..., dense_vm=..., hooks=...)``: the sparse
    functions of this rank's shards at the global batch, the dense ones at the local batch.
    ``tables``/``mlp``: initial fp32 parameters (one rank); ``start``: resume from a
    checkpoint's state (rows of any table range, MLP, optimizer state, step)."""

    def __init__(self, cfg: Config, vm, tables: np.ndarray | None = None,
                 mlp: dict[str, np.ndarray] | None = None, start: StartState | None = None, *,
                 comm: Comm | None = None, plan: ShardingPlan | None = None, dense_vm=None,
                 hooks: StepHooks | None = None):
        self.cfg, self.m = cfg, cfg.model
        self.comm = comm or LocalComm()
        self.R, self.r = self.comm.size, self.comm.rank
        m, D = cfg.model, cfg.model.embedding_dim
        self.D = D
        self.plan = plan or whole_tables(m.table_rows, D)
        self.G = cfg.train.batch_size
        if self.G % self.R:
            raise ConfigError(f"the global batch {self.G} does not divide into {self.R} ranks")
        self.B = self.Bl = self.G // self.R
        self.sparse_vm = vm
        self.dense_vm = dense_vm if dense_vm is not None else vm
        self.hooks = hooks
        self.shards = self.plan.shards_of(self.r)
        self.ns = len(self.shards)
        # one rank holding every table whole, in order: no routing, no exchange copies
        self.identity = self.R == 1 and all(
            s.table == t and s.rows == m.table_rows[t] for t, s in enumerate(self.shards)) \
            and self.ns == m.num_tables
        self.rank_tables = [[s.table for s in self.plan.shards_of(o)] for o in range(self.R)]
        # per table: (first row, owner, position in the owner's shards), in row order
        self.table_parts: list[list[tuple[int, int, int]]] = [[] for _ in range(m.num_tables)]
        for o in range(self.R):
            for j, s in enumerate(self.plan.shards_of(o)):
                self.table_parts[s.table].append((s.row_start, o, j))
        for parts in self.table_parts:
            parts.sort()
        self.dev = tvm.cpu()
        self.bf16 = cfg.train.precision == "bf16"
        # an optimizer state: rwsadagrad's row accumulators, or (exact) adagrad's state of the
        # tables' shape; dense Adagrad accumulators for the MLPs either way
        self.adagrad = cfg.train.optimizer in ("rwsadagrad", "adagrad")
        acc_cols = D if cfg.train.optimizer == "adagrad" else None
        seed = cfg.train.seed
        # the tables are written straight into their final buffers, a chunk at a time: from
        # the checkpoint, from ``tables``, or drawn (never a second table-sized copy)
        self.sparse = None
        if self.ns:
            if start is not None:
                blocks = [(s.rows, start_fill(start.rows, s.table, s.row_start))
                          for s in self.shards]
            elif tables is not None:
                expect = (m.total_rows, D)
                if not self.identity:
                    raise ValueError("initial tables are given to a one-rank trainer only")
                if tables.shape != expect or tables.dtype != np.float32:
                    raise ValueError(f"tables must be float32 {expect}, got {tables.dtype} "
                                     f"{tables.shape}")
                blocks = array_blocks(tables)
            else:
                blocks = init_row_blocks(seed, D, [(s.table, m.table_rows[s.table],
                                                    s.row_start, s.row_stop)
                                                   for s in self.shards])
            self.sparse = SparseParams(blocks, self.bf16, self.adagrad, dim=D,
                                       acc_cols=acc_cols)
            if start is not None and self.adagrad and start.row_acc is not None:
                self.sparse.load_row_acc([(s.rows, start_fill(start.row_acc, s.table,
                                                               s.row_start))
                                          for s in self.shards])
        if start is not None:
            mlp = start.mlp
        self.specs = mlp_param_specs(m)
        self.dense = DenseParams(self.specs, mlp if mlp is not None else init_mlp(m, seed),
                                 self.bf16, self.adagrad, self.dev)
        if start is not None and self.adagrad and start.mlp_acc is not None:
            for (name, _), a in zip(self.specs, self.dense.mlp_acc, strict=True):
                a.copyfrom(start.mlp_acc[name])
        self.tables = self.sparse.tables if self.sparse is not None else None
        self.mlp = self.dense.mlp
        self._lr = tvm.runtime.tensor(np.zeros(1, np.float32), self.dev)
        self._token = tvm.runtime.tensor(np.zeros(1, np.float32), self.dev)
        big = max(m.table_rows) >= 2**31 or cfg.data.num_indices_per_lookup >= 2**31
        self._index_dtype = np.int64 if big else np.int32
        if not self.identity:
            self._pooled_t = tvm.runtime.tensor(np.zeros((self.Bl, m.num_tables, D),
                                                         np.float32), self.dev)
            self._pooled_np = np.from_dlpack(self._pooled_t)
        if not self.identity and hooks is None:
            raise ValueError("a trainer with ranks needs a dense module compiled with hooks "
                             "and their StepHooks (dlrm_tvm/launch.py builds both)")
        if hooks is not None:
            hooks.trainer = self
        self.step_count = start.step if start is not None else 0

    @property
    def vm(self):
        """The module of a one-rank trainer (its sparse module with ranks)."""
        return self.sparse_vm

    @vm.setter
    def vm(self, vm) -> None:
        if self.dense_vm is self.sparse_vm:
            self.dense_vm = vm
        self.sparse_vm = vm

    # ----------------------------------------------------------- 1. input_dist
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

    def _input_dist(self, batch: Batch, local: bool, clock):
        """(dense, labels, idx, off) tensors: this rank's samples, and the lookups of every
        sample into this rank's shards (idx/off None on a rank without shards)."""
        t = tvm.runtime.tensor
        with clock("input_prep"):
            if self.R > 1 and not local:
                batch = local_slice(batch, self.r, self.R, self.m.num_tables)
            validate_batch(batch, self.m, self.Bl)
        if self.identity:
            return (t(batch.dense, self.dev), t(batch.labels, self.dev),
                    t(batch.indices, self.dev), t(batch.offsets, self.dev))
        Bl, G, comm = self.Bl, self.G, self.comm
        with clock("input_prep"):
            lens, inds = self._route(batch.indices, batch.offsets)
            nnz_to = np.array([a.size for a in inds], np.int64)
        with clock("input_dist"):
            nnz_from = comm.alltoall_counts("input_dist.counts", nnz_to)
            it = self._index_dtype  # rows and bag sizes below 2^31 travel as int32
            _, len_parts, op_l = comm.alltoallv("input_dist.lengths",
                                                [a.astype(it) for a in lens],
                                                [self.ns * Bl] * self.R, it)
            _, idx_parts, op_i = comm.alltoallv("input_dist.indices",
                                                [a.astype(it) for a in inds],
                                                [int(x) for x in nnz_from], it)
            dense, labels = t(batch.dense, self.dev), t(batch.labels, self.dev)
            comm.wait(op_l)
            comm.wait(op_i)
        if not self.ns:
            return dense, labels, None, None
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
        return dense, labels, t(idx, self.dev), t(off, self.dev)

    # ----------------------------------------------------------- 2, 3. lookup, output_dist
    def _lookup(self, idx_t, off_t, clock):
        """The pooled rows of the rank's shards; with ranks, output_dist posted."""
        pooled_s = None
        if self.ns:
            with clock("embedding_forward"):
                pooled_s = self.sparse_vm["embedding_forward"](self.sparse.tables, idx_t, off_t)
        if self.identity:
            return pooled_s
        Bl, D = self.Bl, self.D
        if self.ns:
            ps = np.from_dlpack(pooled_s).reshape(self.R, Bl * self.ns * D)
            send = [ps[q] for q in range(self.R)]
        else:
            send = [np.zeros(0, np.float32)] * self.R
        _, self._pooled_parts, self._op_pooled = self.comm.alltoallv(
            "output_dist", send, [Bl * len(self.rank_tables[o]) * D for o in range(self.R)],
            np.float32)
        return self._pooled_t

    def _wait_pooled(self, p):
        """output_dist complete: the pooled rows of every table for this rank's samples."""
        self.comm.wait(self._op_pooled)
        pooled = self._pooled_np
        blocks = [b.reshape(self.Bl, -1, self.D) for b in self._pooled_parts]
        for tb, parts in enumerate(self.table_parts):
            _, o, j = parts[0]
            pooled[:, tb] = blocks[o][:, j]
            for _, o, j in parts[1:]:  # a row-wise table: its partial sums, in row order
                pooled[:, tb] += blocks[o][:, j]
        return p

    # ----------------------------------------------------------- 4, 5. dense, grad_dist
    def _d_pooled_ready(self, d):
        d_pooled = np.from_dlpack(d)
        send = [np.ascontiguousarray(d_pooled[:, self.rank_tables[o]]).reshape(-1)
                for o in range(self.R)]
        gbuf, _, op = self.comm.alltoallv("grad_dist", send,
                                          [self.Bl * self.ns * self.D] * self.R, np.float32)
        self._grad_dist = (gbuf, op)
        return self._token

    def _grad_ready(self, layer: int, *grads):
        """Layer ``layer``'s gradients are final (an MLP layer's (dWt, db); a DCN cross
        layer's (du, dv, db)): start summing them over the ranks."""
        self._grad_ops.append(self.comm.allreduce(
            "allreduce", [np.from_dlpack(g) for g in grads]))
        return self._token

    # ----------------------------------------------------------- the step
    def step(self, batch: Batch, timings: dict[str, list[float]] | None = None,
             local: bool = False) -> dict:
        """One optimizer step; ``batch`` is the global batch (a rank reads its slice of it),
        or with ``local`` this rank's slice already. Returns {"loss", "lr"} (the loss of the
        global batch). ``timings``: each stage's seconds are appended to it."""
        clock = _Clock(timings)
        fault_point(self.r, self.step_count)
        lr = self.cfg.train.lr_at(self.step_count)
        self._lr.copyfrom(np.array([lr], np.float32))
        dense, labels, idx_t, off_t = self._input_dist(batch, local, clock)
        pooled = self._lookup(idx_t, off_t, clock)
        self._grad_ops = []
        with clock("dense_forward_backward"):
            res = self.dense_vm["dense_forward_backward"](dense, pooled, labels, *self.mlp)
        n = len(self.mlp)
        grads = [res[2 + i] for i in range(n)]
        if self.identity:
            loss = float(res[0].numpy()[0])
            gbuf = res[2 + n]  # d_pooled: this rank's shards are every table
        else:
            lossv = res[0].numpy().astype(np.float64)
            self._grad_ops.append(self.comm.allreduce("allreduce", [lossv]))
            with clock("grad_dist"):  # posted during the bottom MLP's backward (hook)
                g, op_g = self._grad_dist
                self.comm.wait(op_g)
            gbuf = tvm.runtime.tensor(g.reshape(self.G, self.ns, self.D), self.dev) \
                if self.ns else None
        if self.ns:
            with clock("embedding_update"):
                self.sparse_vm["embedding_update"](*self.sparse.update_args(), idx_t, off_t,
                                                   gbuf, self._lr)
        if not self.identity:
            with clock("allreduce_wait"):
                for op in self._grad_ops:
                    self.comm.wait(op)
            loss = float(lossv[0])
        with clock("dense_update"):
            self.dense_vm["dense_update"](*self.dense.update_args(), *grads, self._lr)
        self.step_count += 1
        return {"loss": loss, "lr": lr}

    def predict(self, batch: Batch, local: bool = False) -> np.ndarray:
        """Click probabilities of this rank's samples of ``batch`` (no update)."""
        clock = _Clock(None)
        dense, _, idx_t, off_t = self._input_dist(batch, local, clock)
        pooled = self._lookup(idx_t, off_t, clock)
        if not self.identity:
            self._wait_pooled(pooled)
        return self.dense_vm["predict"](dense, pooled, *self.mlp).numpy()

    def dense_call(self, batch: Batch):
        """A closure running only dense_forward_backward on ``batch`` (one rank; profiling)."""
        dense, labels, idx_t, off_t = self._input_dist(batch, True, _Clock(None))
        pooled = self._lookup(idx_t, off_t, _Clock(None))
        return lambda: self.dense_vm["dense_forward_backward"](dense, pooled, labels, *self.mlp)

    # ----------------------------------------------------------- state
    def shard_state(self):
        """(table, row_start, row_stop, fp32 rows, row accumulators or None) of each shard
        this rank holds, one at a time (a checkpoint holds at most one shard's fp32 copy
        beside the live tables)."""
        at = 0
        for s in self.shards:
            yield (s.table, s.row_start, s.row_stop, self.sparse.fp32_rows(at, at + s.rows),
                   self.sparse.row_acc_rows(at, at + s.rows))
            at += s.rows

    def non_finite_shards(self, chunk_rows: int = 1 << 15) -> list[tuple[int, int, int, int]]:
        """(table, row_start, row_stop, how many values are NaN or infinite) of each shard this
        rank holds that has any; ``chunk_rows`` rows at a time (no whole-shard copy)."""
        bad, at = [], 0
        for s in self.shards:
            n = 0
            for lo in range(0, s.rows, chunk_rows):
                rows = self.sparse.fp32_rows(at + lo, at + min(s.rows, lo + chunk_rows))
                n += int(rows.size - np.count_nonzero(np.isfinite(rows)))
            if n:
                bad.append((s.table, s.row_start, s.row_stop, n))
            at += s.rows
        return bad

    def state(self) -> dict[str, np.ndarray]:
        """A copy of every fp32 parameter (master) of a one-rank trainer: {"tables": [rows,
        D], "<layer>_w": Wt [in, out], ...}; in bf16, rebuilt exactly from the halves."""
        return {"tables": self.sparse.fp32(), **self.dense.fp32()}

    def gather_state(self) -> dict[str, np.ndarray] | None:
        """Every fp32 parameter on rank 0 (tables assembled from all ranks' shards), None
        elsewhere. Whole tables on one rank: for checks and small models."""
        if self.R == 1:
            return self.state()
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

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The Adagrad states ({"row_acc": rwsadagrad's [rows] or adagrad's [rows, D],
        "<layer>_w": ...}); {} for sgd."""
        if not self.adagrad:
            return {}
        return {"row_acc": self.sparse.row_acc[0].numpy(), **self.dense.acc()}
