"""Parameter initialisation with the reference's distributions, independent of rank count.

Each table and each layer draws from its own stream, keyed by (seed, name), so a table's initial
rows are the same whichever rank holds it and however many ranks there are.
Embeddings: U(-sqrt(1/n), sqrt(1/n)) for a table of n rows. Linear (out m, in n): weight
N(0, sqrt(2/(m+n))), bias N(0, sqrt(1/m)). DCN cross layer (width N, rank r): both kernels
xavier-normal N(0, sqrt(2/(N+r))) and the bias zero, as torchrec's LowRankCrossNet.
"""

from __future__ import annotations

import zlib

import numpy as np
from dlrm_tvm.graphs.dlrm import mlp_param_specs

from dlrm_tvm.config import ModelConfig


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


# Values drawn at a time: the draws are float64, so a chunk is 32 MiB however big the table.
# (Config.check_fits counts this transient; keep the two in step.)
INIT_CHUNK_VALUES = 1 << 22


def fill_table_rows(seed: int, t: int, rows: int, dim: int, out: np.ndarray,
                    start: int = 0) -> np.ndarray:
    """Write rows [start, start + len(out)) of ``init_table(seed, t, rows, dim)`` into ``out``
    (float32 [n, dim], e.g. a view of the final buffer), drawing at most INIT_CHUNK_VALUES
    values at a time: no table-sized temporary. The stream is advanced past the first
    ``start`` rows (one 64-bit draw per value); a chunked draw gives the same values as one
    draw of the whole range."""
    n = out.shape[0]
    if out.shape != (n, dim) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 [n, {dim}], got {out.dtype} {out.shape}")
    if not 0 <= start <= start + n <= rows:
        raise ValueError(f"rows [{start}, {start + n}) are not within a table of {rows} rows")
    bound = np.sqrt(1.0 / rows)
    rng = _rng(seed, f"table{t}")
    rng.bit_generator.advance(start * dim)
    step = max(1, INIT_CHUNK_VALUES // max(1, dim))
    for a in range(0, n, step):
        b = min(n, a + step)
        out[a:b] = rng.uniform(-bound, bound, size=(b - a, dim))  # float64 -> float32 in place
    return out


def init_table(seed: int, t: int, rows: int, dim: int) -> np.ndarray:
    return init_table_rows(seed, t, rows, dim, 0, rows)


def init_tables(model: ModelConfig, seed: int) -> np.ndarray:
    """All tables concatenated: [sum(rows), D], each drawn straight into its rows."""
    out = np.empty((model.total_rows, model.embedding_dim), np.float32)
    for t, (r, off) in enumerate(zip(model.table_rows, model.table_offsets, strict=True)):
        fill_table_rows(seed, t, r, model.embedding_dim, out[off : off + r])
    return out


def init_row_blocks(seed: int, dim: int, parts) -> list[tuple[int, object]]:
    """The initial rows of ``parts`` ((table, table rows, start, stop) each, in order) as
    blocks (rows, fill) for ``trainer.SparseParams``: ``fill(a, b, out)`` writes rows
    [start + a, start + b) of the table into ``out``; nothing is drawn until then."""
    def block(t: int, rows: int, start: int):
        return lambda a, b, out: fill_table_rows(seed, t, rows, dim, out, start + a)

    return [(stop - start, block(t, rows, start)) for t, rows, start, stop in parts]


def init_mlp(model: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """{name: array} in the module's layout (Wt [in, out]; padded rows of top0_w are zero)."""
    params: dict[str, np.ndarray] = {}
    true_in = {f"{p}{i}_w": k for p, layers in (("bot", model.bot_layers),
                                                  ("top", model.top_layers))
               for i, (k, _) in enumerate(layers)}
    for name, shape in mlp_param_specs(model):
        rng = _rng(seed, name)
        if name.startswith("cross"):
            params[name] = _init_cross(rng, name, shape, model.interaction_width)
        elif name.endswith("_w"):
            k, n = true_in[name], shape[1]
            w = rng.normal(0.0, np.sqrt(2.0 / (k + n)), size=(n, k)).astype(np.float32)
            full = np.zeros(shape, np.float32)
            full[:k] = w.T
            params[name] = full
        else:
            (n,) = shape
            params[name] = rng.normal(0.0, np.sqrt(1.0 / n), size=n).astype(np.float32)
    return params


def _init_cross(rng: np.random.Generator, name: str, shape: tuple[int, ...],
                n: int) -> np.ndarray:
    """A DCN cross parameter in our layout (u [Np, r], v [r, Np], b [Np]) with its entries
    past the true width ``n`` zero: a kernel is drawn in torchrec's layout (V_kernels [r, N],
    W_kernels [N, r]) and transposed."""
    full = np.zeros(shape, np.float32)
    if name.endswith("_b"):
        return full
    r = shape[1] if name.endswith("_u") else shape[0]
    w = rng.normal(0.0, np.sqrt(2.0 / (n + r)), size=(r, n) if name.endswith("_u") else (n, r))
    if name.endswith("_u"):
        full[:n] = w.T
    else:
        full[:, :n] = w.T
    return full


def init_table_rows(seed: int, t: int, rows: int, dim: int, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of ``init_table(seed, t, rows, dim)``, drawn without the others: the
    stream is advanced past the first ``start`` rows (one 64-bit draw per value), so a rank
    holding a row range of a table too big for it initialises exactly those rows."""
    if not 0 <= start <= stop <= rows:
        raise ValueError(f"rows [{start}, {stop}) are not within a table of {rows} rows")
    return fill_table_rows(seed, t, rows, dim, np.empty((stop - start, dim), np.float32), start)
