"""Input batches: the layout every kernel sees, its validation, and the synthetic generator.

A ``Batch`` holds B samples: dense [B, Din] float32, labels [B] float32 (0/1), and the bags of
all T tables in torchrec's jagged layout: indices int64 [nnz] (row within the table) and offsets
int64 [T*B + 1], bag (t, b) = indices[offsets[t*B + b]:offsets[t*B + b + 1]].

``validate_batch`` runs before any compiled kernel sees a batch: the kernels do not bounds-check.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dlrm_tvm.config import DataConfig, ModelConfig


class BatchError(ValueError):
    """A batch that the compiled step cannot take; the message says what is wrong."""


@dataclass
class Batch:
    dense: np.ndarray
    indices: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    @property
    def size(self) -> int:
        return self.dense.shape[0]


def validate_batch(batch: Batch, model: ModelConfig, batch_size: int) -> None:
    """Check dtypes, shapes, offsets and every index against its table, or raise BatchError."""
    T, B = model.num_tables, batch_size
    checks = (
        ("dense", batch.dense, np.float32, (B, model.num_dense)),
        ("labels", batch.labels, np.float32, (B,)),
        ("offsets", batch.offsets, np.int64, (T * B + 1,)),
    )
    for name, arr, dtype, shape in checks:
        if not isinstance(arr, np.ndarray):
            raise BatchError(f"{name} must be a numpy array, got {type(arr).__name__}")
        if arr.dtype != dtype:
            raise BatchError(f"{name} must be {np.dtype(dtype).name}, got {arr.dtype}")
        if arr.shape != shape:
            raise BatchError(f"{name} must have shape {shape}, got {arr.shape}")
    idx = batch.indices
    if not isinstance(idx, np.ndarray) or idx.dtype != np.int64 or idx.ndim != 1:
        got = getattr(idx, "dtype", type(idx).__name__), getattr(idx, "shape", None)
        raise BatchError(f"indices must be a 1-D int64 numpy array, got {got}")
    off = batch.offsets
    if off[0] != 0 or off[-1] != idx.shape[0]:
        raise BatchError(
            f"offsets must start at 0 and end at len(indices)={idx.shape[0]}, "
            f"got {off[0]} .. {off[-1]}"
        )
    sizes = np.diff(off)
    if (sizes < 0).any():
        bag = int(np.argmax(sizes < 0))
        raise BatchError(
            f"offsets must be non-decreasing: bag {bag} (table {bag // B}) has negative size"
        )
    if idx.size:
        table = np.repeat(np.arange(T * B, dtype=np.int64) // B, sizes)
        rows = np.asarray(model.table_rows, np.int64)[table]
        bad = (idx < 0) | (idx >= rows)
        if bad.any():
            p = int(np.argmax(bad))
            raise BatchError(
                f"index {int(idx[p])} at position {p} is out of range for table {int(table[p])} "
                f"with {int(rows[p])} rows (bag {p and int(np.searchsorted(off, p, 'right') - 1)})"
            )
    if not np.isfinite(batch.dense).all():
        raise BatchError("dense features contain NaN or infinity")


def zipf_rows(rows: int, alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(cdf over ranks 1..rows with P(k) ~ k^-alpha, rank -> row permutation) for one table."""
    cdf = np.cumsum(np.arange(1, rows + 1, dtype=np.float64) ** -alpha)
    return cdf / cdf[-1], rng.permutation(rows).astype(np.int64)


def zipf_draw(cdf: np.ndarray, perm: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Rows for uniforms ``u`` in [0, 1) (inverse CDF over ranks, then the permutation)."""
    return perm[np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)]


class SyntheticData:
    """The reference's random generator, seeded and streaming (an endless batch iterator).

    dense ~ U(0, 1); bag sizes fixed, or uniform in [1, min(rows, L)] (the reference's rounding
    of U * min(rows, L), at least 1), or multi-hot (``data.multi_hot_sizes``: every bag of
    table t has exactly its size, not capped at the table's rows); indices
    round(U * (rows - 1)); labels round(U) (random) or a fixed random linear teacher of the
    inputs (labels="teacher": a learnable task; with multi-hot bags each bag's teacher sum is
    divided by the root of its size, which keeps the labels balanced near half positive for
    any sizes, uniform or Zipf).
    Unlike the reference, duplicate indices inside a bag are kept (the reference drops them
    with np.unique): the kernels handle duplicates, and it keeps generation vectorised.

    index_distribution "zipf": the rank k (1-based) of a lookup's row has P(k) proportional to
    k^-alpha over the table's rows (inverse CDF on a per-table cumulative table); rank k maps
    to row perm_t[k-1], a fixed random permutation per table, so hot rows are scattered over
    the table as in real data rather than packed at its start.
    """

    def __init__(self, model: ModelConfig, data: DataConfig, batch_size: int, seed: int):
        self.m, self.d, self.B = model, data, batch_size
        self.rng = np.random.default_rng([seed, 0x5EED])
        self.rows = np.asarray(model.table_rows, np.int64)
        self._zipf = None
        if data.index_distribution == "zipf":
            zrng = np.random.default_rng([seed, 0x21BF])
            self._zipf = [zipf_rows(r, data.zipf_alpha, zrng) for r in model.table_rows]
        self._teacher = None
        if data.labels == "teacher":
            trng = np.random.default_rng([seed, 0x7EAC])
            self._teacher = (
                trng.normal(size=model.num_dense).astype(np.float32),
                [trng.normal(size=r).astype(np.float32) for r in model.table_rows],
            )

    def zipf_indices(self, table: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Rows for lookups of ``table`` [n] from uniforms ``u`` [n] (Zipf over ranks)."""
        out = np.empty(u.shape, np.int64)
        for t, (cdf, perm) in enumerate(self._zipf):
            sel = table == t
            out[sel] = zipf_draw(cdf, perm, u[sel])
        return out

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> Batch:
        B, T, rng = self.B, self.m.num_tables, self.rng
        L = self.d.num_indices_per_lookup
        dense = rng.random((B, self.m.num_dense), dtype=np.float32)
        cap = np.minimum(self.rows, L)
        multi_hot = self.d.bag_sizes(T)
        if multi_hot is not None:  # torchrec's multi-hot: one fixed size per table
            sizes = np.repeat(np.asarray(multi_hot, np.int64), B)
        elif self.d.num_indices_per_lookup_fixed:
            sizes = np.repeat(cap, B)
        else:
            u = rng.random(T * B)
            sizes = np.maximum(1, np.round(u * np.repeat(cap, B))).astype(np.int64)
        offsets = np.zeros(T * B + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        table = np.repeat(np.arange(T * B) // B, sizes)
        if self._zipf is None:
            indices = np.round(rng.random(offsets[-1]) * (self.rows[table] - 1)).astype(np.int64)
        else:
            indices = self.zipf_indices(table, rng.random(offsets[-1]))
        if self._teacher is None:
            labels = np.round(rng.random(B)).astype(np.float32)
        else:
            wd, tabs = self._teacher
            logit = (dense - 0.5) @ wd
            score = np.zeros(offsets[-1], np.float32)
            for t in range(T):
                sel = table == t
                score[sel] = tabs[t][indices[sel]]
            bag_score = np.add.reduceat(score, offsets[:-1]) if score.size else np.zeros(T * B)
            if multi_hot is not None:  # each table's bag sum at unit scale: balanced labels
                bag_score = bag_score / np.sqrt(sizes)
            bag_score = np.where(sizes > 0, bag_score, 0).reshape(T, B).sum(0)
            labels = ((logit + bag_score / np.sqrt(T)) > 0).astype(np.float32)
        return Batch(dense=dense, indices=indices, offsets=offsets, labels=labels)
