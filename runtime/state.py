"""The training state one process holds: embedding rows (all tables, or one rank's shards),
the MLP parameters, optimizer state, and where a resumed run starts from.

Precision bf16: every weight and table is held as Split-SGD-BF16 halves (bf16 high half, used
by forward and backward; uint16 low half, read only by the updates): 4 bytes per parameter,
and the fp32 masters are rebuilt exactly. A table row keeps its two halves together ([rows,
2D]: hi then lo), so the update touches one place per row. Optimizer rwsadagrad adds its
accumulators (one fp32 per MLP parameter, one per table row, zero at start as in the
reference); adagrad (exact) an fp32 state of every parameter's shape, tables included ([rows,
D], in huge-page memory like the tables; zero at start as torch's initial_accumulator_value).
Nothing table-sized is copied to build or to checkpoint the state.
"""

from __future__ import annotations

import time

import numpy as np
import tvm

from dlrm_tvm.runtime.memory import table_buffer


def split_bits(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fp32 -> (upper 16 bits, lower 16 bits) as uint16 arrays: the Split-SGD-BF16 halves of
    ``w`` (the upper half is its bf16 value, truncated)."""
    bits = np.ascontiguousarray(w, np.float32).view(np.uint32)
    return (bits >> 16).astype(np.uint16), (bits & 0xFFFF).astype(np.uint16)


def split_fp32(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fp32 -> (bf16 high half, uint16 low half): the Split-SGD-BF16 storage of ``w``."""
    import ml_dtypes

    hi, lo = split_bits(w)
    return hi.view(ml_dtypes.bfloat16), lo


def combine_fp32(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """The fp32 masters of Split-SGD-BF16 halves, exactly: ``hi`` the upper halves (bf16, or
    their bits as uint16), ``lo`` the lower halves (uint16)."""
    hb = np.ascontiguousarray(hi).view(np.uint16).astype(np.uint32)
    return ((hb << 16) | lo.astype(np.uint32)).view(np.float32)


def split_rows(w: np.ndarray) -> np.ndarray:
    """fp32 [rows, D] -> Split-SGD rows [rows, 2D] (bf16 view): hi halves, then lo halves."""
    import ml_dtypes

    n, d = w.shape
    out = np.empty((n, 2 * d), np.uint16)
    step = max(1, (1 << 24) // max(1, d))  # 64 MiB of fp32 at a time: no table-sized temporaries
    for a in range(0, n, step):
        bits = np.ascontiguousarray(w[a:a + step], np.float32).view(np.uint32)
        out[a:a + step, :d] = bits >> 16
        out[a:a + step, d:] = bits & 0xFFFF
    return out.view(ml_dtypes.bfloat16)


def combine_rows(t: np.ndarray) -> np.ndarray:
    """Split-SGD rows [rows, 2D] -> the fp32 masters [rows, D], exactly."""
    u = np.ascontiguousarray(t).view(np.uint16)
    d = u.shape[1] // 2
    return combine_fp32(u[:, :d], u[:, d:])


class _Clock:
    """``with clock(name):`` appends the block's seconds to timings[name] (if timings)."""

    def __init__(self, timings: dict[str, list[float]] | None):
        self.timings = timings
        self.name = ""

    def __call__(self, name: str) -> _Clock:
        self.name = name
        return self

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        if self.timings is not None:
            self.timings.setdefault(self.name, []).append(time.perf_counter() - self.t0)


def array_blocks(tables: np.ndarray) -> list[tuple[int, object]]:
    """``tables`` (fp32 [rows, D]) as one row block for SparseParams."""
    def fill(a: int, b: int, out: np.ndarray) -> None:
        out[...] = tables[a:b]

    return [(tables.shape[0], fill)]


class SparseParams:
    """Embedding rows held by this process (all tables, or one rank's shards), concatenated
    [rows, D], in huge-page memory; in bf16 as Split-SGD rows [rows, 2D] (each row's bf16 high
    halves then its low halves: one place per row); rwsadagrad's row accumulators [rows] or
    adagrad's state [rows, D] (``acc_cols`` = D), fp32 in either precision.

    ``tables``: the fp32 rows [rows, D], or row blocks [(rows, fill)] with ``dim``, where
    ``fill(a, b, out)`` writes a block's fp32 rows [a, b) into ``out`` (params.init_row_blocks,
    array_blocks). Each block is written straight into the final buffer a chunk at a time
    (fp32: in place; bf16: split from a chunk-sized fp32 buffer), so building it holds the
    parameters plus one chunk, never a second copy of the tables.
    """

    CHUNK_VALUES = 1 << 22  # fp32 values per chunk (16 MiB)

    def __init__(self, tables, bf16: bool, adagrad: bool, dim: int | None = None,
                 acc_cols: int | None = None):
        self.bf16 = bf16
        if isinstance(tables, np.ndarray):
            if tables.ndim != 2:
                raise ValueError(f"tables must be [rows, D], got shape {tables.shape}")
            dim = tables.shape[1]
            tables = array_blocks(tables)
        if dim is None:
            raise ValueError("row blocks need the embedding dim")
        n = sum(r for r, _ in tables)
        if bf16:
            import ml_dtypes

            host, self.tables = table_buffer((n, 2 * dim), ml_dtypes.bfloat16)
            halves = host.view(np.uint16)
        else:
            host, self.tables = table_buffer((n, dim), np.float32)
        self._host = host  # the tables' memory as an array (a view, no copy)
        step = max(1, self.CHUNK_VALUES // max(1, dim))
        buf = np.empty((min(step, n), dim), np.float32) if bf16 else None
        at = 0
        for rows, fill in tables:
            for a in range(0, rows, step):
                b = min(rows, a + step)
                lo, hi = at + a, at + b
                if not bf16:
                    fill(a, b, host[lo:hi])
                    continue
                w = buf[:b - a]
                fill(a, b, w)
                bits = w.view(np.uint32)  # as split_rows
                halves[lo:hi, :dim] = bits >> 16
                halves[lo:hi, dim:] = bits & 0xFFFF
            at += rows
        self.row_acc = []
        self._row_acc_host = None
        if adagrad:
            shape = (n,) if acc_cols is None else (n, acc_cols)
            self._row_acc_host, acc = table_buffer(shape, np.float32, zero=True)
            self.row_acc = [acc]

    def load_row_acc(self, blocks) -> None:
        """Set the row accumulators from blocks [(rows, fill)] (``fill(a, b, out)`` writes
        rows [a, b) of the block's accumulators), in the order of the rows."""
        at = 0
        for rows, fill in blocks:
            fill(0, rows, self._row_acc_host[at:at + rows])
            at += rows
        if at != self._row_acc_host.shape[0]:
            raise ValueError(f"{at} row accumulators given for {self._row_acc_host.shape[0]} rows")

    def update_args(self) -> list:
        """The arguments of embedding_update before (indices, offsets, d_pooled, lr)."""
        return [self.tables, *self.row_acc]

    def fp32(self) -> np.ndarray:
        if self.bf16:
            return combine_rows(self.tables.numpy())
        return self.tables.numpy()

    def fp32_rows(self, lo: int, hi: int) -> np.ndarray:
        """fp32 rows [lo, hi) of the stored tables: a view of the live memory (fp32) or those
        rows' masters rebuilt from the Split-SGD halves (bf16); no whole-table copy."""
        if self.bf16:
            return combine_rows(self._host[lo:hi])
        return self._host[lo:hi]

    def row_acc_rows(self, lo: int, hi: int) -> np.ndarray | None:
        return None if self._row_acc_host is None else self._row_acc_host[lo:hi]


class DenseParams:
    """The MLP parameters (replicated on every rank), in the module's order, with their
    Split-SGD low halves (bf16) and Adagrad accumulators (rwsadagrad and adagrad)."""

    def __init__(self, specs, mlp: dict[str, np.ndarray], bf16: bool, adagrad: bool, dev):
        self.specs, self.bf16 = specs, bf16
        t = tvm.runtime.tensor
        self.mlp, self.mlp_lo = [], []
        for name, shape in specs:
            a = mlp[name]
            if a.shape != shape:
                raise ValueError(f"parameter {name} must have shape {shape}, got {a.shape}")
            a = np.ascontiguousarray(a, np.float32)
            if bf16:
                hi, lo = split_fp32(a)
                self.mlp.append(t(hi, dev))
                self.mlp_lo.append(t(lo, dev))
            else:
                self.mlp.append(t(a, dev))
        self.mlp_acc = [t(np.zeros(s, np.float32), dev) for _, s in specs] if adagrad else []

    def update_args(self) -> list:
        """The arguments of dense_update before (grads, lr)."""
        return [*self.mlp, *self.mlp_lo, *self.mlp_acc]

    def fp32(self) -> dict[str, np.ndarray]:
        if self.bf16:
            return {name: combine_fp32(hi.numpy(), lo.numpy())
                    for (name, _), hi, lo in zip(self.specs, self.mlp, self.mlp_lo, strict=True)}
        return {name: a.numpy() for (name, _), a in zip(self.specs, self.mlp, strict=True)}

    def acc(self) -> dict[str, np.ndarray]:
        return {name: a.numpy() for (name, _), a in zip(self.specs, self.mlp_acc, strict=True)}


class StartState:
    """Where training resumes from (a checkpoint): any table's rows by range, the MLP, the
    optimizer state and the step. ``rows(t, a, b)`` and ``row_acc(t, a, b)`` read exactly
    the rows asked for, so each rank of any rank count loads only its shards."""

    def __init__(self, rows, row_acc, mlp: dict, mlp_acc: dict | None, step: int):
        self.rows, self.row_acc, self.mlp, self.mlp_acc, self.step = (rows, row_acc, mlp,
                                                                      mlp_acc, step)


def start_fill(read, t: int, first: int = 0):
    """A row block's fill over ``read(table, a, b)`` (a StartState's rows or row_acc), for
    the rows of table ``t`` from ``first``."""
    def fill(a: int, b: int, out: np.ndarray) -> None:
        out[...] = read(t, first + a, first + b)

    return fill
