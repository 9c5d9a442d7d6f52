"""What one training step does, on one rank.

  1. validate the batch (the kernels do not bounds-check)
  2. pooled   = embedding_forward(tables, indices, offsets)
  3. loss, p, mlp_grads, d_pooled = dense_forward_backward(dense, pooled, labels, *mlp)
  4. dense_update(*mlp, *mlp_grads, lr)                     in place
  5. embedding_update(tables, indices, offsets, d_pooled, lr) in place, sparse

The parameters live in tensors this object owns across steps; nothing table-sized is copied or
allocated per step. The compiled functions do no communication, so exchanges between ranks can
later sit between steps 2 and 3 and between 3 and 4/5.
"""

from __future__ import annotations

import numpy as np
import tvm
from dlrm_tvm.graphs.dlrm import mlp_param_specs
from dlrm_tvm.runtime.params import init_mlp, init_tables

from dlrm_tvm.config import Config
from dlrm_tvm.data import Batch, validate_batch


class Trainer:
    def __init__(self, cfg: Config, vm, tables: np.ndarray | None = None,
                 mlp: dict[str, np.ndarray] | None = None):
        self.cfg = cfg
        self.vm = vm
        self.dev = tvm.cpu()
        self.B = cfg.train.batch_size
        m = cfg.model
        self.specs = mlp_param_specs(m)
        if tables is None:
            tables = init_tables(m, cfg.train.seed)
        if mlp is None:
            mlp = init_mlp(m, cfg.train.seed)
        expect = (m.total_rows, m.embedding_dim)
        if tables.shape != expect or tables.dtype != np.float32:
            raise ValueError(f"tables must be float32 {expect}, got {tables.dtype} {tables.shape}")
        self.tables = tvm.runtime.tensor(tables, self.dev)
        self.mlp = []
        for name, shape in self.specs:
            a = mlp[name]
            if a.shape != shape:
                raise ValueError(f"parameter {name} must have shape {shape}, got {a.shape}")
            self.mlp.append(tvm.runtime.tensor(np.ascontiguousarray(a, np.float32), self.dev))
        self._lr = tvm.runtime.tensor(np.zeros(1, np.float32), self.dev)
        self.step_count = 0

    def _inputs(self, batch: Batch):
        validate_batch(batch, self.cfg.model, self.B)
        t = tvm.runtime.tensor
        return (t(batch.dense, self.dev), t(batch.indices, self.dev), t(batch.offsets, self.dev),
                t(batch.labels, self.dev))

    def step(self, batch: Batch) -> dict:
        """One SGD step on ``batch``; returns {"loss", "lr", "p"} (p: predictions before it)."""
        dense, idx, off, labels = self._inputs(batch)
        lr = self.cfg.train.lr_at(self.step_count)
        self._lr.copyfrom(np.array([lr], np.float32))
        vm = self.vm
        pooled = vm["embedding_forward"](self.tables, idx, off)
        res = vm["dense_forward_backward"](dense, pooled, labels, *self.mlp)
        n = len(self.mlp)
        grads = [res[2 + i] for i in range(n)]
        d_pooled = res[2 + n]
        vm["dense_update"](*self.mlp, *grads, self._lr)
        vm["embedding_update"](self.tables, idx, off, d_pooled, self._lr)
        self.step_count += 1
        return {"loss": float(res[0].numpy()[0]), "lr": lr, "p": res[1]}

    def predict(self, batch: Batch) -> np.ndarray:
        dense, idx, off, _ = self._inputs(batch)
        pooled = self.vm["embedding_forward"](self.tables, idx, off)
        return self.vm["predict"](dense, pooled, *self.mlp).numpy()

    def state(self) -> dict[str, np.ndarray]:
        """A copy of every parameter: {"tables": [rows, D], "<layer>_w": Wt [in, out], ...}."""
        out = {"tables": self.tables.numpy()}
        for (name, _), a in zip(self.specs, self.mlp, strict=True):
            out[name] = a.numpy()
        return out
