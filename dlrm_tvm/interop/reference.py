"""Checkpoints of facebookresearch/dlrm (``dlrm_s_pytorch.py``) to and from our state.

Our state ("state") is ``{"tables": float32 [total_rows, D], "bot0_w": Wt [in, out],
"bot0_b": [out], ..., "top0_w": Wt [interaction_width_padded, out], ...}``: all tables
concatenated at ``ModelConfig.table_offsets``, every Linear weight stored transposed, and the
first top layer's rows past the true interaction width zero (the MLP part's names, shapes and
order are ``ModelConfig.mlp_param_specs``, dlrm_tvm/config.py).

The reference saves ``torch.save`` of a dict (``--save-model``)::

    {"state_dict": {"emb_l.{t}.weight": [rows_t, D],
                    "bot_l.{2i}.weight": [out, in], "bot_l.{2i}.bias": [out],
                    "top_l.{2i}.weight": [out, in], "top_l.{2i}.bias": [out]},
     "epoch", "nepochs", "iter", "nbatches", "nbatches_test", "train_acc", "train_loss",
     "test_acc", "test_loss", "total_loss", "total_accu", "opt_state_dict", ["test_auc"]}

(``bot_l``/``top_l`` are ``nn.Sequential`` of Linear, activation, Linear, ...: the Linear
layers sit at the even indices.) Its ``--load-model`` reads ``state_dict`` (strict
``load_state_dict``), ``iter``, ``epoch``, ``nepochs``, ``nbatches``, ``nbatches_test``,
``train_loss``, ``total_loss``, ``test_acc``, ``test_auc`` (with ``--mlperf-logging``) and,
unless ``--inference-only``, ``opt_state_dict`` (loaded into its optimizer).

The reference has no DCN interaction: a "dcn" model's cross layers are written beside the
above as ``crossnet.{W_kernels,V_kernels,bias}.{l}`` (torchrec's ``LowRankCrossNet`` names and
layouts), which dlrm_s_pytorch.py's strict loading refuses and dlrm-tvm reads back
(``to_reference_state_dict``; ``export-torchrec`` writes torchrec's own DLRM_DCN).

The conversions between the two state layouts (``from_reference_state_dict``,
``to_reference_state_dict``) are plain NumPy; torch is imported only by the two checkpoint
functions, which read and write the files (``load_reference_checkpoint``, through
``load_weights_only``, and ``save_reference_checkpoint``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from dlrm_tvm.config import Config, ModelConfig

# Metadata key our checkpoints carry beside the reference's (the reference ignores it): the
# interaction, which shapes alone cannot always tell.
META_KEY = "dlrm_tvm_model"

# The reference's --learning-rate default, for the optimizer state we write.
REFERENCE_DEFAULT_LR = 0.01

_EMB_RE = re.compile(r"^emb_l\.(\d+)\.weight$")
_MLP_RE = re.compile(r"^(bot_l|top_l)\.(\d+)\.(weight|bias)$")
_VW_RE = re.compile(r"^v_W_l\.(\d+)$")
_CROSS_RE = re.compile(r"^crossnet\.(W_kernels|V_kernels|bias)\.(\d+)$")


# ---------------------------------------------------------------------------------------------
# Our layout
# ---------------------------------------------------------------------------------------------


def model_of(cfg: ModelConfig | Config) -> ModelConfig:
    """The ``ModelConfig`` of ``cfg`` (a ``ModelConfig`` or a whole ``Config``)."""
    if isinstance(cfg, Config):
        return cfg.model
    if isinstance(cfg, ModelConfig):
        return cfg
    raise TypeError(f"expected a ModelConfig or Config, got {type(cfg).__name__}")


# The MLP parameter layout has one name, ``ModelConfig.mlp_param_specs``; this alias is kept for
# tests/test_interop.py, which imports it from here.
mlp_layout = ModelConfig.mlp_param_specs


def cross_layers(m: ModelConfig,
                 state: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, ...]]:
    """The DCN cross layers of ``state`` at the true width N = ``interaction_width`` (float32,
    the padding past N dropped: it only ever meets zero columns of x0), one (u [N, r],
    v [r, N], b [N]) per layer, x_{l+1} = x0 * (x_l @ u @ v + b) + x_l; [] unless "dcn"."""
    n = m.interaction_width
    return [(_f32(state[f"cross{li}_u"])[:n], _f32(state[f"cross{li}_v"])[:, :n],
             _f32(state[f"cross{li}_b"])[:n]) for li in range(m.num_cross_layers)]


def check_state(m: ModelConfig, state: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError unless ``state`` has every parameter of ``m`` in our layout.

    ``top0_w`` may have either ``interaction_width_padded`` rows (the compiled module's layout)
    or exactly ``interaction_width`` rows (as ``torch_ref.TorchTrainer.state`` returns)."""
    expect = [("tables", (m.total_rows, m.embedding_dim)), *m.mlp_param_specs()]
    missing = [n for n, _ in expect if n not in state]
    if missing:
        raise ValueError(f"the state lacks {missing} (expected our layout: tables + MLP Wt/b)")
    for name, shape in expect:
        got = tuple(np.shape(state[name]))
        ok = got == shape
        if name == "top0_w" and not ok:
            ok = got == (m.interaction_width, shape[1])
        if not ok:
            raise ValueError(f"state[{name!r}] has shape {got}, but the model needs {shape}")


def _f32(a: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def top0_weight(m: ModelConfig, state: Mapping[str, np.ndarray]) -> np.ndarray:
    """The first top layer's Wt with only its ``interaction_width`` true rows."""
    return _f32(state["top0_w"])[: m.interaction_width]


# ---------------------------------------------------------------------------------------------
# The reference's layout (plain NumPy)
# ---------------------------------------------------------------------------------------------


def to_reference_state_dict(cfg: ModelConfig | Config,
                            state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our state as the reference's ``state_dict`` entries (float32 NumPy arrays, in the
    reference module's order): per-table ``emb_l.{t}.weight``, ``{bot,top}_l.{2i}.weight``
    [out, in] and ``.bias``. The padded rows of ``top0_w`` are dropped.

    A "dcn" model adds its cross layers as ``crossnet.W_kernels.{l}`` [N, r],
    ``crossnet.V_kernels.{l}`` [r, N] and ``crossnet.bias.{l}`` [N]: torchrec's
    ``LowRankCrossNet`` parameters as a submodule ``crossnet`` between the interaction's
    concatenation and ``top_l`` (``V = u^T`` is applied first, ``W = v^T`` second; the
    layout of ``bench/torch_ref.build``). dlrm_s_pytorch.py itself has no DCN interaction
    (``--arch-interaction-op`` is dot or cat), so its strict ``--load-model`` refuses these
    entries; dlrm-tvm reads them back (``from_reference_state_dict``)."""
    m = model_of(cfg)
    check_state(m, state)
    tables = _f32(state["tables"])
    out: dict[str, np.ndarray] = {}
    for t, (rows, off) in enumerate(zip(m.table_rows, m.table_offsets, strict=True)):
        out[f"emb_l.{t}.weight"] = tables[off : off + rows].copy()
    for part, layers in (("bot", m.bot_layers), ("top", m.top_layers)):
        for i, (k, _) in enumerate(layers):
            wt = _f32(state[f"{part}{i}_w"])[:k]
            out[f"{part}_l.{2 * i}.weight"] = np.ascontiguousarray(wt.T)
            out[f"{part}_l.{2 * i}.bias"] = _f32(state[f"{part}{i}_b"]).copy()
    layers = cross_layers(m, state)
    for li, (_, v, _) in enumerate(layers):
        out[f"crossnet.W_kernels.{li}"] = np.ascontiguousarray(v.T)
    for li, (u, _, _) in enumerate(layers):
        out[f"crossnet.V_kernels.{li}"] = np.ascontiguousarray(u.T)
    for li, (_, _, b) in enumerate(layers):
        out[f"crossnet.bias.{li}"] = b.copy()
    return out


def _interaction_candidates(width: int, d: int, f: int) -> list[tuple[str, bool]]:
    cands = []
    if width == d + f * (f - 1) // 2:
        cands.append(("dot", False))
    if width == d + f * (f + 1) // 2:
        cands.append(("dot", True))
    if width == d * f:
        cands.append(("cat", False))
    return cands


def _mlp_chain(part: str, layers: dict[int, dict[str, np.ndarray]]) -> list[tuple[int, int]]:
    """(in, out) of each Linear of ``part`` ("bot_l"/"top_l"), checking indices and shapes."""
    if not layers:
        raise ValueError(f"the checkpoint has no {part}.*.weight: not a DLRM state_dict")
    idx = sorted(layers)
    want = list(range(0, 2 * len(idx), 2))
    if idx != want:
        raise ValueError(
            f"{part} has Linear layers at indices {idx}; the reference's nn.Sequential has them "
            f"at {want} (Linear, activation, Linear, ...)"
        )
    dims = []
    for j in idx:
        entry = layers[j]
        for what in ("weight", "bias"):
            if what not in entry:
                raise ValueError(f"the checkpoint has no {part}.{j}.{what}")
        w, b = entry["weight"], entry["bias"]
        if w.ndim != 2:
            raise ValueError(f"{part}.{j}.weight must be 2-D [out, in], got shape {w.shape}")
        if b.shape != (w.shape[0],):
            raise ValueError(
                f"{part}.{j}.bias has shape {b.shape} but {part}.{j}.weight {tuple(w.shape)} "
                f"has {w.shape[0]} outputs"
            )
        if dims and dims[-1][1] != w.shape[1]:
            raise ValueError(
                f"{part}.{j}.weight takes {w.shape[1]} inputs but the previous layer "
                f"{part}.{j - 2} outputs {dims[-1][1]}: inconsistent layer shapes"
            )
        dims.append((int(w.shape[1]), int(w.shape[0])))
    return dims


def infer_model_config(shapes: Mapping[str, tuple[int, ...]],
                       cfg_hint: ModelConfig | Config | None = None) -> ModelConfig:
    """The ``ModelConfig`` a reference ``state_dict`` with these entry shapes describes.

    Table rows, D, ``mlp_bot`` (with its input width) and ``mlp_top`` (without) come from the
    shapes. The interaction comes from the first top layer's input width (F = T + 1):
    ``cat`` D*F, ``dot`` D + F(F-1)/2, ``dot`` with the diagonal D + F(F+1)/2. Where a width
    fits more than one (e.g. cat and dot with the diagonal when D(F-1) = F(F+1)/2), the
    interaction of ``cfg_hint`` decides; a hint that the shapes contradict is an error.
    ``crossnet.*`` entries (as ``to_reference_state_dict`` writes them) make it "dcn", their
    count and shapes its layers and rank; then the hint must say "dcn" too.
    Only the hint's interaction fields are used. Raises ValueError on inconsistent shapes."""
    return _infer({k: _Shape(s) for k, s in shapes.items()}, _hint_pair(cfg_hint))


class _Shape:
    """Stands for an array where only the shape matters."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(int(x) for x in shape)
        self.ndim = len(self.shape)


def _group(sd: Mapping[str, Any]):
    emb: dict[int, Any] = {}
    mlp: dict[str, dict[int, dict[str, Any]]] = {"bot_l": {}, "top_l": {}}
    vw: dict[int, Any] = {}
    cross: dict[int, dict[str, Any]] = {}
    unknown = []
    for key, val in sd.items():
        if mt := _EMB_RE.match(key):
            emb[int(mt.group(1))] = val
        elif mt := _MLP_RE.match(key):
            mlp[mt.group(1)].setdefault(int(mt.group(2)), {})[mt.group(3)] = val
        elif mt := _VW_RE.match(key):
            vw[int(mt.group(1))] = val
        elif mt := _CROSS_RE.match(key):
            cross.setdefault(int(mt.group(2)), {})[mt.group(1)] = val
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:6]) + (" ..." if len(unknown) > 6 else "")
        raise ValueError(
            f"the checkpoint's state_dict has entries a plain DLRM does not: {shown} "
            f"(QR or mixed-dimension embeddings, --qr-flag / --md-flag, are not supported)"
        )
    return emb, mlp, vw, cross


def _cross_shape(cross: dict[int, dict[str, Any]], n: int) -> tuple[int, int]:
    """(L, r) of the ``crossnet.*`` entries, checking that layers 0..L-1 each have W_kernels
    [N, r], V_kernels [r, N] and bias [N] with one r."""
    if sorted(cross) != list(range(len(cross))):
        missing = sorted(set(range(max(cross) + 1)) - set(cross))
        raise ValueError(f"the checkpoint lacks cross layers {missing} (crossnet.*.{{l}})")
    ranks = set()
    for li in sorted(cross):
        have = cross[li]
        for what in ("W_kernels", "V_kernels", "bias"):
            if what not in have:
                raise ValueError(f"the checkpoint has no crossnet.{what}.{li}")
        w, v, b = have["W_kernels"].shape, have["V_kernels"].shape, have["bias"].shape
        r = v[0] if len(v) == 2 else -1
        if len(w) != 2 or w != (n, r) or v != (r, n) or b != (n,):
            raise ValueError(
                f"cross layer {li}: crossnet.W_kernels {tuple(w)}, V_kernels {tuple(v)}, bias "
                f"{tuple(b)}; with N = (T+1)*D = {n} they must be [N, r], [r, N] and [N]")
        ranks.add(int(r))
    if len(ranks) != 1:
        raise ValueError(f"the cross layers have different ranks {sorted(ranks)}")
    return len(cross), ranks.pop()


def _hint_pair(cfg_hint: ModelConfig | Config | None) -> tuple[str, bool] | None:
    """(interaction, interaction_itself) of a hint; interaction_itself is False for cat."""
    if cfg_hint is None:
        return None
    h = model_of(cfg_hint)
    return h.interaction, h.interaction_itself if h.interaction == "dot" else False


def _infer(sd: Mapping[str, Any], want: tuple[str, bool] | None) -> ModelConfig:
    emb, mlp, _, cross = _group(sd)
    if not emb:
        raise ValueError("the checkpoint has no emb_l.{t}.weight entries: not a DLRM state_dict")
    if sorted(emb) != list(range(len(emb))):
        missing = sorted(set(range(max(emb) + 1)) - set(emb))
        raise ValueError(f"the checkpoint lacks embedding tables {missing} (emb_l.{{t}}.weight)")
    dims = set()
    for t in sorted(emb):
        shape = emb[t].shape
        if len(shape) != 2:
            raise ValueError(f"emb_l.{t}.weight must be 2-D [rows, D], got shape {shape}")
        dims.add(int(shape[1]))
    if len(dims) != 1:
        per = {t: int(emb[t].shape[1]) for t in sorted(emb)}
        raise ValueError(f"the embedding tables have different widths {per}: every table of a "
                         f"DLRM has the same D")
    (d,) = dims
    rows = tuple(int(emb[t].shape[0]) for t in sorted(emb))
    bot = _mlp_chain("bot_l", mlp["bot_l"])
    top = _mlp_chain("top_l", mlp["top_l"])
    if bot[-1][1] != d:
        raise ValueError(
            f"the bottom MLP ends at width {bot[-1][1]} but the tables have D={d}: "
            f"the interaction needs both equal"
        )
    if top[-1][1] != 1:
        raise ValueError(f"the top MLP must end at width 1 (one logit), got {top[-1][1]}")
    f = len(rows) + 1
    width = top[0][0]
    if cross or (want is not None and want[0] == "dcn"):
        return _infer_dcn(rows, d, bot, top, cross, want)
    cands = _interaction_candidates(width, d, f)
    if not cands:
        raise ValueError(
            f"top_l.0.weight takes {width} inputs, but with D={d} and {len(rows)} tables "
            f"(F={f}) the interaction gives {d + f * (f - 1) // 2} (dot), "
            f"{d + f * (f + 1) // 2} (dot with the diagonal) or {d * f} (cat): "
            f"inconsistent checkpoint shapes"
        )
    if want is not None:
        if want not in cands:
            raise ValueError(
                f"the hint says interaction {want[0]!r} (interaction_itself={want[1]}), but "
                f"top_l.0.weight's {width} inputs fit only {cands} with D={d}, F={f}"
            )
        interaction, itself = want
    elif len(cands) > 1:
        raise ValueError(
            f"top_l.0.weight's {width} inputs fit several interactions {cands} with D={d}, "
            f"F={f}: pass cfg_hint (a ModelConfig with the interaction) to choose"
        )
    else:
        interaction, itself = cands[0]
    return ModelConfig(
        table_rows=rows,
        embedding_dim=d,
        mlp_bot=(bot[0][0], *(o for _, o in bot)),
        mlp_top=tuple(o for _, o in top),
        interaction=interaction,
        interaction_itself=itself,
    )


def _infer_dcn(rows, d, bot, top, cross, want) -> ModelConfig:
    n = (len(rows) + 1) * d
    if not cross:
        raise ValueError("the hint says interaction 'dcn', but the checkpoint has no cross "
                         "layers (crossnet.W_kernels.{l}, .V_kernels.{l}, .bias.{l})")
    if want is not None and want[0] != "dcn":
        raise ValueError(f"the checkpoint has DCN cross layers (crossnet.*), but the hint "
                         f"says interaction {want[0]!r}: give --arch-interaction-op dcn "
                         f"(or --config dcnv2-tiny / dcnv2)")
    if top[0][0] != n:
        raise ValueError(f"top_l.0.weight takes {top[0][0]} inputs, but the cross layers' "
                         f"output has N = (T+1)*D = {n}: inconsistent checkpoint shapes")
    num_layers, rank = _cross_shape(cross, n)
    return ModelConfig(
        table_rows=rows,
        embedding_dim=d,
        mlp_bot=(bot[0][0], *(o for _, o in bot)),
        mlp_top=tuple(o for _, o in top),
        interaction="dcn",
        dcn_num_layers=num_layers,
        dcn_low_rank_dim=rank,
    )


def from_reference_state_dict(
    sd: Mapping[str, Any], cfg_hint: ModelConfig | Config | None = None
) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(ModelConfig, our state) from a reference ``state_dict`` of array-likes (NumPy arrays;
    torch tensors must be converted first). Learned per-row pooling weights (``v_W_l.{t}``)
    are accepted only when all ones, i.e. plain sum pooling. See ``infer_model_config``."""
    return _from_reference(sd, _hint_pair(cfg_hint))


def _from_reference(sd: Mapping[str, Any], want: tuple[str, bool] | None):
    sd = {k: np.asarray(v) for k, v in sd.items()}
    m = _infer(sd, want)
    emb, mlp, vw, cross = _group(sd)
    for t, w in sorted(vw.items()):
        if not np.all(w == 1):
            raise ValueError(
                f"v_W_l.{t} holds learned per-row pooling weights (--weighted-pooling learned): "
                f"not supported, our pooling is a plain sum"
            )
    state: dict[str, np.ndarray] = {
        "tables": np.concatenate([_f32(emb[t]) for t in range(m.num_tables)], axis=0)
    }
    for part, layers in (("bot", m.bot_layers), ("top", m.top_layers)):
        for i, (k, n) in enumerate(layers):
            w = _f32(mlp[f"{part}_l"][2 * i]["weight"])
            rows = m.interaction_width_padded if (part, i) == ("top", 0) else k
            wt = np.zeros((rows, n), np.float32)
            wt[:k] = w.T
            state[f"{part}{i}_w"] = wt
            state[f"{part}{i}_b"] = _f32(mlp[f"{part}_l"][2 * i]["bias"]).copy()
    n, npad, r = m.interaction_width, m.interaction_width_padded, m.dcn_low_rank_dim
    for li in range(m.num_cross_layers):  # u = V^T, v = W^T, zero past N
        u, v, b = (np.zeros((npad, r), np.float32), np.zeros((r, npad), np.float32),
                   np.zeros(npad, np.float32))
        u[:n] = _f32(cross[li]["V_kernels"]).T
        v[:, :n] = _f32(cross[li]["W_kernels"]).T
        b[:n] = _f32(cross[li]["bias"])
        state.update({f"cross{li}_u": u, f"cross{li}_v": v, f"cross{li}_b": b})
    return m, state


# ---------------------------------------------------------------------------------------------
# Checkpoint files (torch)
# ---------------------------------------------------------------------------------------------


def _numpy_safe_globals() -> list:
    """NumPy scalar and dtype reconstructors: the reference stores metrics such as
    ``train_acc`` as NumPy scalars, which torch's weights-only unpickler refuses by default.
    Allowing these builds only numbers and dtypes (no code execution)."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed: list = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def load_weights_only(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` with NumPy scalars allowed: tensors, numbers, strings
    and containers only. A file that needs anything else (a pickled nn.Module, a class of the
    reference's code, or a crafted payload) is refused: dlrm-tvm never unpickles arbitrary
    objects, because unpickling can run code from the file."""
    import pickle
    import zipfile

    import torch

    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError,
            zipfile.BadZipFile, ValueError, KeyError, IndexError) as e:
        why = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: refused: torch.load(weights_only=True) cannot read it ({why}). dlrm-tvm "
            f"reads checkpoint files as tensors and numbers only and never unpickles "
            f"other objects (that could run code from the file). If the file is yours and "
            f"holds a whole model object, re-save it where you trust it as a state dict: "
            f"torch.save({{'state_dict': model.state_dict()}}, path)"
        ) from None


def _find_state_dict(ckpt: Any) -> Mapping[str, Any]:
    if isinstance(ckpt, Mapping) and "state_dict" in ckpt:
        sd = ckpt["state_dict"]
    else:
        sd = ckpt
    if not isinstance(sd, Mapping) or not any(str(k).endswith(".weight") for k in sd):
        raise ValueError(
            "not a DLRM checkpoint: expected a dict with a 'state_dict' (as the reference's "
            f"--save-model writes) or a state_dict itself, got {type(ckpt).__name__}"
            + (f" with keys {sorted(map(str, ckpt))[:8]}" if isinstance(ckpt, Mapping) else "")
        )
    # DataParallel / DistributedDataParallel wrappers add "module." to the names
    return {".".join(p for p in str(k).split(".") if p != "module"): v for k, v in sd.items()}


def tensor_to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor (any dtype, any device)
        return v.detach().to("cpu").float().numpy()
    return np.asarray(v)


def load_reference_checkpoint(
    path: str | os.PathLike, cfg_hint: ModelConfig | Config | None = None,
) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Read a facebookresearch/dlrm checkpoint; return (ModelConfig, our state).

    Accepts the reference's ``--save-model`` dict (its ``state_dict`` entry is used, the
    metrics and optimizer state are ignored) or a bare ``state_dict``; "module." prefixes of
    (Distributed)DataParallel wrappers are dropped. The file is read with
    ``torch.load(weights_only=True)`` (NumPy scalars allowed) and nothing else: a file that
    needs full unpickling is refused with ValueError (never unpickled: that can run code).

    The interaction is inferred from the first top layer's input width; where that is
    ambiguous, ``cfg_hint``'s interaction decides, else the metadata our own
    ``save_reference_checkpoint`` writes. Raises ValueError with the reason when the shapes are
    inconsistent (see ``infer_model_config``)."""
    return reference_from_loaded(load_weights_only(path), path, cfg_hint)


def reference_from_loaded(
    ckpt: Any, path: str | os.PathLike, cfg_hint: ModelConfig | Config | None = None,
) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """``load_reference_checkpoint`` of what ``load_weights_only(path)`` returned."""
    sd = _find_state_dict(ckpt)
    want = _hint_pair(cfg_hint)
    if want is None and isinstance(ckpt, Mapping):
        want = _meta_pair(ckpt.get(META_KEY))
    try:
        return _from_reference({k: tensor_to_numpy(v) for k, v in sd.items()}, want)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def _meta_pair(meta: Any) -> tuple[str, bool] | None:
    """The interaction our ``save_reference_checkpoint`` stored, if any and well-formed."""
    if not isinstance(meta, Mapping) or meta.get("interaction") not in ("dot", "cat", "dcn"):
        return None
    itself = bool(meta.get("interaction_itself", False)) and meta["interaction"] == "dot"
    return str(meta["interaction"]), itself


def save_reference_checkpoint(
    path: str | os.PathLike, cfg: ModelConfig | Config, state: Mapping[str, np.ndarray],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write our state as a facebookresearch/dlrm ``--save-model`` checkpoint.

    The file holds ``state_dict`` (float32 tensors named as the reference's modules) and every
    other key its ``--load-model`` reads, with neutral values: ``epoch`` 0, ``nepochs`` 1,
    ``iter`` 0, ``nbatches`` 1, ``nbatches_test`` 1, ``train_acc``/``train_loss``/``test_acc``/
    ``test_loss``/``test_auc``/``total_loss``/``total_accu`` 0.0, and ``opt_state_dict``: the
    state of a fresh ``torch.optim.SGD`` over the model's parameters (one group, no momentum
    buffers; the learning rate of ``cfg.train`` when ``cfg`` is a whole Config, else the
    reference's default 0.01), which the reference's default ``--optimizer sgd`` loads when it
    resumes training. ``extra`` overrides or adds keys (e.g. ``{"iter": steps}``, or an
    ``opt_state_dict`` for another optimizer); ``state_dict`` cannot be overridden. The
    interaction is also stored under ``dlrm_tvm_model`` (ignored by the reference) so that
    ``load_reference_checkpoint`` needs no hint. All values are plain tensors and Python
    numbers, so ``torch.load(weights_only=True)`` reads the file."""
    import torch

    m = model_of(cfg)
    ref = to_reference_state_dict(m, state)
    sd = {k: torch.from_numpy(v) for k, v in ref.items()}
    extra = dict(extra or {})
    if "state_dict" in extra:
        raise ValueError("extra cannot replace 'state_dict': it is written from the state")
    lr = cfg.train.learning_rate if isinstance(cfg, Config) else REFERENCE_DEFAULT_LR
    if "opt_state_dict" not in extra:
        dummies = [torch.nn.Parameter(torch.zeros(1)) for _ in sd]
        extra["opt_state_dict"] = torch.optim.SGD(dummies, lr=lr).state_dict()
    ckpt: dict[str, Any] = {
        "epoch": 0,
        "nepochs": 1,
        "iter": 0,
        "nbatches": 1,
        "nbatches_test": 1,
        "train_acc": 0.0,
        "train_loss": 0.0,
        "test_acc": 0.0,
        "test_loss": 0.0,
        "test_auc": 0.0,
        "total_loss": 0.0,
        "total_accu": 0.0,
        META_KEY: {"interaction": m.interaction, "interaction_itself": m.interaction_itself},
    }
    ckpt.update(extra)
    ckpt["state_dict"] = sd
    torch.save(ckpt, path)
