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

Theirs -> ours (``from_torchrec_state_dict``; ``load_state`` routes a checkpoint file with
``sparse_arch.embedding_bag_collection.embedding_bags.*`` keys here, description kind
"torchrec"): the exact inverse. The model comes from the shapes: tables ``t_cat_0`` ...
``t_cat_{T-1}`` (rows, D), ``mlp_bot`` from ``dense_arch``, ``mlp_top`` from ``over_arch``,
"dcn" if there are ``inter_arch.crossnet.*`` keys (L and r from their count and shapes),
else "dot" without the diagonal; the hint gives only the fields the model does not use (the
dcn fields of a dot model, ``interaction_itself`` of a dcn one). Every key and shape is then
checked against the inferred model's (a missing, extra or misshapen key is a ValueError
naming it); Linear weights are transposed back, ``top0_w`` gets its zero rows past N (for
dot its rows un-permuted: ours[_dot_order] = W^T), ``cross{l}_u``/``_v``/``_b`` their zeros
past N (u[:N] = V^T, v[:, :N] = W^T); the over arch's final Linear is the last top layer. A
``DLRMTrain`` wrapper's ``model.`` prefix is dropped. Exporting the result gives the same
state dict bit for bit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from dlrm_tvm.config import Config, ConfigError, ModelConfig
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


# ---------------------------------------------------------------------------------------------
# Import: torchrec's state dict -> ours
# ---------------------------------------------------------------------------------------------

_DENSE = "dense_arch.model._mlp"
_OVER_MLP = "over_arch.model.0._mlp"
_OVER_LAST = "over_arch.model.1"
_CROSS = "inter_arch.crossnet"
_TABLE_RE = re.compile(rf"^{re.escape(EBC)}\.t_cat_(\d+)\.weight$")
_DENSE_RE = re.compile(rf"^{re.escape(_DENSE)}\.(\d+)\._linear\.weight$")
_OVER_RE = re.compile(rf"^{re.escape(_OVER_MLP)}\.(\d+)\._linear\.weight$")
_CROSS_RE = re.compile(rf"^{re.escape(_CROSS)}\.(W_kernels|V_kernels|bias)\.(\d+)$")


def torchrec_state_dict_of(ckpt: Any) -> Mapping[str, Any] | None:
    """The torchrec state dict in a loaded checkpoint (the dict itself, or its
    ``"state_dict"``; a ``DLRMTrain`` wrapper's ``model.`` prefix dropped), or None when it
    has no ``sparse_arch.embedding_bag_collection.embedding_bags.*`` key (not torchrec's)."""
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else ckpt
    if not isinstance(sd, Mapping):
        return None
    keys = [str(k) for k in sd]
    if keys and all(k.startswith("model.") for k in keys):
        sd = {k[len("model."):]: v for k, v in zip(keys, sd.values(), strict=True)}
    if not any(str(k).startswith(EBC + ".") for k in sd):
        return None
    return {str(k): v for k, v in sd.items()}


def torchrec_shapes(cfg: ModelConfig | Config) -> dict[str, tuple[int, ...]]:
    """Every key of the torchrec state dict of ``cfg``'s model and its shape, in the order
    ``to_torchrec_state_dict`` writes them."""
    m = model_of(cfg)
    check_exportable(m)
    d, n, r = m.embedding_dim, m.interaction_width, m.dcn_low_rank_dim
    out: dict[str, tuple[int, ...]] = {}
    for t, rows in enumerate(m.table_rows):
        out[f"{EBC}.{table_name(t)}.weight"] = (rows, d)
    for i, (k, o) in enumerate(m.bot_layers):
        out[f"{_DENSE}.{i}._linear.weight"] = (o, k)
        out[f"{_DENSE}.{i}._linear.bias"] = (o,)
    for what, shape in (("W_kernels", (n, r)), ("V_kernels", (r, n)), ("bias", (n,))):
        for li in range(m.num_cross_layers):
            out[f"{_CROSS}.{what}.{li}"] = shape
    top = m.top_layers
    for i, (k, o) in enumerate(top):
        prefix = f"{_OVER_MLP}.{i}._linear" if i < len(top) - 1 else _OVER_LAST
        out[f"{prefix}.weight"] = (o, k)
        out[f"{prefix}.bias"] = (o,)
    return out


def _shape(sd: Mapping[str, Any], key: str, what: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"the torchrec state dict has no {key} ({what})")
    shape = tuple(int(x) for x in np.shape(sd[key]))
    if len(shape) != 2:
        raise ValueError(f"{key} has shape {shape}, expected 2-D {what}")
    return shape


def _indices(sd: Mapping[str, Any], pattern: re.Pattern, group: int = 1) -> list[int]:
    return sorted({int(mt.group(group)) for k in sd if (mt := pattern.match(k))})


def _count(sd: Mapping[str, Any], pattern: re.Pattern, key_of, what: str) -> int:
    """How many consecutive indices 0..n-1 the keys matching ``pattern`` have (a gap names the
    first missing key)."""
    idx = _indices(sd, pattern, pattern.groups)
    for want, got in enumerate(idx):
        if want != got:
            raise ValueError(f"the torchrec state dict has no {key_of(want)} ({what} {want}), "
                             f"but has index {got}")
    return len(idx)


def infer_torchrec_model(sd: Mapping[str, Any],
                         cfg_hint: ModelConfig | Config | None = None) -> ModelConfig:
    """The ``ModelConfig`` a torchrec ``DLRM_DCN``/``DLRM`` state dict (our export's key
    names, see the module docstring) describes, from its shapes; ``cfg_hint`` gives only what
    the model does not use. Raises ValueError naming a missing key or an impossible shape."""
    ntab = _count(sd, _TABLE_RE, lambda t: f"{EBC}.{table_name(t)}.weight", "embedding table")
    if ntab == 0:
        raise ValueError(f"the torchrec state dict has no {EBC}.t_cat_{{t}}.weight (tables "
                         f"named t_cat_0, t_cat_1, ... as mlcommons dlrm_main.py and "
                         f"export-torchrec name them)")
    tshapes = [_shape(sd, f"{EBC}.{table_name(t)}.weight", "[rows, D]") for t in range(ntab)]
    d = tshapes[0][1]
    nbot = _count(sd, _DENSE_RE, lambda i: f"{_DENSE}.{i}._linear.weight", "dense_arch layer")
    if nbot == 0:
        raise ValueError(f"the torchrec state dict has no {_DENSE}.0._linear.weight "
                         f"(the dense arch's first Linear, [out, in])")
    bw = [_shape(sd, f"{_DENSE}.{i}._linear.weight", "[out, in]") for i in range(nbot)]
    nover = _count(sd, _OVER_RE, lambda i: f"{_OVER_MLP}.{i}._linear.weight",
                   "over_arch MLP layer")
    if nover == 0:
        raise ValueError(f"the torchrec state dict has no {_OVER_MLP}.0._linear.weight (the "
                         f"over arch's MLP: torchrec's OverArch has two or more layers)")
    tw = [_shape(sd, f"{_OVER_MLP}.{i}._linear.weight", "[out, in]") for i in range(nover)]
    tw.append(_shape(sd, f"{_OVER_LAST}.weight", "[1, in], the over arch's final Linear"))
    h = model_of(cfg_hint) if cfg_hint is not None else ModelConfig()
    kw: dict[str, Any] = dict(
        table_rows=tuple(r for r, _ in tshapes), embedding_dim=d,
        mlp_bot=(bw[0][1], *(o for o, _ in bw)), mlp_top=tuple(o for o, _ in tw),
        interaction_itself=False, dcn_num_layers=h.dcn_num_layers,
        dcn_low_rank_dim=h.dcn_low_rank_dim)
    if any(k.startswith(_CROSS + ".") for k in sd):
        nl = max(_indices(sd, _CROSS_RE, 2), default=-1) + 1
        if nl == 0:
            raise ValueError(f"the torchrec state dict has {_CROSS}.* keys but no "
                             f"{_CROSS}.V_kernels.0 ([r, N], the first cross layer)")
        rank = _shape(sd, f"{_CROSS}.V_kernels.0", "[r, N], the first cross layer")[0]
        kw.update(interaction="dcn", dcn_num_layers=nl, dcn_low_rank_dim=rank,
                  interaction_itself=h.interaction_itself)
    else:
        kw["interaction"] = "dot"
    try:
        m = ModelConfig(**kw)
    except ConfigError as e:
        raise ValueError(f"the torchrec state dict's shapes make no DLRM: {e}") from None
    return m


def from_torchrec_state_dict(sd: Mapping[str, Any], cfg_hint: ModelConfig | Config | None = None
                             ) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(ModelConfig, our fp32 state) from a torchrec ``DLRM_DCN``/``DLRM`` state dict of
    array-likes (NumPy arrays; torch tensors converted first): the inverse of
    ``to_torchrec_state_dict``, padding zeros included. Every key and shape is checked."""
    sd = {str(k): np.asarray(v) for k, v in sd.items()}
    m = infer_torchrec_model(sd, cfg_hint)
    want = torchrec_shapes(m)
    missing = [k for k in want if k not in sd]
    if missing:
        k = missing[0]
        raise ValueError(f"the torchrec state dict has no {k} (expected shape {want[k]} for "
                         f"the model its shapes describe: {_describe(m)})"
                         + (f"; {len(missing) - 1} more keys missing" if len(missing) > 1
                            else ""))
    extra = [k for k in sd if k not in want]
    if extra:
        shown = ", ".join(extra[:6]) + (" ..." if len(extra) > 6 else "")
        raise ValueError(f"the torchrec state dict has keys torchrec's "
                         f"{'DLRM_DCN' if m.interaction == 'dcn' else 'DLRM'} of "
                         f"{_describe(m)} does not: {shown}")
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise ValueError(f"{k} has shape {tuple(sd[k].shape)}, expected {shape} for the "
                             f"model its other shapes describe ({_describe(m)})")
    state: dict[str, np.ndarray] = {"tables": np.concatenate(
        [_f32(sd[f"{EBC}.{table_name(t)}.weight"]) for t in range(m.num_tables)], axis=0)}

    def linear(prefix: str, part: str, i: int, k: int, o: int, rows_to: int,
               order: np.ndarray | None = None) -> None:
        wt = np.zeros((rows_to, o), np.float32)
        w = _f32(sd[f"{prefix}.weight"]).T
        if order is None:
            wt[:k] = w
        else:
            wt[order] = w  # torchrec's input row j is our row order[j]
        state[f"{part}{i}_w"] = wt
        state[f"{part}{i}_b"] = _f32(sd[f"{prefix}.bias"]).copy()

    for i, (k, o) in enumerate(m.bot_layers):
        linear(f"{_DENSE}.{i}._linear", "bot", i, k, o, k)
    n, npad, r = m.interaction_width, m.interaction_width_padded, m.dcn_low_rank_dim
    for li in range(m.num_cross_layers):  # u = V^T, v = W^T, zero past N
        u, v, b = (np.zeros((npad, r), np.float32), np.zeros((r, npad), np.float32),
                   np.zeros(npad, np.float32))
        u[:n] = _f32(sd[f"{_CROSS}.V_kernels.{li}"]).T
        v[:, :n] = _f32(sd[f"{_CROSS}.W_kernels.{li}"]).T
        b[:n] = _f32(sd[f"{_CROSS}.bias.{li}"])
        state.update({f"cross{li}_u": u, f"cross{li}_v": v, f"cross{li}_b": b})
    top = m.top_layers
    for i, (k, o) in enumerate(top):
        prefix = f"{_OVER_MLP}.{i}._linear" if i < len(top) - 1 else _OVER_LAST
        order = _dot_order(m) if (i == 0 and m.interaction == "dot") else None
        linear(prefix, "top", i, k, o, npad if i == 0 else k, order)
    ordered = {name: state[name] for name, _ in [("tables", None), *m.mlp_param_specs()]}
    check_state(m, ordered)
    return m, ordered


def _describe(m: ModelConfig) -> str:
    s = (f"{m.num_tables} tables of D={m.embedding_dim}, mlp_bot {list(m.mlp_bot)}, "
         f"mlp_top {list(m.mlp_top)}, interaction {m.interaction}")
    if m.interaction == "dcn":
        s += f" ({m.dcn_num_layers} cross layers of rank {m.dcn_low_rank_dim})"
    return s
