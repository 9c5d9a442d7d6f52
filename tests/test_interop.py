"""Reference (facebookresearch/dlrm) checkpoints and the ONNX export against a PyTorch DLRM.

Random weights everywhere: the tables are scaled up from the reference's init so that the
pooled embeddings, and with them the pairwise dot products, move the predictions well beyond
the 1e-5 tolerance (a wrong pair order, table order or transpose fails).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from dlrm_tvm.runtime.params import init_mlp, init_tables

from dlrm_tvm.config import ModelConfig, apply_overrides, load_config
from dlrm_tvm.data import Batch, SyntheticData
from dlrm_tvm.interop.onnx_export import pair_indices, predict_numpy
from dlrm_tvm.interop.reference import (
    from_reference_state_dict,
    load_reference_checkpoint,
    mlp_layout,
    save_reference_checkpoint,
    to_reference_state_dict,
)

TOL = 1e-5
VARIANTS = {
    "dot": {"arch_interaction_op": "dot"},
    "cat": {"arch_interaction_op": "cat"},
    "dot-itself": {"arch_interaction_op": "dot", "arch_interaction_itself": True},
}


def _cfg(variant: str):
    return apply_overrides(load_config("tiny"), num_indices_per_lookup=3,
                           num_indices_per_lookup_fixed=False, **VARIANTS[variant])


def _state(m: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    # x30: table values in (-1, 1) instead of (-0.03, 0.03), so the interaction matters
    return {"tables": init_tables(m, seed) * np.float32(30.0), **init_mlp(m, seed)}


def _batch(cfg, batch_size: int, seed: int) -> Batch:
    return SyntheticData(cfg.model, cfg.data, batch_size, seed).next_batch()


def _empty_bags(batch: Batch, bags: list[int]) -> Batch:
    """``batch`` with the lookups of ``bags`` removed (those bags become empty)."""
    off = batch.offsets
    keep = np.ones(batch.indices.size, bool)
    sizes = np.diff(off)
    for k in bags:
        keep[off[k] : off[k + 1]] = False
        sizes[k] = 0
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return dataclasses.replace(batch, indices=batch.indices[keep], offsets=off)


def _torch_predict(torch, cfg, model, batch: Batch) -> np.ndarray:
    from dlrm_tvm.bench.torch_ref import torch_inputs

    dense, idx_l, off_l, _ = torch_inputs(batch, cfg.model.num_tables)
    with torch.no_grad():
        return model(dense, idx_l, off_l)[:, 0].numpy()


def _assert_close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    err = float(np.abs(a.astype(np.float64) - b).max())
    assert err < TOL, f"{what}: max abs difference {err:.2e}"


# The MLP parameters written out by hand from each config (not computed by the code under
# test): (name, Wt [in, out] or bias shape), bottom then top; the first top Wt has the
# interaction width rounded up to 16 rows. tiny: 26 tables, D = 16, bottom 13-64-16, top -64-1.
_TINY = [("bot0_w", (13, 64)), ("bot0_b", (64,)), ("bot1_w", (64, 16)), ("bot1_b", (16,))]
_DEEP = ModelConfig(table_rows=(5, 7, 11), embedding_dim=8, mlp_bot=(4, 32, 24, 8),
                    mlp_top=(20, 10, 1))
LAYOUTS = {  # case: (model, the layout, the true interaction width)
    # F = 27 features: D + 27 * 26 / 2 pairs = 16 + 351 = 367 -> 368 rows
    "dot": (_cfg("dot").model, [*_TINY, ("top0_w", (368, 64)), ("top0_b", (64,)),
                                ("top1_w", (64, 1)), ("top1_b", (1,))], 367),
    # 27 * 16 = 432, already a multiple of 16
    "cat": (_cfg("cat").model, [*_TINY, ("top0_w", (432, 64)), ("top0_b", (64,)),
                                ("top1_w", (64, 1)), ("top1_b", (1,))], 432),
    # with the diagonal: 16 + 27 * 28 / 2 = 394 -> 400
    "dot-itself": (_cfg("dot-itself").model, [*_TINY, ("top0_w", (400, 64)), ("top0_b", (64,)),
                                              ("top1_w", (64, 1)), ("top1_b", (1,))], 394),
    # three bottom and three top layers; F = 4: 8 + 6 pairs = 14 -> 16
    "deep": (_DEEP, [("bot0_w", (4, 32)), ("bot0_b", (32,)), ("bot1_w", (32, 24)),
                     ("bot1_b", (24,)), ("bot2_w", (24, 8)), ("bot2_b", (8,)),
                     ("top0_w", (16, 20)), ("top0_b", (20,)), ("top1_w", (20, 10)),
                     ("top1_b", (10,)), ("top2_w", (10, 1)), ("top2_b", (1,))], 14),
}


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_mlp_layout_is_the_one_written_out(case):
    """mlp_layout (interop, no TVM), mlp_param_specs and the compiled module's parameters
    (predict's, after dense and pooled) all equal the layout written out by hand."""
    from dlrm_tvm.graphs.dlrm import DLRMGraph, mlp_param_specs

    m, want, width = LAYOUTS[case]
    assert m.interaction_width == width
    assert mlp_layout(m) == want
    assert mlp_param_specs(m) == want
    mod = DLRMGraph(m, 4).build(("dense",))
    params = [(v.name, tuple(int(x) for x in v.ty.shape)) for v in mod["predict"].params]
    assert params[:2] == [("dense", (4, m.num_dense)), ("pooled", (4, m.num_tables, 8 if
                                                                      case == "deep" else 16))]
    assert params[2:] == want


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_mlp_layout_matches_the_reference_modules(case):
    """The reference DLRM's Linear layers (torch_ref, built from the config's widths) are our
    Wt transposed, top0 without its padding rows; to_reference_state_dict names them so."""
    import torch

    from dlrm_tvm.bench import torch_ref

    m, want, width = LAYOUTS[case]
    g = np.random.default_rng(3)
    state = {n: g.standard_normal(s).astype(np.float32) for n, s in want}
    state["tables"] = np.zeros((m.total_rows, m.embedding_dim), np.float32)
    cfg = _cfg("dot").replace(model=m)
    sd = torch_ref.build(cfg, state).state_dict()
    mlp = {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("emb_l.")}
    expect = {}
    for name, shape in want:  # ours -> the reference's: bot_l.{2i}.weight [out, in]
        part, i, kind = name[:3], int(name[3:-2]), name[-1]
        if kind == "w":
            rows = width if name == "top0_w" else shape[0]
            expect[f"{part}_l.{2 * i}.weight"] = (shape[1], rows)
        else:
            expect[f"{part}_l.{2 * i}.bias"] = shape
    assert mlp == expect
    ref_sd = to_reference_state_dict(m, state)
    assert {k: v.shape for k, v in ref_sd.items() if not k.startswith("emb_l.")} == expect
    np.testing.assert_array_equal(ref_sd["top_l.0.weight"], state["top0_w"][:width].T)
    assert torch.equal(sd["top_l.0.weight"], torch.from_numpy(state["top0_w"][:width].T.copy()))


def test_pair_indices_match_the_module():
    """pair_indices restates graphs/ops.py's pair tables without TVM; both give the
    reference's order (for i, for j < i, or j <= i with the diagonal)."""
    from dlrm_tvm.graphs.ops import pair_tables

    for f in (pair_indices, lambda n, s: pair_tables(n, s)[:2]):
        assert f(4, False) == ([1, 2, 2, 3, 3, 3], [0, 0, 1, 0, 1, 2])
        assert f(3, True) == ([0, 1, 1, 2, 2, 2], [0, 0, 1, 0, 1, 2])
    for variant in VARIANTS:
        m = _cfg(variant).model
        li, lj, _ = pair_tables(m.num_features, m.interaction_itself)
        assert pair_indices(m.num_features, m.interaction_itself) == (li, lj)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reference_checkpoint_matches_torch(tmp_path, variant):
    import torch

    from dlrm_tvm.bench.torch_ref import build

    torch.set_num_threads(2)
    cfg = _cfg(variant)
    state = _state(cfg.model, seed=7)
    model = build(cfg, state)
    path = tmp_path / "ref.pt"
    # as the reference's --save-model writes it (its metrics are NumPy scalars)
    torch.save({"epoch": 0, "nepochs": 1, "iter": 5, "nbatches": 10, "nbatches_test": 2,
                "state_dict": model.state_dict(), "train_acc": np.float64(0.5),
                "train_loss": np.float64(0.69), "test_acc": np.float64(0.5),
                "test_loss": 0.7, "total_loss": 0.0, "total_accu": 0,
                "opt_state_dict": torch.optim.SGD(model.parameters(), lr=0.1).state_dict()},
               path)
    # no hint is needed (D=16, F=27 fit one interaction); a consistent one is accepted
    hint = cfg.model if variant == "dot-itself" else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read with weights_only=True: no pickle fallback
        m, loaded = load_reference_checkpoint(path, hint)
    assert m == cfg.model
    assert sorted(loaded) == sorted(state)
    for name, arr in state.items():
        assert loaded[name].dtype == np.float32
        np.testing.assert_array_equal(loaded[name], arr, err_msg=name)

    for seed in (1, 2):
        batch = _batch(cfg, 32, seed)
        assert (np.diff(batch.offsets) > 1).any(), "want bags of several lookups"
        ref = _torch_predict(torch, cfg, model, batch)
        _assert_close(predict_numpy(m, loaded, batch), ref, f"{variant} seed {seed}")
    assert ref.std() > 1e-2, "predictions should spread: the comparison must be able to fail"

    # round trip: ours -> reference file -> ours gives identical arrays
    path2 = tmp_path / "ours.pt"
    save_reference_checkpoint(path2, cfg, loaded, extra={"iter": 42})
    m2, again = load_reference_checkpoint(path2)  # the stored interaction needs no hint
    assert m2 == cfg.model
    assert sorted(again) == sorted(state)
    for name, arr in loaded.items():
        np.testing.assert_array_equal(again[name], arr, err_msg=name)


def test_saved_checkpoint_loads_like_the_reference(tmp_path):
    """What the reference's --load-model does with our file: strict load_state_dict, the
    metadata keys, and its SGD optimizer's load_state_dict."""
    import torch

    from dlrm_tvm.bench.torch_ref import build

    cfg = _cfg("dot")
    state = _state(cfg.model, seed=3)
    path = tmp_path / "ours.pt"
    save_reference_checkpoint(path, cfg, state, extra={"iter": 9, "train_loss": 0.5})
    ckpt = torch.load(path, weights_only=True)  # plain tensors and numbers only
    for key in ("iter", "epoch", "nepochs", "nbatches", "nbatches_test", "train_loss",
                "total_loss", "test_acc", "test_auc", "opt_state_dict"):
        assert key in ckpt, key
    assert ckpt["iter"] == 9 and ckpt["train_loss"] == 0.5
    model = build(cfg, _state(cfg.model, seed=4))  # other weights, then load ours
    model.load_state_dict(ckpt["state_dict"], strict=True)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.learning_rate)
    opt.load_state_dict(ckpt["opt_state_dict"])
    assert opt.param_groups[0]["lr"] == cfg.train.learning_rate
    batch = _batch(cfg, 16, seed=5)
    _assert_close(predict_numpy(cfg, state, batch), _torch_predict(torch, cfg, model, batch),
                  "reloaded torch model")
    with pytest.raises(ValueError, match="state_dict"):
        save_reference_checkpoint(path, cfg, state, extra={"state_dict": {}})


def test_bare_state_dict_and_wrapper_prefixes(tmp_path):
    import torch

    from dlrm_tvm.bench.torch_ref import build

    cfg = _cfg("cat")
    state = _state(cfg.model, seed=11)
    sd = build(cfg, state).state_dict()
    torch.save(sd, tmp_path / "bare.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "dp.pt")
    for name in ("bare.pt", "dp.pt"):
        m, loaded = load_reference_checkpoint(tmp_path / name)
        assert m == cfg.model, name
        np.testing.assert_array_equal(loaded["tables"], state["tables"])
        np.testing.assert_array_equal(loaded["top0_w"], state["top0_w"])


def _tiny_reference_sd(rng, rows=(7, 5), d=3, bot=(4, 6), top_in=None, top=(5, 1)):
    """A random reference state_dict; ``top_in`` defaults to the dot interaction's width."""
    f = len(rows) + 1
    top_in = d + f * (f - 1) // 2 if top_in is None else top_in
    sd = {f"emb_l.{t}.weight": rng.normal(size=(r, d)).astype(np.float32)
          for t, r in enumerate(rows)}
    for part, widths in (("bot_l", (*bot, d)), ("top_l", (top_in, *top))):
        for i, (k, n) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            sd[f"{part}.{2 * i}.weight"] = rng.normal(size=(n, k)).astype(np.float32)
            sd[f"{part}.{2 * i}.bias"] = rng.normal(size=n).astype(np.float32)
    return sd


def test_ambiguous_interaction_needs_the_hint(tmp_path):
    rng = np.random.default_rng(0)
    # T=2, D=3: cat (D*F = 9) and dot with the diagonal (D + F(F+1)/2 = 9) coincide
    sd = _tiny_reference_sd(rng, top_in=9)
    with pytest.raises(ValueError, match="several interactions"):
        from_reference_state_dict(sd)
    base = ModelConfig(table_rows=(7, 5), embedding_dim=3, mlp_bot=(4, 6, 3), mlp_top=(5, 1))
    for inter, itself in (("cat", False), ("dot", True)):
        hint = dataclasses.replace(base, interaction=inter, interaction_itself=itself)
        m, state = from_reference_state_dict(sd, hint)
        assert m == hint
        assert state["top0_w"].shape == (m.interaction_width_padded, 5)
        assert not state["top0_w"][9:].any() and state["top0_w"][:9].all()
        back = to_reference_state_dict(m, state)
        assert list(back) == list(sd)
        for k, v in sd.items():
            np.testing.assert_array_equal(back[k], v, err_msg=k)
    with pytest.raises(ValueError, match="hint says interaction 'dot'"):
        from_reference_state_dict(sd, base)  # plain dot gives D + 3 = 6, not 9


def _drop(key):
    def f(sd):
        del sd[key]
    return f


def _set(key, shape):
    def f(sd):
        sd[key] = np.ones(shape, np.float32)
    return f


BAD = {
    "bot chain": (_set("bot_l.2.weight", (3, 7)), "takes 7 inputs but the previous layer"),
    "bot end != D": (_set("bot_l.2.weight", (4, 6)), "bias has shape"),
    "bot end and bias != D": (
        lambda sd: (_set("bot_l.2.weight", (4, 6))(sd), _set("bot_l.2.bias", (4,))(sd)),
        "bottom MLP ends at width 4 but the tables have D=3"),
    "table widths": (_set("emb_l.1.weight", (5, 4)), "different widths"),
    "missing table": (_drop("emb_l.0.weight"), r"lacks embedding tables \[0\]"),
    "missing bias": (_drop("top_l.2.bias"), "no top_l.2.bias"),
    "layer gap": (lambda sd: sd.update({"top_l.4.weight": sd.pop("top_l.2.weight"),
                                        "top_l.4.bias": sd.pop("top_l.2.bias")}),
                  r"indices \[0, 4\]"),
    "top first width": (_set("top_l.0.weight", (5, 8)), "top_l.0.weight takes 8 inputs"),
    "top end != 1": (lambda sd: (_set("top_l.2.weight", (2, 5))(sd),
                                 _set("top_l.2.bias", (2,))(sd)), "must end at width 1"),
    "1-D weight": (_set("bot_l.0.weight", (6,)), "must be 2-D"),
    "qr embedding": (_set("emb_l.0.weight_q", (7, 3)), "weight_q"),
    "learned pooling": (_set("v_W_l.0", (7,)), None),  # all ones: accepted
}


@pytest.mark.parametrize("case", list(BAD))
def test_inconsistent_shapes_raise(case):
    mutate, msg = BAD[case]
    sd = _tiny_reference_sd(np.random.default_rng(1))
    from_reference_state_dict(sd)  # the unmodified one is fine
    mutate(sd)
    if msg is None:
        from_reference_state_dict(sd)
        sd["v_W_l.0"][2] = 0.5
        msg = "learned per-row pooling"
    with pytest.raises(ValueError, match=msg):
        from_reference_state_dict(sd)


def test_inconsistent_checkpoint_file_names_the_file(tmp_path):
    import torch
    sd = _tiny_reference_sd(np.random.default_rng(2), top_in=11)
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}, path)
    with pytest.raises(ValueError, match=r"bad\.pt: top_l\.0\.weight takes 11 inputs.*"
                                         r"6 \(dot\), 9 \(dot with the diagonal\) or 9 \(cat\)"):
        load_reference_checkpoint(path)
    torch.save({"model": 1}, path)
    with pytest.raises(ValueError, match="not a DLRM checkpoint"):
        load_reference_checkpoint(path)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_onnx_matches_numpy_and_torch(tmp_path, variant):
    import onnx
    import onnxruntime as ort
    import torch

    from dlrm_tvm.bench.torch_ref import build
    from dlrm_tvm.interop.onnx_export import export_onnx

    torch.set_num_threads(2)
    cfg = _cfg(variant)
    m = cfg.model
    state = _state(m, seed=21)
    path = export_onnx(cfg, state, tmp_path / "dlrm.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["dense", "indices", "offsets"]
    assert [o.name for o in proto.graph.output] == ["p"]
    assert proto.opset_import[0].version == 17
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    model = build(cfg, state)
    T = m.num_tables
    for batch_size, seed in ((32, 1), (5, 2)):  # dynamic B
        b = batch_size
        batch = _batch(cfg, b, seed)
        # empty bags: the very first, one inside, every bag of table 3, and the very last
        batch = _empty_bags(batch, [0, 5 * b + 1, *range(3 * b, 4 * b), T * b - 1])
        sizes = np.diff(batch.offsets)
        assert (sizes == 0).sum() == b + 3 and (sizes > 1).any()
        p = sess.run(["p"], {"dense": batch.dense, "indices": batch.indices,
                             "offsets": batch.offsets})[0]
        assert p.dtype == np.float32 and p.shape == (b,)
        ref = _torch_predict(torch, cfg, model, batch)
        _assert_close(p, ref, f"onnxruntime vs torch, B={b}")
        _assert_close(predict_numpy(cfg, state, batch), ref, f"numpy vs torch, B={b}")
    # the unpadded top0_w (as torch_ref.TorchTrainer.state() returns it) exports the same
    unpadded = dict(state, top0_w=state["top0_w"][: m.interaction_width])
    _assert_close(predict_numpy(cfg, unpadded, batch), ref, "unpadded top0_w")
    assert ref.std() > 1e-2, "predictions should spread: the comparison must be able to fail"


def test_onnx_rejects_bad_state_and_old_opset(tmp_path):
    from dlrm_tvm.interop.onnx_export import export_onnx

    m = _cfg("dot").model
    state = _state(m, seed=1)
    with pytest.raises(ValueError, match="opset 15"):
        export_onnx(m, state, tmp_path / "x.onnx", opset=15)
    with pytest.raises(ValueError, match="bot0_w"):
        export_onnx(m, dict(state, bot0_w=state["bot0_w"].T), tmp_path / "x.onnx")
