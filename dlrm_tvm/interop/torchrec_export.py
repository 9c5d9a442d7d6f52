"""``export-torchrec``: our state as the ``state_dict`` of torchrec's ``DLRM_DCN`` (interaction
"dcn") or ``DLRM`` (interaction "dot" without the diagonal), loadable with
``load_state_dict(strict=True)`` into the model ``torchrec_model_args`` describes.

torchrec's modules (``torchrec/models/dlrm.py``, ``modules/crossnet.py``, ``modules/mlp.py``,
``modules/embedding_modules.py``; key names checked against torchrec 1.9.2's ``DLRM_DCN``)::

  sparse_arch.embedding_bag_collection.embedding_bags.{table}.weight   [rows, D]
  dense_arch.model._mlp.{i}._linear.weight / .bias                      [out, in] / [out]
  inter_arch.crossnet.W_kernels.{l}                                     [N, r]   (DLRM_DCN)
  inter_arch.crossnet.V_kernels.{l}                                     [r, N]
  inter_arch.crossnet.bias.{l}                                          [N]
  over_arch.model.0._mlp.{i}._linear.weight / .bias   the over arch's MLP: every top layer
                                                      but the last, each with a ReLU
  over_arch.model.1.weight / .bias                    the last top layer, a plain Linear
                                                      [1, in]: the model returns the LOGIT

Ours -> theirs:

* tables: table t is ``t_cat_{t}`` with the one feature ``cat_{t}`` (the names of mlcommons
  recommendation_v2's ``dlrm_main.py``: ``EmbeddingBagConfig(name=f"t_{feature_name}",
  feature_names=[feature_name])`` over torchrec's ``DEFAULT_CAT_NAMES``), in our table order;
  torchrec's ``SparseArch`` stacks the pooled features in that order.
* MLPs: our Wt [in, out] transposed; the first top layer's padded rows dropped.
* cross layers: ``cross{l}_u`` [Np, r] is x -> x @ u, torchrec's V (applied first):
  ``V_kernels[l] = u[:N].T``; ``cross{l}_v`` [r, Np]: ``W_kernels[l] = v[:, :N].T``;
  ``bias[l] = b[:N]``. The entries past N (padding to a multiple of 16) only ever meet zero
  columns of x0, so dropping them changes nothing.
* interaction order: DCN's x0 is [bottom output, pooled table 0, ..., table T-1] in both, so
  no permutation. The dot interaction's pairs differ: ours (the reference's) are ``for i in
  range(F): for j in range(i)`` (the strict lower triangle, row by row), torchrec's
  ``torch.triu_indices(F, F, offset=1)`` (the strict upper triangle, row by row); both after
  the bottom output. The dot products are symmetric, so the first top layer's input rows are
  permuted: torchrec's pair (a, b), a < b, takes the row of our pair (b, a) (``_dot_order``).
* output: torchrec returns the logit [B, 1] (its training wrapper ``DLRMTrain`` applies
  ``BCEWithLogitsLoss``); our predictions are its sigmoid.

Not exportable (refused): "cat" (torchrec's ``DLRM`` has no cat interaction) and "dot" with
the diagonal (``--arch-interaction-itself``; torchrec's has none), a top MLP of one layer
(torchrec's ``OverArch`` needs two or more).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from dlrm_tvm.config import Config, ModelConfig
from dlrm_tvm.interop.onnx_export import pair_indices
from dlrm_tvm.interop.reference import check_state, model_of

EBC = "sparse_arch.embedding_bag_collection.embedding_bags"


def feature_name(t: int) -> str:
    """torchrec's name of our table ``t``'s feature (``DEFAULT_CAT_NAMES``)."""
    return f"cat_{t}"


def table_name(t: int) -> str:
    """The ``EmbeddingBagConfig`` name of our table ``t`` (mlcommons ``dlrm_main.py``)."""
    return f"t_{feature_name(t)}"


def check_exportable(m: ModelConfig) -> None:
    """Raise ValueError unless torchrec has a model of ``m``'s structure."""
    if m.interaction == "cat":
        raise ValueError("export-torchrec: torchrec's DLRM has no cat interaction (only dot, "
                         "DLRM_DCN's cross layers and DLRM_Projection); this model uses "
                         "--arch-interaction-op cat, which torchrec cannot load")
    if m.interaction == "dot" and m.interaction_itself:
        raise ValueError("export-torchrec: torchrec's DLRM interaction has no diagonal "
                         "(its pairs are torch.triu_indices(F, F, offset=1)); this model uses "
                         "--arch-interaction-itself, which torchrec cannot load")
    if len(m.mlp_top) < 2:
        raise ValueError(f"export-torchrec: torchrec's OverArch needs two or more top layers "
                         f"(an MLP, then the final Linear), this model has mlp_top "
                         f"{m.mlp_top}")


def torchrec_model_args(cfg: ModelConfig | Config) -> dict[str, Any]:
    """The torchrec model the exported state dict loads into: ``{"model": "DLRM_DCN" or
    "DLRM", "tables": [{"name", "embedding_dim", "num_embeddings", "feature_names"}, ...]
    (one EmbeddingBagConfig each, in order), "dense_in_features", "dense_arch_layer_sizes",
    "over_arch_layer_sizes"[, "dcn_num_layers", "dcn_low_rank_dim"]}`` (JSON-able)."""
    m = model_of(cfg)
    check_exportable(m)
    args: dict[str, Any] = {
        "model": "DLRM_DCN" if m.interaction == "dcn" else "DLRM",
        "tables": [{"name": table_name(t), "embedding_dim": m.embedding_dim,
                    "num_embeddings": rows, "feature_names": [feature_name(t)]}
                   for t, rows in enumerate(m.table_rows)],
        "dense_in_features": m.num_dense,
        "dense_arch_layer_sizes": list(m.mlp_bot[1:]),
        "over_arch_layer_sizes": list(m.mlp_top),
    }
    if m.interaction == "dcn":
        args["dcn_num_layers"] = m.dcn_num_layers
        args["dcn_low_rank_dim"] = m.dcn_low_rank_dim
    return args


def _dot_order(m: ModelConfig) -> np.ndarray:
    """Rows of our first top layer (true width) in torchrec DLRM's input order: the bottom
    output's D rows, then for each of torchrec's pairs (a, b), a < b (``triu_indices``,
    row-major), the row of our pair (b, a)."""
    f, d = m.num_features, m.embedding_dim
    li, lj = pair_indices(f, False)
    ours = {(i, j): d + k for k, (i, j) in enumerate(zip(li, lj, strict=True))}
    rows = list(range(d)) + [ours[(b, a)] for a in range(f) for b in range(a + 1, f)]
    assert len(rows) == m.interaction_width
    return np.asarray(rows, np.int64)


def _f32(a: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def to_torchrec_state_dict(cfg: ModelConfig | Config,
                           state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our state as torchrec's ``state_dict`` entries (float32 NumPy arrays in the module's
    order; see the module docstring for every name and layout)."""
    m = model_of(cfg)
    check_exportable(m)
    check_state(m, state)
    out: dict[str, np.ndarray] = {}
    tables = _f32(state["tables"])
    for t, (rows, off) in enumerate(zip(m.table_rows, m.table_offsets, strict=True)):
        out[f"{EBC}.{table_name(t)}.weight"] = tables[off : off + rows].copy()

    def linear(prefix: str, part: str, i: int, k: int, rows: np.ndarray | None = None):
        wt = _f32(state[f"{part}{i}_w"])[:k]
        if rows is not None:
            wt = wt[rows]
        out[f"{prefix}.weight"] = np.ascontiguousarray(wt.T)
        out[f"{prefix}.bias"] = _f32(state[f"{part}{i}_b"]).copy()

    for i, (k, _) in enumerate(m.bot_layers):
        linear(f"dense_arch.model._mlp.{i}._linear", "bot", i, k)
    if m.interaction == "dcn":
        n, r = m.interaction_width, m.dcn_low_rank_dim
        net = "inter_arch.crossnet"
        for li in range(m.dcn_num_layers):
            out[f"{net}.W_kernels.{li}"] = np.ascontiguousarray(
                _f32(state[f"cross{li}_v"])[:, :n].T)
        for li in range(m.dcn_num_layers):
            out[f"{net}.V_kernels.{li}"] = np.ascontiguousarray(_f32(state[f"cross{li}_u"])[:n].T)
        for li in range(m.dcn_num_layers):
            out[f"{net}.bias.{li}"] = _f32(state[f"cross{li}_b"])[:n].copy()
        assert out[f"{net}.V_kernels.0"].shape == (r, n)
    top = m.top_layers
    for i, (k, _) in enumerate(top):
        rows = _dot_order(m) if (i == 0 and m.interaction == "dot") else None
        prefix = (f"over_arch.model.0._mlp.{i}._linear" if i < len(top) - 1
                  else "over_arch.model.1")
        linear(prefix, "top", i, k, rows)
    return out


def save_torchrec_state_dict(path: str | os.PathLike, cfg: ModelConfig | Config,
                             state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``torch.save`` of the state dict (a plain dict of float32 tensors, which
    ``torch.load(weights_only=True)`` reads) to ``path``; returns ``torchrec_model_args``."""
    import torch

    args = torchrec_model_args(cfg)
    sd = {k: torch.from_numpy(v) for k, v in to_torchrec_state_dict(cfg, state).items()}
    torch.save(sd, path)
    return args
