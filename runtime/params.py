"""Parameter initialisation with the reference's distributions, independent of rank count.

Each table and each layer draws from its own stream, keyed by (seed, name), so a table's initial
rows are the same whichever rank holds it and however many ranks there are.
Embeddings: U(-sqrt(1/n), sqrt(1/n)) for a table of n rows. Linear (out m, in n): weight
N(0, sqrt(2/(m+n))), bias N(0, sqrt(1/m)).
"""

from __future__ import annotations

import zlib

import numpy as np
from dlrm_tvm.graphs.dlrm import mlp_param_specs

from dlrm_tvm.config import ModelConfig


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def init_table(seed: int, t: int, rows: int, dim: int) -> np.ndarray:
    bound = np.sqrt(1.0 / rows)
    return _rng(seed, f"table{t}").uniform(-bound, bound, size=(rows, dim)).astype(np.float32)


def init_tables(model: ModelConfig, seed: int) -> np.ndarray:
    """All tables concatenated: [sum(rows), D]."""
    out = np.empty((model.total_rows, model.embedding_dim), np.float32)
    for t, (r, off) in enumerate(zip(model.table_rows, model.table_offsets, strict=True)):
        out[off : off + r] = init_table(seed, t, r, model.embedding_dim)
    return out


def init_mlp(model: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """{name: array} in the module's layout (Wt [in, out]; padded rows of top0_w are zero)."""
    params: dict[str, np.ndarray] = {}
    true_in = {f"{p}{i}_w": k for p, layers in (("bot", model.bot_layers),
                                                  ("top", model.top_layers))
               for i, (k, _) in enumerate(layers)}
    for name, shape in mlp_param_specs(model):
        rng = _rng(seed, name)
        if name.endswith("_w"):
            k, n = true_in[name], shape[1]
            w = rng.normal(0.0, np.sqrt(2.0 / (k + n)), size=(n, k)).astype(np.float32)
            full = np.zeros(shape, np.float32)
            full[:k] = w.T
            params[name] = full
        else:
            (n,) = shape
            params[name] = rng.normal(0.0, np.sqrt(1.0 / n), size=n).astype(np.float32)
    return params


def init_table_rows(seed: int, t: int, rows: int, dim: int, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of ``init_table(seed, t, rows, dim)``, drawn without the others: the
    stream is advanced past the first ``start`` rows (one 64-bit draw per value), so a rank
    holding a row range of a table too big for it initialises exactly those rows."""
    if not 0 <= start <= stop <= rows:
        raise ValueError(f"rows [{start}, {stop}) are not within a table of {rows} rows")
    bound = np.sqrt(1.0 / rows)
    rng = _rng(seed, f"table{t}")
    rng.bit_generator.advance(start * dim)
    return rng.uniform(-bound, bound, size=(stop - start, dim)).astype(np.float32)
